"""The engine's CPU attention over pinned vs pageable host memory, at several shapes.

    python benchmarks/pinned_attention.py --shapes 256x8192,1280x1552,1280x528 --threads 8

On a CUDA machine the engine's host KV store (`inf2hw.stores.HostStore`, FlexGen's
`flexgen_dram`) is pinned when it fits (`EngineOptions.pin_host_kv`), so its decode-step
CPU attention reads pinned pages; `inf2 calibrate` times the same call
(`inf2hw.host_attention.host_attention`, submitted to a one-thread pool as the engine does,
K, V views [rows, ctx - 16, d] of [rows, ctx, d] buffers, rotated over >= 2 GB so each call
reads memory) over pageable tensors at rows 64 x threads / 2. This times both kinds of
memory at each `rows x ctx` shape, medians of `--repeat`. Prints one JSON object: ms per
call and K+V GB/s (1e9 B/s) per shape and memory. Pinned memory needs a CUDA GPU; without
one only pageable is timed.
"""
from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

import torch

from inf2hw.calibrate_dense import _time_s  # median of `repeat` timed calls
from inf2hw.host_attention import AttnWorkspace, host_attention

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _stores(rows: int, cap: int, d: int, dtype, pinned: bool, total: int):
    one = 2 * rows * cap * d * torch.empty((), dtype=dtype).element_size()
    out = []
    for _ in range(max(2, -(-total // one))):
        kv = []
        for _ in range(2):
            t = torch.empty(rows, cap, d, dtype=dtype, pin_memory=pinned)  # [rows, cap, d]
            t.copy_(torch.randn(rows, cap, d))
            kv.append(t)
        out.append(kv)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="256x8192,1280x1552,1280x528", help="rows x capacity tokens, comma separated")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--gb", type=float, default=2.0, help="GB of copies each shape rotates over")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = DTYPES[a.dtype]
    kinds = [False, True] if torch.cuda.is_available() else [False]
    pool = ThreadPoolExecutor(1)  # the engine's CPU-attention thread
    out = {"threads": a.threads, "dtype": a.dtype, "d": a.d, "cuda": torch.cuda.is_available()}
    for shape in a.shapes.split(","):
        rows, cap = (int(x) for x in shape.split("x"))
        n = cap - 16
        q = torch.randn(rows, 1, 1, a.d).to(dtype)
        ws = AttnWorkspace()
        res = {}
        for pinned in kinds:
            stores = _stores(rows, cap, a.d, dtype, pinned, int(a.gb * 1e9))
            turn = iter(range(1 << 30))

            def call():
                k, v = stores[next(turn) % len(stores)]
                return pool.submit(host_attention, q, k[:, :n], v[:, :n], ws).result()

            with torch.inference_mode():
                s = _time_s(call, a.repeat)
            kv = 2 * rows * n * a.d * torch.empty((), dtype=dtype).element_size()
            res["pinned" if pinned else "pageable"] = {"ms": round(s * 1e3, 3), "gbps": round(kv / s / 1e9, 2)}
            del stores
        out[shape] = res
        print(json.dumps({shape: res}), flush=True)
    pool.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
