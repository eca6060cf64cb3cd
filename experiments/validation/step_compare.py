"""Step by step, measured against simulated, from a validation's --work directory.

    python experiments/validation/step_compare.py /tmp/s11d/opt-13b-4l_p512_flexgen_ssd
    python experiments/validation/step_compare.py /tmp/s11d/opt-13b-4l_p512_flexgen_ssd --step 1

The per-kind table of `run.py` says which op kind misses; this says when. Without --step it
prints each step's duration (ms) in the engine run (`emu/trace.json`) and in the DES
(`sim/trace.json`, written by `run.py` or `run.py --resim`): a step ends when its last op
ends, and lasts from the previous step's end (step 0 from the run's first op). With --step
it prints that step's ops in the engine's start order: start (ms since the step's first op)
and duration measured, then the same for the DES, and the engine's resource (the trace's
thread name; traces read by `inf2sim.metrics.read_chrome_trace`). The
engine's waits show as gaps between an op's deps and its start, or as spans longer than the
DES's on a shared resource. It was how session 11 found the H100 engine's ops held behind
weight copies (BENCHMARKS.md).

A run dir comes from a `run.py --tar` archive (`tar xzf runs.tgz -C <dir>`, then
`run.py --resim --work <dir>` to write the simulated traces) or a `--work` directory.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from inf2sim.metrics import read_chrome_trace  # noqa: E402
from inf2sim.plan import Span  # noqa: E402


def step_durations_ms(spans: List[Span]) -> Dict[int, float]:
    """Step -> ms from the previous step's end (the run's first op for the first) to its last op's end."""
    ends: Dict[int, float] = defaultdict(float)
    for sp in spans:
        ends[sp.step] = max(ends[sp.step], sp.end_s)
    prev = min(sp.start_s for sp in spans)
    out = {}
    for st in sorted(ends):
        out[st] = round((ends[st] - prev) * 1e3, 6)  # (traces carry microseconds: ns is beyond them)
        prev = ends[st]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a config's directory holding emu/trace.json and sim/trace.json")
    ap.add_argument("--step", type=int, default=None, help="print this step's ops")
    a = ap.parse_args()
    d = Path(a.run_dir)
    emu = read_chrome_trace(d / "emu" / "trace.json")
    sim_path = d / "sim" / "trace.json"
    if not sim_path.exists():
        raise SystemExit(f"step_compare: {sim_path} is missing: run `run.py --resim --work {d.parent}` first")
    sim = read_chrome_trace(sim_path)
    if a.step is None:
        me, ms = step_durations_ms(emu), step_durations_ms(sim)
        print("step  measured ms  simulated ms  sim/meas")
        for st in sorted(me):
            print(f"{st:4d}  {me[st]:11.1f}  {ms.get(st, float('nan')):12.1f}  {ms.get(st, float('nan')) / me[st]:8.2f}")
        return
    by_sim = {sp.name: sp for sp in sim}
    ops = sorted((sp for sp in emu if sp.step == a.step), key=lambda sp: sp.start_s)
    if not ops:
        raise SystemExit(f"step_compare: no ops of step {a.step} in {d / 'emu' / 'trace.json'}")
    t0e = ops[0].start_s
    t0s = min((sp.start_s for sp in sim if sp.step == a.step), default=0.0)
    print(f"{'op':28s} {'measured start, ms':>19s} {'dur':>8s}   {'simulated start':>15s} {'dur':>8s}   resource")
    for e in ops:
        sp = by_sim.get(e.name)
        sim_txt = (f"{(sp.start_s - t0s) * 1e3:15.2f} {(sp.end_s - sp.start_s) * 1e3:8.2f}" if sp
                   else f"{'-':>15s} {'-':>8s}")
        print(f"{e.name:28s} {(e.start_s - t0e) * 1e3:19.2f} {(e.end_s - e.start_s) * 1e3:8.2f}   {sim_txt}   "
              f"{e.resource}")


if __name__ == "__main__":
    main()
