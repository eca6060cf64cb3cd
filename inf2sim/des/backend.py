"""The discrete-event backend: times plans on a modelled machine.

Called through the Backend protocol of `inf2sim.driver` (by `inf2sim.simulate`):
`execute(step)` returns the spans of the ops that finished while the step ran,
`finish()` drains what is still running. Times are seconds since the run began;
one simpy Environment (a `Kernel`, see inf2sim/des/kernel.py) persists, so time
carries across steps. Ops are callbacks, not processes or events: an op's end
is one `call_in` entry that marks it done and launches the ops waiting only on it.

How ops map onto the model
- Transfer(src, dst): a fluid flow from `endpoint_node(src)` to `endpoint_node(dst)`
  on the FlowNetwork (max-min fair sharing of every PCIe link on the path). Both
  endpoints on one node, or nbytes == 0, takes 0 s.
- Spill(src, dst): a flow from `src` (host `dram` by default) to
  `endpoint_node(dst)` at its request size. A step does not wait for its spills: they finish in the background, possibly
  during later steps (their spans are returned then), and ops that name them in
  `deps` wait for them.
- DenseCompute / Attention: the FIFO queue of the device the op names.
- With `hw.host.shared_cores` > 0, the devices of `hw.host.core_devices` share that many
  host cores (processor sharing: `inf2sim.des.devices.CoreShare`); a span is then the op's
  stretched service time. Else, with `hw.csd.attend_together`, the emulated CSDs' attention
  ops slow each other down by the calibrated ratio (`inf2sim.des.devices.Interference`).
  A move to or from storage named in `hw.host.core_moves` (`ssd`:
  the drives, `csd`: the CSDs' flash) is a copy on those cores (page-cache I/O): while it
  runs it takes a share of them (`CoreShare.hold`), at its own link speed.
- A move to or from a CSD's flash (`csd{i}.ssd`) waits while that CSD already serves
  `hw.csd.io_threads` of them (0: no limit); its span starts when it starts.
- A move to or from a conventional drive (`ssd{i}`) waits while `hw.ssd.io_threads`
  such moves over all drives are in service (0: no limit): the engine's drive I/O pool.
- Likewise a copy into (out of) the GPU waits while `hw.gpu.copy_engines` copies in that
  direction are in service (0: no limit, concurrent copies share the link's bandwidth).
  A copy of no bytes (o_h2d when every row attended on the GPU) issues no DMA and waits for
  no copy engine; one into the GPU still ends after the weight copies sent before it (the
  engine records it on the weights' copy stream).
- Moves waiting at one of these gates start in the engine's issue order, not in the order
  they became ready here: earlier steps first (the engine issues a step's ops before the
  next step begins, spills included), then by the time the engine sends them, then
  prefetches (`inf2sim.plan.issue_class`: KV history loads), then plan order. The engine
  counts a dep on a command to the same in-order queue as met once that command is sent:
  an emulated CSD (the gates of `hw.csd.io_threads`) runs its commands in the order they
  arrive, and the GPU's ops go onto streams at once (with `hw.gpu.copy_engines`). So an
  op's send time (`_send_s`) is the latest of its step's start, its deps on the same queue
  sent, and its other deps done: a CSD's spill of layer l (sent with layer l's query) goes
  out ahead of the load of layer l+3 (sent with layer l+1's attend), as in the engine, although
  here both wait for their deps to complete before they reach the gate.

Deps: an op starts when every dep has completed. A dep on an op of an earlier step
that this backend never executed (fast fidelity samples steps) counts as done. If
every earlier step was executed, a dep that is neither in this step nor known is
a ValueError (a typo or an op from the future); op names must be unique per run.

Counters: `bytes_by_link` (bytes that crossed each link, both directions summed),
`bytes_by_link_dir` ((link, "up"|"down") -> bytes), `link_busy_s` (link ->
seconds carrying >= 1 flow), `busy_s` (compute devices:
summed service time, keyed by device name; links: time carrying >= 1 flow, keyed
"link:<name>" because a CSD's internal link and its FPGA share the name
`csd{i}.fpga`), `now_s`, `ops_done`, and what the span metrics need without
spans: `device_busy_union_s` (device -> time serving >= 1 op) and `kv_io_s` (time
with >= 1 decode KV transfer in flight). With `record=False` no spans are built
(faster), the counters still are; `record_max_step=k` records only steps <= k
(what trace.json shows).
"""
from __future__ import annotations

import math
import heapq
from typing import Dict, List, Optional, Set, Tuple

from ..plan import DenseCompute, Op, Span, Spill, StepPlan, Transfer, issue_class, storage_of
from ..rates import beside_dma_ratio, core_kind, together_ratio
from ..specs import HardwareProfile
from ..topology import Topology, build_topology, endpoint_node
from .devices import ComputeDevice, CoreShare, DmaShare, Interference, make_device
from .flows import FlowNetwork
from .kernel import Kernel


_MOVES = (Transfer, Spill)
KV_WHATS = frozenset(("kv", "kv_new"))  # as `inf2sim.metrics.KV_WHATS`: transfers that count as KV I/O


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
        record_max_step: Optional[int] = None,
    ):
        self.hw = hw
        self.dtype_bytes = dtype_bytes
        self.record = record
        self.record_max_step = math.inf if record_max_step is None else record_max_step
        self.cpu_slots = cpu_slots
        self.env = Kernel()
        self.topology = topology if topology is not None else build_topology(hw)
        self.flows = FlowNetwork(self.env, self.topology)
        self._call_in, self._start_flow = self.env.call_in, self.flows.start_on
        self._moved_cb = self._moved  # one bound method for every flow (FlowNetwork batches by identity)
        self.devices: Dict[str, ComputeDevice] = {}
        self._cores = CoreShare(self.env, hw.host.shared_cores) if hw.host.shared_cores > 0 else None
        self._core_moves = set(hw.host.core_moves) if self._cores is not None else set()
        on_cores = self._cores is not None and "fpga" in hw.host.core_devices  # then the core share covers them
        self._dma_share = (DmaShare(self.env, lambda op: beside_dma_ratio(op, hw, dtype_bytes))
                           if hw.cpu.beside_dma_kib and self._cores is None else None)
        self._csd_share = (Interference(self.env, hw.csd.together_count, lambda op: together_ratio(op, hw))
                           if hw.csd.attend_together and not on_cores else None)
        self._done: Set[str] = set()  # every op completed before the current step began
        self._finished: List[str] = []  # ops completed since (moved into _done by _admit)
        # op admitted, not completed -> its cell [deps still outstanding, op, position in its step]; the ops
        # waiting on a dep hold their cells, so a completion counts down without lookups
        self._pending: Dict[str, list] = {}
        self._waiters: Dict[str, List[list]] = {}  # dep name -> cells of the ops waiting on it
        self._steps_seen: Set[int] = set()
        self._first_gap = 0  # smallest step number not executed yet
        self._spans: List[Span] = []
        self._step_left = 0
        # (src, dst, req_bytes) -> (flow route or None when it takes no time, span resource, holds a core)
        self._routes: Dict[Tuple[str, str, int], tuple] = {}
        self._t0: Dict[str, float] = {}  # transfer -> start time, kept only for recorded spans
        # CSD flash endpoint or GPU copy direction -> [moves in service, limit, heap of moves waiting by issue order]
        self._csd_io: Dict[str, list] = {}
        self._io_threads = hw.csd.io_threads
        # send times (`_send_s`), kept when some gate orders by them: op name -> (sent, done or None, queue)
        self._ordered = hw.csd.io_threads > 0 or hw.ssd.io_threads > 0 or hw.gpu.copy_engines > 0
        self._times: Dict[str, list] = {}
        self._times_prev: Dict[str, list] = {}  # the previous step's (its spills may still run)
        self._step_start_s = 0.0
        self._queues: Dict[tuple, str] = {}
        self._drive_io_threads = hw.ssd.io_threads
        self._copy_engines = hw.gpu.copy_engines
        # with copy engines: weight copies into the GPU sent and not done (name -> issue key), and
        # copies of no bytes into the GPU waiting for the ones sent before them (name -> [op, names])
        self._weights_h2d: Dict[str, tuple] = {}
        self._behind_weights: Dict[str, list] = {}
        self._kv_active = 0  # decode KV transfers in flight; their union in time is kv_io_s
        self._kv_since_s = 0.0
        self._kv_io_s = 0.0

    # -------------------------------------------------------------- protocol
    def execute(self, step: StepPlan) -> List[Span]:
        ready = self._admit(step)
        if self._step_left == 0:
            self._call_in(0.0, self.env.stop)
        launch = self._launch
        for op in ready:
            launch(op)
        if not self.env.run_until_stopped():
            stuck = [n for n, cell in self._pending.items() if cell[0] > 0][:5]
            raise RuntimeError(f"step {step.step} cannot finish: ops wait on each other (a cycle?), e.g. {stuck}")
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
    def ops_done(self) -> int:
        """Ops completed so far (spans recorded or not)."""
        return len(self._done) + len(self._finished)

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

    @property
    def device_busy_union_s(self) -> Dict[str, float]:
        """Compute device -> seconds during which it served at least one op (the union
        of its spans' intervals, kept without spans)."""
        return {name: dev.busy_union_s for name, dev in self.devices.items()}

    @property
    def kv_io_s(self) -> float:
        """Seconds during which at least one KV transfer (`what` kv or kv_new, spills
        included) of a decode step (step >= 1) was in flight: the union of their spans."""
        return self._kv_io_s + (self.env.now - self._kv_since_s if self._kv_active else 0.0)

    # ------------------------------------------------------------ internals
    def _admit(self, step: StepPlan) -> List[Op]:
        """Check names and deps, register the step's ops and return those with
        nothing to wait for, in plan order. On a bad plan nothing stays registered."""
        done, pending, waiters = self._done, self._pending, self._waiters
        done.update(self._finished)  # one C loop instead of a set.add per completion
        self._finished.clear()
        ops = step.ops
        names = {op.name for op in ops}
        if len(names) != len(ops):
            raise ValueError(f"step {step.step}: duplicate op names")
        if not names.isdisjoint(done) or not names.isdisjoint(pending):
            reused = sorted(n for n in names if n in done or n in pending)[:3]
            raise ValueError(f"step {step.step}: op names {reused} were already used by an earlier step")
        # Unknown deps are fine only if some earlier step was skipped (fast fidelity).
        contiguous = step.step <= self._first_gap
        ready: List[Op] = []
        left = 0
        try:
            for i, op in enumerate(ops):
                cell = [0, op, i]
                n = 0
                for d in op.deps:
                    if d not in pending:  # (most deps are earlier ops of this step: pending)
                        if d in done:
                            continue
                        if d not in names:  # neither done, running nor later in this step
                            if contiguous:
                                raise ValueError(f"step {step.step}: op {op.name} depends on unknown op {d}")
                            continue  # an op of a skipped step: done
                    w = waiters.get(d)
                    if w is None:
                        waiters[d] = [cell]
                    else:
                        w.append(cell)
                    n += 1
                cell[0] = n
                pending[op.name] = cell
                if n == 0:
                    ready.append(op)
                if not isinstance(op, Spill):
                    left += 1
        except ValueError:
            for n in names:
                pending.pop(n, None)
            for d in list(waiters):
                kept = [cell for cell in waiters[d] if cell[1].name not in names]
                if kept:
                    waiters[d] = kept
                else:
                    del waiters[d]
            raise
        self._step_left = left
        if self._ordered:
            self._times_prev, self._times = self._times, {}
            self._step_start_s = self.env.now
        self._steps_seen.add(step.step)
        while self._first_gap in self._steps_seen:
            self._first_gap += 1
        return ready

    def _route(self, src: str, dst: str, req_bytes: int) -> tuple:
        """(flow route or None when the move takes no time, span resource, whether it holds a
        host core while it runs, whether it slows the CPU's attention: a host <-> GPU copy with
        `cpu.beside_dma_kib_ratio`) for plan endpoints, cached."""
        key = (src, dst, req_bytes)
        r = self._routes.get(key)
        if r is None:
            nodes = []
            for endpoint in (src, dst):
                node = endpoint_node(endpoint)
                if node not in self.topology.parent:
                    raise ValueError(f"endpoint {endpoint!r} is not in hardware {self.hw.name}")
                nodes.append(node)
            flow = None if nodes[0] == nodes[1] else self.flows.route(nodes[0], nodes[1], req_bytes)
            store = {storage_of(e) for e in (src, dst)}
            dma = flow is not None and self._dma_share is not None and {src, dst} == {"dram", "gpu"}
            r = self._routes[key] = (flow, f"{src}->{dst}", flow is not None and bool(store & self._core_moves), dma)
        return r

    def _flash_gate(self, op: Op) -> Optional[list]:
        """The gate `op` passes, if any: [moves in service, their limit, moves waiting].
        The CSD whose flash it reads or writes, when that CSD serves a limited number of
        flash commands at once; the host's drive I/O pool, for a move to or from a
        conventional drive when the profile limits it; else the GPU's copy engine of its
        direction, when the profile names how many copies one direction serves at once."""
        src, dst = op.src, op.dst  # type: ignore[attr-defined]
        if self._io_threads > 0:
            for end in (src, dst):
                if storage_of(end) == "csd":
                    return self._gate_of(end, self._io_threads)
        if self._drive_io_threads > 0 and "ssd" in (storage_of(src), storage_of(dst)):
            return self._gate_of("ssd.io", self._drive_io_threads)
        if self._copy_engines > 0 and (src == "gpu") != (dst == "gpu") and op.nbytes > 0:  # type: ignore[attr-defined]
            # (a copy of no bytes, e.g. o_h2d when every row attended on the GPU, issues no
            # DMA: the engine's stream records its events without waiting for a copy engine)
            return self._gate_of("gpu.h2d" if dst == "gpu" else "gpu.d2h", self._copy_engines)
        return None

    def _gate_of(self, key: str, limit: int) -> list:
        gate = self._csd_io.get(key)
        if gate is None:
            gate = self._csd_io[key] = [0, limit, []]
        return gate

    def _queue_of(self, op: Op) -> str:
        """The in-order queue `op` is a command to ('' for none): `csd{i}` for an op on an
        emulated CSD (its attend, or a move to or from it) when `hw.csd.io_threads` > 0; `gpu`
        for an op on the GPU or a copy into or out of it when `hw.gpu.copy_engines` > 0."""
        ends = (op.src, op.dst) if isinstance(op, _MOVES) else (op.device,)  # type: ignore[attr-defined]
        q = self._queues.get(ends)
        if q is None:
            q = ""
            for e in ends:
                if self._io_threads > 0 and e.startswith("csd"):
                    q = e.split(".")[0]
                elif self._copy_engines > 0 and e == "gpu" and not q:
                    q = "gpu"
            self._queues[ends] = q
        return q

    def _send_s(self, op: Op) -> float:
        """When the engine would send `op` (see the module docstring); every dep is done."""
        q = self._queue_of(op)
        t = self._step_start_s
        cur, prev = self._times, self._times_prev
        for d in op.deps:
            rec = cur.get(d) or prev.get(d)
            if rec is not None:  # else a dep of an older step: done before this step began
                x = rec[0] if q and rec[2] == q else rec[1]
                if x is not None and x > t:
                    t = x
        return t

    def _launch(self, op: Op) -> None:
        """Start `op` now on its flow or device (a CSD flash move may queue first);
        `_moved` / `_computed` run when it ends."""
        sent = 0.0  # gates exist only where `_ordered`
        if self._ordered:
            sent = self._send_s(op)
            self._times[op.name] = [sent, None, self._queue_of(op)]
        if isinstance(op, _MOVES):
            key = (op.step, sent, issue_class(op), self._pending[op.name][2])  # the engine's issue order
            if self._copy_engines > 0 and op.dst == "gpu" and op.src != "gpu":  # type: ignore[attr-defined]
                if op.what == "weights":
                    self._weights_h2d[op.name] = key
                elif op.nbytes <= 0 and self._behind(op, key):  # type: ignore[attr-defined]
                    return
            gate = self._flash_gate(op)
            if gate is not None:
                if gate[0] >= gate[1]:
                    heapq.heappush(gate[2], (key, op))
                    return
                gate[0] += 1
            self._start_move(op)
        else:
            dev = self.devices.get(op.device)  # type: ignore[attr-defined]
            if dev is None:
                dev = self.devices[op.device] = make_device(  # type: ignore[attr-defined]
                    self.env, op.device, self.hw, self.dtype_bytes, self.cpu_slots  # type: ignore[attr-defined]
                )
                if self._cores is not None and core_kind(op.device) in self.hw.host.core_devices:
                    dev.cores = self._cores
                elif self._csd_share is not None and core_kind(op.device) == "fpga":
                    dev.cores = self._csd_share
                elif self._dma_share is not None and op.device == "cpu":  # type: ignore[attr-defined]
                    dev.cores = self._dma_share
            dev.submit(op, self._computed)

    def _behind(self, op: Op, key: tuple) -> bool:
        """A copy of no bytes into the GPU (o_h2d when every row attended there) issues no DMA,
        so it takes no place at a copy engine; but the engine records it on the weights' copy
        stream, so it ends after the weight copies sent before it. True if it waits for some."""
        wait = {n for n, k in self._weights_h2d.items() if k < key}
        if wait:
            self._behind_weights[op.name] = [op, wait]
        return bool(wait)

    def _start_move(self, op: Op) -> None:
        """Start a Transfer or Spill on its flow now (0 s if both ends are one node)."""
        r = self._routes.get((op.src, op.dst, op.req_bytes))  # type: ignore[attr-defined]
        if r is None:
            r = self._route(op.src, op.dst, op.req_bytes)  # type: ignore[attr-defined]
        if r[0] is None or op.nbytes <= 0:  # type: ignore[attr-defined]
            self._call_in(0.0, self._moved, op)
        else:
            self._start_flow(r[0], op.nbytes, op.req_bytes, self._moved_cb, op)  # type: ignore[attr-defined]
            if r[2]:
                self._cores.hold(1)
            if r[3]:
                self._dma_share.hold(1)
        if op.what in KV_WHATS and op.step >= 1:
            if self._kv_active == 0:
                self._kv_since_s = self.env.now
            self._kv_active += 1
        if self.record:
            self._t0[op.name] = self.env.now

    def _moved(self, op: Op) -> None:
        """A Transfer or Spill has ended."""
        r = self._routes[(op.src, op.dst, op.req_bytes)]  # type: ignore[attr-defined]
        if op.nbytes > 0:  # type: ignore[attr-defined]
            if r[2]:
                self._cores.hold(-1)
            if r[3]:
                self._dma_share.hold(-1)
        if op.what in KV_WHATS and op.step >= 1:
            self._kv_active -= 1
            if self._kv_active == 0:
                self._kv_io_s += self.env.now - self._kv_since_s
        if self.record:
            start_s = self._t0.pop(op.name)
            if op.step <= self.record_max_step:
                self._spans.append(Span(op.name, type(op).__name__, op.what, r[1], op.step, op.layer, start_s,
                                        self.env.now, op.nbytes))  # type: ignore[attr-defined]
        self._completed(op)  # first: what it releases reaches its gate now, as it was sent before (module docstring)
        if self._weights_h2d.pop(op.name, None) is not None:
            for name, (waiting, wait) in list(self._behind_weights.items()):
                wait.discard(op.name)
                if not wait:
                    del self._behind_weights[name]
                    self._start_move(waiting)
        gate = self._flash_gate(op)
        if gate is not None:
            gate[0] -= 1
            if gate[2]:
                gate[0] += 1
                self._start_move(heapq.heappop(gate[2])[1])

    def _computed(self, op: Op, start_s: float) -> None:
        """A DenseCompute or Attention has ended; its service began at `start_s`."""
        if self.record and op.step <= self.record_max_step:
            nbytes = op.nbytes if isinstance(op, DenseCompute) else op.kv_bytes  # type: ignore[attr-defined]
            self._spans.append(Span(op.name, type(op).__name__, op.what, op.device, op.step, op.layer, start_s,
                                    self.env.now, nbytes))  # type: ignore[attr-defined]
        self._completed(op)

    def _completed(self, op: Op) -> None:
        """Mark `op` done, start the ops that waited only for it, count the step down."""
        name = op.name
        if self._ordered:
            rec = self._times.get(name) or self._times_prev.get(name)
            if rec is not None:
                rec[1] = self.env.now
        del self._pending[name]
        self._finished.append(name)
        waiters = self._waiters.pop(name, None)
        if waiters:
            for cell in waiters:
                left = cell[0] - 1
                cell[0] = left
                if not left:
                    self._launch(cell[1])
        if not isinstance(op, Spill):
            self._step_left -= 1
            if self._step_left == 0:
                self._call_in(0.0, self.env.stop)  # after what is already queued for now, as an event would

    def _take_spans(self) -> List[Span]:
        spans, self._spans = self._spans, []
        return spans
