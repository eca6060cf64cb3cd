"""The emulated CSD (inf2hw.csd.emulated): a real worker process with KV files, checked
against inf2hw.attention called in-process (fp32 bit-for-bit), the HLS kernel within fp16
tolerance, sequence-split merging, and every failure path a user relies on: a killed or
stalled worker, ENOSPC, direct-I/O policy, cleanup of processes, /dev/shm and files,
including when the parent dies or is interrupted."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

from inf2hw.attention import attend_partial, attend_with_scores, merge_partials, tail_scores
from inf2hw.csd import kvfile
from inf2hw.csd.base import CsdConfig, CsdError
from inf2hw.csd.emulated import EmulatedCsd

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _cfg(directory, **kw) -> CsdConfig:
    base = dict(index=0, directory=str(directory), num_layers=2, num_micro_batches=2, rows=5, row_lo=3,
                capacity_tokens=80, head_dim=48, group=4, dtype="fp32", timeout_s=10.0)
    base.update(kw)
    return CsdConfig(**base)


def _kv(rows, n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n, d, generator=g).to(dtype), torch.randn(rows, n, d, generator=g).to(dtype)


def _run(csd, *tickets):
    return [csd.wait(t) for t in tickets]


def _attend(csd, layer, mb, rows, n, q, tail=None):
    """load + send_query + attend + fetch; returns (out, lse)."""
    t = [csd.load(layer, mb, rows, n), csd.send_query(layer, mb, q, tail), csd.attend(layer, mb), csd.fetch(layer, mb)]
    return _run(csd, *t)[-1][0]


def _gone(pid, within_s=5.0) -> bool:
    end = time.time() + within_s
    while time.time() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True  # a zombie holds no resources; its parent reaps it
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _assert_clean(csd):
    assert _gone(csd.pid)
    assert not [n for n in csd.shm_names if os.path.exists(f"/dev/shm/{n}")]
    assert not [p for p in csd.kv_paths if os.path.exists(p)]


@pytest.fixture(scope="module", params=["auto", "off"])
def csd(request, tmp_path_factory):
    """/tmp takes O_DIRECT here ("auto": aligned reads, read-modify-write appends); "off" is buffered."""
    cfg = _cfg(tmp_path_factory.mktemp("csd"), direct_io=request.param)
    dev = EmulatedCsd(cfg, arena_mib=0.02)  # tiny arena: a prompt store is split by rows
    yield dev
    dev.close()


# ------------------------------------------------------------------ exactness
def test_prompt_then_decode_appends_match_in_process_attention_exactly(csd):
    d, n0, steps = 48, 37, 5  # 192 B tokens: appends straddle 4 KiB blocks (O_DIRECT read-modify-write)
    k, v = _kv(5, n0 + steps, d, seed=1)
    waits = [csd.store(1, 1, (3, 8), 0, k[:, :n0], v[:, :n0])]
    waits += [csd.store(1, 1, (3, 8), t, k[:, t:t + 1], v[:, t:t + 1]) for t in range(n0, n0 + steps)]
    _run(csd, *waits)
    q = torch.randn(5, 4, d)  # [rows, group=4 (GQA), d]
    for n in (n0, n0 + steps):
        out, lse = _attend(csd, 1, 1, (3, 8), n, q)
        ref_out, ref_lse = attend_partial(q.unsqueeze(2), k[:, :n], v[:, :n])
        assert torch.equal(out, ref_out.squeeze(2)) and torch.equal(lse, ref_lse.squeeze(2))
    # a subset of rows, another (layer, mb) untouched by the stores above
    _run(csd, csd.store(0, 1, (5, 7), 0, k[2:4, :10], v[2:4, :10]))
    out, _ = _attend(csd, 0, 1, (5, 7), 10, q[:2])
    assert torch.equal(out, attend_partial(q[:2].unsqueeze(2), k[2:4, :10], v[2:4, :10])[0].squeeze(2))


def test_tails_join_exactly_both_kinds(csd):
    d = 48
    k, v = _kv(5, 20, d, seed=2)
    kt, vt = _kv(5, 3, d, seed=3)
    _run(csd, csd.store(0, 0, (3, 8), 0, k, v))
    q = torch.randn(5, 4, d)
    q4 = q.unsqueeze(2)
    s = tail_scores(q4, kt)  # [rows, group, 1, tail], scaled
    out, lse = _attend(csd, 0, 0, (3, 8), 20, q, ("kv", kt, vt))
    ref = attend_with_scores(q4, k, v, s, vt)
    assert torch.equal(out, ref[0].squeeze(2)) and torch.equal(lse, ref[1].squeeze(2))
    cat = attend_partial(q4, torch.cat([k, kt], 1), torch.cat([v, vt], 1))
    torch.testing.assert_close(out, cat[0].squeeze(2), rtol=1e-5, atol=1e-6)
    out2, lse2 = _attend(csd, 0, 0, (3, 8), 20, q, ("scores", s.squeeze(2), vt))
    assert torch.equal(out2, out) and torch.equal(lse2, lse)


def test_sequence_split_partials_merge_to_the_full_result(tmp_path):
    d, n = 48, 50
    k, v = _kv(5, n, d, seed=4)
    q = torch.randn(5, 4, d)
    devs = [EmulatedCsd(_cfg(tmp_path / f"d{i}", index=i, num_layers=1, num_micro_batches=1)) for i in range(2)]
    try:
        parts = []
        for dev, (a, b) in zip(devs, ((0, 23), (23, n))):
            _run(dev, dev.store(0, 0, (3, 8), 0, k[:, a:b], v[:, a:b]))
            parts.append(_attend(dev, 0, 0, (3, 8), b - a, q))
    finally:
        for dev in devs:
            dev.close()
    out, lse = merge_partials([(o.unsqueeze(2), s.unsqueeze(2)) for o, s in parts])
    ref_out, ref_lse = attend_partial(q.unsqueeze(2), k, v)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-6, atol=1e-5)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the HLS kernel cannot be built")
def test_hls_compute_matches_within_fp16_tolerance(tmp_path):
    d = 64
    dev = EmulatedCsd(_cfg(tmp_path, head_dim=d, dtype="fp16", compute="hls"))
    try:
        k, v = _kv(5, 30, d, seed=5, dtype=torch.float16)
        kt, vt = _kv(5, 2, d, seed=6, dtype=torch.float16)
        q = torch.randn(5, 4, d).half()
        _run(dev, dev.store(1, 0, (3, 8), 0, k, v))
        q4 = q.float().unsqueeze(2)
        s = tail_scores(q4, kt).squeeze(2)
        for tail, (rk, rv) in ((None, (k, v)), (("kv", kt, vt), (torch.cat([k, kt], 1), torch.cat([v, vt], 1))),
                               (("scores", s, vt), (torch.cat([k, kt], 1), torch.cat([v, vt], 1)))):
            out, lse = _attend(dev, 1, 0, (3, 8), 30, q, tail)
            ref_out, ref_lse = attend_partial(q4, rk, rv)
            assert (out - ref_out.squeeze(2)).abs().max() <= 2e-3 * ref_out.abs().max()
            assert (lse - ref_lse.squeeze(2)).abs().max() <= 2e-3 * ref_lse.abs().max()
    finally:
        dev.close()
    with pytest.raises(CsdError, match="csd0: compute='hls' needs dtype='fp16'"):
        EmulatedCsd(_cfg(tmp_path, compute="hls"))


def test_read_cap_and_load_overlapping_attention(tmp_path):
    dev = EmulatedCsd(_cfg(tmp_path, capacity_tokens=2048, head_dim=64, rows=4, row_lo=0, read_gbps=0.02))
    try:
        k, v = _kv(4, 2048, 64, seed=7)
        _run(dev, dev.store(0, 0, (0, 4), 0, k, v), dev.store(1, 0, (0, 4), 0, k, v))
        q = torch.randn(4, 4, 64)
        t = [dev.load(0, 0, (0, 4), 2048), dev.load(1, 0, (0, 4), 2048), dev.send_query(0, 0, q, None),
             dev.attend(0, 0), dev.fetch(0, 0)]
        (_, l0s, l0e), (_, l1s, l1e), _, (_, as_, ae), _ = _run(dev, *t)
        assert l0e - l0s >= 2 * 4 * 2048 * 64 * 4 / 0.02e9 * 0.99  # 4 MiB at 20 MB/s
        assert l0e <= as_ < l1e and ae < l1e  # attention of layer 0 ran while layer 1 loaded
    finally:
        dev.close()


# ------------------------------------------------------------------- failures
def test_killed_worker_is_reported_and_everything_is_cleaned(tmp_path):
    dev = EmulatedCsd(_cfg(tmp_path / "kv", index=2))
    k, v = _kv(5, 10, 48, seed=8)
    _run(dev, dev.store(0, 0, (3, 8), 0, k, v))
    assert all(os.path.exists(p) for p in dev.kv_paths)
    t0 = time.perf_counter()
    dev.load(0, 0, (3, 8), 10)
    os.kill(dev.pid, signal.SIGKILL)
    with pytest.raises(CsdError, match=r"^csd2: worker process \d+ died"):
        dev.send_query(0, 0, torch.randn(5, 4, 48), None)
        dev.attend(0, 0)
        dev.wait(dev.fetch(0, 0))
    assert time.perf_counter() - t0 < 10
    with pytest.raises(CsdError, match="^csd2: "):
        dev.load(0, 0, (3, 8), 10)
    dev.close()
    dev.close()  # idempotent
    _assert_clean(dev)
    assert not os.path.exists(tmp_path / "kv")  # the directory it created, now empty, is gone too


def test_stalled_worker_times_out(tmp_path):
    dev = EmulatedCsd(_cfg(tmp_path, timeout_s=1.0))
    t0 = time.perf_counter()
    with pytest.raises(CsdError, match=r"^csd0: worker pid \d+ stalled"):
        dev.wait(dev._debug_sleep(60))
    assert time.perf_counter() - t0 < 3
    dev.close()
    _assert_clean(dev)


def test_command_errors_are_one_line_csd_errors(csd):
    with pytest.raises(CsdError, match=r"csd0: attend\(layer=0, mb=0\): no load"):
        csd.wait(csd.attend(0, 0))
    with pytest.raises(ValueError, match="capacity"):
        csd.store(0, 0, (3, 8), 70, *_kv(5, 20, 48, seed=9))
    with pytest.raises(ValueError, match="outside this CSD's slice"):
        csd.load(0, 0, (0, 8), 10)


def test_enospc_names_the_directory(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a 1 MiB tmpfs here (needs root and mount rights) to provoke ENOSPC")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tmpfs may refuse O_DIRECT
            dev = EmulatedCsd(_cfg(small, rows=4, row_lo=0, capacity_tokens=2048, head_dim=64))
        try:
            with pytest.raises(CsdError, match=f"csd0: store.*no space left on device in {small}"):
                dev.wait(dev.store(0, 0, (0, 4), 0, *_kv(4, 2048, 64, seed=10)))  # 8 MiB > 1 MiB
            _run(dev, dev.load(0, 0, (0, 1), 1))  # still alive after a failed store
        finally:
            dev.close()
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_keep_files_leaves_them(tmp_path):
    dev = EmulatedCsd(_cfg(tmp_path, keep_files=True))
    _run(dev, dev.store(0, 0, (3, 8), 0, *_kv(5, 4, 48, seed=11)))
    dev.close()
    assert all(os.path.getsize(p) > 0 for p in dev.kv_paths)
    assert _gone(dev.pid)


def test_direct_io_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(kvfile, "probe_direct_io", lambda d: "Invalid argument (test)")
    with pytest.raises(CsdError, match=f"csd0: direct_io='on' but {tmp_path} refuses O_DIRECT"):
        EmulatedCsd(_cfg(tmp_path, direct_io="on"))
    with pytest.warns(RuntimeWarning, match=f"csd0: {tmp_path} refuses O_DIRECT.*buffered"):
        dev = EmulatedCsd(_cfg(tmp_path, direct_io="auto"))
    assert dev.direct is False
    dev.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per directory
        EmulatedCsd(_cfg(tmp_path, direct_io="auto")).close()
    monkeypatch.undo()
    dev = EmulatedCsd(_cfg(tmp_path, direct_io="off"))
    assert dev.direct is False
    dev.close()


_ORPHAN_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from inf2hw.csd.base import CsdConfig
    from inf2hw.csd.emulated import EmulatedCsd
    if __name__ == "__main__":
        cfg = CsdConfig(index=0, directory=sys.argv[1], num_layers=1, num_micro_batches=1, rows=2, row_lo=0,
                        capacity_tokens=16, head_dim=8, group=1)
        dev = EmulatedCsd(cfg)
        dev.wait(dev.store(0, 0, (0, 2), 0, torch.zeros(2, 4, 8), torch.zeros(2, 4, 8)))
        print(dev.pid, *dev.shm_names, *dev.kv_paths, flush=True)
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # no atexit: the worker must notice by itself
        raise KeyboardInterrupt  # Ctrl-C without close(): the finalizer cleans up at exit
""")


def test_parent_death_or_ctrl_c_leaves_no_orphans(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = {mode: subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path / mode), mode],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
             for mode in ("kill", "interrupt")}
    for mode, p in procs.items():
        pid, *paths = p.stdout.readline().split()  # not communicate(): the resource tracker keeps stdout open
        p.wait(timeout=60)
        assert _gone(int(pid)), f"{mode}: worker {pid} outlived its parent"
        end = time.time() + 10  # the resource tracker unlinks the segments once every holder is gone
        while time.time() < end and any(os.path.exists(f"/dev/shm/{n}") for n in paths[:2]):
            time.sleep(0.05)
        assert not [x for x in paths[:2] if os.path.exists(f"/dev/shm/{x}")], mode
        assert not [x for x in paths[2:] if os.path.exists(x)], mode
        p.stdout.close()
