"""inf2hw.stores.DiskStore: FlexGen's drive files (token-major, rows striped over drives)."""
import torch

from inf2hw.stores import DiskStore


def _store(tmp_path, drives=3, rows=7, cap=12, d=4):
    return DiskStore([str(tmp_path / f"d{i}") for i in range(drives)], rows, cap, d, torch.float32, 2, 2)


def test_writes_then_reads_back_every_drive_slice(tmp_path):
    st = _store(tmp_path)
    k, v = torch.randn(7, 5, 4), torch.randn(7, 5, 4)  # [rows, tokens, d]
    for i in range(3):
        st.write(i, 1, 0, 0, k[:, :3], v[:, :3])
        st.write(i, 1, 0, 3, k[:, 3:], v[:, 3:])
    for i, (lo, hi) in enumerate(st.slices):
        kr, vr = st.read(i, 1, 0, 5)
        assert torch.equal(kr, k[lo:hi]) and torch.equal(vr, v[lo:hi])
    st.close()


def test_read_pooled_reuses_its_buffer_and_matches_read(tmp_path):
    st = _store(tmp_path)
    k, v = torch.randn(7, 6, 4), torch.randn(7, 6, 4)
    for i in range(3):
        st.write(i, 0, 1, 0, k, v)
    views, buf = st.read_pooled(2, 0, 1, 6)
    lo, hi = st.slices[2]
    assert torch.equal(views[0], k[lo:hi]) and torch.equal(views[1], v[lo:hi])
    st.release(2, buf)
    views2, buf2 = st.read_pooled(2, 0, 1, 4)  # a shorter read takes the same buffer
    assert buf2.data_ptr() == buf.data_ptr()
    assert torch.equal(views2[0], k[lo:hi, :4])
    _, other = st.read_pooled(2, 0, 1, 4)  # none free: a new one
    assert other.data_ptr() != buf.data_ptr()
    st.close()
    assert not any(p.exists() for p in st.paths)


def test_a_large_read_split_over_read_threads_matches(tmp_path, monkeypatch):
    """Reads of at least twice READ_SPLIT_BYTES go to the store's read threads in parts;
    the result is the same bytes as one pread."""
    from inf2hw import stores

    monkeypatch.setattr(stores, "READ_SPLIT_BYTES", 64)
    st = DiskStore([str(tmp_path / "d0")], 5, 40, 8, torch.float32, 1, 1, read_threads=3)
    k, v = torch.randn(5, 37, 8), torch.randn(5, 37, 8)
    st.write(0, 0, 0, 0, k, v)
    kr, vr = st.read(0, 0, 0, 37)  # 37 x 5 x 2 x 8 x 4 B: split in 3
    assert st._readers is not None
    assert torch.equal(kr, k) and torch.equal(vr, v)
    st.close()
    assert st._readers is None


def test_fp16_drive_attention_through_the_flash_kernel_keeps_the_tokens(tmp_path, monkeypatch):
    """FlexGen's drive attention in fp16 on the CPU: the new token written into the read
    buffer's next slot and the fused flash kernel give the pieces path's tokens."""
    from inf2hw import host_attention as H
    from inf2hw.run import EngineOptions, run_engine
    from inf2sim.config import default_config, specs_from_config

    r = specs_from_config(default_config(model="opt-125m", policy="flexgen_ssd", **{
        "workload.batch": 4, "workload.prompt_len": 24, "workload.gen_len": 4, "hardware.ssd_count": 2}))
    calls = []
    real = H.flash_cpu_attention
    monkeypatch.setattr(H, "flash_cpu_attention", lambda *a: calls.append(1) or real(*a))
    got = {}
    for flash in (True, False):
        H.FLASH_CPU = flash
        try:
            toks, logits, _, _ = run_engine(r, EngineOptions(device="cpu", dtype="fp16"), out_dir=str(tmp_path / str(flash)))
        finally:
            H.FLASH_CPU = True
        got[flash] = (toks, logits)
    assert len(calls) == 3 * 12 * 2  # decode steps x layers x drives, in the flash run only
    assert got[True][0] == got[False][0]
    assert (got[True][1] - got[False][1]).abs().max() < 0.05


def test_a_large_write_goes_through_a_pooled_buffer_in_parts(tmp_path, monkeypatch):
    from inf2hw import stores

    monkeypatch.setattr(stores, "READ_SPLIT_BYTES", 64)
    st = DiskStore([str(tmp_path / "d0"), str(tmp_path / "d1")], 6, 40, 8, torch.float32, 1, 1, read_threads=3)
    k, v = torch.randn(6, 37, 8), torch.randn(6, 37, 8)
    for i in range(2):
        st.write(i, 0, 0, 0, k[:, :30], v[:, :30])  # large: pooled buffer, pwrite in parts
        st.write(i, 0, 0, 30, k[:, 30:], v[:, 30:])
    assert all(len(p) == 1 for p in st._pool)  # the write's buffer went back to its drive's pool
    for i, (lo, hi) in enumerate(st.slices):
        kr, vr = st.read(i, 0, 0, 37)
        assert torch.equal(kr, k[lo:hi]) and torch.equal(vr, v[lo:hi])
    st.close()


def test_token_major_blocks_write_what_write_writes(tmp_path):
    """The CUDA prompt path builds each drive's token-major block once (`token_major`, on
    the GPU) and pwrites it (`write_block`): the files read back exactly as after `write`."""
    k, v = torch.randn(7, 5, 4), torch.randn(7, 5, 4)  # [rows, tokens, d]
    a = DiskStore([str(tmp_path / f"a{i}") for i in range(3)], 7, 9, 4, torch.float32, 2, 1)
    b = DiskStore([str(tmp_path / f"b{i}") for i in range(3)], 7, 9, 4, torch.float32, 2, 1)
    blocks = b.blocks(b.token_major(k, v), 5)
    for i in range(3):
        assert a.write(i, 1, 0, 2, k, v) == b.write_block(i, 1, 0, 2, blocks[i])
        lo, hi = a.slices[i]
        for x, y, ref in zip(a.read(i, 1, 0, 7), b.read(i, 1, 0, 7), (k, v)):
            assert torch.equal(x[:, 2:], y[:, 2:]) and torch.equal(y[:, 2:], ref[lo:hi])
    a.close()
    b.close()
