"""`inf2 validate`: run one configuration for real and in the simulator, and compare.

Called by `inf2hw.loop.validate_cli` (mode=validate) and by
experiments/validation/run.py (the acceptance table). `validate_spec` runs the real
engine (`inf2hw.run.run_engine`, backend=emu) and the DES (`inf2sim.simulate.simulate_spec`,
full fidelity, every step traced) on the same `RunSpec` and the same hardware profile
(normally a calibrated one, `inf2 calibrate`), then reports
  - end-to-end error: simulated / measured - 1 of total tokens/s (and prefill, decode);
  - per-op-kind MAPE: ops matched by name (the plan gives both backends the same
    names), kind = (op class, `what`), mean of |sim - measured| / measured over all the
    kind's ops, for kinds whose median measured op lasts at least `floor_ms` (kinds of
    shorter ops are timer and scheduling noise on a Python engine: reported, not
    compared; the share of each kind's measured time in ops under the floor is beside);
    with several engine runs of the config, each op's measured duration is its median over
    the runs (`measured_ops`);
  - one PNG with the two timelines one above the other (same time axis).
Every engine run is bracketed by `inf2hw.speed_probe` (a fixed workload on the host's
cores): with a profile that recorded the probe at calibration (`host.probe_ms`), the DES
runs the host's compute ops at the speed the probes measured around the compared run
(`host.compute_scale`; `probe=False` keeps the profile's), and by `inf2hw.disk_probe` in
the CSDs' directory: the ratio of the probes around the run to the profile's
(`csd.ssd.probe_read_gbps` / `probe_write_gbps`) is recorded (`run_disk`), and with
`disk_probe=True` the emulated CSDs' flash curves are scaled by it (off by default: on both
machines the probe of one run varied 0.5-1.7x before vs after it and the scaling did not
improve the tables, BENCHMARKS.md session 10). The model's bytes are the engine's: `model.dtype_bytes` is set to the engine dtype's
size (fp32 on a CPU = 4) for both runs. A short warm-up run of the engine (prompt <= 32, gen_len=2)
comes first so one-time costs (allocator, first kernels, page faults) do not count.
With `repeat` > 1 the engine runs that many times and the median run (by total
tokens/s) is compared: a typical run, as the calibration's numbers are typical ones (on a
machine shared with other work both then see the same background; the 1-minute load
average before and after is recorded).
Units: seconds, tokens/s; errors as fractions (0.05 = 5 %).
"""
from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from inf2sim.config import RunSpec
from inf2sim.metrics import read_chrome_trace
from inf2sim.plan import Span

from . import disk_probe
from .speed_probe import probe_samples

ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass
class KindError:
    kind: str  # "Class/what"
    ops: int  # matched ops
    compared: int  # ops compared (all of them when the kind's median op reaches the floor, else 0)
    mape: Optional[float]  # over the compared ops (None if none)
    median_ape: Optional[float]
    measured_s: float  # summed measured duration of all matched ops
    simulated_s: float
    below_floor_share: float  # share of measured_s in ops under the floor


@dataclass
class ValidationResult:
    config: str
    measured_tok_s: float
    simulated_tok_s: float
    error: float  # simulated / measured - 1, total tokens/s
    prefill_error: float
    decode_error: float
    kinds: List[KindError] = field(default_factory=list)
    floor_ms: float = 1.0
    png: str = ""
    out_dir: str = ""
    measured: Dict[str, float] = field(default_factory=dict)
    simulated: Dict[str, float] = field(default_factory=dict)
    repeat: int = 1  # engine runs; the median one is compared
    load_avg: Tuple[float, float] = (float("nan"), float("nan"))  # 1-min load average before / after the runs
    compute_scale: float = 1.0  # the host's probe around the compared run / at calibration (host.compute_scale)
    op_runs: int = 1  # engine runs each measured op duration is the median of (`measured_ops`)
    disk_scale: Tuple[float, float] = (1.0, 1.0)  # the CSDs' disk probe around the run / at calibration, read and write
    disk_applied: bool = False  # whether the DES ran the CSDs' flash at disk_scale (`disk_probe`)

    @property
    def worst_mape(self) -> Optional[float]:
        vals = [k.mape for k in self.kinds if k.mape is not None]
        return max(vals) if vals else None

    def worst_kind(self) -> str:
        ks = [k for k in self.kinds if k.mape is not None]
        return max(ks, key=lambda k: k.mape).kind if ks else ""

    def ok(self, e2e_bound: float = 0.10, kind_bound: float = 0.20) -> bool:
        w = self.worst_mape
        return abs(self.error) <= e2e_bound and (w is None or w <= kind_bound)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst_mape"], d["worst_kind"] = self.worst_mape, self.worst_kind()
        return d


def config_label(spec: RunSpec) -> str:
    wl, hw, p = spec.workload, spec.hardware, spec.policy
    return (f"{spec.model.name} {p.name} b{wl.batch} p{wl.prompt_len} g{wl.gen_len} "
            f"csd{hw.csd_count} ssd{hw.ssd_count}")


def engine_spec(spec: RunSpec, dtype: str) -> RunSpec:
    """The spec both backends run: model bytes in the engine's dtype, every step traced, and
    FlexGen's drives unstriped (`raid_chunk_kib: 0`): the engine's drives are files, each
    drive's share of a move one request (`inf2hw.stores.DiskStore`), not RAID0 chunks."""
    model = replace(spec.model, dtype_bytes=ITEMSIZE[dtype])
    sim = replace(spec.sim, fidelity="full", trace=True, trace_steps=-1)
    policy = replace(spec.policy, params={**spec.policy.params, "raid_chunk_kib": 0})
    return replace(spec, model=model, sim=sim, policy=policy)


def _err(sim: float, meas: float) -> float:
    return sim / meas - 1.0 if meas > 0 else float("nan")


def compare_ops(measured: List[Span], simulated: List[Span], floor_ms: float) -> List[KindError]:
    """Per-kind errors over ops matched by name (see the module docstring)."""
    sim_by = {s.name: s for s in simulated}
    groups: Dict[str, List[Tuple[float, float]]] = defaultdict(list)
    for m in measured:
        s = sim_by.get(m.name)
        if s is not None:
            groups[f"{m.kind}/{m.what}"].append((m.dur_s, s.dur_s))
    out = []
    floor = floor_ms * 1e-3
    for kind, pairs in sorted(groups.items()):
        # A kind is compared when its typical (median) measured op reaches the floor; then all of
        # its ops count. (Picking single ops by their measured time would keep exactly the
        # short ops that a hiccup stretched past the floor.)
        meds = sorted(m for m, _ in pairs)
        big = [(m, s) for m, s in pairs if m > 0] if meds[(len(meds) - 1) // 2] >= floor else []
        apes = sorted(abs(s - m) / m for m, s in big)
        tot = sum(m for m, _ in pairs)
        small = sum(m for m, _ in pairs if m < floor)
        out.append(KindError(kind, len(pairs), len(big), sum(apes) / len(apes) if apes else None,
                             apes[len(apes) // 2] if apes else None, tot, sum(s for _, s in pairs),
                             small / tot if tot > 0 else 0.0))
    return out


def measured_ops(out: Path, per_op_median: bool = True) -> Tuple[List[Span], int]:
    """The measured ops of out/emu (the kept run) and how many runs stand behind each duration.
    With `per_op_median` and >= 2 runs in out/emu_runs, each op's duration is the median over
    the runs of the op of the same name (the plan names ops identically in every run): one
    engine run on a shared host stretches single ops severalfold at random, and the model
    predicts the typical op. Start times stay the kept run's (the plot draws the kept run as it ran)."""
    kept = read_chrome_trace(out / "emu" / "trace.json")
    runs = sorted(p for p in Path(out, "emu_runs").glob("run*/trace.json")) if per_op_median else []
    if len(runs) < 2:
        return kept, 1
    durs: Dict[str, List[float]] = defaultdict(list)
    for t in runs:
        for s in read_chrome_trace(t):
            durs[s.name].append(s.dur_s)
    spans = [replace(s, end_s=s.start_s + statistics.median(durs[s.name])) if durs.get(s.name) else s for s in kept]
    return spans, len(runs)


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def validate_spec(spec: RunSpec, opts, out_dir: str, floor_ms: float = 1.0, warmup: bool = True,
                  label: Optional[str] = None, plot: bool = True, repeat: int = 1, probe: bool = True,
                  disk_probe: bool = False) -> ValidationResult:
    """Run `spec` on the engine (with `opts`, an `inf2hw.run.EngineOptions`; the median of
    `repeat` runs is kept) and the DES; write emu/ sim/ validation.json and timeline.png
    under out_dir; return the comparison."""
    from inf2hw.run import run_engine

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "emu", ignore_errors=True)
    spec = engine_spec(spec, opts.dtype)
    if warmup:
        tmp = tempfile.mkdtemp(prefix="inf2-validate-warmup-")
        try:
            short = replace(spec.workload, prompt_len=min(spec.workload.prompt_len, 32), gen_len=2)
            run_engine(replace(spec, workload=short), replace(opts, progress=False), tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    load0 = _loadavg()
    shutil.rmtree(out / "emu_runs", ignore_errors=True)
    for k in range(max(1, repeat)):
        measure_once(spec, opts, out)
    return compare_run(spec, out, opts.dtype, floor_ms, label, plot, None, max(1, repeat), (load0, _loadavg()), probe,
                       disk_probe=disk_probe)


def measure_once(spec: RunSpec, opts, out: Path) -> float:
    """One more engine run of `spec` (already `engine_spec`) into out/emu_runs/run<k>, and
    out/emu pointed at the median run so far (by total tokens/s). Returns its tokens/s."""
    from inf2hw.run import run_engine

    runs = Path(out) / "emu_runs"
    runs.mkdir(parents=True, exist_ok=True)
    d = runs / f"run{len(list(runs.glob('run*')))}"
    disk_dir = Path(opts.csd_dirs[0]) if opts.csd_dirs else d  # where the CSDs' files go
    disk_dir.mkdir(parents=True, exist_ok=True)
    disk = [disk_probe.probe_record(str(disk_dir))]
    before = probe_samples()
    _, _, m, _ = run_engine(spec, opts, str(d))
    after = probe_samples()
    disk.append(disk_probe.probe_record(str(disk_dir)))
    (d / "probe.json").write_text(json.dumps({"before_ms": statistics.median(before), "after_ms": statistics.median(after),
                                              "samples_ms": before + after, "disk": disk}))
    for f in d.glob("kv*"):  # no KV files left behind
        shutil.rmtree(f, ignore_errors=True)
    pick_median(Path(out))
    return m.throughput["total_tok_s"]


def pick_median(out: Path) -> Path:
    """Copy the median run of out/emu_runs (lower median for an even count) to out/emu."""
    done = sorted(Path(out, "emu_runs").glob("run*"),
                  key=lambda d: json.loads((d / "metrics.json").read_text())["throughput"]["total_tok_s"])
    chosen = done[(len(done) - 1) // 2]
    shutil.rmtree(Path(out) / "emu", ignore_errors=True)
    shutil.copytree(chosen, Path(out) / "emu")
    return chosen


def run_speed(run_dir: Path, hw) -> float:
    """host.compute_scale for a kept run: the median of the speed probes right before and
    right after it (all of them: one side's hiccup, e.g. the run's teardown, moves it little) /
    the profile's `host.probe_ms` (1.0 when either is missing). Runs kept before the samples
    were stored give the mean of the two sides' medians."""
    f = Path(run_dir) / "probe.json"
    if hw.host.probe_ms <= 0 or not f.exists():
        return 1.0
    p = json.loads(f.read_text())
    ms = statistics.median(p["samples_ms"]) if p.get("samples_ms") else (p["before_ms"] + p["after_ms"]) / 2
    return ms / hw.host.probe_ms


def run_disk(run_dir: Path, hw) -> Tuple[float, float]:
    """(read, write) scale of the emulated CSDs' flash curves for a kept run: the mean of the
    disk probes right before and after it (`inf2hw.disk_probe`) / the profile's
    `csd.ssd.probe_read_gbps` / `probe_write_gbps`; 1.0 where either is missing."""
    f = Path(run_dir) / "probe.json"
    disk = json.loads(f.read_text()).get("disk", []) if f.exists() else []
    out = []
    for k, cal in (("read_gbps", hw.csd.ssd.probe_read_gbps), ("write_gbps", hw.csd.ssd.probe_write_gbps)):
        got = [p[k] for p in disk if k in p]
        out.append(sum(got) / len(got) / cal if got and cal > 0 else 1.0)
    return out[0], out[1]


def with_disk_scale(hw, read: float, write: float):
    """`hw` with the emulated CSDs' flash curves (one process and shared) times read / write."""
    st = hw.csd.ssd
    st = replace(st, read_gbps=[x * read for x in st.read_gbps], shared_read_gbps=[x * read for x in st.shared_read_gbps],
                 write_gbps=[x * write for x in st.write_gbps],
                 shared_write_gbps=[x * write for x in st.shared_write_gbps])
    return replace(hw, csd=replace(hw.csd, ssd=st))


def compare_run(spec: RunSpec, out: Path, dtype: str = "fp32", floor_ms: float = 1.0, label: Optional[str] = None,
                plot: bool = True, measured: Optional[Dict[str, float]] = None, repeat: int = 1,
                load_avg: Tuple[float, float] = (float("nan"), float("nan")), probe: bool = True,
                per_op_median: bool = True, disk_probe: bool = False) -> ValidationResult:
    """Simulate `spec` into out/sim and compare it with the engine run kept in out/emu
    (metrics.json, trace.json): the second half of `validate_spec`, also usable alone to
    re-check a measured run against a changed profile or model without running it again.
    With `probe`, the host's compute ops are simulated at the speed the probes around the run
    measured (`run_speed`); without, at the profile's. With `per_op_median`, the per-kind
    errors use each op's median over all runs in out/emu_runs (`measured_ops`); end to end,
    the kept (median) run is compared either way."""
    from inf2sim.simulate import simulate_spec

    out = Path(out)
    spec = engine_spec(spec, dtype)
    scale = run_speed(out / "emu", spec.hardware) if probe else 1.0
    if scale != 1.0:
        hw = spec.hardware
        spec = replace(spec, hardware=replace(hw, host=replace(hw.host, compute_scale=scale)))
    disk = run_disk(out / "emu", spec.hardware)  # recorded always; applied with disk_probe
    disk_applied = probe and disk_probe and disk != (1.0, 1.0)
    if disk_applied:
        spec = replace(spec, hardware=with_disk_scale(spec.hardware, *disk))
    te = measured or json.loads((out / "emu" / "metrics.json").read_text())["throughput"]
    spans_emu, op_runs = measured_ops(out, per_op_median)
    m_sim = simulate_spec(spec, out_dir=str(out / "sim"))
    spans_sim = read_chrome_trace(out / "sim" / "trace.json")
    ts = m_sim.throughput
    r = ValidationResult(label or config_label(spec), te["total_tok_s"], ts["total_tok_s"],
                         _err(ts["total_tok_s"], te["total_tok_s"]), _err(ts["prefill_tok_s"], te["prefill_tok_s"]),
                         _err(ts["decode_tok_s"], te["decode_tok_s"]), compare_ops(spans_emu, spans_sim, floor_ms),
                         floor_ms, out_dir=str(out), measured=dict(te), simulated=dict(ts),
                         repeat=repeat, load_avg=load_avg, compute_scale=scale, op_runs=op_runs, disk_scale=disk,
                         disk_applied=disk_applied)
    if plot:
        from .validate_plot import plot_timelines

        kept = read_chrome_trace(out / "emu" / "trace.json") if op_runs > 1 else spans_emu  # as it ran
        r.png = str(plot_timelines(spans_sim, kept, out / "timeline.png", r.config,
                                   f"simulated: {r.simulated_tok_s:.3g} tok/s", f"measured: {r.measured_tok_s:.3g} tok/s"))
    (out / "validation.json").write_text(json.dumps(r.to_dict(), indent=2))
    return r


# ------------------------------------------------------------------------ tables
def kinds_table(r: ValidationResult) -> str:
    head = (f"| op kind | ops | compared (median op >= {r.floor_ms:g} ms) | MAPE | median APE | measured s | "
            f"simulated s | measured time in ops < {r.floor_ms:g} ms |")
    lines = [head, "|" + "---|" * 8]
    for k in r.kinds:
        pct = lambda x: "-" if x is None else f"{100 * x:.1f} %"  # noqa: E731
        lines.append(f"| {k.kind} | {k.ops} | {k.compared} | {pct(k.mape)} | {pct(k.median_ape)} | "
                     f"{k.measured_s:.3f} | {k.simulated_s:.3f} | {100 * k.below_floor_share:.0f} % |")
    return "\n".join(lines)


def results_table(rs: List[ValidationResult]) -> str:
    head = ("| config | measured tok/s | simulated tok/s | error | prefill error | decode error | "
            "worst op-kind MAPE | worst kind | within bounds | host probe / calibration | disk probe / calibration "
            "(read, write) |")
    lines = [head, "|" + "---|" * 11]
    for r in rs:
        w = r.worst_mape
        lines.append(f"| {r.config} | {r.measured_tok_s:.3f} | {r.simulated_tok_s:.3f} | {100 * r.error:+.1f} % | "
                     f"{100 * r.prefill_error:+.1f} % | {100 * r.decode_error:+.1f} % | "
                     f"{'-' if w is None else f'{100 * w:.1f} %'} | {r.worst_kind()} | {'yes' if r.ok() else 'no'} | "
                     f"{r.compute_scale:.3f} | {r.disk_scale[0]:.2f}, {r.disk_scale[1]:.2f} |")
    return "\n".join(lines)
