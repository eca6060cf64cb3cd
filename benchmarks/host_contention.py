"""What the host's copies and its CPU attention do to each other on a GPU machine.

    python benchmarks/host_contention.py --rows 1280 --ctx 528 --d 128 --threads 8 --mib 256

The profile (`inf2 calibrate`) times each of these alone; in a FlexGen-style decode step
they overlap: the next layer's weights stream host -> GPU while the CPU attends over the
host KV store, and in the prompt the K,V leave the GPU while weights come in. Side by side
in one process, medians of `--repeat`:

- pinned host -> GPU and GPU -> host copies of `--mib` MiB alone, and both at once on two
  streams (each direction's GB/s while the other runs: PCIe is full duplex, host memory and
  the root complex may not be);
- the engine's CPU attention (`inf2hw.host_attention.host_attention`, `--threads` torch
  threads, K, V [rows, ctx, d] rotated over >= 1 GB so each call reads memory) alone, and
  while a loop of pinned host -> GPU copies runs on a side stream (the weight stream).

Prints one JSON object (GB/s = 1e9 B/s; ratios are "with the other running / alone").
Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json

import torch

from inf2hw.calibrate_dense import _time_s  # median of `repeat` timed calls
from inf2hw.calibrate_io import H2dStream, duplex_copies
from inf2hw.host_attention import AttnWorkspace, host_attention

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def copies(nbytes: int, repeat: int) -> dict:
    """Pinned H2D and D2H GB/s alone and concurrently (`inf2 calibrate`'s own measurement)."""
    out = duplex_copies("cuda", nbytes, repeat)
    out["h2d_ratio"] = out["h2d_with_d2h_gbps"] / out["h2d_alone_gbps"]
    out["d2h_ratio"] = out["d2h_with_h2d_gbps"] / out["d2h_alone_gbps"]
    return out


def attention(rows: int, ctx: int, d: int, dtype, threads: int, repeat: int, nbytes: int) -> dict:
    torch.set_num_threads(threads)
    kv = 2 * rows * ctx * d * torch.empty((), dtype=dtype).element_size()
    copies_n = max(2, -(-(1 << 30) // kv))
    stores = [(torch.randn(rows, ctx, d).to(dtype), torch.randn(rows, ctx, d).to(dtype)) for _ in range(copies_n)]
    q = torch.randn(rows, 1, 1, d).to(dtype)
    ws, turn = AttnWorkspace(), iter(range(1 << 30))

    def call():
        k, v = stores[next(turn) % len(stores)]
        host_attention(q, k, v, ws=ws)

    alone = _time_s(call, repeat)
    with H2dStream(nbytes) as w:
        loaded = _time_s(call, repeat)
    return {"attention_kv_bytes": kv, "attention_alone_gbps": kv / alone / 1e9,
            "attention_with_h2d_gbps": kv / loaded / 1e9, "attention_ratio": alone / loaded,
            "h2d_during_attention_gbps": w.gbps(), "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1280, help="KV rows (sequences x KV heads): OPT-13B at batch 32")
    ap.add_argument("--ctx", type=int, default=528)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--mib", type=int, default=256, help="MiB per copy")
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("host_contention: needs a CUDA GPU (torch.cuda.is_available() is False)")
    nbytes = a.mib << 20
    res = {"device": torch.cuda.get_device_name(0), "mib": a.mib, **copies(nbytes, a.repeat),
           **attention(a.rows, a.ctx, a.d, DTYPES[a.dtype], a.threads, a.repeat, nbytes)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
