"""Service times of single ops on an idle resource, shared by the DES and the bound.

Called by `inf2sim.des.devices` (how long a compute device is busy with one op)
and by the analytic bound `inf2sim.cost` (the same numbers, with no contention),
so the two cannot drift apart. Pure: stdlib and numpy only, no simpy.

Every hardware number comes from the `HardwareProfile` (conf/hardware/*.yaml);
this module only says which numbers combine how. Units: seconds out; bytes and
FLOP in; `*_gbps` = 1e9 B/s, `*_tflops` = 1e12 FLOP/s, `*_gflops` = 1e9 FLOP/s,
`*_us` = 1e-6 s.

Compute devices (plan names): `gpu`, `cpu`, `csd{i}.fpga`.
  gpu  DenseCompute  max(flops / (peak * gemm_efficiency), nbytes / mem_bw) + launch
                     (mem_bw = head_mem_gbps for the LM head where the profile has it)
       Attention     max(flops / (peak * gemm_efficiency),
                         kv_bytes / (mem_bw * attention_efficiency))
                     + score_elements * score_ns(score_elements)  (q_len > 1 only) + launch
       where score_elements = rows * group * q_len * attended positions: an attention
       that materialises its [q_len, ctx] score matrix (the engine's torch attention)
       pays for writing and re-reading it; the term is quadratic in the prompt, unlike
       everything else, so no rate can absorb it. 0 = fused (FlashAttention-like).
       Decode (q_len = 1) score traffic is linear in ctx and part of the calibrated rate.
  cpu  DenseCompute  flops / gemm_gflops + op_overhead
       Attention     kv_bytes / attention_gbps + op_overhead; a decode attention over a
                     row-major store whose (group, head_dim) `cpu.op_curves` has: rows x the
                     per-row curve at the attended positions + op_overhead
  fpga Attention     inf2sim.accel.attention_seconds(...) + host ipc round trip
Measured ops of named model shapes (`gpu.op_curves`, inf2sim.op_curves) come first: a
dense op or prompt attention on `gpu` that a curve matches takes its measured time.
Measured curves, where a calibrated profile has them (`gpu.decode_attention_*` for
q_len = 1, with `decode_attention_gqa_us` at 4 query heads per KV row, groups between
and beyond interpolated linearly, `cpu.attention_*` (`cpu.tokens_attention_*` for token-major K,V), `csd.attend_*`, each with
a `*_gqa_us` at 4 query heads per K,V row): the attention term is
`curve_seconds(kib, us, kv_bytes)` instead of the rate (a KV working set that fits in
the caches runs several times faster per byte than one streamed from memory; one rate
cannot say both).
where `peak` is fp16_tflops for 2-byte dtypes and fp32_tflops for 4-byte ones.
"""
from __future__ import annotations

import bisect
import functools
from typing import Union

import numpy as np

from .op_curves import measured_seconds, op_tokens
from .plan import Attention, DenseCompute
from .specs import FpgaSpec, HardwareProfile
from .topology import Topology, endpoint_node

ComputeOp = Union[DenseCompute, Attention]


def _positive(value: float, what: str, hw: HardwareProfile) -> float:
    if not value or value <= 0:
        raise ValueError(f"hardware {hw.name}: {what} is {value!r}; it must be > 0 to time this op")
    return float(value)


def is_fpga(device: str) -> bool:
    return device.startswith("csd") and device.endswith(".fpga")


def ipc_s(device: str, hw: HardwareProfile) -> float:
    """Fixed cost of issuing one op to `device`, whatever its size: GPU kernel
    launches, the CPU's per-call overhead, the host<->CSD command round trip."""
    if device == "gpu":
        return hw.gpu.launch_us * 1e-6
    if device == "cpu":
        return hw.cpu.op_overhead_us * 1e-6
    if is_fpga(device):
        return hw.host.ipc_us * 1e-6
    raise ValueError(f"unknown compute device {device!r}; use gpu, cpu or csd<i>.fpga")


def attention_shape(op: Attention) -> tuple[int, int, int]:
    """(rows, stored_len, n_tail): KV rows; positions read from the device's own
    store; positions of the host buffer's tail shipped with the query. The op
    attends stored_len + n_tail = tokens[1] - tokens[0] positions."""
    rows = op.rows[1] - op.rows[0]
    attended = op.tokens[1] - op.tokens[0]
    stored = min(max(op.stored_len, 0), attended)
    return rows, stored, attended - stored


def attention_flops(op: Attention) -> float:
    """op.flops, or when the scheduler left it 0: q·Kᵀ and P·V, 2 FLOP per MAC."""
    if op.flops > 0:
        return float(op.flops)
    rows, stored, n_tail = attention_shape(op)
    return 4.0 * rows * op.group * op.q_len * (stored + n_tail) * op.head_dim


def attention_kv_bytes(op: Attention, dtype_bytes: int = 2) -> int:
    """op.kv_bytes, or when left 0: K and V of every attended position of every row."""
    if op.kv_bytes > 0:
        return op.kv_bytes
    rows, stored, n_tail = attention_shape(op)
    return 2 * rows * (stored + n_tail) * op.head_dim * dtype_bytes


def curve_seconds(kib, us, nbytes: float) -> float:
    """Seconds at `nbytes` on a measured curve (sizes in KiB, increasing; times in us):
    piecewise linear between points, the line through the two nearest points beyond
    either end, never below 0."""
    x = nbytes / 1024.0
    i = bisect.bisect_left(kib, x, 1, len(kib) - 1)  # segment [i-1, i]
    x0, x1, t0, t1 = kib[i - 1], kib[i], us[i - 1], us[i]
    return max(0.0, t0 + (t1 - t0) * (x - x0) / (x1 - x0)) * 1e-6


def score_ns(gpu, elements: float) -> float:
    """ns per score element: the measured curve over the size of the score matrix
    (`attention_score_mib` / `_mib_ns`, linear between points, held beyond the ends) or
    the single `attention_score_ns`. `elements` is the size the curve is keyed by: the
    whole op's matrix for a materialised one, one head's for a fused kernel (see
    `work_seconds`)."""
    q, ns = gpu.attention_score_mib, gpu.attention_score_mib_ns
    if not q:
        return gpu.attention_score_ns
    x = elements * 4 / 2**20  # MiB of fp32 scores
    if x <= q[0] or len(q) == 1:
        return ns[0]
    if x >= q[-1]:
        return ns[-1]
    i = bisect.bisect_left(q, x)
    return ns[i - 1] + (ns[i] - ns[i - 1]) * (x - q[i - 1]) / (q[i] - q[i - 1])


def _by_group(op: Attention, kib, us_1, us_4, kv_bytes: float) -> float:
    """A measured attention curve at op's K+V bytes: the 1-query-head-per-row curve `us_1`,
    or, for op.group > 1 with a 4-per-row curve `us_4` measured on the same grid, linear in
    the group between the two (arithmetic per K,V byte grows with the query heads)."""
    t1 = curve_seconds(kib, us_1, kv_bytes)
    if op.group == 1 or not us_4:
        return t1
    t4 = curve_seconds(kib, us_4, kv_bytes)
    return max(0.0, t1 + (t4 - t1) * (op.group - 1) / 3.0)


def _gpu_peak_flops(hw: HardwareProfile, dtype_bytes: int) -> float:
    if dtype_bytes <= 2:
        return _positive(hw.gpu.fp16_tflops, "gpu.fp16_tflops", hw) * 1e12
    return _positive(hw.gpu.fp32_tflops, "gpu.fp32_tflops", hw) * 1e12


@functools.lru_cache(maxsize=8192)
def fpga_attention_seconds(fpga: FpgaSpec, rows: int, ctx_len: int, group: int, head_dim: int, n_tail: int = 0) -> float:
    """The kernel's own cycle model (`inf2sim.accel`; ctx_len stored positions plus
    n_tail tail positions), memoised: a run asks for the same few shapes hundreds of
    thousands of times and the model walks every block of every row."""
    from .accel import attention_seconds  # lazily: only FPGA attention needs the kernel model

    return attention_seconds(fpga, rows, ctx_len, group, head_dim, n_tail)


def work_seconds(op: ComputeOp, hw: HardwareProfile, dtype_bytes: int = 2) -> float:
    """Service time of `op` on its device without the fixed per-op cost."""
    dev = getattr(op, "device", None)
    if dev == "gpu" and hw.gpu.op_curves:  # this model's ops as a calibration timed them
        t = measured_seconds(hw.gpu.op_curves, op)
        if t is not None:
            return t
    if isinstance(op, DenseCompute):
        if dev == "gpu":
            t_flops = op.flops / (_gpu_peak_flops(hw, dtype_bytes) * hw.gpu.gemm_efficiency)
            mem = hw.gpu.head_mem_gbps if op.what == "head" and hw.gpu.head_mem_gbps > 0 else hw.gpu.mem_gbps
            t_mem = op.nbytes / (_positive(mem, "gpu.mem_gbps", hw) * 1e9)
            return max(t_flops, t_mem)
        if dev == "cpu":
            return op.flops / (_positive(hw.cpu.gemm_gflops, "cpu.gemm_gflops", hw) * 1e9)
        raise ValueError(f"op {op.name}: DenseCompute runs on gpu or cpu, not {dev!r}")
    if isinstance(op, Attention):
        if dev == "gpu" and op.q_len == 1 and hw.gpu.decode_attention_kib:
            return _by_group(op, hw.gpu.decode_attention_kib, hw.gpu.decode_attention_us,
                             hw.gpu.decode_attention_gqa_us, attention_kv_bytes(op, dtype_bytes))
        if dev == "gpu":
            t_flops = attention_flops(op) / (_gpu_peak_flops(hw, dtype_bytes) * hw.gpu.gemm_efficiency)
            # a fused prompt kernel (attention_score_head_dim > 0) streams K,V once, at the device's
            # stream rate; attention_efficiency is the decode path's (a materialised score row per query)
            fused_prefill = op.q_len > 1 and hw.gpu.attention_score_head_dim > 0
            mem_Bps = _positive(hw.gpu.mem_gbps, "gpu.mem_gbps", hw) * 1e9 * (
                1.0 if fused_prefill else hw.gpu.attention_efficiency)
            t = max(t_flops, attention_kv_bytes(op, dtype_bytes) / mem_Bps)
            if op.q_len > 1:
                rows, stored, n_tail = attention_shape(op)
                n = rows * op.group * op.q_len * (stored + n_tail)
                d_cal = hw.gpu.attention_score_head_dim  # > 0: a fused kernel, which works one head at a time
                key = op.q_len * (stored + n_tail) if d_cal else n  # its cost follows one head's matrix, not the op's
                t += n * score_ns(hw.gpu, key) * (op.head_dim / d_cal if d_cal else 1.0) * 1e-9
            return t
        if dev == "cpu" and op.kv_layout != "tokens" and hw.cpu.op_curves:  # a named model's shape, timed
            t = measured_seconds(hw.cpu.op_curves, op)
            if t is not None:
                return t
        if dev == "cpu" and op.kv_layout == "tokens" and hw.cpu.tokens_attention_kib:
            return _by_group(op, hw.cpu.tokens_attention_kib, hw.cpu.tokens_attention_us,
                             hw.cpu.tokens_attention_gqa_us, attention_kv_bytes(op, dtype_bytes))
        if dev == "cpu" and hw.cpu.attention_kib:
            return _by_group(op, hw.cpu.attention_kib, hw.cpu.attention_us, hw.cpu.attention_gqa_us,
                             attention_kv_bytes(op, dtype_bytes))
        if dev == "cpu":
            cpu_Bps = _positive(hw.cpu.attention_gbps, "cpu.attention_gbps", hw) * 1e9
            return attention_kv_bytes(op, dtype_bytes) / cpu_Bps
        if is_fpga(dev):
            if hw.csd.attend_kib:
                return _by_group(op, hw.csd.attend_kib, hw.csd.attend_us, hw.csd.attend_gqa_us, csd_attend_bytes(op))
            rows, stored, n_tail = attention_shape(op)
            return fpga_attention_seconds(hw.csd.fpga, rows, stored, op.group, op.head_dim, n_tail)
        raise ValueError(f"op {op.name}: unknown compute device {dev!r}; use gpu, cpu or csd<i>.fpga")
    raise TypeError(f"op {getattr(op, 'name', op)!r} of kind {type(op).__name__} is not a compute op")


def compute_seconds(op: ComputeOp, hw: HardwareProfile, dtype_bytes: int = 2) -> float:
    """Seconds `op` (DenseCompute or Attention) occupies its device when alone; on the host's
    cores (`host.core_devices`) times `host.compute_scale` (the host's speed during a validated
    run relative to its calibration, `inf2 validate`; 1 otherwise)."""
    t = work_seconds(op, hw, dtype_bytes) + ipc_s(op.device, hw)
    if hw.host.compute_scale != 1.0 and core_kind(op.device) in hw.host.core_devices:
        t *= hw.host.compute_scale
    return t


def csd_attend_bytes(op: Attention) -> int:
    """A CSD attention op's size as the calibration sized the CSD's attend curves
    (`accel.kv_bytes`: fp16 K, V plus the tail), bytes."""
    from .accel import kv_bytes

    rows, stored, n_tail = attention_shape(op)
    return kv_bytes(rows, stored, op.head_dim, op.group, n_tail)


def together_ratio(op: ComputeOp, hw: HardwareProfile) -> float:
    """`csd.attend_together` at a CSD attention op's size (`csd_attend_bytes`), interpolated
    and held at the ends; 1 without it."""
    if not hw.csd.attend_together or not isinstance(op, Attention):
        return 1.0
    return float(np.interp(csd_attend_bytes(op) / 1024, hw.csd.attend_kib, hw.csd.attend_together))


def beside_dma_ratio(op: ComputeOp, hw: HardwareProfile, dtype_bytes: int = 2) -> float:
    """`cpu.beside_dma_kib_ratio` at a cpu attention op's K+V bytes, interpolated and held
    at the ends; 1 for any other op or without it."""
    if not hw.cpu.beside_dma_kib or not isinstance(op, Attention) or op.device != "cpu":
        return 1.0
    return float(np.interp(attention_kv_bytes(op, dtype_bytes) / 1024, hw.cpu.beside_dma_kib,
                           hw.cpu.beside_dma_kib_ratio))


def core_kind(device: str) -> str:
    """The `host.core_devices` name of a compute device: gpu, cpu, or fpga for every CSD's."""
    return "fpga" if device.endswith(".fpga") else device


def op_shape(op: ComputeOp) -> tuple:
    """Every field of `op` that `compute_seconds` reads: ops of equal shape take equal
    time, so callers timing ~10^5 ops of a few hundred shapes memoise on this key.
    Exact classes only (a subclass may time itself differently): None otherwise."""
    if type(op) is Attention:
        return (op.device, op.rows, op.tokens, op.stored_len, op.q_len, op.group, op.head_dim, op.flops, op.kv_bytes,
                op.kv_layout)
    if type(op) is DenseCompute:
        return (op.device, op.what, op.flops, op.nbytes, op_tokens(op))
    return None


class ComputeTimer:
    """`compute_seconds` memoised per `op_shape` for one hardware profile and dtype."""

    __slots__ = ("hw", "dtype_bytes", "_seconds")

    def __init__(self, hw: HardwareProfile, dtype_bytes: int = 2):
        self.hw, self.dtype_bytes = hw, dtype_bytes
        self._seconds: dict = {}

    def __call__(self, op: ComputeOp) -> float:
        key = op_shape(op)
        if key is None:
            return compute_seconds(op, self.hw, self.dtype_bytes)
        t = self._seconds.get(key)
        if t is None:
            t = self._seconds[key] = compute_seconds(op, self.hw, self.dtype_bytes)
        return t


def transfer_seconds_alone(topo: Topology, src: str, dst: str, nbytes: int, req_bytes: int = 0) -> float:
    """Seconds to move `nbytes` from endpoint `src` to `dst` with nothing else on
    the path: the bottleneck (link, direction) at this request size, plus the
    summed latency of the path's links. What the DES gives a lone flow."""
    a, b = endpoint_node(src), endpoint_node(dst)
    if a == b or nbytes <= 0:
        return 0.0
    path = topo.path(a, b)
    gbps = min(topo.links[name].gbps(d, req_bytes) for name, d in path)
    if gbps <= 0:
        raise ValueError(f"path {src}->{dst} crosses a link with no bandwidth")
    return nbytes / (gbps * 1e9) + topo.latency_s(a, b)
