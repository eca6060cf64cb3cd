"""Cycle model of the near-storage decode-attention kernel (hls/src/inf2_attention.cpp).

Called by the simulator's CSD/FPGA service-time code (`attention_seconds`) and by anyone who
wants the kernel's KV consumption rate (`kv_consume_gbps`); `python3 -m inf2sim.accel` prints the
HILOS design-point statement quoted in hls/README.md. Pure Python (stdlib only).

Units: cycles of the kernel clock, seconds, bytes, GB/s = 1e9 bytes/s. fp16 K/V (2 bytes).

The model is the kernel's own loop structure, trip count x initiation interval, one term per
labelled C++ loop (`LOOP_TERMS` lists them; `loop_trips` gives their trip counts, which
tests/test_hls.py checks against the C++ built with -DINF2_TRIP_COUNTS). Assumptions:
  * Every pipelined loop has II = 1 (the kernel spreads each fp32 accumulator over kAccSlots
    interleaved partial sums, so no loop waits on its own fadd) and costs
    `trips + pipeline_depth` cycles per invocation (`pipeline_depth` = fill/drain latency).
  * A fully unrolled step (max tree, slot reduction, 1/l) costs 1 cycle.
  * Loads move one `axi_bytes`-wide beat per cycle: a token row costs ceil(2*head_dim/axi_bytes)
    beats. DRAM is assumed to sustain that (ideal bursts; no refresh or page misses).
  * The MAC array has `macs` lanes: lane width w = min(macs, block_tokens), and
    s = max(1, macs // block_tokens) heads share it side by side. Pass 1 (QK) puts tokens on the
    lanes: head_dim * ceil(block_tokens / w) cycles per head pass; pass 2 (PV) puts head dims on
    the lanes: n_valid * ceil(head_dim / w) cycles per head pass; ceil(group / s) head passes.
    The C++ kernel is the macs = 128 instance (s = 1: heads in sequence); HILOS's GQA design
    replicates the array per head of a group, i.e. macs = 128 * group.
  * One row is a DATAFLOW region load -> compute -> store: the longest of load and compute, plus
    the store of that row's results (the store can only follow compute's last output). Rows run
    one after another. Error: within about one block of work per row. Kernel launch and host
    transfers are not included (the caller's link model owns them).
  * Score spill/refill to FPGA DRAM rides inside p1_sm_tok / p2_pv_tok (4 bytes per cycle); it adds
    no cycles but uses 4*group bytes of DRAM bandwidth per token (not modelled).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Dict

from inf2sim.specs import FpgaSpec, SpecError


@dataclass(frozen=True)
class KernelShape:
    """Compile-time shape of the C++ kernel: AttnConfig in hls/include/inf2_attn/attn_config.h."""

    max_head_dim: int = 128
    max_group: int = 8
    max_tail: int = 128
    axi_bytes: int = 64
    acc_slots: int = 8


KERNEL = KernelShape()

# Every labelled C++ step the model counts (hls/include/inf2_attn/*.h), by dataflow stage. A
# pipelined loop costs one cycle per trip; an unrolled step (marked "step") one cycle per use.
LOOP_TERMS = {
    "load": (
        "ld_beat",          # attn_load.h: q, K, V and tail-k/v runs -- one AXI beat per cycle
        "ld_tscore",        # attn_load.h: v2 tail scores, one float per cycle
    ),
    "compute": (
        "skew_clear_addr",  # skew_transpose.h: zero the K^T buffer once per row
        "cp_q_head",        # attn_compute.h: q heads into registers
        "cp_init",          # attn_compute.h: zero the o_acc slots, m = -inf, l = 0
        "p1_kwrite",        # attn_compute.h: K tokens into the skewed transpose buffer
        "p1_qk_dim",        # attn_compute.h: QK MACs, one K^T column (block_tokens lanes) per cycle
        "p1_qk_mask",       # step: reduce slots, scale, -1e4 padding mask
        "p1_ts_tok",        # attn_compute.h: v2 tail block, precomputed scores in
        "p1_sm_max",        # step: block max tree
        "p1_sm_tok",        # attn_compute.h: exp-sum under the running max + score spill
        "p1_sm_reduce",     # step: partial-sum reduction and the online (m, l) rescale
        "p2_vwrite",        # attn_compute.h: V tokens into vbuf
        "p2_pv_head",       # step: 1 / l
        "p2_pv_tok",        # attn_compute.h: normalise p = exp(s - m) / l, PV MACs (head_dim lanes)
        "cp_out_head",      # attn_compute.h: reduce the o_acc slots, emit out row and lse
    ),
    "store": (
        "st_beat",          # attn_store.h: out row, one AXI beat per cycle
        "st_head",          # step: the lse word
    ),
}


def _blocks(ctx_len: int, n_tail: int, tail_mode: int, block_tokens: int):
    """(n_valid, kind) per block: kind 'ctx', 'tail_kv' (v1) or 'tail_scores' (v2)."""
    out = [(min(block_tokens, ctx_len - b * block_tokens), "ctx") for b in range(math.ceil(ctx_len / block_tokens))]
    if tail_mode and n_tail > 0:
        out.append((n_tail, "tail_kv" if tail_mode == 1 else "tail_scores"))
    return out


def loop_trips(ctx_len: int, head_dim: int, group: int, n_tail: int = 0, macs: int = 128, block_tokens: int = 128,
               tail_mode: int = 1, axi_bytes: int = KERNEL.axi_bytes) -> Dict[str, Dict[str, int]]:
    """Trips of each labelled step for one row, by stage, plus '_fills': pipelined-loop invocations
    per stage (each pays pipeline_depth). With macs == block_tokens (the C++ kernel) the trips equal
    what the C++ counts when built with -DINF2_TRIP_COUNTS."""
    _check(ctx_len, head_dim, group, n_tail, macs, block_tokens, 0, tail_mode)
    beats_tok = math.ceil(2 * head_dim / axi_bytes)  # one fp16 token row
    w = min(macs, block_tokens)  # lane width of the MAC array
    hp = math.ceil(group / max(1, macs // block_tokens))  # head passes through the array
    blocks = _blocks(ctx_len, n_tail, tail_mode, block_tokens)
    t = {stage: dict.fromkeys(labels, 0) for stage, labels in LOOP_TERMS.items()}
    fills = {"load": 0, "compute": 0, "store": 0}

    def add(stage: str, label: str, trips: int, invocations: int = 1, step: bool = False) -> None:
        t[stage][label] += trips
        if not step and trips > 0:
            fills[stage] += invocations

    add("load", "ld_beat", group * beats_tok)  # q
    add("compute", "skew_clear_addr", block_tokens)
    add("compute", "cp_q_head", group)
    add("compute", "cp_init", group * KERNEL.acc_slots)
    for n_valid, kind in blocks:
        if kind == "tail_scores":
            add("load", "ld_tscore", group * n_valid)
            add("compute", "p1_ts_tok", hp * block_tokens, hp)
        else:
            add("load", "ld_beat", n_valid * beats_tok)  # K (or tail K), pass 1
            add("compute", "p1_kwrite", n_valid)
            add("compute", "p1_qk_dim", hp * head_dim * math.ceil(block_tokens / w), hp)
            add("compute", "p1_qk_mask", hp, step=True)
        add("compute", "p1_sm_max", hp, step=True)
        add("compute", "p1_sm_tok", hp * block_tokens, hp)
        add("compute", "p1_sm_reduce", hp, step=True)
        add("load", "ld_beat", n_valid * beats_tok)  # V (or tail V), pass 2
        add("compute", "p2_vwrite", n_valid)
        add("compute", "p2_pv_head", hp, step=True)
        add("compute", "p2_pv_tok", hp * n_valid * math.ceil(head_dim / w), hp)
    add("compute", "cp_out_head", group)
    add("store", "st_beat", group * math.ceil(4 * head_dim / axi_bytes), group)
    add("store", "st_head", group, step=True)
    t["_fills"] = fills
    return t


def row_cycles(ctx_len: int, head_dim: int, group: int, n_tail: int = 0, macs: int = 128, block_tokens: int = 128,
               pipeline_depth: int = 0, tail_mode: int = 1, axi_bytes: int = KERNEL.axi_bytes) -> Dict[str, int]:
    """Cycles of one (sequence, KV-head) row, by stage: {'load', 'compute', 'store', 'row'}."""
    _check(ctx_len, head_dim, group, n_tail, macs, block_tokens, pipeline_depth, tail_mode)
    t = loop_trips(ctx_len, head_dim, group, n_tail, macs, block_tokens, tail_mode, axi_bytes)
    c = {st: sum(t[st].values()) + pipeline_depth * t["_fills"][st] for st in ("load", "compute", "store")}
    c["row"] = max(c["load"], c["compute"]) + c["store"]
    return c


def kernel_cycles(ctx_len: int, head_dim: int = 128, group: int = 1, n_rows: int = 1, n_tail: int = 0,
                  macs: int = 128, block_tokens: int = 128, pipeline_depth: int = 0, tail_mode: int = 1,
                  axi_bytes: int = KERNEL.axi_bytes) -> int:
    """Cycles of one kernel call over n_rows rows that share ctx_len, n_tail and group."""
    if n_rows < 0:
        raise SpecError(f"n_rows={n_rows!r} is not allowed; it must be >= 0")
    return n_rows * row_cycles(ctx_len, head_dim, group, n_tail, macs, block_tokens, pipeline_depth, tail_mode,
                               axi_bytes)["row"]


def kv_bytes(rows: int, ctx_len: int, head_dim: int, group: int = 1, n_tail: int = 0, tail_mode: int = 1) -> int:
    """Bytes the kernel consumes: stored K and V (fp16) plus the tail (v1: k, v; v2: fp32 scores, v)."""
    tail = 0
    if n_tail > 0 and tail_mode == 1:
        tail = n_tail * head_dim * 4
    elif n_tail > 0 and tail_mode == 2:
        tail = n_tail * (head_dim * 2 + group * 4)
    return rows * (ctx_len * head_dim * 4 + tail)


def attention_flops(rows: int, ctx_len: int, group: int, head_dim: int, n_tail: int = 0) -> int:
    """Useful FLOPs (QK and PV multiply-adds, 2 FLOPs each), the way HILOS reports GFLOPS."""
    return rows * group * (ctx_len + n_tail) * head_dim * 4


def attention_seconds(fpga_spec: FpgaSpec, rows: int, ctx_len: int, group: int, head_dim: int, n_tail: int = 0,
                      tail_mode: int = 1) -> float:
    """Time of one attention call on one CSD's FPGA. A measured `rate_gbps` > 0 overrides the cycle
    model: the time is then kv_bytes / rate."""
    if fpga_spec.rate_gbps > 0:
        return kv_bytes(rows, ctx_len, head_dim, group, n_tail, tail_mode) / (fpga_spec.rate_gbps * 1e9)
    if fpga_spec.clock_mhz <= 0 or fpga_spec.macs <= 0:
        raise SpecError(f"fpga.clock_mhz={fpga_spec.clock_mhz!r} and fpga.macs={fpga_spec.macs!r} must be > 0 "
                        "(or set fpga.rate_gbps > 0)")
    cycles = kernel_cycles(ctx_len, head_dim, group, rows, n_tail, fpga_spec.macs, fpga_spec.block_tokens,
                           fpga_spec.pipeline_depth, tail_mode)
    return cycles / (fpga_spec.clock_mhz * 1e6)


def kv_consume_gbps(fpga_spec: FpgaSpec, ctx_len: int, group: int, head_dim: int, rows: int = 1, n_tail: int = 0,
                    tail_mode: int = 1) -> float:
    """KV bytes per second the kernel consumes (GB/s); compare with the SSD->FPGA P2P read rate."""
    secs = attention_seconds(fpga_spec, rows, ctx_len, group, head_dim, n_tail, tail_mode)
    return kv_bytes(rows, ctx_len, head_dim, group, n_tail, tail_mode) / secs / 1e9 if secs > 0 else math.inf


def design_point_report(fpga_spec: FpgaSpec, ctx_len: int = 4096, head_dim: int = 128, group: int = 1,
                        ssd_p2p_gbps: float = 3.0) -> str:
    """The statement for hls/README.md: KV GB/s the kernel consumes vs the SSD's P2P read rate."""
    r = row_cycles(ctx_len, head_dim, group, 0, fpga_spec.macs, fpga_spec.block_tokens, fpga_spec.pipeline_depth)
    gbps = kv_consume_gbps(fpga_spec, ctx_len, group, head_dim)
    gflops = attention_flops(1, ctx_len, group, head_dim) / attention_seconds(fpga_spec, 1, ctx_len, group,
                                                                               head_dim) / 1e9
    bound = "the load stage (AXI beats)" if r["load"] >= r["compute"] else "the compute stage (MAC array, exp)"
    return (f"kernel at {fpga_spec.clock_mhz:g} MHz, {fpga_spec.macs} MACs, block {fpga_spec.block_tokens}, "
            f"pipeline depth {fpga_spec.pipeline_depth}; d={head_dim}, group={group}, ctx={ctx_len}:\n"
            f"  per row: load {r['load']} cycles, compute {r['compute']}, store {r['store']} -> {r['row']} "
            f"(bound by {bound})\n"
            f"  consumes {gbps:.2f} GB/s of KV ({gflops:.1f} GFLOPS), {gbps / ssd_p2p_gbps:.1f}x the "
            f"~{ssd_p2p_gbps:g} GB/s SSD P2P read: the FPGA is {'not ' if gbps > ssd_p2p_gbps else ''}the bottleneck")


def _check(ctx_len, head_dim, group, n_tail, macs, block_tokens, pipeline_depth, tail_mode) -> None:
    if ctx_len < 0 or n_tail < 0 or pipeline_depth < 0:
        raise SpecError(f"ctx_len={ctx_len!r}, n_tail={n_tail!r}, pipeline_depth={pipeline_depth!r} must be >= 0")
    if not 1 <= head_dim <= KERNEL.max_head_dim:
        raise SpecError(f"head_dim={head_dim!r} is not allowed; the kernel holds 1..{KERNEL.max_head_dim}")
    if not 1 <= group <= KERNEL.max_group:
        raise SpecError(f"group={group!r} is not allowed; the kernel holds 1..{KERNEL.max_group}")
    if n_tail > KERNEL.max_tail:
        raise SpecError(f"n_tail={n_tail!r} is not allowed; the kernel holds 0..{KERNEL.max_tail}")
    if macs <= 0 or block_tokens <= 0:
        raise SpecError(f"macs={macs!r} and block_tokens={block_tokens!r} must be > 0")
    if tail_mode not in (0, 1, 2):
        raise SpecError(f"tail_mode={tail_mode!r} is not allowed; choose one of 0, 1, 2")


def main(argv=None) -> int:
    # Defaults: the HILOS design point (REFERENCE.md, "HILOS accelerator"): 296 MHz, 128 MACs,
    # 128-token blocks, ~3 GB/s SmartSSD P2P read. pipeline_depth is not published: an input.
    ap = argparse.ArgumentParser(description="KV consumption rate of the HLS attention kernel at a design point")
    ap.add_argument("--clock-mhz", type=float, default=296.0)
    ap.add_argument("--macs", type=int, default=128)
    ap.add_argument("--block-tokens", type=int, default=128)
    ap.add_argument("--pipeline-depth", type=int, default=0)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--group", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--ssd-p2p-gbps", type=float, default=3.0)
    a = ap.parse_args(argv)
    spec = FpgaSpec(clock_mhz=a.clock_mhz, macs=a.macs, block_tokens=a.block_tokens, pipeline_depth=a.pipeline_depth)
    print(design_point_report(spec, a.ctx, a.head_dim, a.group, a.ssd_p2p_gbps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
