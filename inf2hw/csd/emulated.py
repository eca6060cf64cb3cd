"""`EmulatedCsd`: a computational storage drive emulated by an OS process.

Called by `inf2hw.engine` (through the `Csd` protocol of `inf2hw.csd.base`) for every
plan op on `csd{i}.*`, and by tests and `benchmarks/csd_io.py`. Each instance starts
one worker process (`inf2hw.csd.worker`, forkserver context, spawn where forkserver is
missing; both are safe when this process already runs torch threads) that owns the
KV files of this CSD under `cfg.directory` (layout and request sizes:
`inf2hw.csd.kvfile`), reads them with O_DIRECT where the filesystem allows, and runs
exact attention with torch (`inf2hw.attention`) or the g++-built HLS kernel.

Data path. Two shared-memory arenas per CSD, created here and sized from the config:
"down" holds store payloads (k, v in the storage dtype; a prefill store of every row is
2 * rows * capacity * head_dim * itemsize bytes, capped by `arena_mib` beyond which a
store is split by rows) plus room for queries and tails (q, tails keep the dtype they
are given); "up" holds fetch results (out fp32 [rows, group, d], lse fp32 [rows, group]).
Both are rings: this side allocates a slot per message and frees it when the command's
reply arrives (copying fetch results out first), so no segment is created per message.
Copies: tensor -> arena here; arena -> file by the worker (through an aligned bounce
buffer under O_DIRECT); fetch results arena -> a fresh tensor here.

Timing and failure. `wait` returns (result, start_s, end_s) with the worker's
time.perf_counter() stamps. It raises `CsdError("csd{i}: ...")` when the worker died
(its process sentinel fires) or went `timeout_s` without any reply while we wait
(a stall: the clock restarts on every reply and on the heartbeat a long store or
load sends every timeout_s / 4, so a long queue of live work is not a stall; one
attend must finish within timeout_s), and for a command that failed in the worker
(ENOSPC names the directory).
After a death or stall every call raises. `close` (idempotent; also run by a weakref
finalizer at interpreter exit, e.g. after Ctrl-C) stops the worker, unlinks both
segments and removes the KV files unless keep_files. The worker ignores SIGINT and
exits by itself when this process disappears.

Semantics beyond base.py: each attend consumes the KV of the latest load and the query
of the latest send_query of its (layer, mb) (load again before the next attend); each
fetch returns the latest attend of its (layer, mb). compute="hls" needs dtype="fp16"
(the kernel reads fp16 K/V; we refuse rather than silently convert the files).
As with any spawn/forkserver child, a script that builds an EmulatedCsd must do so
under ``if __name__ == "__main__":`` (the child re-imports the main module).
"""
from __future__ import annotations

import multiprocessing
import os
import secrets
import time
import weakref
from collections import deque
from multiprocessing import connection, shared_memory
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import worker
from .base import CsdConfig, CsdError, Range, Ticket
from .kvfile import KvGeometry, check_config, kv_paths, remove_files, round_up, use_direct_io
from .worker import TORCH_DTYPE, tensor_at

SLOT_ALIGN = 64  # bytes: every tensor in an arena starts on a cache line
TYPICAL_TAIL = 128  # tokens of write-back tail the down arena has room for without waiting
MAX_OUTSTANDING = 512  # commands in flight before a call drains replies (keeps the pipe from filling)


def _mp_context():
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["inf2hw.csd.worker"])  # torch imported once, in the server
        return ctx
    return multiprocessing.get_context("spawn")


class _Ring:
    """Byte ring over one arena: slots allocated in order, freed in any order, reclaimed in order."""

    def __init__(self, size: int):
        self.size, self.head, self.spans = size, 0, deque()  # spans: [begin, end, freed] in absolute bytes

    def alloc(self, nbytes: int) -> Optional[Tuple[int, list]]:
        n = round_up(max(nbytes, 1), SLOT_ALIGN)
        if not self.spans:
            self.head = 0
        tail = self.spans[0][0] if self.spans else self.head
        pos = self.head % self.size
        skip = self.size - pos if pos + n > self.size else 0  # never wrap a slot around the end
        if self.head + skip + n - tail > self.size:
            return None
        span = [self.head, self.head + skip + n, False]
        self.spans.append(span)
        self.head = span[1]
        return (pos + skip) % self.size, span

    def free(self, span: list) -> None:
        span[2] = True
        while self.spans and self.spans[0][2]:
            self.spans.popleft()


class _State:
    """Everything `close` must release; held by a weakref finalizer, never referring back to the CSD."""

    def __init__(self, cfg: CsdConfig, created_dir: bool):
        self.cfg, self.created_dir = cfg, created_dir
        self.paths = kv_paths(cfg.directory, cfg.index, cfg.num_layers)
        self.shms: List[shared_memory.SharedMemory] = []
        self.arenas: List[Optional[np.ndarray]] = []
        self.conn = self.proc = None
        self.broken: Optional[str] = None
        self.closed = False

    def cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        proc, conn = self.proc, self.conn
        if proc is not None and proc.is_alive():
            if self.broken is None:  # polite: let it drain its queues and remove its files
                try:
                    conn.send(("close", -1))
                    end = time.perf_counter() + min(self.cfg.timeout_s, 10.0)
                    while proc.is_alive() and time.perf_counter() < end:
                        if conn.poll(0.05):
                            conn.recv()  # discard late replies so the worker never blocks on a full pipe
                except (OSError, EOFError):
                    pass
            for stop in (proc.terminate, proc.kill):
                if proc.is_alive():
                    stop()
                    proc.join(2.0)
        if conn is not None:
            conn.close()
        self.arenas = []
        for shm in self.shms:
            try:
                shm.close()
            except BufferError:  # a caller still holds an arena view; unlinking still frees the name
                pass
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
        if not self.cfg.keep_files:
            remove_files(self.paths)
            if self.created_dir:
                try:
                    os.rmdir(self.cfg.directory)
                except OSError:
                    pass


class EmulatedCsd:
    """One emulated CSD (see the module docstring); implements `inf2hw.csd.base.Csd`."""

    def __init__(self, cfg: CsdConfig, *, compute_threads: int = 1, arena_mib: float = 256.0,
                 start_timeout_s: float = 120.0, pin_results: bool = False):
        """compute_threads: torch threads of the worker's I/O and compute threads (the engine
        gives each CSD its share of the cores, `inf2hw.run.csd_threads_for`). pin_results:
        fetched results are copied out of the shared arena into pinned memory (an engine on a
        GPU: its o_h2d then only issues asynchronous copies), else into pageable memory."""
        check_config(cfg)
        self.index, self.cfg, self.pin_results = cfg.index, cfg, pin_results
        self.geom = g = KvGeometry.from_config(cfg)
        self._dtype = TORCH_DTYPE[cfg.dtype]
        created = not os.path.isdir(cfg.directory)
        os.makedirs(cfg.directory, exist_ok=True)
        self.direct = use_direct_io(cfg)
        self._st = st = _State(cfg, created)
        self._finalizer = weakref.finalize(self, st.cleanup)
        try:
            row_store = 2 * round_up(cfg.capacity_tokens * g.token_bytes, SLOT_ALIGN)
            self._store_room = max(row_store, min(cfg.rows * row_store, int(arena_mib * 2**20)))
            self._query_room = self._query_bytes(cfg.rows, cfg.group, TYPICAL_TAIL)
            result = self._result_bytes(cfg.rows, cfg.group)
            tag = f"inf2csd{cfg.index}_{os.getpid()}_{secrets.token_hex(4)}"
            for suffix, size in (("down", self._store_room + 4 * self._query_room), ("up", 8 * result)):
                st.shms.append(shared_memory.SharedMemory(name=f"{tag}_{suffix}", create=True, size=size))
                st.arenas.append(np.ndarray((size,), np.uint8, buffer=st.shms[-1].buf))
            self._down, self._up = _Ring(st.shms[0].size), _Ring(st.shms[1].size)
            ctx = _mp_context()
            st.conn, child = ctx.Pipe()
            st.proc = ctx.Process(target=worker.main, name=f"inf2-csd{cfg.index}", daemon=True,
                                  args=(child, cfg, st.shms[0].name, st.shms[1].name, self.direct,
                                        compute_threads, os.getpid()))
            st.proc.start()
            child.close()
            self.pid = st.proc.pid
            self._seq = 0
            self._pending: Dict[int, tuple] = {}  # seq -> (kind, [(ring, span)], fetch slots or None)
            self._done: Dict[int, tuple] = {}  # seq -> (result, start_s, end_s, error)
            self._groups: Dict[int, List[int]] = {}  # last seq of a split store -> all its seqs
            self._q_rows: Dict[tuple, Tuple[int, int]] = {}  # (layer, mb) -> (rows, group) of the last query
            self._last_reply = time.perf_counter()
            self._await_ready(start_timeout_s)
        except BaseException:
            self._finalizer()
            raise

    # ------------------------------------------------------------- properties
    @property
    def shm_names(self) -> List[str]:
        return [s.name for s in self._st.shms]

    @property
    def kv_paths(self) -> List[str]:
        return list(self._st.paths)

    # --------------------------------------------------------------- the ops
    def store(self, layer: int, mb: int, rows: Range, t0: int, k: Any, v: Any) -> Ticket:
        """k, v [n_rows, n_tokens, head_dim] -> tokens [t0, t0 + n_tokens) of rows `rows` (global)."""
        row0, n_rows = self._rows(layer, mb, rows)
        k, v = torch.as_tensor(k), torch.as_tensor(v)
        d = self.cfg.head_dim
        if k.dim() != 3 or tuple(k.shape[::2]) != (n_rows, d) or v.shape != k.shape:
            raise ValueError(f"csd{self.index}: store k {tuple(k.shape)}, v {tuple(v.shape)} must be [{n_rows}, n_tokens, {d}]")
        n = k.shape[1]
        if not 0 <= t0 <= t0 + n <= self.cfg.capacity_tokens:
            raise ValueError(f"csd{self.index}: store tokens [{t0}, {t0 + n}) exceed capacity {self.cfg.capacity_tokens}")
        per_row = round_up(max(n, 1) * self.geom.token_bytes, SLOT_ALIGN)
        step = max(1, (self._store_room // 2 - SLOT_ALIGN) // per_row)
        seqs = []
        for r in range(0, n_rows, step) if n_rows else [0]:
            m = min(step, n_rows - r)
            kb = round_up(m * n * self.geom.token_bytes, SLOT_ALIGN)
            off, span = self._alloc(self._down, 2 * kb)
            tensor_at(self._st.arenas[0], off, self._dtype, (m, n, d)).copy_(k[r:r + m])
            tensor_at(self._st.arenas[0], off + kb, self._dtype, (m, n, d)).copy_(v[r:r + m])
            args = dict(row0=row0 + r, n_rows=m, t0=t0, n_tokens=n, off_k=off, off_v=off + kb)
            seqs.append(self._submit("store", layer, mb, args, [(self._down, span)]).seq)
        self._groups[seqs[-1]] = seqs
        return Ticket(self.index, seqs[-1], "store")

    def load(self, layer: int, mb: int, rows: Range, n_stored: int) -> Ticket:
        """Read tokens [0, n_stored) of rows `rows` into device memory (one staging buffer)."""
        row0, n_rows = self._rows(layer, mb, rows)
        if not 0 <= n_stored <= self.cfg.capacity_tokens:
            raise ValueError(f"csd{self.index}: load n_stored={n_stored} outside [0, {self.cfg.capacity_tokens}]")
        return self._submit("load", layer, mb, dict(row0=row0, n_rows=n_rows, n_stored=n_stored))

    def send_query(self, layer: int, mb: int, q: Any, tail: Optional[tuple]) -> Ticket:
        """q [n_rows, group, d]; tail None | ("kv", k [n_rows, t, d], v) | ("scores", s [n_rows, group, t] fp32, v)."""
        q = torch.as_tensor(q)
        n_rows, group, d = self._check_query(q, tail)
        parts = [q] + ([torch.as_tensor(tail[1]), torch.as_tensor(tail[2])] if tail is not None else [])
        sizes = [round_up(p.numel() * p.element_size(), SLOT_ALIGN) for p in parts]
        off, span = self._alloc(self._down, sum(sizes))
        descs = []
        for p, size in zip(parts, sizes):
            tensor_at(self._st.arenas[0], off, p.dtype, tuple(p.shape)).copy_(p)
            descs.append((off, p.dtype, tuple(p.shape)))
            off += size
        self._q_rows[(layer, mb)] = (n_rows, group)
        args = dict(q=descs[0], tail=None if tail is None else (tail[0], descs[1], descs[2]))
        return self._submit("send_query", layer, mb, args, [(self._down, span)])

    def attend(self, layer: int, mb: int) -> Ticket:
        self._check_key(layer, mb)
        return self._submit("attend", layer, mb, {})

    def fetch(self, layer: int, mb: int) -> Ticket:
        """The latest attend's (out fp32 [rows, group, d], lse fp32 [rows, group]) via the up arena."""
        if (layer, mb) not in self._q_rows:
            raise CsdError(f"csd{self.index}: fetch(layer={layer}, mb={mb}) before any send_query")
        rows, group = self._q_rows[(layer, mb)]
        ob = round_up(rows * group * self.cfg.head_dim * 4, SLOT_ALIGN)
        off, span = self._alloc(self._up, ob + rows * group * 4)
        slots = (off, (rows, group, self.cfg.head_dim), off + ob, (rows, group))
        return self._submit("fetch", layer, mb, dict(off_out=off, off_lse=off + ob), [(self._up, span)], slots)

    def wait(self, ticket: Ticket) -> Tuple[Any, float, float]:
        """(result, start_s, end_s): result (out, lse) for fetch, else None. Raises CsdError on failure."""
        if ticket.csd != self.index:
            raise ValueError(f"csd{self.index}: {ticket} belongs to csd{ticket.csd}")
        since = time.perf_counter()
        results = []
        for seq in self._groups.pop(ticket.seq, [ticket.seq]):
            while seq not in self._done:
                if seq not in self._pending:
                    raise ValueError(f"csd{self.index}: {ticket} is unknown or was already waited for")
                self._pump(since, f"{ticket.kind} #{ticket.seq}")
            results.append(self._done.pop(seq))
        errors = [r[3] for r in results if r[3]]
        if errors:
            raise CsdError(f"csd{self.index}: {errors[0]}")
        return results[-1][0], results[0][1], results[-1][2]

    def close(self) -> None:
        self._finalizer()

    def _debug_sleep(self, seconds: float) -> Ticket:
        """Tests only: stall the worker's command receiver for `seconds`."""
        return self._submit("sleep", -1, -1, seconds)

    # ------------------------------------------------------------ internals
    def _query_bytes(self, rows: int, group: int, n_tail: int) -> int:
        d, a = self.cfg.head_dim, SLOT_ALIGN
        return round_up(rows * group * d * 4, a) + 2 * round_up(rows * n_tail * d * 4, a) + round_up(rows * group * n_tail * 4, a)

    def _result_bytes(self, rows: int, group: int) -> int:
        return round_up(rows * group * self.cfg.head_dim * 4, SLOT_ALIGN) + round_up(rows * group * 4, SLOT_ALIGN)

    def _check_key(self, layer: int, mb: int) -> None:
        c = self.cfg
        if not (0 <= layer < c.num_layers and 0 <= mb < c.num_micro_batches):
            raise ValueError(f"csd{self.index}: layer={layer}, mb={mb} outside {c.num_layers} layers x "
                             f"{c.num_micro_batches} micro-batches")

    def _rows(self, layer: int, mb: int, rows: Range) -> Tuple[int, int]:
        c = self.cfg
        self._check_key(layer, mb)
        a, b = rows
        if not c.row_lo <= a <= b <= c.row_lo + c.rows:
            raise ValueError(f"csd{self.index}: rows {rows} outside this CSD's slice [{c.row_lo}, {c.row_lo + c.rows})")
        return a - c.row_lo, b - a

    def _check_query(self, q: torch.Tensor, tail: Optional[tuple]) -> Tuple[int, int, int]:
        c, i = self.cfg, self.index
        if q.dim() != 3 or q.shape[1:] != (c.group, c.head_dim) or q.shape[0] > c.rows:
            raise ValueError(f"csd{i}: q {tuple(q.shape)} must be [n_rows <= {c.rows}, group={c.group}, d={c.head_dim}]")
        n_rows = q.shape[0]
        if tail is not None:
            if len(tail) != 3 or tail[0] not in ("kv", "scores"):
                raise ValueError(f"csd{i}: tail must be None, ('kv', k, v) or ('scores', s, v); got {tail[:1]}")
            v = torch.as_tensor(tail[2])
            first = torch.as_tensor(tail[1])
            want = (n_rows, v.shape[1], c.head_dim) if tail[0] == "kv" else (n_rows, c.group, v.shape[1])
            if v.dim() != 3 or v.shape[::2] != (n_rows, c.head_dim) or tuple(first.shape) != want:
                raise ValueError(f"csd{i}: {tail[0]} tail {tuple(first.shape)}, v {tuple(v.shape)} do not fit q {tuple(q.shape)}")
        return n_rows, c.group, c.head_dim

    def _alloc(self, ring: _Ring, nbytes: int) -> Tuple[int, list]:
        if round_up(nbytes, SLOT_ALIGN) > ring.size:
            raise CsdError(f"csd{self.index}: a {nbytes}-byte message exceeds the {ring.size}-byte shared-memory arena")
        since = time.perf_counter()
        while True:
            self._check_usable()
            got = ring.alloc(nbytes)
            if got is not None:
                return got
            self._pump(since, "shared-memory space")

    def _submit(self, kind: str, layer: int, mb: int, args: Any, spans: Optional[list] = None, slots=None) -> Ticket:
        self._check_usable()
        since = time.perf_counter()
        while len(self._pending) >= MAX_OUTSTANDING:
            self._pump(since, "a free command slot")
        seq, self._seq = self._seq, self._seq + 1
        self._pending[seq] = (kind, spans or [], slots)
        try:
            self._st.conn.send((kind, seq, layer, mb, args) if kind != "sleep" else (kind, seq, args))
        except OSError:
            self._fail_dead()
        return Ticket(self.index, seq, kind)

    def _check_usable(self) -> None:
        if self._st.closed:
            raise CsdError(f"csd{self.index}: closed")
        if self._st.broken:
            raise CsdError(self._st.broken)

    def _await_ready(self, timeout_s: float) -> None:
        st = self._st
        ready = connection.wait([st.conn, st.proc.sentinel], timeout_s)
        if st.conn in ready:
            try:
                msg = st.conn.recv()
            except (EOFError, OSError):
                self._fail_dead()
            if msg[0] == "ready":
                self.direct = msg[2]
                return
            raise CsdError(f"csd{self.index}: worker failed to start: {msg[1]}")
        if ready:
            self._fail_dead()
        raise CsdError(f"csd{self.index}: worker pid {self.pid} did not start within {timeout_s:.0f} s")

    def _pump(self, since: float, what: str) -> None:
        """Receive whatever replies arrive within the stall budget; raise if dead or stalled."""
        self._check_usable()
        st = self._st
        left = self.cfg.timeout_s - (time.perf_counter() - max(since, self._last_reply))
        if left <= 0:
            st.broken = (f"csd{self.index}: worker pid {self.pid} stalled: no reply for {self.cfg.timeout_s:.1f} s "
                         f"while waiting for {what}")
            raise CsdError(st.broken)
        ready = connection.wait([st.conn, st.proc.sentinel], left)
        if st.conn in ready:
            try:
                while st.conn.poll():
                    self._on_reply(st.conn.recv())
            except (EOFError, OSError):
                self._fail_dead()
        elif ready:
            self._fail_dead()

    def _on_reply(self, msg: tuple) -> None:
        self._last_reply = time.perf_counter()
        if msg[0] == "alive":
            return
        _, seq, start_s, end_s, err = msg
        _, spans, slots = self._pending.pop(seq)
        result = None
        if slots is not None and err is None:
            up = self._st.arenas[1]
            views = (tensor_at(up, slots[0], torch.float32, slots[1]), tensor_at(up, slots[2], torch.float32, slots[3]))
            result = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin_results).copy_(t) for t in views)
        for ring, span in spans:
            ring.free(span)
        self._done[seq] = (result, start_s, end_s, err)

    def _fail_dead(self) -> None:
        proc = self._st.proc
        proc.join(0.5)
        self._st.broken = f"csd{self.index}: worker process {self.pid} died (exit code {proc.exitcode})"
        raise CsdError(self._st.broken)
