"""The discrete-event backend: times plans on a modelled machine.

Called through the Backend protocol of `inf2sim.driver` (by `inf2sim.simulate`):
`execute(step)` returns the spans of the ops that finished while the step ran,
`finish()` drains what is still running. Times are seconds since the run began;
one simpy Environment persists, so time carries across steps.

How ops map onto the model
- Transfer(src, dst): a fluid flow from `endpoint_node(src)` to `endpoint_node(dst)`
  on the FlowNetwork (max-min fair sharing of every PCIe link on the path). Both
  endpoints on one node, or nbytes == 0, takes 0 s.
- Spill(src, dst): a flow from `src` (host `dram` by default) to
  `endpoint_node(dst)` at its request size. A step does not wait for its spills: they finish in the background, possibly
  during later steps (their spans are returned then), and ops that name them in
  `deps` wait for them.
- DenseCompute / Attention: the FIFO queue of the device the op names.

Deps: an op starts when every dep has completed. A dep on an op of an earlier step
that this backend never executed (fast fidelity samples steps) counts as done. If
every earlier step was executed, a dep that is neither in this step nor known is
a ValueError (a typo or an op from the future); op names must be unique per run.

Counters: `bytes_by_link` (bytes that crossed each link, both directions summed),
`bytes_by_link_dir` ((link, "up"|"down") -> bytes), `link_busy_s` (link ->
seconds carrying >= 1 flow), `busy_s` (compute devices:
summed service time, keyed by device name; links: time carrying >= 1 flow, keyed
"link:<name>" because a CSD's internal link and its FPGA share the name
`csd{i}.fpga`), `now_s`. With `record=False` no spans are built (faster), the
counters still are.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import simpy

from ..plan import DenseCompute, Op, Span, Spill, StepPlan, Transfer
from ..specs import HardwareProfile
from ..topology import Topology, build_topology, endpoint_node
from .devices import ComputeDevice, make_device
from .flows import Deferred, FlowNetwork


class DesBackend:
    """Backend protocol over simpy: one Environment, one FlowNetwork, devices made on first use."""

    def __init__(
        self,
        hw: HardwareProfile,
        dtype_bytes: int = 2,
        record: bool = True,
        *,
        topology: Optional[Topology] = None,
        cpu_slots: int = 1,
    ):
        self.hw = hw
        self.dtype_bytes = dtype_bytes
        self.record = record
        self.cpu_slots = cpu_slots
        self.env = simpy.Environment()
        self.topology = topology if topology is not None else build_topology(hw)
        self.flows = FlowNetwork(self.env, self.topology)
        self.devices: Dict[str, ComputeDevice] = {}
        self._done: Set[str] = set()  # every op completed so far
        self._pending: Dict[str, int] = {}  # op not completed -> deps still outstanding
        self._waiters: Dict[str, List[Op]] = {}  # dep name -> ops waiting on it
        self._steps_seen: Set[int] = set()
        self._first_gap = 0  # smallest step number not executed yet
        self._spans: List[Span] = []
        self._step_left = 0
        self._step_done: Optional[simpy.Event] = None
        self._routes: Dict[Tuple[str, str], Tuple[str, str, str]] = {}

    # -------------------------------------------------------------- protocol
    def execute(self, step: StepPlan) -> List[Span]:
        self._admit(step)
        self._step_left = sum(1 for op in step.ops if not isinstance(op, Spill))
        self._step_done = simpy.Event(self.env)
        if self._step_left == 0:
            self._step_done.succeed()
        for op in step.ops:
            if self._pending[op.name] == 0:
                self._launch(op)
        try:
            self.env.run(until=self._step_done)
        except RuntimeError:
            if self._step_done.triggered:
                raise
            stuck = [n for n, k in self._pending.items() if k > 0][:5]
            raise RuntimeError(f"step {step.step} cannot finish: ops wait on each other (a cycle?), e.g. {stuck}") from None
        return self._take_spans()

    def finish(self) -> List[Span]:
        self.env.run()
        if self._pending:
            raise RuntimeError(f"ops never ran (deps never completed): {list(self._pending)[:5]}")
        return self._take_spans()

    # -------------------------------------------------------------- counters
    @property
    def now_s(self) -> float:
        return float(self.env.now)

    @property
    def bytes_by_link(self) -> Dict[str, int]:
        return dict(self.flows.bytes_by_link)

    @property
    def bytes_by_link_dir(self) -> Dict[tuple, int]:
        return dict(self.flows.bytes_by_dir)

    @property
    def link_busy_s(self) -> Dict[str, float]:
        """Link name -> seconds during which it carried at least one flow."""
        return self.flows.busy_s()

    @property
    def busy_s(self) -> Dict[str, float]:
        """Compute devices (summed service time) and links (as "link:<name>")."""
        out = {name: dev.busy_s for name, dev in self.devices.items()}
        out.update({f"link:{name}": s for name, s in self.flows.busy_s().items()})
        return out

    # ------------------------------------------------------------ internals
    def _admit(self, step: StepPlan) -> None:
        """Check names and deps (raising before any state changes), then register."""
        done, pending = self._done, self._pending
        names = {op.name for op in step.ops}
        if len(names) != len(step.ops):
            raise ValueError(f"step {step.step}: duplicate op names")
        if not names.isdisjoint(done) or not names.isdisjoint(pending):
            reused = sorted(n for n in names if n in done or n in pending)[:3]
            raise ValueError(f"step {step.step}: op names {reused} were already used by an earlier step")
        # Unknown deps are fine only if some earlier step was skipped (fast fidelity).
        contiguous = step.step <= self._first_gap
        outstanding: List[List[str]] = []
        for op in step.ops:
            waits = [d for d in op.deps if d not in done]
            for d in waits:
                if d not in names and d not in pending:
                    if contiguous:
                        raise ValueError(f"step {step.step}: op {op.name} depends on unknown op {d}")
                    waits = [d for d in waits if d in names or d in pending]  # skipped step: done
                    break
            outstanding.append(waits)
        waiters = self._waiters
        for op, waits in zip(step.ops, outstanding):
            pending[op.name] = len(waits)
            for d in waits:
                waiters.setdefault(d, []).append(op)
        self._steps_seen.add(step.step)
        while self._first_gap in self._steps_seen:
            self._first_gap += 1

    def _route(self, src: str, dst: str) -> Tuple[str, str, str]:
        """(source node, destination node, span resource) for plan endpoints, cached."""
        r = self._routes.get((src, dst))
        if r is None:
            nodes = []
            for endpoint in (src, dst):
                node = endpoint_node(endpoint)
                if node not in self.topology.parent:
                    raise ValueError(f"endpoint {endpoint!r} is not in hardware {self.hw.name}")
                nodes.append(node)
            r = self._routes[(src, dst)] = (nodes[0], nodes[1], f"{src}->{dst}")
        return r

    def _launch(self, op: Op) -> None:
        """Start `op` now on its flow or device; `_completed` runs when it ends."""
        if isinstance(op, (Transfer, Spill)):
            a, b, resource = self._route(op.src, op.dst)
            if a == b or op.nbytes <= 0:
                ev = Deferred(self.env).fire_in(0.0)
            else:
                ev = self.flows.start(a, b, op.nbytes, op.req_bytes)
            ev.start_s = self.env.now
            ev.nbytes = op.nbytes
        else:
            dev = self.devices.get(op.device)  # type: ignore[attr-defined]
            if dev is None:
                dev = self.devices[op.device] = make_device(  # type: ignore[attr-defined]
                    self.env, op.device, self.hw, self.dtype_bytes, self.cpu_slots  # type: ignore[attr-defined]
                )
            ev = dev.submit(op)
            ev.start_s = None  # the device's value: when service began
            resource = dev.name
            ev.nbytes = op.nbytes if isinstance(op, DenseCompute) else op.kv_bytes  # type: ignore[attr-defined]
        ev.op = op
        ev.resource = resource
        ev.callbacks.append(self._completed)

    def _completed(self, ev: Deferred) -> None:
        op: Op = ev.op
        name = op.name
        del self._pending[name]
        self._done.add(name)
        if self.record:
            start_s = ev.start_s if ev.start_s is not None else ev.value
            self._spans.append(
                Span(name, type(op).__name__, op.what, ev.resource, op.step, op.layer, start_s, self.env.now, ev.nbytes)
            )
        waiters = self._waiters.pop(name, None)
        if waiters:
            pending = self._pending
            for w in waiters:
                left = pending[w.name] - 1
                pending[w.name] = left
                if left == 0:
                    self._launch(w)
        if not isinstance(op, Spill):
            self._step_left -= 1
            if self._step_left == 0:
                self._step_done.succeed()  # type: ignore[union-attr]

    def _take_spans(self) -> List[Span]:
        spans, self._spans = self._spans, []
        return spans
