"""How much the disk probe (`inf2hw.disk_probe`) moves across one engine run.

    python experiments/validation/disk_probe_spread.py --work /tmp/bw23 --save results/local_y/disk_probes.json
    python experiments/validation/disk_probe_spread.py --load experiments/validation/results/local_y/disk_probes.json

Reads every `<config>/emu_runs/run<k>/probe.json` under --work (or a --save'd list), keeps the
runs whose two disk probes (before and after the run, in the CSDs' directory) were taken,
and prints p10 / median / p90 of the read and write GB/s before and after, and of the ratio
after / before: how far one 64 MiB stream's reading is from the disk's speed a few seconds
later. Units: GB/s; ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from op_medians import quantile  # this directory (the script's) is on sys.path


def collect(work: Path) -> list:
    """[{"run": "<config>/run<k>", "before": {...}, "after": {...}}] of runs with both probes."""
    out = []
    for f in sorted(work.glob("*/emu_runs/run*/probe.json")):
        disk = json.loads(f.read_text()).get("disk", [])
        if len(disk) == 2 and disk[0] and disk[1]:
            out.append({"run": f"{f.parts[-4]}/{f.parts[-2]}", "before": disk[0], "after": disk[1]})
    return out


def _q(xs) -> str:
    return f"p10 {quantile(xs, 0.1):.2f}  median {statistics.median(xs):.2f}  p90 {quantile(xs, 0.9):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="", help="a run.py / bracket.py --work directory")
    ap.add_argument("--load", default="", help="a list written by --save instead of --work")
    ap.add_argument("--save", default="", help="write the collected probes here (JSON)")
    a = ap.parse_args()
    if bool(a.work) == bool(a.load):
        raise SystemExit("give exactly one of --work DIR or --load FILE")
    runs = collect(Path(a.work)) if a.work else json.loads(Path(a.load).read_text())
    if not runs:
        raise SystemExit("no run with disk probes before and after it (runs before session 10 have none)")
    if a.save:
        Path(a.save).write_text(json.dumps(runs, indent=1))
    print(f"{len(runs)} runs")
    for k in ("read_gbps", "write_gbps"):
        print(f"  {k:10s} before {_q([r['before'][k] for r in runs])}")
        print(f"  {k:10s} after  {_q([r['after'][k] for r in runs])}")
        print(f"  {k:10s} after / before  {_q([r['after'][k] / r['before'][k] for r in runs])}")


if __name__ == "__main__":
    main()
