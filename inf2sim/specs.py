"""Frozen specs of what is run: the model, the workload, the machine, the policy.

Called by the config loader (`inf2sim.config`) after Hydra composes the YAML, and by
anyone using the Python API directly. Units are in the field names: `*_gbps` is
10^9 bytes/s, `*_tflops` 10^12 FLOP/s, `*_us` microseconds, `*_gb` 10^9 bytes,
`*_bytes` bytes. No hardware number lives here: every value comes from
`conf/hardware/*.yaml`, where each one carries its source.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


class SpecError(ValueError):
    """Bad user input; the message is one line naming the field and what is allowed."""


# --------------------------------------------------------------------------- model
# FpgaSpec.rate_gbps sentinel: no measured rate, the DES times the kernel by its cycle model
CYCLE_MODEL = 0.0


@dataclass(frozen=True)
class ModelSpec:
    """Transformer shape. `family` selects the block: opt (MHA, LayerNorm, ReLU FFN,
    learned positions) or llama (GQA, RMSNorm, SwiGLU, RoPE); mixtral is llama + MoE."""

    name: str = "opt-30b"
    family: str = "opt"
    num_layers: int = 48
    hidden: int = 7168
    num_heads: int = 56
    num_kv_heads: int = 56
    head_dim: int = 128
    ffn_dim: int = 28672
    vocab_size: int = 50272
    max_positions: int = 2048
    num_experts: int = 1
    experts_top_k: int = 1
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dtype_bytes: int = 2
    checkpoint: Optional[str] = None

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token in one layer (all KV heads)."""
        return 2 * self.kv_dim * self.dtype_bytes

    def x_bytes_per_token_layer(self) -> int:
        """The layer input X of one token (what the X-cache stores instead of K,V)."""
        return self.hidden * self.dtype_bytes

    def attn_weight_params(self) -> int:
        return self.hidden * self.q_dim * 2 + self.hidden * self.kv_dim * 2

    def mlp_weight_params(self) -> int:
        per_expert = (2 if self.family == "opt" else 3) * self.hidden * self.ffn_dim
        return per_expert * self.num_experts + (self.hidden * self.num_experts if self.num_experts > 1 else 0)

    def layer_weight_bytes(self) -> int:
        return (self.attn_weight_params() + self.mlp_weight_params()) * self.dtype_bytes

    def active_mlp_params(self) -> int:
        """MLP parameters touched per token (top-k experts for MoE)."""
        per_expert = (2 if self.family == "opt" else 3) * self.hidden * self.ffn_dim
        return per_expert * min(self.experts_top_k, self.num_experts)

    def embed_bytes(self) -> int:
        return self.vocab_size * self.hidden * self.dtype_bytes

    def dense_flops_per_token(self, what: str) -> float:
        """FLOPs per token of the plan's dense ops: `qkv` (projections), `post` (output
        projection + MLP) and `head` (LM head); the scheduler's DenseCompute.flops are these
        times the op's tokens, and a measured `OpCurve` is keyed by them."""
        if what == "qkv":
            return 2.0 * self.hidden * (self.q_dim + 2 * self.kv_dim)
        if what == "post":
            return 2.0 * (self.q_dim * self.hidden + self.active_mlp_params())
        if what == "head":
            return 2.0 * self.hidden * self.vocab_size
        raise ValueError(f"dense op {what!r} has no per-token FLOPs; use qkv, post or head")


# ------------------------------------------------------------------------ workload
@dataclass(frozen=True)
class Workload:
    batch: int = 32
    prompt_len: int = 512
    gen_len: int = 32
    num_micro_batches: int = 1
    prompts: Optional[str] = None
    seed: int = 0

    @property
    def micro_batch(self) -> int:
        return self.batch // self.num_micro_batches


# ------------------------------------------------------------------------ hardware
@dataclass(frozen=True)
class LinkSpec:
    """One PCIe (or memory) link, per direction. `up` is towards the root complex."""

    up_gbps: float = 0.0
    down_gbps: float = 0.0
    latency_us: float = 0.0
    # Both directions at once, summed, when that is less than up + down (a host whose memory
    # or root complex cannot feed a full-duplex link: an H100 host moves 54.5 GB/s each way
    # alone, 97 GB/s both ways at once). The DES routes every flow of this link in either
    # direction through one more channel of this capacity. 0: the directions are independent.
    duplex_gbps: float = 0.0


@dataclass(frozen=True)
class StorageSpec:
    """An SSD: its PCIe link plus media read/write bandwidth over request size."""

    link: LinkSpec = field(default_factory=LinkSpec)
    req_kib: List[float] = field(default_factory=list)
    read_gbps: List[float] = field(default_factory=list)
    write_gbps: List[float] = field(default_factory=list)
    capacity_gb: float = 0.0
    endurance_pbw: float = 0.0
    power_w: float = 0.0
    price_usd: float = 0.0
    # One physical disk under every drive of this kind (emulated drives are files on one
    # disk): its aggregate bandwidth with all drives busy at once, over the same req_kib.
    # Empty = each drive is its own device (real SSDs, SmartSSDs).
    shared_read_gbps: List[float] = field(default_factory=list)
    shared_write_gbps: List[float] = field(default_factory=list)
    # How that disk divides itself among the flows on it: `bytes` = max-min fair bandwidth,
    # reads and writes apart (a page cache: CPU copies); `requests` = one request of each
    # stream per round, reads and writes in one queue (a device queue under O_DIRECT: a
    # stream of small requests beside large ones gets one small request per large one,
    # `inf2sim.des.disks`)
    shared_by: str = "bytes"
    # `inf2hw.disk_probe` at calibration (GB/s; 0: none): `inf2 validate` records the probe
    # around a run / this, and with validate.disk_probe scales the read (write) curves by it
    probe_read_gbps: float = 0.0
    probe_write_gbps: float = 0.0
    # Reads and writes of all drives of this kind that the host serves at once, in the
    # order they come (the real engine's drive I/O pool): 0 = no limit.
    io_threads: int = 0


@dataclass(frozen=True)
class OpCurve:
    """One op of one model shape timed on the dense device (`inf2 calibrate calibrate.models=...`):
    seconds beyond `GpuSpec.launch_us` (us) over `tokens`, interpolated by `inf2sim.op_curves`.
    Dense ops (`what` = qkv | post | head) match a DenseCompute of that `what` whose FLOPs per
    token equal `flops_per_token` (`ModelSpec.dense_flops_per_token`); `tokens` is the op's
    tokens (micro-batch x query positions). `what` = prefill_attention matches a prompt
    Attention with this `group` and `head_dim`; `tokens` is the prompt length and `us` is per
    K,V row (the op's rows = micro-batch x KV heads). `what` = decode_attention (in
    `CpuSpec.op_curves`, beyond its op_overhead_us) matches a one-query Attention on the cpu
    device with this `group` and `head_dim`; `tokens` is the attended positions, `us` per K,V row."""

    what: str = ""
    model: str = ""  # the model it was timed for (a label)
    flops_per_token: float = 0.0
    group: int = 1
    head_dim: int = 0
    tokens: List[float] = field(default_factory=list)
    us: List[float] = field(default_factory=list)


@dataclass(frozen=True)
class GpuSpec:
    name: str = "gpu"
    memory_gb: float = 40.0
    fp16_tflops: float = 0.0
    fp32_tflops: float = 0.0
    mem_gbps: float = 0.0
    head_mem_gbps: float = 0.0  # the LM head's weight streaming (a [vocab x hidden] GEMV); 0 = mem_gbps
    gemm_efficiency: float = 1.0
    attention_efficiency: float = 1.0
    attention_score_ns: float = 0.0  # per element of a materialised [q_len, ctx] score matrix (0 = fused attention)
    # Measured per size of the fp32 score matrix (MiB; one head's when attention_score_head_dim
    # > 0, a fused kernel, else the op's whole matrix): ns per score element; when
    # given, it replaces attention_score_ns, interpolated in size and held at the ends (scores
    # that fit in the caches cost less per element than ones written to memory and read back)
    attention_score_mib: List[float] = field(default_factory=list)
    attention_score_mib_ns: List[float] = field(default_factory=list)
    # The head dim those costs were measured at: a fused kernel's cost per score element
    # grows with head_dim (it computes the masked half too), so the DES scales them by
    # head_dim / this (0 = no scaling: a materialised score matrix's cost does not).
    attention_score_head_dim: int = 0
    launch_us: float = 0.0
    link: LinkSpec = field(default_factory=LinkSpec)
    # copies one direction of the link serves at once, in order (a GPU's DMA copy engine per
    # direction serves the copies of every stream one by one); 0: concurrent copies share it
    copy_engines: int = 0
    power_w: float = 0.0
    price_usd: float = 0.0
    # Measured decode (q_len = 1) attention: K+V bytes (KiB) -> seconds beyond launch_us (us).
    # When given, the DES interpolates it (inf2sim.rates.curve_seconds) instead of
    # kv / (mem_gbps * attention_efficiency): small working sets stay in the caches.
    decode_attention_kib: List[float] = field(default_factory=list)
    decode_attention_us: List[float] = field(default_factory=list)
    # The same sizes with 4 query heads per KV row (GQA); other groups interpolate linearly
    decode_attention_gqa_us: List[float] = field(default_factory=list)
    # Measured ops of the models named at calibration: replace the rates above for ops they match
    op_curves: List[OpCurve] = field(default_factory=list)


@dataclass(frozen=True)
class CpuSpec:
    name: str = "cpu"
    cores: int = 1
    attention_gbps: float = 0.0
    gemm_gflops: float = 0.0
    op_overhead_us: float = 0.0
    power_w: float = 0.0
    threads: int = 0  # torch intra-op threads of the engine when calibrated (0 = not calibrated)
    # Measured attention: K+V bytes (KiB) -> seconds beyond op_overhead_us (us); when given,
    # it replaces kv / attention_gbps (see GpuSpec.decode_attention_kib).
    attention_kib: List[float] = field(default_factory=list)
    attention_us: List[float] = field(default_factory=list)
    # The same over token-major K,V (Attention.kv_layout = "tokens": FlexGen's drive reads)
    tokens_attention_kib: List[float] = field(default_factory=list)
    tokens_attention_us: List[float] = field(default_factory=list)
    # The same two curves with 4 query heads per K,V row (GQA), on the same KiB grids; an op
    # with G query heads per row is interpolated between G = 1 and 4 (as the GPU's decode curves).
    attention_gqa_us: List[float] = field(default_factory=list)
    tokens_attention_gqa_us: List[float] = field(default_factory=list)
    # On a GPU host: an attention call's time while pinned copies stream host -> GPU / alone
    # (host memory is shared), at K+V sizes beside_dma_kib; the DES slows the cpu device's
    # attention by it while any host <-> GPU copy runs (inf2sim.des.devices.DmaShare). Empty: no slowdown.
    beside_dma_kib: List[float] = field(default_factory=list)
    beside_dma_kib_ratio: List[float] = field(default_factory=list)
    # The engine's CPU decode attention over a host KV store at named models' shapes
    # (`OpCurve` what=decode_attention: us per K,V row beyond op_overhead_us over the attended
    # positions, `inf2 calibrate calibrate.models=...`): an op of this group and head_dim takes
    # rows x the curve instead of the KiB curves above, which at equal bytes cannot tell many
    # short rows from few long ones.
    op_curves: List[OpCurve] = field(default_factory=list)


@dataclass(frozen=True)
class HostSpec:
    memory_gb: float = 0.0
    memory_budget_gb: float = 0.0
    dram: LinkSpec = field(default_factory=LinkSpec)
    ipc_us: float = 0.0
    price_usd: float = 0.0
    power_w: float = 0.0
    # Host cores that the compute devices named in `core_devices` (gpu, cpu, fpga = every
    # CSD's) share, one core per op in service (inf2sim.des.devices.CoreShare); 0 = each
    # device has its own (real GPUs and FPGAs). A CPU-only machine running emulated CSDs
    # runs all three on its cores.
    shared_cores: int = 0
    core_devices: List[str] = field(default_factory=lambda: ["cpu", "fpga"])
    # Storage whose moves are copies on those cores (ssd: drive files in the page cache,
    # read and written by the engine's I/O threads; csd: the CSDs' flash): each such move
    # in flight takes a share of the shared cores, as one more op in service would
    core_moves: List[str] = field(default_factory=list)
    # `inf2 calibrate`'s speed probe (inf2hw.speed_probe) at calibration time, ms (0: none);
    # `inf2 validate` sets compute_scale = the probe around a run / this, and every compute op
    # of the core devices then takes compute_scale x its profile time (a host whose speed drifts)
    probe_ms: float = 0.0
    compute_scale: float = 1.0


@dataclass(frozen=True)
class FpgaSpec:
    """Near-storage attention engine (HILOS block design) on a CSD."""

    clock_mhz: float = 0.0
    macs: int = 0
    block_tokens: int = 128
    pipeline_depth: int = 0
    dram_gb: float = 0.0
    power_w: float = 0.0
    rate_gbps: float = CYCLE_MODEL  # if > 0: measured KV consumption rate, overrides the cycle model


@dataclass(frozen=True)
class ChassisSpec:
    """PCIe expansion chassis: one uplink to the host, `ports` downstream ports."""

    uplink: LinkSpec = field(default_factory=LinkSpec)
    port: LinkSpec = field(default_factory=LinkSpec)
    ports: int = 8
    csds_per_port: int = 2
    price_usd: float = 0.0


@dataclass(frozen=True)
class CsdSpec:
    """A computational storage device: SSD and FPGA behind the card's own switch."""

    host_link: LinkSpec = field(default_factory=LinkSpec)
    internal_link: LinkSpec = field(default_factory=LinkSpec)
    ssd: StorageSpec = field(default_factory=StorageSpec)
    fpga: FpgaSpec = field(default_factory=FpgaSpec)
    price_usd: float = 0.0
    max_count: int = 16
    # Measured attend of an emulated CSD: K+V bytes (KiB) -> seconds beyond host.ipc_us (us);
    # when given, it replaces the fpga model (see GpuSpec.decode_attention_kib).
    attend_kib: List[float] = field(default_factory=list)
    attend_us: List[float] = field(default_factory=list)
    # The same with 4 query heads per K,V row (GQA), on the same grid (see CpuSpec.attention_gqa_us)
    attend_gqa_us: List[float] = field(default_factory=list)
    # Emulated CSDs are processes on one host: an attend runs slower while others run beside
    # it. together_count CSDs attending at once took attend_together x their time alone, per
    # attend_kib size (empty: no slowdown; `inf2sim.des.devices.Interference`)
    attend_together: List[float] = field(default_factory=list)
    together_count: int = 0
    # Flash commands (loads, stores, spills) one CSD serves at a time, in the order they
    # come: 0 = no limit (a SmartSSD's NVMe queues serve reads and writes at once); the
    # emulated CSD's worker has one I/O thread (1).
    io_threads: int = 0


@dataclass(frozen=True)
class HardwareProfile:
    name: str = "paper_a100"
    gpu: GpuSpec = field(default_factory=GpuSpec)
    cpu: CpuSpec = field(default_factory=CpuSpec)
    host: HostSpec = field(default_factory=HostSpec)
    ssd: StorageSpec = field(default_factory=StorageSpec)
    ssd_count: int = 4
    ssd_uplink: LinkSpec = field(default_factory=LinkSpec)
    chassis: ChassisSpec = field(default_factory=ChassisSpec)
    csd: CsdSpec = field(default_factory=CsdSpec)
    csd_count: int = 16
    has_gpu: bool = True
    notes: str = ""


# -------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class WeightPlacement:
    """Fractions of each layer's weights resident on GPU / host DRAM / storage."""

    gpu: float = 0.0
    host: float = 1.0
    storage: float = 0.0


@dataclass(frozen=True)
class WriteBack:
    c: int = 1
    variant: str = "v1"


@dataclass(frozen=True)
class XCache:
    alpha: Any = 0.0  # a number in [0,1], "auto" or "budget"
    where: str = "host"


@dataclass(frozen=True)
class Policy:
    """How a run is scheduled. `name` picks the registered plan builder; the rest
    are knobs that builders read (unused knobs are ignored by a builder)."""

    name: str = "ans"
    weights: WeightPlacement = field(default_factory=WeightPlacement)
    kv_on: str = "csd"  # gpu | host | ssd | csd
    attention_on: str = "csd"  # gpu | cpu | csd
    partition: str = "rows"  # rows | sequence
    wb: WriteBack = field(default_factory=WriteBack)
    xcache: XCache = field(default_factory=XCache)
    prefetch_weights: bool = True
    params: Dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------- simulator
@dataclass(frozen=True)
class SimOptions:
    fidelity: str = "full"  # full | fast
    sample_steps: int = 4
    trace: bool = True
    trace_steps: int = 3  # steps written to trace.json (0 = prefill only, -1 = all)


def check_choice(field_name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise SpecError(f"{field_name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def check_positive(field_name: str, value, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise SpecError(f"{field_name}={value!r} is not allowed; it must be {bound}")


def validate(model: ModelSpec, workload: Workload, hw: HardwareProfile, policy: Policy) -> None:
    """Cross-field checks that a schema cannot express. Raises SpecError (one line)."""
    check_choice("model.family", model.family, ("opt", "llama", "mixtral"))
    for f in ("num_layers", "hidden", "num_heads", "num_kv_heads", "head_dim", "ffn_dim", "vocab_size"):
        check_positive(f"model.{f}", getattr(model, f))
    if model.num_heads % model.num_kv_heads:
        raise SpecError(f"model.num_kv_heads={model.num_kv_heads} must divide model.num_heads={model.num_heads}")
    for f in ("batch", "gen_len", "num_micro_batches"):
        check_positive(f"workload.{f}", getattr(workload, f))
    check_positive("workload.prompt_len", workload.prompt_len)
    if workload.batch % workload.num_micro_batches:
        raise SpecError(f"workload.num_micro_batches={workload.num_micro_batches} must divide workload.batch={workload.batch}")
    check_positive("hardware.ssd_count", hw.ssd_count, allow_zero=True)
    check_positive("hardware.csd_count", hw.csd_count, allow_zero=True)
    if hw.gpu.decode_attention_gqa_us and len(hw.gpu.decode_attention_gqa_us) != len(hw.gpu.decode_attention_kib):
        raise SpecError(f"hardware.gpu.decode_attention_gqa_us: one time per decode_attention_kib size is needed, "
                        f"got {len(hw.gpu.decode_attention_gqa_us)} for {len(hw.gpu.decode_attention_kib)}")
    for where, kib, us in (("gpu.decode_attention", hw.gpu.decode_attention_kib, hw.gpu.decode_attention_us),
                           ("cpu.attention", hw.cpu.attention_kib, hw.cpu.attention_us),
                           ("cpu.tokens_attention", hw.cpu.tokens_attention_kib, hw.cpu.tokens_attention_us),
                           ("csd.attend", hw.csd.attend_kib, hw.csd.attend_us)):
        if len(kib) != len(us) or len(kib) == 1 or any(b <= a for a, b in zip(kib, kib[1:])):
            raise SpecError(f"hardware.{where}_kib / _us: equal lengths (0 or >= 2) and increasing sizes are "
                            f"needed, got {list(kib)} / {list(us)}")
    if len(hw.cpu.beside_dma_kib) != len(hw.cpu.beside_dma_kib_ratio) or any(r <= 0 for r in hw.cpu.beside_dma_kib_ratio):
        raise SpecError(f"hardware.cpu.beside_dma_kib_ratio: one positive ratio per cpu.beside_dma_kib size is needed, got "
                        f"{list(hw.cpu.beside_dma_kib_ratio)} for {list(hw.cpu.beside_dma_kib)}")
    if hw.csd.attend_together and (len(hw.csd.attend_together) != len(hw.csd.attend_kib) or hw.csd.together_count < 2
                                   or any(r <= 0 for r in hw.csd.attend_together)):
        raise SpecError(f"hardware.csd.attend_together: one positive ratio per csd.attend_kib size and "
                        f"together_count >= 2 are needed, got {list(hw.csd.attend_together)} with together_count "
                        f"{hw.csd.together_count}")
    for where, kib, us in (("csd.attend_gqa", hw.csd.attend_kib, hw.csd.attend_gqa_us),
                           ("cpu.attention_gqa", hw.cpu.attention_kib, hw.cpu.attention_gqa_us),
                           ("cpu.tokens_attention_gqa", hw.cpu.tokens_attention_kib, hw.cpu.tokens_attention_gqa_us)):
        if us and len(us) != len(kib):
            raise SpecError(f"hardware.{where}_us: one time per {where.replace('_gqa', '')}_kib size is needed, "
                            f"got {len(us)} for {len(kib)}")
    q, ns = hw.gpu.attention_score_mib, hw.gpu.attention_score_mib_ns
    if len(q) != len(ns) or any(b <= a for a, b in zip(q, q[1:])) or any(v < 0 for v in ns):
        raise SpecError(f"hardware.gpu.attention_score_mib / _mib_ns: equal lengths, increasing sizes and "
                        f"times >= 0 are needed, got {list(q)} / {list(ns)}")
    from .op_curves import check_curve

    for i, c in enumerate(hw.gpu.op_curves):
        check_curve(c, f"hardware.gpu.op_curves[{i}]")
    for i, c in enumerate(hw.cpu.op_curves):
        check_curve(c, f"hardware.cpu.op_curves[{i}]", allowed=("decode_attention",))
    check_positive("hardware.csd.io_threads", hw.csd.io_threads, allow_zero=True)
    check_positive("hardware.ssd.io_threads", hw.ssd.io_threads, allow_zero=True)
    check_positive("hardware.gpu.copy_engines", hw.gpu.copy_engines, allow_zero=True)
    check_positive("hardware.gpu.link.duplex_gbps", hw.gpu.link.duplex_gbps, allow_zero=True)
    check_positive("hardware.gpu.attention_score_head_dim", hw.gpu.attention_score_head_dim, allow_zero=True)
    check_positive("hardware.host.shared_cores", hw.host.shared_cores, allow_zero=True)
    check_positive("hardware.host.probe_ms", hw.host.probe_ms, allow_zero=True)
    for name, st in (("ssd", hw.ssd), ("csd.ssd", hw.csd.ssd)):
        check_positive(f"hardware.{name}.probe_read_gbps", st.probe_read_gbps, allow_zero=True)
        check_positive(f"hardware.{name}.probe_write_gbps", st.probe_write_gbps, allow_zero=True)
    check_positive("hardware.host.compute_scale", hw.host.compute_scale)
    for dev in hw.host.core_devices:
        check_choice("hardware.host.core_devices[]", dev, ("gpu", "cpu", "fpga"))
    for name, st in (("ssd", hw.ssd), ("csd.ssd", hw.csd.ssd)):
        check_choice(f"hardware.{name}.shared_by", st.shared_by, ("bytes", "requests"))
    for store in hw.host.core_moves:
        check_choice("hardware.host.core_moves[]", store, ("ssd", "csd"))
    if hw.csd_count > hw.csd.max_count:
        raise SpecError(f"hardware.csd_count={hw.csd_count} is not allowed; this profile holds 0..{hw.csd.max_count}")
    check_choice("policy.kv_on", policy.kv_on, ("gpu", "host", "ssd", "csd"))
    check_choice("policy.attention_on", policy.attention_on, ("gpu", "cpu", "csd"))
    check_choice("policy.partition", policy.partition, ("rows", "sequence"))
    check_choice("policy.wb.variant", policy.wb.variant, ("v1", "v2"))
    check_positive("policy.wb.c", policy.wb.c)
    check_choice("policy.xcache.where", policy.xcache.where, ("host", "ssd"))
    a = policy.xcache.alpha
    if not (a in ("auto", "budget") or (isinstance(a, (int, float)) and 0.0 <= float(a) <= 1.0)):
        raise SpecError(f"policy.xcache.alpha={a!r} is not allowed; use a number in [0, 1], 'auto' or 'budget'")
    w = policy.weights
    for f in ("gpu", "host", "storage"):
        if not 0.0 <= getattr(w, f) <= 1.0:
            raise SpecError(f"policy.weights.{f}={getattr(w, f)!r} is not allowed; it must be in [0, 1]")
    if abs(w.gpu + w.host + w.storage - 1.0) > 1e-6:
        raise SpecError(f"policy.weights fractions must sum to 1 (gpu={w.gpu} host={w.host} storage={w.storage})")
    if policy.attention_on == "gpu" and not hw.has_gpu and policy.kv_on == "gpu":
        raise SpecError(f"policy.kv_on=gpu needs a GPU but hardware {hw.name} has none")
