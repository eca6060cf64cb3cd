"""The SmartSSD backend (inf2hw.csd.smartssd) run end to end against pyxrt_emu, an EMULATION of
pyxrt whose kernel is the g++ build of the HLS source: xclbin loading (both XRT API generations),
O_DIRECT stores, preadv straight into the P2P bo mapping, v1/v2 tails, GQA, read-back of out and
lse, against a torch fp32 reference; the one-line missing-pyxrt error; pyxrt's silent dropping of
float scalars. Temporary directories stand in for the cards' SSD mount points. Nothing here touches
a SmartSSD. Skipped only when g++ (needed to build the kernel library) is absent."""
from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pytest
import torch

if shutil.which("g++") is None:
    pytest.skip("g++ not found: the HLS kernel library cannot be built", allow_module_level=True)

from inf2hw.csd import hls_kernel, pyxrt_emu, smartssd  # noqa: E402
from inf2hw.csd.base import CsdConfig, CsdError  # noqa: E402
from inf2hw.csd.smartssd import SmartSsdCard, SmartSsdCsd, cards_from_config, f32_as_i32, open_smartssds  # noqa: E402

TOL = 2e-3  # fp16-level, relative to the output scale (as in hls/README.md)
BDF = "0000:3b:00.1"


@pytest.fixture
def xclbin(tmp_path):
    path = tmp_path / "inf2_attention.xclbin"
    path.write_bytes(b"placeholder: pyxrt_emu loads no bitstream")
    return str(path)


def _cfg(mount, **kw):
    base = dict(index=0, directory=str(mount), num_layers=2, num_micro_batches=2, rows=6, row_lo=4,
                capacity_tokens=300, head_dim=64, group=1, dtype="fp16", timeout_s=20.0)
    base.update(kw)
    return CsdConfig(**base)


def _reference(q, k, v, tail=None):
    """fp32 attention of q [n, g, d] over k/v [n, t, d] (+ tail) from the same fp16 values."""
    qf, d = q.half().float(), q.shape[-1]
    s = torch.einsum("ngd,ntd->ngt", qf, k.half().float()) / d ** 0.5
    vals = v.half().float()
    if tail is not None and tail[0] == "kv":
        s = torch.cat([s, torch.einsum("ngd,ntd->ngt", qf, tail[1].half().float()) / d ** 0.5], -1)
    elif tail is not None:
        s = torch.cat([s, tail[1].float()], -1)
    if tail is not None:
        vals = torch.cat([vals, tail[2].half().float()], 1)
    lse = torch.logsumexp(s, -1)
    return torch.einsum("ngt,ntd->ngd", torch.exp(s - lse[..., None]), vals), lse


def _close(out, lse, ref_out, ref_lse):
    scale = max(float(ref_out.abs().max()), 1e-3)
    return (float((out - ref_out).abs().max()) <= TOL * scale
            and float((lse - ref_lse).abs().max()) <= TOL * max(1.0, float(ref_lse.abs().max())))


def _attend(csd, layer, mb, rows, n_stored, q, tail):
    for t in (csd.load(layer, mb, rows, n_stored), csd.send_query(layer, mb, q, tail), csd.attend(layer, mb)):
        csd.wait(t)
    (out, lse), t0, t1 = csd.wait(csd.fetch(layer, mb))
    assert t0 <= t1
    return out, lse


@pytest.mark.parametrize("group,head_dim,tail_kind", [(1, 64, "kv"), (4, 128, "scores"), (2, 80, "kv"), (5, 32, None)])
def test_prompt_spills_load_attend_fetch_match_reference(tmp_path, xclbin, group, head_dim, tail_kind):
    g = torch.Generator().manual_seed(group * 100 + head_dim)
    cfg = _cfg(tmp_path, group=group, head_dim=head_dim)
    n, prompt, spill, n_tail = cfg.rows, 131, 5, 3
    k = torch.randn(2, 2, n, prompt + 2 * spill, head_dim, generator=g).half()  # [layer, mb, rows, tokens, d]
    v = torch.randn(2, 2, n, prompt + 2 * spill, head_dim, generator=g).half()
    rows = (cfg.row_lo, cfg.row_lo + n)
    with SmartSsdCsd(cfg, BDF, str(tmp_path), xclbin, pyxrt_module=pyxrt_emu) as csd:
        assert csd.direct_io  # tmp_path is on a filesystem with O_DIRECT here; see docs/smartssd.md
        for layer in range(2):
            for mb in range(2):
                csd.wait(csd.store(layer, mb, rows, 0, k[layer, mb, :, :prompt], v[layer, mb, :, :prompt]))
                for i in range(2):  # delayed write-back spills at unaligned token offsets
                    a = prompt + i * spill
                    csd.wait(csd.store(layer, mb, rows, a, k[layer, mb, :, a:a + spill], v[layer, mb, :, a:a + spill]))
        ctx = prompt + 2 * spill
        for layer, mb in ((1, 0), (0, 1)):
            q = torch.randn(n, group, head_dim, generator=g)
            tail = None
            if tail_kind == "kv":
                tail = ("kv", torch.randn(n, n_tail, head_dim, generator=g),
                        torch.randn(n, n_tail, head_dim, generator=g))
            elif tail_kind == "scores":
                tail = ("scores", torch.randn(n, group, n_tail, generator=g),
                        torch.randn(n, n_tail, head_dim, generator=g))
            out, lse = _attend(csd, layer, mb, rows, ctx, q, tail)
            assert out.shape == (n, group, head_dim) and lse.shape == (n, group) and out.dtype == torch.float32
            ref_out, ref_lse = _reference(q, k[layer, mb, :, :ctx], v[layer, mb, :, :ctx], tail)
            assert _close(out, lse, ref_out, ref_lse)
        # a sub-range of the CSD's rows and a shorter context
        q = torch.randn(2, group, head_dim, generator=g)
        out, lse = _attend(csd, 1, 1, (rows[0] + 3, rows[0] + 5), 100, q, None)
        assert _close(out, lse, *_reference(q, k[1, 1, 3:5, :100], v[1, 1, 3:5, :100]))


def test_load_reads_straight_into_the_p2p_mapping(tmp_path, xclbin, monkeypatch):
    cfg = _cfg(tmp_path, num_layers=1, num_micro_batches=1)
    k = torch.randn(cfg.rows, 200, cfg.head_dim).half()
    targets = []
    real_preadv = smartssd.os.preadv

    def spy(fd, buffers, offset):
        targets.extend((np.frombuffer(b, dtype=np.uint8).ctypes.data, len(b)) for b in buffers)
        return real_preadv(fd, buffers, offset)

    with SmartSsdCsd(cfg, BDF, str(tmp_path), xclbin, pyxrt_module=pyxrt_emu) as csd:
        rows = (cfg.row_lo, cfg.row_lo + cfg.rows)
        csd.wait(csd.store(0, 0, rows, 0, k, k))
        monkeypatch.setattr(smartssd.os, "preadv", spy)
        csd.wait(csd.load(0, 0, rows, 200))
        slot = csd._slots[0]
        spans = []
        for arg in (smartssd._K, smartssd._V):
            bo = slot.bos[arg]
            assert bo._flags == pyxrt_emu.bo.flags.p2p and bo._host is bo._device  # device memory, host-mapped
            spans.append((bo._device.addr, bo._device.addr + bo.size()))
        assert targets and all(any(lo <= a and a + n <= hi for lo, hi in spans) for a, n in targets)
        staged = slot.view[smartssd._K].view(np.float16).reshape(cfg.rows, csd.stride_tokens, cfg.head_dim)
        assert np.array_equal(staged[:, :200], k.numpy())  # in FPGA DRAM without any sync


def test_old_xrt_without_hw_context_uses_load_xclbin(tmp_path, xclbin):
    old = types.SimpleNamespace(**{n: getattr(pyxrt_emu, n) for n in dir(pyxrt_emu) if n != "hw_context"})
    cfg = _cfg(tmp_path, num_layers=1, num_micro_batches=1, rows=2, row_lo=0)
    q, k, v = torch.randn(2, 1, 64), torch.randn(2, 40, 64), torch.randn(2, 40, 64)
    with SmartSsdCsd(cfg, BDF, str(tmp_path), xclbin, pyxrt_module=old) as csd:
        assert not hasattr(csd, "_ctx") and csd._device.get_xclbin_uuid() is not None
        csd.wait(csd.store(0, 0, (0, 2), 0, k, v))
        assert _close(*_attend(csd, 0, 0, (0, 2), 40, q, None), *_reference(q, k, v))


def test_missing_pyxrt_is_one_clear_line(tmp_path, xclbin, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyxrt", None)  # `import pyxrt` raises ImportError
    with pytest.raises(CsdError) as err:
        SmartSsdCsd(_cfg(tmp_path, index=3), BDF, str(tmp_path), xclbin)
    msg = str(err.value)
    assert msg == f"csd3: {smartssd.PYXRT_MISSING}" and "\n" not in msg
    assert "pyxrt" in msg and "/opt/xilinx/xrt/setup.sh" in msg and "PYTHONPATH" in msg


def test_float_scalars_are_dropped_unless_bit_cast(tmp_path, xclbin, monkeypatch):
    assert f32_as_i32(1.0) == 0x3F800000 and f32_as_i32(-2.0) == -0x40000000
    # the emulator drops a raw float like pyxrt does: n_rows=1.0 reaches the kernel as 0
    dev = pyxrt_emu.device(BDF)
    krn = pyxrt_emu.kernel(pyxrt_emu.hw_context(dev, dev.register_xclbin(xclbin)), "inf2_attention")
    run = krn(*[pyxrt_emu.bo(dev, 4096, pyxrt_emu.bo.normal, 0) for _ in range(9)], 1.0, 2, 16, 0, 1, 8, 0)
    assert run.dropped == [9] and run.args[9] == 0 and run.wait() == pyxrt_emu.ert_cmd_state.ERT_CMD_STATE_COMPLETED
    run = krn(*[pyxrt_emu.bo(dev, 4096, pyxrt_emu.bo.normal, 0) for _ in range(9)], f32_as_i32(1.0), 2, 16, 0, 1, 8, 0)
    assert run.dropped == [] and run.args[9] == 0x3F800000  # the fp32 bits arrive intact
    cfg = _cfg(tmp_path, num_layers=1, num_micro_batches=1, rows=3, row_lo=0)
    q, k, v = torch.randn(3, 1, 64), torch.randn(3, 50, 64), torch.randn(3, 50, 64)
    ref = _reference(q, k, v)
    # the backend passing ctx_len (50) as a raw float: it reaches the kernel as 0, a silently wrong result
    with SmartSsdCsd(cfg, BDF, str(tmp_path), xclbin, pyxrt_module=pyxrt_emu) as csd:
        csd.wait(csd.store(0, 0, (0, 3), 0, k, v))
        assert _close(*_attend(csd, 0, 0, (0, 3), 50, q, None), *ref)
        monkeypatch.setattr(smartssd, "_xrt_scalar", lambda x: float(x) if x == 50 else int(x))
        out, lse = _attend(csd, 0, 0, (0, 3), 50, q, None)
        assert not _close(out, lse, *ref) and torch.isneginf(lse).all()  # no stored token was attended
    # the backend passing every scalar as a raw float: all reach the kernel as 0, which the emulator
    # reports as a failed run (hardware would leave out/lse stale: again a silently wrong result)
    with SmartSsdCsd(cfg, BDF, str(tmp_path), xclbin, pyxrt_module=pyxrt_emu) as csd:
        csd.wait(csd.store(0, 0, (0, 3), 0, k, v))
        monkeypatch.setattr(smartssd, "_xrt_scalar", float)  # "forgot the bit-cast"
        with pytest.raises(CsdError, match="attend failed: .*ERT_CMD_STATE_ERROR.*n_rows=0 ctx_len=0"):
            _attend(csd, 0, 0, (0, 3), 50, q, None)


def test_normal_bo_needs_sync_to_reach_the_kernel(tmp_path, xclbin):
    dev = pyxrt_emu.device(BDF)
    b = pyxrt_emu.bo(dev, 8192, pyxrt_emu.bo.normal, 0)
    np.frombuffer(b.map(), dtype=np.uint8)[:4] = 7
    assert b._device.np[:4].tolist() == [0] * 4
    b.sync(pyxrt_emu.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, 4, 0)
    assert b._device.np[:4].tolist() == [7] * 4 and b.read(4, 0).tolist() == [7] * 4
    assert pyxrt_emu.EMULATION is True


def test_kernel_shape_constants_match_the_built_kernel():
    cfg = hls_kernel.kernel_config()
    assert (smartssd.BLOCK_TOKENS, smartssd.MAX_TAIL, smartssd.MAX_GROUP, smartssd.MAX_HEAD_DIM) == (
        cfg["block_tokens"], cfg["max_tail"], cfg["max_group"], cfg["max_head_dim"])


def test_errors_are_one_line_csd_errors(tmp_path, xclbin):
    with pytest.raises(CsdError, match="^csd0: the SmartSSD kernel stores KV in fp16"):
        SmartSsdCsd(_cfg(tmp_path, dtype="fp32"), BDF, str(tmp_path), xclbin, pyxrt_module=pyxrt_emu)
    with pytest.raises(CsdError, match="^csd0: cannot open 0000:3b:00.1 .*no compute unit"):
        SmartSsdCsd(_cfg(tmp_path), BDF, str(tmp_path), xclbin, "vadd", pyxrt_module=pyxrt_emu)
    with pytest.raises(CsdError, match="^csd0: cannot open not-a-bdf"):
        SmartSsdCsd(_cfg(tmp_path), "not-a-bdf", str(tmp_path), xclbin, pyxrt_module=pyxrt_emu)
    with pytest.raises(CsdError, match="not a directory"):
        SmartSsdCsd(_cfg(tmp_path), BDF, str(tmp_path / "nope"), xclbin, pyxrt_module=pyxrt_emu)
    cfg = _cfg(tmp_path, num_layers=3, num_micro_batches=1)
    with SmartSsdCsd(cfg, BDF, str(tmp_path), xclbin, pyxrt_module=pyxrt_emu, staging_slots=2) as csd:
        with pytest.raises(CsdError, match="rows"):
            csd.load(0, 0, (0, 2), 10)  # rows below row_lo
        rows = (cfg.row_lo, cfg.row_lo + 2)
        ok = [csd.load(layer, 0, rows, 0) for layer in range(2)]
        third = csd.load(2, 0, rows, 0)
        assert all(csd.wait(t)[0] is None for t in ok)
        with pytest.raises(CsdError, match="^csd0: load failed: .*in flight; raise staging_slots"):
            csd.wait(third)
        with pytest.raises(CsdError, match="an earlier command failed"):
            csd.wait(csd.attend(0, 0))


def test_cards_pair_each_fpga_with_its_own_ssd(tmp_path, xclbin):
    mounts = [tmp_path / "ssd0", tmp_path / "ssd1"]
    for m in mounts:
        m.mkdir()
    section = {"cards": [{"bdf": "0000:3b:00.1", "mount": str(mounts[0])},
                         {"bdf": "0000:5e:00.1", "mount": str(mounts[1])}]}
    cards = cards_from_config(section)
    assert cards == [SmartSsdCard("0000:3b:00.1", str(mounts[0])), SmartSsdCard("0000:5e:00.1", str(mounts[1]))]
    with pytest.raises(CsdError, match="repeats a mount"):
        cards_from_config({"cards": [{"bdf": "0000:3b:00.1", "mount": "/a"}, {"bdf": "0000:5e:00.1", "mount": "/a"}]})
    cfgs = [_cfg(m, index=i, rows=2, row_lo=2 * i, keep_files=(i == 1), direct_io="off" if i else "auto")
            for i, m in enumerate(mounts)]
    csds = open_smartssds(cfgs, cards, xclbin, pyxrt_module=pyxrt_emu)
    try:
        assert [c.bdf for c in csds] == [c.bdf for c in cards] and not csds[1].direct_io
        q, k, v = torch.randn(2, 1, 64), torch.randn(2, 64, 64), torch.randn(2, 64, 64)
        for c in csds:
            rows = (c.cfg.row_lo, c.cfg.row_lo + 2)
            c.wait(c.store(0, 0, rows, 0, k, v))
            assert _close(*_attend(c, 0, 0, rows, 64, q, None), *_reference(q, k, v))
        assert [sorted(p.name for p in m.iterdir()) for m in mounts] == [["inf2-csd0-kv.bin"], ["inf2-csd1-kv.bin"]]
    finally:
        for c in csds:
            c.close()
    assert not (mounts[0] / "inf2-csd0-kv.bin").exists() and (mounts[1] / "inf2-csd1-kv.bin").exists()
