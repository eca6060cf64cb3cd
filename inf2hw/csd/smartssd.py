"""A Samsung SmartSSD as a CSD of the real engine, through XRT's Python bindings (pyxrt).

Called by `inf2hw.engine` through the `Csd` protocol of `inf2hw.csd.base` (store / load /
send_query / attend / fetch / wait / close; read that docstring for the op -> call mapping and the
tensor shapes), once per SmartSSD, each paired with the SSD on the same card (`SmartSsdCard`:
the FPGA's PCIe BDF and the mount point of that card's NVMe). pyxrt is imported lazily, when a
SmartSsdCsd is built; tests pass `pyxrt_module=inf2hw.csd.pyxrt_emu` (an emulation).

The proven P2P pattern, step by step:
  start   pyxrt.device(bdf); xclbin -> hw_context + kernel (XRT with hw_context) or
          device.load_xclbin + kernel(device, uuid, name) (older XRT); allocate every buffer object
          ONCE: per staging slot two P2P bos in FPGA DRAM for K and V ([rows, stride, d] fp16) and
          normal bos for q, the tails, out and lse; one scratch bo. KV file on the card's own SSD
          (`mount`), opened with O_DIRECT where the filesystem allows it.
  store   (prefill, spills) host tensor -> aligned host buffer -> pwrite, one row at a time.
  load    os.preadv from the file STRAIGHT INTO the P2P bo's mapping (bo.map()): the NVMe DMA
          lands in FPGA DRAM over the card's internal switch; no host bounce buffer, no sync.
  send_query  q (and the tail) into the normal bos' mappings, sync to the device.
  attend  kernel(bos..., ints...) -> run; run.wait(). pyxrt drops Python floats silently, so any
          float scalar is bit-cast to int32 (`f32_as_i32`); the inf2_attention ABI has none today.
  fetch   sync only out and lse back ([n_rows, group, d] and [n_rows, group] fp32).

One worker thread per card executes commands in call order, so SSD reads and kernel runs of one
card do not overlap (cards run concurrently). `staging_slots` (layer, micro-batch) pairs may be
in flight between their first load/send_query and their fetch. Storage is fp16 (the kernel's
type). The KV file lives on `mount` (P2P needs the card's own SSD), not cfg.directory; cfg.compute
and cfg.read_gbps do not apply (the FPGA computes, the SSD sets the rate). File layout: per
(layer, micro-batch, K|V) a region of `rows` rows, each `stride_tokens` token slots of head_dim
fp16 values; a row is 4096-byte aligned. Stores append in token order (base.py's contract): a
store that starts mid-page reads that page back first and zero-fills past its last token.
Units: bytes, tokens, seconds (time.perf_counter).
"""
from __future__ import annotations

import errno
import math
import mmap
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from inf2hw.csd.base import CsdConfig, CsdError, Range, Ticket

PYXRT_MISSING = ("XRT's Python bindings (pyxrt) are needed; they ship with Xilinx XRT "
                 "(source /opt/xilinx/xrt/setup.sh, which puts pyxrt on PYTHONPATH)")
IO_ALIGN = 4096  # O_DIRECT offset/length/address alignment and the flash page
# The kernel's compile-time shape (hls/include/inf2_attn/attn_config.h), which a host program
# cannot query from an xclbin; tests check these against the g++ build.
BLOCK_TOKENS, MAX_TAIL, MAX_GROUP, MAX_HEAD_DIM = 128, 128, 8, 128
_Q, _K, _V, _TK, _TV, _TS, _SCR, _OUT, _LSE = range(9)  # kernel argument indices


@dataclass(frozen=True)
class SmartSsdCard:
    """One SmartSSD: its FPGA's PCIe BDF (`xbutil examine`) and its own NVMe's mount point."""

    bdf: str
    mount: str


def f32_as_i32(x: float) -> int:
    """The int32 whose bits are the fp32 `x`: how a float kernel scalar survives pyxrt's call."""
    return struct.unpack("<i", struct.pack("<f", float(x)))[0]


def _xrt_scalar(x) -> int:
    return f32_as_i32(x) if isinstance(x, float) else int(x)


def _import_pyxrt(index: int):
    try:
        import pyxrt
    except ImportError:
        raise CsdError(f"csd{index}: {PYXRT_MISSING}") from None
    return pyxrt


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _fp16(x, index: int, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    t = torch.as_tensor(x).detach().to("cpu", torch.float16).contiguous()
    if tuple(t.shape) != shape:
        raise CsdError(f"csd{index}: {name} has shape {tuple(t.shape)}, expected {shape}")
    return t.numpy().copy()  # the caller may reuse its tensor before the worker runs


class _Slot:
    """Device buffers for one in-flight (layer, micro-batch): mapped views kept from allocation."""

    def __init__(self, csd: "SmartSsdCsd"):
        self.bos = {i: csd._alloc(i, n) for i, n in csd._slot_bytes.items()}
        self.bos[_SCR] = csd._scratch
        self.view = {i: np.frombuffer(b.map(), dtype=np.uint8) for i, b in self.bos.items() if i != _SCR}
        self.claim(None)

    def claim(self, key: Optional[Tuple[int, int]]) -> None:
        self.key, self.rows, self.attended = key, None, False
        self.n_stored, self.q_rows, self.n_tail, self.tail_mode = 0, -1, 0, 0


class SmartSsdCsd:
    """`Csd` on one SmartSSD; see the module docstring for what each call does on the card."""

    def __init__(self, cfg: CsdConfig, bdf: str, mount: str, xclbin: str, kernel_name: str = "inf2_attention",
                 pyxrt_module=None, staging_slots: int = 2):
        self.index, self.cfg, self.bdf, self.mount = cfg.index, cfg, bdf, mount
        i = cfg.index
        if cfg.dtype != "fp16":
            raise CsdError(f"csd{i}: the SmartSSD kernel stores KV in fp16; got dtype={cfg.dtype}")
        if not (1 <= cfg.head_dim <= MAX_HEAD_DIM and 1 <= cfg.group <= MAX_GROUP):
            raise CsdError(f"csd{i}: head_dim={cfg.head_dim}, group={cfg.group} exceed the kernel's "
                           f"{MAX_HEAD_DIM}, {MAX_GROUP}")
        if not os.path.isdir(mount):
            raise CsdError(f"csd{i}: SSD mount point {mount} is not a directory")
        xrt = self._xrt = pyxrt_module if pyxrt_module is not None else _import_pyxrt(i)
        d, g, rows = cfg.head_dim, cfg.group, cfg.rows
        align_tokens = IO_ALIGN // math.gcd(IO_ALIGN, 2 * d)
        self.stride_tokens = _round_up(max(cfg.capacity_tokens, 1), align_tokens)
        self.stride_bytes = self.stride_tokens * d * 2
        try:
            self._device = xrt.device(bdf)
            xb = xrt.xclbin(xclbin)
            if hasattr(xrt, "hw_context") and hasattr(self._device, "register_xclbin"):
                self._ctx = xrt.hw_context(self._device, self._device.register_xclbin(xb))
                self._kernel = xrt.kernel(self._ctx, kernel_name)
            else:
                self._kernel = xrt.kernel(self._device, self._device.load_xclbin(xb), kernel_name)
        except Exception as exc:
            msg = f"csd{i}: cannot open {bdf} with {xclbin} ({kernel_name}): {exc}"
            raise CsdError(msg.replace("\n", " ")) from exc
        scratch_floats = (self.stride_tokens // BLOCK_TOKENS + 2) * g * BLOCK_TOKENS
        self._slot_bytes = {_K: rows * self.stride_bytes, _V: rows * self.stride_bytes, _Q: rows * g * d * 2,
                            _TK: rows * MAX_TAIL * d * 2, _TV: rows * MAX_TAIL * d * 2, _TS: rows * g * MAX_TAIL * 4,
                            _OUT: rows * g * d * 4, _LSE: rows * g * 4}
        self.device_bytes = 0
        self._scratch = self._alloc(_SCR, 4 * scratch_floats)
        self._slots = [_Slot(self) for _ in range(max(1, staging_slots))]
        self.path = os.path.join(mount, f"inf2-csd{i}-kv.bin")
        self._fd, self.direct_io = self._open(self.path)
        os.ftruncate(self._fd, cfg.num_layers * cfg.num_micro_batches * 2 * max(rows, 1) * self.stride_bytes)
        self._wbuf = mmap.mmap(-1, self.stride_bytes)  # page-aligned host buffer for O_DIRECT writes
        self._seq, self._results, self._failed = 0, {}, None
        self._cv, self._queue = threading.Condition(), queue.Queue()
        self._worker = threading.Thread(target=self._work, name=f"smartssd-csd{i}", daemon=True)
        self._worker.start()

    def _alloc(self, arg: int, nbytes: int):
        xrt = self._xrt
        flags = xrt.bo.p2p if arg in (_K, _V) else xrt.bo.normal
        nbytes = _round_up(max(nbytes, 1), IO_ALIGN)
        try:
            buf = xrt.bo(self._device, nbytes, flags, self._kernel.group_id(arg))
        except Exception as exc:
            hint = f" (P2P on? sudo xbutil configure -d {self.bdf} --p2p enable)" if arg in (_K, _V) else ""
            raise CsdError(f"csd{self.index}: allocating a {nbytes}-byte bo for kernel argument {arg} failed{hint}: "
                           f"{exc}".replace("\n", " ")) from exc
        self.device_bytes += nbytes
        return buf

    def _open(self, path: str) -> Tuple[int, bool]:
        flags, mode = os.O_RDWR | os.O_CREAT | os.O_TRUNC, self.cfg.direct_io
        if mode != "off":
            try:
                return os.open(path, flags | os.O_DIRECT, 0o644), True
            except OSError as exc:
                if mode == "on" or exc.errno != errno.EINVAL:
                    raise CsdError(f"csd{self.index}: cannot open {path} with O_DIRECT: {exc}") from exc
        return os.open(path, flags, 0o644), False

    # ---- the Csd protocol (calling thread) -------------------------------------------------------
    def store(self, layer: int, mb: int, rows: Range, t0: int, k: Any, v: Any) -> Ticket:
        n_tok = int(k.shape[1]) if len(k.shape) == 3 else 0
        shape = (rows[1] - rows[0], n_tok, self.cfg.head_dim)
        ka, va = _fp16(k, self.index, "k", shape), _fp16(v, self.index, "v", shape)
        self._check_rows(layer, mb, rows, t0 + n_tok)
        return self._submit("store", self._do_store, layer, mb, rows, t0, ka, va)

    def load(self, layer: int, mb: int, rows: Range, n_stored: int) -> Ticket:
        self._check_rows(layer, mb, rows, n_stored)
        return self._submit("load", self._do_load, layer, mb, rows, n_stored)

    def send_query(self, layer: int, mb: int, q: Any, tail: Optional[tuple]) -> Ticket:
        n, g, d = int(q.shape[0]), self.cfg.group, self.cfg.head_dim
        qa = _fp16(q, self.index, "q", (n, g, d))
        mode, tail_arrays = 0, ()
        if tail is not None:
            kind, first, tv = tail
            n_tail = int(tv.shape[1])
            if n_tail > MAX_TAIL or kind not in ("kv", "scores"):
                raise CsdError(f"csd{self.index}: tail ({kind!r}, {n_tail} tokens) is not "
                               f"('kv'|'scores', <= {MAX_TAIL} tokens)")
            tva = _fp16(tv, self.index, "tail v", (n, n_tail, d))
            if kind == "kv":
                mode, tail_arrays = 1, (_fp16(first, self.index, "tail k", (n, n_tail, d)), tva)
            else:
                ts = torch.as_tensor(first).detach().to("cpu", torch.float32).contiguous()
                if tuple(ts.shape) != (n, g, n_tail):
                    raise CsdError(f"csd{self.index}: tail scores {tuple(ts.shape)}, expected {(n, g, n_tail)}")
                mode, tail_arrays = 2, (ts.numpy().copy(), tva)
            mode = mode if n_tail else 0
        return self._submit("send_query", self._do_send_query, layer, mb, qa, mode, tail_arrays)

    def attend(self, layer: int, mb: int) -> Ticket:
        return self._submit("attend", self._do_attend, layer, mb)

    def fetch(self, layer: int, mb: int) -> Ticket:
        return self._submit("fetch", self._do_fetch, layer, mb)

    def wait(self, ticket: Ticket) -> Tuple[Any, float, float]:
        if ticket.csd != self.index:
            raise CsdError(f"csd{self.index}: ticket {ticket} belongs to csd{ticket.csd}")
        with self._cv:
            done = self._cv.wait_for(lambda: ticket.seq in self._results, timeout=self.cfg.timeout_s)
            if not done:
                raise CsdError(f"csd{self.index}: {ticket.kind} #{ticket.seq} not done within {self.cfg.timeout_s} s")
            ok, value, t0, t1 = self._results.pop(ticket.seq)
        if not ok:
            raise CsdError(f"csd{self.index}: {ticket.kind} failed: {value}".replace("\n", " "))
        return value, t0, t1

    def close(self) -> None:
        if self._worker is None:
            return
        self._queue.put(None)
        self._worker.join(timeout=self.cfg.timeout_s)
        self._worker = None
        os.close(self._fd)
        if not self.cfg.keep_files:
            os.unlink(self.path)
        self._slots, self._scratch, self._kernel = [], None, None  # release the bos, then the device

    def __enter__(self) -> "SmartSsdCsd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_rows(self, layer: int, mb: int, rows: Range, n_tokens: int) -> None:
        c = self.cfg
        if not (0 <= layer < c.num_layers and 0 <= mb < c.num_micro_batches
                and c.row_lo <= rows[0] <= rows[1] <= c.row_lo + c.rows and 0 <= n_tokens <= c.capacity_tokens):
            raise CsdError(f"csd{self.index}: layer {layer}, micro-batch {mb}, rows {rows}, {n_tokens} tokens "
                           f"outside [0,{c.num_layers}) x [0,{c.num_micro_batches}) x rows [{c.row_lo},"
                           f"{c.row_lo + c.rows}) x {c.capacity_tokens} tokens")

    # ---- the worker ------------------------------------------------------------------------------
    def _submit(self, kind: str, fn, *args) -> Ticket:
        if self._worker is None:
            raise CsdError(f"csd{self.index}: {kind} after close()")
        with self._cv:  # callers on several threads still get distinct, in-order sequence numbers
            self._seq += 1
            self._queue.put((self._seq, fn, args))
            return Ticket(self.index, self._seq, kind)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            seq, fn, args = item
            t0 = time.perf_counter()
            try:
                if self._failed is not None:
                    raise RuntimeError(f"an earlier command failed ({self._failed})")
                res = (True, fn(*args))
            except Exception as exc:
                self._failed = self._failed or f"{type(exc).__name__}: {exc}"
                res = (False, f"{type(exc).__name__}: {exc}")
            with self._cv:
                self._results[seq] = (*res, t0, time.perf_counter())
                self._cv.notify_all()

    def _offset(self, layer: int, mb: int, kv: int, row: int) -> int:
        region = ((layer * self.cfg.num_micro_batches + mb) * 2 + kv) * max(self.cfg.rows, 1)
        return (region + row - self.cfg.row_lo) * self.stride_bytes

    def _slot(self, layer: int, mb: int, create: bool = True) -> _Slot:
        mine = [s for s in self._slots if s.key == (layer, mb)]
        free = [s for s in self._slots if s.key is None] if create else []
        if not mine and not free:
            raise RuntimeError(f"more than {len(self._slots)} (layer, micro-batch) pairs in flight; raise "
                               f"staging_slots" if create else f"nothing staged for layer {layer}, micro-batch {mb}")
        if not mine:
            free[0].claim((layer, mb))
        return (mine or free)[0]

    def _do_store(self, layer: int, mb: int, rows: Range, t0: int, ka: np.ndarray, va: np.ndarray) -> None:
        tok_bytes = self.cfg.head_dim * 2
        lo, hi = t0 * tok_bytes, (t0 + ka.shape[1]) * tok_bytes
        a, b = lo // IO_ALIGN * IO_ALIGN, _round_up(hi, IO_ALIGN)
        buf = memoryview(self._wbuf)
        for kv, arr in ((0, ka), (1, va)):
            for j in range(rows[1] - rows[0]):
                base = self._offset(layer, mb, kv, rows[0] + j)
                if lo > a:  # earlier tokens share the first page: read it back before overwriting
                    self._pread_full(buf[:IO_ALIGN], base + a)
                buf[lo - a: hi - a] = arr[j].reshape(-1).view(np.uint8)
                buf[hi - a: b - a] = bytes(b - hi)  # slots past the new tokens are unwritten
                self._pwrite_full(buf[: b - a], base + a)

    def _do_load(self, layer: int, mb: int, rows: Range, n_stored: int) -> None:
        s = self._slot(layer, mb)
        n, nbytes = rows[1] - rows[0], _round_up(n_stored * self.cfg.head_dim * 2, IO_ALIGN)
        s.rows, s.n_stored = rows, n_stored
        for kv, arg in ((0, _K), (1, _V)):
            mv = memoryview(s.bos[arg].map())  # the P2P mapping: FPGA DRAM behind the card's switch
            if nbytes == self.stride_bytes:  # whole rows: one request for the contiguous range
                self._pread_full(mv[: n * nbytes], self._offset(layer, mb, kv, rows[0]))
            elif nbytes:
                for j in range(n):
                    at = j * self.stride_bytes
                    self._pread_full(mv[at: at + nbytes], self._offset(layer, mb, kv, rows[0] + j))

    def _do_send_query(self, layer: int, mb: int, qa: np.ndarray, mode: int, tails: tuple) -> None:
        s = self._slot(layer, mb)
        s.q_rows, s.tail_mode = qa.shape[0], mode
        s.n_tail = tails[-1].shape[1] if mode else 0
        args = [(_Q, qa)] + ([(_TK, tails[0]), (_TV, tails[1])] if mode == 1 else [])
        args += [(_TS, tails[0]), (_TV, tails[1])] if mode == 2 else []
        to_dev = self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
        for arg, arr in args:
            raw = arr.reshape(-1).view(np.uint8)
            s.view[arg][: raw.size] = raw
            s.bos[arg].sync(to_dev, raw.size, 0)

    def _do_attend(self, layer: int, mb: int) -> None:
        s = self._slot(layer, mb, create=False)
        if s.q_rows < 0:
            raise RuntimeError(f"attend(layer {layer}, micro-batch {mb}) before send_query")
        if s.rows is not None and s.rows[1] - s.rows[0] != s.q_rows:
            raise RuntimeError(f"q has {s.q_rows} rows but rows {s.rows} were loaded")
        c = self.cfg
        scalars = (s.q_rows, s.n_stored, self.stride_tokens, s.n_tail, c.group, c.head_dim, s.tail_mode)
        run = self._kernel(*[s.bos[i] for i in range(9)], *[_xrt_scalar(x) for x in scalars])
        state = run.wait(int(c.timeout_s * 1000))
        if state != self._xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise RuntimeError(f"kernel run ended in {state}{': ' + run.error if getattr(run, 'error', None) else ''}")
        s.attended = True

    def _do_fetch(self, layer: int, mb: int) -> Tuple[torch.Tensor, torch.Tensor]:
        s = self._slot(layer, mb, create=False)
        if not s.attended:
            raise RuntimeError(f"fetch(layer {layer}, micro-batch {mb}) before attend")
        n, g, d = s.q_rows, self.cfg.group, self.cfg.head_dim
        from_dev = self._xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
        out_b, lse_b = n * g * d * 4, n * g * 4
        if n > 0:
            s.bos[_OUT].sync(from_dev, out_b, 0)
            s.bos[_LSE].sync(from_dev, lse_b, 0)
        out = torch.from_numpy(s.view[_OUT][:out_b].view(np.float32).reshape(n, g, d).copy())
        lse = torch.from_numpy(s.view[_LSE][:lse_b].view(np.float32).reshape(n, g).copy())
        s.claim(None)
        return out, lse

    def _pread_full(self, mv: memoryview, offset: int) -> None:
        done = 0
        while done < len(mv):
            got = os.preadv(self._fd, [mv[done:]], offset + done)
            if got <= 0:
                raise RuntimeError(f"short read at byte {offset + done} of {self.path}")
            done += got

    def _pwrite_full(self, mv: memoryview, offset: int) -> None:
        done = 0
        while done < len(mv):
            done += os.pwrite(self._fd, mv[done:], offset + done)


def cards_from_config(section: Mapping) -> List[SmartSsdCard]:
    """`smartssd.cards` ([{bdf, mount}, ...]) -> cards; each BDF and mount used once."""
    cards = [SmartSsdCard(str(c["bdf"]), str(c["mount"])) for c in section.get("cards", [])]
    for field in ("bdf", "mount"):
        values = [getattr(c, field) for c in cards]
        if len(set(values)) != len(values):
            raise CsdError(f"csd: smartssd.cards repeats a {field}: {values}")
    return cards


def open_smartssds(cfgs: Sequence[CsdConfig], cards: Sequence[SmartSsdCard], xclbin: str,
                   kernel_name: str = "inf2_attention", pyxrt_module=None,
                   staging_slots: int = 2) -> List[SmartSsdCsd]:
    """One SmartSsdCsd per CsdConfig, cfgs[i] on cards[i]; closes the opened ones if one fails."""
    if len(cards) < len(cfgs):
        raise CsdError(f"csd: {len(cfgs)} CSDs planned but smartssd.cards lists {len(cards)}")
    out: List[SmartSsdCsd] = []
    try:
        for cfg, card in zip(cfgs, cards):
            out.append(SmartSsdCsd(cfg, card.bdf, card.mount, xclbin, kernel_name, pyxrt_module, staging_slots))
    except BaseException:
        for csd in out:
            csd.close()
        raise
    return out
