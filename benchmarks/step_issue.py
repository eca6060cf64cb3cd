"""When the engine issues each op of one step, against when its span starts.

    python benchmarks/step_issue.py [--hardware h100] [--policy inf2] [--runs 2]   # CUDA GPU
    python benchmarks/step_issue.py --model qwen2.5-32b-4l --step 5 --gen 8

On the H100 the first compute op of step 0 (the prompt's `embed`) starts ~23 ms into the
run, after the two layers' weight copies, although nothing it uses is copying and the same
order replayed alone (`benchmarks/copy_overlap.py`) starts it at 0.3 ms. This runs
`--model` (default OPT-13B-4L; batch 32, prompt `--prompt`, `--gen` tokens) through
`inf2hw.run.run_engine` with `inf2hw.engine.Engine._start` wrapped: for each of step
`--step`'s first ops (default 0) it prints the host
time (ms on the engine's clock) when the engine began and finished issuing it, and its
span from the trace. Units: ms. Nothing is written outside a temporary directory.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "validation"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--policy", default="inf2")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--model", default="opt-13b-4l")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=2)
    ap.add_argument("--step", type=int, default=0)
    ap.add_argument("--ops", type=int, default=12, help="how many of the step's ops to print, in issue order")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_issue: needs a CUDA GPU")
    from run import build_spec  # experiments/validation/run.py

    import inf2hw.engine as E
    from inf2hw.run import EngineOptions, run_engine
    from inf2hw.validate import engine_spec
    from inf2sim.metrics import read_chrome_trace

    log, start = [], E.Engine._start

    def timed_start(self, op):
        t0 = self.now()
        start(self, op)
        if op.step == a.step:
            log.append((op.name, t0 * 1e3, self.now() * 1e3))

    E.Engine._start = timed_start
    spec = engine_spec(build_spec(a.model, a.prompt, a.policy, a.hardware, 32, max(a.gen, a.step + 1), {}), "fp16")
    for k in range(a.runs):
        d = tempfile.mkdtemp()
        log.clear()
        run_engine(spec, EngineOptions(device="cuda", dtype="fp16"), d)
        spans = {s.name: s for s in read_chrome_trace(f"{d}/trace.json")}
        print(f"run {k}, {a.model} p{a.prompt} {a.policy} step {a.step}: op, issued from / to (host, ms), "
              "span start / end (ms)")
        for name, t0, t1 in log[: a.ops]:
            s = spans.get(name)
            print(f"  {name:24s} {t0:8.2f} {t1:8.2f}   {s.start_s * 1e3 if s else float('nan'):8.2f} "
                  f"{s.end_s * 1e3 if s else float('nan'):8.2f}", flush=True)


if __name__ == "__main__":
    main()
