"""`inf2 calibrate`: measure this machine and return what a hardware profile needs.

Called by `inf2hw.loop.calibrate_cli` (mode=calibrate), which writes the result with
`inf2hw.calibrate_profile.write_profile` to conf/hardware/<name>.yaml. `measure(opts)`
runs every microbenchmark under one tqdm bar and returns a `Calibration`: plain numbers
plus, for each, how it was measured. The I/O half lives in `inf2hw.calibrate_io`, the
emulated-CSD half in `inf2hw.calibrate_csd`.

What is measured, and where it goes in the profile
  dense device   the device that runs the plan's `gpu` ops: the GPU when torch sees one
                 (device=cuda), else this CPU. GEMM rate (fp32 and fp16) -> gpu.fp*_tflops;
                 weight-streaming rate of a decode-shaped GEMM (4 rows) -> gpu.mem_gbps;
                 the engine's own block ops (model.qkv / model.post) at a negligible size
                 -> gpu.launch_us (the fixed cost of one dense op); decode attention on
                 that device -> gpu.attention_efficiency (its byte rate / mem_gbps); the
                 engine's causal prefill attention -> gpu.attention_score_ns (what each
                 element of its materialised score matrix costs beyond that model).
  CPU attention  `inf2hw.attention.attend_partial` on the host, the call the engine's CPU
                 attention thread makes, fitted as fixed + bytes / rate over context
                 lengths -> cpu.attention_gbps, cpu.op_overhead_us; host GEMM -> cpu.gemm_gflops.
  engine         the engine's own dispatch cost per op (`engine_dispatch`) -> added to
                 every op's fixed cost (launch, link latency, ipc), since the simulator
                 has no dispatch of its own.
  memory         torch copy_ bandwidth -> host.dram; with a GPU, pinned / pageable
                 host<->GPU copies -> gpu.link.
  disks          `calibrate_io.disk_curves`: O_DIRECT and buffered, 1 and N processes.
  emulated CSD   `calibrate_csd.measure_csd` with torch compute (and the HLS library
                 when it builds): fpga.rate_gbps, host.ipc_us, CSD link latencies.
Every number is the median of repeated runs: a typical call, which is what an engine run
sees (on a machine shared with other work, its background load included: `inf2 validate`
then compares the median engine run, so both see the same background). torch uses `threads` intra-op threads throughout, as the engine then must.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import calibrate_csd, calibrate_io


@dataclass(frozen=True)
class CalibrateOptions:
    name: str = "local"
    directory: str = ""  # where the disk and CSD files go ("" = a temp dir under the run dir)
    quick: bool = False
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "fp32"  # the engine's dtype the profile is for (storage and compute)
    threads: int = 1  # torch intra-op threads in the engine process
    procs: int = 2  # concurrent disk processes (the emulated CSDs sharing one disk)
    csd_compute: str = "torch"  # torch | hls: which emulated-CSD compute the profile's fpga rate describes
    csd_io: str = "direct"  # direct | buffered: the engine's csd.direct_io (on | off) the CSD curves describe


@dataclass
class Calibration:
    opts: CalibrateOptions
    when: str
    machine: str
    device: str
    values: Dict[str, float] = field(default_factory=dict)
    how: Dict[str, str] = field(default_factory=dict)
    disk: Dict[str, Any] = field(default_factory=dict)  # mode -> DiskCurves
    csd: Dict[str, Any] = field(default_factory=dict)  # compute -> CsdCosts
    skipped: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def put(self, key: str, value: float, how: str) -> None:
        self.values[key] = float(value)
        self.how[key] = how


def _time_s(fn: Callable[[], Any], repeat: int, sync: Callable[[], None] = lambda: None, warm: int = 1,
            stat: str = "best") -> float:
    """Seconds of one call: the median of `repeat` calls (a typical call: what a run sees,
    background load included) for rates and fixed costs alike; `stat` is kept for callers
    that name it."""
    for _ in range(warm):
        fn()
    sync()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _tiny_opt():
    from inf2sim.specs import ModelSpec

    return ModelSpec(name="calib-tiny", family="opt", num_layers=1, hidden=64, num_heads=4, num_kv_heads=4,
                     head_dim=16, ffn_dim=256, vocab_size=128, max_positions=64)


def dense_device(cal: Calibration, dev: str, quick: bool, tick) -> None:
    """GEMM peak, weight streaming, per-op overhead and attention rate of the dense device."""
    import torch

    from . import attention as A
    from . import model as M
    from .run import DTYPES

    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    rep = 3 if quick else 7
    for dname in ("fp32", "fp16"):
        dt = DTYPES[dname]
        if dev == "cpu" and dname == "fp16":
            m = k = n = 256  # CPU half-precision GEMM is orders of magnitude slower: keep it short
        elif dev.startswith("cuda"):
            m = k = n = 4096 if quick else 8192
        else:
            m, k, n = (256, 1024, 1024) if quick else (1024, 2048, 2048)
        a = torch.randn(m, k, device=dev).to(dt)
        b = torch.randn(k, n, device=dev).to(dt)
        s = _time_s(lambda: a @ b, rep, sync)
        cal.put(f"gemm_{dname}_tflops", 2.0 * m * k * n / s / 1e12,
                f"median of {rep} torch matmuls [{m}x{k}]@[{k}x{n}] {dname} on {dev}")
        tick()
    dt = DTYPES[cal.opts.dtype]
    k, n = (2048, 4096) if quick else (4096, 8192)
    if dev.startswith("cuda"):
        k, n = 8192, 16384
    w = torch.randn(k, n, device=dev).to(dt)
    x = torch.randn(4, k, device=dev).to(dt)
    s = _time_s(lambda: x @ w, rep * 2, sync)
    cal.put("stream_gbps", w.numel() * w.element_size() / s / 1e9,
            f"weight bytes / median time of [4x{k}]@[{k}x{n}] {cal.opts.dtype} on {dev} (decode GEMM, weight-bound)")
    tick()
    md = _tiny_opt()
    lw = M.init_random(md, dtype=dt, device=dev).layers[0]
    xx = torch.randn(1, 1, md.hidden, device=dev).to(dt)
    pos = torch.zeros(1, 1, dtype=torch.long, device=dev)
    att = torch.randn(1, md.num_heads, 1, md.head_dim, device=dev).to(dt)
    with torch.inference_mode():
        s_qkv = _time_s(lambda: M.qkv(lw, md, xx, pos), 20, sync, warm=3, stat="typical")
        s_post = _time_s(lambda: M.post(lw, md, xx, att), 20, sync, warm=3, stat="typical")
    cal.put("dense_op_us", (s_qkv + s_post) / 2 * 1e6,
            f"mean of the engine's model.qkv ({s_qkv * 1e6:.0f} us) and model.post ({s_post * 1e6:.0f} us) "
            f"on a hidden-64 layer, 1 token, {dev} (median of 20): the fixed cost of one dense op")
    tick()
    qh = torch.randn(1, md.num_heads, 1, md.head_dim, device=dev).to(dt)

    def host_copy():  # what the engine's q_d2h does with a step's q, k, v
        return (A.q_to_rows(qh, md.num_kv_heads).to("cpu", dt), A.kv_to_rows(qh).to("cpu", dt),
                A.kv_to_rows(qh).to("cpu", dt))

    s = _time_s(host_copy, 50, sync, warm=3, stat="typical")
    cal.put("host_op_us", s * 1e6, f"median of 50 engine-style host copies of one token's q, k, v "
            f"(attention.q_to_rows / kv_to_rows + .to('cpu')) on {dev}: the fixed cost of a copy op")
    if dev.startswith("cuda"):
        cal.put("gpu_memory_gb", torch.cuda.get_device_properties(0).total_memory / 1e9, "torch device properties")
    # decode attention: the slope over two sizes (the fixed part is launch / call overhead), with
    # working sets far beyond the caches, as a real KV cache is
    rows, d = (256, 128) if dev.startswith("cuda") else (64, 128)
    ctxs = (2048, 8192) if dev.startswith("cuda") else ((512, 2048) if quick else (1024, 4096))
    xs, ts = [], []
    q = torch.randn(rows, 1, 1, d, device=dev).to(dt)
    for ctx in ctxs:
        kk = torch.randn(rows, ctx, d, device=dev).to(dt)
        with torch.inference_mode():
            ts.append(_time_s(lambda: A.attend_partial(q, kk, kk), rep * 2, sync))
        xs.append(2 * rows * ctx * d * kk.element_size())
        del kk
    _, per_byte = calibrate_csd.fit_line(xs, ts)
    att_gbps = 1.0 / per_byte / 1e9 if per_byte > 0 else xs[-1] / ts[-1] / 1e9
    cal.put("dense_attention_gbps", att_gbps,
            f"K+V bytes per second, slope of the median times of attention.attend_partial rows={rows} d={d} "
            f"ctx={list(ctxs)} {cal.opts.dtype} on {dev}")
    # prefill: the engine's attend_heads(causal) materialises [P, P] fp32 scores per head; what the
    # score matrix costs beyond the rates model's max(flops, kv bytes) term, per element
    heads = 16
    ps = (64, 128, 256) if quick else (128, 256, 512, 1024)
    if dev.startswith("cuda"):
        heads, ps = 64, (512, 1024, 2048)
    peak = cal.values["gemm_fp32_tflops" if q.element_size() == 4 else "gemm_fp16_tflops"] * 1e12
    xs, res = [], []
    for p in ps:
        qp = torch.randn(1, heads, p, d, device=dev).to(dt)
        with torch.inference_mode():
            s = _time_s(lambda: A.attend_heads(qp, qp, qp, causal=True), 3 if quick else 5, sync)
        base = max(2.0 * heads * p * p * d / peak, 2 * heads * p * d * qp.element_size() / (att_gbps * 1e9))
        xs.append(heads * p * p)
        res.append(s - base)
    _, per = calibrate_csd.fit_line(xs, res)
    cal.put("attention_score_ns", per * 1e9,
            f"slope over P={list(ps)} of (median time of attention.attend_heads causal, {heads} heads d={d}, minus "
            f"max(flops/peak, kv/attention rate)) per score element heads*P*P, {cal.opts.dtype} on {dev}")
    tick()


def engine_dispatch(cal: Calibration, n_ops: int = 64, repeat: int = 5) -> None:
    """The real engine's own cost per op: `Engine.execute` over a chain of `n_ops` no-op ops
    (`merge`, which the engine runs as a no-op); the median gap between one op's end and
    the next one's start. It grows with the number of ops in a step (the engine rescans
    the waiting ops), so n_ops is a typical step's critical path."""
    import torch

    from inf2sim.config import default_config, specs_from_config
    from inf2sim.plan import DenseCompute, StepPlan
    from inf2sim.scheduler import build_plan

    from .engine import Engine, EngineContext

    spec = specs_from_config(default_config(model="llama-tiny", workload="tiny", policy="flexgen_dram"))
    _, b = build_plan(spec.model, spec.workload, spec.hardware, spec.policy)
    eng = Engine(EngineContext(spec, None, "cpu", torch.float32, torch.float32,
                               torch.zeros(spec.workload.batch, 1, dtype=torch.long), b.layout))
    gaps = []
    try:
        for r in range(repeat):
            ops, prev = [], None
            for i in range(n_ops):
                name = f"s{r}.L{i}.m0.merge"
                ops.append(DenseCompute(name, (prev,) if prev else (), r, i, 0, "merge", device="gpu"))
                prev = name
            spans = sorted(eng.execute(StepPlan(r, "decode", 1, 1, tuple(ops))), key=lambda sp: sp.start_s)
            gaps += [spans[i + 1].start_s - spans[i].end_s + spans[i + 1].dur_s for i in range(len(spans) - 1)]
    finally:
        eng.close()
    cal.put("engine_op_us", float(np.median(gaps)) * 1e6,
            f"median gap end->next start (+ its no-op duration) of inf2hw.engine.Engine over a chain of {n_ops} "
            f"no-op ops: the engine's dispatch cost per op, charged to every op's device or link")


def cpu_attention(cal: Calibration, quick: bool, tick) -> None:
    """The engine's CPU attention call, fitted fixed + bytes / rate; and host GEMM."""
    import torch

    from . import attention as A
    from .run import DTYPES

    from concurrent.futures import ThreadPoolExecutor

    dt = DTYPES[cal.opts.dtype]
    rows, d = 64, 128  # up to 268 MB (fp32) of K+V: a real KV cache is far beyond the caches
    ctxs = (128, 1024, 4096) if quick else (128, 1024, 4096, 8192)
    xs, ts = [], []
    pool = ThreadPoolExecutor(max_workers=1)  # the engine runs CPU attention on a one-thread pool
    try:
        for n in ctxs:
            cap = n + 16  # a MemStore view: [rows, :n] of a longer buffer, as the engine reads it
            q = torch.randn(rows, 1, 1, d).to(dt)
            kb = torch.randn(rows, cap, d).to(dt)
            with torch.inference_mode():
                s = _time_s(lambda: pool.submit(A.attend_partial, q, kb[:, :n], kb[:, :n]).result(),
                            5 if quick else 11)
            xs.append(2 * rows * n * d * kb.element_size())
            ts.append(s)
    finally:
        pool.shutdown()
    a, b = calibrate_csd.fit_line(xs, ts)
    how = (f"attention.attend_partial submitted to a one-thread pool as the engine does, rows={rows} d={d} "
           f"ctx={list(ctxs)} {cal.opts.dtype}, {cal.opts.threads} torch thread(s); fit t = fixed + bytes/rate "
           f"over the median times")
    cal.put("cpu_attention_gbps", 1.0 / b / 1e9 if b > 0 else max(xs) / max(ts) / 1e9, how)
    cal.put("cpu_attention_fixed_us", a * 1e6, how)
    tick()
    m, k, n = (256, 1024, 1024) if quick else (1024, 2048, 2048)
    aa, bb = torch.randn(m, k), torch.randn(k, n)
    s = _time_s(lambda: aa @ bb, 3 if quick else 7)
    cal.put("cpu_gemm_gflops", 2.0 * m * k * n / s / 1e9, f"median torch matmul [{m}x{k}]@[{k}x{n}] fp32 on the host")
    tick()


def _steps(opts: CalibrateOptions, has_gpu: bool, hls_ok: bool) -> int:
    sizes = calibrate_io.SIZES_QUICK if opts.quick else calibrate_io.SIZES_FULL
    disk = 3 * len(sizes) * 2 * (2 if opts.procs > 1 else 1)  # modes x sizes x (read, write) x (1, N procs)
    csd = len(_csd_ctx(opts)) + 2  # store, one per context length, appends
    return 1 + disk + 6 + 2 + 1 + csd * (2 if hls_ok else 1) + (1 if has_gpu else 0)


def _csd_ctx(opts: CalibrateOptions):
    return (32, 128, 512, 2048) if opts.quick else (32, 128, 256, 512, 1024, 2048)


def measure(opts: CalibrateOptions, run_dir: Optional[str] = None, progress: bool = True) -> Calibration:
    """Run every microbenchmark (see the module docstring); returns the numbers."""
    import torch
    from tqdm import tqdm

    t_start = time.perf_counter()
    torch.set_num_threads(max(1, opts.threads))  # the CLI also sets OMP_NUM_THREADS (inf2hw.loop.pin_threads)
    want = opts.device
    dev = "cuda" if (want == "cuda" or (want == "auto" and torch.cuda.is_available())) else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        from inf2sim.specs import SpecError

        raise SpecError("calibrate.device=cuda but torch sees no GPU here; use calibrate.device=cpu or auto")
    gpu_name = torch.cuda.get_device_name(0) if dev == "cuda" else ""
    cal = Calibration(opts, _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                      f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus {platform.processor() or ''}".strip(),
                      gpu_name or "cpu")
    if opts.directory:
        os.makedirs(opts.directory, exist_ok=True)
    base = opts.directory or tempfile.mkdtemp(prefix="inf2-calibrate-", dir=run_dir)
    work = tempfile.mkdtemp(prefix=".inf2-calibrate-", dir=base)
    hls_why = calibrate_csd.hls_available()
    if hls_why:
        cal.skipped.append(f"HLS-library CSD compute: {hls_why}")
    bar = tqdm(total=_steps(opts, dev == "cuda", hls_why is None), desc="calibrating", unit="bench",
               disable=not progress, leave=False)
    tick = lambda: bar.update(1)  # noqa: E731
    try:
        _disk(cal, work, opts, bar, tick)
        cal.put("memcpy_gbps", calibrate_io.memcpy_gbps(32 << 20 if opts.quick else 256 << 20),
                "torch copy_ of a 32/256 MiB host tensor (quick/full), median of 5, bytes copied per second")
        if dev == "cuda":
            bar.set_postfix_str("host<->GPU copies")
            for k, v in calibrate_io.host_gpu_copies(dev, 64 << 20 if opts.quick else 256 << 20).items():
                cal.put(f"copy_{k}", v, "torch copy_ of 64/256 MiB host<->GPU (quick/full), median of 5"
                        if k.endswith("gbps") else "median of 50 pinned 4 KiB host->GPU copies, synchronised")
            tick()
        bar.set_postfix_str(f"dense ops on {dev}")
        dense_device(cal, dev, opts.quick, tick)
        bar.set_postfix_str("CPU attention")
        cpu_attention(cal, opts.quick, tick)
        bar.set_postfix_str("engine dispatch")
        engine_dispatch(cal)
        tick()
        for compute in (["torch"] + (["hls"] if hls_why is None else [])):
            bar.set_postfix_str(f"emulated CSD ({compute})")
            dtype = opts.dtype if compute == "torch" else "fp16"
            cal.csd[compute] = calibrate_csd.measure_csd(work, compute, dtype, 128, 1, 16, _csd_ctx(opts),
                                                         5 if opts.quick else 9, tick,
                                                         direct_io="on" if opts.csd_io == "direct" else "off")
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
        if not opts.directory:
            shutil.rmtree(base, ignore_errors=True)
    cal.seconds = time.perf_counter() - t_start
    return cal


def _disk(cal: Calibration, work: str, opts: CalibrateOptions, bar, tick) -> None:
    sizes = calibrate_io.SIZES_QUICK if opts.quick else calibrate_io.SIZES_FULL
    budget, cap = (0.08, 32 << 20) if opts.quick else (0.6, 256 << 20)
    bar.set_postfix_str("writing disk test files")
    paths = calibrate_io.make_files(work, max(1, opts.procs), (48 << 20) if opts.quick else (512 << 20))
    tick()
    try:
        modes = ["buffered", "diskstore"]
        if calibrate_io.direct_io_ok(work):
            modes.insert(0, "direct")
        else:
            cal.skipped.append(f"O_DIRECT disk curves: {work} refuses O_DIRECT")
        for mode in modes:
            bar.set_postfix_str(f"disk {mode} x{opts.procs} procs")
            cal.disk[mode] = calibrate_io.disk_curves(paths, mode, sizes, budget, cap, tick)
    finally:
        for p in paths:
            try:
                os.unlink(p)
            except OSError:
                pass
