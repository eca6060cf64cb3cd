"""`simulate(...)`: the Python API the CLI is a thin layer over.

Usable from a notebook:

    from inf2sim import simulate
    m = simulate(model="opt-175b", policy="ans", **{"hardware.csd_count": 16})
    m.throughput["total_tok_s"]

Builds the plan with the scheduler, checks memory (status "oom" with needed and
available bytes), runs the DES through the shared driver loop and returns
`Metrics`. With `out_dir`, writes metrics.json and trace.json (Chrome trace of the
first `sim.trace_steps` steps, or all with -1).

Fidelity: `full` simulates every op of every step. `fast` simulates the prefill
and `sim.sample_steps` windows of decode steps (a window is `c` consecutive steps,
so periodic spills are sampled whole), evenly spaced, and interpolates per-step
time and bytes linearly in the step index; its error against `full` is measured
by tests/benchmarks (BENCHMARKS.md).
"""
from __future__ import annotations

import dataclasses
import gc
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .config import RunSpec, default_config, specs_from_config
from .cost import StepCoster, bound, bound_steps
from .driver import drive
from .metrics import Metrics, throughput, write_chrome_trace
from .plan import Span
from .scheduler import build_plan


def _sampled_steps(gen_len: int, windows: int, width: int) -> List[int]:
    n_dec = gen_len - 1
    if n_dec <= 0:
        return [0]
    windows = min(windows, max(2, n_dec // (2 * width)))  # sample at most about half the steps
    if windows * width >= n_dec:
        return list(range(gen_len))
    starts = np.linspace(1, max(1, n_dec - width + 1), windows).round().astype(int)
    steps = {0}
    for s0 in starts:
        steps.update(range(int(s0), min(int(s0) + width, gen_len)))
    return sorted(steps)


def _interp_total(values: Dict[int, float], steps: List[int], width: int) -> float:
    """Sum over `steps` of a per-step value known on a subset (window means,
    interpolated linearly between window centres)."""
    known = sorted(values)
    if not known:
        return 0.0
    if set(steps) <= set(known):
        return float(sum(values[s] for s in steps))
    groups: List[List[int]] = []
    for s in known:
        if groups and s - groups[-1][0] < width and s == groups[-1][-1] + 1:
            groups[-1].append(s)
        else:
            groups.append([s])
    xs = np.array([np.mean(g) for g in groups])
    ys = np.array([np.mean([values[s] for s in g]) for g in groups])
    return float(np.interp(np.array(steps, dtype=float), xs, ys).sum())


def resolve(config: Any = None, **overrides: Any) -> RunSpec:
    cfg = config if config is not None else default_config(**overrides)
    return specs_from_config(cfg)


def simulate(config: Any = None, out_dir: Optional[str] = None, progress: bool = False, **overrides: Any) -> Metrics:
    """Simulate one configuration. `config`: a composed DictConfig/dict with sections
    model, workload, hardware, policy, sim; or keyword overrides of the built-in
    defaults (`model="opt-175b"`, `**{"hardware.csd_count": 4}`)."""
    spec = resolve(config, **overrides)
    return simulate_spec(spec, out_dir=out_dir, progress=progress)


def simulate_spec(spec: RunSpec, out_dir: Optional[str] = None, progress: bool = False) -> Metrics:
    from .des.backend import DesBackend

    plan, builder = build_plan(spec.model, spec.workload, spec.hardware, spec.policy)
    wl = spec.workload
    m = Metrics(policy=spec.policy.name, alpha=builder.alpha,
                config={k: dataclasses.asdict(getattr(spec, k)) for k in ("model", "workload", "hardware", "policy", "sim")})
    oom = builder.oom()
    if oom:
        m.status, m.oom = "oom", oom
        _set_bound(m, bound(spec, builder))
        if out_dir:
            m.write(Path(out_dir) / "metrics.json")
        return m
    width = builder.layout.c if spec.sim.fidelity == "fast" else 1
    steps = list(range(plan.num_steps)) if spec.sim.fidelity == "full" else _sampled_steps(
        wl.gen_len, spec.sim.sample_steps, width)
    # Spans only for what trace.json shows; the metrics come from the backend's counters.
    trace = bool(out_dir) and spec.sim.trace
    backend = DesBackend(spec.hardware, dtype_bytes=spec.model.dtype_bytes, record=trace,
                         record_max_step=None if spec.sim.trace_steps < 0 else spec.sim.trace_steps)
    dur: Dict[int, float] = {}
    step_bytes: Dict[int, Dict[str, float]] = {}
    state = {"t": 0.0, "bytes": {}}
    bar = _progress(len(steps)) if progress else None
    # the analytic bound's sampled steps are costed as the DES meets them (no second build)
    bound_at = set(bound_steps(wl.gen_len, builder.layout.c)[0])
    coster = StepCoster(backend.topology, spec.hardware, spec.model.dtype_bytes)
    step_costs: Dict[int, tuple] = {}

    def on_step(step, _spans):
        now = backend.now_s
        dur[step.step] = now - state["t"]
        cur = dict(backend.bytes_by_link)
        step_bytes[step.step] = {k: v - state["bytes"].get(k, 0) for k, v in cur.items()}
        state["t"], state["bytes"] = now, cur
        if step.step in bound_at:
            step_costs[step.step] = coster.step_seconds(step)
        if bar is not None:
            bar.update(1)

    with _gc_paused():
        spans: List[Span] = drive(plan.steps(steps), backend, on_step)
        bnd = bound(spec, builder, step_costs=step_costs)  # builds the bound's sampled steps the DES skipped
    if bar is not None:
        bar.close()
    prefill_s = dur.get(0, 0.0)
    dec_steps = list(range(1, wl.gen_len))
    decode_s = _interp_total({s: dur[s] for s in dur if s >= 1}, dec_steps, width)
    m.time_s = {"prefill": prefill_s, "decode": decode_s, "total": prefill_s + decode_s,
                "simulated_wall": backend.now_s}
    m.throughput = throughput(wl.batch, wl.prompt_len, wl.gen_len, prefill_s, decode_s)
    links = sorted({k for b in step_bytes.values() for k in b})
    m.bytes = {l: step_bytes.get(0, {}).get(l, 0.0) + _interp_total(
        {s: b.get(l, 0.0) for s, b in step_bytes.items() if s >= 1}, dec_steps, width) for l in links}
    _fill_busy_metrics(m, backend, prefill_s)
    m.extra = {"fidelity": spec.sim.fidelity, "simulated_steps": len(steps), "ops": backend.ops_done}
    _set_bound(m, bnd)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        m.write(out / "metrics.json")
        if spec.sim.trace:
            write_chrome_trace(spans, out / "trace.json", None if spec.sim.trace_steps < 0 else spec.sim.trace_steps)
    return m


@contextmanager
def _gc_paused():
    """The cyclic garbage collector off for a run. A run makes no reference cycles
    per op (ops, flows and queue entries are freed by reference counting), so the
    collector only re-scans the run's live objects, again and again: ~40 % of the
    wall time of a 500K-op run. Restored on exit, errors included."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fill_busy_metrics(m: Metrics, backend, prefill_s: float) -> None:
    """What `inf2sim.metrics.fill_span_metrics` computes from spans, from the DES's
    counters instead (the same unions of intervals, kept as the run goes): busy_frac
    per compute device and link, and kv_io_share of the decode window."""
    end_s = backend.now_s
    busy = dict(backend.device_busy_union_s)
    busy.update({f"link:{k}": v for k, v in backend.link_busy_s.items()})
    m.busy_frac = {r: min(1.0, v / end_s) if end_s > 0 else 0.0 for r, v in sorted(busy.items())}
    m.kv_io_share = backend.kv_io_s / (end_s - prefill_s) if end_s > prefill_s else 0.0


def _set_bound(m: Metrics, b) -> None:
    """bound_tok_s, bottleneck and efficiency from a `cost.Bound` (after m.throughput)."""
    m.bound_tok_s, m.bottleneck = b.total_tok_s, b.bottleneck
    tot = m.throughput.get("total_tok_s")
    m.efficiency = (tot / b.total_tok_s) if tot and b.total_tok_s else None


def _progress(n: int):
    from tqdm import tqdm

    return tqdm(total=n, desc="simulating steps", unit="step", leave=False)
