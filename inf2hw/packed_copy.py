"""One copy for several small tensors between the host and a GPU.

Called by `inf2hw.ops_io` (the plan's `q_d2h`: a decode step's query rows and new K,V to
the host) and `inf2hw.ops` (`o_h2d`: the host's and the CSDs' attention results of a layer
to the GPU), and by `inf2hw.calibrate_dense`, which times the same call for the profile's
copy latency. A copy to or from pageable host memory blocks the host until the stream
reaches it; N small tensors moved one by one pay that wait, a driver staging copy and a
Python round trip N times (three per `q_d2h` before: 0.35-0.57 ms on an H100 against
0.03-0.05 ms for one). Packed, they pay it once: each tensor is laid out as bytes in one
buffer at a 16-byte-aligned offset, the buffer crosses once, and the results are views
of it. Sizes are bytes; shapes and dtypes are the inputs'.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

ALIGN_B = 16  # every slot starts on a multiple of this (any dtype can view it)


def same_device(a: torch.device, b: torch.device) -> bool:
    """`cuda` and `cuda:0` name one device here (the engine computes on one): an unindexed
    device matches any index of its type. (torch.device("cuda") != torch.device("cuda:0").)"""
    return a.type == b.type and (a.index == b.index or a.index is None or b.index is None)


def _slots(shapes_dtypes: Sequence[Tuple[torch.Size, torch.dtype]]) -> Tuple[List[int], int]:
    """Byte offset of each tensor in the packed buffer, and the buffer's size."""
    offs, n = [], 0
    for shape, dt in shapes_dtypes:
        offs.append(n)
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
        n += -(-nbytes // ALIGN_B) * ALIGN_B
    return offs, max(n, ALIGN_B)


def _view(buf: torch.Tensor, off: int, shape: torch.Size, dt: torch.dtype) -> torch.Tensor:
    n = shape.numel() * torch.empty((), dtype=dt).element_size()
    return buf[off:off + n].view(dt).view(shape)


def to_host(ts: Sequence[torch.Tensor], dtype: torch.dtype) -> List[torch.Tensor]:
    """GPU tensors -> contiguous host tensors of `dtype`, through one device-to-host copy
    (the dtype conversion and the gather run on the GPU, into one buffer)."""
    shapes = [(t.shape, dtype) for t in ts]
    offs, size = _slots(shapes)
    dev = torch.empty(size, dtype=torch.uint8, device=ts[0].device)  # [size] bytes
    for t, off in zip(ts, offs):
        _view(dev, off, t.shape, dtype).copy_(t)
    host = dev.to("cpu")  # the one copy; it waits for the work queued before it
    return [_view(host, off, t.shape, dtype) for t, off in zip(ts, offs)]


def to_device(ts: Sequence[torch.Tensor], device) -> List[torch.Tensor]:
    """Host tensors (any dtypes, any strides) -> the same values on `device`, through one
    host-to-device copy. Tensors already on `device` are returned as they are."""
    device = torch.device(device)
    move = [i for i, t in enumerate(ts) if not same_device(t.device, device)]
    out = list(ts)
    if not move:
        return out
    shapes = [(ts[i].shape, ts[i].dtype) for i in move]
    offs, size = _slots(shapes)
    host = torch.empty(size, dtype=torch.uint8)  # [size] bytes
    for i, off in zip(move, offs):
        _view(host, off, ts[i].shape, ts[i].dtype).copy_(ts[i])
    dev = host.to(device)  # the one copy
    for i, off in zip(move, offs):
        out[i] = _view(dev, off, ts[i].shape, ts[i].dtype)
    return out
