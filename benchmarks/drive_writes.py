"""The prompt's drive writes as the engine makes them, against the calibration's write curve.

    python benchmarks/drive_writes.py --dir /tmp/inf2-dw --mb 84 --drives 4 --layers 4

FlexGen's prompt (`flexgen_ssd`) writes each layer's K,V to its drive files: per drive one
`DiskStore.write_block` of a token-major block (`--mb` MB; large blocks are pwritten in
`read_threads` parts at once), the drives' writes served by the engine's two I/O threads
(`inf2hw.ops.IO_THREADS`), layer after layer, into files opened empty (O_TRUNC). The
calibration (`inf2hw.calibrate_io`, mode `diskstore`) times pwrites of the same size into
fresh files created sparse at their full size, two streams at once. Medians of the write
times, side by side in one call:

- `calibration`: `calibrate_io._streams` (diskstore, 2 streams, fresh sparse files);
- `engine`: DiskStore over `--drives` files opened with O_TRUNC, as the engine's run does;
- `engine_sized`: the same with each file first truncated to its full size (sparse);
- `engine_beside_d2h` (CUDA only): `engine` while a pinned GPU -> host copy loop runs, as
  the next layers' K,V leave the GPU during the prompt.

Prints one JSON object: ms per drive write and aggregate GB/s (1e9 B/s) per variant.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from inf2hw import calibrate_io
from inf2hw.stores import DiskStore

D, ITEM = 128, 2  # fp16 rows of head_dim 128


def engine_writes(directory: str, drives: int, layers: int, mb: float, sized: bool, threads: int) -> dict:
    rows_per = max(1, int(mb * 1e6 / (512 * 2 * D * ITEM)))  # a 512-token block of rows_per rows per drive
    tokens = 512
    st = DiskStore([os.path.join(directory, f"d{i}") for i in range(drives)], rows_per * drives, tokens + 16, D,
                   torch.float16, layers, 1, read_threads=threads)
    if sized:
        for fd in st.fds:
            os.ftruncate(fd, layers * (tokens + 16) * rows_per * 2 * D * ITEM)
    block = torch.randn(tokens, rows_per, 2, D).to(torch.float16)  # [n, rows_i, 2, d], token-major
    times, lock = [], threading.Lock()

    def one(i: int, layer: int) -> None:
        t0 = time.perf_counter()
        st.write_block(i, layer, 0, 0, block)
        with lock:
            times.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as io:  # the engine's I/O threads
        for f in [io.submit(one, i, layer) for layer in range(layers) for i in range(drives)]:
            f.result()
    wall = time.perf_counter() - t0
    nbytes = block.numel() * ITEM
    st.close()
    return {"write_ms": round(statistics.median(times) * 1e3, 2), "block_MB": round(nbytes / 1e6, 1),
            "aggregate_gbps": round(layers * drives * nbytes / wall / 1e9, 3)}


class D2hLoop:
    """Pinned GPU -> host copies on a side stream until stopped (the prompt's K,V leaving)."""

    def __init__(self, nbytes: int = 256 << 20):
        self.d = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        self.h = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.s, self.stop = torch.cuda.Stream(), threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            with torch.cuda.stream(self.s):
                self.h.copy_(self.d, non_blocking=True)
            self.s.synchronize()

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/inf2-dw")
    ap.add_argument("--mb", type=float, default=84.0, help="MB per drive per layer (OPT-13B, batch 32, p512, 4 drives: 84)")
    ap.add_argument("--drives", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4, help="DiskStore read_threads (EngineOptions.copy_threads)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    out = {"mb": a.mb, "drives": a.drives, "layers": a.layers}
    try:
        req = int(a.mb * 1e6)
        paths = calibrate_io.make_files(os.path.join(a.dir, "cal"), 2, 128 << 20)
        cal = [calibrate_io._streams(paths, "write", "diskstore", req, 0.6, 256 << 20) for _ in range(a.repeat)]
        per, agg = statistics.median(c[0] for c in cal), statistics.median(c[1] for c in cal)
        out["calibration"] = {"write_ms": round(req / (per * 1e9) * 1e3, 2), "aggregate_gbps": round(agg, 3)}
        shutil.rmtree(os.path.join(a.dir, "cal"), ignore_errors=True)
        variants = [("engine", False, False), ("engine_sized", True, False)]
        if torch.cuda.is_available():
            variants.append(("engine_beside_d2h", False, True))
        for name, sized, d2h in variants:
            runs = []
            for _ in range(a.repeat):
                work = os.path.join(a.dir, name)
                os.makedirs(work, exist_ok=True)
                if d2h:
                    with D2hLoop():
                        runs.append(engine_writes(work, a.drives, a.layers, a.mb, sized, a.threads))
                else:
                    runs.append(engine_writes(work, a.drives, a.layers, a.mb, sized, a.threads))
                shutil.rmtree(work, ignore_errors=True)
            out[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(json.dumps({name: out[name]}), flush=True)
    finally:
        shutil.rmtree(a.dir, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
