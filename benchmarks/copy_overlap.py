"""Does a GPU op wait for weight copies it does not use? The engine's step-0 embed case.

    python benchmarks/copy_overlap.py [--layer-mib 630] [--repeat 3]      # needs a CUDA GPU

On the H100 the engine's first GPU op of a run (the prompt's `embed`, which needs no
weights) starts only after the two layers' weight copies the engine issued before it
(~23 ms: `h100_s11b`, opt-13b-4l p512 `inf2`). This replays that order without the engine:
two "layers" of pinned host tensors (7 tensors, `--layer-mib` in all, as an OPT layer's
weights) copied with `copy_(non_blocking=True)` on a side stream, then an embedding
lookup ([32, 512] ids from a [50272, 5120] table, fp16) between two CUDA events, on
- `default`: the current (legacy default) stream, as the engine's compute ops run;
- `side`: a stream of its own (`torch.cuda.Stream()`);
- `default, after sync`: the same as `default` with nothing copying (the op alone).
Printed per case (ms since a reference event recorded before the copies): when the
op's start event fired, when it ended, when the second copy ended, and how long the host
took to issue the copies (host timer). Units: ms. Nothing is written.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def _layer(mib: int, dev=None, pinned: bool = False):
    """7 fp16 tensors of mib MiB in all (OPT's wq wk wv wo fc1 fc2 + a small bias)."""
    parts = [1, 1, 1, 1, 4, 4]
    unit = (mib << 20) // 2 // sum(parts)  # fp16 elements per part unit
    ts = [torch.empty(p * unit, dtype=torch.float16, device=dev or "cpu", pin_memory=pinned) for p in parts]
    ts.append(torch.empty(5120, dtype=torch.float16, device=dev or "cpu", pin_memory=pinned))
    return ts


def one(case: str, host, gpu, table, ids, side) -> dict:
    torch.cuda.synchronize()
    ev = {k: torch.cuda.Event(enable_timing=True) for k in ("ref", "op0", "op1", "cp")}
    copier = torch.cuda.Stream()
    ev["ref"].record()
    t0 = time.perf_counter()
    if case != "default, after sync":
        with torch.cuda.stream(copier):
            for layer_h, layer_g in zip(host, gpu):
                for g, h in zip(layer_g, layer_h):
                    g.copy_(h, non_blocking=True)
            ev["cp"].record(copier)
    issue_ms = (time.perf_counter() - t0) * 1e3
    stream = side if case == "side" else torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        ev["op0"].record(stream)
        F.embedding(ids, table)
        ev["op1"].record(stream)
    torch.cuda.synchronize()
    out = {"op start": ev["ref"].elapsed_time(ev["op0"]), "op end": ev["ref"].elapsed_time(ev["op1"]),
           "issue copies (host)": issue_ms}
    if case != "default, after sync":
        out["copies end"] = ev["ref"].elapsed_time(ev["cp"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer-mib", type=int, default=630)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("copy_overlap: needs a CUDA GPU")
    host = [_layer(a.layer_mib, pinned=True) for _ in range(2)]
    gpu = [_layer(a.layer_mib, dev="cuda") for _ in range(2)]
    table = torch.randn(50272, 5120, device="cuda").half()  # [vocab, hidden]
    ids = torch.randint(0, 50272, (32, 512), device="cuda")  # [batch, prompt]
    side = torch.cuda.Stream()
    cases = ["default", "side", "default, after sync"]
    for c in cases:  # warm-up: kernels loaded, allocator primed
        one(c, host, gpu, table, ids, side)
    print(f"two layers of {a.layer_mib} MiB pinned -> GPU on a side stream, then an embedding lookup; "
          f"median of {a.repeat} (ms since the reference event)")
    for c in cases:
        got = [one(c, host, gpu, table, ids, side) for _ in range(a.repeat)]
        print(f"  {c:22s} " + ", ".join(f"{k} {statistics.median(g[k] for g in got):.2f}" for k in got[0]))


if __name__ == "__main__":
    main()
