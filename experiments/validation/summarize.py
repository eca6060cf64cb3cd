"""One line per validation results.json: how many configurations meet the issue's bounds.

    python experiments/validation/summarize.py experiments/validation/results/local_t/results*.json

For each file (written by run.py): configurations within both bounds (|error| <= 10 % and
every op kind's MAPE <= 20 %), within 10 % end to end, the mean signed error and the mean
absolute error, in percent (error = simulated / measured - 1 of total tokens/s).
"""
from __future__ import annotations

import json
import sys


def summary(path: str) -> str:
    rs = json.load(open(path))["results"]
    errs = [r["error"] for r in rs]
    both = sum(abs(r["error"]) <= 0.1 and (r["worst_mape"] is None or r["worst_mape"] <= 0.2) for r in rs)
    return (f"{path}: both bounds {both}/{len(rs)}, within 10 % end to end {sum(abs(e) <= 0.1 for e in errs)}, "
            f"mean error {100 * sum(errs) / len(errs):+.1f} %, mean |error| {100 * sum(map(abs, errs)) / len(errs):.1f} %")


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    for f in sys.argv[1:]:
        print(summary(f))


if __name__ == "__main__":
    main()
