"""The emulated CSD worker's attention in pieces of rows (`inf2hw.csd.worker.torch_attention`
over `inf2hw.host_attention.cpu_attention`) against the reference attention (`inf2hw.attention` in
fp32) for every write-back tail; fp32 stays bit-for-bit the reference. Also the host-side
pieces of the engine's speed work that run without a GPU: the pinned store's chunking,
its fallback to pageable memory, the parallel relay -> store copy and the CSD thread count."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from inf2hw import stores
from inf2hw.attention import attend_partial, attend_with_scores, tail_scores
from inf2hw.csd.worker import piece_rows, torch_attention
from inf2hw.host_attention import AttnWorkspace, cpu_attention
from inf2hw.ops_io import _host_write
from inf2hw.run import EngineOptions, csd_threads_for


def _share(rows, group, cap, n, d, tail_len, dtype, seed=0):
    """q [rows, group, d], K,V [rows, cap, d] (first n filled) and the three tails."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, group, d, generator=g).to(dtype)
    k, v = (torch.randn(rows, cap, d, generator=g).to(dtype) for _ in range(2))
    kt, vt = (torch.randn(rows, tail_len, d, generator=g).to(dtype) for _ in range(2))
    st = torch.randn(rows, group, tail_len, generator=g) * 0.5
    return q, k, v, {"none": None, "kv": ("kv", kt, vt), "scores": ("scores", st, vt)}


def _reference(q, k, v, n, tail):
    """The exact attention in fp32 on the same (upcast) values."""
    q4, kf, vf = q.float().unsqueeze(2), k[:, :n].float(), v[:, :n].float()
    if tail is None:
        out, lse = attend_partial(q4, kf, vf)
    elif tail[0] == "kv":
        out, lse = attend_with_scores(q4, kf, vf, tail_scores(q4, tail[1].float()), tail[2].float())
    else:
        out, lse = attend_with_scores(q4, kf, vf, tail[1].unsqueeze(2), tail[2].float())
    return out.squeeze(2), lse.squeeze(2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("tail", ["none", "kv", "scores"])
@pytest.mark.parametrize("piece", [1, 2, 3])
def test_pieces_match_reference_attention(dtype, tail, piece):
    q, k, v, tails = _share(rows=7, group=4, cap=90, n=77, d=32, tail_len=5, dtype=dtype)
    ws = AttnWorkspace()
    for _ in range(2):  # the second call reuses (and must overwrite) the first call's buffers
        out, lse = torch_attention(q, k, v, 77, tails[tail], ws, rows_per_piece=piece)
    ref_out, ref_lse = _reference(q, k, v, 77, tails[tail])
    assert out.dtype == lse.dtype == torch.float32
    assert out.shape == (7, 4, 32) and lse.shape == (7, 4)
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    assert torch.allclose(lse, ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tail", ["none", "kv", "scores"])
def test_default_pieces_at_an_opt13b_share(tail):
    """A CSD's share at OPT-13B's head_dim and a prompt-2048 context takes several pieces."""
    q, k, v, tails = _share(rows=8, group=1, cap=2100, n=2064, d=128, tail_len=16, dtype=torch.float16, seed=1)
    assert piece_rows(2064, 128) < 8
    out, lse = torch_attention(q, k, v, 2064, tails[tail], AttnWorkspace())
    ref_out, ref_lse = _reference(q, k, v, 2064, tails[tail])
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    assert torch.allclose(lse, ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tail", ["none", "kv", "scores"])
def test_fp32_is_the_reference_bit_for_bit(tail):
    q, k, v, tails = _share(rows=9, group=2, cap=40, n=33, d=16, tail_len=3, dtype=torch.float32)
    out, lse = torch_attention(q, k, v, 33, tails[tail], AttnWorkspace(), rows_per_piece=2)
    ref_out, ref_lse = _reference(q, k, v, 33, tails[tail])
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_cpu_attention_tail_matches_attend_with_scores():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(10, 2, 1, 24, generator=g, dtype=torch.float16)
    k, v = (torch.randn(10, 50, 24, generator=g, dtype=torch.float16) for _ in range(2))
    s, vt = torch.randn(10, 2, 1, 4, generator=g), torch.randn(10, 4, 24, generator=g, dtype=torch.float16)
    out, lse = cpu_attention(q, k, v, 4, AttnWorkspace(), scores_tail=s, v_tail=vt)
    ref_out, ref_lse = attend_with_scores(q, k.float(), v.float(), s, vt.float())
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(lse, ref_lse, atol=1e-5)


def test_pinned_chunks_are_powers_of_two_and_disjoint():
    sizes = []

    def alloc(n):
        sizes.append(n)
        return torch.zeros(n, dtype=torch.uint8)

    shape = (5, 255, 8)  # 20,400 bytes of fp16 per tensor, each starting on a 4 KiB page: 20 KiB apart
    old = stores.PIN_CHUNK_BYTES
    stores.PIN_CHUNK_BYTES = 1 << 16  # 3 tensors per 64 KiB chunk
    try:
        ts = stores.pinned_empty(7, shape, torch.float16, alloc=alloc)
    finally:
        stores.PIN_CHUNK_BYTES = old
    assert sizes == [1 << 16, 1 << 16, 1 << 15]  # the last chunk holds one tensor: the next power of two
    assert all(t.shape == shape and t.dtype == torch.float16 for t in ts)
    for i, t in enumerate(ts):
        t.fill_(i)
    assert all(bool((t == i).all()) for i, t in enumerate(ts))  # no tensor overlaps another
    assert all(t.storage_offset() * t.element_size() % stores.PIN_ALIGN == 0 for t in ts)  # page-aligned in its chunk


def test_store_that_cannot_be_pinned_stays_pageable(monkeypatch):
    st = stores.MemStore(4, 10, 8, torch.float16)
    st.pin_memory = True
    monkeypatch.setattr(stores, "pinned_fits", lambda n: False)
    with pytest.warns(UserWarning, match="not pinned"):
        assert not st.preallocate(2, 2)
    assert not st.pin_memory and not st.data

    def fail(n):
        raise RuntimeError("cudaHostAlloc: out of memory")

    st.pin_memory = True
    monkeypatch.setattr(stores, "pinned_fits", lambda n: True)
    monkeypatch.setattr(stores, "_pinned_bytes", fail)
    with pytest.warns(UserWarning, match="not pinned"):
        assert not st.preallocate(2, 2)
    assert not st.pin_memory
    st.write(1, 1, 3, torch.ones(4, 2, 8, dtype=torch.float16), torch.ones(4, 2, 8, dtype=torch.float16))
    assert st.read(1, 1, 5)[0][:, 3:5].eq(1).all()


def test_pinned_fits_leaves_headroom(monkeypatch):
    monkeypatch.setattr(stores, "available_host_bytes", lambda: 100 << 30)
    assert stores.pinned_fits(70 << 30)
    assert not stores.pinned_fits(80 << 30)
    monkeypatch.setattr(stores, "available_host_bytes", lambda: None)
    assert not stores.pinned_fits(1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_parallel_host_write_equals_store_write(dtype):
    rows, cap, d, n = 11, 40, 16, 30
    src = [torch.randn(rows, n, d).to(dtype) for _ in range(2)]
    want, got = stores.MemStore(rows, cap, d, dtype), stores.MemStore(rows, cap, d, dtype)
    want.write(0, 1, 2, *src)
    with ThreadPoolExecutor(4) as pool:
        r = SimpleNamespace(c=SimpleNamespace(copy_threads=4), copy_pool=lambda: pool)
        _host_write(r, got, 0, 1, 2, *src)
    for a, b in zip(want.read(0, 1, n + 2), got.read(0, 1, n + 2)):
        assert torch.equal(a[:, 2:], b[:, 2:])


def test_csd_threads():
    assert csd_threads_for(EngineOptions(csd_threads=3), 8) == 3
    auto = csd_threads_for(EngineOptions(), 8)
    assert 1 <= auto <= max(1, torch.get_num_threads())
    assert csd_threads_for(EngineOptions(), 10**6) == 1


def test_padded_rows_fill_a_store_row_block():
    """The prompt's rows padded to the store's capacity (CUDA: one DMA into a pinned store)."""
    from inf2hw.ops_io import _padded

    x = torch.randn(3, 2048, 8).transpose(0, 1).transpose(0, 1)  # a view, as the model's K may be
    p = _padded(x, 2064)
    assert p.shape == (3, 2064, 8) and p.is_contiguous() and torch.equal(p[:, :2048], x)
    assert _padded(x, 2048).shape == (3, 2048, 8)
    assert _padded(x, 4096).shape == (3, 2048, 8)  # half the block would be padding: no


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [1, 4])
def test_flash_cpu_attention_matches_reference(dtype, tol, group):
    """The engine's host attention over a reduced-precision store (torch's fused CPU flash
    kernel, over a strided view of the store as the engine reads it): the reference's out to
    the dtype's rounding, its log-sum-exp to fp32 rounding."""
    from inf2hw.host_attention import flash_cpu_attention, flash_cpu_ok

    g = torch.Generator().manual_seed(5)
    q = torch.randn(6, group, 1, 32, generator=g).to(dtype)
    k, v = (torch.randn(6, 50, 32, generator=g).to(dtype)[:, :41] for _ in range(2))  # [rows, ctx, d] views
    assert flash_cpu_ok(k, v) and not flash_cpu_ok(k.float(), v.float())
    out, lse = flash_cpu_attention(q, k, v)
    ref_out, ref_lse = attend_partial(q.float(), k.float(), v.float())
    assert out.dtype == lse.dtype == torch.float32 and out.shape == ref_out.shape and lse.shape == ref_lse.shape
    assert (out - ref_out).abs().max() < tol and (lse - ref_lse).abs().max() < 1e-4
