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
