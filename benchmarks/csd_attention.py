"""An emulated CSD worker's attention, old path against new, on one CSD's share of a decode step.

    python benchmarks/csd_attention.py                       # OPT-13B share: 16 x 40 heads / 8 CSDs, ctx 2064
    python benchmarks/csd_attention.py --threads 2 --pieces 2,4,8,16 --tail 16

The worker's compute thread attends q [rows, group, d] over its staged K,V [rows, cap, d]
(storage dtype, a [:, :n] view of the staging buffer). Old path: `inf2hw.attention`
on the whole share (one fresh fp32 copy of K and V per call). New path:
`inf2hw.csd.worker.torch_attention` (`inf2hw.host_attention.cpu_attention` in pieces of rows with
reused fp32 buffers), at each piece size asked for. Prints GB/s of K,V read per second
(2 * rows * n * d * itemsize / time, best of `--reps`), side by side, for no tail and,
with `--tail T`, the write-back tails ("kv": T tokens of K,V; "scores": T host-made
scores), and the largest difference of the new results from the old.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _best(fn, reps: int) -> float:
    from engine_vs_flexgen import _best as best_of  # benchmarks/ is this script's directory

    return best_of(fn, reps, warm=True)


def old_attention(q, k, v, n, tail):
    """The worker's attend before pieces (inf2hw.attention on the whole share)."""
    from inf2hw.attention import attend_partial, attend_with_scores, tail_scores

    q4, k, v = q.unsqueeze(2), k[:, :n], v[:, :n]
    if tail is None:
        out, lse = attend_partial(q4, k, v)
    elif tail[0] == "kv":
        out, lse = attend_with_scores(q4, k, v, tail_scores(q4, tail[1]), tail[2])
    else:
        out, lse = attend_with_scores(q4, k, v, tail[1].unsqueeze(2), tail[2])
    return out.squeeze(2), lse.squeeze(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16 * 40 // 8, help="KV rows of one CSD (seqs x kv heads / CSDs)")
    ap.add_argument("--group", type=int, default=1, help="query heads per KV head (OPT: 1)")
    ap.add_argument("--ctx", type=int, default=2064, help="stored tokens attended")
    ap.add_argument("--d", type=int, default=128, help="head_dim")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp16")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker's `threads`)")
    ap.add_argument("--pieces", default="", help="rows per piece to try (default: the worker's piece_rows)")
    ap.add_argument("--tail", type=int, default=0, help="also time the kv and scores tails of this many tokens")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    from inf2hw.csd.worker import piece_rows, torch_attention
    from inf2hw.host_attention import AttnWorkspace

    torch.set_num_threads(a.threads)
    dt = getattr(torch, DTYPES[a.dtype])
    g = torch.Generator().manual_seed(0)
    cap = a.ctx + 64  # a staging buffer holds more slots than are filled: K,V are strided views
    q = torch.randn(a.rows, a.group, a.d, generator=g).to(dt)
    k, v = (torch.randn(a.rows, cap, a.d, generator=g).to(dt) for _ in range(2))
    tails = [("none", None)]
    if a.tail:
        kt, vt = (torch.randn(a.rows, a.tail, a.d, generator=g).to(dt) for _ in range(2))
        st = torch.randn(a.rows, a.group, a.tail, generator=g)
        tails += [("kv", ("kv", kt, vt)), ("scores", ("scores", st, vt))]
    pieces = [int(x) for x in a.pieces.split(",") if x] or [piece_rows(a.ctx, a.d)]
    kv_bytes = 2 * a.rows * a.ctx * a.d * k.element_size()
    print(f"csd attention: rows={a.rows} group={a.group} ctx={a.ctx} d={a.d} {a.dtype} threads={a.threads} "
          f"({kv_bytes / 1e6:.1f} MB of K,V per call; GB/s of K,V, best of {a.reps})")
    head = "".join(f"{'new piece=' + str(p):>16s}" for p in pieces)
    print(f"{'tail':8s}{'old':>10s}{head}{'max |new-old|':>16s}")
    for name, tail in tails:
        ref = old_attention(q, k, v, a.ctx, tail)
        row = f"{name:8s}{kv_bytes / _best(lambda: old_attention(q, k, v, a.ctx, tail), a.reps) / 1e9:10.2f}"
        diff = 0.0
        for p in pieces:
            ws = AttnWorkspace()
            row += f"{kv_bytes / _best(lambda: torch_attention(q, k, v, a.ctx, tail, ws, p), a.reps) / 1e9:16.2f}"
            out, lse = torch_attention(q, k, v, a.ctx, tail, ws, p)
            diff = max(diff, float((out - ref[0]).abs().max()), float((lse - ref[1]).abs().max()))
        print(f"{row}{diff:16.2e}", flush=True)


if __name__ == "__main__":
    main()
