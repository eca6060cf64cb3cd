"""Failures of a real run: a CSD worker that dies or stalls is reported by index within
10 s, ENOSPC during a spill is a clear error, and every failure (Ctrl-C too) leaves no
worker process, no shared-memory segment and no KV file behind."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from inf2hw.engine import EngineError
from inf2hw.run import EngineOptions, run_engine
from inf2sim.config import default_config, specs_from_config


def _spec(**extra):
    kw = {"workload.batch": 4, "workload.prompt_len": 12, "workload.gen_len": 10, "hardware.csd_count": 2, **extra}
    r = specs_from_config(default_config(model="opt-125m", policy="ans_wb", **kw))
    return replace(r, model=replace(r.model, num_layers=2))


def _leftovers(ctx):
    shm = [n for c in ctx.csds if c is not None for n in c.shm_names if os.path.exists(f"/dev/shm/{n.lstrip('/')}")]
    files = [p for c in ctx.csds if c is not None for p in c.kv_paths if os.path.exists(p)]
    return multiprocessing.active_children(), shm, files


def _fail_at_step(action, step=3):
    seen = {}

    def hook(span, ctx):
        seen["ctx"] = ctx
        if span.step == step and "done" not in seen:
            seen["done"] = True
            action(ctx)

    return hook, seen


def test_killed_worker_is_reported_by_index_and_cleaned_up(tmp_path):
    hook, seen = _fail_at_step(lambda ctx: os.kill(ctx.csds[1].pid, signal.SIGKILL))
    t0 = time.perf_counter()
    with pytest.raises(EngineError, match=r"csd1: worker process \d+ died"):
        run_engine(_spec(), EngineOptions(), out_dir=str(tmp_path), on_op=hook)
    assert time.perf_counter() - t0 < 30
    children, shm, files = _leftovers(seen["ctx"])
    assert children == [] and shm == [] and files == []


def test_stalled_worker_is_reported_within_its_timeout(tmp_path):
    hook, seen = _fail_at_step(lambda ctx: ctx.csds[0]._debug_sleep(60))
    t0 = time.perf_counter()
    with pytest.raises(EngineError, match="csd0: .*stalled"):
        run_engine(_spec(), replace(EngineOptions(), csd_timeout_s=3.0), out_dir=str(tmp_path), on_op=hook)
    assert time.perf_counter() - t0 < 20
    children, shm, files = _leftovers(seen["ctx"])
    assert children == [] and shm == [] and files == []


def test_keep_files_keeps_the_kv_files(tmp_path):
    hook, seen = _fail_at_step(lambda ctx: None)
    run_engine(_spec(), replace(EngineOptions(), keep_files=True), out_dir=str(tmp_path), on_op=hook)
    assert all(os.path.exists(p) for c in seen["ctx"].csds for p in c.kv_paths)


def test_enospc_during_a_spill_is_a_clear_error(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    # the prompt's KV blocks fit; spills past token 16 need new 4 KiB blocks and do not
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=800k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        seen = {}
        with pytest.raises(EngineError, match=r"spill\.csd\d.*(no space|ENOSPC|No space)") as e:
            run_engine(_spec(**{"workload.gen_len": 12}), replace(EngineOptions(), csd_dirs=(str(mnt),), direct_io="off"),
                       out_dir=str(tmp_path / "run"), on_op=lambda s, c: seen.setdefault("ctx", c))
        assert "\n" not in str(e.value)
        children, shm, files = _leftovers(seen["ctx"])
        assert children == [] and shm == [] and files == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_ctrl_c_cleans_up(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(f"""
import os, signal, json, sys
from dataclasses import replace
from inf2hw.run import EngineOptions, run_engine
from inf2sim.config import default_config, specs_from_config
if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (a background job)
    r = specs_from_config(default_config(model="opt-125m", policy="ans", **{{"workload.batch": 4, "workload.prompt_len": 12,
        "workload.gen_len": 10, "hardware.csd_count": 2}}))
    r = replace(r, model=replace(r.model, num_layers=2))
    info = {{}}
    def hook(span, ctx):
        if span.step == 3 and not info:
            info["pids"] = [c.pid for c in ctx.csds]
            info["shm"] = [n for c in ctx.csds for n in c.shm_names]
            info["files"] = [p for c in ctx.csds for p in c.kv_paths]
            json.dump(info, open(sys.argv[1], "w"))
            os.kill(os.getpid(), signal.SIGINT)
    run_engine(r, EngineOptions(), out_dir=sys.argv[2], on_op=hook)
""")
    info_path = tmp_path / "info.json"
    p = subprocess.run([sys.executable, str(script), str(info_path), str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "KeyboardInterrupt" in p.stderr
    import json

    info = json.loads(info_path.read_text())
    time.sleep(0.5)
    for pid in info["pids"]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not any(os.path.exists(f"/dev/shm/{n.lstrip('/')}") for n in info["shm"])
    assert not any(os.path.exists(f) for f in info["files"])
