"""Wall time of the simulator (issue 2: full <= 10 s, fast <= 1 s, 20-config joblib sweep <= 60 s).

    python benchmarks/sim_speed.py            # prints a table; add --json to get it machine-readable
    python benchmarks/sim_speed.py --repeat 3 --baseline /path/to/older/checkout

Measures, on this machine: OPT-175B, 16 CSDs, batch 32, prompt 2048, gen 64, policy ans,
at full and fast fidelity (config, plan building, DES, metrics and bound included; trace
off), and the 20-config multirun `inf2 -m policy=flexgen_ssd,flexgen_dram,flexgen_csd,ans
hardware.csd_count=1,2,4,8,16 hydra/launcher=joblib` (default model OPT-30B, full
fidelity) as a subprocess.

Every measurement runs in a fresh subprocess (imports are not timed for the two single
runs; they are for the sweep, as a user sees it). `--repeat N` keeps the best of N, which
on a machine shared with other jobs is the least disturbed one. `--baseline DIR` times a
second checkout of this repo (e.g. `git worktree add /tmp/old <commit>`) the same way,
alternating with this one so both see the same load, and adds its column and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent.parent  # this checkout
CFG = {"model": "opt-175b", "hardware.csd_count": 16, "workload.batch": 32, "workload.prompt_len": 2048,
       "workload.gen_len": 64}
SWEEP = ["-m", "policy=flexgen_ssd,flexgen_dram,flexgen_csd,ans", "hardware.csd_count=1,2,4,8,16",
         "hydra/launcher=joblib", "sim.trace=false"]
# one simulate() call, timed inside the subprocess after the imports
_ONE = """
import json, sys, time
from inf2sim import simulate
cfg = json.loads(sys.argv[1])
t = time.perf_counter()
m = simulate(policy="ans", **cfg)
print(json.dumps({"wall_s": time.perf_counter() - t, "total_tok_s": m.throughput["total_tok_s"],
                  "ops": m.extra["ops"]}))
"""


def _env(tree: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("INF2_CONF_DIR", None)  # each checkout reads its own conf/
    return env


def one_run(tree: Path, fidelity: str) -> dict:
    cfg = {**CFG, "sim.fidelity": fidelity, "sim.trace": False}
    p = subprocess.run([sys.executable, "-c", _ONE, json.dumps(cfg)], env=_env(tree), capture_output=True,
                       text=True, cwd=tree)
    if p.returncode != 0:
        raise SystemExit(f"{tree}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def sweep(tree: Path) -> dict:
    import time

    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "inf2sim.cli", *SWEEP, f"hydra.sweep.dir={d}/out"]
        t = time.perf_counter()
        p = subprocess.run(cmd, env=_env(tree), capture_output=True, text=True, cwd=d)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"{tree}: {p.stderr[-2000:]}")
        runs = len([r for r in Path(d, "out").iterdir() if (r / "metrics.json").exists()])
    return {"wall_s": wall, "total_tok_s": None, "ops": None, "runs": runs}


def best(results: List[dict]) -> dict:
    return min(results, key=lambda r: r["wall_s"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="keep the best of N runs of each measurement")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to time alongside")
    a = ap.parse_args()
    trees = {"this": HERE} if a.baseline is None else {"this": HERE, "baseline": a.baseline.resolve()}
    jobs = [("opt-175b ans 16 CSDs, full", lambda t: one_run(t, "full")),
            ("opt-175b ans 16 CSDs, fast", lambda t: one_run(t, "fast"))]
    if not a.skip_sweep:
        jobs.append(("20-config joblib sweep (opt-30b, full)", sweep))
    got: Dict[str, Dict[str, List[dict]]] = {what: {k: [] for k in trees} for what, _ in jobs}
    for _ in range(a.repeat):
        for what, fn in jobs:
            for k, tree in trees.items():  # alternate the checkouts: both see the same load
                got[what][k].append(fn(tree))
    rows = []
    for what, _ in jobs:
        row: Dict[str, Optional[float]] = {"what": what}
        for k in trees:
            b = best(got[what][k])
            row.update({f"{k}_wall_s": b["wall_s"], f"{k}_total_tok_s": b["total_tok_s"], f"{k}_ops": b["ops"]})
        if a.baseline is not None:
            row["speedup"] = row["baseline_wall_s"] / row["this_wall_s"]
        rows.append(row)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    head = f"{'what':42s} {'wall':>9s}" + (f" {'baseline':>9s} {'speedup':>8s}" if a.baseline else "") + \
        f" {'total tok/s':>12s} {'ops':>8s}"
    print(head)
    for r in rows:
        line = f"{r['what']:42s} {r['this_wall_s']:8.2f}s"
        if a.baseline:
            line += f" {r['baseline_wall_s']:8.2f}s {r['speedup']:7.2f}x"
        tok = r["this_total_tok_s"]
        line += f" {tok:12.4f}" if tok is not None else f" {'':12s}"
        line += f" {r['this_ops']:8d}" if r["this_ops"] else ""
        print(line)
    if len(rows) >= 2 and rows[0]["this_total_tok_s"]:
        print(f"fast/full total tok/s: {rows[1]['this_total_tok_s'] / rows[0]['this_total_tok_s']:.5f}")
        if a.baseline:
            print(f"this/baseline total tok/s (full): {rows[0]['this_total_tok_s'] / rows[0]['baseline_total_tok_s']:.12f}")


if __name__ == "__main__":
    main()
