"""How fast the engine's prompt K,V drive writes go into fresh page-cache files.

    python benchmarks/fresh_writes.py --layers 12 --mb 6 --gap-s 0.45            # idle
    python benchmarks/fresh_writes.py --layers 12 --mb 6 --gap-s 0.45 --busy     # one core busy with GEMMs

The write of one layer's prompt K,V to FlexGen's drive files, as `inf2hw.stores.DiskStore.write`
makes it below its split size: a fresh token-major buffer, the transposing copy into it, then
one `pwrite` per drive, the drives on two threads at once, into files created empty (O_TRUNC),
at each layer's offset; `--gap-s` between layers (a prompt layer's compute). `--busy` runs
GEMMs on another thread, as the engine's dense ops do beside its I/O threads. Prints one
JSON object: per layer and drive, the copy and the pwrite in ms, and the pwrite rate. Units:
ms, GB/s; --mb is MB per drive per layer (opt-125m, batch 4, prompt 512, fp32, 2 drives: 6).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--mb", type=float, default=6.0, help="MB per drive per layer")
    ap.add_argument("--gap-s", type=float, default=0.45)
    ap.add_argument("--busy", action="store_true")
    ap.add_argument("--dir", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = tempfile.mkdtemp(prefix="fresh-writes-", dir=a.dir or None)
    tokens, d_head = 512, 64
    rows = max(1, int(a.mb * 1e6 / (tokens * 2 * d_head * 4)))
    src = torch.randn(rows, tokens, 2, d_head)  # [rows, tokens, K/V, d] as the projection leaves it
    slot = (tokens + 16) * rows * 2 * d_head * 4  # a layer's slot in the file (capacity tokens)
    fds = [os.open(os.path.join(d, f"kv_drive{i}.bin"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600) for i in range(2)]
    stop = threading.Event()

    def gemms() -> None:
        x, w = torch.randn(2048, 768), torch.randn(768, 3072)
        while not stop.is_set():
            x @ w

    busy = threading.Thread(target=gemms) if a.busy else None
    if busy:
        busy.start()

    def write(i: int, layer: int):
        t0 = time.perf_counter()
        buf = torch.empty(tokens, rows, 2, d_head)  # token-major, as DiskStore writes
        buf.copy_(src.transpose(0, 1))
        t1 = time.perf_counter()
        view, off = memoryview(buf.view(torch.uint8).numpy()).cast("B"), layer * slot
        while view:
            n = os.pwrite(fds[i], view, off)
            view, off = view[n:], off + n
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3

    out = []
    try:
        with ThreadPoolExecutor(2) as pool:
            for layer in range(a.layers):
                res = [f.result() for f in [pool.submit(write, i, layer) for i in range(2)]]
                out.append([{"copy_ms": round(c, 2), "pwrite_ms": round(w, 2),
                             "pwrite_gbps": round(src.numel() * 4 / w / 1e6, 3)} for c, w in res])
                time.sleep(a.gap_s)
    finally:
        stop.set()
        if busy:
            busy.join()
        for fd in fds:
            os.close(fd)
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)
    w = sorted(x["pwrite_ms"] for layer in out for x in layer)
    print(json.dumps({"mb_per_drive": round(src.numel() * 4 / 1e6, 2), "busy": a.busy, "layers": out,
                      "pwrite_ms_min_median_max": [w[0], w[len(w) // 2], w[-1]]}, indent=1))


if __name__ == "__main__":
    main()
