"""The real engine: executes the scheduler's plans with real tensors (a Backend).

Called by `inf2hw.run` through the same driver loop as the simulator
(`inf2sim.driver.drive`). For each step it starts every op whose deps are done —
dense work inline on the compute device, disk and weight copies on an I/O thread,
CPU attention on a CPU thread, CSD ops on the CSD processes — and records one Span
per op on the real clock (`time.perf_counter`, seconds since the run started;
CUDA work is synchronised before an op's end is taken). Spill ops may still be in
flight when `execute` returns; later ops that depend on them wait, and `finish`
drains them. There is no generation loop here: the plan is the loop.
"""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from inf2sim.driver import RunFailure
from inf2sim.layout import Layout
from inf2sim.plan import Op, Span, Spill, StepPlan, Transfer

from .csd.base import CsdError, Ticket
from .ops import OpRunner
from .stores import DiskStore, MemStore


class EngineError(RunFailure):
    """The run failed; one line naming the op and the cause."""


@dataclass
class EngineContext:
    spec: Any  # inf2sim.config.RunSpec
    weights: Any  # inf2hw.model.Weights (host copy; pinned on cuda)
    device: str
    compute_dtype: torch.dtype
    store_dtype: torch.dtype
    prompts: torch.Tensor  # [batch, prompt_len] int64
    layout: Layout
    csds: List[Any] = field(default_factory=list)
    host_kv: Optional[MemStore] = None
    gpu_kv: Optional[MemStore] = None
    disk_kv: Optional[DiskStore] = None
    recent: Optional[MemStore] = None  # host write-back buffer of decode-token K,V (all rows)
    coop_store: Optional[MemStore] = None  # cooperative rows: X (or K,V) in host memory
    coop_disk: Optional[DiskStore] = None  # ... on the CSDs' flash (X-cache v2)
    copy_stream: Any = None


def _resource(op: Op) -> str:
    if isinstance(op, (Transfer, Spill)):
        return f"{op.src}->{op.dst}"
    return op.device  # type: ignore[attr-defined]


class Engine:
    def __init__(self, ctx: EngineContext, on_op=None):
        self.ctx = ctx
        self.runner = OpRunner(ctx)
        self.t0 = time.perf_counter()
        self.done: set = set()
        self.inflight: Dict[str, tuple] = {}  # name -> (op, handle, start_s)
        self.on_op = on_op

    # ------------------------------------------------------------ protocol
    def execute(self, step: StepPlan) -> List[Span]:
        """Run one step; returns when every op is started and every non-spill op is done."""
        self.runner.step = step.step
        names = {op.name for op in step.ops}
        waiting = {op.name: op for op in step.ops}
        spans: List[Span] = []
        while waiting or self._step_inflight(names):
            ready = [op for op in waiting.values() if all(self._dep_done(d, names) for d in op.deps)]
            for op in ready:
                del waiting[op.name]
                spans.extend(self._start(op))
            if ready:
                continue
            if not self.inflight:
                raise EngineError(f"step {step.step}: ops {sorted(waiting)[:3]} wait on deps that never finish")
            spans.extend(self._wait_any())
        return spans

    def finish(self) -> List[Span]:
        spans: List[Span] = []
        while self.inflight:
            spans.extend(self._wait_any())
        return spans

    def close(self) -> None:
        self.runner.close()

    # ------------------------------------------------------------- internals
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _dep_done(self, dep: str, names: set) -> bool:
        if dep in self.done:
            return True
        if dep in self.inflight or dep in names:
            return False
        return True  # an op of an earlier step this backend never ran (sampled steps)

    def _step_inflight(self, names: set) -> bool:
        return any(n in names and not isinstance(v[0], Spill) for n, v in self.inflight.items())

    def _sync(self) -> None:
        if self.ctx.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _start(self, op: Op) -> List[Span]:
        start = self.now()
        try:
            handle = self.runner.start(op)
        except (CsdError, OSError) as e:
            raise EngineError(f"{op.name}: {e}") from None
        if handle is None:
            self._sync()
            return [self._finish(op, None, start, self.now())]
        self.inflight[op.name] = (op, handle, start)
        return []

    def _finish(self, op: Op, result, start: float, end: float) -> Span:
        if result is not None:
            self.runner.complete(op, result)
        self.done.add(op.name)
        nbytes = getattr(op, "nbytes", 0) or getattr(op, "kv_bytes", 0)
        span = Span(op.name, op.kind, op.what, _resource(op), op.step, op.layer, start, end, nbytes)
        if self.on_op is not None:
            self.on_op(span)
        return span

    def _wait_any(self) -> List[Span]:
        futs = {h: n for n, (_, h, _) in self.inflight.items() if isinstance(h, Future)}
        tickets = [(n, h) for n, (_, h, _) in self.inflight.items() if isinstance(h, Ticket)]
        out: List[Span] = []
        if tickets and not futs:
            n, t = tickets[0]
            out.append(self._resolve_ticket(n, t))
            return out
        if futs:
            done, _ = wait(list(futs), timeout=0.0 if tickets else None, return_when=FIRST_COMPLETED)
            for f in done:
                n = futs[f]
                op, _, start = self.inflight.pop(n)
                try:
                    res = f.result()
                except (CsdError, OSError) as e:
                    raise EngineError(f"{op.name}: {e}") from None
                self._sync()
                out.append(self._finish(op, res, start, self.now()))
            if not done and tickets:
                n, t = tickets[0]
                out.append(self._resolve_ticket(n, t))
        return out

    def _resolve_ticket(self, name: str, ticket: Ticket) -> Span:
        op, _, start = self.inflight.pop(name)
        try:
            res, s, e = self.ctx.csds[ticket.csd].wait(ticket)
        except CsdError as err:
            raise EngineError(f"{op.name}: {err}") from None
        return self._finish(op, res, max(start, s - self.t0), e - self.t0)
