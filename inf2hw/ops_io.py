"""Transfer and Spill semantics of the real engine (the data-moving half of `inf2hw.ops`).

Called by `OpRunner.start` for every Transfer / Spill op. Returns None (done inline),
a Future (disk or copy work on the I/O thread) or a CSD Ticket (see
`inf2hw.csd.base` for which op maps to which CSD call). Bytes actually moved are
what the plan says; positions and rows come from the op (`tokens`, `rows`).
"""
from __future__ import annotations

import torch

from inf2sim.plan import Spill, Transfer

from . import attention as A
from .ops import csd_index


def _weights(r, op: Transfer):
    L = op.layer
    host = r.c.weights.layers[L]
    if r.c.device == "cpu":
        return None  # dense work runs on the host copy itself
    for old in [k for k in r.dev_w if k < L - 1]:
        r.dev_w.pop(old)

    def copy():
        stream = r.c.copy_stream
        with torch.cuda.stream(stream):
            lw = host.to(r.c.device, non_blocking=True)
        stream.synchronize()
        r.dev_w[L] = lw

    return r.io.submit(copy)


def transfer(r, op: Transfer, tag: str):
    L, m, md = op.layer, op.mb, r.md
    if op.what == "weights":
        if op.src != "dram":
            raise ValueError("engine: weights on storage (policy.weights.storage > 0) are not supported by the real engine")
        return _weights(r, op)
    # ---------------------------------------------------------------- prefill KV / X out of the GPU
    if tag == "kvstore":  # gpu -> dram: the prompt's K,V rows to the host
        q, k, v = r.qkv[(L, m)]
        kr, vr = r._host(A.kv_to_rows(k)), r._host(A.kv_to_rows(v))
        r.staged[("prompt_kv", L, m)] = (kr, vr)
        if r.c.host_kv is not None:
            r.c.host_kv.write(L, m, 0, kr, vr)
        return None
    if tag.startswith("kvstore.csd"):
        i = csd_index(op.dst)
        kr, vr = r.staged[("prompt_kv", L, m)]
        (r0, r1), (t0, t1) = op.rows, op.tokens
        r.fill[(i, L, m)] = t1 - t0
        return r.c.csds[i].store(L, m, (r0, r1), 0, kr[r0:r1, t0:t1].contiguous(), vr[r0:r1, t0:t1].contiguous())
    if tag.startswith("kvstore"):  # dram -> drive i (FlexGen)
        i = int(tag[len("kvstore"):])
        kr, vr = r.staged[("prompt_kv", L, m)]
        return r.io.submit(r.c.disk_kv.write, i, L, m, 0, kr, vr)
    if tag == "xstore":  # gpu -> dram: cooperative rows' X (or K,V for GQA) of the prompt
        r.c.coop_store.write(L, m, 0, *_coop_rows(r, L, m))
        return None
    if tag.startswith("xstore"):  # dram -> CSD flash (X-cache v2)
        i = int(tag[len("xstore"):])
        return r.io.submit(r.c.coop_disk.write, i, L, m, 0, *r.c.coop_store.read(L, m, op.tokens[1] or r.ctx_len()))
    # ----------------------------------------------------------------- decode: queries to the host
    if tag == "q_d2h":
        q, k, v = r.qkv[(L, m)]
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
            r.staged[("kvr", i, L, m)] = r.c.disk_kv.read(i, L, m, r.ctx_len() - 1)

        return r.io.submit(read)
    if tag.startswith("kvw"):
        i = int(tag[3:])
        _, kn, vn = r.host_qkv[(L, m)]
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
        if r.fill.get((i, L, m), 0) != n:
            raise RuntimeError(f"csd{i}: plan asks for {n} stored tokens of layer {L} but {r.fill.get((i, L, m), 0)} were stored")
        return r.c.csds[i].load(L, m, op.rows, n)
    if tag.startswith("up.csd"):
        i = csd_index(op.src)
        return r.c.csds[i].fetch(L, m)  # the result lands in `OpRunner.complete`
    if tag == "o_h2d":
        return None  # results are gathered and moved to the device in `_assemble`
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
        else:
            data = r.c.coop_store.read(L, m, hist)
        if len(data) == 1:  # X: [nx, hist, hidden]
            r.staged[("x", L, m)] = data[0].to(r.c.device)
        else:
            r.staged[("x", L, m)] = tuple(t.to(r.c.device) for t in data)
        return None
    if tag == "xsave":
        r.c.coop_store.write(L, m, r.ctx_len() - 1, *_coop_rows(r, L, m))
        return None
    raise ValueError(f"engine: no semantics for transfer {op.name} ({op.src} -> {op.dst})")


def _coop_rows(r, L: int, m: int):
    """The cooperative sequences' X (keeps_x) or K,V rows of this step's tokens, on the host."""
    from inf2sim.layout import keeps_x

    nx = r.c.layout.x_seqs
    if keeps_x(r.md):
        return (r._host(r.xin[(L, m)][:nx]),)  # [nx, t, hidden]
    _, k, v = r.qkv[(L, m)]
    return r._host(A.kv_to_rows(k[:nx])), r._host(A.kv_to_rows(v[:nx]))


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
