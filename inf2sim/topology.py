"""The machine as a PCIe tree built from a `HardwareProfile`.

Called by the DES (`inf2sim.des`) to route flows and by the analytic bound
(`inf2sim.cost`) to count bytes per link. Pure data: every bandwidth comes from
the profile (conf/hardware/*.yaml); this module only says how parts connect.

Every node except the root has exactly one link to its parent, named after the
node. A link has an `up` direction (towards the root complex `rc`) and a `down`
direction. Storage media are modelled as a leaf `X.nand` whose link to the
controller node `X` carries the SSD's read (up) / write (down) curve over
request size; so a CSD's P2P read `csd3.nand -> csd3.fpga` crosses only
`csd3.nand` (up), `csd3.fpga` (down) and never the host link `csd3`.

Tree (names):
    rc ─ dram                          host memory (its bandwidth as a link)
       ─ gpu                           GPU on its root port
       ─ ssd_sw ─ ssd{i} ─ ssd{i}.nand conventional SSDs (RAID0 through the host)
       ─ chassis ─ port{j} ─ csd{i} ─ csd{i}.nand   (CSD flash)
                                   ─ csd{i}.fpga   (FPGA DRAM, the compute device)
Memory endpoints for transfers: dram, gpu, ssd{i} (its media), csd{i}.ssd (its
media), csd{i}.fpga. `endpoint_node` maps them to tree nodes.

Shared disk: when a StorageSpec has `shared_read_gbps` (emulated drives that are files
on one physical disk), a media link `ssd_disk` / `csd_disk` hangs off `rc` with that
aggregate curve, and every flow crossing one of those drives' media links also crosses
it in the same direction (`Topology.shared`): N drives busy at once then share the one
disk, while a lone drive still runs at its own (single-stream) curve. With
`shared_by: requests` the disk is one queue for reads and writes that serves one request
of each stream per round (`Link.by_requests`, `inf2sim.des.disks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .specs import HardwareProfile, LinkSpec, StorageSpec


@dataclass(frozen=True)
class Link:
    name: str
    up_gbps: float
    down_gbps: float
    latency_us: float = 0.0
    # media links: bandwidth over request size (bytes), per direction
    curve_req_bytes: Tuple[float, ...] = ()
    curve_up_gbps: Tuple[float, ...] = ()
    curve_down_gbps: Tuple[float, ...] = ()
    # a shared disk divided by requests (StorageSpec.shared_by), not max-min by bytes:
    # `inf2sim.des.disks.DiskShare` sets its flows' rates, its channels never bind
    by_requests: bool = False

    @property
    def is_media(self) -> bool:
        return bool(self.curve_req_bytes)

    def gbps(self, direction: str, req_bytes: float = 0.0) -> float:
        """Capacity in one direction; for media links at a request size (bytes),
        interpolated in log(request size) and clamped at the curve's ends."""
        if not self.is_media:
            return self.up_gbps if direction == "up" else self.down_gbps
        ys = self.curve_up_gbps if direction == "up" else self.curve_down_gbps
        if req_bytes <= 0:
            return float(ys[-1])
        return float(np.interp(np.log(req_bytes), np.log(self.curve_req_bytes), ys))


@dataclass
class Topology:
    """A tree: parent[node] and the link from node to its parent (named `node`)."""

    parent: Dict[str, Optional[str]] = field(default_factory=dict)
    links: Dict[str, Link] = field(default_factory=dict)
    shared: Dict[str, str] = field(default_factory=dict)  # media link -> the shared-disk link it also crosses
    duplex: Dict[str, str] = field(default_factory=dict)  # link -> its both-directions link (LinkSpec.duplex_gbps)
    _paths: Dict[Tuple[str, str], Tuple[Tuple[str, str], ...]] = field(default_factory=dict, repr=False)

    def add(self, node: str, parent: Optional[str], link: Optional[Link] = None) -> None:
        self.parent[node] = parent
        if parent is not None:
            assert link is not None and link.name == node
            self.links[node] = link

    def ancestors(self, node: str) -> List[str]:
        out = [node]
        while self.parent[out[-1]] is not None:
            out.append(self.parent[out[-1]])  # type: ignore[arg-type]
        return out

    def path(self, src: str, dst: str) -> Tuple[Tuple[str, str], ...]:
        """(link name, direction) pairs a flow from node src to node dst crosses."""
        key = (src, dst)
        if key not in self._paths:
            if src not in self.parent or dst not in self.parent:
                raise KeyError(f"unknown node {src if src not in self.parent else dst}")
            a, b = self.ancestors(src), self.ancestors(dst)
            common = next(n for n in a if n in set(b))
            up = [(n, "up") for n in a[: a.index(common)]]
            down = [(n, "down") for n in reversed(b[: b.index(common)])]
            hops = up + down
            hops += [(self.shared[n], d) for n, d in hops if n in self.shared]
            hops += [(self.duplex[n], "up") for n, _ in hops if n in self.duplex]  # one channel for both directions
            self._paths[key] = tuple(hops)
        return self._paths[key]

    def latency_s(self, src: str, dst: str) -> float:
        return sum(self.links[l].latency_us for l, _ in self.path(src, dst)) * 1e-6


def _link(name: str, spec: LinkSpec) -> Link:
    return Link(name, spec.up_gbps, spec.down_gbps, spec.latency_us)


def _media(name: str, s: StorageSpec, shared: bool = False) -> Link:
    rd, wr = (s.shared_read_gbps, s.shared_write_gbps) if shared else (s.read_gbps, s.write_gbps)
    if not (len(s.req_kib) == len(rd) == len(wr)) or not s.req_kib:
        what = "shared_read_gbps, shared_write_gbps" if shared else "read_gbps, write_gbps"
        raise ValueError(f"storage curve for {name}: req_kib, {what} must be non-empty and equally long")
    return Link(
        name,
        max(rd),
        max(wr),
        0.0,
        tuple(k * 1024.0 for k in s.req_kib),
        tuple(float(x) for x in rd),
        tuple(float(x) for x in wr),
        shared and s.shared_by == "requests",
    )


def _share_disk(t: Topology, pool: str, spec: StorageSpec, media: List[str]) -> None:
    """Route every flow over `media` links also through one shared-disk link (module docstring)."""
    if spec.shared_read_gbps or spec.shared_write_gbps:
        t.add(pool, "rc", _media(pool, spec, shared=True))
        t.shared.update({m: pool for m in media})


def _duplex(t: Topology, name: str, spec: LinkSpec) -> None:
    """A link whose two directions together carry less than up + down: every flow over it,
    either way, also crosses `<name>_duplex` (one channel of `spec.duplex_gbps`), so flows in
    both directions at once share that capacity max-min fairly."""
    if spec.duplex_gbps > 0:
        t.add(f"{name}_duplex", "rc", Link(f"{name}_duplex", spec.duplex_gbps, spec.duplex_gbps, 0.0))
        t.duplex[name] = f"{name}_duplex"


def endpoint_node(endpoint: str) -> str:
    """Map a plan memory endpoint to the tree node a flow starts/ends at."""
    if endpoint.endswith(".ssd"):
        return endpoint[: -len(".ssd")] + ".nand"
    if endpoint.startswith("ssd") and "." not in endpoint and endpoint != "ssd_sw":
        return endpoint + ".nand"
    return endpoint


def build_topology(hw: HardwareProfile) -> Topology:
    t = Topology()
    t.add("rc", None)
    t.add("dram", "rc", _link("dram", hw.host.dram))
    t.add("gpu", "rc", _link("gpu", hw.gpu.link))
    _duplex(t, "gpu", hw.gpu.link)
    if hw.ssd_count > 0:
        t.add("ssd_sw", "rc", _link("ssd_sw", hw.ssd_uplink))
        for i in range(hw.ssd_count):
            t.add(f"ssd{i}", "ssd_sw", _link(f"ssd{i}", hw.ssd.link))
            t.add(f"ssd{i}.nand", f"ssd{i}", _media(f"ssd{i}.nand", hw.ssd))
        _share_disk(t, "ssd_disk", hw.ssd, [f"ssd{i}.nand" for i in range(hw.ssd_count)])
    if hw.csd_count > 0:
        ch = hw.chassis
        t.add("chassis", "rc", _link("chassis", ch.uplink))
        for i in range(hw.csd_count):
            port = f"port{i // ch.csds_per_port}"
            if port not in t.parent:
                t.add(port, "chassis", _link(port, ch.port))
            t.add(f"csd{i}", port, _link(f"csd{i}", hw.csd.host_link))
            t.add(f"csd{i}.nand", f"csd{i}", _media(f"csd{i}.nand", hw.csd.ssd))
            t.add(f"csd{i}.fpga", f"csd{i}", _link(f"csd{i}.fpga", hw.csd.internal_link))
        _share_disk(t, "csd_disk", hw.csd.ssd, [f"csd{i}.nand" for i in range(hw.csd_count)])
    return t
