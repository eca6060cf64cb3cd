"""inf2hw.packed_copy: many tensors through one buffer keep their values, shapes and dtypes."""
import pytest
import torch

from inf2hw.packed_copy import ALIGN_B, _slots, same_device, to_device, to_host


def _mixed():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 4, 3, 8, generator=g)[:, :, :1]  # [6, 4, 1, 8], a strided view
    k = torch.randn(6, 1, 8, generator=g).to(torch.float16)
    lse = torch.randn(5, 3, generator=g).t()  # non-contiguous [3, 5]
    odd = torch.arange(7, dtype=torch.int8)  # 7 bytes: the next slot must still be aligned
    return [q, k, lse, odd]


def test_slots_are_aligned_and_disjoint():
    ts = _mixed()
    offs, size = _slots([(t.shape, t.dtype) for t in ts])
    assert all(o % ALIGN_B == 0 for o in offs)
    ends = [o + t.numel() * t.element_size() for o, t in zip(offs, ts)]
    assert all(e <= o2 for e, o2 in zip(ends, offs[1:])) and ends[-1] <= size


def test_to_host_converts_and_keeps_values():
    ts = _mixed()[:3]
    got = to_host(ts, torch.float32)
    for t, h in zip(ts, got):
        assert h.dtype == torch.float32 and h.shape == t.shape and h.is_contiguous()
        assert torch.equal(h, t.to(torch.float32))


def test_to_device_on_the_same_device_returns_the_inputs():
    ts = _mixed()
    assert all(a is b for a, b in zip(to_device(ts, "cpu"), ts))


def test_to_device_keeps_shapes_and_dtypes():
    ts = _mixed()
    moved = to_device(ts, "meta")  # a device other than the host: the values cannot be read, the layout can
    assert [(m.shape, m.dtype, m.device.type) for m in moved] == [(t.shape, t.dtype, "meta") for t in ts]


def test_an_unindexed_device_is_the_indexed_one():
    # the engine's device is "cuda"; tensors there report "cuda:0": they must not be moved
    assert same_device(torch.device("cuda:0"), torch.device("cuda"))
    assert same_device(torch.device("cuda"), torch.device("cuda:1"))
    assert not same_device(torch.device("cuda:0"), torch.device("cuda:1"))
    assert not same_device(torch.device("cpu"), torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_round_trip_and_no_copy_for_tensors_already_there():
    ts = [t.cuda() for t in _mixed()[:3]]
    assert all(a is b for a, b in zip(to_device(ts, "cuda"), ts))  # the engine's device string
    host = to_host(ts, torch.float32)
    back = to_device(host, "cuda")
    assert all(torch.equal(b.cpu(), t.float().cpu()) for b, t in zip(back, ts))
