"""The cost of appending one decode token's K,V to a host KV store (`MemStore.write`).

    python benchmarks/token_write.py --rows 1280 --ctx 528,1552 --d 128 --dtype fp16 --threads 8

In a FlexGen-style decode step the new token's K and V land in the host store before the
CPU attends over it (`inf2hw.ops_io`, the plan's `q_d2h`). The store is [rows, capacity, d]
per tensor, so one token is `rows` separate d-element writes, each in a different page. The
plan's `q_d2h` transfer has no term for them. This times that call exactly as the engine
makes it:
- pinned stores (the engine pins its host store on a GPU machine) and pageable ones;
- capacities `--ctx` (the store of one (layer, micro-batch));
- rotating over `--layers` (layer) stores and over positions, as a run does;
- `torch.set_num_threads(--threads)`, and torch's copy against a one-thread numpy copy.

Prints one JSON line per case: median microseconds per call and per row.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1280, help="KV rows of one (layer, micro-batch): OPT-13B at batch 32")
    ap.add_argument("--ctx", default="528,1552", help="store capacities (tokens)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=41)
    a = ap.parse_args()
    from inf2hw.calibrate_dense import _time_s  # median of `repeat` timed calls
    from inf2hw.stores import MemStore

    torch.set_num_threads(a.threads)
    dt = DTYPES[a.dtype]
    pins = (True, False) if torch.cuda.is_available() else (False,)
    kn, vn = torch.randn(a.rows, 1, a.d).to(dt), torch.randn(a.rows, 1, a.d).to(dt)  # [rows, 1, d]
    for cap in [int(c) for c in a.ctx.split(",")]:
        for pin in pins:
            st = MemStore(a.rows, cap, a.d, dt, "cpu")
            st.pin_memory = pin
            if not (st.preallocate(a.layers, 1) if pin else st.touch(a.layers, 1)):
                print(json.dumps({"ctx": cap, "pinned": pin, "skipped": "does not fit"}))
                continue
            turn = iter(range(1 << 30))

            def torch_write():
                k = next(turn)
                st.write(k % a.layers, 0, (k // a.layers) % cap, kn, vn)

            def numpy_write():
                k = next(turn)
                t = (k // a.layers) % cap
                for dst, src in zip(st._get(k % a.layers, 0), (kn, vn)):
                    np.copyto(dst[:, t:t + 1].view(torch.int16 if dt != torch.float32 else torch.int32).numpy(),
                              src.view(torch.int16 if dt != torch.float32 else torch.int32).numpy())

            for how, fn in (("torch", torch_write), ("numpy", numpy_write)):
                s = _time_s(fn, a.repeat, warm=a.layers)
                print(json.dumps({"ctx": cap, "pinned": pin, "copy": how, "threads": a.threads if how == "torch" else 1,
                                  "us_per_call": round(s * 1e6, 1), "ns_per_row": round(s * 1e9 / (2 * a.rows), 1)}))
            st.data.clear()


if __name__ == "__main__":
    main()
