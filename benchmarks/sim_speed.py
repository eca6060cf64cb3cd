"""Wall time of the simulator (issue: full <= 10 s, fast <= 1 s, 20-config joblib sweep <= 60 s).

    python benchmarks/sim_speed.py            # prints a table; add --json to get it machine-readable

Measures, on this machine: OPT-175B, 16 CSDs, batch 32, prompt 2048, gen 64, policy ans,
at full and fast fidelity (plan building included), and the 20-config multirun
`inf2 -m policy=flexgen_ssd,flexgen_dram,flexgen_csd,ans hardware.csd_count=1,2,4,8,16
hydra/launcher=joblib` (default model OPT-30B, full fidelity) as a subprocess.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from inf2sim import simulate

CFG = {"model": "opt-175b", "hardware.csd_count": 16, "workload.batch": 32, "workload.prompt_len": 2048,
       "workload.gen_len": 64}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    a = ap.parse_args()
    rows = []
    for fid in ("full", "fast"):
        m, wall = timed(lambda: simulate(policy="ans", **{**CFG, "sim.fidelity": fid, "sim.trace": False}))
        rows.append({"what": f"opt-175b ans 16 CSDs, {fid}", "wall_s": wall, "total_tok_s": m.throughput["total_tok_s"],
                     "ops": m.extra["ops"]})
    rows.append({"what": "fast/full throughput ratio", "wall_s": None,
                 "total_tok_s": rows[1]["total_tok_s"] / rows[0]["total_tok_s"], "ops": None})
    if not a.skip_sweep:
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-m", "inf2sim.cli", "-m", "policy=flexgen_ssd,flexgen_dram,flexgen_csd,ans",
                   "hardware.csd_count=1,2,4,8,16", "hydra/launcher=joblib", f"hydra.sweep.dir={d}", "sim.trace=false"]
            p, wall = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, cwd=d))
            if p.returncode != 0:
                raise SystemExit(p.stderr[-2000:])
        rows.append({"what": "20-config joblib sweep (opt-30b, full)", "wall_s": wall, "total_tok_s": None, "ops": None})
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        w = "" if r["wall_s"] is None else f"{r['wall_s']:8.2f} s"
        t = "" if r["total_tok_s"] is None else f"{r['total_tok_s']:.4f}"
        print(f"{r['what']:45s} {w:>11s}  {t:>10s}  {r['ops'] or ''}")


if __name__ == "__main__":
    main()
