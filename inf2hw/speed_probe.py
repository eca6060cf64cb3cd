"""A short fixed workload that says how fast this host's cores run right now.

Called by `inf2hw.calibrate.measure` (the profile's `host.probe_ms`: the probe at
calibration time) and by `inf2hw.validate.measure_once` (the probe right before and right
after every engine run it compares). `inf2hw.validate.compare_run` divides the two: a host
whose speed drifts (the 2-core VM: identical work 20-30 % apart from one pass of a sweep to
the next, `benchmarks/machine_noise.py`) is then simulated at the speed it had during the
run, by `host.compute_scale` (`inf2sim.rates.compute_seconds`, every op on the host's
cores). The probe is the same work every time and is not any op of the run: one dense
block of the engine (`model.qkv` + `model.post` of a 512-wide OPT layer, 256 tokens,
compute-bound) and four decode-shaped GEMVs over weights beyond the caches
(memory-bound), on the calling thread's torch threads. Units: ms.
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional

import numpy as np

_PROBE: Optional[Callable[[], None]] = None


def _build() -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    from .calibrate_dense import prefill_block

    blk, _ = prefill_block("opt", 512, 256, "cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(4096, 1024, generator=g) for _ in range(6)]  # 6 x 16 MB: beyond a 32 MB LLC
    x = torch.randn(4, 1024, generator=g)

    def probe() -> None:
        with torch.inference_mode():
            blk()
            for w in ws[:4]:
                F.linear(x, w)
            ws.append(ws.pop(0))  # the next call starts on weights this one did not touch last

    return probe


def probe_samples(repeat: int = 5) -> List[float]:
    """ms of each of `repeat` probes (built once per process; one warm call first)."""
    global _PROBE
    if _PROBE is None:
        _PROBE = _build()
        _PROBE()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _PROBE()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def probe_ms(repeat: int = 5) -> float:
    """Median ms of `repeat` probes."""
    return float(np.median(probe_samples(repeat)))
