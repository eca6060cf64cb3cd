"""Where the host time of one plan op goes in a real engine run (torch.profiler).

    python experiments/validation/profile_op.py --hardware h100 --device cuda --dtype fp16 \\
        --model opt-13b-4l --prompt 1536 --policy flexgen_dram --op q_d2h --gen 4

When the validation's per-op table shows an op kind far from its model, and the same
call is fast in isolation (as `q_d2h` is on an H100: 3 pageable copies measure ~0.1 ms
alone, 0.5-3 ms in runs), this runs the configuration once through the engine with
torch.profiler recording, wraps every op whose name ends in `.<--op>` in a
`record_function`, and prints:
- the op's spans (ms: median, max);
- the torch / CUDA-runtime calls made inside it, by self CPU time (the profiler's
  key-averages table, restricted to events nested in that op).

Nothing is written except `--out` (default outputs/profile_op/): the engine run's
metrics.json / trace.json and `profile.txt`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default="local")
    ap.add_argument("--model", default="opt-125m", help="a conf/model name (the validation uses opt-125m, llama-110m, opt-13b-4l)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--policy", default="flexgen_dram")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--gen", type=int, default=4)
    ap.add_argument("--op", default="q_d2h", help="the op tag to profile (the part after the last dot)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rows", type=int, default=25, help="rows of the printed table")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "profile_op"))
    a = ap.parse_args()
    from run import build_spec  # experiments/validation/run.py

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from inf2hw import ops as O
    from inf2hw.run import EngineOptions, run_engine
    from inf2hw.validate import engine_spec

    spec = engine_spec(build_spec(a.model, a.prompt, a.policy, a.hardware, a.batch, a.gen, {}), a.dtype)
    if a.threads:
        torch.set_num_threads(a.threads)
    start = O.OpRunner.start

    def traced(self, op):  # the engine's per-op entry point, wrapped for the op of interest
        if op.name.endswith("." + a.op):
            with record_function(f"inf2::{a.op}"):
                return start(self, op)
        return start(self, op)

    O.OpRunner.start = traced
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = EngineOptions(device=a.device, dtype=a.dtype, csd_dirs=(str(out / "kv"),), progress=False)
    try:
        with profile(activities=acts, record_shapes=False) as prof:
            _, _, _, spans = run_engine(spec, opts, str(out / "run"))
    finally:
        O.OpRunner.start = start
    durs = [s.dur_s * 1e3 for s in spans if s.name.endswith("." + a.op)]
    lines = [f"{a.model} p{a.prompt} {a.policy} on {a.device} ({a.dtype}): {len(durs)} `{a.op}` spans, "
             f"median {statistics.median(durs):.3f} ms, max {max(durs):.3f} ms" if durs else f"no `{a.op}` op ran"]
    inside = []
    for ev in prof.events():  # events nested in one of the wrapped ops (same thread, inside its interval)
        if ev.name == f"inf2::{a.op}":
            inside.append((ev.thread, ev.time_range.start, ev.time_range.end))
    agg: dict = {}
    for ev in prof.events():
        if ev.name == f"inf2::{a.op}":
            continue
        for th, t0, t1 in inside:
            if ev.thread == th and t0 <= ev.time_range.start and ev.time_range.end <= t1:
                n, tot, self_t = agg.get(ev.name, (0, 0.0, 0.0))
                agg[ev.name] = (n + 1, tot + ev.cpu_time_total, self_t + ev.self_cpu_time_total)
                break
    lines.append(f"{'call':48s} {'count':>7s} {'total ms':>10s} {'self ms':>10s}")
    for name, (n, tot, self_t) in sorted(agg.items(), key=lambda kv: -kv[1][2])[:a.rows]:
        lines.append(f"{name[:48]:48s} {n:7d} {tot / 1e3:10.3f} {self_t / 1e3:10.3f}")
    text = "\n".join(lines)
    (out / "profile.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
