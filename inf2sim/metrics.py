"""Run metrics from spans: what `metrics.json` holds, for simulated and real runs alike.

Called by `inf2sim.simulate` (DES spans) and `inf2hw.run` (measured spans). Times in
seconds, bytes in bytes, throughput in tokens/s with FlexGen's conventions:
prefill_tok_s = batch * prompt_len / prefill_s (input tokens), decode_tok_s =
batch * (gen_len - 1) / decode_s, total_tok_s = batch * gen_len / (prefill_s + decode_s).

kv_io_share: the share of decode time during which at least one KV transfer
(`what` in kv, kv_new, including spills) is in flight — the "time spent on KV I/O"
of the motivation study.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .plan import Span

KV_WHATS = ("kv", "kv_new")


@dataclass
class Metrics:
    status: str = "ok"
    policy: str = ""
    oom: Optional[str] = None
    throughput: Dict[str, float] = field(default_factory=dict)
    time_s: Dict[str, float] = field(default_factory=dict)
    bytes: Dict[str, float] = field(default_factory=dict)
    busy_frac: Dict[str, float] = field(default_factory=dict)
    kv_io_share: float = 0.0
    bound_tok_s: Optional[float] = None
    bottleneck: Optional[str] = None
    efficiency: Optional[float] = None
    alpha: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))


def throughput(batch: int, prompt_len: int, gen_len: int, prefill_s: float, decode_s: float) -> Dict[str, float]:
    def rate(n: float, t: float) -> float:
        return n / t if t > 0 else 0.0

    return {
        "prefill_tok_s": rate(batch * prompt_len, prefill_s),
        "decode_tok_s": rate(batch * (gen_len - 1), decode_s),
        "total_tok_s": rate(batch * gen_len, prefill_s + decode_s),
    }


def union_length(intervals: Iterable[Tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def kv_io_share(spans: List[Span], decode_window: Tuple[float, float]) -> float:
    t0, t1 = decode_window
    if t1 <= t0:
        return 0.0
    iv = [(max(s.start_s, t0), min(s.end_s, t1)) for s in spans
          if s.what in KV_WHATS and s.step >= 1 and s.end_s > t0 and s.start_s < t1]
    return union_length(iv) / (t1 - t0)


def busy_by_resource(spans: List[Span]) -> Dict[str, float]:
    """Busy seconds per compute resource (union of its spans' intervals)."""
    by: Dict[str, List[Tuple[float, float]]] = {}
    for s in spans:
        if "->" not in s.resource:
            by.setdefault(s.resource, []).append((s.start_s, s.end_s))
    return {r: union_length(v) for r, v in by.items()}


def fill_span_metrics(m: "Metrics", spans: List[Span], prefill_s: float, end_s: float,
                      extra_busy: Optional[Dict[str, float]] = None) -> None:
    """The span-derived fields both backends report: busy_frac per resource (compute
    devices from their spans, plus `extra_busy` seconds, e.g. links) and kv_io_share."""
    busy = busy_by_resource(spans)
    busy.update(extra_busy or {})
    m.busy_frac = {r: min(1.0, v / end_s) if end_s > 0 else 0.0 for r, v in sorted(busy.items())}
    m.kv_io_share = kv_io_share(spans, (prefill_s, end_s))


def link_bytes(transfers: Iterable[Tuple[str, str, float]], topo) -> Dict[str, float]:
    """Bytes per link (both directions) of (src endpoint, dst endpoint, nbytes) moves,
    routed over the PCIe tree: the same accounting the DES keeps, for measured runs."""
    from .topology import endpoint_node

    out: Dict[str, float] = {}
    for src, dst, n in transfers:
        a, b = endpoint_node(src), endpoint_node(dst)
        if a == b or n <= 0 or a not in topo.parent or b not in topo.parent:
            continue
        for link, _ in topo.path(a, b):
            out[link] = out.get(link, 0.0) + n
    return dict(sorted(out.items()))


def write_chrome_trace(spans: List[Span], path: Path, max_step: Optional[int] = None) -> int:
    """Chrome trace JSON (opens in Perfetto / chrome://tracing): one complete event
    per span, one process per resource kind, one thread per resource. Returns count."""
    pids: Dict[str, int] = {}
    tids: Dict[str, int] = {}
    events = []
    for s in spans:
        if max_step is not None and s.step > max_step:
            continue
        group = "transfers" if "->" in s.resource else s.resource.split(".")[0].rstrip("0123456789") or s.resource
        pid = pids.setdefault(group, len(pids) + 1)
        tid = tids.setdefault(s.resource, len(tids) + 1)
        events.append({
            "name": s.name, "cat": s.kind, "ph": "X", "pid": pid, "tid": tid,
            "ts": s.start_s * 1e6, "dur": max(s.end_s - s.start_s, 0.0) * 1e6,
            "args": {"what": s.what, "step": s.step, "layer": s.layer, "nbytes": s.nbytes},
        })
    meta = [{"name": "process_name", "ph": "M", "pid": p, "args": {"name": g}} for g, p in pids.items()]
    meta += [{"name": "thread_name", "ph": "M", "pid": 0, "tid": t, "args": {"name": r}} for r, t in tids.items()]
    for m in meta:
        if m["name"] == "thread_name":
            r = m["args"]["name"]
            m["pid"] = pids["transfers" if "->" in r else r.split(".")[0].rstrip("0123456789") or r]
    Path(path).write_text(json.dumps({"traceEvents": meta + events, "displayTimeUnit": "ms"}))
    return len(events)


def read_chrome_trace(path: Path) -> List[Span]:
    """Spans back from a trace written by `write_chrome_trace` (for comparisons)."""
    data = json.loads(Path(path).read_text())
    names = {}
    for e in data["traceEvents"]:
        if e.get("ph") == "M" and e["name"] == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
    out = []
    for e in data["traceEvents"]:
        if e.get("ph") != "X":
            continue
        a = e["args"]
        out.append(Span(e["name"], e["cat"], a["what"], names.get((e["pid"], e["tid"]), ""), a["step"], a["layer"],
                        e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6, a.get("nbytes", 0)))
    return out
