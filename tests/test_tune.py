"""The policy tuner: never worse than the start under the DES, overlays that round-trip, `inf2 tune`."""
import json
import subprocess
import sys

import pytest
import yaml  # parses plain scalars as Hydra's override grammar does

from inf2sim.config import default_config, specs_from_config
from inf2sim.simulate import simulate_spec
from inf2sim.specs import SpecError
from inf2sim.tune import KEYS, _get, apply, overlay_of, tune

SMALL = {"workload.gen_len": 8, "sim.trace": False}


def _fast(spec):
    from dataclasses import replace

    return replace(spec, sim=replace(spec.sim, fidelity="fast", trace=False))


@pytest.mark.parametrize("policy, model, batch, prompt, csds", [
    ("inf2", "opt-6.7b", 16, 512, 4),
    ("inf2", "opt-30b", 8, 1024, 4),
    ("ans_xcache", "opt-6.7b", 8, 1024, 8),
])
def test_tuner_is_never_worse_than_the_start_under_the_des(spec_of, policy, model, batch, prompt, csds):
    spec = spec_of(policy=policy, model=model, **SMALL, **{"workload.batch": batch, "workload.prompt_len": prompt,
                                                          "hardware.csd_count": csds})
    r = tune(spec, top_k=2)
    start = simulate_spec(_fast(spec)).throughput["total_tok_s"]
    chosen = simulate_spec(_fast(r.spec)).throughput["total_tok_s"]  # timed again, independently
    assert chosen >= start
    assert r.best.des_tok_s == pytest.approx(chosen) and r.start.des_tok_s == pytest.approx(start)
    assert r.spec == apply(spec, r.best.settings)
    assert 2 <= len(r.confirmed) <= 3 and r.confirmed[0].is_start
    for c in r.confirmed:  # the analytic model is an upper bound the DES approaches
        assert c.des_over_analytic is not None and 0.3 < c.des_over_analytic <= 1.02


def _fake_des(spec_of, monkeypatch, others_tok_s: float):
    """A small ans_xcache spec, and a fake DES that rates its start 10 tok/s and every other
    candidate `others_tok_s`."""
    import importlib

    sim_mod = importlib.import_module("inf2sim.simulate")  # the module, not the function inf2sim exports
    from inf2sim.metrics import Metrics

    spec = spec_of(policy="ans_xcache", model="opt-6.7b", **SMALL, **{"workload.batch": 8, "workload.prompt_len": 256,
                                                                     "hardware.csd_count": 4})

    def fake(s, **_):
        is_start = all(getattr(s.policy, f) == getattr(spec.policy, f) for f in ("weights", "xcache", "partition")) \
            and s.workload == spec.workload
        return Metrics(status="ok", policy=s.policy.name, throughput={"total_tok_s": 10.0 if is_start else others_tok_s})

    monkeypatch.setattr(sim_mod, "simulate_spec", fake)
    return spec


def test_falls_back_to_the_start_when_the_des_disagrees(spec_of, monkeypatch):
    """A fake DES that rates every candidate below the start: the start comes back."""
    spec = _fake_des(spec_of, monkeypatch, 9.0)
    r = tune(spec, top_k=2)
    assert len(r.confirmed) == 3
    assert r.best is r.start and r.overlay() == "" and r.spec == spec and r.speedup == 1.0


@pytest.mark.parametrize("min_gain, picks_it", [(0.0, True), (0.05, False), (0.02, True)])
def test_a_gain_inside_min_gain_keeps_the_start(spec_of, monkeypatch, min_gain, picks_it):
    """A fake DES that rates every candidate 3 % above the start: chosen with min_gain 0 or 2 %,
    not with the default 5 % (a predicted gain inside the DES's error band)."""
    spec = _fake_des(spec_of, monkeypatch, 10.3)
    r = tune(spec, top_k=2, min_gain=min_gain)
    assert (r.best is not r.start) == picks_it
    assert r.speedup == pytest.approx(1.03 if picks_it else 1.0)
    with pytest.raises(SpecError, match="tune.min_gain"):
        tune(spec, top_k=2, min_gain=-0.1)


def test_overlay_round_trips_through_the_config(spec_of):
    spec = spec_of(policy="inf2", model="opt-6.7b", **SMALL, **{"workload.batch": 6, "hardware.csd_count": 4})
    start = {k: _get(spec, k) for k in KEYS}
    chosen = {**start, "policy.xcache.alpha": 1 / 3, "policy.wb.c": 16, "workload.num_micro_batches": 2,
              "policy.weights.gpu": 0.37, "policy.weights.host": 0.63}
    ov = overlay_of(start, chosen)
    assert "policy.wb.c=16" in ov and "workload.num_micro_batches=2" in ov and "policy.weights.storage=0.0" in ov
    overrides = dict(kv.split("=") for kv in ov.split())
    again = specs_from_config(default_config(policy="inf2", model="opt-6.7b", **SMALL,
                                             **{"workload.batch": 6, "hardware.csd_count": 4},
                                             **{k: yaml.safe_load(v) for k, v in overrides.items()}))
    want = apply(spec, chosen)
    assert again.workload == want.workload and again.policy.wb == want.policy.wb
    assert again.policy.weights == want.policy.weights
    assert round(again.policy.xcache.alpha * 3) == 1  # the same X-cache rows: round(alpha * micro_batch)


def test_unknown_knob_is_one_line(spec_of):
    with pytest.raises(SpecError, match="tune knobs"):
        tune(spec_of(model="opt-6.7b"), knobs=["beta"])


def test_cli_tune_prints_an_overlay_that_runs(tmp_path):
    base = ["model=opt-6.7b", "workload.gen_len=8", "hardware.csd_count=4"]
    p = subprocess.run([sys.executable, "-m", "inf2sim.cli", "tune", *base, f"hydra.run.dir={tmp_path / 't'}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in p.stdout.splitlines() if ":" in ln}
    assert "overlay" in lines and lines["command"].startswith("inf2 ")
    saved = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert saved["best"]["des_tok_s"] >= saved["start"]["des_tok_s"]
    args = lines["command"].split()[1:]
    assert args[:3] == base and " ".join(args[3:]) == saved["overlay"]
    p2 = subprocess.run([sys.executable, "-m", "inf2sim.cli", *args, "compare=[]", "sim.fidelity=fast",
                         "sim.trace=false", f"hydra.run.dir={tmp_path / 'r'}"], capture_output=True, text=True,
                        timeout=120)
    assert p2.returncode == 0, p2.stderr
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["status"] == "ok"
    assert m["throughput"]["total_tok_s"] == pytest.approx(saved["best"]["des_tok_s"], rel=1e-6)
