"""`inf2` runs end to end: the default run, and small sweeps on each launcher."""
import importlib.util
import json
import subprocess
import sys

import pytest

SMALL = ["model=opt-6.7b", "workload.gen_len=3", "workload.prompt_len=128", "workload.batch=8"]


def _inf2(args, cwd, timeout=300):
    p = subprocess.run([sys.executable, "-m", "inf2sim.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_default_run_completes_and_writes_outputs(tmp_path):
    p = _inf2([f"hydra.run.dir={tmp_path}"], tmp_path)
    assert "flexgen_ssd" in p.stdout and "ans" in p.stdout and "speedup" in p.stdout
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "ok" and m["throughput"]["total_tok_s"] > 0
    assert set(m["throughput"]) == {"prefill_tok_s", "decode_tok_s", "total_tok_s"}
    assert m["bytes"] and m["busy_frac"] and m["time_s"]["decode"] > 0
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert any(e.get("ph") == "X" for e in trace["traceEvents"])
    assert (tmp_path / ".hydra" / "config.yaml").exists()


@pytest.mark.parametrize("launcher", ["basic", "joblib", "ray"])
def test_small_sweep_on_each_launcher(tmp_path, launcher):
    if launcher == "ray" and importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.skip("the ray extra is not installed (pip install -e '.[ray]')")
    extra = {"basic": [], "joblib": ["hydra/launcher=joblib"],
             "ray": ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"]}[launcher]
    _inf2(["-m", "policy=flexgen_ssd,ans", "hardware.csd_count=2,4", *SMALL, f"hydra.sweep.dir={tmp_path}", *extra],
          tmp_path, timeout=600)
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(runs) == 4
    for r in runs:
        m = json.loads((r / "metrics.json").read_text())
        assert m["status"] == "ok" and m["throughput"]["total_tok_s"] > 0


def test_oom_is_a_status_not_a_crash(tmp_path):
    p = _inf2([f"hydra.run.dir={tmp_path}", "policy=flexgen_dram", "model=opt-175b", "workload.batch=64",
               "workload.prompt_len=32768", "workload.gen_len=2", "compare=[]"], tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "oom" and "needs" in m["oom"] and "oom" in p.stdout
