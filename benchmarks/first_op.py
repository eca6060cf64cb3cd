"""The first GPU op of an engine run (the prompt's embed) against the same call timed alone.

    python benchmarks/first_op.py --runs 2          # needs a CUDA GPU and conf/hardware/h100.yaml (or --hardware)
    python benchmarks/first_op.py --inside --runs 3

Part 1: `inf2hw.run.run_engine` of OPT-13B-4L (batch 32, prompt 512, 2 tokens) under
`ans_xcache` and `flexgen_dram`, `--runs` times each in one process; prints the span of
`s0.L-1.m0.embed` from each run's trace (CUDA events, as every validation compares it)
and how long the engine's `torch.cuda.synchronize()` before its clock waited.
Part 3 (`--inside`, instead of 1 and 2): `flexgen_dram` p512, `--runs` runs in one process,
with the engine's embed timed from inside on host timers: `inf2hw.model.embed` (wrapped
in synchronizations), `OpRunner._dense` of the embed op (which also makes the ids and
positions) and `OpRunner.start`; printed for step 0's and step 1's embed.
Part 2: `inf2hw.model.embed` on the same model's weights on the GPU, timed alone with
host timers around synchronizations (the ids / positions copy apart), four calls per
prompt length. Units: ms.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "validation"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--inside", action="store_true", help="part 3 only")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("first_op: needs a CUDA GPU")
    if a.inside:
        return inside(a.runs, a.hardware)
    from run import build_spec  # experiments/validation/run.py

    from inf2hw import model as M
    from inf2hw.run import EngineOptions, _weights, run_engine
    from inf2hw.validate import engine_spec
    from inf2sim.metrics import read_chrome_trace

    waits, sync = [], torch.cuda.synchronize

    def timed_sync(*args, **kw):
        t0 = time.perf_counter()
        sync(*args, **kw)
        waits.append((time.perf_counter() - t0) * 1e3)

    torch.cuda.synchronize = timed_sync
    for policy in ("ans_xcache", "flexgen_dram"):
        spec = engine_spec(build_spec("opt-13b-4l", 512, policy, a.hardware, 32, 2, {}), "fp16")
        for k in range(a.runs):
            d = tempfile.mkdtemp()
            waits.clear()
            run_engine(spec, EngineOptions(device="cuda", dtype="fp16"), d)
            e = {s.name: s for s in read_chrome_trace(f"{d}/trace.json")}["s0.L-1.m0.embed"]
            print(policy, "run", k, "embed span ms", round(e.dur_s * 1e3, 2), "first sync waits ms",
                  [round(w, 1) for w in waits[:2]], flush=True)
    torch.cuda.synchronize = sync
    w = _weights(spec, torch.float16, "cuda")
    for P in (512, 1536):
        ids, pos = torch.randint(0, 50000, (32, P)), torch.arange(0, P).expand(32, -1)
        for k in range(4):
            sync()
            t0 = time.perf_counter()
            di, dp = ids.to("cuda"), pos.to("cuda")
            sync()
            t1 = time.perf_counter()
            x = M.embed(w, di, dp)
            sync()
            print(P, k, "to-dev ms %.2f embed ms %.2f" % ((t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3), flush=True)
            del x


def inside(runs: int, hardware: str) -> None:
    from run import build_spec  # experiments/validation/run.py

    import inf2hw.ops as O
    from inf2hw import model as M
    from inf2hw.run import EngineOptions, run_engine
    from inf2hw.validate import engine_spec
    from inf2sim.metrics import read_chrome_trace

    log, embed, dense, start = [], M.embed, O.OpRunner._dense, O.OpRunner.start

    def timed_embed(w, ids, pos):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = embed(w, ids, pos)
        torch.cuda.synchronize()
        log.append(("embed", (time.perf_counter() - t0) * 1e3))
        return x

    def timed_dense(self, op, tag):
        t0 = time.perf_counter()
        r = dense(self, op, tag)
        if tag == "embed":
            log.append(("dense", (time.perf_counter() - t0) * 1e3))
        return r

    def timed_start(self, op):
        t0 = time.perf_counter()
        r = start(self, op)
        if op.name.endswith("embed") and op.step == 0:
            log.append(("start", (time.perf_counter() - t0) * 1e3))
        return r

    M.embed, O.OpRunner._dense, O.OpRunner.start = timed_embed, timed_dense, timed_start
    spec = engine_spec(build_spec("opt-13b-4l", 512, "flexgen_dram", hardware, 32, 2, {}), "fp16")
    for k in range(runs):
        d = tempfile.mkdtemp()
        log.clear()
        run_engine(spec, EngineOptions(device="cuda", dtype="fp16"), d)
        e = {s.name: s for s in read_chrome_trace(f"{d}/trace.json")}["s0.L-1.m0.embed"]
        print(k, "span", round(e.dur_s * 1e3, 2), [(x, round(y, 2)) for x, y in log[:6]], flush=True)


if __name__ == "__main__":
    main()
