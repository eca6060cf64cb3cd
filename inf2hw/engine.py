"""The real engine: executes the scheduler's plans with real tensors (a Backend).

Called by `inf2hw.run` through the same driver loop as the simulator
(`inf2sim.driver.drive`). For each step it starts every op whose deps are done, in
plan order — dense work inline on the compute device, disk copies and the prompt's
K,V on threads, CPU attention on a CPU thread, CSD ops on the CSD processes — and
records one Span per op, seconds since the run started. Spill ops may still be in
flight when `execute` returns; later ops that depend on them wait, and `finish`
drains them. There is no generation loop here: the plan is the loop.

Commands to one emulated CSD are executed in the order they are sent (its I/O and
compute queues are FIFO, and an attend binds to the latest load and query), so an op
on a CSD does not wait for the completion of its deps on that same CSD, only for their
submission (`OpRunner.csd_of`): the load, query, attend and fetch of a layer go out
back to back and the engine waits once, for the fetch, instead of once per command.

On CUDA an op whose work goes to a stream (`OpRunner.stream_for`: dense work and GPU
attention on the compute stream, weight loads on the copy stream, X-cache loads on
the X stream) counts as done once enqueued: the engine makes its stream wait on the
CUDA events that end its deps on other streams, so dependent GPU work is ordered
without blocking the host, and the host blocks only where it reads GPU data
(`inf2hw.ops`). Its span comes from CUDA events recorded around the op on that
stream, mapped to the run's clock when the step ends.
"""
from __future__ import annotations

import heapq
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from inf2sim.driver import RunFailure
from inf2sim.layout import Layout
from inf2sim.plan import Op, Span, Spill, StepPlan, Transfer, issue_class

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
    pin_host: bool = False  # CUDA: host KV (FlexGen DRAM placement) and X-cache stores in page-locked memory when they fit
    cpu_threads: int = 0  # torch threads of the CPU-attention thread (0: torch's default for a new thread)
    copy_threads: int = 4  # threads copying the prompt's K,V from a pinned relay into a pageable host store


def _resource(op: Op) -> str:
    if isinstance(op, (Transfer, Spill)):
        return f"{op.src}->{op.dst}"
    return op.device  # type: ignore[attr-defined]


class _CudaClock:
    """Maps CUDA events to the engine's clock: one reference event recorded when the
    run's clock starts; an event's time is the reference's plus the elapsed GPU time."""

    def __init__(self, now):
        torch.cuda.synchronize()
        self.ref = torch.cuda.Event(enable_timing=True)
        self.ref.record()
        self.ref.synchronize()
        self.ref_s = now()

    @staticmethod
    def event(stream) -> "torch.cuda.Event":
        e = torch.cuda.Event(enable_timing=True)
        e.record(stream)
        return e

    def seconds(self, ev) -> float:
        ev.synchronize()
        return self.ref_s + self.ref.elapsed_time(ev) / 1e3


class Engine:
    def __init__(self, ctx: EngineContext, on_op=None):
        self.ctx = ctx
        self.runner = OpRunner(ctx)  # allocates pinned buffers before the clock starts
        self.t0 = time.perf_counter()
        self.clock = None
        self.started = False
        self.done: set = set()
        self.inflight: Dict[str, tuple] = {}  # name -> (op, handle, start_s)
        self.on_op = on_op
        self.waiters: Dict[str, List[str]] = defaultdict(list)  # dep -> ops of this step waiting for it
        self.missing: Dict[str, set] = {}  # op -> deps not done yet
        self.submitted: Dict[str, int] = {}  # in-flight commands to in-order CSDs -> the CSD
        self.futs: Dict[Future, str] = {}  # in-flight thread work -> op
        self.tickets: List[tuple] = []  # heap of (urgency, order, op) for in-flight CSD commands
        self._ticket_no = 0
        self.gpu_end: Dict[str, tuple] = {}  # op -> (stream, end event) of GPU ops of this and the last step
        self.gpu_spans: List[tuple] = []  # (op, start event, end event) to resolve at the step's end
        self._heap: List[tuple] = []
        self._order: Dict[str, tuple] = {}  # op -> heap key (prefetch first, then plan order)
        self._ops: Dict[str, Op] = {}
        self._spans: List[Span] = []
        self._unfinished: set = set()

    # ------------------------------------------------------------ protocol
    def execute(self, step: StepPlan) -> List[Span]:
        """Run one step; returns when every op is started and every non-spill op is done."""
        if not self.started:  # the run's clock starts with its first step (setup, e.g. CSD processes, excluded)
            self.started = True
            if self.runner.cuda:  # setup's GPU work ends before the clock (it waited 0.1 ms on the H100, first_op.py)
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()
            self.clock = _CudaClock(self.now) if self.runner.cuda else None
        self.runner.step = step.step
        self._ops = {op.name: op for op in step.ops}
        self._order = {op.name: (0 if _prefetch(op) else 1, i) for i, op in enumerate(step.ops)}
        self._heap, self._spans = [], []
        self.missing.clear()
        self.waiters.clear()
        for k in [k for k, (_, _, s) in self.gpu_end.items() if s < step.step - 1]:
            del self.gpu_end[k]
        unfinished = {op.name for op in step.ops if not isinstance(op, Spill)}
        self._unfinished = unfinished
        for op in step.ops:
            csd = self.runner.csd_of(op)
            miss = {d for d in op.deps if self._pending(d, csd)}
            if miss:
                self.missing[op.name] = miss
                for d in miss:
                    self.waiters[d].append(op.name)
            else:
                heapq.heappush(self._heap, (self._order[op.name], op.name))
        while self._heap or unfinished or self.missing:
            while self._heap:
                _, name = heapq.heappop(self._heap)
                self._start(self._ops[name])
                if self.futs:  # GPU ops never block this loop: let finished host work release its consumers
                    self._poll_futures()
            if not unfinished and not self.missing:
                break
            if not self.inflight:
                raise EngineError(f"step {step.step}: ops {sorted(self.missing)[:3]} wait on deps that never finish")
            self._wait_any()
        self._resolve_gpu_spans()
        spans, self._spans = self._spans, []
        return spans

    def finish(self) -> List[Span]:
        self._unfinished = set()
        while self.inflight:
            self._wait_any()
        self._resolve_gpu_spans()
        spans, self._spans = self._spans, []
        return spans

    def close(self) -> None:
        self.runner.close()

    # ------------------------------------------------------------- internals
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _pending(self, dep: str, csd: Optional[int] = None) -> bool:
        """Not done yet: an op of this step not finished, or one of an earlier step in flight
        (an op of an earlier step this backend never ran counts as done: sampled steps).
        A command already sent to the same in-order CSD as the waiting op does not count."""
        if dep in self.done:
            return False
        if dep in self.inflight:
            return csd is None or self.submitted.get(dep) != csd
        return dep in self._ops

    def _submitted(self, name: str, csd: int) -> None:
        """A command went to in-order CSD `csd`: release the waiters that are commands to it too."""
        self.submitted[name] = csd
        ws = self.waiters.get(name)
        if not ws:
            return
        keep = []
        for w in ws:
            if self.runner.csd_of(self._ops[w]) == csd:
                miss = self.missing[w]
                miss.discard(name)
                if not miss:
                    del self.missing[w]
                    heapq.heappush(self._heap, (self._order[w], w))
            else:
                keep.append(w)
        self.waiters[name] = keep

    def _mark_done(self, name: str) -> None:
        self.done.add(name)
        self.submitted.pop(name, None)
        self._unfinished.discard(name)
        for w in self.waiters.pop(name, ()):
            miss = self.missing.get(w)
            if miss is None:
                continue
            miss.discard(name)
            if not miss:
                del self.missing[w]
                heapq.heappush(self._heap, (self._order[w], w))

    def _start(self, op: Op) -> None:
        stream = self.runner.stream_for(op)
        if stream is not None:
            return self._start_gpu(op, stream)
        start = self.now()
        try:
            handle = self.runner.start(op)
        except (CsdError, OSError) as e:
            raise EngineError(f"{op.name}: {e}") from None
        if handle is None:
            self._finish(op, None, start, self.now())
            return
        self.inflight[op.name] = (op, handle, start)
        if isinstance(handle, Future):
            self.futs[handle] = op.name
            return
        urgency = 2 if isinstance(op, Spill) else (0 if handle.kind == "fetch" else 1)
        self._ticket_no += 1
        heapq.heappush(self.tickets, (urgency, self._ticket_no, op.name))
        if self.runner.csd_of(op) is not None:
            self._submitted(op.name, handle.csd)

    def _start_gpu(self, op: Op, stream) -> None:
        """Enqueue op's GPU work on `stream` after the events that end its deps on other streams."""
        for d in op.deps:
            got = self.gpu_end.get(d)
            if got is not None and got[0] != stream:
                stream.wait_event(got[1])
        with torch.cuda.stream(stream):
            ev0 = self.clock.event(stream)
            try:
                handle = self.runner.start(op)
            except (CsdError, OSError) as e:
                raise EngineError(f"{op.name}: {e}") from None
            ev1 = self.clock.event(stream)
        if handle is not None:
            raise EngineError(f"{op.name}: GPU ops run inline")
        self.gpu_end[op.name] = (stream, ev1, op.step)
        self.gpu_spans.append((op, ev0, ev1))
        self._mark_done(op.name)

    def _resolve_gpu_spans(self) -> None:
        for op, ev0, ev1 in self.gpu_spans:
            self._span(op, self.clock.seconds(ev0), self.clock.seconds(ev1))
        self.gpu_spans = []

    def _span(self, op: Op, start: float, end: float) -> None:
        nbytes = getattr(op, "nbytes", 0) or getattr(op, "kv_bytes", 0)
        span = Span(op.name, op.kind, op.what, _resource(op), op.step, op.layer, start, end, nbytes)
        self._spans.append(span)
        if self.on_op is not None:
            self.on_op(span)

    def _finish(self, op: Op, result, start: float, end: float) -> None:
        if result is not None:
            self.runner.complete(op, result)
        self._mark_done(op.name)
        self._span(op, start, end)

    def _poll_futures(self) -> None:
        for f in [f for f in self.futs if f.done()]:
            self._finish_future(f)

    def _finish_future(self, f: Future) -> None:
        op, _, start = self.inflight.pop(self.futs.pop(f))
        try:
            res = f.result()
        except (CsdError, OSError) as e:
            raise EngineError(f"{op.name}: {e}") from None
        stamps = getattr(f, "stamps_s", None)  # worker-side (began, ended): inf2hw.ops.StampedPool
        if stamps is not None and len(stamps) == 2:
            self._finish(op, res, max(start, stamps[0] - self.t0), stamps[1] - self.t0)
        else:
            self._finish(op, res, start, self.now())

    def _wait_any(self) -> None:
        """Finish at least one in-flight op: a finished future if any, else the most urgent
        ticket (fetches first: the host waits for their results; spills last)."""
        if self.futs:
            done, _ = wait(list(self.futs), timeout=0.0 if self.tickets else None, return_when=FIRST_COMPLETED)
            for f in done:
                self._finish_future(f)
            if done:
                return
        while self.tickets:
            _, _, name = heapq.heappop(self.tickets)
            if name in self.inflight:
                self._resolve_ticket(name, self.inflight[name][1])
                return

    def _resolve_ticket(self, name: str, ticket: Ticket) -> None:
        op, _, start = self.inflight.pop(name)
        try:
            res, s, e = self.ctx.csds[ticket.csd].wait(ticket)
        except CsdError as err:
            raise EngineError(f"{op.name}: {err}") from None
        self._finish(op, res, max(start, s - self.t0), e - self.t0)


def _prefetch(op: Op) -> bool:
    """Prefetches (`inf2sim.plan.issue_class`: weights and X-cache loads into the GPU, KV
    history loads from drives and CSD flash) leave the ready heap ahead of plan order, so a
    host-side wait earlier in a layer (a query or an attention result crossing to the
    host) never holds back the loads that later compute needs (the copy streams and I/O
    threads then run beside the compute, as the plan's deps allow)."""
    return issue_class(op) == 0
