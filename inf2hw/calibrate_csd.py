"""Emulated-CSD microbenchmarks of `inf2 calibrate`: attention rate and command costs.

Every attend carries a one-token k,v tail (what the ANS policies' decode ships).
Called by `inf2hw.calibrate.measure`. Starts one real `EmulatedCsd` (the same worker
process the engine uses) on the calibration directory, stores KV rows, then times the
commands the engine sends it for every decode attention: `send_query` (the `down`
transfer), `load` (the `kv` transfer, SSD -> "FPGA"), `attend` (the FPGA attention op)
and `fetch` (the `up` transfer), with the worker's own start/end stamps, exactly what
the engine's trace records for those ops. The engine-side round trip of one small
command (call -> reply seen) is the shared-memory + pipe IPC cost.

Attention time is fitted as `ipc + kv_bytes / rate` (the rate from the two longest
contexts, whose K,V do not fit in the caches; the fixed part from the shortest), with
`kv_bytes` from `inf2sim.accel.kv_bytes` (the simulator's own byte count for an FPGA
attention call), so `rate_gbps` can be put in `csd.fpga.rate_gbps` unchanged and the
intercept in `host.ipc_us` (the fixed cost the simulator adds per FPGA op). The rate is
valid for the storage dtype it was measured with (the byte count assumes fp16).
Units: seconds, bytes, GB/s = 1e9 B/s, us.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


def fit_line(xs: Sequence[float], ts: Sequence[float]) -> Tuple[float, float]:
    """Least squares t = a + b x with a >= 0, b >= 0: returns (a, b)."""
    x, t = np.asarray(xs, float), np.asarray(ts, float)
    if len(set(x.tolist())) < 2:
        return 0.0, float(np.median(t / np.maximum(x, 1e-30)))
    b, a = np.polyfit(x, t, 1)
    if b <= 0:
        return float(np.median(t)), 0.0
    if a < 0:
        return 0.0, float(np.sum(x * t) / np.sum(x * x))
    return float(a), float(b)


@dataclass
class CsdCosts:
    compute: str
    dtype: str
    direct: bool
    head_dim: int
    group: int
    rows: int
    ctx: List[int]
    attend_s: List[float]  # median worker-side attend time per ctx
    rate_gbps: float  # accel.kv_bytes per second of attend work (slope)
    attend_fixed_us: float  # intercept
    down_us: float  # median send_query span (worker side)
    up_us: float  # median fetch span
    load_gbps: List[float]  # median load payload GB/s per ctx (request = ctx * head_dim * itemsize)
    roundtrip_us: float  # engine-side call -> reply for a small send_query
    store_token_us: float  # one-token append per row (K and V), worker side, per row


def measure_csd(directory: str, compute: str = "torch", dtype: str = "fp32", head_dim: int = 128, group: int = 1,
                rows: int = 16, ctx: Sequence[int] = (256, 1024, 2048), repeat: int = 5,
                tick: Callable[[], None] = lambda: None, direct_io: str = "auto", threads: int = 1) -> CsdCosts:
    """Time one emulated CSD's commands (see the module docstring); its worker computes on
    `threads` torch threads (the share of the cores the engine gives each CSD)."""
    import torch

    from inf2sim.accel import kv_bytes

    from .csd.base import CsdConfig
    from .csd.emulated import EmulatedCsd
    from .csd.worker import TORCH_DTYPE

    cap = max(ctx) + 8
    cfg = CsdConfig(index=0, directory=os.path.join(directory, f".inf2-calibrate-csd-{os.getpid()}"),
                    num_layers=1, num_micro_batches=1, rows=rows, row_lo=0, capacity_tokens=cap,
                    head_dim=head_dim, group=group, dtype=dtype, compute=compute, direct_io=direct_io,
                    timeout_s=60.0)
    dev = EmulatedCsd(cfg, compute_threads=threads)
    tdt = TORCH_DTYPE[dtype]
    try:
        g = torch.Generator().manual_seed(0)
        k = torch.randn(rows, cap, head_dim, generator=g).to(tdt)
        v = torch.randn(rows, cap, head_dim, generator=g).to(tdt)
        dev.wait(dev.store(0, 0, (0, rows), 0, k, v))
        tick()
        q = torch.randn(rows, group, head_dim, generator=g)
        # a one-token k,v tail, as every decode attention of the ANS policies ships (write-back tail)
        tail = ("kv", torch.randn(rows, 1, head_dim, generator=g).to(tdt), torch.randn(rows, 1, head_dim, generator=g).to(tdt))
        att: Dict[int, List[float]] = {n: [] for n in ctx}
        loads: Dict[int, List[float]] = {n: [] for n in ctx}
        downs, ups, rts = [], [], []
        for n in ctx:
            for r in range(repeat + 1):
                t_call = time.perf_counter()
                tq = dev.send_query(0, 0, q, tail)
                _, qs, qe = dev.wait(tq)
                rt = time.perf_counter() - t_call
                tl = dev.load(0, 0, (0, rows), n)
                ta = dev.attend(0, 0)
                tf = dev.fetch(0, 0)
                _, ls, le = dev.wait(tl)
                _, as_, ae = dev.wait(ta)
                _, fs, fe = dev.wait(tf)
                if r == 0:
                    continue  # warm-up (first touch of staging buffers, kernel library)
                att[n].append(ae - as_)
                loads[n].append(2 * rows * n * head_dim * torch.empty((), dtype=tdt).element_size() / (le - ls) / 1e9)
                downs.append(qe - qs)
                ups.append(fe - fs)
                rts.append(rt)
            tick()
        # one-token appends (the plain-ANS spill), worker side
        app = []
        for t in range(min(8, cap - max(ctx))):
            _, s, e = dev.wait(dev.store(0, 0, (0, rows), max(ctx) + t, k[:, :1], v[:, :1]))
            app.append((e - s) / rows)
        tick()
    finally:
        dev.close()
    med = {n: float(np.median(ts)) for n, ts in att.items()}
    xs = [kv_bytes(rows, n, head_dim, group, 1, 1) for n in ctx]
    # The rate from the two longest contexts (working sets beyond the caches, as a real KV
    # cache is: shorter ones run faster per byte), the fixed cost from the shortest.
    _, b = fit_line(xs[-2:], [med[n] for n in ctx[-2:]])
    a = max(0.0, med[ctx[0]] - xs[0] * b)
    return CsdCosts(compute, dtype, dev.direct, head_dim, group, rows, list(ctx), [med[n] for n in ctx],
                    (1.0 / b / 1e9) if b > 0 else 0.0, a * 1e6, float(np.median(downs)) * 1e6,
                    float(np.median(ups)) * 1e6, [float(np.median(loads[n])) for n in ctx],
                    float(np.median(rts)) * 1e6, float(np.median(app)) * 1e6 if app else 0.0)


def measure_together(directory: str, dtype: str = "fp16", head_dim: int = 128, rows: int = 64,
                     ctx: Sequence[int] = (512, 2048), count: int = 4, threads: int = 1, repeat: int = 3,
                     direct_io: str = "auto") -> Tuple[List[float], List[float]]:
    """Median worker-side attend seconds per context of one emulated CSD alone and of `count`
    of them attending at once (each loads first, then every attend goes out together), as
    an `ans` decode step has them: (alone, together). The workers are the engine's
    `EmulatedCsd` on `threads` torch threads each."""
    import torch

    from .csd.base import CsdConfig
    from .csd.emulated import EmulatedCsd
    from .csd.worker import TORCH_DTYPE

    cap, dt = max(ctx) + 8, TORCH_DTYPE[dtype]
    where = os.path.join(directory, f".inf2-calibrate-together-{os.getpid()}")
    devs = []
    try:
        g = torch.Generator().manual_seed(0)
        k = torch.randn(rows, cap, head_dim, generator=g).to(dt)  # [rows, cap, d]
        q = torch.randn(rows, 1, head_dim, generator=g)  # [rows, G, d]
        for i in range(count):
            cfg = CsdConfig(index=i, directory=where, num_layers=1, num_micro_batches=1, rows=rows, row_lo=0,
                            capacity_tokens=cap, head_dim=head_dim, group=1, dtype=dtype, compute="torch",
                            direct_io=direct_io, timeout_s=120.0)
            devs.append(EmulatedCsd(cfg, compute_threads=threads))
        for d in devs:
            d.wait(d.store(0, 0, (0, rows), 0, k, k))

        def attends(which, n):
            for d in which:  # loads first, so the attends run together
                d.wait(d.send_query(0, 0, q, None))
                d.wait(d.load(0, 0, (0, rows), n))
            ts = [d.attend(0, 0) for d in which]
            fs = [d.fetch(0, 0) for d in which]
            got = [d.wait(t) for d, t in zip(which, ts)]
            for d, f in zip(which, fs):
                d.wait(f)
            return [e - s for _, s, e in got]

        alone, together = [], []
        for n in ctx:
            a_s, t_s = [], []
            for r in range(repeat + 1):
                x, y = attends(devs[:1], n), attends(devs, n)
                if r:  # the first round warms the workers
                    a_s += x
                    t_s += y
            alone.append(float(np.median(a_s)))
            together.append(float(np.median(t_s)))
        return alone, together
    finally:
        for d in devs:
            d.close()


def hls_available() -> Optional[str]:
    """None if the g++-built HLS kernel library loads here, else why not."""
    try:
        from .csd import hls_kernel

        hls_kernel.load_library()
        return None
    except Exception as e:  # no g++, build failure, ...
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
