"""Disk and memory microbenchmarks of `inf2 calibrate` (the I/O half of `inf2hw.calibrate`).

Called by `inf2hw.calibrate.measure` once per calibration. Every function returns plain
numbers plus a one-line `how` string that the profile writer (`inf2hw.calibrate_profile`)
puts beside the value. Units: bytes, seconds, GB/s = 1e9 B/s.

Disk curves (`disk_curves`): payload bandwidth over request size, read and write,
O_DIRECT and buffered (two ways, see MODES), with 1 process and with N processes at once (each on its own
file in the same directory, started together), because that is how the real engine
uses a disk: one process per emulated CSD, each with its own KV files. Requests are
issued one at a time per process (queue depth 1, like a CSD worker's I/O thread), at
consecutive offsets. Under O_DIRECT a request below 4 KiB is done the way
`inf2hw.csd.kvfile` does it: a 4 KiB read for a read, a read-modify-write of the
4 KiB block for a write; the curve still counts only the payload bytes. Buffered
reads are warm (the file was just written and fits in RAM, as a FlexGen drive file
does in the engine); buffered writes land in the page cache (no fsync); both copy the
payload once more, as `inf2hw.stores.DiskStore` does (bytes <-> bytearray / tensor).
Writes of whole 4 KiB blocks go to a fresh sparse file (the engine's KV files are
created sparse, so its stores allocate blocks as they write), each offset written once:
the run ends at the file's end (at least FRESH_REQUESTS requests), since the engine
never overwrites a KV position within a run and a first write into the page cache
costs a page allocation an overwrite does not (2-3x on the H100 machine); smaller writes
read-modify-write blocks that hold data (a KV append lands in a block already written).
"""
from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .stores import READ_SPLIT_BYTES

ALIGN = 4096
# How each benchmark stream does its I/O, after the engine code it stands for:
#   direct     O_DIRECT preadv / pwrite of an aligned buffer (inf2hw.csd.kvfile, csd.direct_io=on)
#   buffered   the same calls through the page cache (kvfile, csd.direct_io=off)
#   diskstore  page cache, preadv into a buffer / pwrite, split over SPLIT_THREADS calls at once
#              from 2 x stores.READ_SPLIT_BYTES up (inf2hw.stores.DiskStore: FlexGen's drives
#              and the X-cache on flash; the engine's copy_threads, default 4)
MODES = ("direct", "buffered", "diskstore")
SIZES_QUICK = (256, 512, 1024, 2048, 4096, 16384, 65536, 262144, 1 << 20, 4 << 20)
SIZES_FULL = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 1 << 20, 4 << 20, 16 << 20)
STORE_SIZES = (64 << 20,)  # diskstore only: a request the engine splits over its copy threads
SPLIT_THREADS = 4  # inf2hw.run.EngineOptions.copy_threads' default: DiskStore's read / write threads
FRESH_REQUESTS = 4  # a fresh-file write benchmark's file holds at least this many requests (each written once)


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def _ctx():
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


@dataclass
class DiskCurves:
    """One mode's curves: req_bytes -> GB/s for reads and writes, 1 process and N at once."""

    mode: str  # one of MODES
    procs: int
    req_bytes: List[int] = field(default_factory=list)
    read_gbps: List[float] = field(default_factory=list)  # one process
    write_gbps: List[float] = field(default_factory=list)
    read_agg_gbps: List[float] = field(default_factory=list)  # N processes together (sum of bytes / wall)
    write_agg_gbps: List[float] = field(default_factory=list)


# ------------------------------------------------------------------ one process
def _one_stream(path: str, op: str, mode: str, req: int, budget_s: float, max_bytes: int) -> Tuple[int, float]:
    """Issue `op` requests of `req` payload bytes at consecutive offsets for up to
    budget_s / max_bytes, the way `mode` does I/O (see MODES); returns (payload bytes, seconds)."""
    direct, store = mode == "direct", mode == "diskstore"
    io = _round_up(req, ALIGN) if direct else req
    buf = mmap.mmap(-1, max(io, ALIGN))
    buf[:] = bytes(len(buf))  # touched before the clock: the engine's I/O buffers are pooled, reused warm
    buf[: min(len(buf), 64)] = os.urandom(min(len(buf), 64))
    mv = memoryview(buf)
    size = os.stat(path).st_size
    fresh = op == "write" and req >= ALIGN
    if fresh:  # whole-block writes go to a new sparse file, as the engine's KV files are (first write allocates)
        path = f"{path}.w{req}"
        size = max(size, FRESH_REQUESTS * _round_up(io, ALIGN))
        with open(path, "wb") as f:
            f.truncate(size)
    flags = (os.O_RDWR if op == "write" else os.O_RDONLY) | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    span = max(io, (size // max(io, ALIGN)) * max(io, ALIGN))
    moved, off, t0 = 0, 0, time.perf_counter()
    try:
        while True:
            if off + io > span:
                if fresh and moved:  # every engine KV write lands on never-written pages: no overwrites timed
                    return moved, time.perf_counter() - t0
                off = 0
            if store and io >= 2 * READ_SPLIT_BYTES:  # DiskStore: a large read / write in parallel parts
                _split_io(fd, op, mv[:io], off)
            elif op == "read":
                os.preadv(fd, [mv[:io]], off)
            elif direct and req < ALIGN:  # read-modify-write of the covering block (kvfile does this)
                os.preadv(fd, [mv[:ALIGN]], off)
                os.pwrite(fd, mv[:ALIGN], off)
            else:
                os.pwrite(fd, mv[:io], off)
            moved += req
            off += io
            dt = time.perf_counter() - t0
            if (dt >= budget_s or moved >= max_bytes) and (not fresh or moved >= FRESH_REQUESTS * req):
                return moved, dt  # fresh writes: at least FRESH_REQUESTS (a first write alone ran fast)
    finally:
        os.close(fd)
        if fresh:
            os.unlink(path)
        mv.release()
        buf.close()


_SPLIT_POOL: List[ThreadPoolExecutor] = []  # this process's one pool of split calls, as DiskStore has one


def _split_io(fd: int, op: str, view: memoryview, off: int) -> None:
    """`op` over `view` as SPLIT_THREADS preadv / pwrite calls at once (DiskStore._in_parts),
    on the process's one pool of SPLIT_THREADS threads: streams at once share it, as the
    engine's drives share DiskStore's."""
    if not _SPLIT_POOL:
        _SPLIT_POOL.append(ThreadPoolExecutor(SPLIT_THREADS, thread_name_prefix="calibrate-split"))
    step = -(-len(view) // SPLIT_THREADS)
    call = (lambda a: os.preadv(fd, [view[a:a + step]], off + a)) if op == "read" else \
        (lambda a: os.pwrite(fd, view[a:a + step], off + a))
    for job in [_SPLIT_POOL[0].submit(call, a) for a in range(0, len(view), step)]:
        job.result()


def _proc_main(conn, fn, args, barrier, pass_barrier):
    try:
        barrier.wait(30)
        conn.send(("ok", fn(*args, barrier) if pass_barrier else fn(*args)))
    except Exception as e:  # reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def in_processes(fn, arg_lists, pass_barrier: bool = False) -> list:
    """fn(*args) in one process per args, all started together behind a barrier (also
    passed to fn as its last argument with `pass_barrier`, for lock-step rounds); returns
    their results in order, or raises OSError naming a child's failure."""
    ctx = _ctx()
    barrier = ctx.Barrier(len(arg_lists))
    pipes, procs = [], []
    for args in arg_lists:
        a, b = ctx.Pipe(duplex=False)
        pr = ctx.Process(target=_proc_main, args=(b, fn, tuple(args), barrier, pass_barrier), daemon=True)
        pr.start()
        b.close()
        pipes.append(a)
        procs.append(pr)
    got = [c.recv() for c in pipes]
    for pr in procs:
        pr.join(10)
    for tag, val in got:
        if tag == "error":
            raise OSError(f"benchmark child process failed: {val}")
    return [val for _, val in got]


def _streams(paths: List[str], op: str, mode: str, req: int, budget_s: float, max_bytes: int) -> Tuple[float, float]:
    """(per-stream GB/s averaged, aggregate GB/s) of len(paths) streams started together:
    processes (the CSD workers), or for `diskstore` threads of this process (the engine's
    drive I/O threads, sharing one pool of split calls)."""
    if len(paths) == 1:
        b, s = _one_stream(paths[0], op, mode, req, budget_s, max_bytes)
        return b / s / 1e9, b / s / 1e9
    if mode == "diskstore":
        gate = threading.Barrier(len(paths))

        def stream(p: str) -> Tuple[int, float]:
            gate.wait(30)
            return _one_stream(p, op, mode, req, budget_s, max_bytes)

        with ThreadPoolExecutor(len(paths)) as pool:
            got = list(pool.map(stream, paths))
        return _rates(got)
    return _rates(in_processes(_one_stream, [(p, op, mode, req, budget_s, max_bytes) for p in paths]))


def _rates(got: List[Tuple[int, float]]) -> Tuple[float, float]:
    """(bytes, seconds) per stream -> (mean per-stream GB/s, aggregate GB/s)."""
    per = [b / s / 1e9 for b, s in got]
    agg = sum(b for b, _ in got) / max(s for _, s in got) / 1e9
    return sum(per) / len(per), agg


def make_files(directory: str, n: int, file_bytes: int) -> List[str]:
    """n files of file_bytes (random data, fsynced) under `directory`."""
    os.makedirs(directory, exist_ok=True)
    chunk = os.urandom(1 << 20)
    paths = []
    for i in range(n):
        p = os.path.join(directory, f".inf2-calibrate-{os.getpid()}-{i}.bin")
        with open(p, "wb") as f:
            for _ in range(max(1, file_bytes >> 20)):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        paths.append(p)
    return paths


def direct_io_ok(directory: str) -> bool:
    from .csd.kvfile import probe_direct_io

    return probe_direct_io(directory) is None


def disk_curves(paths: List[str], mode: str, sizes, budget_s: float, max_bytes: int,
                tick: Callable[[], None] = lambda: None) -> DiskCurves:
    """Curves for one mode (MODES) over `sizes`, 1 process and len(paths) processes."""
    out = DiskCurves(mode, len(paths))
    for req in sizes:
        out.req_bytes.append(int(req))
        for op in ("read", "write"):
            one, _ = _streams(paths[:1], op, mode, req, budget_s, max_bytes)
            tick()
            _, agg = _streams(paths, op, mode, req, budget_s, max_bytes) if len(paths) > 1 else (one, one)
            tick()
            (out.read_gbps if op == "read" else out.write_gbps).append(one)
            (out.read_agg_gbps if op == "read" else out.write_agg_gbps).append(agg)
    return out


def monotone(xs: List[float]) -> List[float]:
    """Running maximum: a larger request never gets less bandwidth in the profile
    (single noisy points on a shared machine would otherwise dent the curve)."""
    out, m = [], 0.0
    for x in xs:
        m = max(m, x)
        out.append(m)
    return out


# ---------------------------------------------------------------------- memory
def memcpy_gbps(nbytes: int = 64 << 20, repeat: int = 5) -> float:
    """Host memory copy bandwidth (bytes copied / s) of torch's copy_, median of `repeat`."""
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8)
    b = torch.empty_like(a)
    a.fill_(1)
    b.copy_(a)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        b.copy_(a)
        ts.append(time.perf_counter() - t0)
    return nbytes / sorted(ts)[len(ts) // 2] / 1e9


def host_gpu_copies(device: str, nbytes: int = 64 << 20, repeat: int = 5) -> Dict[str, float]:
    """GB/s of host<->GPU copies: h2d/d2h, pinned and pageable, median of `repeat`; plus the
    latency of a 4 KiB copy (us). Only called when torch sees a GPU."""
    import torch

    out: Dict[str, float] = {}
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    for pinned in (True, False):
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        for name, fn in (("h2d", lambda: dev.copy_(host, non_blocking=pinned)),
                         ("d2h", lambda: host.copy_(dev, non_blocking=pinned))):
            fn()
            torch.cuda.synchronize()
            ts = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            out[f"{name}_{'pinned' if pinned else 'pageable'}_gbps"] = nbytes / sorted(ts)[len(ts) // 2] / 1e9
    small_h = torch.empty(4096, dtype=torch.uint8, pin_memory=True)
    small_d = torch.empty(4096, dtype=torch.uint8, device=device)
    lat = []
    for _ in range(50):
        t0 = time.perf_counter()
        small_d.copy_(small_h)
        torch.cuda.synchronize()
        lat.append(time.perf_counter() - t0)
    out["latency_us"] = sorted(lat)[len(lat) // 2] * 1e6
    out["h2d_first_of_two"] = h2d_first_of_two(device, nbytes)
    both = duplex_copies(device, nbytes, repeat)
    out["duplex_gbps"] = both["h2d_with_d2h_gbps"] + both["d2h_with_h2d_gbps"]
    return out


def duplex_copies(device: str, nbytes: int, repeat: int = 5) -> Dict[str, float]:
    """Pinned host->GPU and GPU->host copies of `nbytes`, each alone and both started together
    on two streams (CUDA events; medians of `repeat`): GB/s of each direction alone
    (`h2d_alone_gbps`, `d2h_alone_gbps`) and while the other runs (`h2d_with_d2h_gbps`,
    `d2h_with_h2d_gbps`). PCIe is full duplex; the host's memory and root complex may not be."""
    import torch

    h_in, h_out = (torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(2))
    d_in, d_out = (torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(2))
    streams = {"h2d": torch.cuda.Stream(), "d2h": torch.cuda.Stream()}
    copy = {"h2d": lambda: d_in.copy_(h_in, non_blocking=True), "d2h": lambda: h_out.copy_(d_out, non_blocking=True)}

    def run(which) -> Dict[str, float]:
        start = torch.cuda.Event(enable_timing=True)
        ends = {}
        torch.cuda.synchronize()
        start.record()
        for name in which:
            streams[name].wait_event(start)
            with torch.cuda.stream(streams[name]):
                copy[name]()
                ends[name] = torch.cuda.Event(enable_timing=True)
                ends[name].record()
        torch.cuda.synchronize()
        return {k: nbytes / (start.elapsed_time(e) / 1e3) / 1e9 for k, e in ends.items()}

    run(("h2d", "d2h"))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    both = [run(("h2d", "d2h")) for _ in range(repeat)]
    return {"h2d_alone_gbps": med([run(("h2d",))["h2d"] for _ in range(repeat)]),
            "d2h_alone_gbps": med([run(("d2h",))["d2h"] for _ in range(repeat)]),
            "h2d_with_d2h_gbps": med([b["h2d"] for b in both]), "d2h_with_h2d_gbps": med([b["d2h"] for b in both])}


def h2d_first_of_two(device: str, nbytes: int, repeat: int = 5) -> float:
    """When two equal pinned host->GPU copies start together on two streams, the earlier
    one's finish over one copy's time alone (median of `repeat`): about 1 when the GPU's copy
    engine serves them one after the other, about 2 when they share the link."""
    import torch

    hosts = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    devs = [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(2)]
    streams = [torch.cuda.Stream() for _ in range(2)]

    def run(n: int) -> float:
        start = torch.cuda.Event(enable_timing=True)
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda.synchronize()
        start.record()
        for s, d, h, e in zip(streams[:n], devs, hosts, ends):
            s.wait_event(start)
            with torch.cuda.stream(s):
                d.copy_(h, non_blocking=True)
                e.record()
        torch.cuda.synchronize()
        return min(start.elapsed_time(e) for e in ends)

    run(2)
    ratios = sorted(run(2) / run(1) for _ in range(repeat))
    return ratios[len(ratios) // 2]


class H2dStream:
    """Context manager: a thread copying a pinned `nbytes` host buffer to the GPU on a side
    stream, over and over, until the block ends (the weight stream of a FlexGen-style decode
    step, beside whatever the block times); `pause()` / `resume()` stop and restart the
    copies in between, so a timing alone and one beside them can alternate. `gbps()` is
    what it moved per second while it ran."""

    def __init__(self, nbytes: int, device: str = "cuda"):
        import torch

        self.h = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.d = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.s = torch.cuda.Stream()
        self.stop = threading.Event()
        self.bytes, self.t = 0, 0.0
        self.error: Optional[BaseException] = None
        self.active = threading.Event()
        self.active.set()
        self.th = threading.Thread(target=self._loop, daemon=True)

    def pause(self) -> None:
        """Stop after the copy in flight (returns once it is done)."""
        self.active.clear()
        self.s.synchronize()
        time.sleep(0.002)  # the loop's last synchronize has returned

    def resume(self) -> None:
        self.active.set()
        time.sleep(0.005)  # copies under way again

    def _loop(self) -> None:
        import torch

        try:
            # the caller may time inside torch.inference_mode(), which is per thread: its tensors
            # (these, when made there) can only be written in that mode
            with torch.inference_mode():
                while not self.stop.is_set():
                    if not self.active.wait(0.01):
                        continue
                    t1 = time.perf_counter()
                    with torch.cuda.stream(self.s):
                        self.d.copy_(self.h, non_blocking=True)
                    self.s.synchronize()
                    self.bytes += self.h.numel()
                    self.t += time.perf_counter() - t1
        except BaseException as e:  # re-raised by __exit__: a stream that moved nothing must not time "beside" it
            self.error = e

    def __enter__(self) -> "H2dStream":
        self.th.start()
        time.sleep(0.05)  # the first copies are under way
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.th.join()
        if self.error is not None or not self.bytes:
            raise RuntimeError(f"H2dStream: the host -> GPU copies did not run ({self.error!r})")

    def gbps(self) -> float:
        return self.bytes / self.t / 1e9 if self.t else 0.0
