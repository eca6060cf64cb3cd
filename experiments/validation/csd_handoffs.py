"""Where an engine run's time goes between the host thread and the emulated CSDs.

Run by hand on a validation configuration (the DES's CSD path missed by 25-60 % in decode on
the 2-core VM while each op kind's own time was within 10-20 %; BENCHMARKS.md, session 10):

    python experiments/validation/csd_handoffs.py --model llama-110m --prompt 128 --policy ans \
        --hardware experiments/validation/results/local_w/local_w_mid.yaml

It runs the engine once (`inf2hw.run.run_engine`, as `run.py` does: batch 4, gen 16, fp32, one
torch thread) with `Engine._start` and `Engine._resolve_ticket` wrapped, so that every op's
host-side issue call and every wait for a CSD reply is timed on the engine's clock beside
the worker-side spans. It prints, over the decode steps, per command kind the host thread's
time to issue it (ms), and the hand-offs the plan does not carry:
  down: worker start - host issue end     the query message reaching its worker
  attn: start - max(down end, issue end, load end)   the worker's receiver -> compute thread
  up:   host wait end - worker end        the fetch reply reaching the waiting host
Units: ms; p10 / median / p90 over the run's decode ops.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from op_medians import quantile  # noqa: E402


def _tag(name: str) -> str:
    """s8.L3.m0.down.csd1 -> down.csd (the op's kind, without step, layer, mb, CSD index)."""
    return "".join(c for c in name.split(".m0.")[-1] if not c.isdigit())


def _stats(xs) -> str:
    return (f"n={len(xs):4d}  p10 {quantile(xs, 0.1) * 1e3:7.3f}  median {statistics.median(xs) * 1e3:7.3f}  "
            f"p90 {quantile(xs, 0.9) * 1e3:7.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-110m")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--policy", default="ans")
    ap.add_argument("--hardware", default="local", help="a conf/hardware name, or a profile .yaml file")
    ap.add_argument("--out", default="outputs/csd_handoffs", help="the run's trace and metrics (not committed)")
    a = ap.parse_args()
    from inf2hw.loop import pin_threads

    pin_threads(1)  # the validation sweep's engine setting on the CPU, before torch loads
    import inf2hw.engine as E
    import run as RV
    from inf2hw.run import EngineOptions, run_engine
    from inf2hw.validate import engine_spec

    spec = engine_spec(RV.build_spec(a.model, a.prompt, a.policy, a.hardware, 4, 16, {}), "fp32")
    host = {}  # op name -> (issue begin, issue end) on the engine clock; "WAIT name" -> the wait for its reply
    start, resolve = E.Engine._start, E.Engine._resolve_ticket

    def timed_start(self, op):
        t0 = self.now()
        start(self, op)
        host[op.name] = (t0, self.now())

    def timed_resolve(self, name, ticket):
        t0 = self.now()
        resolve(self, name, ticket)
        host["WAIT " + name] = (t0, self.now())

    E.Engine._start, E.Engine._resolve_ticket = timed_start, timed_resolve
    t0 = time.perf_counter()
    _, _, m, spans = run_engine(spec, EngineOptions(device="cpu", dtype="fp32"), a.out)
    print(f"{a.model} p{a.prompt} {a.policy}: {m.throughput['total_tok_s']:.3f} tok/s "
          f"({time.perf_counter() - t0:.1f} s with setup)")
    sp = {s.name: s for s in spans}
    issue, hop = collections.defaultdict(list), collections.defaultdict(list)
    for name, (b0, b1) in host.items():
        if name.startswith("WAIT") or name not in sp or sp[name].step == 0:
            continue
        issue[_tag(name)].append(b1 - b0)
        s, tag = sp[name], name.split(".m0.")[-1]
        pre, csd = name.split(".m0.")[0] + ".m0.", tag.split(".")[-1]
        if tag.startswith("down.csd"):
            hop["down: worker start - host issue end"].append(s.start_s - b1)
        elif tag.startswith("attn.csd"):
            d, kv = sp.get(pre + "down." + csd), sp.get(pre + "kv." + csd)
            if d is not None and kv is not None:
                hop["attn: start - max(down end, issue end, load end)"].append(s.start_s - max(d.end_s, b1, kv.end_s))
        elif tag.startswith("up.csd"):
            w = host.get("WAIT " + name)
            if w is not None and w[0] < s.end_s:  # the host was already waiting when the worker finished
                hop["up: host wait end - worker end"].append(w[1] - s.end_s)
    print("host thread's issue call, decode steps:")
    for k in sorted(issue):
        print(f"  {k:12s} {_stats(issue[k])}")
    print("hand-offs:")
    for k in sorted(hop):
        print(f"  {k:50s} {_stats(hop[k])}")


if __name__ == "__main__":
    main()
