"""A short fixed disk workload that says how fast the emulated CSDs' disk runs right now.

Called by `inf2hw.calibrate.measure` (the profile's `csd.ssd.probe_read_gbps` /
`probe_write_gbps`: the probe at calibration time) and by `inf2hw.validate.measure_once`
(the probe right before and right after every engine run, in the run's CSD directory).
`inf2hw.validate.compare_run` records their ratio (`run_disk`) and, with `disk_probe=True`,
scales the profile's emulated-CSD flash curves by it, as the speed probe
(`inf2hw.speed_probe`) scales the host's compute. Meant for a virtual disk whose speed
drifts (an H100 machine's calibration read its CSD curves 1.5-2.1x faster at >= 256 KiB
requests than another's while its `ans` runs were 15-16 % slower, BENCHMARKS.md session 10);
off by default, since one run's probes before and after it differed 0.5-1.7x on the 2-core
VM and applying them did not improve the tables on either machine (session 10).
The probe is the same work every time
and no op of a run: one stream writes then reads back PROBE_BYTES in REQ_BYTES requests,
O_DIRECT where the directory takes it (as the CSD workers' `inf2hw.csd.kvfile`), three
times; the file is removed. Units: GB/s (1e9 B/s) of payload.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Dict, Tuple

from .csd.kvfile import _read_all, _write_all, aligned_buffer, probe_direct_io

PROBE_BYTES = 64 << 20
REQ_BYTES = 1 << 20
REPEAT = 3


def probe_gbps(directory: str) -> Tuple[float, float]:
    """(read, write) GB/s: the medians of REPEAT write-then-read passes over one file in
    `directory` (O_DIRECT where it is taken, else buffered with an fsync after the writes)."""
    direct = probe_direct_io(directory) is None
    path = os.path.join(directory, f".inf2-disk-probe-{os.getpid()}")
    buf = aligned_buffer(REQ_BYTES)
    mv = memoryview(buf)
    mv[:] = os.urandom(REQ_BYTES)  # incompressible payload
    reads, writes = [], []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0), 0o644)
    try:
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            for off in range(0, PROBE_BYTES, REQ_BYTES):
                _write_all(fd, mv, off)
            if not direct:
                os.fsync(fd)
            t1 = time.perf_counter()
            for off in range(0, PROBE_BYTES, REQ_BYTES):
                _read_all(fd, mv, off)
            t2 = time.perf_counter()
            writes.append(PROBE_BYTES / (t1 - t0) / 1e9)
            reads.append(PROBE_BYTES / (t2 - t1) / 1e9)
    finally:
        os.close(fd)
        mv.release()
        buf.close()
        try:
            os.unlink(path)
        except OSError:
            pass
    return statistics.median(reads), statistics.median(writes)


def probe_record(directory: str) -> Dict[str, float]:
    """{"read_gbps", "write_gbps"} of one probe where `directory` takes O_DIRECT; {} where it
    does not (a buffered probe times the page cache, not the disk)."""
    if probe_direct_io(directory) is not None:
        return {}
    r, w = probe_gbps(directory)
    return {"read_gbps": r, "write_gbps": w}
