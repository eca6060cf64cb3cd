"""FlexGen-style CPU attention over one drive's history: gather-then-attend against in place.

    python benchmarks/drive_attention.py --rows 48 --ctx 520 --d 64 --dtype fp32 --threads 1

A drive file is token-major ([t, rows, 2, d], `inf2hw.stores.DiskStore`), so its K, V are
strided [rows, t, d] views. The engine used to gather them into row-major K, V joined with
the new token (two copies) before attending; it now attends over the views themselves with
the new token as the tail of one softmax (`inf2hw.ops.OpRunner._attend_drives`). Prints the
median ms per call of each, side by side in one run, and the max |difference| of the
outputs. Default shape: OPT-125M, batch 4, prompt 512 (the CPU engine-vs-FlexGen run).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--ctx", type=int, default=520, help="history tokens on the drive")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()

    import torch

    from inf2hw import attention as A
    from inf2hw.host_attention import cpu_attention

    torch.set_num_threads(a.threads)
    dt = getattr(torch, DTYPES[a.dtype])
    buf = torch.randn(a.ctx, a.rows, 2, a.d).to(dt)  # one drive's read buffer, token-major
    k, v = buf[:, :, 0].permute(1, 0, 2), buf[:, :, 1].permute(1, 0, 2)  # [rows, t, d] views
    q = torch.randn(a.rows, 1, 1, a.d)
    kn, vn = torch.randn(a.rows, 1, a.d).to(dt), torch.randn(a.rows, 1, a.d).to(dt)

    def gather():
        return cpu_attention(q, torch.cat([k, kn], dim=1), torch.cat([v, vn], dim=1))

    def in_place():
        return cpu_attention(q, k, v, scores_tail=A.tail_scores(q, kn), v_tail=vn)

    def median_ms(fn) -> float:
        fn()
        ts = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3

    g, p = median_ms(gather), median_ms(in_place)
    diff = (gather()[0] - in_place()[0]).abs().max().item()
    print(f"drive attention: rows={a.rows} ctx={a.ctx} d={a.d} {a.dtype} threads={a.threads} "
          f"({2 * a.rows * a.ctx * a.d * buf.element_size() / 1e6:.1f} MB of K,V)")
    print(f"gather then attend  {g:8.3f} ms\nin place + tail     {p:8.3f} ms   ({g / p:.1f}x)   max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
