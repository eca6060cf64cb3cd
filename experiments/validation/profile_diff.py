"""Where two hardware profiles of one machine disagree: every number of the second / the first.

    python experiments/validation/profile_diff.py experiments/validation/results/local_v/local_v_before.yaml \
        experiments/validation/results/local_v/local_v_after.yaml

For two calibrations of the same machine (a bracketed sweep's before and after), prints one
line per field (a scalar, or a list of the same length point by point, e.g. a curve's
times) whose ratio second / first leaves 1 +- `--tol` anywhere. Op curves are matched by
(what, model). A time ratio > 1 (`_us`, `_ns`) or a rate ratio < 1 (`_gbps`, `_tflops`)
means the second calibration saw the machine slower there.
"""
from __future__ import annotations

import argparse

import yaml


def _ratio(a, b) -> float:
    return b / a if a else float("nan")


def diff(a, b, path: str, tol: float, out: list) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k in b:
                diff(a[k], b[k], f"{path}.{k}" if path else str(k), tol, out)
    elif isinstance(a, list) and isinstance(b, list) and a and isinstance(a[0], dict):
        keyed = {(c.get("what"), c.get("model")): c for c in b}
        for c in a:
            other = keyed.get((c.get("what"), c.get("model")))
            if other is not None:
                diff(c, other, f"{path}[{c.get('what')}/{c.get('model')}]", tol, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a and \
            all(isinstance(x, (int, float)) for x in a + b):
        rs = [_ratio(x, y) for x, y in zip(a, b)]
        if any(abs(r - 1) > tol for r in rs if r == r):
            out.append(f"{path}: {', '.join(f'{r:.2f}' for r in rs)}")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        r = _ratio(a, b)
        if r == r and abs(r - 1) > tol:
            out.append(f"{path}: {r:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--tol", type=float, default=0.10, help="print fields whose ratio leaves 1 +- tol (0.10)")
    a = ap.parse_args()
    with open(a.first) as f1, open(a.second) as f2:
        out: list = []
        diff(yaml.safe_load(f1), yaml.safe_load(f2), "", a.tol, out)
    print("\n".join(out) if out else f"no field differs by more than {a.tol:.0%}")


if __name__ == "__main__":
    main()
