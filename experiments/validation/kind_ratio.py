"""Measured / simulated total time of one op kind, per configuration, across validation results.

    python experiments/validation/kind_ratio.py Attention/attn_out " ans" \\
        experiments/validation/results/h100_s*/results.json

For each results.json (written by run.py) and each configuration whose label contains the
second argument: the kind's summed measured seconds / summed simulated seconds (> 1: the
engine spent longer in that kind than the DES). Prints one line per match.
"""
from __future__ import annotations

import json
import sys


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__.split("\n\n")[1])
    kind, match, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    for f in files:
        for r in json.load(open(f))["results"]:
            if match not in r["config"] + " ":
                continue
            k = {x["kind"]: x for x in r["kinds"]}.get(kind)
            if k and k["simulated_s"] > 0:
                print(f"{f}: {r['config']}: {kind} {k['measured_s']:.2f} / {k['simulated_s']:.2f} s = "
                      f"{k['measured_s'] / k['simulated_s']:.2f}")


if __name__ == "__main__":
    main()
