"""`inf2 validate`: one tiny configuration on the engine and the DES gives the table,
the per-op-kind errors and the timeline PNG; the comparison itself is exact on literal spans."""
import json
import subprocess
import sys

import pytest

from inf2hw.validate import compare_ops, results_table
from inf2sim.plan import Span


def _span(name, kind, what, dur, start=0.0):
    return Span(name, kind, what, "gpu", 0, 0, start, start + dur)


def test_compare_ops_matches_by_name_and_applies_the_floor():
    meas = [_span("a", "DenseCompute", "qkv", 0.010), _span("b", "DenseCompute", "qkv", 0.020),
            _span("c", "DenseCompute", "qkv", 0.0001), _span("d", "Transfer", "kv", 0.004),
            _span("only_measured", "Transfer", "kv", 1.0)]
    sim = [_span("a", "DenseCompute", "qkv", 0.011), _span("b", "DenseCompute", "qkv", 0.015),
           _span("c", "DenseCompute", "qkv", 0.0009), _span("d", "Transfer", "kv", 0.005),
           _span("only_simulated", "Transfer", "kv", 1.0)]
    kinds = {k.kind: k for k in compare_ops(meas, sim, floor_ms=1.0)}
    qkv = kinds["DenseCompute/qkv"]
    assert (qkv.ops, qkv.compared) == (3, 3)  # its median op (10 ms) reaches the floor: all count
    assert qkv.mape == pytest.approx((0.1 + 0.25 + 8.0) / 3)
    assert qkv.measured_s == pytest.approx(0.0301) and qkv.below_floor_share == pytest.approx(0.0001 / 0.0301)
    assert kinds["Transfer/kv"].ops == 1 and kinds["Transfer/kv"].mape == pytest.approx(0.25)
    short = {k.kind: k for k in compare_ops(meas, sim, floor_ms=15.0)}["DenseCompute/qkv"]
    assert (short.compared, short.mape) == (0, None)  # median 10 ms < 15 ms: reported, not compared


def test_validate_cli_on_a_tiny_config(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", "from inf2sim.cli import main; main()", "validate",
                        "model=llama-tiny", "policy=ans", "workload=tiny", "workload.gen_len=3",
                        "hardware=paper_a100", "hardware.csd_count=2", "validate.warmup=false",
                        f"csd.dirs=[{tmp_path / 'kv'}]", f"hydra.run.dir={out}"],
                       capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| config | measured tok/s | simulated tok/s | error |" in r.stdout
    assert "| op kind | ops |" in r.stdout and "Attention/attn_out" in r.stdout
    png = out / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    res = json.loads((out / "validation.json").read_text())
    assert res["measured_tok_s"] > 0 and res["simulated_tok_s"] > 0
    assert res["error"] == pytest.approx(res["simulated_tok_s"] / res["measured_tok_s"] - 1)
    kinds = {k["kind"] for k in res["kinds"]}
    assert {"DenseCompute/qkv", "Transfer/kv", "Attention/attn_out"} <= kinds
    assert (out / "emu" / "trace.json").exists() and (out / "sim" / "trace.json").exists()
    probe = json.loads((out / "emu" / "probe.json").read_text())  # the host's speed around the run
    assert probe["before_ms"] > 0 and probe["after_ms"] > 0 and res["compute_scale"] == 1.0  # paper_a100: no probe_ms
    assert len(probe["disk"]) == 2 and res["disk_scale"] == [1.0, 1.0]  # the CSDs' disk around it; no probe in the profile
    assert res["disk_applied"] is False


def test_results_table_has_the_acceptance_columns():
    from inf2hw.validate import ValidationResult

    r = ValidationResult("m ans", 10.0, 10.5, 0.05, 0.0, 0.06)
    line = results_table([r]).splitlines()[2]
    assert "| m ans | 10.000 | 10.500 | +5.0 % |" in line and line.endswith("| yes | 1.000 | 1.00, 1.00 |")


def test_measured_ops_are_each_ops_median_over_the_runs(tmp_path):
    """Three runs: op a took 10, 30 and 12 ms, op b 5, 4 and 6 ms; the kept run (run1)
    keeps its start times, each duration is the op's median (12 and 5 ms). With one run, or
    without the median, the kept run's own spans."""
    from inf2hw.validate import measured_ops
    from inf2sim.metrics import write_chrome_trace

    durs = {"a": (0.010, 0.030, 0.012), "b": (0.005, 0.004, 0.006)}
    for k in range(3):
        d = tmp_path / "emu_runs" / f"run{k}"
        d.mkdir(parents=True)
        write_chrome_trace([_span(n, "DenseCompute", "qkv", ds[k], start=0.1 * k) for n, ds in durs.items()],
                           d / "trace.json")
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "trace.json").write_text((tmp_path / "emu_runs" / "run1" / "trace.json").read_text())
    spans, n = measured_ops(tmp_path)
    got = {s.name: (round(s.start_s, 6), round(s.dur_s, 6)) for s in spans}
    assert n == 3 and got == {"a": (0.1, 0.012), "b": (0.1, 0.005)}
    kept, n1 = measured_ops(tmp_path, per_op_median=False)
    assert n1 == 1 and {s.name: round(s.dur_s, 6) for s in kept} == {"a": 0.03, "b": 0.004}


def test_run_speed_is_the_probes_around_the_run_over_the_calibrations(tmp_path):
    from dataclasses import replace

    from inf2hw.validate import run_speed
    from inf2sim.specs import HardwareProfile

    hw = HardwareProfile()
    assert run_speed(tmp_path, hw) == 1.0  # no probe.json
    (tmp_path / "probe.json").write_text(json.dumps({"before_ms": 30.0, "after_ms": 36.0}))
    assert run_speed(tmp_path, hw) == 1.0  # a profile without a calibration probe
    assert run_speed(tmp_path, replace(hw, host=replace(hw.host, probe_ms=30.0))) == pytest.approx(1.1)
    # with the samples kept, their median: one side's hiccup moves it little
    (tmp_path / "probe.json").write_text(json.dumps({"before_ms": 30.0, "after_ms": 60.0,
                                                     "samples_ms": [30.0, 31.0, 29.0, 30.0, 60.0, 61.0]}))
    assert run_speed(tmp_path, replace(hw, host=replace(hw.host, probe_ms=30.0))) == pytest.approx(30.5 / 30.0)


def test_run_disk_scales_the_csd_flash_curves_by_the_disk_probes_around_the_run(tmp_path):
    from dataclasses import replace

    from inf2hw.validate import run_disk, with_disk_scale
    from inf2sim.specs import HardwareProfile

    hw = HardwareProfile()
    st = replace(hw.csd.ssd, req_kib=[4, 1024], read_gbps=[0.1, 1.0], write_gbps=[0.2, 2.0],
                 shared_read_gbps=[0.1, 1.5], shared_write_gbps=[0.2, 2.5])
    hw = replace(hw, csd=replace(hw.csd, ssd=st))
    assert run_disk(tmp_path, hw) == (1.0, 1.0)  # no probe.json
    (tmp_path / "probe.json").write_text(json.dumps({"before_ms": 30.0, "after_ms": 30.0, "disk": [
        {"read_gbps": 1.0, "write_gbps": 2.0}, {"read_gbps": 3.0, "write_gbps": 2.0}]}))
    assert run_disk(tmp_path, hw) == (1.0, 1.0)  # a profile without a calibration probe
    cal = replace(hw, csd=replace(hw.csd, ssd=replace(st, probe_read_gbps=4.0, probe_write_gbps=1.0)))
    r, w = run_disk(tmp_path, cal)
    assert (r, w) == (pytest.approx(0.5), pytest.approx(2.0))  # the mean of before and after / the calibration's
    got = with_disk_scale(cal, r, w).csd.ssd
    assert got.read_gbps == pytest.approx([0.05, 0.5]) and got.shared_read_gbps == pytest.approx([0.05, 0.75])
    assert got.write_gbps == pytest.approx([0.4, 4.0]) and got.shared_write_gbps == pytest.approx([0.4, 5.0])
    assert got.req_kib == st.req_kib and with_disk_scale(cal, r, w).ssd == cal.ssd  # FlexGen's drives: page cache
    (tmp_path / "probe.json").write_text(json.dumps({"before_ms": 30.0, "after_ms": 30.0, "disk": [{}, {}]}))
    assert run_disk(tmp_path, cal) == (1.0, 1.0)  # a directory that refused O_DIRECT: nothing probed


def test_disk_probe_times_the_directory_o_direct_or_says_nothing(tmp_path):
    from inf2hw import disk_probe
    from inf2hw.csd.kvfile import probe_direct_io

    got = disk_probe.probe_record(str(tmp_path))
    if probe_direct_io(str(tmp_path)) is None:
        assert got["read_gbps"] > 0 and got["write_gbps"] > 0
    else:
        assert got == {}
    r, w = disk_probe.probe_gbps(str(tmp_path))  # buffered where O_DIRECT is refused
    assert r > 0 and w > 0 and not list(tmp_path.iterdir())  # its file is gone


def test_stamped_pool_spans_are_busy_time_not_queueing():
    """An op queued behind another on the engine's one-worker pool gets a span that starts
    when its worker began it, so per-op errors compare busy time with the DES's."""
    import time

    from inf2hw.ops import StampedPool

    pool = StampedPool(max_workers=1)
    try:
        t0 = time.perf_counter()
        a = pool.submit(time.sleep, 0.05)
        b = pool.submit(time.sleep, 0.05)
        b.result()
        (a0, a1), (b0, b1) = a.stamps_s, b.stamps_s
        assert a0 >= t0 and a1 - a0 >= 0.05
        assert b0 >= a1  # b waited for the worker: its busy time starts after a ends
        assert 0.05 <= b1 - b0 < 0.09
    finally:
        pool.shutdown()


def _validation_script(name: str):
    """experiments/validation/<name>.py, loaded as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "validation" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_midpoint_profile_averages_numbers_and_keeps_names():
    """The bracketing profile: the mean of every number (curves element-wise), AFTER's
    strings and name lists; a curve measured over other sizes keeps AFTER's."""
    mp = _validation_script("midpoint_profile")
    before = {"name": "a", "gpu": {"mem_gbps": 6.0, "decode_attention_kib": [1, 2], "decode_attention_us": [10, 20]},
              "cpu": {"cores": 2, "attention_kib": [1, 2], "attention_us": [4, 8]},
              "host": {"core_devices": ["gpu", "cpu"]}, "has_gpu": True}
    after = {"name": "b", "gpu": {"mem_gbps": 8.0, "decode_attention_kib": [1, 2], "decode_attention_us": [30, 40]},
             "cpu": {"cores": 2, "attention_kib": [1, 4], "attention_us": [6, 12]},
             "host": {"core_devices": ["gpu", "cpu", "fpga"]}, "has_gpu": True}
    mid = mp.midpoint(before, after)
    assert mid["gpu"]["mem_gbps"] == 7.0 and mid["cpu"]["cores"] == 2 and mid["has_gpu"] is True
    assert mid["gpu"]["decode_attention_us"] == [20, 30] and mid["gpu"]["decode_attention_kib"] == [1, 2]
    assert mid["cpu"]["attention_us"] == [6, 12] and mid["cpu"]["attention_kib"] == [1, 4]  # other sizes: AFTER's
    assert mid["host"]["core_devices"] == ["gpu", "cpu", "fpga"] and mid["name"] == "b"


def test_step_compare_times_each_step_from_the_previous_steps_end(tmp_path):
    """step_compare's step durations: a step lasts from the previous step's last end (the
    run's first op for the first) to its own last end, so overlapping steps are not counted twice."""
    sc = _validation_script("step_compare")

    def ev(name, step, ts_ms, dur_ms):
        return Span(name, "DenseCompute", "post", "gpu", step, 0, ts_ms / 1e3, (ts_ms + dur_ms) / 1e3)

    evs = [ev("s0.a", 0, 5, 10), ev("s0.b", 0, 8, 20), ev("s1.a", 1, 20, 4), ev("s1.b", 1, 26, 9)]
    assert sc.step_durations_ms(evs) == {0: 23.0, 1: 7.0}  # 5 -> 28, then 28 -> 35


def test_op_medians_by_layer_splits_a_tag_per_layer(tmp_path, capsys):
    """op_medians --layers: one line per layer of a tag, each with its own measured and
    simulated medians and their ratio; without it, one line over every layer."""
    from inf2sim.metrics import write_chrome_trace

    om = _validation_script("op_medians")

    def spans(ms_by_layer):
        return [Span(f"s{st}.L{L}.m0.attn.gpu", "Attention", "attn_out", "gpu", st, L, st, st + ms / 1e3)
                for st in (1, 2, 3) for L, ms in ms_by_layer.items()]

    cfg = tmp_path / "cfg"
    for side, ms in (("emu", {0: 0.4, 1: 1.5}), ("sim", {0: 0.6, 1: 0.6})):
        (cfg / side).mkdir(parents=True)
        write_chrome_trace(spans(ms), cfg / side / "trace.json")
    for extra, want in ((["--layers"], {"attn.gpu L0": (0.4, 0.6, 1.5), "attn.gpu L1": (1.5, 0.6, 0.4)}),
                        ([], {"attn.gpu": (0.95, 0.6, 0.95)})):
        sys.argv = ["op_medians.py", str(tmp_path), "--tags", "attn.gpu", *extra]
        om.main()
        lines = [ln for ln in capsys.readouterr().out.splitlines()[1:] if ln.strip()]
        assert len(lines) == len(want)
        for ln in lines:
            f = ln.split()  # cfg, label..., n, median [p10, p90] measured, the same simulated, ratio
            label, meas, sim, ratio = " ".join(f[1:-8]), float(f[-7]), float(f[-4]), float(f[-1])
            assert label in want and (meas, sim, ratio) == pytest.approx(want[label], abs=1e-3), ln
