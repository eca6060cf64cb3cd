"""Derived metrics of the reproduction studies: system price, energy, SSD endurance,
and reading a Hydra multirun back into rows.

Called by `experiments/<study>/plot.py` after `inf2 -m +experiment=<study>` and by
tests/test_experiments.py. Every input is a run's `metrics.json` (Metrics.to_dict())
and the profile data it carries in `config` (hardware prices, powers, endurance):
no number here is a result, and no hardware value lives in this file. Definitions
are written out in docs/metrics.md.

Only `storage_writes` touches the scheduler: it *builds* (never simulates) the
plan's prefill and one write-back period to count the bytes each run writes to
flash, so endurance follows the same plans the simulator times.

Units: USD, joules, seconds, bytes (10^15 bytes = 1 PB).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

SECONDS_PER_YEAR = 365.0 * 24 * 3600


# ------------------------------------------------------------------ multirun I/O
def latest_sweep(root: Path) -> Path:
    """The newest sweep folder under `root` (names are timestamps, so they sort)."""
    dirs = sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
    if not dirs:
        raise FileNotFoundError(f"no sweep under {root}: run the study's `inf2 -m +experiment=...` first")
    return dirs[-1]


def _overrides(job_dir: Path) -> Dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    out = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)) or []:
        key, _, val = str(item).partition("=")
        out[key.lstrip("+~")] = val
    return out


def load_runs(sweep_dir: Path, with_config: bool = False) -> List[Dict[str, Any]]:
    """Every job of a multirun: {"job": n, "overrides": {key: value}, "metrics": dict}
    (+ "config": the job's composed config, for study-level keys such as
    `endurance`, when `with_config`), in job-number order. Jobs without
    metrics.json (crashed) are skipped."""
    from omegaconf import OmegaConf

    runs = []
    for d in Path(sweep_dir).iterdir():
        if d.is_dir() and d.name.isdigit() and (d / "metrics.json").exists():
            run = {"job": int(d.name), "overrides": _overrides(d),
                   "metrics": json.loads((d / "metrics.json").read_text())}
            if with_config:
                run["config"] = OmegaConf.to_container(OmegaConf.load(d / ".hydra" / "config.yaml"))
            runs.append(run)
    return sorted(runs, key=lambda r: r["job"])


def base_row(run: Mapping[str, Any]) -> Dict[str, Any]:
    """The columns every study's CSV starts with."""
    m = run["metrics"]
    cfg = m.get("config", {})
    wl, hw, pol = cfg.get("workload", {}), cfg.get("hardware", {}), cfg.get("policy", {})
    tp = m.get("throughput", {})
    return {
        "system": run["overrides"].get("experiment/system", pol.get("name", m.get("policy", ""))),
        "policy": m.get("policy", ""),
        "model": cfg.get("model", {}).get("name", ""),
        "hardware": hw.get("name", ""),
        "batch": wl.get("batch"),
        "prompt_len": wl.get("prompt_len"),
        "gen_len": wl.get("gen_len"),
        "csd_count": hw.get("csd_count"),
        "ssd_count": hw.get("ssd_count"),
        "status": m.get("status"),
        "alpha": m.get("alpha"),
        "total_tok_s": tp.get("total_tok_s"),
        "decode_tok_s": tp.get("decode_tok_s"),
        "prefill_tok_s": tp.get("prefill_tok_s"),
        "prefill_s": m.get("time_s", {}).get("prefill"),
        "decode_s": m.get("time_s", {}).get("decode"),
        "kv_io_share": m.get("kv_io_share") if m.get("status") == "ok" else None,
        "bound_tok_s": m.get("bound_tok_s"),
        "bottleneck": m.get("bottleneck") if m.get("status") == "ok" else m.get("oom"),
        "fidelity": cfg.get("sim", {}).get("fidelity"),
    }


def write_csv(rows: List[Dict[str, Any]], path: Path) -> None:
    """Rows to CSV (columns in first-seen order; floats to 6 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()})


def read_csv(path: Path) -> List[Dict[str, Any]]:
    """CSV rows back, numbers as floats (empty cells as None)."""
    def cast(v: str):
        if v == "":
            return None
        try:
            return float(v)
        except ValueError:
            return v

    with Path(path).open() as f:
        return [{k: cast(v) for k, v in r.items()} for r in csv.DictReader(f)]


# ------------------------------------------------------------------------ price
def uses_ssds(cfg: Mapping[str, Any]) -> bool:
    pol, hw = cfg["policy"], cfg["hardware"]
    weights_on_ssd = pol.get("weights", {}).get("storage", 0) > 0 and hw.get("ssd_count", 0) > 0
    return pol.get("kv_on") == "ssd" or weights_on_ssd


def uses_csds(cfg: Mapping[str, Any]) -> bool:
    pol, hw = cfg["policy"], cfg["hardware"]
    weights_on_csd = pol.get("weights", {}).get("storage", 0) > 0 and hw.get("ssd_count", 0) == 0
    return pol.get("kv_on") == "csd" or weights_on_csd


def system_parts_usd(cfg: Mapping[str, Any]) -> Dict[str, float]:
    """Price of what a run's policy uses: the server (host) and GPU always; the
    conventional SSDs if KV (or weights) live on them; the expansion chassis and
    the CSDs if anything lives on the CSDs. Prices are the profile's `*.price_usd`."""
    hw = cfg["hardware"]
    parts = {"server": float(hw["host"]["price_usd"])}
    if hw.get("has_gpu", True):
        parts["gpu"] = float(hw["gpu"]["price_usd"])
    if uses_ssds(cfg):
        parts["ssds"] = hw["ssd_count"] * float(hw["ssd"]["price_usd"])
    if uses_csds(cfg):
        parts["chassis"] = float(hw["chassis"]["price_usd"])
        parts["csds"] = hw["csd_count"] * float(hw["csd"]["price_usd"])
    return parts


def system_price_usd(cfg: Mapping[str, Any]) -> float:
    return sum(system_parts_usd(cfg).values())


def tok_s_per_kusd(m: Mapping[str, Any], which: str = "total_tok_s") -> Optional[float]:
    """Throughput per 1,000 USD of system price (None if the run did not finish)."""
    if m.get("status") != "ok":
        return None
    return m["throughput"][which] / system_price_usd(m["config"]) * 1e3


# ----------------------------------------------------------------------- energy
def busy_seconds(m: Mapping[str, Any]) -> Dict[str, float]:
    """Busy seconds per resource over the whole run: busy_frac (measured over the
    simulated steps) x total time. Exact at sim.fidelity=full; at fast the sampled
    steps stand for the rest (docs/metrics.md)."""
    total = m.get("time_s", {}).get("total", 0.0)
    return {r: f * total for r, f in m.get("busy_frac", {}).items()}


def energy_breakdown_j(m: Mapping[str, Any]) -> Dict[str, float]:
    """Joules per component: each device's power x its busy seconds, plus the
    rest-of-server power for the whole run. A CSD card (FPGA + its flash, one power
    figure) counts as busy while either part is (the larger busy time)."""
    hw = m["config"]["hardware"]
    busy = busy_seconds(m)
    total = m.get("time_s", {}).get("total", 0.0)
    e = {"gpu": hw["gpu"]["power_w"] * busy.get("gpu", 0.0),
         "cpu": hw["cpu"]["power_w"] * busy.get("cpu", 0.0),
         "host_static": hw["host"]["power_w"] * total, "ssds": 0.0, "csds": 0.0}
    for i in range(hw.get("ssd_count", 0)):
        e["ssds"] += hw["ssd"]["power_w"] * busy.get(f"link:ssd{i}.nand", 0.0)
    for i in range(hw.get("csd_count", 0)):
        fpga, nand = busy.get(f"csd{i}.fpga", 0.0), busy.get(f"link:csd{i}.nand", 0.0)
        e["csds"] += hw["csd"]["fpga"]["power_w"] * max(fpga, nand) + hw["csd"]["ssd"]["power_w"] * nand
    return e


def joules_per_token(m: Mapping[str, Any]) -> Optional[float]:
    """Energy of the run / generated tokens (batch x gen_len, FlexGen's count)."""
    if m.get("status") != "ok":
        return None
    wl = m["config"]["workload"]
    return sum(energy_breakdown_j(m).values()) / (wl["batch"] * wl["gen_len"])


# -------------------------------------------------------------------- endurance
def _is_storage(endpoint: str) -> bool:
    return endpoint.endswith(".ssd") or (endpoint.startswith("ssd") and "." not in endpoint and endpoint != "ssd_sw")


def _step_writes(step) -> Dict[str, List[tuple]]:
    out: Dict[str, List[tuple]] = {}
    for op in step.ops:
        dst = getattr(op, "dst", "")
        if dst and _is_storage(dst) and getattr(op, "nbytes", 0) > 0:
            out.setdefault(dst, []).append((op.nbytes, op.req_bytes or op.nbytes))
    return out


def storage_writes(cfg: Mapping[str, Any]) -> Dict[str, List[tuple]]:
    """{drive: [(nbytes, request_bytes), ...]} written to flash by one run (all of
    prefill and decode), counted from the plan. Decode writes repeat with the
    write-back period c (a spill follows every step s with s % c == 0; sizes do not
    depend on the context), so only steps 0..c are built; tests check this against
    building every step. With partition=sequence the spill owner rotates, so the
    split over drives is that of the first period (the total is exact)."""
    from .config import specs_from_config
    from .scheduler import build_plan

    spec = specs_from_config(cfg)
    plan, builder = build_plan(spec.model, spec.workload, spec.hardware, spec.policy)
    c = max(1, getattr(builder.layout, "c", 1))
    gen = spec.workload.gen_len
    period = list(range(min(c, gen - 1) + 1))  # the prefill and one write-back period
    per_step = {st.step: _step_writes(st) for st in plan.steps(period)}
    out: Dict[str, List[tuple]] = {}
    for s in range(gen):
        src = 0 if s == 0 else (s - 1) % c + 1
        for drive, ws in per_step[src].items():
            out.setdefault(drive, []).extend(ws)
    return out


def flash_bytes(nbytes: float, req_bytes: float, page_bytes: int) -> float:
    """Bytes programmed to flash for `nbytes` written in requests of `req_bytes`:
    each request programs whole pages (read-modify-write of a partial page)."""
    if req_bytes <= 0 or page_bytes <= 0:
        return float(nbytes)
    return nbytes / req_bytes * math.ceil(req_bytes / page_bytes) * page_bytes


def endurance(m: Mapping[str, Any], page_bytes: int, writes: Optional[Dict[str, List[tuple]]] = None) -> Dict[str, Any]:
    """Bytes written per request (one sequence: prompt_len in, gen_len out) and how
    many such requests the drives the run writes to last before their rated
    endurance, assuming the busiest drive sets the limit. `years` at the run's own
    request rate (batch / total time), running without pause."""
    cfg = m["config"]
    hw, wl = cfg["hardware"], cfg["workload"]
    writes = storage_writes(cfg) if writes is None else writes
    if not writes:
        return {"drives": 0, "written_per_req": 0.0, "flash_per_req": 0.0, "waf": None,
                "requests_before_pbw": None, "years": None}
    per_drive_logical = {d: sum(n for n, _ in ws) for d, ws in writes.items()}
    per_drive_flash = {d: sum(flash_bytes(n, r, page_bytes) for n, r in ws) for d, ws in writes.items()}
    worst = max(per_drive_flash, key=per_drive_flash.get)
    pbw = hw["csd"]["ssd"]["endurance_pbw"] if worst.endswith(".ssd") else hw["ssd"]["endurance_pbw"]
    n_req = wl["batch"]
    requests = pbw * 1e15 / (per_drive_flash[worst] / n_req)
    logical, flash = sum(per_drive_logical.values()), sum(per_drive_flash.values())
    years = None
    if m.get("status") == "ok" and m.get("time_s", {}).get("total"):
        years = requests / (n_req / m["time_s"]["total"]) / SECONDS_PER_YEAR
    return {"drives": len(writes), "written_per_req": logical / n_req, "flash_per_req": flash / n_req,
            "waf": flash / logical if logical else None, "requests_before_pbw": requests, "years": years}


def rows_where(rows: Iterable[Dict[str, Any]], **eq: Any) -> List[Dict[str, Any]]:
    """Rows whose columns equal the given values (numbers compared as floats)."""
    def same(a, b):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return a == b

    return [r for r in rows if all(same(r.get(k), v) for k, v in eq.items())]
