"""Compute devices of the DES: a FIFO queue in front of `slots` identical servers.

Called by `inf2sim.des.backend`, which submits every DenseCompute and Attention
op to the device the op names (`gpu`, `cpu`, `csd{i}.fpga`). `submit(op)` returns
a simpy event that fires when the op's service ends; its value is the time the
service began (seconds), so the trace shows busy time, not queueing time.

Like SimPy's resources, one base (`Device`) does the queueing and subclasses fill
two hooks: `accepts(op)` (which ops this device can run) and `service_s(op)` (how
long one op holds a server, from `inf2sim.rates`, shared with the analytic bound).
No simpy process per op: a finishing op's callback starts the next one.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, Tuple

import simpy

from .. import rates
from ..plan import Attention, DenseCompute, Op
from ..specs import HardwareProfile
from .flows import Deferred


class Device:
    """FIFO queue, `slots` servers. `busy_s` sums service time of finished ops."""

    def __init__(self, env: simpy.Environment, name: str, slots: int = 1):
        if slots < 1:
            raise ValueError(f"device {name}: slots={slots} must be >= 1")
        self.env = env
        self.name = name
        self.slots = slots
        self.busy_s = 0.0
        self.completed = 0
        self._running = 0
        self._queue: Deque[Tuple[Op, Deferred]] = deque()

    # ---- the two hooks
    def accepts(self, op: Op) -> bool:
        return True

    def service_s(self, op: Op) -> float:
        raise NotImplementedError

    # ---- queueing
    def submit(self, op: Op) -> Deferred:
        """Queue `op`; the event fires at the end of its service, value = start (s)."""
        if not self.accepts(op):
            raise ValueError(f"op {op.name} ({op.kind}) cannot run on device {self.name}")
        job = Deferred(self.env)
        if self._running < self.slots:
            self._serve(op, job)
        else:
            self._queue.append((op, job))
        return job

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _serve(self, op: Op, job: Deferred) -> None:
        self._running += 1
        job.callbacks.append(self._release)
        job.fire_in(self.service_s(op), value=self.env.now)

    def _release(self, job: Deferred) -> None:
        self._running -= 1
        self.completed += 1
        self.busy_s += self.env.now - job.value
        if self._queue:
            self._serve(*self._queue.popleft())


class ComputeDevice(Device):
    """A device timed by `inf2sim.rates.compute_seconds` from the hardware profile."""

    kinds: Tuple[type, ...] = (DenseCompute, Attention)

    def __init__(self, env: simpy.Environment, name: str, hw: HardwareProfile, dtype_bytes: int = 2, slots: int = 1):
        super().__init__(env, name, slots)
        self.hw = hw
        self.dtype_bytes = dtype_bytes

    def accepts(self, op: Op) -> bool:
        return isinstance(op, self.kinds) and op.device == self.name  # type: ignore[attr-defined]

    def service_s(self, op: Op) -> float:
        return rates.compute_seconds(op, self.hw, self.dtype_bytes)  # type: ignore[arg-type]


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
