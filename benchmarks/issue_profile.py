"""How long the engine's thread takes to issue each GPU op, and on what, against its span.

    python benchmarks/issue_profile.py [--model qwen2.5-32b-4l] [--policy inf2] [--prompt 512]   # CUDA GPU

An op on a CUDA stream has the span of the CUDA events recorded around it: when its
stream was idle before the host issued it, the span is the host's time to issue its
kernels, not the GPU's time to run them (qwen2.5-32b-4l's X-cache `attn.gpu` on the
H100: 0.39 ms in layer 0, whose kernels queue behind the X load, 1.3-1.5 ms in layers
1-3, h100_s11e: `op_medians.py --layers`). This runs `--model` (batch 32, `--gen` tokens) through
`inf2hw.run.run_engine` three times with `inf2hw.ops.OpRunner.start` wrapped (a warm-up, then):
1. plain: per op tag, over the decode steps, the median host time to issue (perf_counter
   around `start`) and the median span;
2. under `torch.profiler` (CPU and CUDA activities): for `--tag` (default attn.gpu), the
   host time of each call it makes (aten ops, CUDA runtime calls), summed over the decode
   steps and divided by the op count, largest first; and the GPU time of its kernels.
Units: ms. Nothing is written outside a temporary directory.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "validation"))


def _children(ev, acc: dict) -> None:
    """Add the host time (us) of ev's direct calls to acc, by name."""
    for c in ev.cpu_children:
        acc[c.name] += c.cpu_time_total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--policy", default="inf2")
    ap.add_argument("--model", default="qwen2.5-32b-4l")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=6)
    ap.add_argument("--tag", default="attn.gpu")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (no CUDA events there)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("issue_profile: needs a CUDA GPU (or --device cpu for a smoke test)")
    from run import build_spec  # experiments/validation/run.py

    import inf2hw.ops as O
    from inf2hw.run import EngineOptions, run_engine
    from inf2hw.validate import engine_spec
    from inf2sim.metrics import read_chrome_trace

    issue = defaultdict(list)  # tag -> host ms, decode steps
    prof_on = {"v": False}
    start = O.OpRunner.start

    def wrapped(self, op):
        tag = O.tag_of(op)
        if prof_on["v"] and op.step > 0:
            with torch.profiler.record_function("op:" + tag):
                return start(self, op)
        t0 = time.perf_counter()
        try:
            return start(self, op)
        finally:
            if op.step > 0:
                issue[tag].append((time.perf_counter() - t0) * 1e3)

    O.OpRunner.start = wrapped
    spec = engine_spec(build_spec(a.model, a.prompt, a.policy, a.hardware, 32, a.gen, {}), "fp16")
    opts = EngineOptions(device=a.device, dtype="fp16")
    d = tempfile.mkdtemp()
    run_engine(spec, opts, d)  # warm-up: first run in the process (allocator, kernels)
    issue.clear()
    run_engine(spec, opts, d)
    spans = defaultdict(list)
    for s in read_chrome_trace(f"{d}/trace.json"):
        if s.step > 0:
            spans[s.name.split(".", 3)[3]].append(s.dur_s * 1e3)
    print(f"{a.model} p{a.prompt} {a.policy}, decode steps 1-{a.gen - 1}: op tag, ops, host issue ms median "
          "[min, max], span ms median [min, max]")
    for tag in sorted(issue):
        h, sp = issue[tag], spans.get(tag, [float("nan")])
        print(f"  {tag:14s} {len(h):4d}  {statistics.median(h):7.3f} [{min(h):7.3f}, {max(h):7.3f}]   "
              f"{statistics.median(sp):7.3f} [{min(sp):7.3f}, {max(sp):7.3f}]")

    prof_on["v"] = True
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if a.device == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        run_engine(spec, opts, d)
    evs = [e for e in prof.events() if e.name == "op:" + a.tag]
    if not evs:
        raise SystemExit(f"issue_profile: no '{a.tag}' op in the decode steps")
    acc = defaultdict(float)
    for e in evs:
        _children(e, acc)
    n = len(evs)
    total = statistics.median(e.cpu_time_total for e in evs) / 1e3
    print(f"\nunder torch.profiler: {n} '{a.tag}' ops, host time per op median {total:.3f} ms; "
          "its direct calls, host ms per op (sum / ops), largest first:")
    for name, us in sorted(acc.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"  {us / n / 1e3:8.4f}  {name}")
    outside = (sum(e.cpu_time_total for e in evs) - sum(acc.values())) / n / 1e3
    print(f"  {outside:8.4f}  (Python between the calls: the op's host time less its calls')")
    k = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    print("\nGPU kernels of the whole run (all ops), ms summed, largest 12:")
    for name, us in sorted(k.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {us / 1e3:9.3f}  {name[:110]}")


if __name__ == "__main__":
    main()
