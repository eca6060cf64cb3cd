"""The process of one emulated CSD: KV files, an I/O thread, a compute thread.

Started only by `inf2hw.csd.emulated.EmulatedCsd` (forkserver or spawn context), which
calls `main` in the child. The engine's process sends commands over a Pipe; tensors
travel through two shared-memory arenas the parent created: "down" (store payloads,
queries, tails; the parent allocates ring slots and frees a slot when the command's
reply arrives) and "up" (fetch results, written at the offset the fetch named).

Threads:
  receiver (main thread)  reads commands; copies each query/tail out of the down arena
                          at once (small); binds attend to the latest load and query of
                          its (layer, mb), fetch to the latest attend; queues the rest.
  io                      store (pwrite from the arena, via a bounce buffer under
                          O_DIRECT) and load (pread into an aligned staging buffer),
                          FIFO, so a load sees every store queued before it.
  compute                 attend (waits for its bound load) and fetch, FIFO. Torch
                          attention runs in pieces of rows (`inf2hw.host_attention.cpu_attention`,
                          fp32 buffers reused across calls) on `threads` torch threads,
                          set on each thread itself (OpenMP teams are per thread).
So the load of layer l+1 runs while layer l attends. Each load takes a staging buffer
(K and V [rows, cap_pad, head_dim] in the storage dtype, mmap-aligned) from a free list;
the attend that consumes the load gives it back, and a load superseded before any
attend is given back when its successor starts. One attend per load.

Replies: ("ready", pid, direct) once; ("done", seq, start_s, end_s, error|None) per
command, times on time.perf_counter() (system-wide monotonic, comparable with the
parent's); ("alive",) every timeout_s / 4 inside a long store or load, so only a
real stall goes quiet. The worker ignores SIGINT (the parent owns shutdown) and exits, removing
its KV files unless keep_files, when the pipe reaches EOF or its parent changes.
"""
from __future__ import annotations

import errno
import os
import queue
import signal
import threading
import time
from multiprocessing import shared_memory
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .base import CsdConfig
from .kvfile import KvFiles, KvGeometry, ReadRateCap, aligned_buffer, kv_paths, remove_files

TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTN_PIECE_BYTES = 4 << 20  # fp32 K (or V) of one piece of the worker's attention: stays in cache with 8 workers'


def tensor_at(u8: np.ndarray, off: int, dtype: torch.dtype, shape: Tuple[int, ...]) -> torch.Tensor:
    """A torch view of `shape`/`dtype` on bytes [off, ...) of a uint8 arena (no copy)."""
    n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    return torch.from_numpy(u8[off:off + n]).view(dtype).view(shape)


def tensor_copy_at(u8: np.ndarray, off: int, dtype: torch.dtype, shape: Tuple[int, ...]) -> torch.Tensor:
    """A copy of `tensor_at(...)` made by numpy: one memcpy on the calling thread. A torch
    copy here would start an OpenMP team of the receiver thread's default size (every
    core) while the compute thread's team is busy: milliseconds for a small query."""
    n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    return torch.from_numpy(u8[off:off + n].copy()).view(dtype).view(shape)


def piece_rows(n: int, head_dim: int) -> int:
    """Rows per piece of the worker's attention over n tokens: fp32 K of a piece within
    `ATTN_PIECE_BYTES` (3 rows at ctx 2064, d 128; one row from ctx 8192)."""
    return max(1, ATTN_PIECE_BYTES // max(1, n * head_dim * 4))


def torch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int, tail: Optional[tuple],
                    ws=None, rows_per_piece: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A worker's torch attend: q [rows, group, d] over the first n tokens of k, v
    [rows, cap, d] (storage dtype) and the tail (None | ("kv", k_tail, v_tail) |
    ("scores", s [rows, group, tail] fp32, v_tail)) -> (out [rows, group, d], lse
    [rows, group]) fp32. fp16/bf16 K,V go through `inf2hw.host_attention.cpu_attention` in pieces of
    `rows_per_piece` rows (default: `piece_rows`) with the worker's reused fp32 buffers
    `ws` (a fresh fp32 copy of the whole K and V per call ran at ~0.5 GB/s on one core,
    pieces at ~4 GB/s: benchmarks/csd_attention.py); fp32 K,V take `inf2hw.attention`
    itself (bit-for-bit what the worker computed before pieces)."""
    from ..attention import tail_scores
    from ..host_attention import cpu_attention

    q4, k, v = q.unsqueeze(2), k[:, :n], v[:, :n]  # q4 [rows, group, 1, d]; k, v [rows, n, d]
    rows_per_piece = rows_per_piece or piece_rows(n, q.shape[-1])
    if tail is None:
        out, lse = cpu_attention(q4, k, v, rows_per_piece, ws)
    else:
        s = tail_scores(q4, tail[1]) if tail[0] == "kv" else tail[1].unsqueeze(2)  # [rows, group, 1, tail]
        out, lse = cpu_attention(q4, k, v, rows_per_piece, ws, scores_tail=s, v_tail=tail[2])
    return out.squeeze(2), lse.squeeze(2)  # [rows, group, d], [rows, group]


class _Job:
    """One command on its way through a thread; `done` is set when it finished (ok or not)."""

    def __init__(self, seq: int, kind: str, layer: int = -1, mb: int = -1, **args: Any):
        self.seq, self.kind, self.layer, self.mb, self.args = seq, kind, layer, mb, args
        self.done = threading.Event()
        self.error: Optional[str] = None
        self.staging: Optional[tuple] = None  # load: (mmap, k [rows, cap_pad, d], v [rows, cap_pad, d])
        self.result: Optional[tuple] = None  # attend: (out [rows, group, d], lse [rows, group]) fp32


class CsdWorker:
    """The worker's state and its three threads (see the module docstring); lives in the child only."""

    def __init__(self, conn, cfg: CsdConfig, down_name: str, up_name: str, direct: bool, threads: int):
        self.conn, self.cfg, self.direct = conn, cfg, direct
        self.geom = KvGeometry.from_config(cfg)
        self.dtype = TORCH_DTYPE[cfg.dtype]
        self.threads = max(1, threads)
        torch.set_num_threads(self.threads)
        self.shms = [shared_memory.SharedMemory(name=down_name), shared_memory.SharedMemory(name=up_name)]
        self.down = np.ndarray((self.shms[0].size,), np.uint8, buffer=self.shms[0].buf)
        self.up = np.ndarray((self.shms[1].size,), np.uint8, buffer=self.shms[1].buf)
        self.files = KvFiles(cfg.directory, cfg.index, cfg.num_layers, self.geom, direct)
        self.cap = ReadRateCap(cfg.read_gbps)
        self.send_lock = threading.Lock()
        self.last_beat, self.beat_s = time.perf_counter(), cfg.timeout_s / 4
        self.io_q: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self.compute_q: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self.free_staging: list = []
        self.staging_lock = threading.Lock()
        self.loads: Dict[tuple, _Job] = {}  # (layer, mb) -> latest load no attend consumed yet
        self.queries: Dict[tuple, tuple] = {}  # (layer, mb) -> (q, tail) staged by send_query
        self.attends: Dict[tuple, _Job] = {}  # (layer, mb) -> latest attend no fetch consumed yet
        self.attn_ws = None  # reused fp32 buffers of attend_torch (compute thread only)
        if cfg.compute == "hls":
            from . import hls_kernel

            hls_kernel.load_library()  # build/load now, not inside the first attend
            self.hls_attention = hls_kernel.hls_attention
        else:
            from ..host_attention import AttnWorkspace

            self.attn_ws = AttnWorkspace()

    # -------------------------------------------------------------- plumbing
    def reply(self, *msg) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def alive(self) -> None:
        """Heartbeat from inside a long command, so the parent never mistakes it for a stall."""
        now = time.perf_counter()
        if now - self.last_beat > self.beat_s:
            self.last_beat = now
            self.reply("alive")

    def finish(self, job: _Job, start: float, error: Optional[str]) -> None:
        job.error = error
        job.done.set()
        self.reply("done", job.seq, start, time.perf_counter(), error)

    def run_queue(self, q: "queue.Queue[Optional[_Job]]") -> None:
        torch.set_num_threads(self.threads)  # OpenMP teams are per thread: this thread's own, not the env's default
        while True:
            job = q.get()
            if job is None:
                return
            for dep in ("load", "attend"):  # the clock starts once what it consumes is ready
                if dep in job.args:
                    job.args[dep].done.wait()
            start = time.perf_counter()
            try:
                getattr(self, "do_" + job.kind)(job)
                err = None
            except Exception as e:  # reported to the parent, which raises CsdError
                err = self.describe(job, e)
            self.finish(job, start, err)

    def describe(self, job: _Job, e: Exception) -> str:
        what = f"{job.kind}(layer={job.layer}, mb={job.mb})"
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return f"{what}: no space left on device in {self.cfg.directory} (writing {self.files.paths[job.layer]})"
        return " ".join(f"{what}: {type(e).__name__}: {e}".split())  # CsdError messages are one line

    # ------------------------------------------------------------- io thread
    def do_store(self, job: _Job) -> None:
        a = job.args
        nb = a["n_tokens"] * self.geom.token_bytes
        k = self.down[a["off_k"]:a["off_k"] + a["n_rows"] * nb].reshape(a["n_rows"], nb)  # [rows, n*token_bytes]
        v = self.down[a["off_v"]:a["off_v"] + a["n_rows"] * nb].reshape(a["n_rows"], nb)
        self.files.write_rows(job.layer, job.mb, a["row0"], a["t0"], k, v, self.alive)

    def do_load(self, job: _Job) -> None:
        start = time.perf_counter()
        old = job.args.pop("supersedes")
        if old is not None:
            self.give_back(old)
        job.staging = self.take_staging()
        mm = memoryview(job.staging[0])
        half = self.geom.rows * self.geom.region_bytes
        a = job.args
        try:
            nbytes = self.files.read_rows(job.layer, job.mb, a["row0"], a["n_rows"], a["n_stored"], mm[:half], mm[half:],
                                         self.alive)
        except BaseException:
            self.give_back(job)
            raise
        self.cap.pace(nbytes, start, self.alive)

    def take_staging(self) -> tuple:
        with self.staging_lock:
            if self.free_staging:
                return self.free_staging.pop()
        g = self.geom
        mm = aligned_buffer(2 * g.rows * g.region_bytes)
        u8 = np.frombuffer(mm, np.uint8)
        shape = (g.rows, g.cap_pad, g.head_dim)
        return mm, tensor_at(u8, 0, self.dtype, shape), tensor_at(u8, g.rows * g.region_bytes, self.dtype, shape)

    def give_back(self, load: _Job) -> None:
        if load.staging is not None:
            with self.staging_lock:
                self.free_staging.append(load.staging)
            load.staging = None

    # -------------------------------------------------------- compute thread
    def do_attend(self, job: _Job) -> None:
        load, (q, tail) = job.args["load"], job.args["query"]
        try:
            if load.error:
                raise RuntimeError(f"its load failed: {load.error}")
            rows, n = load.args["n_rows"], load.args["n_stored"]
            if q.shape[0] != rows:
                raise ValueError(f"query has {q.shape[0]} rows but the load staged {rows}")
            k, v = load.staging[1][:rows], load.staging[2][:rows]  # [rows, cap_pad, d] storage dtype
            job.result = self.attend_hls(q, k, v, n, tail) if self.cfg.compute == "hls" else self.attend_torch(q, k, v, n, tail)
        finally:
            self.give_back(load)

    def attend_torch(self, q, k, v, n, tail):
        return torch_attention(q, k, v, n, tail, self.attn_ws)

    def attend_hls(self, q, k, v, n, tail):
        if tail is None:
            return self.hls_attention(q, k, v, n)
        if tail[0] == "kv":
            return self.hls_attention(q, k, v, n, 1, tail_k=tail[1], tail_v=tail[2])
        return self.hls_attention(q, k, v, n, 2, tail_v=tail[2], tail_scores=tail[1])

    def do_fetch(self, job: _Job) -> None:
        att = job.args["attend"]
        if att.error:
            raise RuntimeError(f"its attend failed: {att.error}")
        out, lse = att.result
        a = job.args
        tensor_at(self.up, a["off_out"], torch.float32, tuple(out.shape)).copy_(out)
        tensor_at(self.up, a["off_lse"], torch.float32, tuple(lse.shape)).copy_(lse)

    # ------------------------------------------------------ receiver thread
    def on_command(self, msg: tuple) -> bool:
        kind, seq = msg[0], msg[1]
        if kind == "close":
            return False
        if kind == "sleep":  # debug only (tests): stall the receiver, so every wait times out
            time.sleep(msg[2])
            return True
        layer, mb, args = msg[2], msg[3], msg[4]
        key, job = (layer, mb), _Job(seq, kind, layer, mb, **args)
        if kind == "store":
            self.io_q.put(job)
        elif kind == "load":
            job.args["supersedes"] = self.loads.get(key)
            self.loads[key] = job
            self.io_q.put(job)
        elif kind == "send_query":
            start = time.perf_counter()
            q = tensor_copy_at(self.down, *args["q"])  # [rows, group, d]
            tail = args["tail"]
            if tail is not None:
                tail = (tail[0], tensor_copy_at(self.down, *tail[1]), tensor_copy_at(self.down, *tail[2]))
            self.queries[key] = (q, tail)
            self.finish(job, start, None)
        elif kind == "attend":
            load, query = self.loads.pop(key, None), self.queries.pop(key, None)
            if load is None or query is None:
                missing = "load" if load is None else "send_query"
                self.finish(job, time.perf_counter(), f"attend(layer={layer}, mb={mb}): no {missing} since the last attend")
                return True
            job.args.update(load=load, query=query)
            self.attends[key] = job
            self.compute_q.put(job)
        elif kind == "fetch":
            att = self.attends.pop(key, None)
            if att is None:
                self.finish(job, time.perf_counter(), f"fetch(layer={layer}, mb={mb}): no attend since the last fetch")
                return True
            job.args["attend"] = att
            self.compute_q.put(job)
        return True

    def run(self) -> None:
        threads = [threading.Thread(target=self.run_queue, args=(q,), name=n, daemon=True)
                   for q, n in ((self.io_q, "csd-io"), (self.compute_q, "csd-compute"))]
        for t in threads:
            t.start()
        self.reply("ready", os.getpid(), self.direct)
        try:
            while True:
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    return  # the parent went away
                if not self.on_command(msg):
                    break
            for q in (self.io_q, self.compute_q):
                q.put(None)
            for t in threads:
                t.join()
            self.reply("done", msg[1], time.perf_counter(), time.perf_counter(), None)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.files.close()
        if not self.cfg.keep_files:
            remove_files(self.files.paths)
        self.down = self.up = None
        for s in self.shms:
            try:
                s.close()
            except BufferError:  # a thread still holds a view; the process is exiting anyway
                pass


def _watch_parent(parent_pid: int, cfg: CsdConfig) -> None:
    """Exit (removing the KV files unless keep_files) once the parent process is gone."""
    ppid = os.getppid()
    while True:
        time.sleep(0.25)
        try:
            os.kill(parent_pid, 0)
            alive = os.getppid() == ppid
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            if not cfg.keep_files:
                remove_files(kv_paths(cfg.directory, cfg.index, cfg.num_layers))
            os._exit(3)


def main(conn, cfg: CsdConfig, down_name: str, up_name: str, direct: bool, threads: int, parent_pid: int) -> None:
    """Process entry point (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid, cfg), name="csd-watchdog", daemon=True).start()
    try:
        worker = CsdWorker(conn, cfg, down_name, up_name, direct, threads)
    except Exception as e:
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        if not cfg.keep_files:
            remove_files(kv_paths(cfg.directory, cfg.index, cfg.num_layers))
        return
    worker.run()
