"""`inf2 calibrate`: measure this machine and return what a hardware profile needs.

Called by `inf2hw.loop.calibrate_cli` (mode=calibrate), which writes the result with
`inf2hw.calibrate_profile.write_profile` to conf/hardware/<name>.yaml. `measure(opts)`
runs every microbenchmark under one tqdm bar and returns a `Calibration`: plain numbers
plus, for each, how it was measured. The I/O half lives in `inf2hw.calibrate_io`, the
emulated-CSD half in `inf2hw.calibrate_csd`.

What is measured, and where it goes in the profile
  dense device   the device that runs the plan's `gpu` ops: the GPU when torch sees one
                 (device=cuda), else this CPU. The engine's own prefill blocks (model.qkv +
                 model.post, OPT and LLaMA layers) -> the engine dtype's gpu.fp*_tflops (the
                 other one: a plain GEMM); weight streaming of decode-shaped projections over
                 weights beyond the caches -> gpu.mem_gbps; the same blocks at a negligible
                 size -> gpu.launch_us (the fixed cost of one dense op); decode attention on
                 that device -> gpu.attention_efficiency (its byte rate / mem_gbps); the
                 engine's causal prefill attention -> gpu.attention_score_ns (what each
                 element of its materialised score matrix costs beyond that model).
  CPU attention  `inf2hw.attention.attend_partial` on the host, the call the engine's CPU
                 attention thread makes, fitted as fixed + bytes / rate over context
                 lengths -> cpu.attention_gbps, cpu.op_overhead_us; host GEMM -> cpu.gemm_gflops.
  model ops      with calibrate.models: the engine's qkv, post, head and prompt attention of
                 each named model over tokens (`calibrate_ops`) -> gpu.op_curves, which
                 the DES uses for ops of exactly those shapes.
  speed probe    `speed_probe.probe_ms` three times during the run (and, on a CPU host, beside
                 every model op-curve point) -> host.probe_ms: what
                 `inf2 validate` compares the host's speed around each run with.
  engine         the engine's own dispatch cost per op (`engine_dispatch`) -> added to
                 every op's fixed cost (launch, link latency, ipc), since the simulator
                 has no dispatch of its own.
  memory         torch copy_ bandwidth -> host.dram; with a GPU, pinned / pageable
                 host<->GPU copies -> gpu.link.
  disks          `calibrate_io.disk_curves`: O_DIRECT and page cache, 1 stream and N at once
                 (N = calibrate.procs for the CSD files, the engine's 2 I/O threads for
                 FlexGen's drive files).
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import calibrate_csd, calibrate_dense, calibrate_io, calibrate_ops, disk_probe, speed_probe
from .ops import IO_THREADS


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
    ssd_count: int = 2  # FlexGen drive files of the profile: the token-major CPU attention is one call per drive
    models: Tuple[str, ...] = ()  # conf/model names whose ops are timed too (calibrate_ops -> gpu.op_curves)


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
    csd_gqa: Dict[str, Any] = field(default_factory=dict)  # compute -> CsdCosts at 4 query heads per K,V row
    csd_together: Any = None  # (alone s, together s) per CSD context, procs torch CSDs at once (GPU hosts)
    skipped: List[str] = field(default_factory=list)
    seconds: float = 0.0

    curves: Dict[str, Any] = field(default_factory=dict)  # name -> {"bytes": [...], "seconds": [...]} medians
    series: Dict[str, Any] = field(default_factory=dict)  # name -> (xs, ys): other measured curves
    op_curves: List[Dict[str, Any]] = field(default_factory=list)  # inf2sim.specs.OpCurve fields + "how"
    near_probes: List[float] = field(default_factory=list)  # ms: the speed probe beside each timed op-curve point

    def put(self, key: str, value: float, how: str) -> None:
        self.values[key] = float(value)
        self.how[key] = how

    def put_series(self, key: str, xs: List[float], ys: List[float], how: str) -> None:
        """A measured quantity over a parameter other than bytes (its units in `how`)."""
        self.series[key] = ([float(x) for x in xs], [float(y) for y in ys])
        self.how[key] = how

    def put_op_curve(self, what: str, model: str, flops_per_token: float, tokens: List[int], us: List[float],
                     how: str, group: int = 1, head_dim: int = 0, probe_ms: Sequence[float] = ()) -> None:
        """One op of one model over tokens (calibrate_ops; the profile's gpu.op_curves).
        `probe_ms`: the speed probe beside each point (on the host's cores), for
        `scale_to_probe`; empty where none was taken (a GPU's ops)."""
        self.op_curves.append({"what": what, "model": model, "flops_per_token": float(flops_per_token),
                               "group": int(group), "head_dim": int(head_dim), "tokens": [int(t) for t in tokens],
                               "us": [float(u) for u in us], "how": how, "probe_ms": [float(p) for p in probe_ms]})

    def scale_to_probe(self, probe_ms: float) -> None:
        """Each op-curve point with a probe beside it, times probe_ms / that probe: the curves
        then describe the host at the speed the profile's `host.probe_ms` says, whichever
        window of a drifting host each point was timed in."""
        for c in self.op_curves:
            ps = c.pop("probe_ms", [])
            if not ps or probe_ms <= 0:
                continue
            f = [probe_ms / p for p in ps]
            c["us"] = [u * k for u, k in zip(c["us"], f)]
            c["how"] += (f", each point x the calibration's probe / the probe beside it "
                         f"({min(f):.2f}-{max(f):.2f})")

    def put_curve(self, key: str, nbytes: List[float], seconds: List[float], how: str) -> None:
        """Median times of one call at several sizes (the profile's measured curves)."""
        self.curves[key] = {"bytes": [float(b) for b in nbytes], "seconds": [float(t) for t in seconds]}
        self.how[key] = how


def _steps(opts: CalibrateOptions, has_gpu: bool, hls_ok: bool) -> int:
    sizes = calibrate_io.SIZES_QUICK if opts.quick else calibrate_io.SIZES_FULL
    disk = (3 * len(sizes) + len(calibrate_io.STORE_SIZES)) * 2 * (2 if opts.procs > 1 else 1)  # modes x sizes x (read, write) x (1, N procs)
    csd = len(_csd_ctx(opts)) + 2  # store, one per context length, appends
    return 1 + disk + 5 + 3 + 1 + csd * (3 if hls_ok else 2) + (2 if has_gpu else 0) + 3 * len(opts.models)


def _csd_ctx(opts: CalibrateOptions):
    return (32, 512, 1024, 2048) if opts.quick else (32, 128, 512, 1024, 2048)


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
                cal.put(f"copy_{k}", v, "pinned 64/256 MiB host->GPU and GPU->host copies (quick/full) started "
                        "together on two streams: the sum of the two directions' GB/s (CUDA events, median of 5)"
                        if k == "duplex_gbps" else "torch copy_ of 64/256 MiB host<->GPU (quick/full), median of 5"
                        if k.endswith("gbps") else "median of 50 pinned 4 KiB host->GPU copies, synchronised"
                        if k == "latency_us" else "two equal pinned 64/256 MiB host->GPU copies started together on "
                        "two streams: the earlier one's finish / one copy's time alone (CUDA events, median of 5)")
            tick()
        bar.set_postfix_str(f"dense ops on {dev}")
        probes = [speed_probe.probe_ms()]  # the host's speed now, and twice more below (host.probe_ms)
        calibrate_dense.dense_device(cal, dev, opts.quick, tick)
        if opts.models:
            bar.set_postfix_str(f"ops of {', '.join(opts.models)}")
            calibrate_ops.model_ops(cal, dev, opts.models, opts.quick, tick)
        probes.append(speed_probe.probe_ms())
        bar.set_postfix_str("CPU attention")
        calibrate_dense.cpu_attention(cal, opts.quick, tick, dev)
        bar.set_postfix_str("engine dispatch")
        calibrate_dense.engine_dispatch(cal)
        tick()
        # each CSD worker computes on the engine's share for it (inf2hw.run.csd_threads_for, procs CSDs), with
        # enough rows per call to keep those threads busy
        csd_threads = max(1, min(opts.threads, (os.cpu_count() or 1) // max(1, opts.procs)))  # procs: the CSDs
        csd_io = "on" if opts.csd_io == "direct" else "off"

        def csd(compute: str, group: int, repeat: int):
            return calibrate_csd.measure_csd(work, compute, opts.dtype if compute == "torch" else "fp16", 128, group,
                                             64 * csd_threads, _csd_ctx(opts), repeat, tick, direct_io=csd_io,
                                             threads=csd_threads)

        for compute in (["torch"] + (["hls"] if hls_why is None else [])):
            bar.set_postfix_str(f"emulated CSD ({compute})")
            cal.csd[compute] = csd(compute, 1, 5 if opts.quick else 9)
        probes.append(speed_probe.probe_ms())
        near = cal.near_probes
        what = (f"inf2hw.speed_probe's median (5 probes: a 512-wide OPT block of 256 tokens and 4 GEMVs over 16 MB "
                f"weights, on {opts.threads} torch thread(s)) before the dense-device benchmarks, before the "
                f"CPU-attention ones and after the emulated CSD's ({', '.join(f'{x:.1f}' for x in probes)} ms)")
        if near:
            cal.put("probe_ms", float(np.median(probes + near)),
                    f"median of the {len(near)} probes beside the model op curves' points and of {what}")
        else:
            cal.put("probe_ms", float(np.mean(probes)), f"mean of {what}")
        cal.scale_to_probe(cal.values["probe_ms"])
        # GQA: the profile's compute again with 4 query heads per K,V row (csd.attend_gqa_us)
        comp = opts.csd_compute if opts.csd_compute in cal.csd else "torch"
        bar.set_postfix_str(f"emulated CSD ({comp}), 4 query heads per K,V row")
        cal.csd_gqa[comp] = csd(comp, 4, 3 if opts.quick else 5)
        if dev == "cuda" and opts.procs > 1:  # CSD workers beside a GPU engine: how much they slow each other
            bar.set_postfix_str(f"{opts.procs} emulated CSDs attending at once")
            cal.csd_together = calibrate_csd.measure_together(
                work, opts.dtype, 128, 64 * csd_threads, _csd_ctx(opts), opts.procs, csd_threads, 2 if opts.quick else 4,
                direct_io=csd_io)
            tick()
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
        if not opts.directory:
            shutil.rmtree(base, ignore_errors=True)
    cal.seconds = time.perf_counter() - t_start
    return cal


def _disk(cal: Calibration, work: str, opts: CalibrateOptions, bar, tick) -> None:
    sizes = calibrate_io.SIZES_QUICK if opts.quick else calibrate_io.SIZES_FULL
    # quick: 0.2 s / 64 MiB a point (at 0.08 s / 32 MiB, 4 O_DIRECT processes on the H100 machine's
    # disk summed to less than one alone, 1.18 against 1.46 GB/s at 256 KiB: too short to settle)
    budget, cap = (0.2, 64 << 20) if opts.quick else (0.6, 256 << 20)
    bar.set_postfix_str("writing disk test files")
    paths = calibrate_io.make_files(work, max(1, opts.procs, IO_THREADS),
                                    (128 << 20) if opts.quick else (512 << 20))  # >= 2 of the largest request
    tick()
    try:
        modes = ["buffered", "diskstore"]
        if calibrate_io.direct_io_ok(work):
            modes.insert(0, "direct")
        else:
            cal.skipped.append(f"O_DIRECT disk curves: {work} refuses O_DIRECT")
        for mode in modes:
            # the CSDs' files: one worker process per CSD at once; FlexGen's drive files: the
            # engine's I/O threads, however many drives there are
            n = IO_THREADS if mode == "diskstore" else max(1, opts.procs)
            bar.set_postfix_str(f"disk {mode} x{n} streams")
            more = calibrate_io.STORE_SIZES if mode == "diskstore" else ()
            probes = [disk_probe.probe_record(work)] if mode == "direct" else []
            cal.disk[mode] = calibrate_io.disk_curves(paths[:n], mode, tuple(sizes) + more, budget, cap, tick)
            if probes:  # the disk probe right before and after the curves the CSDs' flash takes
                probes.append(disk_probe.probe_record(work))
                for k in ("read_gbps", "write_gbps"):
                    cal.put(f"disk_probe_{k}", sum(p[k] for p in probes) / 2,
                            f"inf2hw.disk_probe ({disk_probe.PROBE_BYTES >> 20} MiB in {disk_probe.REQ_BYTES >> 20} MiB "
                            f"O_DIRECT requests, one stream, median of {disk_probe.REPEAT}) right before and after "
                            f"the O_DIRECT curves, mean of the two: {', '.join(f'{p[k]:.3f}' for p in probes)}")
    finally:
        for p in paths:
            try:
                os.unlink(p)
            except OSError:
                pass
