"""Load bandwidth of one emulated CSD on this machine's disk: O_DIRECT vs buffered.

Run by hand: ``python benchmarks/csd_io.py [--dir DIR] [--mib 64]``. Stores `mib` MiB of
fp16 KV (32 rows x 4096 tokens x head_dim 128, so each request is one row's K or V of
n_stored * head_dim * 2 = 1 MiB at the default size) through `EmulatedCsd`, then times
`load` (the worker's own start/end stamps) with direct_io on, buffered with a cold page
cache (fsync + POSIX_FADV_DONTNEED first) and buffered warm. For comparison it also times
one raw pread of the same bytes from a plain file. Prints GB/s (1e9 B/s), best of
`--repeat` runs.
"""
from __future__ import annotations

import argparse
import mmap
import os
import time

import torch

from inf2hw.csd.base import CsdConfig
from inf2hw.csd.emulated import EmulatedCsd
from inf2hw.csd.kvfile import aligned_buffer

ROWS, HEAD_DIM = 32, 128


def drop_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def csd_load_gbps(directory: str, mib: int, direct_io: str, cold: bool, repeat: int) -> float:
    tokens = mib * 2**20 // (ROWS * HEAD_DIM * 2 * 2)  # K and V, fp16
    cfg = CsdConfig(index=0, directory=directory, num_layers=1, num_micro_batches=1, rows=ROWS, row_lo=0,
                    capacity_tokens=tokens, head_dim=HEAD_DIM, group=1, dtype="fp16", direct_io=direct_io)
    dev = EmulatedCsd(cfg)
    try:
        k = torch.randn(ROWS, tokens, HEAD_DIM).half()
        dev.wait(dev.store(0, 0, (0, ROWS), 0, k, k))
        best = 0.0
        for _ in range(repeat):
            if cold:
                drop_cache(dev.kv_paths)
            _, t0, t1 = dev.wait(dev.load(0, 0, (0, ROWS), tokens))
            best = max(best, 2 * ROWS * tokens * HEAD_DIM * 2 / (t1 - t0) / 1e9)
        return best
    finally:
        dev.close()


def raw_read_gbps(directory: str, mib: int, direct: bool, repeat: int) -> float:
    path = os.path.join(directory, "raw.bin")
    n = mib * 2**20
    buf = aligned_buffer(n)
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20) * mib)
    best = 0.0
    try:
        for _ in range(repeat):
            drop_cache([path])
            fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
            t0 = time.perf_counter()
            got = os.preadv(fd, [memoryview(buf)], 0)
            dt = time.perf_counter() - t0
            os.close(fd)
            assert got == n, got
            best = max(best, n / dt / 1e9)
    finally:
        os.unlink(path)
        buf.close()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(os.getcwd(), ".csd_io_bench"))
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    print(f"{a.mib} MiB from {a.dir} (page size {mmap.PAGESIZE} B); GB/s, best of {a.repeat}")
    print(f"  csd load, O_DIRECT          {csd_load_gbps(a.dir, a.mib, 'on', False, a.repeat):6.2f}")
    print(f"  csd load, buffered cold     {csd_load_gbps(a.dir, a.mib, 'off', True, a.repeat):6.2f}")
    print(f"  csd load, buffered warm     {csd_load_gbps(a.dir, a.mib, 'off', False, a.repeat):6.2f}")
    print(f"  raw pread, O_DIRECT         {raw_read_gbps(a.dir, a.mib, True, a.repeat):6.2f}")
    print(f"  raw pread, buffered cold    {raw_read_gbps(a.dir, a.mib, False, a.repeat):6.2f}")
    try:
        os.rmdir(a.dir)
    except OSError:
        pass


if __name__ == "__main__":
    main()
