"""The engine's host (CPU) decode attention over its KV store: the pieces path
(`inf2hw.host_attention.cpu_attention`: fp32 copies of K, V per piece of rows, then bmm) against
torch's fused CPU flash kernel (`inf2hw.host_attention.flash_cpu_attention`), side by side in one
process, per torch thread count.

    python benchmarks/cpu_attention.py --rows 640 --ctx 2064 --d 128 --dtype fp16 --threads 16,15,14,8

Shapes default to one (layer, micro-batch) of OPT-13B decode at batch 16, prompt 2048
(16 sequences x 40 heads = 640 rows). K, V are views [rows, ctx, d] of [rows, cap, d]
stores as the engine reads them, rotated over copies (>= 1 GB in all) so every call reads
from memory. Prints one JSON line per (kernel, threads): median seconds and K+V GB/s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from inf2hw import host_attention as H

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def time_kernel(kernel: str, q, stores, ctx: int, repeat: int) -> float:
    """Median seconds of one call of `kernel` ("pieces" | "flash") over rotating stores."""
    ws = H.AttnWorkspace()
    turn = iter(range(1 << 30))

    def call():
        k, v = stores[next(turn) % len(stores)]
        k, v = k[:, :ctx], v[:, :ctx]
        if kernel == "flash":
            return H.flash_cpu_attention(q, k, v)
        return H.cpu_attention(q, k, v, ws=ws)

    for _ in range(2):
        call()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=640)
    ap.add_argument("--ctx", type=int, default=2064)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--group", type=int, default=1)
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--threads", default="", help="comma-separated torch thread counts (default: this machine's)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--total-gb", type=float, default=1.0, help="stores rotated over, in all")
    a = ap.parse_args()
    if H._FLASH is None:
        raise SystemExit("cpu_attention: this torch has no _scaled_dot_product_flash_attention_for_cpu")
    dt = DTYPES[a.dtype]
    cap = a.ctx + 16
    one = 2 * a.rows * cap * a.d * torch.empty((), dtype=dt).element_size()
    n = max(1, int(a.total_gb * 1e9 // one))
    stores = [(torch.randn(a.rows, cap, a.d).to(dt), torch.randn(a.rows, cap, a.d).to(dt)) for _ in range(n)]
    q = torch.randn(a.rows, a.group, 1, a.d).to(dt)
    kv_bytes = 2 * a.rows * a.ctx * a.d * torch.empty((), dtype=dt).element_size()
    threads = [int(t) for t in a.threads.split(",")] if a.threads else [torch.get_num_threads()]
    with torch.inference_mode():
        for t in threads:
            torch.set_num_threads(t)
            for kernel in ("pieces", "flash"):
                s = time_kernel(kernel, q, stores, a.ctx, a.repeat)
                print(json.dumps({"kernel": kernel, "threads": t, "rows": a.rows, "ctx": a.ctx, "d": a.d,
                                  "group": a.group, "dtype": a.dtype, "median_s": s, "kv_gbps": kv_bytes / s / 1e9}),
                      flush=True)


if __name__ == "__main__":
    main()
