"""Transfer and Spill semantics of the real engine (the data-moving half of `inf2hw.ops`).

Called by `OpRunner.start` for every Transfer / Spill op. Returns None (done inline,
or enqueued on a CUDA stream the engine orders by events), a Future (disk or copy
work on a thread) or a CSD Ticket (see `inf2hw.csd.base` for which op maps to which
CSD call). Bytes actually moved are what the plan says; positions and rows come from
the op (`tokens`, `rows`).

On CUDA: weights go pinned host -> GPU slot L % 2 on the copy stream; the prompt's
K,V go, on the D2H thread at most `KV_OUT_DEPTH` (layer, mb) behind the GPU so their
GPU copies stay bounded, GPU -> pinned host store by DMA (the FlexGen DRAM placement
with a pinned store), or GPU -> pinned relay (D2H stream) -> host store (copied by
`copy_threads` threads), drive files or CSDs;
X-cache rows go to and from their pinned host store by asynchronous DMA, one
contiguous [tokens, width] block per row.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from inf2sim.plan import Spill, Transfer
from inf2sim.policies.ans import X_RING  # GPU buffers of X per micro-batch (the plan chains the loads)

from . import attention as A
from .ops import csd_index

KV_OUT_DEPTH = 2  # D2H jobs of the prompt's K,V in flight before the engine waits for the oldest


def _weights(r, op: Transfer):
    L = op.layer
    host = r.c.weights.layers[L]
    if not r.cuda:
        return None  # dense work runs on the host copy itself
    slot = L % 2  # two GPU buffers: the plan makes this load wait for layer L-2, the last user of the slot
    dst = r.w_slots[slot]
    if dst is None:
        dst = r.w_slots[slot] = host.to(r.c.device, non_blocking=True)  # every layer has the same shapes
    else:
        src = host.tensors()
        for name, t in dst.tensors().items():
            t.copy_(src[name], non_blocking=True)
    for old in [k for k, v in r.dev_w.items() if v is dst]:
        del r.dev_w[old]
    r.dev_w[L] = dst
    return None


class _Prompt:
    """The prompt's K,V rows [base, base + n) of one (layer, mb) on the host, kept until
    its `users` consumers (CSD stores, drive writes) have taken it; a pinned relay
    goes back to the pool then. `blocks`: instead of k, v, each drive's rows already
    token-major (`DiskStore.blocks`), for drive writes that are plain pwrites."""

    def __init__(self, r, key, k, v, base: int, users: int, relay=None, blocks=None):
        self.r, self.key, self.k, self.v, self.base, self.users, self.relay = r, key, k, v, base, users, relay
        self.blocks = blocks
        self.lock = threading.Lock()

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            last = self.users == 0
        if last:
            self.r.staged.pop(self.key, None)
            if self.relay is not None:
                self.r._give_relay(self.relay)
            self.k = self.v = self.blocks = None


def _kv_out(r, L: int, m: int, k, v):
    """kvstore: the prompt's K,V rows to the host store and/or staged for the CSD / drive stores."""
    lay, c = r.c.layout, r.c
    lo, hi = lay.csd_rows_all if c.recent is not None else (0, lay.rows_total)  # CSD policies: only CSD rows
    users = len(lay.active_csds()) if c.recent is not None else (len(c.disk_kv.dirs) if c.disk_kv is not None else 0)
    key = ("prompt_kv", L, m)
    if hi <= lo or (users == 0 and c.host_kv is None):
        return None
    if not r.cuda and c.host_kv is not None and (lo, hi) == (0, lay.rows_total) and not users:
        c.host_kv.write_heads(L, m, 0, k, v)  # [mb, kvh, P, d] straight into the rows: one strided copy
        return None
    kr, vr = A.kv_to_rows(k)[lo:hi], A.kv_to_rows(v)[lo:hi]  # [n, P, d]
    if not r.cuda:
        kr, vr = r._host(kr), r._host(vr)
        if c.host_kv is not None:
            c.host_kv.write(L, m, 0, kr, vr)
        if users:
            r.staged[key] = _Prompt(r, key, kr, vr, lo, users)
        return None
    direct = users == 0 and c.host_kv.pin_memory  # FlexGen DRAM placement, pinned store: one DMA per tensor
    drives = users > 0 and c.recent is None  # FlexGen drives: each drive's rows token-major, made on the GPU
    if direct:
        kr, vr = _padded(kr, c.host_kv.capacity), _padded(vr, c.host_kv.capacity)
    elif drives:
        kr, vr = c.disk_kv.token_major(kr, vr), None  # [sum_i P * rows_i * 2 * d] on the compute stream
    else:
        kr, vr = kr.contiguous(), vr.contiguous()  # on the compute stream
    ready = torch.cuda.Event()
    ready.record()

    def job():
        with torch.inference_mode():
            if direct:
                _kv_dma_job(r, L, m, kr, vr, ready, lo)
            elif drives:
                _kv_drive_job(r, key, kr, ready, users)
            else:
                _kv_out_job(r, L, m, key, kr, vr, ready, lo, hi, users)

    fut = r.d2h.submit_after(ready, job)  # its span starts once the projection is done on the GPU
    r.kv_out = [f for f in r.kv_out if not f.done()] + [fut]
    while len(r.kv_out) > KV_OUT_DEPTH:  # never waits on the engine: relays are made on demand
        r.kv_out.pop(0).result()
    return fut


def _whole_block(used: int, capacity: int) -> bool:
    """Whether rows of `capacity` positions of which `used` matter move as one copy of the
    whole block (at most a quarter of it past `used`: the extra bytes cost less than a copy
    per row) rather than one copy per row."""
    return (capacity - used) * 4 <= capacity


def _padded(x, capacity: int):
    """GPU rows [n, P, d] -> contiguous [n, capacity, d] with x in positions [0, P) (one
    GPU copy, as .contiguous() would make), so that rows of a pinned [rows, capacity, d]
    store take them in one DMA. The extra capacity - P positions carry garbage into the
    store, where the decode steps write them before anything reads them (the prompt's
    store finishes in step 0). Only while they are few (<= capacity / 4); else x itself."""
    n, p, d = x.shape
    if p == capacity or not _whole_block(p, capacity):
        return x.contiguous()
    out = x.new_empty(n, capacity, d)
    out[:, :p].copy_(x)
    return out


def _kv_dma_job(r, L, m, kr, vr, ready, lo: int) -> None:
    """On the D2H thread: GPU rows -> the pinned host store, by DMA on the D2H stream.
    Rows padded to the store's capacity go in one copy; else one copy per row (each a
    contiguous [P, d] block of the store)."""
    dsts = r.c.host_kv._get(L, m)
    with torch.cuda.stream(r.d2h_stream):
        r.d2h_stream.wait_event(ready)
        for dst, src in zip(dsts, (kr, vr)):
            n, p = src.shape[:2]
            if p == dst.shape[1]:
                dst[lo:lo + n].copy_(src, non_blocking=True)
            else:
                for i in range(n):
                    dst[lo + i, :p].copy_(src[i], non_blocking=True)
    r.d2h_stream.synchronize()  # kr, vr live until here: the copies read them on the D2H stream


def _kv_out_job(r, L, m, key, kr, vr, ready, lo: int, hi: int, users: int) -> None:
    """On the D2H thread: GPU rows -> pinned relay (D2H stream) -> host store / staged."""
    c = r.c
    relay = r._take_relay()
    rk, rv = relay[0][: hi - lo], relay[1][: hi - lo]
    with torch.cuda.stream(r.d2h_stream):
        r.d2h_stream.wait_event(ready)
        rk.copy_(kr, non_blocking=True)
        rv.copy_(vr, non_blocking=True)
    r.d2h_stream.synchronize()
    if c.host_kv is not None:
        _host_write(r, c.host_kv, L, m, 0, rk, rv)
    if users and c.recent is None:  # drive writes run for a while on the I/O threads: hand them a copy
        r.staged[key] = _Prompt(r, key, rk.clone(), rv.clone(), lo, users)
        r._give_relay(relay)
    elif users:  # CSD stores copy out as soon as the engine starts them
        r.staged[key] = _Prompt(r, key, rk, rv, lo, users, relay)
    else:
        r._give_relay(relay)


def _kv_drive_job(r, key, flat, ready, users: int) -> None:
    """On the D2H thread: the drives' token-major K,V (`DiskStore.token_major`, on the GPU)
    -> a pinned relay (D2H stream), staged as one block per drive until the drive writes
    (plain pwrites of it) are done; then the relay goes back to the pool."""
    relay = r._take_relay()
    dst = relay[0][: flat.numel()]  # a flat pinned relay (`OpRunner._new_relay`)
    with torch.cuda.stream(r.d2h_stream):
        r.d2h_stream.wait_event(ready)
        dst.copy_(flat, non_blocking=True)
    r.d2h_stream.synchronize()
    P = r.c.spec.workload.prompt_len
    r.staged[key] = _Prompt(r, key, None, None, 0, users, relay, r.c.disk_kv.blocks(dst, P))


def _host_write(r, store, L: int, m: int, t0: int, *tensors) -> None:
    """`store.write` of host tensors [rows, n, width] with the rows split over the copy
    threads (`copy_threads`; FlexGen copies with 4), so first-touch page faults and the
    memcpy of a pageable store run in parallel. The copies are numpy copies of byte
    views: they release the GIL and start no OpenMP team of their own."""
    dsts = store._get(L, m)
    rows, n = tensors[0].shape[:2]
    parts = max(1, min(r.c.copy_threads, rows))
    if parts == 1:
        return store.write(L, m, t0, *tensors)
    cuts = [rows * i // parts for i in range(parts + 1)]
    futs = []
    for dst, src in zip(dsts, tensors):
        d8 = dst[:, t0:t0 + n].view(torch.uint8).numpy()  # [rows, n, width * itemsize]
        s8 = src.view(torch.uint8).numpy()
        futs += [r.copy_pool().submit(np.copyto, d8[a:b], s8[a:b]) for a, b in zip(cuts, cuts[1:])]
    for f in futs:
        f.result()


def _to_store(r, store, L: int, m: int, t0: int, tensors) -> None:
    """GPU rows [rows, n, width] -> positions t0.. of a host store: into a pinned store by
    DMA (on the current stream), else through a host copy. A prompt's rows padded to the
    store's capacity go in one copy per tensor (`_padded`); a decode step's token in one copy
    per tensor into pinned staging, then placed row by row on the host; else one copy per
    row. (One DMA per row of a GQA model's K,V, 2 x 256 of them a layer, took the engine's
    thread 4-6 ms a step to issue here, and xload's as many held it up to 31 ms until the copy
    engine drained: qwen2.5-32b-4l on the H100, h100_s11c, benchmarks/step_issue.py.)"""
    if r.cuda and store.pin_memory and r.c.coop_disk is None:
        dsts = store._get(L, m)
        if tensors[0].shape[1] == 1:
            staged = [torch.empty(src.shape, dtype=src.dtype, pin_memory=True) for src in tensors]
            for st, src in zip(staged, tensors):
                st.copy_(src, non_blocking=True)
            torch.cuda.current_stream().synchronize()  # the host places them next
            for dst, st in zip(dsts, staged):
                dst[:, t0 : t0 + 1].copy_(st)
            return
        for dst, src in zip(dsts, tensors):
            n = src.shape[1]
            if t0 == 0:
                src = _padded(src, dst.shape[1])  # positions past n: garbage the decode steps overwrite first
            if src.shape[1] == dst.shape[1]:
                dst.copy_(src, non_blocking=True)
            else:
                for i in range(src.shape[0]):
                    dst[i, t0 : t0 + n].copy_(src[i, :n], non_blocking=True)
        return
    store.write(L, m, t0, *(r._host(t) for t in tensors))


def _x_to_gpu(r, L: int, m: int, hist: int):
    """xload, X-cache in host memory: positions [0, hist) of every cooperative row, by DMA
    into this micro-batch's ring buffer for layer L: the whole store in one copy per tensor
    while at most a quarter of it lies past `hist` (those positions are not read), else one
    contiguous copy per row."""
    store = r.c.coop_store
    srcs = store._get(L, m)
    key = (m, L % X_RING)
    if key not in r.x_bufs:
        r.x_bufs[key] = tuple(torch.empty_like(t, device=r.c.device) for t in srcs)
    out = []
    for dst, src in zip(r.x_bufs[key], srcs):
        if _whole_block(hist, src.shape[1]):
            dst.copy_(src, non_blocking=True)
        else:
            for i in range(src.shape[0]):
                dst[i, :hist].copy_(src[i, :hist], non_blocking=True)
        out.append(dst[:, :hist])
    return out


def transfer(r, op: Transfer, tag: str):
    L, m, md = op.layer, op.mb, r.md
    if op.what == "weights":
        if op.src != "dram":
            raise ValueError("engine: weights on storage (policy.weights.storage > 0) are not supported by the real engine")
        return _weights(r, op)
    # ---------------------------------------------------------------- prefill KV / X out of the GPU
    if tag == "kvstore":  # gpu -> dram: the prompt's K,V rows to the host
        _, k, v = r.qkv[(L, m)]
        return _kv_out(r, L, m, k, v)
    if tag.startswith("kvstore.csd"):
        i = csd_index(op.dst)
        st = r.staged[("prompt_kv", L, m)]
        (r0, r1), (t0, t1) = op.rows, op.tokens
        r.fill[(i, L, m)] = t1 - t0
        b = st.base
        try:  # store copies k, v into the CSD's buffers before it returns
            return r.c.csds[i].store(L, m, (r0, r1), 0, st.k[r0 - b:r1 - b, t0:t1], st.v[r0 - b:r1 - b, t0:t1])
        finally:
            st.release()
    if tag.startswith("kvstore"):  # dram -> drive i (FlexGen)
        i = int(tag[len("kvstore"):])
        st = r.staged[("prompt_kv", L, m)]

        def write():
            try:
                if st.blocks is not None:  # token-major already (CUDA): a plain pwrite
                    return r.c.disk_kv.write_block(i, L, m, 0, st.blocks[i])
                return r.c.disk_kv.write(i, L, m, 0, st.k, st.v)
            finally:
                st.release()

        return r.io.submit(write)
    if tag == "xstore":  # gpu -> dram: cooperative rows' X (or K,V for GQA) of the prompt
        _to_store(r, r.c.coop_store, L, m, 0, _coop_rows(r, L, m))
        return None
    if tag.startswith("xstore"):  # dram -> CSD flash (X-cache v2)
        i = int(tag[len("xstore"):])
        return r.io.submit(r.c.coop_disk.write, i, L, m, 0, *r.c.coop_store.read(L, m, op.tokens[1] or r.ctx_len()))
    # ----------------------------------------------------------------- decode: queries to the host
    if tag == "q_d2h":
        q, k, v = r.qkv[(L, m)]
        if r.qkv_slots is not None:  # DMA into pinned slots, one wait (inf2hw.qkv_host)
            qr, kn, vn = r.qkv_slots.copy(L, m, r.step, A.q_to_rows(q, md.num_kv_heads), A.kv_to_rows(k), A.kv_to_rows(v))
        else:
            qr = r._host(A.q_to_rows(q, md.num_kv_heads))  # [rows, G, 1, d]
            kn, vn = r._host(A.kv_to_rows(k)), r._host(A.kv_to_rows(v))  # [rows, 1, d]
        r.host_qkv[(L, m)] = (qr, kn, vn)
        ctx = r.ctx_len()
        if r.c.host_kv is not None:
            r.c.host_kv.write(L, m, ctx - 1, kn, vn)
        if r.c.recent is not None:
            r.c.recent.write(L, m, ctx - 1, kn, vn)
        return None
    if tag.startswith("kvr"):  # drive i -> dram: history for CPU attention
        i = int(tag[3:])

        def read():
            r.staged[("kvr", i, L, m)] = r.c.disk_kv.read_pooled(i, L, m, r.ctx_len() - 1)  # (views, buffer)

        return r.io.submit(read)
    if tag.startswith("kvw"):
        i = int(tag[3:])
        _, kn, vn = r.host_qkv[(L, m)]
        if r.qkv_slots is not None:  # the write may outlive the step: it must not read a pinned slot reused later
            kn, vn = kn.clone(), vn.clone()
        return r.io.submit(r.c.disk_kv.write, i, L, m, r.ctx_len() - 1, kn, vn)
    if tag == "kv_h2d":
        return None  # history is read where attention runs
    # ----------------------------------------------------------------- CSDs
    if tag.startswith("down.csd"):
        i = csd_index(op.dst)
        (r0, r1), (t0, t1) = op.rows, op.tokens
        qr = r.host_qkv[(L, m)][0][r0:r1, :, 0].contiguous()  # [rows, G, d]
        tail = None
        if t1 > t0:
            kt, vt = (x[r0:r1, t0:t1].contiguous() for x in r.c.recent.read(L, m, t1))
            s = r.staged.pop(("scores", i, L, m), None)
            tail = ("kv", kt, vt) if s is None else ("scores", s[:, :, :].contiguous(), vt)
        return r.c.csds[i].send_query(L, m, qr, tail)
    if tag.startswith("kv.csd"):
        i = csd_index(op.dst)
        n = op.tokens[1]
        if r.fill.get((i, L, m), 0) < n:  # a later spill may already be queued behind this load: fine
            raise RuntimeError(f"csd{i}: plan asks for {n} stored tokens of layer {L} but {r.fill.get((i, L, m), 0)} were stored")
        return r.c.csds[i].load(L, m, op.rows, n)
    if tag.startswith("up.csd"):
        i = csd_index(op.src)
        return r.c.csds[i].fetch(L, m)  # the result lands in `OpRunner.complete`
    if tag == "o_h2d":
        return r.parts_to_device(L, m)  # `_assemble` (in post) merges them there
    # ----------------------------------------------------------------- cooperative X-cache
    if tag.startswith("xload") and tag != "xload":
        i = int(tag[len("xload"):])
        n = r.c.spec.workload.prompt_len + r.c.layout.stored_decode_tokens(r.step)

        def read_x():
            r.staged[("xdisk", i, L, m)] = r.c.coop_disk.read(i, L, m, n)

        return r.io.submit(read_x)
    if tag == "xload":
        hist = r.ctx_len() - 1
        if r.c.coop_disk is not None:
            n = r.c.spec.workload.prompt_len + r.c.layout.stored_decode_tokens(r.step)
            parts = [r.staged.pop(("xdisk", i, L, m)) for i in range(len(r.c.coop_disk.dirs))]
            stored = [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]
            tail = [t[:, n:hist] for t in r.c.coop_store.read(L, m, hist)]
            data = [torch.cat([a, b], dim=1) for a, b in zip(stored, tail)]
        elif r.cuda and r.c.coop_store.pin_memory:
            out = _x_to_gpu(r, L, m, hist)
            r.staged[("x", L, m)] = out[0] if len(out) == 1 else tuple(out)
            return None
        else:
            data = r.c.coop_store.read(L, m, hist)
        if len(data) == 1:  # X: [nx, hist, hidden]
            r.staged[("x", L, m)] = data[0].to(r.c.device)
        else:
            r.staged[("x", L, m)] = tuple(t.to(r.c.device) for t in data)
        return None
    if tag == "xsave":
        _to_store(r, r.c.coop_store, L, m, r.ctx_len() - 1, _coop_rows(r, L, m))
        return None
    raise ValueError(f"engine: no semantics for transfer {op.name} ({op.src} -> {op.dst})")


def _coop_rows(r, L: int, m: int):
    """The cooperative sequences' X (keeps_x) or K,V rows of this step's tokens, where they
    were computed: [nx, t, hidden] or two [nx * kv_heads, t, d]."""
    from inf2sim.layout import keeps_x

    nx = r.c.layout.x_seqs
    if keeps_x(r.md):
        return (r.xin[(L, m)][:nx],)
    _, k, v = r.qkv[(L, m)]
    return A.kv_to_rows(k[:nx]), A.kv_to_rows(v[:nx])


def spill(r, op: Spill, tag: str):
    L, m = op.layer, op.mb
    if tag.startswith("spill.csd"):
        i = csd_index(op.dst)
        (r0, r1), (t0, t1) = op.rows, op.tokens
        kt, vt = (x[r0:r1, t0:t1].contiguous() for x in r.c.recent.read(L, m, t1))
        slot = r.fill.get((i, L, m), 0)
        r.fill[(i, L, m)] = slot + (t1 - t0)
        return r.c.csds[i].store(L, m, (r0, r1), slot, kt, vt)
    if tag.startswith("xspill"):
        i = int(tag[len("xspill"):])
        ctx = r.ctx_len()
        c = r.c.layout.c
        data = [t[:, ctx - c : ctx].contiguous() for t in r.c.coop_store.read(L, m, ctx)]
        return r.io.submit(r.c.coop_disk.write, i, L, m, ctx - c, *data)
    raise ValueError(f"engine: no semantics for spill {op.name}")
