"""Fluid flows over the PCIe tree, sharing every link max-min fairly.

Called by `inf2sim.des.backend` for every Transfer and Spill: `start(src, dst,
nbytes, req_bytes)` returns a simpy event that fires when the last byte has
arrived. Units: bytes, seconds, `*_Bps` = bytes/s (link specs are GB/s = 1e9 B/s).

The model
- A flow crosses the (link, direction) pairs of `Topology.path`; each such pair
  with at least one active flow is a `_Channel`. Concurrent flows get max-min fair
  rates (progressive filling), recomputed whenever a flow starts or ends. Nothing
  about RAID0 or shared uplinks is written in: it falls out of the sharing.
- Media links (`Link.is_media`, an SSD's flash) have a capacity that depends on
  request size. A flow is capped by the curve at its *own* request size; the
  channel's shared capacity is the curve at the *largest* request size among its
  active flows (a drive serving one large-request stream runs at the large-request
  rate, and small-request streams beside it cannot exceed their own curve).
- Latency: a flow takes its share of bandwidth from the moment it starts, and its
  event fires the path's summed link latency *after* its last byte leaves the
  fluid phase. A lone flow therefore takes nbytes / bottleneck + latency.

Performance (a run has ~500K flows): no process per flow, only callbacks; only
channels with active flows exist; one recomputation per timestamp (it runs at a
priority after every ordinary event of that instant, so all flows started or
ended "now" are batched); a recomputation touches only the flows coupled to the
change through *tight* channels. A channel is slack when the sum of its flows'
solo caps fits its capacity: it can never limit anyone, so it neither couples
flows nor enters the filling (e.g. host DRAM, which every host flow crosses).
"""
from __future__ import annotations

import heapq
import math
from typing import Dict, List, Optional, Tuple

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
                 "bytes_left", "rate_Bps", "mark_s", "version", "path")

    def __init__(self, nbytes: int, req_bytes: int, path, cap_Bps: float, latency_s: float, done, now: float):
        self.nbytes = nbytes
        self.req_bytes = req_bytes
        self.path = path
        self.channels: List[_Channel] = []
        self.cap_Bps = cap_Bps  # the flow alone: min over its links at its request size
        self.latency_s = latency_s
        self.done = done
        self.bytes_left = float(nbytes)
        self.rate_Bps = 0.0
        self.mark_s = now
        self.version = 0  # bumped on every rate change; stale heap entries are skipped


class _Channel:
    """One direction of one link while it carries flows."""

    __slots__ = ("key", "link", "direction", "flows", "capacity_Bps", "solo_sum_Bps", "since_s")

    def __init__(self, key: Key, link: Link, now: float):
        self.key = key
        self.link = link
        self.direction = key[1]
        self.flows: Dict[Flow, None] = {}  # insertion-ordered set: deterministic float sums
        self.capacity_Bps = 0.0 if link.is_media else link.gbps(key[1]) * 1e9
        self.solo_sum_Bps = 0.0
        self.since_s = now

    @property
    def tight(self) -> bool:
        """Can this channel limit a flow? (Otherwise every flow gets its solo cap here.)"""
        return self.solo_sum_Bps > self.capacity_Bps * (1.0 + _REL)

    def media_Bps(self, req_bytes: int) -> float:
        return self.link.gbps(self.direction, req_bytes) * 1e9

    def add(self, f: Flow) -> None:
        self.flows[f] = None
        self.solo_sum_Bps += f.cap_Bps
        if self.link.is_media:
            self.capacity_Bps = max(self.capacity_Bps, self.media_Bps(f.req_bytes))

    def remove(self, f: Flow) -> None:
        del self.flows[f]
        self.solo_sum_Bps -= f.cap_Bps
        if self.link.is_media and self.flows:
            self.capacity_Bps = self.media_Bps(max(g.req_bytes for g in self.flows))


class FlowNetwork:
    """Max-min fair fluid flows on `topology`, driven by simpy environment `env`."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        self.env = env
        self.topology = topology
        self.bytes_by_link: Dict[str, int] = {}
        self.bytes_by_dir: Dict[Key, int] = {}
        self._busy_s: Dict[str, float] = {}  # closed busy intervals per link name
        self._busy_since: Dict[str, Tuple[float, int]] = {}  # link -> (since, active directions)
        self._channels: Dict[Key, _Channel] = {}
        self._routes: Dict[Tuple[str, str, int], Tuple[tuple, float, float]] = {}
        self._heap: List[tuple] = []  # (finish_s, seq, flow, version)
        self._seq = 0
        self._timer_at = math.inf
        self._new: List[Flow] = []
        self._seeds: Dict[_Channel, None] = {}
        self._recompute_armed = False
        self.active = 0

    # ------------------------------------------------------------------ public
    def start(self, src: str, dst: str, nbytes: int, req_bytes: int = 0) -> Deferred:
        """Send `nbytes` from node `src` to node `dst` in requests of `req_bytes`
        (0: one request). The event fires when the last byte has arrived."""
        env = self.env
        done = Deferred(env)
        path, cap_Bps, latency_s = self._route(src, dst, req_bytes)
        if not path or nbytes <= 0:
            return done.fire_in(latency_s if nbytes > 0 else 0.0)
        f = Flow(nbytes, req_bytes, path, cap_Bps, latency_s, done, env.now)
        now = env.now
        loose = True
        for key in path:
            ch = self._channels.get(key)
            if ch is None:
                ch = self._open(key, now)
            was_tight = ch.tight
            ch.add(f)
            f.channels.append(ch)
            if was_tight:
                # A larger request can raise a media channel's capacity: its
                # other flows may speed up even if this one is not limited here.
                self._seeds[ch] = None
            loose = loose and not was_tight and not ch.tight
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

    def busy_s(self) -> Dict[str, float]:
        """Per link name: seconds during which it carried at least one flow (either direction)."""
        out = dict(self._busy_s)
        for name, (since, _) in self._busy_since.items():
            out[name] = out.get(name, 0.0) + self.env.now - since
        return out

    # ----------------------------------------------------------------- routing
    def _route(self, src: str, dst: str, req_bytes: int):
        """(path, solo cap in B/s, summed latency in s), cached per (src, dst, req)."""
        r = self._routes.get((src, dst, req_bytes))
        if r is None:
            topo = self.topology
            path = topo.path(src, dst)
            cap = min((topo.links[n].gbps(d, req_bytes) * 1e9 for n, d in path), default=math.inf)
            if path and cap <= 0:
                raise ValueError(f"flow {src}->{dst} crosses a link with no bandwidth")
            r = (path, cap, topo.latency_s(src, dst))
            self._routes[(src, dst, req_bytes)] = r
        return r

    def _open(self, key: Key, now: float) -> _Channel:
        ch = self._channels[key] = _Channel(key, self.topology.links[key[0]], now)
        name = key[0]
        since, n = self._busy_since.get(name, (now, 0))
        self._busy_since[name] = (since, n + 1)
        return ch

    def _close(self, ch: _Channel, now: float) -> None:
        del self._channels[ch.key]
        name = ch.key[0]
        since, n = self._busy_since.pop(name)
        if n > 1:
            self._busy_since[name] = (since, n - 1)
        else:
            self._busy_s[name] = self._busy_s.get(name, 0.0) + now - since

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
                if ch not in channels and ch.tight:
                    channels[ch] = None
                    stack.extend(ch.flows)
        if not flows:
            return
        now = self.env.now
        rates = _fill(flows, channels)
        for f, r in rates.items():
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
        for ch in f.channels:
            was_tight = ch.tight
            ch.remove(f)
            if not ch.flows:
                self._close(ch, now)
                self._seeds.pop(ch, None)
            elif was_tight or ch.tight:
                self._seeds[ch] = None  # its other flows may now go faster
        for key in f.path:
            self.bytes_by_dir[key] = self.bytes_by_dir.get(key, 0) + f.nbytes
            self.bytes_by_link[key[0]] = self.bytes_by_link.get(key[0], 0) + f.nbytes
        f.channels = []
        if self._seeds:
            self._arm_recompute()
        f.done.fire_in(f.latency_s)


def _fill(flows: Dict[Flow, None], channels: Dict[_Channel, None]) -> Dict[Flow, float]:
    """Max-min fair rates by progressive filling. `channels` are the tight channels
    of this component (each with all its flows in `flows`); slack channels are
    left out because they cannot bind. Each flow is also capped by its solo cap."""
    rem = {ch: ch.capacity_Bps for ch in channels}
    cnt = {ch: len(ch.flows) for ch in channels}
    by_cap = sorted(flows, key=lambda f: f.cap_Bps)
    rates: Dict[Flow, float] = {}
    i = 0
    while len(rates) < len(by_cap):
        while by_cap[i] in rates:
            i += 1
        cap_level = by_cap[i].cap_Bps
        link_level = math.inf
        for ch, n in cnt.items():
            if n and rem[ch] / n < link_level:
                link_level = rem[ch] / n
        level = min(cap_level, link_level)
        limit = level * (1.0 + _REL)
        frozen: List[Flow] = []
        for f in by_cap[i:]:
            if f.cap_Bps > limit:
                break
            if f not in rates:
                frozen.append(f)
        for ch, n in cnt.items():
            if n and rem[ch] / n <= limit:
                frozen.extend(f for f in ch.flows if f not in rates)
        for f in frozen:
            if f in rates:
                continue
            r = min(level, f.cap_Bps)
            rates[f] = r
            for ch in f.channels:
                if ch in cnt:
                    rem[ch] = max(rem[ch] - r, 0.0)
                    cnt[ch] -= 1
    return rates
