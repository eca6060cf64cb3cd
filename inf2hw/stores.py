"""Host-side KV / X stores the real engine keeps outside the CSDs.

Called by `inf2hw.ops` when it executes FlexGen-style ops (KV in host DRAM, on
plain disks read back through the host) and the cooperative X-cache. Tensors are
CPU torch tensors in the storage dtype; positions are token indices.

  MemStore   rows x capacity x width per (layer, micro-batch), in host memory
             (FLEX(DRAM) KV, GPU-resident KV when it lives on the device, X-cache v1).
             `pin_memory=True` (set by the engine on CUDA for stores it copies to the
             GPU every step) allocates page-locked memory, so those copies are DMA at
             full link speed and asynchronous; `preallocate` allocates every
             (layer, mb) up front, before the run's clock starts.
  DiskStore  the same rows sliced over several files (one per drive, FlexGen's
             RAID0 stand-in: drive i holds a contiguous slice of rows), token-major
             per (layer, mb) so a history read is one contiguous pread per drive and a
             token append one contiguous pwrite. Buffered I/O (FlexGen's own mode):
             the page cache when RAM is free. One copy per direction between the
             tensors and the file (no intermediate bytes objects).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from inf2sim.layout import split_even


class MemStore:
    """[rows, capacity, width] per (layer, mb); width = head_dim (K and V kept apart) or hidden (X)."""

    def __init__(self, rows: int, capacity: int, width: int, dtype: torch.dtype, device="cpu", pairs: bool = True):
        self.rows, self.capacity, self.width, self.dtype, self.device = rows, capacity, width, dtype, device
        self.pairs = pairs
        self.pin_memory = False
        self.data: Dict[Tuple[int, int], List[torch.Tensor]] = {}

    def _get(self, layer: int, mb: int) -> List[torch.Tensor]:
        key = (layer, mb)
        if key not in self.data:
            n = 2 if self.pairs else 1
            pin = self.pin_memory and str(self.device) == "cpu"
            self.data[key] = [torch.empty(self.rows, self.capacity, self.width, dtype=self.dtype, device=self.device,
                                          pin_memory=pin) for _ in range(n)]
        return self.data[key]

    def preallocate(self, num_layers: int, num_mbs: int) -> None:
        """Allocate every (layer, mb) now (pinned allocations touch their pages)."""
        for layer in range(num_layers):
            for mb in range(num_mbs):
                self._get(layer, mb)

    def write(self, layer: int, mb: int, t0: int, *tensors: torch.Tensor) -> None:
        """tensors: [rows, n, width] each, stored at positions t0 .. t0+n."""
        for dst, src in zip(self._get(layer, mb), tensors):
            dst[:, t0 : t0 + src.shape[1]].copy_(src)

    def read(self, layer: int, mb: int, t1: int) -> List[torch.Tensor]:
        """Views of positions [0, t1): [rows, t1, width] each."""
        return [t[:, :t1] for t in self._get(layer, mb)]


class DiskStore:
    """Rows striped over `dirs` (one file per drive), token-major per (layer, mb).
    `pairs=True` stores K and V per row (width head_dim); False stores one tensor (X)."""

    def __init__(self, dirs: List[str], rows: int, capacity: int, head_dim: int, dtype: torch.dtype,
                 num_layers: int, num_mbs: int, pairs: bool = True, name: str = "kv"):
        self.dirs = [Path(d) for d in dirs]
        self.slices = split_even(rows, len(dirs))
        self.capacity, self.d, self.dtype = capacity, head_dim, dtype
        self.item = torch.empty(0, dtype=dtype).element_size()
        self.num_mbs, self.n = num_mbs, (2 if pairs else 1)
        self.fds = []
        self.paths = [d / f"{name}_drive{i}.bin" for i, d in enumerate(self.dirs)]
        for d, path in zip(self.dirs, self.paths):
            d.mkdir(parents=True, exist_ok=True)
            self.fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))

    def _token_bytes(self, i: int) -> int:
        lo, hi = self.slices[i]
        return (hi - lo) * self.n * self.d * self.item

    def _base(self, i: int, layer: int, mb: int) -> int:
        return (layer * self.num_mbs + mb) * self.capacity * self._token_bytes(i)

    def write(self, i: int, layer: int, mb: int, t0: int, *tensors: torch.Tensor) -> int:
        """Drive i's slice of rows of tensors [rows_all, n, d] -> one contiguous pwrite. Returns bytes."""
        lo, hi = self.slices[i]
        n = tensors[0].shape[1]
        buf = torch.empty(n, hi - lo, self.n, self.d, dtype=self.dtype)  # token-major: [n, rows_i, pairs, d]
        for j, t in enumerate(tensors):
            buf[:, :, j].copy_(t[lo:hi].transpose(0, 1))  # one copy per tensor
        data = memoryview(buf.view(torch.uint8).numpy()).cast("B")
        off = self._base(i, layer, mb) + t0 * self._token_bytes(i)
        _pwrite_all(self.fds[i], data, off, self.dirs[i])
        return len(data)

    def read(self, i: int, layer: int, mb: int, t1: int) -> List[torch.Tensor]:
        """Positions [0, t1) of drive i's rows: [rows_i, t1, d] per stored tensor (one pread)."""
        lo, hi = self.slices[i]
        t = torch.empty(t1, hi - lo, self.n, self.d, dtype=self.dtype)
        view = memoryview(t.view(torch.uint8).numpy()).cast("B")
        off, got = self._base(i, layer, mb), 0
        while got < len(view):  # one preadv straight into the tensor (no bytes object in between)
            k = os.preadv(self.fds[i], [view[got:]], off + got)
            if k <= 0:
                raise OSError(f"short read on {self.paths[i]}: {got} of {len(view)} bytes")
            got += k
        return [t[:, :, j].permute(1, 0, 2) for j in range(self.n)]

    def close(self, keep: bool = False) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        if not keep:
            for p in self.paths:
                p.unlink(missing_ok=True)


def _pwrite_all(fd: int, data, off: int, where: Path) -> None:
    try:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, off)
            view, off = view[n:], off + n
    except OSError as e:
        if e.errno == 28:
            free = shutil.disk_usage(where).free
            raise OSError(28, f"no space left on {where} ({free} bytes free) while writing KV") from None
        raise
