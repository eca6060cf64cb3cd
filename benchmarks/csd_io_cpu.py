"""How much of a host core an emulated CSD's flash I/O keeps busy.

    python benchmarks/csd_io_cpu.py [--dir DIR]

For a few (rows, stored tokens) shapes of the validation sweep (head_dim 64, fp32, 4 query
heads per row as llama-110m), one `EmulatedCsd` (its worker process, O_DIRECT where the
filesystem allows) serves 200 loads of the stored K,V and 200 one-token stores (an `ans`
spill); the worker's CPU time (utime + stime from /proc/<pid>/stat, Linux) over its
worker-side busy time says what share of a core such a command holds while it runs. The DES
counts a CSD flash move as no host CPU work (`host.core_moves` has no `csd` in calibrated
CPU profiles); session 10 measured 0.3-0.6 here and tried it in the DES (BENCHMARKS.md).
Units: ms per command; shares of one core.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def worker_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="", help="where the CSD's KV files go (default: a temp dir)")
    ap.add_argument("--n", type=int, default=200, help="commands of each kind per shape")
    a = ap.parse_args()
    import torch

    from inf2hw.csd.base import CsdConfig
    from inf2hw.csd.emulated import EmulatedCsd

    root = a.dir or tempfile.mkdtemp(prefix="csd-io-cpu-")
    print(f"{'rows':>5} {'stored':>6} {'command':>8} {'busy ms':>8} {'cpu ms':>7} {'cpu/busy':>8}")
    for rows, stored in ((16, 144), (16, 528), (48, 528)):
        cap = stored + 16
        cfg = CsdConfig(index=0, directory=os.path.join(root, f"r{rows}s{stored}"), num_layers=1,
                        num_micro_batches=1, rows=rows, row_lo=0, capacity_tokens=cap, head_dim=64, group=4,
                        dtype="fp32", compute="torch", direct_io="auto", timeout_s=60)
        dev = EmulatedCsd(cfg)
        try:
            k = torch.randn(rows, cap, 64)  # [rows, cap, d]
            dev.wait(dev.store(0, 0, (0, rows), 0, k, k))
            for what in ("load", "store"):
                c0, busy = worker_cpu_s(dev.pid), 0.0
                for i in range(a.n):
                    if what == "load":
                        _, s, e = dev.wait(dev.load(0, 0, (0, rows), stored))
                    else:  # one token per row, as a plain-ANS spill
                        _, s, e = dev.wait(dev.store(0, 0, (0, rows), stored + i % 8, k[:, :1], k[:, :1]))
                    busy += e - s
                cpu = worker_cpu_s(dev.pid) - c0
                print(f"{rows:5d} {stored:6d} {what:>8} {busy * 1e3 / a.n:8.2f} {cpu * 1e3 / a.n:7.2f} {cpu / busy:8.2f}")
        finally:
            dev.close()


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
