"""The reproduction suite (experiments/, conf/experiment/) and the derived study
metrics (inf2sim.studies): every study config composes, every study has its plot
script, README and a line in run_all.sh, one study runs end to end at tiny size
through `inf2 -m` and its plot script, and price / energy / endurance follow their
definitions in docs/metrics.md on hand-made inputs.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from inf2sim.config import CONF_DIR, specs_from_config
from inf2sim.scheduler import build_plan
from inf2sim import studies

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
OPTIONS = {g: sorted(p.stem for p in (CONF_DIR / "experiment" / g).glob("*.yaml")) for g in ("system", "request")}


def _compose(overrides, hydra_cfg=False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_cfg)


def test_the_suite_has_the_studies_of_the_papers():
    assert {"motivation", "main_throughput", "ablation", "alpha_sweep", "c_sweep", "csd_count", "batch_sweep",
            "memory_budget", "gqa_moe", "cost_effectiveness", "energy", "endurance"} <= set(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_composes_with_each_swept_value(study):
    cfg = _compose([f"+experiment={study}"], hydra_cfg=True)
    specs_from_config(cfg)
    assert str(cfg.hydra.sweep.dir).startswith(f"multirun/{study}/")
    params = dict(cfg.hydra.sweeper.params)
    assert params, f"{study} sweeps nothing"
    for key, values in params.items():  # each value once (the full grid is the sweep's job)
        for v in str(values).split(","):
            r = specs_from_config(_compose([f"+experiment={study}", f"{key}={v}"]))
            build_plan(r.model, r.workload, r.hardware, r.policy)
    text = (CONF_DIR / "experiment" / f"{study}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert (ROOT / "experiments" / study / "plot.py").exists()
    assert (ROOT / "experiments" / study / "README.md").exists()
    assert f"+experiment={study} " in (ROOT / "experiments" / "run_all.sh").read_text()


@pytest.mark.parametrize("group, name", [(g, n) for g, ns in OPTIONS.items() for n in ns])
def test_every_system_and_request_option_composes(group, name):
    r = specs_from_config(_compose(["+experiment=main_throughput", f"+experiment/{group}={name}"]))
    build_plan(r.model, r.workload, r.hardware, r.policy)


def test_a_study_runs_end_to_end_at_tiny_size(tmp_path):
    """endurance: sweep (joblib launcher, as run_all.sh) -> plot script -> CSV + PNG."""
    sweep, out = tmp_path / "sweep", tmp_path / "results"
    tiny = ["+experiment=endurance", "hydra.sweeper.params=null", "hydra/launcher=joblib",
            "+experiment/request=short,medium", "+experiment/system=flexgen_ssd,ans_wb16,hilos16", "model=opt-125m",
            "model.num_layers=2", "workload.batch=4", f"hydra.sweep.dir={sweep}"]
    p = subprocess.run([sys.executable, "-m", "inf2sim.cli", "-m", *tiny], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "endurance" / "plot.py"), str(sweep), "--out",
                        str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = studies.read_csv(out / "endurance.csv")
    assert len(rows) == 6 and (out / "endurance.png").stat().st_size > 10_000
    got = {(r["request_class"], r["system"]): r for r in rows}
    for cls in ("short", "medium"):
        # 512 B spills (c=2) program whole 4 KiB pages; FlexGen's token-major writes and HILOS's
        # c=16 pages come much closer to one page per page written
        assert got[(cls, "ans_wb16")]["waf"] > 2 * max(got[(cls, "flexgen_ssd")]["waf"], got[(cls, "hilos16")]["waf"])
        assert got[(cls, "hilos16")]["requests_before_pbw"] > 0
    # a medium request (1K in, 350 out) writes more than a short one (256 in, 100 out)
    assert got[("medium", "flexgen_ssd")]["written_per_req"] > got[("short", "flexgen_ssd")]["written_per_req"]


# ------------------------------------------------------------------ derived metrics
def _cfg(**kw):
    r = _compose(["+experiment=main_throughput", *[f"{k}={v}" for k, v in kw.items()]])
    from omegaconf import OmegaConf

    return {k: OmegaConf.to_container(r[k], resolve=True) for k in ("model", "workload", "hardware", "policy", "sim")}


def test_system_price_counts_what_the_policy_uses():
    c = _cfg(**{"+experiment/system": "flexgen_ssd"})
    hw = c["hardware"]
    base = hw["host"]["price_usd"] + hw["gpu"]["price_usd"]
    assert studies.system_price_usd(c) == base + hw["ssd_count"] * hw["ssd"]["price_usd"]
    assert studies.system_price_usd(_cfg(**{"+experiment/system": "flexgen_dram"})) == base
    c16 = _cfg(**{"+experiment/system": "inf2_16"})
    assert studies.system_price_usd(c16) == base + hw["chassis"]["price_usd"] + 16 * hw["csd"]["price_usd"]
    m = {"status": "ok", "throughput": {"total_tok_s": 2.0}, "config": c16}
    assert studies.tok_s_per_kusd(m) == pytest.approx(2.0 / studies.system_price_usd(c16) * 1e3)


def test_energy_is_power_times_busy_time_plus_static_host():
    c = _cfg(**{"+experiment/system": "ans16"})
    hw = c["hardware"]
    busy = {"gpu": 0.5, "cpu": 0.25, "csd0.fpga": 0.2, "link:csd0.nand": 0.6, "link:ssd0.nand": 0.1}
    m = {"status": "ok", "time_s": {"total": 10.0}, "busy_frac": busy, "config": c}
    e = studies.energy_breakdown_j(m)
    assert e["gpu"] == pytest.approx(hw["gpu"]["power_w"] * 5.0)
    assert e["cpu"] == pytest.approx(hw["cpu"]["power_w"] * 2.5)
    assert e["host_static"] == pytest.approx(hw["host"]["power_w"] * 10.0)
    assert e["csds"] == pytest.approx(hw["csd"]["fpga"]["power_w"] * 6.0 + hw["csd"]["ssd"]["power_w"] * 6.0)
    assert e["ssds"] == pytest.approx(hw["ssd"]["power_w"] * 1.0)  # ssd0 exists in the profile
    wl = c["workload"]
    assert studies.joules_per_token(m) == pytest.approx(sum(e.values()) / (wl["batch"] * wl["gen_len"]))


def test_flash_bytes_round_requests_up_to_pages():
    assert studies.flash_bytes(1024, 256, 4096) == 16 * 1024
    assert studies.flash_bytes(8192, 4096, 4096) == 8192
    assert studies.flash_bytes(6144, 6144, 4096) == 8192


@pytest.mark.parametrize("system, extra", [("flexgen_ssd", {}), ("ans16", {}), ("ans_wb16", {"policy.wb.c": 3}),
                                           ("hilos16", {"policy.wb.c": 4}),
                                           ("ans_wb16", {"policy.partition": "sequence"})])
def test_storage_writes_from_one_period_equal_every_step(system, extra):
    c = _cfg(**{"+experiment/system": system, "model": "opt-125m", "model.num_layers": 2, "workload.batch": 4,
                "workload.prompt_len": 32, "workload.gen_len": 11, "hardware.csd_count": 3, **extra})
    got = studies.storage_writes(c)
    r = specs_from_config(c)
    plan, _ = build_plan(r.model, r.workload, r.hardware, r.policy)
    want: dict = {}
    for st in plan.steps():
        for d, ws in studies._step_writes(st).items():
            want.setdefault(d, []).extend(ws)
    assert sum(n for ws in got.values() for n, _ in ws) == sum(n for ws in want.values() for n, _ in ws) > 0
    assert sorted(w for ws in got.values() for w in ws) == sorted(w for ws in want.values() for w in ws)
    if extra.get("policy.partition") != "sequence":
        assert {d: sorted(ws) for d, ws in got.items()} == {d: sorted(ws) for d, ws in want.items()}
