"""Measured op times of named model shapes (`GpuSpec.op_curves`) for the rates model.

Called by `inf2sim.rates.work_seconds` before its roofline terms: a dense op (qkv, post,
head) or a prompt attention on the dense device (`gpu.op_curves`, `inf2hw.calibrate_ops`),
or a decode attention on the host CPU (`cpu.op_curves`, `inf2hw.calibrate_dense`), that a
calibration timed for this model's shape (`inf2 calibrate calibrate.models=[...]`) takes the
interpolated measured time instead of max(flops / rate, bytes / bandwidth). One rate per
device cannot say how a given shape runs: on the 2-core VM the one GEMV rate simulated
OPT-125M's decode projections at 1.01-1.29x their measured time and LLaMA-110M's (three
GEMVs and RoPE) at 0.76-0.90x (BENCHMARKS.md, session 7). Ops of shapes no curve matches
keep the rates model. Pure: numpy, no torch, no simpy.
Units: seconds out; curves in us (beyond launch_us) over tokens.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .plan import Attention, DenseCompute
from .specs import OpCurve

REL_TOL = 1e-6  # FLOPs per token computed twice by the same formula: equal up to rounding


def op_tokens(op: DenseCompute) -> int:
    """The tokens a dense op computes: sequences x positions."""
    return max(0, op.tokens[1] - op.tokens[0]) * max(0, op.seqs[1] - op.seqs[0])


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def find_dense(curves: Sequence[OpCurve], op: DenseCompute) -> Optional[OpCurve]:
    n = op_tokens(op)
    if n <= 0 or op.flops <= 0:
        return None
    fpt = op.flops / n
    for c in curves:
        if c.what == op.what and _close(c.flops_per_token, fpt):
            return c
    return None


def find_attention(curves: Sequence[OpCurve], op: Attention, what: str) -> Optional[OpCurve]:
    """The `what` curve (prefill_attention, decode_attention) of op's group and head_dim."""
    for c in curves:
        if c.what == what and c.group == op.group and c.head_dim == op.head_dim:
            return c
    return None


def curve_us(c: OpCurve, n: float, power: float = 1.0) -> float:
    """us at `n` tokens: linear between the measured points, held below the first, and
    scaled as n**power from the last beyond it (power 1: a dense op's work grows with its
    tokens; 2: a causal attention's with the prompt squared)."""
    if n >= c.tokens[-1]:
        return c.us[-1] * (n / c.tokens[-1]) ** power
    return float(np.interp(n, c.tokens, c.us))


def measured_seconds(curves: Sequence[OpCurve], op) -> Optional[float]:
    """Seconds beyond launch of `op` on the dense device from a matching curve, or None."""
    if not curves:
        return None
    if isinstance(op, DenseCompute):
        c = find_dense(curves, op)
        return None if c is None else curve_us(c, op_tokens(op)) * 1e-6
    if isinstance(op, Attention):
        c = find_attention(curves, op, "prefill_attention" if op.q_len > 1 else "decode_attention")
        if c is None:
            return None
        rows = op.rows[1] - op.rows[0]
        if op.q_len > 1:
            return rows * curve_us(c, op.q_len, power=2.0) * 1e-6
        return rows * curve_us(c, op.tokens[1] - op.tokens[0]) * 1e-6  # one query over the attended positions
    return None


def check_curve(c: OpCurve, where: str, allowed=("qkv", "post", "head", "prefill_attention")) -> None:
    """One-line errors for a curve a user wrote or a calibration left malformed; `allowed`:
    the kinds its list holds (the dense device's, or the cpu's decode_attention)."""
    from .specs import SpecError

    if c.what not in allowed:
        raise SpecError(f"{where}.what={c.what!r} is not known here; choose one of {', '.join(allowed)}")
    if not c.tokens or len(c.tokens) != len(c.us):
        raise SpecError(f"{where}: tokens and us must be non-empty lists of equal length")
    if any(b <= a for a, b in zip(c.tokens, c.tokens[1:])) or c.tokens[0] <= 0:
        raise SpecError(f"{where}.tokens must be positive and increasing")
    if any(u < 0 for u in c.us):
        raise SpecError(f"{where}.us must be >= 0")
    if c.what.endswith("_attention") and (c.head_dim <= 0 or c.group <= 0):
        raise SpecError(f"{where}: a {c.what} curve needs head_dim > 0 and group > 0")
    if not c.what.endswith("_attention") and c.flops_per_token <= 0:
        raise SpecError(f"{where}.flops_per_token must be > 0 for a {c.what} curve")
