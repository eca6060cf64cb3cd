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
from typing import Dict, List, Optional

from .metrics import throughput
from .plan import Attention, DenseCompute, Spill, StepPlan, Transfer
from .rates import compute_seconds
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


def step_resource_seconds(step: StepPlan, topo: Topology, hw, dtype_bytes: int = 2):
    """(critical, all): seconds of work per resource in one step; `critical` leaves out spills."""
    crit: Dict[str, float] = defaultdict(float)
    spill: Dict[str, float] = defaultdict(float)
    for op in step.ops:
        if isinstance(op, (Transfer, Spill)):
            src = "dram" if isinstance(op, Spill) else op.src
            a, b = endpoint_node(src), endpoint_node(op.dst)
            if a == b or op.nbytes <= 0:
                continue
            req = op.req_bytes or op.nbytes
            sink = spill if isinstance(op, Spill) else crit
            for link, direction in topo.path(a, b):
                cap = topo.links[link].gbps(direction, req) * 1e9
                if cap > 0:
                    sink[f"{link}:{direction}"] += op.nbytes / cap
        elif isinstance(op, (DenseCompute, Attention)):
            crit[op.device] += compute_seconds(op, hw, dtype_bytes)
    total = defaultdict(float, crit)
    for k, v in spill.items():
        total[k] += v
    return crit, total


def bound_of_steps(steps: List[StepPlan], weights: Optional[Dict[int, float]], topo: Topology, hw,
                   dtype_bytes: int = 2):
    """Bound over a set of steps; `weights[s]` counts step s that many times (sampling)."""
    per_step_max = {0: 0.0, 1: 0.0}  # phase 0 = prefill, 1 = decode
    totals: Dict[str, float] = defaultdict(float)
    for st in steps:
        w = 1.0 if weights is None else weights.get(st.step, 1.0)
        crit, tot = step_resource_seconds(st, topo, hw, dtype_bytes)
        per_step_max[0 if st.step == 0 else 1] += w * max(crit.values(), default=0.0)
        for k, v in tot.items():
            totals[k] += w * v
    return per_step_max, totals


def bound(spec, builder, windows: int = 8) -> Bound:
    """Throughput upper bound for a run (plan from `builder`), sampling decode windows
    and weighting them to cover every step (exact for per-step costs linear in ctx)."""
    from .simulate import _sampled_steps

    wl = spec.workload
    width = builder.layout.c
    steps = _sampled_steps(wl.gen_len, windows, width)
    dec = [s for s in steps if s >= 1]
    n_dec = wl.gen_len - 1
    weights = {s: (n_dec / len(dec) if dec else 0.0) for s in dec}
    weights[0] = 1.0
    plan = builder.plan()
    topo = build_topology(spec.hardware)
    per_step, totals = bound_of_steps(list(plan.steps(steps)), weights, topo, spec.hardware, spec.model.dtype_bytes)
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
