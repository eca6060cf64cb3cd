"""What each plan op means with real tensors: the real engine's op semantics.

Called by `inf2hw.engine.Engine`, one call per op, in dependency order. `start(op)`
either does the work and returns None, or hands it to a CSD (returning a Ticket)
or to a thread (returning a Future). Which work an op is, is read from its class,
`what`, endpoints and tag (the last part of its name) — the same plan the DES times.

Tensor layouts: the model's [batch, heads, tokens, head_dim]; KV rows
r = seq * num_kv_heads + kv_head ([rows, tokens, head_dim]); a row's query heads
[rows, group, head_dim] (see `inf2hw.attention`). Host-side tensors live on the
CPU in the storage dtype; dense compute runs on `device` in the compute dtype.

GPU (device=cuda). Dense work and GPU attention are enqueued on the compute stream
(the runner's own, current on the engine thread for the run) and return at once; streamed
weights go host (pinned) -> one of two GPU weight slots on the copy stream, as do the
attention results made off the GPU (`o_h2d`; the host's attention and the CSDs' fetches make them
in pinned memory); cooperative X loads host (pinned) -> one of
`X_RING` GPU buffers per micro-batch on the X stream. `stream_for(op)` tells the
engine which stream an op's kernels go to; the engine orders streams by events
(see `inf2hw.engine`), so no op waits for the whole device. The host waits for the
GPU only where it reads GPU data (queries going to the CPU or the CSDs, logits);
the prompt's K,V leave the GPU on a D2H stream, on a thread, while the GPU computes
the next layers: by DMA straight into a pinned host store, else through pinned relay
buffers (`inf2hw.ops_io`). Host stores the GPU copies to or from every step (host KV
of the FlexGen DRAM placement, the X-cache) are pinned when `ctx.pin_host` and they fit.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import torch

from inf2sim.layout import keeps_x
from inf2sim.plan import Attention, DenseCompute, Op, Spill, Transfer

from . import attention as A
from .host_attention import AttnWorkspace, attend_drive_buffer, host_attention
from . import model as M
from .qkv_host import HostQkvSlots
from .stores import pinned_fits



DRIVE_RELAYS = 4  # pinned relays made before the clock for FlexGen's drives (the prompt's writes lag its layers)
IO_THREADS = 2  # drive reads / writes (DiskStore) in flight at once; the profile's ssd.io_threads


class StampedPool(ThreadPoolExecutor):
    """A thread pool whose futures carry `stamps_s`: the worker-side perf_counter() when the
    call began and when it ended. The engine's spans use them, so an op's span is its busy
    time on the worker (as in the DES's trace), not the time it queued for a worker or the
    time its completion waited for the engine thread to look (an inline dense op on the
    CPU holds that thread for hundreds of ms)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self.submit_after(None, fn, *args, **kwargs)

    def submit_after(self, ready, fn, /, *args, **kwargs) -> Future:
        """`submit`, but the worker first waits for the CUDA event `ready` (the GPU work that
        makes fn's input; None: no wait) and the span starts after it: a copy's span is
        the copy, not how far the GPU runs behind the host that queued it."""
        stamps: List[float] = []

        def call():
            if ready is not None:
                ready.synchronize()
            stamps.append(time.perf_counter())
            try:
                return fn(*args, **kwargs)
            finally:
                stamps.append(time.perf_counter())

        fut = super().submit(call)
        fut.stamps_s = stamps  # type: ignore[attr-defined]
        return fut


def tag_of(op: Op) -> str:
    return op.name.split(".", 3)[3]


def csd_index(name: str) -> int:
    return int(name.split(".")[0][3:])


class OpRunner:
    """Holds the run's tensors and stores; executes ops (see module docstring)."""

    @property
    def tokens(self) -> List[List[int]]:
        """Each sequence's generated ids so far (copies the heads' ids to the host now)."""
        for m, ids in self._ids_out:
            sl = self._mb_slice(m)
            for j, t in enumerate(ids.tolist()):
                self._tokens[sl.start + j].append(int(t))
        self._ids_out = []
        return self._tokens

    @property
    def last_logits(self) -> Optional[torch.Tensor]:
        """The logits that chose the last token, fp32 [batch, vocab] on the CPU (None before any head)."""
        if not self.step_logits:
            return None
        return torch.cat([self.step_logits[m] for m in sorted(self.step_logits)]).cpu()

    def __init__(self, ctx):
        self.c = ctx  # EngineContext: spec, weights, device, dtypes, csds, stores, layout, prompts
        self.io = StampedPool(max_workers=IO_THREADS, thread_name_prefix="inf2-io")
        threads = (ctx.cpu_threads,) if ctx.cpu_threads > 0 else ()  # OpenMP teams are per thread: set it on that thread
        self.cpu = StampedPool(max_workers=1, thread_name_prefix="inf2-cpu",
                               initializer=torch.set_num_threads if threads else None, initargs=threads)
        self._copy: Optional[ThreadPoolExecutor] = None  # relay -> pageable store copies (`copy_pool`)
        self.attn_ws = AttnWorkspace()  # used by the CPU attention thread only
        self._rope_cache: Dict[tuple, Optional[tuple]] = {}  # (step, t0, t1, seqs) -> RoPE cos, sin
        self.x: Dict[int, torch.Tensor] = {}  # mb -> [mb, t, hidden] current hidden state
        self.xin: Dict[Tuple[int, int], torch.Tensor] = {}  # (L, mb) -> layer input X
        self.qkv: Dict[Tuple[int, int], Tuple[torch.Tensor, ...]] = {}  # device q, k, v
        self.host_qkv: Dict[Tuple[int, int], Tuple[torch.Tensor, ...]] = {}  # q rows, k rows, v rows on host
        self.parts: Dict[Tuple[int, int], List[tuple]] = {}  # attention results per (L, mb)
        self.staged: Dict[tuple, object] = {}  # read buffers, tail scores, X loads, the prompt's K,V
        self.dev_w: Dict[int, M.LayerWeights] = {}  # layer -> its GPU weight slot (streamed weights)
        self.fill: Dict[Tuple[int, int, int], int] = {}  # (csd, L, mb) -> token slots stored
        self._tokens: List[List[int]] = [[] for _ in range(ctx.spec.workload.batch)]
        # each head's ids [mb] where they were made, in step order, until `tokens` is read: a
        # head that waited for its ids on the host (`.tolist()`) held the GIL while the GPU
        # caught up, and the D2H / I/O threads' finished copies sat behind it (a 19 ms copy of
        # the prompt's K,V took 100 ms: it ended when the head did, on the H100, run s9a)
        self._ids_out: List[Tuple[int, torch.Tensor]] = []
        # token ids where the embedding runs: the prompt copied there now (before the clock), each
        # step's next ids left there by its head, so an embed never waits on a host -> GPU copy
        # (on a GPU such a copy queued behind the next layers' weights on the copy engine: 22 ms)
        self.prompt_ids = ctx.prompts.to(ctx.device)  # [batch, P]
        self.next_ids: Dict[int, torch.Tensor] = {}  # micro-batch -> [mb, 1] ids of its latest head
        self.step_logits: Dict[int, torch.Tensor] = {}  # micro-batch -> fp32 [mb, vocab] on the device, latest step
        self.step = 0
        self.cuda = str(ctx.device).startswith("cuda")
        self.w_slots: List[Optional[M.LayerWeights]] = [None, None]
        self.x_bufs: Dict[Tuple[int, int], tuple] = {}  # (mb, ring slot) -> GPU X (or K,V) buffers
        self.relays: List[tuple] = []  # free pinned relay buffers for the prompt's K,V (D2H)
        self.relay_lock = threading.Lock()
        self.kv_out: List = []  # D2H jobs of the prompt's K,V still copying (bounded: GPU memory)
        self.qkv_slots: Optional[HostQkvSlots] = None  # pinned q_d2h buffers (CUDA; `inf2hw.qkv_host`)
        if self.cuda:
            self.copy_stream = ctx.copy_stream or torch.cuda.Stream()
            # the engine thread's compute (and its D2H copies): a stream of its own, current for the
            # whole run (`inf2hw.run`), not the legacy default stream, where step 0's first compute op
            # waited for the weight copies issued before it (23 ms on the H100: benchmarks/step_issue.py)
            self.compute_stream = torch.cuda.Stream()
            self.x_stream = torch.cuda.Stream()
            self.d2h_stream = torch.cuda.Stream()
            self.d2h = StampedPool(max_workers=1, thread_name_prefix="inf2-d2h")
            wl = ctx.spec.workload
            for store in (ctx.coop_store, ctx.host_kv):  # GPU <-> host every step: pinned where it fits, before the clock
                if store is not None and ctx.pin_host:
                    store.pin_memory = True
                    store.preallocate(ctx.spec.model.num_layers, wl.num_micro_batches)
            if (ctx.host_kv is not None and not ctx.host_kv.pin_memory) or ctx.disk_kv is not None or ctx.recent is not None:
                self._give_relay(self._new_relay())  # the prompt's K,V leave through relays (`inf2hw.ops_io`)
                if ctx.disk_kv is not None and ctx.recent is None:  # drive writes hold theirs while they run
                    nbytes = self.relays[0][0].numel() * self.relays[0][0].element_size()
                    for _ in range(DRIVE_RELAYS - 1):
                        if not pinned_fits(2 * nbytes):
                            break
                        self._give_relay(self._new_relay())
            if ctx.host_kv is not None or ctx.disk_kv is not None or ctx.recent is not None:  # q_d2h lands pinned
                md = ctx.spec.model
                self.qkv_slots = HostQkvSlots.make(md.num_layers, wl.num_micro_batches, wl.micro_batch * md.num_kv_heads,
                                                   md.group_size, md.head_dim, ctx.store_dtype)
        else:  # the dense device is the CPU: host stores are written in place, their pages made before the clock
            wl = ctx.spec.workload
            for store in (ctx.coop_store, ctx.host_kv):
                if store is not None:
                    store.touch(ctx.spec.model.num_layers, wl.num_micro_batches)

    # ----------------------------------------------------------------- helpers
    @property
    def md(self):
        return self.c.spec.model

    def layer_w(self, L: int) -> M.LayerWeights:
        return self.dev_w.get(L) or self.c.weights.layers[L]

    def _rope(self, pos: torch.Tensor, t0: int, t1: int):
        """RoPE tables for positions t0..t1 of pos.shape[0] sequences, made once per step
        (every layer reuses them; None for OPT)."""
        key = (self.step, t0, t1, pos.shape[0])
        got = self._rope_cache.get(key)
        if got is None:
            if self._rope_cache and next(iter(self._rope_cache))[0] != self.step:
                self._rope_cache.clear()
            got = self._rope_cache[key] = M.rope_tables(self.md, pos, self.c.compute_dtype)
        return got

    def ctx_len(self) -> int:
        return self.c.spec.workload.prompt_len + self.step

    def _mb_slice(self, m: int) -> slice:
        mb = self.c.spec.workload.micro_batch
        return slice(m * mb, (m + 1) * mb)

    def _host(self, t: torch.Tensor) -> torch.Tensor:
        return t.to("cpu", self.c.store_dtype)

    def parts_to_device(self, L: int, m: int) -> None:
        """o_h2d: the attention results of (L, m) computed off the GPU (host attention, CSD
        fetches) onto it, in their own dtype, so that `post` only computes: copied
        asynchronously from pinned memory (where `_host_rows` and the emulated CSDs' fetches
        made them; anything else is staged there first) on the weights' copy stream (the
        op's stream, `stream_for`), which `post` waits for. Its span starts
        when the copy stream reaches it, as the DES's does when the copy engine takes it (a
        synchronous pageable copy held the engine's thread, and its span, behind the next
        layer's weights: 13-14 ms where the copy takes 0.03 ms, qwen2.5-32b-4l on the H100,
        h100_s11c). (One packed copy for all of them measured no faster on an H100:
        BENCHMARKS.md, session 6.)"""
        if self.cuda and (L, m) in self.parts:
            self.parts[(L, m)] = [p if p[0] == "heads" else p[:3] + tuple(self._to_device_async(t) for t in p[3:])
                                  for p in self.parts[(L, m)]]

    def _to_device_async(self, t: torch.Tensor) -> torch.Tensor:
        """Host tensor -> GPU on the current stream without holding the host (pinned staging);
        the copy is kept alive for the compute stream that reads it."""
        if t.is_cuda:
            return t
        g = t.pin_memory().to(self.c.device, non_blocking=True)
        g.record_stream(self.compute_stream)
        return g

    def stream_for(self, op: Op):
        """The CUDA stream op's GPU work is enqueued on, or None for host-side ops."""
        if not self.cuda:
            return None
        if isinstance(op, Transfer):
            if op.what == "weights" and op.dst == "gpu":
                return self.copy_stream
            if op.dst == "gpu" and tag_of(op) == "xload":
                return self.x_stream
            if tag_of(op) == "o_h2d":
                return self.copy_stream
            if op.src == "gpu" and tag_of(op) != "kvstore":  # kvstore leaves on the D2H thread
                return self.compute_stream
            return None
        if isinstance(op, (DenseCompute, Attention)) and op.device == "gpu":
            return self.compute_stream
        return None

    def csd_of(self, op: Op) -> Optional[int]:
        """The CSD an op is a command to, if that CSD runs commands in the order they are
        sent (the emulated CSD); None otherwise (see `inf2hw.engine`)."""
        tag = tag_of(op)
        if isinstance(op, Attention):
            if not tag.startswith("attn.csd"):
                return None
            i = csd_index(op.device)
        elif tag.startswith(("down.csd", "kv.csd", "spill.csd", "kvstore.csd")):
            i = csd_index(op.dst)
        elif tag.startswith("up.csd"):
            i = csd_index(op.src)
        else:
            return None
        from .csd.emulated import EmulatedCsd

        return i if i < len(self.c.csds) and isinstance(self.c.csds[i], EmulatedCsd) else None

    # ------------------------------------------------------------------ start
    def start(self, op: Op):
        tag = tag_of(op)
        if isinstance(op, Spill):
            return self._spill(op, tag)
        if isinstance(op, Transfer):
            return self._transfer(op, tag)
        if isinstance(op, Attention):
            return self._attention(op, tag)
        if isinstance(op, DenseCompute):
            return self._dense(op, tag)
        raise TypeError(f"unknown op kind {op.kind}")

    # ------------------------------------------------------------------ dense
    def _dense(self, op: DenseCompute, tag: str):
        md, L, m = self.md, op.layer, op.mb
        t0, t1 = op.tokens
        dev = self.c.device
        if tag == "embed":
            ids = self.prompt_ids[self._mb_slice(m)] if op.step == 0 else self.next_ids[m]  # [mb, t] on dev
            pos = torch.arange(t0, t1, device=dev).expand(ids.shape[0], -1)
            self.x[m] = M.embed(self.c.weights, ids, pos)
        elif tag == "qkv":
            x = self.x[m]
            self.xin[(L, m)] = x
            pos = torch.arange(t0, t1, device=dev).expand(x.shape[0], -1)
            self.qkv[(L, m)] = M.qkv(self.layer_w(L), md, x, pos, self._rope(pos, t0, t1))
        elif tag == "post":
            attn = self._assemble(L, m)
            self.x[m] = M.post(self.layer_w(L), md, self.xin[(L, m)], attn)
            self.qkv.pop((L, m), None)
            self.host_qkv.pop((L, m), None)
            if L >= 1:
                self.xin.pop((L - 1, m), None)
        elif tag == "head":
            logits = M.head(self.c.weights, self.x[m][:, -1:])  # [mb, 1, vocab]
            lg = logits[:, -1].float()
            ids = lg.argmax(-1)  # [mb] on the device: the next embed's input
            self.next_ids[m] = ids.unsqueeze(1)
            self._ids_out.append((m, ids))  # to the host when asked for (`tokens`), not now
            self.step_logits[m] = lg  # stays on the device: copied to the host once, by `last_logits`
            self.xin.pop((md.num_layers - 1, m), None)
        elif tag == "kv_regen":
            xs = self.staged.pop(("x", L, m))  # [nx, ctx-1, hidden] on device
            pos = torch.arange(0, xs.shape[1], device=dev).expand(xs.shape[0], -1)
            kh, vh = M.kv_from_x(self.layer_w(L), md, xs.to(self.c.compute_dtype), pos, self._rope(pos, 0, xs.shape[1]))
            self.staged[("regen", L, m)] = A.kv_with_slot(kh, vh)  # [nx, KV, ctx, d], the last position free
        elif tag == "merge":
            pass  # partial results are merged exactly where they are assembled (`_assemble`)
        else:
            raise ValueError(f"engine: no semantics for dense op {op.name}")
        return None

    def _assemble(self, L: int, m: int) -> torch.Tensor:
        """All attention results of (L, m) -> [mb, heads, t, d] in the compute dtype."""
        parts = self.parts.pop((L, m))
        mb = self.c.spec.workload.micro_batch
        if len(parts) == 1 and parts[0][0] == "heads":
            return parts[0][1]
        kvh, g, d = self.md.num_kv_heads, self.md.group_size, self.md.head_dim
        if len(parts) == 1 and parts[0][1:3] == (0, mb * kvh):  # one piece covering every row, wherever it is
            out = parts[0][3].reshape(mb * kvh, g, 1, d)
            return A.rows_to_heads(out, mb).to(self.c.device, self.c.compute_dtype)
        by_rows: Dict[Tuple[int, int], List[tuple]] = {}
        for _, r0, r1, out, lse in parts:
            by_rows.setdefault((r0, r1), []).append((out, lse))
        # gathered on the compute device: the cooperative rows never leave the GPU, the host's
        # and the CSDs' rows cross once (each row range's partials are merged where they are)
        merged = {rr: (ps[0] if len(ps) == 1 else A.merge_partials(ps))[0].reshape(rr[1] - rr[0], g, 1, d)
                  for rr, ps in sorted(by_rows.items())}
        ranges = list(merged)
        if ranges[0][0] == 0 and ranges[-1][1] == mb * kvh and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])):
            # ranges that tile the rows (ANS: one per CSD, the X-cache's): one concatenation
            rows = torch.cat([o.to(self.c.device, torch.float32) for o in merged.values()])
        else:
            rows = torch.zeros(mb * kvh, g, 1, d, dtype=torch.float32, device=self.c.device)
            for (r0, r1), out in merged.items():
                rows[r0:r1] = out.to(self.c.device, torch.float32)
        return A.rows_to_heads(rows, mb).to(self.c.compute_dtype)

    # -------------------------------------------------------------- attention
    def _attention(self, op: Attention, tag: str):
        L, m, md = op.layer, op.mb, self.md
        if tag == "attn" and op.device == "gpu" and op.q_len > 1:  # prefill, FlashAttention's role
            q, k, v = self.qkv[(L, m)]
            self.parts[(L, m)] = [("heads", M.prefill_attention(q, k, v).to(self.c.compute_dtype))]
            if self.c.gpu_kv is not None:
                self.c.gpu_kv.write(L, m, 0, A.kv_to_rows(k), A.kv_to_rows(v))
            return None
        if tag == "attn" and op.device == "gpu":  # decode with GPU-resident KV
            q, k, v = self.qkv[(L, m)]
            ctx = op.tokens[1]
            self.c.gpu_kv.write(L, m, ctx - 1, A.kv_to_rows(k), A.kv_to_rows(v))
            K, V = self.c.gpu_kv.read(L, m, ctx)
            out, lse = A.attend_partial(A.q_to_rows(q, md.num_kv_heads), K, V)
            self.parts.setdefault((L, m), []).append(("rows", 0, K.shape[0], out, lse))
            return None
        if tag == "attn.gpu":  # cooperative X-cache rows
            return self._coop_attention(op)
        if tag == "attn" and op.device == "cpu":  # FlexGen CPU attention over the host copy
            return self.cpu.submit(self._cpu_attention, op)
        if tag.startswith("tail."):  # write-back v2: the host computes q.K_tail^T
            return self.cpu.submit(self._tail_scores, op)
        if tag.startswith("attn.csd"):
            return self.c.csds[csd_index(op.device)].attend(L, m)
        raise ValueError(f"engine: no semantics for attention op {op.name}")

    def _cpu_attention(self, op: Attention):
        L, m = op.layer, op.mb
        qr, kn, vn = self.host_qkv[(L, m)]
        ctx = op.tokens[1]
        if self.c.host_kv is None:
            return self._attend_drives(L, m, qr, kn, vn)
        K, V = self.c.host_kv.read(L, m, ctx)
        out, lse = host_attention(qr, K, V, ws=self.attn_ws)
        self._host_rows(L, m, [(0, qr.shape[0], out, lse)])

    def _attend_drives(self, L: int, m: int, qr: torch.Tensor, kn: torch.Tensor, vn: torch.Tensor) -> None:
        """FlexGen-style attention over the drives' history (staged by the kvr reads): each
        drive's rows attend over their token-major read buffer in place (strided [rows_i,
        t, d] views: BLAS takes them as they are; gathering them into one row-major K, V
        first made the call 3.4x slower, benchmarks/drive_attention.py) with the new token
        kn, vn [rows, 1, d] as the tail of one softmax (fp16 / bf16: written into the buffer's
        next slot and attended by the fused flash kernel); each drive's buffer goes back to its pool."""
        disk = self.c.disk_kv
        got = []
        for i in range(len(disk.dirs)):
            views, rbuf = self.staged.pop(("kvr", i, L, m))
            lo, hi = disk.slices[i]
            if hi == lo:  # more drives than rows: this one holds none
                disk.release(i, rbuf)
                continue
            out, lse = attend_drive_buffer(qr[lo:hi], rbuf, views[0].shape[1], kn[lo:hi], vn[lo:hi], self.attn_ws)
            disk.release(i, rbuf)
            got.append((lo, hi, out, lse))
        self._host_rows(L, m, got)

    def _host_rows(self, L: int, m: int, got: List[tuple]) -> None:
        """Partials (lo, hi, out, lse) the host computed for (L, m), in row order, -> `parts`.
        On a GPU, one part of the contiguous rows they cover, made here in pinned memory (on
        the CPU thread that attended), so that o_h2d only issues two asynchronous copies: its
        staging on the engine thread, one pinned copy per tensor per drive, was inside its span
        (0.9 ms a call against the DES's 0.03 ms, opt-13b-4l flexgen_ssd on the H100,
        benchmarks/issue_profile.py)."""
        if not self.cuda or not got:
            self.parts.setdefault((L, m), []).extend(("rows", *g) for g in got)
            return
        pinned = []
        for j in (2, 3):  # out [rows, G, 1, d], lse [rows, G, 1]
            first = got[0][j]
            buf = torch.empty((got[-1][1] - got[0][0], *first.shape[1:]), dtype=first.dtype, pin_memory=True)
            pinned.append(torch.cat([g[j] for g in got], out=buf))
        self.parts.setdefault((L, m), []).append(("rows", got[0][0], got[-1][1], *pinned))

    def _tail_scores(self, op: Attention):
        L, m = op.layer, op.mb
        r0, r1 = op.rows
        qr = self.host_qkv[(L, m)][0][r0:r1]
        k_tail, _ = self.c.recent.read(L, m, op.tokens[1])
        s = A.tail_scores(qr, k_tail[r0:r1, op.tokens[0] : op.tokens[1]])  # [rows, G, 1, tail]
        self.staged[("scores", int(tag_of(op).split("csd")[1]), L, m)] = s[:, :, 0]  # [rows, G, tail]

    def _coop_attention(self, op: Attention):
        L, m, md = op.layer, op.mb, self.md
        q, k, v = self.qkv[(L, m)]
        nx = op.rows[1] // md.num_kv_heads
        if keeps_x(md):
            K, V = self.staged.pop(("regen", L, m))  # [nx, KV, ctx, d], the last position free
        else:
            kh, vh = (t.to(self.c.device, self.c.compute_dtype) for t in self.staged.pop(("x", L, m)))
            K, V = A.kv_with_slot(A.rows_to_kv(kh, nx), A.rows_to_kv(vh, nx))
        out, lse = A.attend_slot(q[:nx], K, V, k[:nx], v[:nx])
        self.parts.setdefault((L, m), []).append(("rows", 0, op.rows[1], out, lse))  # stays on the device
        return None

    def complete(self, op: Op, result) -> None:
        """Called by the engine when an async op finishes, with its result."""
        if op.what == "attn_out" and isinstance(op, Transfer) and op.src.endswith(".fpga"):
            out, lse = result  # [rows, G, d], [rows, G]
            r0, r1 = op.rows
            self.parts.setdefault((op.layer, op.mb), []).append(("rows", r0, r1, out[:, :, None], lse[:, :, None]))

    # ------------------------------------------------------------- transfers
    def _transfer(self, op: Transfer, tag: str):
        from .ops_io import transfer

        return transfer(self, op, tag)

    def _spill(self, op: Spill, tag: str):
        from .ops_io import spill

        return spill(self, op, tag)

    # ------------------------------------------------- pinned relays (D2H of the prompt's K,V)
    def _new_relay(self) -> tuple:
        """(K, V) pinned [rows, P, d] each; for FlexGen's drives one flat pinned buffer of the
        same bytes, holding each drive's rows token-major (`inf2hw.ops_io._kv_drive_job`)."""
        wl, md = self.c.spec.workload, self.md
        shape = (self.c.layout.rows_total, wl.prompt_len, md.head_dim)
        if self.c.disk_kv is not None and self.c.recent is None:
            return (torch.empty(2 * shape[0] * shape[1] * shape[2], dtype=self.c.store_dtype, pin_memory=True),)
        return tuple(torch.empty(shape, dtype=self.c.store_dtype, pin_memory=True) for _ in range(2))

    def _take_relay(self) -> tuple:
        with self.relay_lock:
            if self.relays:
                return self.relays.pop()
        return self._new_relay()  # never waits for a consumer (they need the engine thread)

    def _give_relay(self, relay: tuple) -> None:
        with self.relay_lock:
            self.relays.append(relay)

    def copy_pool(self) -> ThreadPoolExecutor:
        if self._copy is None:
            self._copy = ThreadPoolExecutor(max_workers=max(1, self.c.copy_threads), thread_name_prefix="inf2-copy")
        return self._copy

    def close(self) -> None:
        self.io.shutdown(wait=True, cancel_futures=True)
        self.cpu.shutdown(wait=True, cancel_futures=True)
        if self._copy is not None:
            self._copy.shutdown(wait=True, cancel_futures=True)
        if self.cuda:
            self.d2h.shutdown(wait=True, cancel_futures=True)
