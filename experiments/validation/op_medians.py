"""Median span of chosen ops, measured and simulated, from kept validation runs.

    python experiments/validation/op_medians.py experiments/validation/results/h100_s6d/runs.tgz \
        --configs opt-13b-4l_p512_flexgen_dram --tags q_d2h,o_h2d,attn --steps decode
    python experiments/validation/op_medians.py /tmp/vw --tags attn --steps prefill      # a --work dir after --resim

The per-kind table of `run.py` averages over every op of a kind. This prints one line per
(configuration, op tag), for a question about one op. Each line gives the count, the
median, p10 and p90 in ms, and, where the directory has a simulated trace (`sim/trace.json`,
written by `run.py` or `run.py --resim`), the same for the DES and the median of sim/meas
per op. An op tag is the last part of an op name (`s5.L0.m0.q_d2h` -> `q_d2h`). `--steps`
picks the prompt (step 0), the decode steps, or all; `--layers` prints a line per layer
(`L-1` for the embedding and the head).

The source is a `run.py --tar` archive (measured traces only) or a `--work` directory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tarfile
from pathlib import Path
from typing import Dict, Optional


def _spans(data: bytes) -> Dict[str, float]:
    """Op name -> duration in ms, from a Chrome trace."""
    tr = json.loads(data)
    ev = tr["traceEvents"] if isinstance(tr, dict) else tr
    return {e["name"]: e["dur"] / 1e3 for e in ev if e.get("ph") == "X"}


def _load(src: Path):
    """config -> (measured spans, simulated spans or None)."""
    out = {}
    if src.is_file():
        with tarfile.open(src) as tf:
            for m in tf.getmembers():
                if m.name.endswith("/emu/trace.json"):
                    out[m.name.split("/")[0]] = (_spans(tf.extractfile(m).read()), None)
        return out
    for d in sorted(p for p in src.iterdir() if (p / "emu" / "trace.json").exists()):
        sim = d / "sim" / "trace.json"
        out[d.name] = (_spans((d / "emu" / "trace.json").read_bytes()), _spans(sim.read_bytes()) if sim.exists() else None)
    return out


def quantile(xs, p: float) -> float:
    """The p-quantile of xs (nearest rank; also used by the other scripts here)."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]


def _fmt(xs) -> str:
    return f"{statistics.median(xs):8.3f} [{quantile(xs, 0.1):.3f}, {quantile(xs, 0.9):.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a run.py --tar archive or a --work directory")
    ap.add_argument("--configs", default="", help="comma-separated config dirs (default: all)")
    ap.add_argument("--tags", default="q_d2h,o_h2d,attn")
    ap.add_argument("--steps", default="decode", choices=["prefill", "decode", "all"])
    ap.add_argument("--layers", action="store_true", help="one line per layer")
    a = ap.parse_args()
    runs = _load(Path(a.source))
    want = set(a.configs.split(",")) if a.configs else set(runs)
    print(f"{'config':34s} {'tag':8s} {'n':>4s}  {'measured ms: median [p10, p90]':32s}  "
          f"{'simulated ms':32s}  sim/meas")
    for cfg, (emu, sim) in runs.items():
        if cfg not in want:
            continue
        for tag in a.tags.split(","):
            names = [n for n in emu if n.endswith("." + tag)
                     and (a.steps == "all" or (n.startswith("s0.") == (a.steps == "prefill")))]
            groups: Dict[str, list] = {}
            for n in names:
                groups.setdefault(n.split(".")[1] if a.layers else "", []).append(n)
            for layer in sorted(groups, key=lambda g: int(g[1:]) if g else 0):
                _line(cfg, f"{tag} {layer}".strip(), groups[layer], emu, sim)


def _line(cfg: str, label: str, names: list, emu: Dict[str, float], sim: Optional[Dict[str, float]]) -> None:
    meas = [emu[n] for n in names]
    line = f"{cfg:34s} {label:8s} {len(names):4d}  {_fmt(meas):32s}"
    both: Optional[list] = [n for n in names if n in sim] if sim else None
    if both:
        line += f"  {_fmt([sim[n] for n in both]):32s}  " \
                f"{statistics.median(sim[n] / emu[n] for n in both if emu[n] > 0):.2f}"
    print(line)


if __name__ == "__main__":
    main()
