"""Fluid flows over the PCIe tree, sharing every link max-min fairly.

Called by `inf2sim.des.backend` for every Transfer and Spill: `start_on(route,
nbytes, req_bytes, on_done, token)` calls `on_done(token)` when the last byte has
arrived (`start(src, dst, nbytes, req_bytes)` returns a simpy event instead).
Units: bytes, seconds, `*_Bps` = bytes/s (link specs are GB/s = 1e9 B/s).

The model
- A flow crosses the (link, direction) pairs of `Topology.path`, each a
  `_Channel`. Concurrent flows get max-min fair rates (progressive filling),
  recomputed whenever a flow starts or ends. Nothing about RAID0 or shared
  uplinks is written in: it falls out of the sharing.
- Media links (`Link.is_media`, an SSD's flash) have a capacity that depends on
  request size. A flow is capped by the curve at its *own* request size; the
  channel's shared capacity is the curve at the *largest* request size among its
  active flows (a drive serving one large-request stream runs at the large-request
  rate, and small-request streams beside it cannot exceed their own curve).
- A shared disk divided by requests (`Link.by_requests`) is no max-min constraint: its
  `inf2sim.des.disks.DiskShare` caps each of its flows at one request per round
  (re-capped whenever a flow starts or ends on it), and the flows share their other
  links as usual.
- Latency: a flow takes its share of bandwidth from the moment it starts, and its
  event fires the path's summed link latency *after* its last byte leaves the
  fluid phase. A lone flow therefore takes nbytes / bottleneck + latency.

Performance (a run has ~500K flows): no process or event per flow, only
`Kernel.call_in` entries (inf2sim/des/kernel.py); channel bookkeeping inline in
`start_on` / `_end`; only channels that carry flows are ever visited; one
recomputation per timestamp (it runs at a priority after every ordinary event of
that instant, so all flows started or ended "now" are batched); a recomputation
touches only the flows coupled to the change through *tight* channels. A channel
is slack when the sum of its flows' solo caps fits its capacity: it can never
limit anyone, so it neither couples flows nor enters the filling
(inf2sim/des/fill.py; e.g. host DRAM, which every host flow crosses). A flow that
starts where every channel stays slack gets its solo cap at once, with no
recomputation; flows that only end, leaving flows at their solo caps, need none
either. Flows that end together with one latency share one queue entry.
"""
from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Dict, List, Tuple

import simpy
from simpy.events import NORMAL

from ..topology import Link, Topology
from .disks import DiskShare
from .fill import REL as _REL, fill as _fill
from .kernel import Deferred, call_in_for

# Runs after every NORMAL event of the same instant: one rate recomputation per timestamp.
LATE = NORMAL + 1
# Flows finishing within this of each other are ended together (float round-off).
_TIE_S = 1e-12

Key = Tuple[str, str]  # (link name, "up" | "down")


class Flow:
    """One transfer in the fluid phase. `bytes_left` is exact at time `mark_s`;
    between recomputations it drains at `rate_Bps`."""

    __slots__ = ("nbytes", "req_bytes", "channels", "cap_Bps", "solo_Bps", "disk", "latency_s", "on_done", "token",
                 "bytes_left", "rate_Bps", "mark_s", "version", "seen", "fixed", "fill_Bps")

    def __init__(self, nbytes: int, req_bytes: int, channels, cap_Bps: float, latency_s: float, on_done, token,
                 now: float):
        self.nbytes = nbytes
        self.req_bytes = req_bytes
        self.channels: Tuple[_Channel, ...] = channels
        self.cap_Bps = cap_Bps  # the flow alone: min over its links at its request size (and its disk share)
        self.solo_Bps = cap_Bps  # without a disk share
        self.disk = None  # the DiskShare it runs on, if any
        self.latency_s = latency_s
        self.on_done = on_done  # on_done(token) when the last byte has arrived
        self.token = token
        self.bytes_left = float(nbytes)
        self.rate_Bps = 0.0
        self.mark_s = now
        self.version = 0  # bumped on every rate change, -1 once ended; stale heap entries are skipped
        # scratch of one recomputation (valid while equal to its stamp): in the component, rate fixed
        self.seen = self.fixed = 0
        self.fill_Bps = 0.0


class _LinkBusy:
    """Busy time of one link (either direction carrying a flow counts)."""

    __slots__ = ("active", "since_s", "total_s")

    def __init__(self):
        self.active = 0
        self.since_s = 0.0
        self.total_s = 0.0


class _Channel:
    """One direction of one link. Kept once made (cheap), but only channels with
    flows are ever visited. `tight` (can this channel limit a flow? else each of
    its flows gets its solo cap here) is kept current by `FlowNetwork.start` and
    `FlowNetwork._end`, which add and remove flows inline (the hot path)."""

    __slots__ = ("key", "link", "media", "curve_Bps", "reqs", "flows", "capacity_Bps", "solo_sum_Bps",
                 "tight", "bytes", "busy", "seen", "rem_Bps", "unfrozen", "disk")

    def __init__(self, key: Key, link: Link, busy: _LinkBusy, disk: "DiskShare" = None):
        self.key = key
        self.link = link
        self.disk = disk  # a disk divided by requests: never binds here (its share caps the flows)
        self.media = link.is_media and disk is None
        self.curve_Bps: Dict[int, float] = {}  # media: request size -> B/s (np.interp is slow)
        self.reqs: Dict[int, int] = {}  # media: request size -> active flows using it
        self.flows: Dict[Flow, None] = {}  # insertion-ordered set: deterministic float sums
        self.capacity_Bps = math.inf if disk is not None else 0.0 if self.media else link.gbps(key[1]) * 1e9
        self.solo_sum_Bps = 0.0
        self.tight = False
        self.bytes = 0  # bytes of flows that crossed it
        self.busy = busy
        # scratch of one recomputation (valid while `seen` equals its stamp): capacity not
        # yet given to frozen flows, flows not yet frozen (0: the channel left the filling)
        self.seen = 0
        self.rem_Bps = 0.0
        self.unfrozen = 0

    def rate_at(self, req_bytes: int) -> float:
        """Capacity in B/s; for media links at a request size."""
        if not self.media:
            return self.capacity_Bps
        v = self.curve_Bps.get(req_bytes)
        if v is None:
            v = self.curve_Bps[req_bytes] = self.link.gbps(self.key[1], req_bytes) * 1e9
        return v


class FlowNetwork:
    """Max-min fair fluid flows on `topology`, driven by simpy environment `env`."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        self.env = env
        self._call_in = call_in_for(env)
        self.topology = topology
        self.active = 0  # flows in the fluid phase
        self._channels: Dict[Key, _Channel] = {}
        self._disks: Dict[str, DiskShare] = {}  # shared disks divided by requests, by link name
        self._busy: Dict[str, _LinkBusy] = {}
        self._routes: Dict[Tuple[str, str, int], Tuple[Tuple[_Channel, ...], float, float, object]] = {}
        self._heap: List[tuple] = []  # (finish_s, seq, flow, version)
        self._seq = 0
        self._timer_at = math.inf
        self._new: List[Flow] = []
        self._seeds: Dict[_Channel, None] = {}
        self._recompute_armed = False
        self._stamp = 0  # of the current recomputation

    # ------------------------------------------------------------------ public
    def start(self, src: str, dst: str, nbytes: int, req_bytes: int = 0) -> Deferred:
        """Send `nbytes` from node `src` to node `dst` in requests of `req_bytes`
        (0: one request). The event fires when the last byte has arrived."""
        done = Deferred(self.env)
        route = self.route(src, dst, req_bytes)
        if not route[0] or nbytes <= 0:
            return done.fire_in(route[2] if nbytes > 0 else 0.0)
        self.start_on(route, nbytes, req_bytes, _succeed, done)
        return done

    def route(self, src: str, dst: str, req_bytes: int = 0):
        """(channels, solo cap in B/s, summed latency in s, the channel of a disk divided by
        requests or None) of a flow from node `src` to node `dst` at a request size, cached;
        what `start_on` takes."""
        r = self._routes.get((src, dst, req_bytes))
        if r is None:
            topo = self.topology
            channels = tuple(self._channel(key) for key in topo.path(src, dst))
            cap = min((ch.rate_at(req_bytes) for ch in channels), default=math.inf)
            if channels and cap <= 0:
                raise ValueError(f"flow {src}->{dst} crosses a link with no bandwidth")
            disk = next((ch for ch in channels if ch.disk is not None), None)  # a disk divided by requests
            r = (channels, cap, topo.latency_s(src, dst), disk)
            self._routes[(src, dst, req_bytes)] = r
        return r

    def start_on(self, route, nbytes: int, req_bytes: int, on_done: Callable[[Any], None], token: Any) -> None:
        """Start a flow of `nbytes` (> 0) on `route` (from `route(...)`, with channels);
        `on_done(token)` is called when its last byte has arrived. The backend's
        fast path: no event object per flow."""
        channels, cap_Bps, latency_s, disk = route
        now = self.env.now
        f = Flow(nbytes, req_bytes, channels, cap_Bps, latency_s, on_done, token, now)
        if disk is not None:  # its cap is its share of the disk; the others' shares shrink
            f.disk = disk.disk
            disk.disk.add(f, disk.key[1], req_bytes, nbytes)
            cap_Bps = f.cap_Bps = self._share_disk(disk.disk, f)
        loose = True
        for ch in channels:  # add f to each channel, keeping `tight` current
            flows = ch.flows
            if not flows:
                b = ch.busy
                if b.active == 0:
                    b.since_s = now
                b.active += 1
            flows[f] = None
            ch.solo_sum_Bps += cap_Bps
            if ch.media:
                ch.reqs[req_bytes] = ch.reqs.get(req_bytes, 0) + 1
                c = ch.curve_Bps.get(req_bytes)
                if c is None:
                    c = ch.rate_at(req_bytes)
                if c > ch.capacity_Bps:
                    ch.capacity_Bps = c
            if ch.tight:
                # A larger request can raise a media channel's capacity: its
                # other flows may speed up even if this one is not limited here.
                self._seeds[ch] = None
                loose = False
                ch.tight = ch.solo_sum_Bps > ch.capacity_Bps * (1.0 + _REL)
            elif ch.solo_sum_Bps > ch.capacity_Bps * (1.0 + _REL):
                ch.tight = True
                loose = False
        self.active += 1
        if loose:
            # Every channel it crosses stays slack: it runs at its solo cap and
            # changes no one else's rate, so no recomputation is needed.
            f.rate_Bps = cap_Bps
            f.version = 1
            self._seq += 1
            finish_s = now + f.bytes_left / cap_Bps
            heapq.heappush(self._heap, (finish_s, self._seq, f, 1))
            if finish_s < self._timer_at:  # it ends before anything else: (re)arm the timer
                self._arm_timer()
        else:
            self._new.append(f)
            if not self._recompute_armed:
                self._arm_recompute()

    @property
    def bytes_by_dir(self) -> Dict[Key, int]:
        """(link, direction) -> bytes of the flows that crossed it (counted at their end)."""
        return {k: ch.bytes for k, ch in self._channels.items() if ch.bytes}

    @property
    def bytes_by_link(self) -> Dict[str, int]:
        """Link name -> bytes that crossed it, both directions summed."""
        out: Dict[str, int] = {}
        for (name, _), ch in self._channels.items():
            if ch.bytes:
                out[name] = out.get(name, 0) + ch.bytes
        return out

    def busy_s(self) -> Dict[str, float]:
        """Link name -> seconds during which it carried at least one flow (either direction)."""
        now = self.env.now
        return {name: b.total_s + (now - b.since_s if b.active else 0.0) for name, b in self._busy.items()}

    # ----------------------------------------------------------------- routing
    def _channel(self, key: Key) -> _Channel:
        ch = self._channels.get(key)
        if ch is None:
            busy = self._busy.setdefault(key[0], _LinkBusy())
            link = self.topology.links[key[0]]
            disk = self._disks.setdefault(key[0], DiskShare(link)) if link.by_requests else None
            ch = self._channels[key] = _Channel(key, link, busy, disk)
        return ch

    # ------------------------------------------------------------ shared disks
    def _share_disk(self, disk: DiskShare, new) -> float:
        """Re-cap every flow on `disk` to its share; returns `new`'s cap (None: no new flow)."""
        out = 0.0
        for g, cap in disk.caps():
            if g is new:
                out = cap
            elif cap != g.cap_Bps:
                self._recap(g, cap)
        return out

    def _recap(self, f: Flow, cap_Bps: float) -> None:
        """Change a running flow's cap; its rate follows at the next recomputation."""
        old, f.cap_Bps = f.cap_Bps, cap_Bps
        for ch in f.channels:
            ch.solo_sum_Bps += cap_Bps - old
            was = ch.tight
            ch.tight = ch.solo_sum_Bps > ch.capacity_Bps * (1.0 + _REL)
            if was or ch.tight:
                self._seeds[ch] = None
        self._new.append(f)
        self._arm_recompute()

    # ---------------------------------------------------------- rate changes
    def _set_rate(self, f: Flow, rate_Bps: float, now: float) -> None:
        left = f.bytes_left - f.rate_Bps * (now - f.mark_s)
        f.bytes_left = left if left > 0.0 else 0.0
        f.mark_s = now
        f.rate_Bps = rate_Bps
        f.version += 1
        self._seq += 1
        heapq.heappush(self._heap, (now + f.bytes_left / rate_Bps, self._seq, f, f.version))

    def _arm_recompute(self) -> None:
        if not self._recompute_armed:
            self._recompute_armed = True
            self._call_in(0.0, self._recompute, None, LATE)

    def _recompute(self, _arg) -> None:
        """Refill the rates of every flow coupled (through tight channels) to the
        flows started and channels changed since the last recomputation."""
        self._recompute_armed = False
        if not any(f.version >= 0 for f in self._new) and self._only_freed():
            self._new.clear()
            self._seeds.clear()
            return
        self._stamp += 1
        stamp = self._stamp
        flows: List[Flow] = []  # the component, in discovery order
        channels: List[_Channel] = []  # its tight channels (and seeds), in discovery order
        stack: List[Flow] = [f for f in self._new if f.version >= 0]
        for ch in self._seeds:
            if ch.flows:
                ch.seen = stamp
                channels.append(ch)
                stack.extend(ch.flows)
        self._new.clear()
        self._seeds.clear()
        while stack:
            f = stack.pop()
            if f.seen == stamp:
                continue
            f.seen = stamp
            flows.append(f)
            for ch in f.channels:
                if ch.tight and ch.seen != stamp:
                    ch.seen = stamp
                    channels.append(ch)
                    stack.extend(ch.flows)
        if not flows:
            return
        now = self.env.now
        for f in _fill(flows, channels, stamp):
            if f.fill_Bps != f.rate_Bps:
                self._set_rate(f, f.fill_Bps, now)
        self._arm_timer()

    def _only_freed(self) -> bool:
        """No flow started, and every flow left on a changed channel already runs at
        its solo cap: flows only ended, so no rate can fall, and none that could rise
        shares a channel with the capacity they freed. (Not for media channels,
        whose capacity drops when the largest request size leaves.)"""
        for ch in self._seeds:
            if ch.media:
                return False
            for f in ch.flows:
                if f.rate_Bps != f.cap_Bps:
                    return False
        return True

    # ------------------------------------------------------------- completion
    def _arm_timer(self) -> None:
        heap = self._heap
        while heap and heap[0][3] != heap[0][2].version:
            heapq.heappop(heap)  # stale: the flow's rate changed or it ended
        if heap and heap[0][0] < self._timer_at:
            self._timer_at = heap[0][0]
            delay_s = heap[0][0] - self.env.now
            self._call_in(delay_s if delay_s > 0.0 else 0.0, self._on_timer, None)

    def _on_timer(self, _arg) -> None:
        now = self.env.now
        if now >= self._timer_at:
            self._timer_at = math.inf
        heap = self._heap
        ended: List[Flow] = []
        while heap and heap[0][0] <= now + _TIE_S:
            _, _, f, version = heapq.heappop(heap)
            if version == f.version:
                self._end(f, now)
                ended.append(f)
        # Tell each flow's owner `latency_s` later. Flows that end together with
        # the same latency and owner (the 16 symmetric CSDs' flows) share one queue
        # entry: their entries would have been adjacent in the queue (same time,
        # priority, consecutive ids), so they run in the same order either way.
        i, n = 0, len(ended)
        while i < n:
            f = ended[i]
            j = i + 1
            while j < n and ended[j].latency_s == f.latency_s and ended[j].on_done is f.on_done:
                j += 1
            if j == i + 1:
                self._call_in(f.latency_s, f.on_done, f.token)
            else:
                self._call_in(f.latency_s, _deliver, (f.on_done, [g.token for g in ended[i:j]]))
            i = j
        self._arm_timer()

    def _end(self, f: Flow, now: float) -> None:
        f.version = -1
        self.active -= 1
        n = f.nbytes
        cap_Bps = f.cap_Bps
        for ch in f.channels:  # remove f from each channel, keeping `tight` current
            ch.bytes += n
            flows = ch.flows
            del flows[f]
            if not flows:
                ch.solo_sum_Bps = 0.0  # reset: no round-off carried into the next busy period
                ch.tight = False
                if ch.media:
                    ch.capacity_Bps = 0.0
                    ch.reqs.clear()
                b = ch.busy
                b.active -= 1
                if b.active == 0:
                    b.total_s += now - b.since_s
                continue
            ch.solo_sum_Bps -= cap_Bps
            if ch.media:
                reqs, req = ch.reqs, f.req_bytes
                left = reqs[req] - 1
                if left:
                    reqs[req] = left
                else:  # the last flow at this request size: capacity may drop to the next largest
                    del reqs[req]
                    ch.capacity_Bps = max(ch.rate_at(r) for r in reqs)
            if ch.tight:
                ch.tight = ch.solo_sum_Bps > ch.capacity_Bps * (1.0 + _REL)
                self._seeds[ch] = None  # its other flows may now go faster
            elif ch.solo_sum_Bps > ch.capacity_Bps * (1.0 + _REL):
                ch.tight = True
                self._seeds[ch] = None
        if f.disk is not None:  # the others' shares grow
            f.disk.remove(f)
            self._share_disk(f.disk, None)
        if self._seeds and not self._recompute_armed:
            self._arm_recompute()


def _deliver(batch) -> None:
    on_done, tokens = batch
    for token in tokens:
        on_done(token)


def _succeed(ev: Deferred) -> None:
    ev.fire_in(0.0)
