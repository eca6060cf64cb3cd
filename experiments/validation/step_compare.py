"""Step by step, measured against simulated, from a validation's --work directory.

    python experiments/validation/step_compare.py /tmp/s11d/opt-13b-4l_p512_flexgen_ssd
    python experiments/validation/step_compare.py /tmp/s11d/opt-13b-4l_p512_flexgen_ssd --step 1

The per-kind table of `run.py` says which op kind misses; this says when. Without --step it
prints each step's duration (ms) in the engine run (`emu/trace.json`) and in the DES
(`sim/trace.json`, written by `run.py` or `run.py --resim`): a step ends when its last op
ends, and lasts from the previous step's end (step 0 from the run's first op). With --step
it prints that step's ops in the engine's start order: start (ms since the step's first op)
and duration measured, then the same for the DES, and the trace's resource (pid.tid). The
engine's waits show as gaps between an op's deps and its start, or as spans longer than the
DES's on a shared resource. It was how session 11 found the H100 engine's ops held behind
weight copies (BENCHMARKS.md).

A run dir comes from a `run.py --tar` archive (`tar xzf runs.tgz -C <dir>`, then
`run.py --resim --work <dir>` to write the simulated traces) or a `--work` directory.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List


def spans(path: Path) -> List[dict]:
    """The complete events ('X') of a Chrome trace: name, ts / dur in us, pid, tid, args."""
    tr = json.loads(Path(path).read_text())
    ev = tr["traceEvents"] if isinstance(tr, dict) else tr
    return [e for e in ev if e.get("ph") == "X"]


def step_durations_ms(evs: List[dict]) -> Dict[int, float]:
    """Step -> ms from the previous step's end (the run's first op for the first) to its last op's end."""
    ends: Dict[int, float] = defaultdict(float)
    for e in evs:
        s = e["args"].get("step")
        if s is not None:
            ends[s] = max(ends[s], e["ts"] + e["dur"])
    prev = min(e["ts"] for e in evs)
    out = {}
    for s in sorted(ends):
        out[s] = (ends[s] - prev) / 1e3
        prev = ends[s]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a config's directory holding emu/trace.json and sim/trace.json")
    ap.add_argument("--step", type=int, default=None, help="print this step's ops")
    a = ap.parse_args()
    d = Path(a.run_dir)
    emu = spans(d / "emu" / "trace.json")
    sim_path = d / "sim" / "trace.json"
    if not sim_path.exists():
        raise SystemExit(f"step_compare: {sim_path} is missing: run `run.py --resim --work {d.parent}` first")
    sim = spans(sim_path)
    if a.step is None:
        me, ms = step_durations_ms(emu), step_durations_ms(sim)
        print("step  measured ms  simulated ms  sim/meas")
        for s in sorted(me):
            print(f"{s:4d}  {me[s]:11.1f}  {ms.get(s, float('nan')):12.1f}  {ms.get(s, float('nan')) / me[s]:8.2f}")
        return
    by_sim = {e["name"]: e for e in sim}
    ops = sorted((e for e in emu if e["args"].get("step") == a.step), key=lambda e: e["ts"])
    if not ops:
        raise SystemExit(f"step_compare: no ops of step {a.step} in {d / 'emu' / 'trace.json'}")
    t0e = ops[0]["ts"]
    mine = [e for e in sim if e["args"].get("step") == a.step]
    t0s = min(e["ts"] for e in mine) if mine else 0.0
    print(f"{'op':28s} {'measured start, ms':>19s} {'dur':>8s}   {'simulated start':>15s} {'dur':>8s}   resource")
    for e in ops:
        s = by_sim.get(e["name"])
        sim_txt = f"{(s['ts'] - t0s) / 1e3:15.2f} {s['dur'] / 1e3:8.2f}" if s else f"{'-':>15s} {'-':>8s}"
        print(f"{e['name']:28s} {(e['ts'] - t0e) / 1e3:19.2f} {e['dur'] / 1e3:8.2f}   {sim_txt}   "
              f"{e['pid']}.{e['tid']}")


if __name__ == "__main__":
    main()
