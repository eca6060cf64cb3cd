"""Closed-form bounds: per-resource lower bounds on step time from the plan itself.

Called by `inf2sim.simulate` (metrics `bound_tok_s`, `bottleneck`, `efficiency`) and
`inf2sim.tune` (the analytic model the tuner searches over). For every op of a step:
a transfer adds nbytes / capacity to each (link, direction) it crosses (media links
at the op's request size), a compute op adds its service time (`inf2sim.rates`) to
its device. A step cannot finish before its busiest resource does, and the run
cannot finish before any resource has done all its work, so

    T >= max( sum_steps max_r t[s, r],  max_r sum_steps t[s, r] )

(spills are excluded from the per-step term: they may overlap the next step).
Throughput bounds follow with the FlexGen conventions of `inf2sim.metrics`.
Seconds and bytes throughout.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .metrics import throughput
from .plan import Attention, DenseCompute, Spill, StepPlan, Transfer
from .rates import ComputeTimer
from .topology import Topology, build_topology, endpoint_node


@dataclass
class Bound:
    prefill_s: float
    decode_s: float
    total_tok_s: float
    prefill_tok_s: float
    decode_tok_s: float
    bottleneck: str
    per_resource_s: Dict[str, float] = field(default_factory=dict)


BOUND_WINDOWS = 8  # decode windows the bound samples (weighted to cover every step)


class StepCoster:
    """Seconds of work per resource in one step (`step_seconds`). A step has
    thousands of ops over a few routes, so each route's (link:direction, capacity)
    list is computed once per request size and kept."""

    def __init__(self, topo: Topology, hw, dtype_bytes: int = 2):
        self.topo, self.hw, self.dtype_bytes = topo, hw, dtype_bytes
        self._shares: Dict[tuple, tuple] = {}  # (src, dst, req_bytes) -> ((link:direction, B/s), ...)
        self._compute_s = ComputeTimer(hw, dtype_bytes)

    def _links(self, src: str, dst: str, req: int) -> tuple:
        key = (src, dst, req)
        r = self._shares.get(key)
        if r is None:
            topo = self.topo
            a, b = endpoint_node(src), endpoint_node(dst)
            r = () if a == b else tuple(
                (f"{link}:{direction}", cap) for link, direction in topo.path(a, b)
                for cap in (topo.links[link].gbps(direction, req) * 1e9,) if cap > 0)
            self._shares[key] = r
        return r

    def step_seconds(self, step: StepPlan):
        """(critical, all): seconds of work per resource in one step; `critical` leaves out spills.
        Bytes are summed per route first (thousands of ops, a few dozen routes), so a
        link's seconds are sum(bytes) / capacity: equal to the per-op sum up to round-off."""
        crit: Dict[str, float] = defaultdict(float)
        moved: Dict[tuple, int] = {}  # (spill?, src, dst, req_bytes) -> bytes, in order of first use
        compute_s = self._compute_s
        for op in step.ops:
            if isinstance(op, (Transfer, Spill)):
                n = op.nbytes
                if n <= 0:
                    continue
                if isinstance(op, Spill):
                    key = (True, "dram", op.dst, op.req_bytes or n)
                else:
                    key = (False, op.src, op.dst, op.req_bytes or n)
                moved[key] = moved.get(key, 0) + n
            elif isinstance(op, (DenseCompute, Attention)):
                crit[op.device] += compute_s(op)
        spill: Dict[str, float] = defaultdict(float)
        for (is_spill, src, dst, req), n in moved.items():
            sink = spill if is_spill else crit
            for key, cap in self._links(src, dst, req):
                sink[key] += n / cap
        total = defaultdict(float, crit)
        for k, v in spill.items():
            total[k] += v
        return crit, total


def step_resource_seconds(step: StepPlan, topo: Topology, hw, dtype_bytes: int = 2):
    """(critical, all): seconds of work per resource in one step; `critical` leaves out spills."""
    return StepCoster(topo, hw, dtype_bytes).step_seconds(step)


def _accumulate(costs, weights: Optional[Dict[int, float]]):
    """Sum (step, (critical, all)) pairs; `weights[s]` counts step s that many times."""
    per_step_max = {0: 0.0, 1: 0.0}  # phase 0 = prefill, 1 = decode
    totals: Dict[str, float] = defaultdict(float)
    for s, (crit, tot) in costs:
        w = 1.0 if weights is None else weights.get(s, 1.0)
        per_step_max[0 if s == 0 else 1] += w * max(crit.values(), default=0.0)
        for k, v in tot.items():
            totals[k] += w * v
    return per_step_max, totals


def bound_of_steps(steps: List[StepPlan], weights: Optional[Dict[int, float]], topo: Topology, hw,
                   dtype_bytes: int = 2):
    """Bound over a set of steps; `weights[s]` counts step s that many times (sampling)."""
    coster = StepCoster(topo, hw, dtype_bytes)
    return _accumulate(((st.step, coster.step_seconds(st)) for st in steps), weights)


def bound_steps(gen_len: int, width: int, windows: int = BOUND_WINDOWS) -> Tuple[List[int], Dict[int, float]]:
    """The steps the bound costs and their weights (decode windows cover every step)."""
    from .simulate import _sampled_steps

    steps = _sampled_steps(gen_len, windows, width)
    dec = [s for s in steps if s >= 1]
    n_dec = gen_len - 1
    weights = {s: (n_dec / len(dec) if dec else 0.0) for s in dec}
    weights[0] = 1.0
    return steps, weights


def bound(spec, builder, windows: int = BOUND_WINDOWS, step_costs: Optional[Dict[int, tuple]] = None) -> Bound:
    """Throughput upper bound for a run (plan from `builder`), sampling decode windows
    and weighting them to cover every step (exact for per-step costs linear in ctx).
    `step_costs`: `StepCoster.step_seconds` of steps already met (by the DES); only
    the sampled steps missing from it are built."""
    wl = spec.workload
    steps, weights = bound_steps(wl.gen_len, builder.layout.c, windows)
    costs = dict(step_costs or {})
    missing = [s for s in steps if s not in costs]
    if missing:
        coster = StepCoster(build_topology(spec.hardware), spec.hardware, spec.model.dtype_bytes)
        for st in builder.plan().steps(missing):
            costs[st.step] = coster.step_seconds(st)
    per_step, totals = _accumulate(((s, costs[s]) for s in steps), weights)
    res_max = max(totals.values(), default=0.0)
    prefill_s = per_step[0]
    decode_s = per_step[1]
    total_s = max(prefill_s + decode_s, res_max)
    if total_s > prefill_s + decode_s:  # stretch decode so the phases add up to the resource bound
        decode_s = total_s - prefill_s
    thr = throughput(wl.batch, wl.prompt_len, wl.gen_len, prefill_s, decode_s)
    bottleneck = max(totals, key=totals.get) if totals else ""
    return Bound(prefill_s, decode_s, thr["total_tok_s"], thr["prefill_tok_s"], thr["decode_tok_s"], bottleneck,
                 dict(sorted(totals.items(), key=lambda kv: -kv[1])[:12]))
