"""Host-side KV / X stores the real engine keeps outside the CSDs.

Called by `inf2hw.ops` when it executes FlexGen-style ops (KV in host DRAM, on
plain disks read back through the host) and the cooperative X-cache. Tensors are
CPU torch tensors in the storage dtype; positions are token indices.

  MemStore   rows x capacity x width per (layer, micro-batch), in host memory
             (FLEX(DRAM) KV, GPU-resident KV when it lives on the device, X-cache v1).
             `pin_memory=True` (set by the engine on CUDA for stores the GPU copies to
             or from, `inf2hw.ops.OpRunner`) makes `preallocate` allocate every
             (layer, mb) up front, before the run's clock starts, in page-locked memory,
             so those copies are DMA at full link speed and asynchronous. The pinned
             memory comes in power-of-two chunks (torch's pinned allocator rounds every
             allocation up to a power of two: a 338 MB tensor would take 512 MB), each
             holding several (layer, mb) tensors. When the store does not fit beside
             what the machine needs (`pinned_fits`) or pinning fails, it stays pageable
             (`pin_memory` back to False) and the engine takes its host-copy paths.
  DiskStore  the same rows sliced over several files (one per drive, FlexGen's
             RAID0 stand-in: drive i holds a contiguous slice of rows), token-major
             per (layer, mb) so a history read is one contiguous pread per drive and a
             token append one contiguous pwrite. Buffered I/O (FlexGen's own mode):
             the page cache when RAM is free. One copy per direction between the
             tensors and the file (no intermediate bytes objects).
"""
from __future__ import annotations

import math
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from inf2sim.layout import split_even

READ_SPLIT_BYTES = 16 << 20  # DiskStore reads / writes at least twice this size are split over its read threads


PIN_CHUNK_BYTES = 1 << 30  # pinned chunks: a power of two, so the allocator's rounding wastes nothing
PIN_ALIGN = 4096  # every tensor in a chunk starts on a page
PIN_HEADROOM = 0.25  # share of the host's available memory never pinned (the OS, CSD processes, page cache)
PIN_RESERVE_BYTES = 4 << 30  # ... and at least this much


def available_host_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo, or None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def pinned_fits(nbytes: int) -> bool:
    """Whether `nbytes` of page-locked memory leaves the machine enough to run: at most
    (1 - PIN_HEADROOM) of the available memory, and PIN_RESERVE_BYTES left over."""
    avail = available_host_bytes()
    if avail is None:
        return False
    return nbytes <= min((1.0 - PIN_HEADROOM) * avail, avail - PIN_RESERVE_BYTES)


def _pinned_bytes(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def pinned_empty(count: int, shape: Tuple[int, ...], dtype: torch.dtype, alloc=None) -> List[torch.Tensor]:
    """`count` uninitialised page-locked tensors of `shape`, carved from power-of-two
    chunks (PIN_CHUNK_BYTES, or one power of two per tensor when a tensor is larger)
    that `alloc(nbytes)` returns as uint8 tensors (default: torch's pinned allocator).
    Raises RuntimeError when page-locked memory cannot be allocated."""
    alloc = alloc or _pinned_bytes
    item = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(shape) * item
    step = -(-max(nbytes, 1) // PIN_ALIGN) * PIN_ALIGN
    chunk = max(PIN_CHUNK_BYTES, 1 << (step - 1).bit_length())
    per_chunk = chunk // step
    out: List[torch.Tensor] = []
    while len(out) < count:
        k = min(per_chunk, count - len(out))
        size = 1 << (k * step - 1).bit_length()  # the last chunk: the smallest power of two that holds the rest
        buf = alloc(size)
        out += [buf[i * step:i * step + nbytes].view(dtype).view(shape) for i in range(k)]
    return out


class MemStore:
    """[rows, capacity, width] per (layer, mb); width = head_dim (K and V kept apart) or hidden (X)."""

    def __init__(self, rows: int, capacity: int, width: int, dtype: torch.dtype, device="cpu", pairs: bool = True):
        self.rows, self.capacity, self.width, self.dtype, self.device = rows, capacity, width, dtype, device
        self.pairs = pairs
        self.pin_memory = False
        self.data: Dict[Tuple[int, int], List[torch.Tensor]] = {}

    @property
    def tensor_bytes(self) -> int:
        return self.rows * self.capacity * self.width * torch.empty((), dtype=self.dtype).element_size()

    def _get(self, layer: int, mb: int) -> List[torch.Tensor]:
        key = (layer, mb)
        if key not in self.data:
            n = 2 if self.pairs else 1
            pin = self.pin_memory and str(self.device) == "cpu"  # pinned stores are preallocated; this is a stray key
            self.data[key] = [torch.empty(self.rows, self.capacity, self.width, dtype=self.dtype, device=self.device,
                                          pin_memory=pin) for _ in range(n)]
        return self.data[key]

    def preallocate(self, num_layers: int, num_mbs: int) -> bool:
        """Allocate every (layer, mb) now: page-locked if `pin_memory` (and it fits and
        pinning works; else `pin_memory` goes back to False and nothing is allocated
        here: pageable tensors come on first use). Returns whether the store is pinned."""
        if not self.pin_memory or str(self.device) != "cpu":
            self.pin_memory = False
            return False
        keys = [(layer, mb) for layer in range(num_layers) for mb in range(num_mbs) if (layer, mb) not in self.data]
        n = 2 if self.pairs else 1
        need = len(keys) * n * self.tensor_bytes
        if not pinned_fits(need):
            warnings.warn(f"host store of {need / 1e9:.1f} GB not pinned: it does not fit beside "
                          f"{(available_host_bytes() or 0) / 1e9:.1f} GB available (copies go through host memory)")
            self.pin_memory = False
            return False
        try:
            ts = pinned_empty(len(keys) * n, (self.rows, self.capacity, self.width), self.dtype)
        except RuntimeError as e:  # cudaHostAlloc failed (locked-memory limit, no memory): stay pageable
            warnings.warn(f"host store of {need / 1e9:.1f} GB not pinned ({' '.join(str(e).split())[:200]})")
            self.pin_memory = False
            empty = getattr(torch._C, "_host_emptyCache", None)
            if empty is not None:
                empty()  # give back the chunks already pinned
            return False
        for i, key in enumerate(keys):
            self.data[key] = ts[i * n:(i + 1) * n]
        return True

    def touch(self, num_layers: int, num_mbs: int) -> bool:
        """Pageable store: allocate every (layer, mb) now and write it once (zeros), so the
        run's writes do not page-fault (the pinned store's pages exist once allocated, see
        `preallocate`). Skipped (False) when it does not fit beside the memory available."""
        if str(self.device) != "cpu" or self.pin_memory:
            return False
        keys = [(layer, mb) for layer in range(num_layers) for mb in range(num_mbs) if (layer, mb) not in self.data]
        n = 2 if self.pairs else 1
        if not pinned_fits(len(keys) * n * self.tensor_bytes):
            return False
        for key in keys:
            self.data[key] = [torch.zeros(self.rows, self.capacity, self.width, dtype=self.dtype) for _ in range(n)]
        return True

    def write(self, layer: int, mb: int, t0: int, *tensors: torch.Tensor) -> None:
        """tensors: [rows, n, width] each, stored at positions t0 .. t0+n."""
        for dst, src in zip(self._get(layer, mb), tensors):
            dst[:, t0 : t0 + src.shape[1]].copy_(src)

    def write_heads(self, layer: int, mb: int, t0: int, *tensors: torch.Tensor) -> None:
        """tensors: [b, heads, n, width] in the model's layout (any strides), b * heads = rows:
        copied straight into the rows, one strided copy each (no row-major staging copy)."""
        for dst, src in zip(self._get(layer, mb), tensors):
            b, h, n, _ = src.shape
            dst.view(b, h, self.capacity, self.width)[:, :, t0 : t0 + n].copy_(src)

    def read(self, layer: int, mb: int, t1: int) -> List[torch.Tensor]:
        """Views of positions [0, t1): [rows, t1, width] each."""
        return [t[:, :t1] for t in self._get(layer, mb)]


class DiskStore:
    """Rows striped over `dirs` (one file per drive), token-major per (layer, mb).
    `pairs=True` stores K and V per row (width head_dim); False stores one tensor (X)."""

    def __init__(self, dirs: List[str], rows: int, capacity: int, head_dim: int, dtype: torch.dtype,
                 num_layers: int, num_mbs: int, pairs: bool = True, name: str = "kv", read_threads: int = 1):
        self.dirs = [Path(d) for d in dirs]
        self.read_threads = max(1, read_threads)  # a large read or write is split into this many calls at once
        self._readers = None  # their thread pool, made on the first large read
        self.slices = split_even(rows, len(dirs))
        self.capacity, self.d, self.dtype = capacity, head_dim, dtype
        self.item = torch.empty(0, dtype=dtype).element_size()
        self.num_mbs, self.n = num_mbs, (2 if pairs else 1)
        self.fds = []
        self._pool: List[List[torch.Tensor]] = [[] for _ in self.dirs]  # read_pooled buffers per drive
        self._pool_lock = threading.Lock()
        self.paths = [d / f"{name}_drive{i}.bin" for i, d in enumerate(self.dirs)]
        for i, (d, path) in enumerate(zip(self.dirs, self.paths)):
            d.mkdir(parents=True, exist_ok=True)
            self.fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
            # sized now, sparse: writes fill holes instead of extending the file (the prompt's
            # 252 MB writes ran 1.3x slower extending, benchmarks/drive_writes.py on the H100)
            os.ftruncate(self.fds[-1], num_layers * num_mbs * capacity * self._token_bytes(i))

    def _token_bytes(self, i: int) -> int:
        lo, hi = self.slices[i]
        return (hi - lo) * self.n * self.d * self.item

    def _base(self, i: int, layer: int, mb: int) -> int:
        return (layer * self.num_mbs + mb) * self.capacity * self._token_bytes(i)

    def write(self, i: int, layer: int, mb: int, t0: int, *tensors: torch.Tensor) -> int:
        """Drive i's slice of rows of tensors [rows_all, n, d] -> one contiguous pwrite. Returns bytes."""
        lo, hi = self.slices[i]
        n = tensors[0].shape[1]
        big = n * self._token_bytes(i) >= 2 * READ_SPLIT_BYTES  # the prompt's K,V: a pooled buffer, parallel pwrites
        pooled = self._take(i) if big else None
        buf = pooled[:n] if pooled is not None else torch.empty(n, hi - lo, self.n, self.d, dtype=self.dtype)
        try:  # buf: token-major [n, rows_i, pairs, d]
            for j, t in enumerate(tensors):
                buf[:, :, j].copy_(t[lo:hi].transpose(0, 1))  # one copy per tensor
            return self.write_block(i, layer, mb, t0, buf)
        finally:
            if pooled is not None:
                self.release(i, pooled)

    def write_block(self, i: int, layer: int, mb: int, t0: int, block: torch.Tensor) -> int:
        """A contiguous token-major block [n, rows_i, pairs, d] of drive i -> positions t0..
        by pwrite (parallel parts when large). Returns bytes."""
        data = memoryview(block.view(torch.uint8).numpy()).cast("B")
        off = self._base(i, layer, mb) + t0 * self._token_bytes(i)
        self._in_parts(lambda part, at: _pwrite_all(self.fds[i], part, at, self.dirs[i]), data, off)
        return len(data)

    def token_major(self, *tensors: torch.Tensor) -> torch.Tensor:
        """tensors [rows_all, n, d] (K and V; any device) -> one contiguous 1-D tensor holding
        each drive's rows token-major, [n, rows_i, pairs, d], drive after drive (`blocks`
        cuts it): built where the tensors are (on a GPU, before they cross to the host), so
        the drive writes are plain pwrites."""
        parts = [torch.stack([t[lo:hi] for t in tensors], dim=2).transpose(0, 1).reshape(-1) for lo, hi in self.slices]
        return torch.cat(parts)

    def blocks(self, flat: torch.Tensor, n: int) -> List[torch.Tensor]:
        """Drive i's [n, rows_i, pairs, d] view of a `token_major` tensor of n tokens, per drive."""
        out, at = [], 0
        for lo, hi in self.slices:
            size = n * (hi - lo) * self.n * self.d
            out.append(flat[at:at + size].view(n, hi - lo, self.n, self.d))
            at += size
        return out

    def read(self, i: int, layer: int, mb: int, t1: int) -> List[torch.Tensor]:
        """Positions [0, t1) of drive i's rows: [rows_i, t1, d] per stored tensor (one pread)."""
        lo, hi = self.slices[i]
        return self._read_into(torch.empty(t1, hi - lo, self.n, self.d, dtype=self.dtype), i, layer, mb)

    def read_pooled(self, i: int, layer: int, mb: int, t1: int) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """`read` into a reused buffer of drive i (capacity tokens): (views, buffer); the
        caller hands the buffer back with `release` once it has consumed the views. A fresh
        tens-of-MB tensor per read costs page faults on every call, and on a many-core
        host several I/O threads faulting at once serialise on the process's memory map
        (84 MB reads of OPT-13B rows ran at 0.3 GB/s per thread on the H100 machine)."""
        buf = self._take(i)
        return self._read_into(buf[:t1], i, layer, mb), buf

    def _take(self, i: int) -> torch.Tensor:
        """A free [capacity, rows_i, pairs, d] buffer of drive i (a new one when none is free)."""
        with self._pool_lock:
            buf = self._pool[i].pop() if self._pool[i] else None
        if buf is None:
            lo, hi = self.slices[i]
            buf = torch.empty(self.capacity, hi - lo, self.n, self.d, dtype=self.dtype)
        return buf

    def release(self, i: int, buf: torch.Tensor) -> None:
        """Give back a buffer of `read_pooled` on drive i."""
        with self._pool_lock:
            self._pool[i].append(buf)

    def _read_into(self, t: torch.Tensor, i: int, layer: int, mb: int) -> List[torch.Tensor]:
        """t [t1, rows_i, pairs, d] (contiguous) <- one pread; views [rows_i, t1, d] per stored tensor."""
        view = memoryview(t.view(torch.uint8).numpy()).cast("B")
        self._in_parts(lambda part, at: self._pread(i, part, at), view, self._base(i, layer, mb))
        return [t[:, :, j].permute(1, 0, 2) for j in range(self.n)]

    def _in_parts(self, io, view: memoryview, off: int) -> None:
        """io(part, offset) over `view` at file offset `off`: one call, or for a view of at least
        2 x READ_SPLIT_BYTES up to `read_threads` calls at once (one page-cache copy runs at one
        core's copy rate; FlexGen's disk copies run on several threads)."""
        parts = min(self.read_threads, len(view) // READ_SPLIT_BYTES)
        if parts <= 1:
            io(view, off)
            return
        if self._readers is None:
            self._readers = ThreadPoolExecutor(self.read_threads, thread_name_prefix="inf2-diskio")
        step = -(-len(view) // parts)
        for job in [self._readers.submit(io, view[a:a + step], off + a) for a in range(0, len(view), step)]:
            job.result()

    def _pread(self, i: int, view: memoryview, off: int) -> None:
        got = 0
        while got < len(view):  # preadv straight into the tensor (no bytes object in between)
            k = os.preadv(self.fds[i], [view[got:]], off + got)
            if k <= 0:
                raise OSError(f"short read on {self.paths[i]}: {got} of {len(view)} bytes")
            got += k

    def close(self, keep: bool = False) -> None:
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
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
