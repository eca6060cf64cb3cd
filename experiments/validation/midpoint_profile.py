"""Bracketing a validation with two calibrations: the mean of two hardware profiles.

Run by hand, after `inf2 calibrate` before and after a sweep (docs/calibration.md):

    python experiments/validation/midpoint_profile.py BEFORE.yaml AFTER.yaml --name local_mid --out OUT.yaml

On a machine whose speed drifts between calibrations (the 2-core VM moved 15-25 % in its
dense rates within 13 minutes), the engine runs in between saw a machine somewhere
between the two; the mean of every measured number (element-wise for curves) is the
linear-drift estimate of the machine at the sweep's midpoint. Numbers only: strings,
booleans and lists of names come from AFTER; two curves over different sizes keep AFTER's.
Units are those of the profiles (GB/s, us, TFLOP/s, ...); nothing is fitted to the validation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf


def _mean(a, b, where: str):
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(b, str):
        return b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        m = (a + b) / 2
        return int(round(m)) if isinstance(a, int) and isinstance(b, int) else m
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: (_mean(a[k], v, f"{where}.{k}") if k in a else v) for k, v in b.items()}
    if isinstance(a, list) and isinstance(b, list):
        nums = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in a + b)
        if nums and len(a) == len(b) and not where.endswith("_kib"):
            return [(x + y) / 2 for x, y in zip(a, b)]
        if (len(a) == len(b) and all(isinstance(x, dict) and isinstance(y, dict) for x, y in zip(a, b))
                and all((x.get("what"), x.get("model"), x.get("tokens")) == (y.get("what"), y.get("model"), y.get("tokens"))
                        for x, y in zip(a, b))):  # gpu.op_curves: the same ops over the same tokens
            return [_mean(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
        return b  # names, or sizes (the x-axes must agree: checked below)
    return b


def midpoint(before: dict, after: dict) -> dict:
    out = _mean(before, after, "")
    for path in ("gpu.decode_attention", "cpu.attention", "cpu.tokens_attention", "csd.attend"):
        sec, key = path.split(".")
        kb, ka = before.get(sec, {}).get(f"{key}_kib"), after.get(sec, {}).get(f"{key}_kib")
        if kb != ka:  # different sizes: a mean of times is meaningless, keep AFTER's curve
            out[sec][f"{key}_us"] = after[sec][f"{key}_us"]
            if f"{key}_gqa_us" in after.get(sec, {}):
                out[sec][f"{key}_gqa_us"] = after[sec][f"{key}_gqa_us"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--name", required=True, help="the profile's name")
    ap.add_argument("--out", required=True, help="YAML to write")
    a = ap.parse_args()
    try:
        before = OmegaConf.to_container(OmegaConf.load(a.before))
        after = OmegaConf.to_container(OmegaConf.load(a.after))
    except (OSError, ValueError) as e:
        sys.exit(f"midpoint_profile: cannot read a profile: {e}")
    prof = midpoint(before, after)
    prof["name"] = a.name
    prof["notes"] = f"mean of {Path(a.before).name} and {Path(a.after).name} (experiments/validation/midpoint_profile.py)"
    head = (f"# Hardware profile `{a.name}`: every number is the mean of {a.before} and {a.after}\n"
            f"# (element-wise for curves), written by experiments/validation/midpoint_profile.py; each value's\n"
            f"# benchmark and date are in the comments of those two files.\n")
    Path(a.out).write_text(head + OmegaConf.to_yaml(OmegaConf.create(prof)))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
