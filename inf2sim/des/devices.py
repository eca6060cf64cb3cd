"""Compute devices of the DES: a FIFO queue in front of `slots` identical servers.

Called by `inf2sim.des.backend`, which submits every DenseCompute and Attention
op to the device the op names (`gpu`, `cpu`, `csd{i}.fpga`). `submit(op, on_done)`
calls `on_done(op, start_s)` when the op's service ends; `start_s` is the time the
service began (seconds), so the trace shows busy time, not queueing time.

Like SimPy's resources, one base (`Device`) does the queueing and subclasses fill
two hooks: `accepts(op)` (which ops this device can run) and `service_s(op)` (how
long one op holds a server, from `inf2sim.rates`, shared with the analytic bound).
No simpy process or event per op: a finishing op's callback (`call_in` of
`inf2sim.des.kernel`) starts the next one.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Optional, Tuple

import simpy

from .. import rates
from ..plan import Attention, DenseCompute, Op
from ..specs import HardwareProfile
from .kernel import call_in_for


class Device:
    """FIFO queue, `slots` servers. `busy_s` sums service time of finished ops;
    `busy_union_s` is the time at least one server was busy (the union of the ops'
    service intervals: equal to `busy_s` up to round-off when slots == 1)."""

    def __init__(self, env: simpy.Environment, name: str, slots: int = 1):
        if slots < 1:
            raise ValueError(f"device {name}: slots={slots} must be >= 1")
        self.env = env
        self.name = name
        self.slots = slots
        self.busy_s = 0.0
        self._union_s = 0.0
        self._busy_since_s = 0.0
        self.completed = 0
        self._running = 0
        self._queue: Deque[tuple] = deque()  # (op, on_done, True) waiting for a server
        self._call_in = call_in_for(env)

    # ---- the two hooks
    def accepts(self, op: Op) -> bool:
        return True

    def service_s(self, op: Op) -> float:
        raise NotImplementedError

    # ---- queueing
    def submit(self, op: Op, on_done: Callable[[Op, float], None]) -> None:
        """Queue `op`; `on_done(op, start_s)` is called at the end of its service."""
        if not self.accepts(op):
            raise ValueError(f"op {op.name} ({op.kind}) cannot run on device {self.name}")
        if self._running < self.slots:
            self._serve(op, on_done, False)
        else:
            self._queue.append((op, on_done, True))

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy_union_s(self) -> float:
        return self._union_s + (self.env.now - self._busy_since_s if self._running else 0.0)

    cores: Optional["CoreShare"] = None  # set when this device's ops share host cores (or an Interference)

    def _serve(self, op: Op, on_done, was_queued: bool) -> None:
        now = self.env.now
        if self._running == 0:
            self._busy_since_s = now
        self._running += 1
        if self.cores is not None:
            self.cores.start(self.service_s(op), self._finish, (op, on_done, was_queued, now))
        else:
            self._call_in(self.service_s(op), self._finish, (op, on_done, was_queued, now))

    def _finish(self, job: tuple) -> None:
        op, on_done, was_queued, start_s = job
        # The order of the two halves is fixed (it decides which of two ops that
        # become ready at one instant queues first): an op served at once frees its
        # server before its waiters are told, a queued one after.
        if was_queued:
            on_done(op, start_s)
            self._release(start_s)
        else:
            self._release(start_s)
            on_done(op, start_s)

    def _release(self, start_s: float) -> None:
        now = self.env.now
        self._running -= 1
        if self._running == 0:
            self._union_s += now - self._busy_since_s
        self.completed += 1
        self.busy_s += now - start_s
        if self._queue:
            self._serve(*self._queue.popleft())


class _Slowed:
    """Ops whose speed depends on what else is in service (processor sharing); subclasses
    say each op's speed now (`_speed`). `start(work_s, fn, arg)` calls `fn(arg)` when the
    op's solo service time `work_s` has been done. A change of the active set re-times
    every op in service (few at once: a handful of devices)."""

    def __init__(self, env: simpy.Environment, ratio_of=None):
        self.env = env
        self.ratio_of = ratio_of  # op -> its calibrated slowdown ratio, the tag of its job (subclasses that use one)
        self._jobs: dict = {}  # job id -> [work left (solo s), fn, arg, version, tag]
        self._mark_s = 0.0
        self._ids = 0
        self._held = 0  # work beside the ops that slows them (`hold`): what it is, the subclass says
        self._call_in = call_in_for(env)

    def hold(self, delta: int) -> None:
        """Such work starts (+1) or ends (-1): the ops in service re-time."""
        self._advance()
        self._held += delta
        if self._jobs:
            self._retime()

    def _speed(self, job: list) -> float:  # its fraction of solo speed now
        raise NotImplementedError

    def _tag(self, arg) -> object:  # what `_speed` needs to know of a job, fixed at its start
        return self.ratio_of(arg[0]) if self.ratio_of is not None else None  # arg: the device's job, op first

    def _retime(self) -> None:
        for jid, job in self._jobs.items():
            job[3] += 1
            self._call_in(job[0] / self._speed(job), self._done, (jid, job[3]))

    def _advance(self) -> None:
        now = self.env.now
        for job in self._jobs.values():
            job[0] = max(0.0, job[0] - (now - self._mark_s) * self._speed(job))
        self._mark_s = now

    def start(self, work_s: float, fn, arg) -> None:
        self._advance()
        self._ids += 1
        self._jobs[self._ids] = [work_s, fn, arg, 0, self._tag(arg)]
        self._retime()

    def _done(self, key) -> None:
        jid, version = key
        job = self._jobs.get(jid)
        if job is None or job[3] != version:
            return  # re-timed since
        self._advance()
        del self._jobs[jid]
        self._retime()
        job[1](job[2])


class CoreShare(_Slowed):
    """Host cores shared by the compute devices whose work is host CPU work (on a machine
    with no GPU: the dense device, the CPU-attention thread and the emulated CSDs'
    workers). Each op in service needs one core; while more ops than `cores` are in
    service they share the cores equally, so each progresses at cores / active of its solo
    speed. `hold(+1)` / `hold(-1)` count a copy that runs on these cores without being an op
    of theirs (a page-cache drive read or write, `host.core_moves`): it takes its share of
    the cores while it runs, its own speed is its link's."""

    def __init__(self, env: simpy.Environment, cores: int):
        if cores < 1:
            raise ValueError(f"shared host cores: {cores} must be >= 1")
        super().__init__(env)
        self.cores = cores

    def _speed(self, job: list) -> float:
        return min(1.0, self.cores / (len(self._jobs) + self._held))  # _held: copies in flight on these cores


class Interference(_Slowed):
    """Compute devices that run on one host without a shared core count (emulated CSD
    workers beside a GPU engine, `csd.attend_together`): an op runs slower while others run
    beside it. With k ops in service, an op whose calibrated ratio is r (its time with
    `count` of them at once / alone, `ratio_of(op)`) progresses at 1 / (1 + (r - 1)(k - 1) /
    (count - 1)) of its solo speed: 1 alone, 1 / r with `count` at once, in between linear in
    the number beside it."""

    def __init__(self, env: simpy.Environment, count: int, ratio_of):
        super().__init__(env, ratio_of)
        self.count = max(2, count)

    def _speed(self, job: list) -> float:
        return 1.0 / (1.0 + (job[4] - 1.0) * (len(self._jobs) - 1) / (self.count - 1))


class DmaShare(_Slowed):
    """The host CPU's ops beside host <-> GPU copies on a GPU machine (`cpu.beside_dma_kib_ratio`):
    both use host memory, so while at least one copy runs (`hold`) an op whose calibrated
    ratio is r (its time beside a pinned host -> GPU stream / alone, `ratio_of(op)`)
    progresses at 1 / r of its solo speed. Made as DmaShare(env, ratio_of)."""

    def _speed(self, job: list) -> float:
        return 1.0 / job[4] if self._held else 1.0


class ComputeDevice(Device):
    """A device timed by `inf2sim.rates.compute_seconds` from the hardware profile
    (memoised per op shape)."""

    kinds: Tuple[type, ...] = (DenseCompute, Attention)

    def __init__(self, env: simpy.Environment, name: str, hw: HardwareProfile, dtype_bytes: int = 2, slots: int = 1):
        super().__init__(env, name, slots)
        self.hw = hw
        self.dtype_bytes = dtype_bytes
        self._timer = rates.ComputeTimer(hw, dtype_bytes)

    def accepts(self, op: Op) -> bool:
        return isinstance(op, self.kinds) and op.device == self.name  # type: ignore[attr-defined]

    def service_s(self, op: Op) -> float:
        return self._timer(op)  # type: ignore[arg-type]


class GpuDevice(ComputeDevice):
    """The GPU: dense kernels and attention, one op at a time (one stream)."""


class CpuDevice(ComputeDevice):
    """The host CPU: `slots` ops in parallel (e.g. attention of several micro-batches)."""


class FpgaDevice(ComputeDevice):
    """A CSD's attention engine: attention only."""

    kinds = (Attention,)


def make_device(env: simpy.Environment, name: str, hw: HardwareProfile, dtype_bytes: int = 2, cpu_slots: int = 1) -> ComputeDevice:
    """The device called `name` in plans, checked against the profile."""
    if name == "gpu":
        if not hw.has_gpu:
            raise ValueError(f"an op runs on gpu but hardware {hw.name} has none (has_gpu: false)")
        return GpuDevice(env, name, hw, dtype_bytes)
    if name == "cpu":
        return CpuDevice(env, name, hw, dtype_bytes, slots=cpu_slots)
    if rates.is_fpga(name):
        idx = name[len("csd") : -len(".fpga")]
        if not idx.isdigit() or int(idx) >= hw.csd_count:
            raise ValueError(f"an op runs on {name} but hardware {hw.name} has csd_count={hw.csd_count}")
        return FpgaDevice(env, name, hw, dtype_bytes)
    raise ValueError(f"unknown compute device {name!r}; use gpu, cpu or csd<i>.fpga")
