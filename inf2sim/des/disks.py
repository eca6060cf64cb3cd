"""A shared disk that serves its streams one request each per round.

Called by `inf2sim.des.flows.FlowNetwork` for the flows over a shared-disk link whose
storage says `shared_by: requests` (`Link.by_requests`): emulated CSDs whose KV files
sit on one physical disk under O_DIRECT. Units: bytes, seconds, B/s.

The model. The disk is one queue for reads and writes. Each stream (one flow: a load of
a CSD's rows, a spill of a token) keeps one request outstanding, and the disk serves one
request of every stream per round. A request of r bytes in direction d takes
s = r / C_d(r) of the disk's time, where C_d is the disk's aggregate curve (the
profile's `shared_read_gbps` / `shared_write_gbps`: N streams of that size at once).
So a round lasts sum_j s_j and stream i moves r_i per round:

    rate_i = r_i / sum_j s_j

With streams of one size this is the aggregate curve split evenly (what max-min sharing
of the curve gives). Mixed, a stream of small requests gets one small request per large
request of the others: a spill's 4 KiB read-modify-writes beside other CSDs' 384 KiB
loads take about as long as those loads (`benchmarks/csd_disk_mix.py` on the H100
machine: 502 ms against 493 ms, where 4 spills at once took 81 ms). Max-min sharing by
bytes, reads and writes apart, timed that spill at 81 ms.

A stream that cannot use its share (its own curve, `solo_Bps`, is lower: a lone QD1
stream) runs at that; the disk time it leaves goes to the others (water-filling in disk
time). The share is a cap on the flow: the flow network still shares its other links.
"""
from __future__ import annotations

from typing import Dict, List, Tuple


class DiskShare:
    """The flows on one shared disk (both directions) and their per-round caps."""

    __slots__ = ("link", "flows", "_s_per_byte")

    def __init__(self, link):
        self.link = link  # topology.Link with by_requests
        self.flows: Dict[object, Tuple[float, float]] = {}  # flow -> (request bytes, disk s per byte)
        self._s_per_byte: Dict[Tuple[str, int], float] = {}

    def _cost(self, direction: str, req_bytes: int) -> float:
        """Disk seconds per byte of a request of `req_bytes` in `direction` (1 / C_d(r))."""
        key = (direction, req_bytes)
        c = self._s_per_byte.get(key)
        if c is None:
            c = self._s_per_byte[key] = 1.0 / (self.link.gbps(direction, req_bytes) * 1e9)
        return c

    def add(self, flow, direction: str, req_bytes: int, nbytes: int) -> None:
        r = req_bytes if req_bytes > 0 else nbytes  # 0: the whole move is one request
        self.flows[flow] = (float(r), self._cost(direction, r))

    def remove(self, flow) -> None:
        del self.flows[flow]

    def caps(self) -> List[Tuple[object, float]]:
        """(flow, cap in B/s) for every flow on the disk: min(its solo cap, its round share)."""
        left = list(self.flows.items())
        budget = 1.0  # disk seconds per second not yet given to a capped stream
        out: List[Tuple[object, float]] = []
        while left:
            round_s = sum(r * c for _, (r, c) in left)  # one request of each stream
            keep, fixed = [], False
            for f, (r, c) in left:
                share = r * budget / round_s
                if f.solo_Bps <= share:  # cannot use its share: runs at its own curve
                    out.append((f, f.solo_Bps))
                    budget = max(0.0, budget - f.solo_Bps * c)
                    fixed = True
                else:
                    keep.append((f, (r, c)))
            if not fixed:
                out.extend((f, r * budget / round_s) for f, (r, _) in keep)
                break
            left = keep
        return out
