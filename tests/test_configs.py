"""Every config in conf/ composes and validates; bad input gives one clear line."""
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from inf2sim.config import CONF_DIR, specs_from_config
from inf2sim.scheduler import build_plan
from inf2sim.specs import SpecError


def _names(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("group", ["model", "workload", "hardware", "policy", "backend"])
def test_every_option_composes(group):
    for name in _names(group):
        cfg = _compose([f"{group}={name}", "hardware.csd_count=4"])
        r = specs_from_config(cfg)
        if group == "policy":
            build_plan(r.model, r.workload, r.hardware, r.policy)


def test_every_experiment_composes():
    for name in _names("experiment"):
        specs_from_config(_compose([f"+experiment={name}"]))


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["workload.batch=-4"], "workload.batch"),
        (["workload.prompt_len=0"], "workload.prompt_len"),
        (["hardware.csd_count=0", "policy=ans"], "hardware.csd_count"),
        (["hardware.csd_count=17"], "hardware.csd_count"),
        (["policy.partition=diagonal"], "policy.partition"),
        (["policy.xcache.alpha=1.5"], "policy.xcache.alpha"),
        (["workload.batch=abc"], "workload.batch"),
        (["sim.fidelity=medium"], "sim.fidelity"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(SpecError) as e:
        r = specs_from_config(_compose(overrides))
        build_plan(r.model, r.workload, r.hardware, r.policy)
    msg = str(e.value)
    assert field in msg and "\n" not in msg


@pytest.mark.parametrize("args, field", [(["model=opt-9000"], "model"), (["workload.batch=-1"], "workload.batch"),
                                         (["policy=ans", "hardware.csd_count=0"], "hardware.csd_count"),
                                         (["policy=flexgen_ssd", "hardware.ssd_count=0"], "hardware.ssd_count")])
def test_cli_bad_input_is_one_line(tmp_path, args, field):
    p = subprocess.run([sys.executable, "-m", "inf2sim.cli", *args, f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("inf2: error:") and field in err[0], p.stderr
    assert "Traceback" not in p.stderr
