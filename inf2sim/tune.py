"""Policy search: tune a run's knobs on the analytic model, confirm with the DES.

Called by `inf2 tune` / `inf2 mode=tune` (`inf2sim.cli` -> `tune_cli(cfg, out_dir)`)
and from Python:

    from inf2sim.simulate import resolve
    from inf2sim.tune import tune
    r = tune(resolve(None, model="opt-6.7b", policy="inf2"))
    r.best.des_tok_s, r.overlay()      # tok/s of the chosen policy, "policy.wb.c=4 ..."

What is searched (only the knobs the policy's plan builder reads; `knobs=` narrows):
  weights         policy.weights: GPU share = the largest that fits GPU memory
                  (scipy brentq on the memory slack, which is linear in the share);
                  storage share 0 (storage-resident weights are staged through host
                  DRAM in the memory model, so they never free memory)
  micro_batches   workload.num_micro_batches: divisors of the batch (<= max_micro_batches)
  wb              policy.wb.c in 1, 2, 4, .., 32 (<= gen_len) x policy.wb.variant v1 | v2
  partition       policy.partition rows | sequence (attention on the CSDs only)
  alpha           policy.xcache.alpha: scipy minimize_scalar (bounded) over [0, a_max]
                  on the grid k / micro_batch that the layout realises (a_max: the
                  largest share that fits memory), polished on the grid neighbours,
                  plus the 'auto' and 'budget' rules
Blocks are optimised in turn (block-coordinate ascent, a block's choices enumerated
jointly) until a pass changes nothing. The objective is `cost.bound` total tok/s (an
upper bound, ~0.1 s an evaluation). The `top_k` best distinct plans and the start
are then timed by the DES (`simulate_spec`, sim.fidelity=fast, no trace); the DES-best
is returned if it beats the start by more than `min_gain` (MIN_GAIN by default: a
predicted gain inside the DES's own error band is no reason to leave the start; on the
H100 a predicted +0.6 % for alpha 1 -> 31/32 measured -23 %, because the CSD path it
switches on costs more per layer than the DES charges, BENCHMARKS.md sessions 9 and 10),
else the start. Ties within TIE_REL keep the setting with fewer changes. Throughput in
tokens/s, times in seconds.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import RunSpec
from .registry import get_policy
from .specs import SpecError, validate

KNOBS = ("weights", "micro_batches", "wb", "partition", "alpha")
C_CHOICES = (1, 2, 4, 8, 16, 32)
TIE_REL = 1e-3  # analytic scores this close count as equal
MIN_GAIN = 0.05  # the DES-best must beat the start by more than this to be chosen (see the module docstring)
W_KEYS = ("policy.weights.gpu", "policy.weights.host", "policy.weights.storage")
KEYS = W_KEYS + ("workload.num_micro_batches", "policy.wb.c", "policy.wb.variant", "policy.partition",
                 "policy.xcache.alpha")
Settings = Dict[str, Any]


# ------------------------------------------------------------------ settings
def _get(obj, key: str):
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, path: List[str], value):
    head, *rest = path
    return replace(obj, **{head: _set(getattr(obj, head), rest, value) if rest else value})


def apply(spec: RunSpec, settings: Settings) -> RunSpec:
    """`spec` with dotted-key `settings` replaced; raises SpecError if invalid."""
    for k, v in settings.items():
        spec = _set(spec, k.split("."), v)
    validate(spec.model, spec.workload, spec.hardware, spec.policy)
    return spec


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        s = f"{v:.6g}"
        return s if any(ch in s for ch in ".e") else s + ".0"
    return str(v)


def overlay_of(start: Settings, chosen: Settings) -> str:
    """Command-line overrides turning `start` into `chosen` (all three weight shares
    when any changes, since they must sum to 1)."""
    changed = [k for k in KEYS if chosen[k] != start[k]]
    if any(k in W_KEYS for k in changed):
        changed = list(W_KEYS) + [k for k in changed if k not in W_KEYS]
    return " ".join(f"{k}={_fmt(chosen[k])}" for k in changed)


def applicable_knobs(spec: RunSpec) -> List[str]:
    cls = get_policy(spec.policy.name)
    attention_on = getattr(cls, "attention_on", "") or spec.policy.attention_on
    out = ["weights", "micro_batches"]
    if getattr(cls, "write_back", False):
        out.append("wb")
    if attention_on == "csd":
        out.append("partition")
    if getattr(cls, "x_cache", False):
        out.append("alpha")
    return out


# ------------------------------------------------------------------- results
@dataclass
class Candidate:
    settings: Settings
    changes: str  # the overlay from the start ("" for the start itself)
    analytic_tok_s: float
    bottleneck: str = ""
    des_tok_s: Optional[float] = None
    des_status: str = ""
    is_start: bool = False

    @property
    def des_over_analytic(self) -> Optional[float]:
        return self.des_tok_s / self.analytic_tok_s if self.des_tok_s and self.analytic_tok_s else None


@dataclass
class TuneResult:
    start: Candidate
    best: Candidate
    confirmed: List[Candidate]  # the start, then the top_k in analytic order (the search's choice first)
    spec: RunSpec = field(repr=False)  # the chosen run (the caller's sim options)
    knobs: List[str] = field(default_factory=list)
    analytic_evals: int = 0
    search_s: float = 0.0
    confirm_s: float = 0.0
    rank_spearman: Optional[float] = None  # analytic vs DES order over the confirmed runs
    analytic_pick_confirmed: bool = False  # the search's choice is DES-best (within TIE_REL)
    errors: List[str] = field(default_factory=list)  # settings a plan builder failed on

    def overlay(self) -> str:
        return self.best.changes

    @property
    def speedup(self) -> Optional[float]:
        s, b = self.start.des_tok_s, self.best.des_tok_s
        return b / s if s and b else None

    def to_dict(self) -> Dict[str, Any]:
        """What tune.json holds: every field but `spec`, plus the overlay and the speedup."""
        cand = lambda c: {**asdict(c), "des_over_analytic": c.des_over_analytic}  # noqa: E731
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}
        out.update(start=cand(self.start), best=cand(self.best), confirmed=[cand(c) for c in self.confirmed])
        return {**out, "overlay": self.overlay(), "speedup": self.speedup}


# ------------------------------------------------------------------ analytic
class _Analytic:
    """Cached `cost.bound` throughput of settings; 0 for invalid or oom runs."""

    def __init__(self, spec: RunSpec, start: Settings, windows: int, bar):
        self.spec, self.start, self.windows, self.bar = spec, start, windows, bar
        self.cache: Dict[Tuple, Tuple[float, str, Any]] = {}
        self.errors: List[str] = []  # settings a plan builder failed on (scored 0), for the report

    def builder(self, s: Settings):
        sp = apply(self.spec, s)
        return sp, get_policy(sp.policy.name)(sp.model, sp.workload, sp.hardware, sp.policy)

    def fits(self, s: Settings) -> bool:
        try:
            return self.builder(s)[1].oom() is None
        except SpecError:
            return False

    def entry(self, s: Settings) -> Tuple[float, str, Any]:
        key = tuple(s[k] for k in KEYS)
        if key not in self.cache:
            from .cost import bound

            try:
                sp, b = self.builder(s)
                eff = (b.layout, sp.policy.wb.variant, tuple(s[k] for k in W_KEYS))
                if b.oom():
                    self.cache[key] = (0.0, "oom", eff)
                else:
                    r = bound(sp, b, windows=self.windows)
                    self.cache[key] = (r.total_tok_s, r.bottleneck, eff)
            except SpecError:
                self.cache[key] = (0.0, "invalid", key)
            except Exception as e:  # a builder bug on a corner setting must not end the search
                self.cache[key] = (0.0, "error", key)
                self.errors.append(f"{overlay_of(self.start, s) or '(start)'}: {type(e).__name__}: {e}")
            self.bar.update(1)
        return self.cache[key]

    def score(self, s: Settings) -> float:
        return self.entry(s)[0]

    def pref(self, s: Settings) -> Tuple[int, int]:
        """Tie-break: fewer changes from the start, then fewer micro-batches."""
        return sum(s[k] != self.start[k] for k in KEYS), s["workload.num_micro_batches"]

    def choose(self, cur: Settings, cands: List[Settings]) -> Settings:
        scored = [(self.score(s), s) for s in cands]
        top = max((sc for sc, _ in scored), default=0.0)
        if top <= self.score(cur) * (1 + TIE_REL):
            return cur
        return min((s for sc, s in scored if sc >= top * (1 - TIE_REL)), key=self.pref)


def _gpu_weight_max(an: _Analytic, cur: Settings) -> float:
    """Largest GPU weight share (storage 0) that fits GPU memory, to 0.01."""
    from scipy.optimize import brentq

    def slack(g: float) -> float:
        s = {**cur, "policy.weights.gpu": g, "policy.weights.host": 1.0 - g, "policy.weights.storage": 0.0}
        need, have = an.builder(s)[1].memory_needs()["gpu"]
        return have - need

    try:
        if slack(1.0) >= 0:
            return 1.0
        if slack(0.0) < 0:
            return 0.0
        return math.floor(brentq(slack, 0.0, 1.0, xtol=1e-4) * 100) / 100
    except SpecError:
        return 0.0


def _block(an: _Analytic, knob: str, cur: Settings, max_mb: int) -> List[Settings]:
    """Candidate settings for one knob block around `cur`."""
    spec = an.spec
    if knob == "weights":
        out = []
        for g in sorted({0.0, _gpu_weight_max(an, cur), cur["policy.weights.gpu"]}):
            out.append({**cur, "policy.weights.gpu": g, "policy.weights.host": round(1.0 - g, 6),
                        "policy.weights.storage": 0.0})
        return out
    if knob == "micro_batches":
        b = spec.workload.batch
        return [{**cur, "workload.num_micro_batches": d} for d in range(1, min(b, max_mb) + 1) if b % d == 0]
    if knob == "wb":
        cs = sorted({c for c in C_CHOICES if c <= max(1, spec.workload.gen_len)} | {cur["policy.wb.c"]})
        return [{**cur, "policy.wb.c": c, "policy.wb.variant": v} for c in cs for v in ("v1", "v2")]
    if knob == "partition":
        return [{**cur, "policy.partition": p} for p in ("rows", "sequence")]
    return _alpha_block(an, cur)


def _alpha_block(an: _Analytic, cur: Settings) -> List[Settings]:
    from scipy.optimize import minimize_scalar

    mb = an.spec.workload.batch // cur["workload.num_micro_batches"]
    at = lambda k: {**cur, "policy.xcache.alpha": k / mb}  # noqa: E731
    lo, hi = 0, mb  # the largest k that fits memory (X grows with k)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if an.fits(at(mid)) else (lo, mid - 1)
    k_max = lo
    out = [cur, at(0), at(k_max)] + [{**cur, "policy.xcache.alpha": a} for a in ("auto", "budget")]
    if k_max > 1:
        res = minimize_scalar(lambda a: -an.score(at(round(a * mb))), bounds=(0.0, k_max / mb), method="bounded",
                              options={"xatol": 0.5 / mb})
        k = int(round(res.x * mb))
        out += [at(j) for j in (k - 1, k, k + 1) if 0 <= j <= k_max]
    return out


def _search(an: _Analytic, knobs: List[str], max_mb: int, max_passes: int) -> Settings:
    cur = dict(an.start)
    for _ in range(max_passes):
        before = dict(cur)
        for knob in knobs:
            cur = an.choose(cur, _block(an, knob, cur, max_mb))
        if cur == before:
            break
    return cur


def _top(an: _Analytic, k: int, chosen: Settings) -> List[Settings]:
    """The k best distinct plans the search evaluated, the search's `chosen` first
    (the start's plan is not among them: it is confirmed anyway)."""
    start_eff = an.entry(an.start)[2]
    rows = [(dict(zip(KEYS, key)), sc, eff) for key, (sc, _, eff) in an.cache.items() if sc > 0 and eff != start_eff]
    rows.sort(key=lambda r: -r[1])
    groups: List[list] = []  # runs of scores within TIE_REL of the run's leader
    for r in rows:
        if groups and r[1] >= groups[-1][0][1] * (1 - TIE_REL):
            groups[-1].append(r)
        else:
            groups.append([r])
    out: List[Settings] = []
    seen = {start_eff}
    ranked = [(s, sc, eff) for g in groups for s, sc, eff in sorted(g, key=lambda r: an.pref(r[0]))]
    for s, _, eff in [(chosen, 0.0, an.entry(chosen)[2])] + ranked:
        if eff not in seen and len(out) < k:
            seen.add(eff)
            out.append(s)
    return out


# ----------------------------------------------------------------------- API
def tune(spec: RunSpec, knobs: Optional[Sequence[str]] = None, top_k: int = 3, *, progress: bool = False,
         max_micro_batches: int = 8, windows: int = 3, max_passes: int = 3, min_gain: float = MIN_GAIN) -> TuneResult:
    """Search `knobs` (default: every one the policy reads) on the analytic bound,
    DES-confirm the `top_k` best and the start, return the DES-best if it beats the start
    by more than `min_gain` (a fraction), else the start."""
    from .simulate import simulate_spec

    if any(k not in KNOBS for k in knobs or ()):
        raise SpecError(f"tune knobs {list(knobs)} are not all known; choose from {', '.join(KNOBS)}")
    if not min_gain >= 0:  # (NaN too)
        raise SpecError(f"tune.min_gain={min_gain!r} is not allowed; give a fraction >= 0 (0.05 = 5 %)")
    usable = [k for k in applicable_knobs(spec) if knobs is None or k in knobs]
    start = {k: _get(spec, k) for k in KEYS}
    bar = _progress(progress)
    an = _Analytic(spec, start, windows, bar)
    t0 = time.perf_counter()
    chosen = _search(an, usable, max_micro_batches, max_passes)
    picks = _top(an, top_k, chosen)
    t1 = time.perf_counter()
    fast = replace(spec.sim, fidelity="fast", trace=False)
    confirmed: List[Candidate] = []
    for s in [start] + picks:
        sc, neck, _ = an.entry(s)
        c = Candidate(s, overlay_of(start, s), sc, neck, is_start=s is start)
        m = simulate_spec(replace(apply(spec, s), sim=fast))
        c.des_status = m.status
        c.des_tok_s = m.throughput.get("total_tok_s") if m.status == "ok" else None
        confirmed.append(c)
        bar.update(1)
    bar.close()
    first, timed = confirmed[0], [c for c in confirmed[1:] if c.des_tok_s]
    best = first
    if timed:  # the earliest (analytic order) of the DES-best within TIE_REL, if it beats the start
        top = max(c.des_tok_s for c in timed)
        pick = next(c for c in timed if c.des_tok_s >= top * (1 - TIE_REL))
        if not first.des_tok_s or pick.des_tok_s > first.des_tok_s * (1 + max(TIE_REL, min_gain)):
            best = pick
    analytic = confirmed[1] if len(confirmed) > 1 and confirmed[1].settings is chosen else first
    top_des = max((c.des_tok_s or 0.0 for c in confirmed), default=0.0)
    agrees = bool(analytic.des_tok_s) and analytic.des_tok_s >= top_des * (1 - TIE_REL)
    return TuneResult(first, best, confirmed, apply(spec, best.settings), usable, len(an.cache), t1 - t0,
                      time.perf_counter() - t1, _spearman(confirmed), agrees, an.errors)


def _spearman(cands: List[Candidate]) -> Optional[float]:
    from scipy.stats import spearmanr

    ok = [c for c in cands if c.des_tok_s]
    if len(ok) < 3:
        return None
    rho = spearmanr([c.analytic_tok_s for c in ok], [c.des_tok_s for c in ok]).statistic
    return None if rho != rho else float(rho)  # NaN when either side is constant


def _progress(show: bool):
    from tqdm import tqdm  # shown only after 2 s, so quick searches stay quiet

    return tqdm(desc="tuning (analytic evals, then DES runs)", unit="run", delay=2.0, leave=False, disable=not show)


# ----------------------------------------------------------------------- CLI
def _table(r: TuneResult) -> str:
    head = f"{'run':<6} {'analytic_tok_s':>14} {'des_tok_s':>10} {'des/analytic':>12}  changes"
    lines = [head, "-" * len(head)]
    for i, c in enumerate(r.confirmed):
        tag = "start" if c.is_start else f"#{i}"
        tag += "*" if c is r.best else ""
        des = f"{c.des_tok_s:.2f}" if c.des_tok_s else c.des_status
        ratio = f"{c.des_over_analytic:.3f}" if c.des_over_analytic else "-"
        lines.append(f"{tag:<6} {c.analytic_tok_s:>14.2f} {des:>10} {ratio:>12}  {c.changes or '(start)'}")
    return "\n".join(lines)


def _user_overrides(overlay: str) -> List[str]:
    """The user's own command-line overrides (for the printed command), minus mode,
    hydra.* and keys the overlay sets."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except Exception:  # not under Hydra (called from Python)
        return []
    mine = {kv.split("=", 1)[0] for kv in overlay.split()}
    return [a for a in task if (k := a.split("=", 1)[0].lstrip("+~")) != "mode" and not k.startswith("hydra.")
            and k not in mine]


def tune_cli(cfg, out_dir) -> TuneResult:
    """`inf2 tune`: resolve `cfg`, tune, print the table and the overlay, write tune.json."""
    from .simulate import resolve

    spec = resolve(cfg)
    wl, hw = spec.workload, spec.hardware
    print(f"tuning {spec.policy.name} on {spec.model.name}  batch={wl.batch} prompt={wl.prompt_len} "
          f"gen={wl.gen_len}  hardware={hw.name} csds={hw.csd_count} ssds={hw.ssd_count}")
    r = tune(spec, progress=True, min_gain=float(cfg.get("tune", {}).get("min_gain", MIN_GAIN)))
    print(f"knobs: {', '.join(r.knobs)}  analytic evals: {r.analytic_evals} ({r.search_s:.1f} s)  "
          f"DES runs: {len(r.confirmed)} ({r.confirm_s:.1f} s, fidelity=fast)")
    print(_table(r))
    rho = "n/a" if r.rank_spearman is None else f"{r.rank_spearman:.2f}"
    print(f"rank agreement (Spearman, analytic vs DES): {rho}; analytic pick confirmed by DES: "
          f"{'yes' if r.analytic_pick_confirmed else 'no'}")
    if r.speedup is not None:
        print(f"chosen: {r.best.des_tok_s:.2f} tok/s vs start {r.start.des_tok_s:.2f} tok/s ({r.speedup:.2f}x, DES fast)")
    for e in r.errors[:3]:
        print(f"skipped (plan builder failed): {e}")
    ov = r.overlay()
    print(f"overlay: {ov}" if ov else "overlay: (none: nothing found beats the starting policy by more than "
          "tune.min_gain)")
    print("command: " + " ".join(["inf2", *_user_overrides(ov), *ov.split()]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(r.to_dict(), indent=2, default=str))
    print(f"outputs: {out}")
    return r
