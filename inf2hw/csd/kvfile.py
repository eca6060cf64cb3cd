"""The KV files of one emulated CSD: layout, aligned (O_DIRECT) I/O, read-rate cap.

Called by the CSD worker process (`inf2hw.csd.worker`) for every store and load, and
by `inf2hw.csd.emulated` in the engine's process to check the config, decide direct
I/O (probe) before the worker starts, and remove the files on close. Units: bytes, tokens, seconds, GB/s (1e9 B/s).

File layout. One file per layer, ``csd{i}.layer{l:03d}.kv`` under
`CsdConfig.directory`, created sparse (ftruncate) at
``num_micro_batches * rows * 2 * region_bytes`` bytes, in the storage dtype
(`CsdConfig.dtype`). Row-major per (micro-batch, local row): the K region of the row,
then its V region, each ``region_bytes = cap_pad * head_dim * itemsize`` where
``cap_pad`` is `capacity_tokens` rounded up so that ``region_bytes`` is a multiple of
4096, so every region starts on a 4 KiB boundary::

    k_offset(mb, r) = (mb * rows + r) * 2 * region_bytes      # token t at + t * token_bytes
    v_offset(mb, r) = k_offset(mb, r) + region_bytes           # token_bytes = head_dim * itemsize

Request sizes. Loading tokens [0, n) of a row is ONE pread for K and ONE for V, each
``n * head_dim * itemsize`` bytes (buffered) or that rounded up to 4096 bytes
(O_DIRECT; the 4 KiB rounding covers both 512 B and 4 KiB logical blocks). Storing
tokens [t0, t0 + n) of a row is one pwrite per region of ``n * token_bytes`` bytes.
Under O_DIRECT an unaligned store does read-modify-write of the covering 4 KiB blocks
(only the partial first and last blocks are read back; a one-token decode append of
256 B reads and rewrites one block, two if it straddles a boundary). No partial block is
kept in memory, so the file is always the whole truth and a load never needs a merge.
"""
from __future__ import annotations

import mmap
import os
import time
import warnings
from dataclasses import dataclass
from math import gcd
from typing import Callable, List, Optional

import numpy as np

from .base import CsdError

ALIGN = 4096  # bytes: O_DIRECT offset, length and memory alignment we always honour
ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
_warned_dirs: set = set()


def round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """Anonymous private mapping: page-aligned (4 KiB), zero-filled, usable by O_DIRECT."""
    return mmap.mmap(-1, max(round_up(nbytes, ALIGN), ALIGN), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


@dataclass(frozen=True)
class KvGeometry:
    """Byte geometry of one CSD's KV files (see the module docstring)."""

    rows: int
    num_micro_batches: int
    capacity_tokens: int
    head_dim: int
    itemsize: int

    @classmethod
    def from_config(cls, cfg) -> "KvGeometry":
        return cls(cfg.rows, cfg.num_micro_batches, cfg.capacity_tokens, cfg.head_dim, ITEMSIZE[cfg.dtype])

    @property
    def token_bytes(self) -> int:
        return self.head_dim * self.itemsize

    @property
    def cap_pad(self) -> int:
        """Token slots per region: capacity rounded up to whole 4 KiB blocks of tokens."""
        step = ALIGN // gcd(ALIGN, self.token_bytes)
        return round_up(max(self.capacity_tokens, 1), step)

    @property
    def region_bytes(self) -> int:
        return self.cap_pad * self.token_bytes

    @property
    def file_bytes(self) -> int:
        return self.num_micro_batches * self.rows * 2 * self.region_bytes

    def k_offset(self, mb: int, row: int) -> int:
        return (mb * self.rows + row) * 2 * self.region_bytes

    def v_offset(self, mb: int, row: int) -> int:
        return self.k_offset(mb, row) + self.region_bytes

    def request_bytes(self, n_tokens: int, direct: bool) -> int:
        """Bytes of one load request (K or V of one row) for n_tokens stored tokens."""
        n = n_tokens * self.token_bytes
        return round_up(n, ALIGN) if direct else n


def kv_paths(directory: str, index: int, num_layers: int) -> List[str]:
    return [os.path.join(directory, f"csd{index}.layer{layer:03d}.kv") for layer in range(num_layers)]


def probe_direct_io(directory: str) -> Optional[str]:
    """None if `directory` takes O_DIRECT (open, aligned write, aligned read), else why not."""
    if not hasattr(os, "O_DIRECT"):
        return "this OS has no O_DIRECT"
    path = os.path.join(directory, f".inf2-odirect-probe-{os.getpid()}")
    buf = aligned_buffer(ALIGN)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError as e:
        return f"open(O_DIRECT) failed: {e.strerror}"
    try:
        buf[:8] = b"inf2prob"
        if os.pwrite(fd, memoryview(buf), 0) != ALIGN or os.preadv(fd, [memoryview(buf)], 0) != ALIGN:
            return "short O_DIRECT transfer"
        return None
    except OSError as e:
        return f"O_DIRECT write/read failed: {e.strerror}"
    finally:
        os.close(fd)
        buf.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def check_config(cfg) -> None:
    """Raise CsdError (one line, `csd{i}: ...`) for a CsdConfig no CSD can serve."""
    i = cfg.index
    if cfg.dtype not in ITEMSIZE:
        raise CsdError(f"csd{i}: dtype={cfg.dtype!r} must be one of {sorted(ITEMSIZE)}")
    if cfg.compute not in ("torch", "hls"):
        raise CsdError(f"csd{i}: compute={cfg.compute!r} must be 'torch' or 'hls'")
    if cfg.compute == "hls" and cfg.dtype != "fp16":
        raise CsdError(f"csd{i}: compute='hls' needs dtype='fp16' (the kernel reads fp16 K/V), got {cfg.dtype!r}")
    if cfg.direct_io not in ("auto", "on", "off"):
        raise CsdError(f"csd{i}: direct_io={cfg.direct_io!r} must be 'auto', 'on' or 'off'")
    if min(cfg.num_layers, cfg.num_micro_batches, cfg.rows, cfg.capacity_tokens, cfg.head_dim, cfg.group) < 1:
        raise CsdError(f"csd{i}: layers, micro-batches, rows, capacity, head_dim and group must all be >= 1: {cfg}")


def use_direct_io(cfg) -> bool:
    """Whether the worker opens its files O_DIRECT: direct_io 'off' -> no; 'on' -> yes or CsdError;
    'auto' -> yes where probe_direct_io passes, else buffered with one RuntimeWarning per directory."""
    if cfg.direct_io == "off":
        return False
    why = probe_direct_io(cfg.directory)
    if why is None:
        return True
    if cfg.direct_io == "on":
        raise CsdError(f"csd{cfg.index}: direct_io='on' but {cfg.directory} refuses O_DIRECT ({why}); "
                       f"use a directory on a disk filesystem, or direct_io='auto'/'off'")
    if cfg.directory not in _warned_dirs:
        _warned_dirs.add(cfg.directory)
        warnings.warn(f"csd{cfg.index}: {cfg.directory} refuses O_DIRECT ({why}); using buffered I/O, "
                      f"so loads may be served from the page cache", RuntimeWarning, stacklevel=3)
    return False


class ReadRateCap:
    """Paces reads so bytes / elapsed stays <= read_gbps (0 = uncapped), per command."""

    def __init__(self, read_gbps: float):
        self.bytes_per_s = read_gbps * 1e9

    def pace(self, nbytes: int, start_s: float, tick: Callable[[], None] = lambda: None) -> None:
        if self.bytes_per_s > 0:
            end = start_s + nbytes / self.bytes_per_s
            while (wait := end - time.perf_counter()) > 0:
                time.sleep(min(wait, 0.5))
                tick()


class KvFiles:
    """The open KV files of one CSD (one per layer) with row-granular store and load."""

    def __init__(self, directory: str, index: int, num_layers: int, geom: KvGeometry, direct: bool):
        self.directory, self.geom, self.direct = directory, geom, direct
        self.paths = kv_paths(directory, index, num_layers)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
        self.fds: List[int] = []
        for p in self.paths:
            fd = os.open(p, flags, 0o644)
            self.fds.append(fd)
            os.ftruncate(fd, geom.file_bytes)  # sparse: space is taken (and ENOSPC met) on store
        # O_DIRECT bounce buffer: one region plus a block on each side for unaligned ends
        self._bounce = aligned_buffer(geom.region_bytes + 2 * ALIGN) if direct else None

    # ---------------------------------------------------------------- store
    def write_rows(self, layer: int, mb: int, row0: int, t0: int, k: np.ndarray, v: np.ndarray,
                   tick: Callable[[], None] = lambda: None) -> int:
        """Write tokens [t0, t0 + n) of rows row0.. ; k, v: uint8 [n_rows, n * token_bytes]. Returns bytes."""
        fd, g = self.fds[layer], self.geom
        skip = t0 * g.token_bytes
        for i in range(k.shape[0]):
            self._pwrite(fd, k[i], g.k_offset(mb, row0 + i) + skip)
            self._pwrite(fd, v[i], g.v_offset(mb, row0 + i) + skip)
            tick()
        return 2 * k.size

    def _pwrite(self, fd: int, data: np.ndarray, off: int) -> None:
        if not data.size:
            return
        if not self.direct:
            _write_all(fd, memoryview(data), off)
            return
        end = off + data.size
        a0, a1 = off - off % ALIGN, round_up(end, ALIGN)
        span = a1 - a0
        mv = memoryview(self._bounce)
        if off > a0:  # partial first block: keep the tokens before t0
            _read_all(fd, mv[:ALIGN], a0)
        if end < a1 and (a1 - ALIGN > a0 or off == a0):  # partial last block not read above
            _read_all(fd, mv[span - ALIGN:span], a1 - ALIGN)
        mv[off - a0:end - a0] = memoryview(data).cast("B")
        _write_all(fd, mv[:span], a0)

    # ----------------------------------------------------------------- load
    def read_rows(self, layer: int, mb: int, row0: int, n_rows: int, n_tokens: int, k_dst: memoryview,
                  v_dst: memoryview, tick: Callable[[], None] = lambda: None) -> int:
        """Read tokens [0, n_tokens) of rows row0.. into k_dst / v_dst (row stride region_bytes,
        4 KiB aligned). One pread per row for K and one for V. Returns bytes read."""
        fd, g = self.fds[layer], self.geom
        req = g.request_bytes(n_tokens, self.direct)
        if req == 0:
            return 0
        stride = g.region_bytes
        for i in range(n_rows):
            _read_all(fd, k_dst[i * stride:i * stride + req], g.k_offset(mb, row0 + i))
            _read_all(fd, v_dst[i * stride:i * stride + req], g.v_offset(mb, row0 + i))
            tick()
        return 2 * n_rows * req

    # ------------------------------------------------------------- lifetime
    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None


def remove_files(paths: List[str]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _write_all(fd: int, mv: memoryview, off: int) -> None:
    done = 0
    while done < len(mv):
        n = os.pwrite(fd, mv[done:], off + done)
        if n <= 0:
            raise OSError(f"pwrite returned {n} at offset {off + done}")
        done += n


def _read_all(fd: int, mv: memoryview, off: int) -> None:
    done = 0
    while done < len(mv):
        n = os.preadv(fd, [mv[done:]], off + done)
        if n <= 0:
            raise OSError(f"short read: {done} of {len(mv)} bytes at offset {off} (file ends)")
        done += n
