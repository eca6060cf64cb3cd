"""Fluid flows over the PCIe tree, sharing every link max-min fairly.

Called by `inf2sim.des.backend` for every Transfer and Spill: `start(src, dst,
nbytes, req_bytes)` returns a simpy event that fires when the last byte has
arrived. Units: bytes, seconds, `*_Bps` = bytes/s (link specs are GB/s = 1e9 B/s).

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
- Latency: a flow takes its share of bandwidth from the moment it starts, and its
  event fires the path's summed link latency *after* its last byte leaves the
  fluid phase. A lone flow therefore takes nbytes / bottleneck + latency.

Performance (a run has ~500K flows): no process per flow, only callbacks; only
channels that carry flows are ever visited; one recomputation per timestamp (it
runs at a priority after every ordinary event of that instant, so all flows
started or ended "now" are batched); a recomputation touches only the flows
coupled to the change through *tight* channels. A channel is slack when the sum
of its flows' solo caps fits its capacity: it can never limit anyone, so it
neither couples flows nor enters the filling (e.g. host DRAM, which every host
flow crosses). A flow that starts where every channel stays slack gets its solo
cap at once, with no recomputation.
"""
from __future__ import annotations

import heapq
import math
from typing import Dict, List, Tuple

import simpy
from simpy.events import NORMAL

from ..topology import Link, Topology

# Runs after every NORMAL event of the same instant: one rate recomputation per timestamp.
LATE = NORMAL + 1
# Flows finishing within this of each other are ended together (float round-off).
_TIE_S = 1e-12
_REL = 1e-12

Key = Tuple[str, str]  # (link name, "up" | "down")


class Deferred(simpy.Event):
    """An event whose firing time is decided later: `fire_in(delay_s, value)`
    schedules it like a Timeout created then (one heap entry, no process)."""

    def fire_in(self, delay_s: float, value=None, priority=NORMAL) -> "Deferred":
        self._ok = True
        self._value = value
        self.env.schedule(self, priority, max(delay_s, 0.0))
        return self


class Flow:
    """One transfer in the fluid phase. `bytes_left` is exact at time `mark_s`;
    between recomputations it drains at `rate_Bps`."""

    __slots__ = ("nbytes", "req_bytes", "channels", "cap_Bps", "latency_s", "done",
                 "bytes_left", "rate_Bps", "mark_s", "version")

    def __init__(self, nbytes: int, req_bytes: int, channels, cap_Bps: float, latency_s: float, done, now: float):
        self.nbytes = nbytes
        self.req_bytes = req_bytes
        self.channels: Tuple[_Channel, ...] = channels
        self.cap_Bps = cap_Bps  # the flow alone: min over its links at its request size
        self.latency_s = latency_s
        self.done = done
        self.bytes_left = float(nbytes)
        self.rate_Bps = 0.0
        self.mark_s = now
        self.version = 0  # bumped on every rate change, -1 once ended; stale heap entries are skipped


class _LinkBusy:
    """Busy time of one link (either direction carrying a flow counts)."""

    __slots__ = ("active", "since_s", "total_s")

    def __init__(self):
        self.active = 0
        self.since_s = 0.0
        self.total_s = 0.0


class _Channel:
    """One direction of one link. Kept once made (cheap), but only channels with
    flows are ever visited; `tight` is kept current on every add/remove."""

    __slots__ = ("key", "link", "media", "curve_Bps", "reqs", "flows", "capacity_Bps", "solo_sum_Bps",
                 "tight", "bytes", "busy")

    def __init__(self, key: Key, link: Link, busy: _LinkBusy):
        self.key = key
        self.link = link
        self.media = link.is_media
        self.curve_Bps: Dict[int, float] = {}  # media: request size -> B/s (np.interp is slow)
        self.reqs: Dict[int, int] = {}  # media: request size -> active flows using it
        self.flows: Dict[Flow, None] = {}  # insertion-ordered set: deterministic float sums
        self.capacity_Bps = 0.0 if self.media else link.gbps(key[1]) * 1e9
        self.solo_sum_Bps = 0.0
        self.tight = False  # can this channel limit a flow? (else each gets its solo cap here)
        self.bytes = 0  # bytes of flows that crossed it
        self.busy = busy

    def rate_at(self, req_bytes: int) -> float:
        """Capacity in B/s; for media links at a request size."""
        if not self.media:
            return self.capacity_Bps
        v = self.curve_Bps.get(req_bytes)
        if v is None:
            v = self.curve_Bps[req_bytes] = self.link.gbps(self.key[1], req_bytes) * 1e9
        return v

    def add(self, f: Flow, now: float) -> bool:
        """Add a flow; return whether the channel was tight before."""
        was_tight = self.tight
        if not self.flows:
            b = self.busy
            if b.active == 0:
                b.since_s = now
            b.active += 1
        self.flows[f] = None
        self.solo_sum_Bps += f.cap_Bps
        if self.media:
            self.reqs[f.req_bytes] = self.reqs.get(f.req_bytes, 0) + 1
            self.capacity_Bps = max(self.capacity_Bps, self.rate_at(f.req_bytes))
        self.tight = self.solo_sum_Bps > self.capacity_Bps * (1.0 + _REL)
        return was_tight

    def remove(self, f: Flow, now: float) -> bool:
        """Remove a flow; return whether the others' rates may change (tight before or after)."""
        was_tight = self.tight
        del self.flows[f]
        if not self.flows:
            self.solo_sum_Bps = 0.0  # reset: no round-off carried into the next busy period
            self.tight = False
            if self.media:
                self.capacity_Bps = 0.0
                self.reqs.clear()
            b = self.busy
            b.active -= 1
            if b.active == 0:
                b.total_s += now - b.since_s
            return False
        self.solo_sum_Bps -= f.cap_Bps
        if self.media:
            left = self.reqs[f.req_bytes] - 1
            if left:
                self.reqs[f.req_bytes] = left
            else:  # the last flow at this request size: capacity may drop to the next largest
                del self.reqs[f.req_bytes]
                self.capacity_Bps = max(self.rate_at(r) for r in self.reqs)
        self.tight = self.solo_sum_Bps > self.capacity_Bps * (1.0 + _REL)
        return was_tight or self.tight


class FlowNetwork:
    """Max-min fair fluid flows on `topology`, driven by simpy environment `env`."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        self.env = env
        self.topology = topology
        self.active = 0  # flows in the fluid phase
        self._channels: Dict[Key, _Channel] = {}
        self._busy: Dict[str, _LinkBusy] = {}
        self._routes: Dict[Tuple[str, str, int], Tuple[Tuple[_Channel, ...], float, float]] = {}
        self._heap: List[tuple] = []  # (finish_s, seq, flow, version)
        self._seq = 0
        self._timer_at = math.inf
        self._new: List[Flow] = []
        self._seeds: Dict[_Channel, None] = {}
        self._recompute_armed = False

    # ------------------------------------------------------------------ public
    def start(self, src: str, dst: str, nbytes: int, req_bytes: int = 0) -> Deferred:
        """Send `nbytes` from node `src` to node `dst` in requests of `req_bytes`
        (0: one request). The event fires when the last byte has arrived."""
        done = Deferred(self.env)
        channels, cap_Bps, latency_s = self._route(src, dst, req_bytes)
        if not channels or nbytes <= 0:
            return done.fire_in(latency_s if nbytes > 0 else 0.0)
        now = self.env.now
        f = Flow(nbytes, req_bytes, channels, cap_Bps, latency_s, done, now)
        loose = True
        for ch in channels:
            if ch.add(f, now):
                # A larger request can raise a media channel's capacity: its
                # other flows may speed up even if this one is not limited here.
                self._seeds[ch] = None
                loose = False
            elif ch.tight:
                loose = False
        self.active += 1
        if loose:
            # Every channel it crosses stays slack: it runs at its solo cap and
            # changes no one else's rate, so no recomputation is needed.
            self._set_rate(f, cap_Bps, now)
            self._arm_timer()
        else:
            self._new.append(f)
            self._arm_recompute()
        return done

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
    def _route(self, src: str, dst: str, req_bytes: int):
        """(channels, solo cap in B/s, summed latency in s), cached per (src, dst, req)."""
        r = self._routes.get((src, dst, req_bytes))
        if r is None:
            topo = self.topology
            channels = tuple(self._channel(key) for key in topo.path(src, dst))
            cap = min((ch.rate_at(req_bytes) for ch in channels), default=math.inf)
            if channels and cap <= 0:
                raise ValueError(f"flow {src}->{dst} crosses a link with no bandwidth")
            r = (channels, cap, topo.latency_s(src, dst))
            self._routes[(src, dst, req_bytes)] = r
        return r

    def _channel(self, key: Key) -> _Channel:
        ch = self._channels.get(key)
        if ch is None:
            busy = self._busy.setdefault(key[0], _LinkBusy())
            ch = self._channels[key] = _Channel(key, self.topology.links[key[0]], busy)
        return ch

    # ---------------------------------------------------------- rate changes
    def _set_rate(self, f: Flow, rate_Bps: float, now: float) -> None:
        f.bytes_left = max(f.bytes_left - f.rate_Bps * (now - f.mark_s), 0.0)
        f.mark_s = now
        f.rate_Bps = rate_Bps
        f.version += 1
        self._seq += 1
        heapq.heappush(self._heap, (now + f.bytes_left / rate_Bps, self._seq, f, f.version))

    def _arm_recompute(self) -> None:
        if not self._recompute_armed:
            self._recompute_armed = True
            ev = Deferred(self.env)
            ev.callbacks.append(self._recompute)
            ev.fire_in(0.0, priority=LATE)

    def _recompute(self, _ev) -> None:
        """Refill the rates of every flow coupled (through tight channels) to the
        flows started and channels changed since the last recomputation."""
        self._recompute_armed = False
        flows: Dict[Flow, None] = {}
        channels: Dict[_Channel, None] = {}
        stack: List[Flow] = [f for f in self._new if f.version >= 0]
        for ch in self._seeds:
            if ch.flows:
                channels[ch] = None
                stack.extend(ch.flows)
        self._new.clear()
        self._seeds.clear()
        while stack:
            f = stack.pop()
            if f in flows:
                continue
            flows[f] = None
            for ch in f.channels:
                if ch.tight and ch not in channels:
                    channels[ch] = None
                    stack.extend(ch.flows)
        if not flows:
            return
        now = self.env.now
        for f, r in _fill(flows, channels).items():
            if r != f.rate_Bps:
                self._set_rate(f, r, now)
        self._arm_timer()

    # ------------------------------------------------------------- completion
    def _arm_timer(self) -> None:
        heap = self._heap
        while heap and heap[0][3] != heap[0][2].version:
            heapq.heappop(heap)  # stale: the flow's rate changed or it ended
        if heap and heap[0][0] < self._timer_at:
            self._timer_at = heap[0][0]
            ev = Deferred(self.env)
            ev.callbacks.append(self._on_timer)
            ev.fire_in(heap[0][0] - self.env.now)

    def _on_timer(self, _ev) -> None:
        now = self.env.now
        if now >= self._timer_at:
            self._timer_at = math.inf
        heap = self._heap
        while heap and heap[0][0] <= now + _TIE_S:
            _, _, f, version = heapq.heappop(heap)
            if version == f.version:
                self._end(f, now)
        self._arm_timer()

    def _end(self, f: Flow, now: float) -> None:
        f.version = -1
        self.active -= 1
        n = f.nbytes
        for ch in f.channels:
            ch.bytes += n
            if ch.remove(f, now):
                self._seeds[ch] = None  # its other flows may now go faster
        if self._seeds:
            self._arm_recompute()
        f.done.fire_in(f.latency_s)


def _cap(f: Flow) -> float:
    return f.cap_Bps


def _fill(flows: Dict[Flow, None], channels: Dict[_Channel, None]) -> Dict[Flow, float]:
    """Max-min fair rates by progressive filling: raise every unfrozen flow's rate
    together; a flow freezes when it reaches its solo cap or a channel it crosses
    fills up. `channels` are the tight channels of this component (each with all
    its flows in `flows`); slack channels are left out because they cannot bind."""
    rem = {ch: ch.capacity_Bps for ch in channels}  # capacity not yet given to frozen flows
    cnt = {ch: len(ch.flows) for ch in channels}  # unfrozen flows; a channel leaves when 0
    order = sorted(flows, key=_cap)
    rates: Dict[Flow, float] = {}
    i, n = 0, len(order)
    while i < n:
        if order[i] in rates:
            i += 1
            continue
        level = order[i].cap_Bps
        for ch, k in cnt.items():
            if rem[ch] < level * k:
                level = rem[ch] / k
        limit = level * (1.0 + _REL)  # ties within round-off freeze together
        frozen: List[Flow] = []
        j = i
        while j < n and order[j].cap_Bps <= limit:
            frozen.append(order[j])
            j += 1
        for ch, k in cnt.items():
            if rem[ch] <= limit * k:
                frozen.extend(ch.flows)
        for f in frozen:
            if f in rates:
                continue
            r = f.cap_Bps if f.cap_Bps < level else level
            rates[f] = r
            for ch in f.channels:
                k = cnt.get(ch)
                if k is None:
                    continue
                if k == 1:
                    del cnt[ch], rem[ch]
                else:
                    cnt[ch] = k - 1
                    left = rem[ch] - r
                    rem[ch] = left if left > 0.0 else 0.0
    return rates
