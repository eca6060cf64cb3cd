"""`inf2 calibrate`: quick mode writes a profile that loads and simulates; the model
terms a calibrated profile relies on (a disk shared by emulated drives, the materialised
prefill score matrix) give exact times in tiny scenarios."""
import subprocess
import sys
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from inf2sim import config as C
from inf2sim.plan import Attention, StepPlan, Transfer
from inf2sim.rates import compute_seconds
from inf2sim.specs import HardwareProfile, StorageSpec


@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory):
    """`inf2 calibrate calibrate.quick=true` into a temporary conf dir (the real CLI)."""
    tmp = tmp_path_factory.mktemp("calib")
    r = subprocess.run([sys.executable, "-c", "from inf2sim.cli import main; main()", "calibrate",
                        "calibrate.quick=true", "calibrate.name=testbox", f"calibrate.conf_dir={tmp}",
                        f"calibrate.dir={tmp / 'disk'}", f"hydra.run.dir={tmp / 'run'}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote" in r.stdout and "testbox.yaml" in r.stdout
    return tmp, r.stdout


def test_quick_calibration_writes_a_profile_that_loads_and_simulates(quick_profile, monkeypatch):
    from inf2sim.simulate import simulate_spec

    tmp, _ = quick_profile
    path = tmp / "hardware" / "testbox.yaml"
    text = path.read_text()
    for key in ("fp32_tflops", "mem_gbps", "launch_us", "attention_gbps", "ipc_us", "rate_gbps",
                "read_gbps", "shared_read_gbps", "attention_score_ns", "decode_attention_us", "attention_us",
                "attend_us", "attend_gqa_us", "probe_ms"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(key + ":"))
        assert "#" in line, f"{key} carries no comment saying how it was measured"
    assert "inf2 calibrate 20" in text  # dated
    model, wl = C.load_group("model", "opt-125m"), C.load_group("workload", "tiny")
    policies = {p: C.load_group("policy", p) for p in ("ans", "flexgen_ssd", "inf2")}
    monkeypatch.setattr(C, "CONF_DIR", tmp)
    hw = C.load_group("hardware", "testbox")
    assert hw.name == "testbox" and hw.cpu.threads >= 1
    if "O_DIRECT preadv" in text:  # the CSDs' disk took O_DIRECT: its probe at calibration, for `inf2 validate`
        assert hw.csd.ssd.probe_read_gbps > 0 and hw.csd.ssd.probe_write_gbps > 0
        assert "#" in next(ln for ln in text.splitlines() if ln.strip().startswith("probe_read_gbps:"))
    # the measured attention curves: increasing sizes, one time per size
    for kib, us in ((hw.cpu.attention_kib, hw.cpu.attention_us), (hw.csd.attend_kib, hw.csd.attend_us),
                    (hw.gpu.decode_attention_kib, hw.gpu.decode_attention_us)):
        assert len(kib) >= 2 and len(kib) == len(us) and all(b > a for a, b in zip(kib, kib[1:]))
    for name, pol in policies.items():
        spec = C.specs_from_config(OmegaConf.create({"model": model, "workload": wl, "hardware": hw,
                                                     "policy": pol, "sim": {"trace": False}}))
        m = simulate_spec(spec)
        assert m.status == "ok" and m.throughput["total_tok_s"] > 0, name
        if name == "ans":  # both CSDs' flash traffic also crosses the one shared disk
            assert m.bytes.get("csd_disk", 0) > 0


def test_calibrate_rejects_bad_options_in_one_line():
    r = subprocess.run([sys.executable, "-c", "from inf2sim.cli import main; main()", "calibrate",
                        "calibrate.device=tpu"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("inf2: error: calibrate.device='tpu'")


def _hw_shared_disk(n_csd: int) -> HardwareProfile:
    """CSDs whose flash is one disk: 1 GB/s per stream, 1.5 GB/s for all together."""
    flat = StorageSpec(req_kib=[4, 1024], read_gbps=[1.0, 1.0], write_gbps=[1.0, 1.0],
                       shared_read_gbps=[1.5, 1.5], shared_write_gbps=[1.5, 1.5])
    hw = C.specs_from_config(C.default_config(hardware="paper_a100")).hardware
    return replace(hw, csd_count=n_csd, csd=replace(hw.csd, ssd=flat, internal_link=replace(hw.csd.internal_link,
                                                                                          latency_us=0.0)))


@pytest.mark.parametrize("n, expect_s", [(1, 1.0), (2, 2 / 1.5)])
def test_drives_on_one_disk_share_it(n, expect_s):
    """One load runs at its own 1 GB/s; two at once split the disk's 1.5 GB/s."""
    from inf2sim.des.backend import DesBackend

    be = DesBackend(_hw_shared_disk(n))
    ops = tuple(Transfer(f"s0.L0.m0.kv.csd{i}", (), 0, 0, 0, "kv", src=f"csd{i}.ssd", dst=f"csd{i}.fpga",
                         nbytes=10**9, req_bytes=1 << 20) for i in range(n))
    spans = be.execute(StepPlan(0, "decode", 1, 1, ops))
    assert [round(s.end_s, 9) for s in spans] == [round(expect_s, 9)] * n
    assert be.bytes_by_link["csd_disk"] == n * 10**9


def test_materialised_prefill_scores_cost_per_element():
    hw = C.specs_from_config(C.default_config(hardware="paper_a100")).hardware
    op = Attention("s0.L0.m0.attn", (), 0, 0, 0, "attn_out", device="gpu", rows=(0, 8), tokens=(0, 256),
                   q_len=256, group=2, head_dim=64, flops=1.0, kv_bytes=1)
    fused = compute_seconds(op, hw)
    scored = compute_seconds(op, replace(hw, gpu=replace(hw.gpu, attention_score_ns=2.0)))
    assert scored - fused == pytest.approx(8 * 2 * 256 * 256 * 2e-9)
    decode = replace(op, q_len=1, tokens=(0, 256), stored_len=255)  # linear in ctx: part of the rate
    assert compute_seconds(decode, replace(hw, gpu=replace(hw.gpu, attention_score_ns=2.0))) == \
        compute_seconds(decode, hw)


def test_host_memory_timings_rotate_over_four_times_the_last_level_cache(tmp_path, monkeypatch):
    """The largest cache sysfs lists for cpu0 sets how much K,V a CPU attention timing rotates
    over (4x it, at least 64 MiB): a working set the L3 holds would time the cache, not memory."""
    import glob

    from inf2hw import calibrate_dense as D

    files = []
    for i, size in enumerate(("48K", "1024K", "300M", "n/a")):
        f = tmp_path / f"index{i}_size"
        f.write_text(size + "\n")
        files.append(str(f))
    monkeypatch.setattr(glob, "glob", lambda pattern: files)
    assert D.host_llc_bytes() == 300 << 20 and D.host_rotation_bytes() == 1200 << 20
    assert D._copies(69 << 20, D.host_rotation_bytes()) == 18  # 69 MB of K,V: 18 copies, not 1
    monkeypatch.setattr(glob, "glob", lambda pattern: files[:2])  # a 1 MiB last level: the 64 MiB floor
    assert D.host_rotation_bytes() == 64 << 20
