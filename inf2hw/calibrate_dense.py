"""Compute microbenchmarks of `inf2 calibrate`: the dense device, CPU attention, the engine's dispatch.

Called by `inf2hw.calibrate.measure` (the I/O half is `inf2hw.calibrate_io`, the emulated
CSD `inf2hw.calibrate_csd`). Each function puts its numbers into the `Calibration` with a
line saying how they were measured; `inf2hw.calibrate_profile` maps them to profile fields
(see the table in `inf2hw.calibrate`). Every timing is the median of repeated calls, run
through the engine's own code where the engine has it (model.qkv / model.post,
model.prefill_attention, host_attention.cpu_attention, the cooperative attention's tensor ops,
Engine.execute). Units: seconds, bytes, FLOP, GB/s = 1e9 B/s, TFLOP/s, us.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Tuple

import numpy as np

from . import calibrate_csd, calibrate_io, calibrate_ops

if TYPE_CHECKING:
    from .calibrate import Calibration


def _time_s(fn: Callable[[], Any], repeat: int, sync: Callable[[], None] = lambda: None, warm: int = 1,
            stat: str = "best") -> float:
    """Seconds of one call: the median of `repeat` calls (a typical call: what a run sees,
    background load included) for rates and fixed costs alike; `stat` is kept for callers
    that name it."""
    for _ in range(warm):
        fn()
    sync()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _tiny_opt():
    return _layer("opt", 64)


def _layer(family: str, hidden: int):
    """One layer of an OPT (MHA, ffn 4h) or LLaMA (GQA 4:1, ffn 8h/3) shape, head_dim 64 (16 below 256)."""
    from inf2sim.specs import ModelSpec

    d = 16 if hidden < 256 else 64
    heads = hidden // d
    kvh = heads if family == "opt" else max(1, heads // 4)
    ffn = 4 * hidden if family == "opt" else -(-8 * hidden // 3 // 16) * 16
    return ModelSpec(name=f"calib-{family}-{hidden}", family=family, num_layers=1, hidden=hidden, num_heads=heads,
                     num_kv_heads=kvh, head_dim=d, ffn_dim=ffn, vocab_size=128, max_positions=8192,
                     tie_embeddings=family == "opt")


def prefill_block(family: str, hidden: int, tokens: int, dev: str, dt) -> Tuple[Callable[[], Any], float]:
    """The engine's prefill dense block of one layer (`model.qkv` + `model.post`, RoPE
    tables made beforehand as the engine does once per step) on `tokens` tokens: a call
    to run under torch.inference_mode, and its FLOPs. Also timed by benchmarks/machine_noise.py."""
    import torch

    from . import model as M

    md = _layer(family, hidden)
    lw = M.init_random(md, dtype=dt, device=dev).layers[0]
    xp = torch.randn(1, tokens, hidden, device=dev).to(dt)  # [1, tokens, hidden]
    pp = torch.arange(tokens, device=dev).unsqueeze(0)
    att = torch.randn(1, md.num_heads, tokens, md.head_dim, device=dev).to(dt)  # [1, heads, tokens, d]
    flops = 2.0 * tokens * (hidden * (md.q_dim + 2 * md.kv_dim) + md.q_dim * hidden + md.active_mlp_params())
    with torch.inference_mode():
        rp = M.rope_tables(md, pp, xp.dtype)
    return (lambda: (M.qkv(lw, md, xp, pp, rp), M.post(lw, md, xp, att))), flops


def dense_device(cal: "Calibration", dev: str, quick: bool, tick) -> None:
    """GEMM peak, weight streaming, per-op overhead and attention rate of the dense device."""
    import torch
    import torch.nn.functional as F

    from . import attention as A
    from . import model as M
    from .run import DTYPES

    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    rep = 3 if quick else 7
    for dname in ("fp32", "fp16"):
        dt = DTYPES[dname]
        if dev == "cpu" and dname == "fp16":
            m = k = n = 256  # CPU half-precision GEMM is orders of magnitude slower: keep it short
        elif dev.startswith("cuda"):
            m = k = n = 4096 if quick else 8192
        else:
            m, k, n = (256, 1024, 1024) if quick else (1024, 2048, 2048)
        a = torch.randn(m, k, device=dev).to(dt)
        b = torch.randn(k, n, device=dev).to(dt)
        s = _time_s(lambda: a @ b, rep, sync)
        cal.put(f"gemm_{dname}_tflops", 2.0 * m * k * n / s / 1e12,
                f"median of {rep} torch matmuls [{m}x{k}]@[{k}x{n}] {dname} on {dev}")
        tick()
    dt = DTYPES[cal.opts.dtype]
    gpu = dev.startswith("cuda")
    # Weight streaming: decode-shaped projections (4 tokens) the way the model runs them
    # (F.linear on [out, in] weights), rotating over matrices that together exceed the caches,
    # so every call reads its weights from memory as a decode step does layer after layer.
    k, n = (8192, 16384) if gpu else ((1024, 4096) if quick else (2048, 4096))
    ws = [torch.randn(n, k, device=dev).to(dt) for _ in range(4 if gpu else 8)]
    x = torch.randn(4, k, device=dev).to(dt)
    it = iter(range(10**9))
    s = _time_s(lambda: F.linear(x, ws[next(it) % len(ws)]), rep * 4, sync)
    cal.put("stream_gbps", ws[0].numel() * ws[0].element_size() / s / 1e9,
            f"weight bytes / median time of F.linear([4x{k}], [{n}x{k}]) {cal.opts.dtype} on {dev}, rotating over "
            f"{len(ws)} such weights (beyond the caches: a decode step's weights come from memory)")
    ws.clear()
    # The LM head: the same decode GEMV on a [vocab x hidden] weight (many short rows) runs at
    # its own rate (on the 2-core VM 5.0-5.5 GB/s against ~7 for square-ish weights)
    k, n = (4096, 32000) if gpu else (1024, 32000)
    ws = [torch.randn(n, k, device=dev).to(dt) for _ in range(2)]
    x = torch.randn(4, k, device=dev).to(dt)
    s = _time_s(lambda: F.linear(x, ws[next(it) % len(ws)]), rep * 2, sync)
    cal.put("head_gbps", ws[0].numel() * ws[0].element_size() / s / 1e9,
            f"weight bytes / median time of F.linear([4x{k}], [{n}x{k}]) {cal.opts.dtype} on {dev} (an LM head's "
            f"shape), alternating over {len(ws)} such weights")
    ws.clear()
    tick()
    # The dense device's achieved rate on the engine's own prefill blocks (model.qkv + model.post:
    # GEMMs plus the norms, activations and residual adds between them), OPT and LLaMA layers
    hb, t = (4096, 4096) if gpu else ((512, 512) if quick else (1024, 1024))
    rates, fixed = [], []
    for fam in ("opt", "llama"):
        blk, flops = prefill_block(fam, hb, t, dev, dt)
        with torch.inference_mode():
            s_blk = _time_s(blk, rep, sync)
        rates.append(flops / s_blk / 1e12)
        md = _layer(fam, 64)  # the fixed cost: the same blocks on a hidden-64 layer, one token
        lw = M.init_random(md, dtype=dt, device=dev).layers[0]
        xx = torch.randn(1, 1, md.hidden, device=dev).to(dt)
        pos = torch.zeros(1, 1, dtype=torch.long, device=dev)
        att = torch.randn(1, md.num_heads, 1, md.head_dim, device=dev).to(dt)
        with torch.inference_mode():
            rope = M.rope_tables(md, pos, xx.dtype)  # the engine makes them once per step
            fixed.append(_time_s(lambda: M.qkv(lw, md, xx, pos, rope), 20, sync, warm=3))
            fixed.append(_time_s(lambda: M.post(lw, md, xx, att), 20, sync, warm=3))
    cal.put("block_tflops", sum(rates) / 2,
            f"FLOPs / median time of the engine's model.qkv + model.post on one {hb}-wide layer, {t} tokens "
            f"(OPT {rates[0] * 1e3:.4g}, LLaMA {rates[1] * 1e3:.4g} GFLOP/s), {cal.opts.dtype} on {dev}: the achieved "
            f"rate of a dense op, GEMMs and the element-wise work between them")
    cal.put("dense_op_us", sum(fixed) / len(fixed) * 1e6,
            f"mean of the engine's model.qkv / model.post on hidden-64 OPT and LLaMA layers, 1 token, {dev} "
            f"({', '.join(f'{f * 1e6:.0f}' for f in fixed)} us; medians of 20): the fixed cost of one dense op")
    tick()
    md = _tiny_opt()
    qh = torch.randn(1, md.num_heads, 1, md.head_dim, device=dev).to(dt)

    slots = None
    if dev.startswith("cuda"):  # the engine's q_d2h lands in pinned slots on a GPU (inf2hw.qkv_host)
        from .qkv_host import HostQkvSlots

        slots = HostQkvSlots(1, 1, md.num_kv_heads, md.group_size, md.head_dim, dt)

    def host_copy():  # what the engine's q_d2h does with a step's q, k, v
        parts = (A.q_to_rows(qh, md.num_kv_heads), A.kv_to_rows(qh), A.kv_to_rows(qh))
        return slots.copy(0, 0, 0, *parts) if slots is not None else [t.to("cpu", dt) for t in parts]

    s = _time_s(host_copy, 50, sync, warm=3, stat="typical")
    cal.put("host_op_us", s * 1e6, f"median of 50 engine-style host copies of one token's q, k, v "
            f"(attention.q_to_rows / kv_to_rows, then qkv_host.HostQkvSlots.copy on a GPU, .to('cpu') on a CPU) on {dev}: the fixed cost of a copy op")
    if dev.startswith("cuda"):
        cal.put("gpu_memory_gb", torch.cuda.get_device_properties(0).total_memory / 1e9, "torch device properties")
    # The engine's decode attention on the dense device (the X-cache's cooperative rows,
    # inf2hw.ops._coop_attention): the new token's K,V written into the slot of the buffer
    # the regeneration filled (attention.kv_with_slot, not timed: kv_regen's work), then
    # attend_partial over rows (attention.attend_slot). Every size's median is kept (the profile's curve); the rate
    # is the slope over the two largest (working sets far beyond the caches).
    seqs, kvh, d = (32, 8, 128) if dev.startswith("cuda") else (8, 8, 128)
    # from working sets that stay in the caches (a small batch's regenerated rows) to ones
    # far beyond them; the profile keeps every median (gpu.decode_attention_*)
    if dev.startswith("cuda"):
        ctxs = (128, 512, 2048, 8192)
    else:
        ctxs = (32, 128, 512, 2048) if quick else (32, 64, 128, 256, 512, 1024, 4096)
    curves = {}
    for group in (1, 4):  # MHA, and GQA's 4 query heads per KV row (4x the arithmetic per byte)
        xs, ts = [], []
        q = torch.randn(seqs, kvh * group, 1, d, device=dev).to(dt)
        new = torch.randn(seqs, kvh, 1, d, device=dev).to(dt)

        for ctx in ctxs:
            size = 2 * seqs * kvh * ctx * d * q.element_size()
            # rotated over copies (>= 64 MB in all): in the engine the layer's dense ops stream
            # their weights between a history's regeneration and its attention, so it is read
            # from memory, not from the caches
            bufs = [A.kv_with_slot(torch.randn(seqs, kvh, ctx - 1, d, device=dev).to(dt),
                                   torch.randn(seqs, kvh, ctx - 1, d, device=dev).to(dt)) for _ in range(_copies(size))]
            turn = iter(range(1 << 30))

            def call():
                kk, vv = bufs[next(turn) % len(bufs)]
                return A.attend_slot(q, kk, vv, new, new)

            with torch.inference_mode():
                ts.append(_time_s(call, rep * 2, sync))
            xs.append(size)
        curves[group] = (xs, ts)
    xs, ts = curves[1]
    _, per_byte = calibrate_csd.fit_line(xs[-2:], ts[-2:])  # the rate beyond the caches: the two largest
    att_gbps = (1.0 / per_byte if per_byte > 0 else xs[-1] / ts[-1]) / 1e9  # measured B/s, written in GB/s
    how = (f"the engine's cooperative decode attention (attention.attend_slot: new token into the slot, attend_partial) "
           f"rows={seqs * kvh} d={d} ctx={list(ctxs)} {cal.opts.dtype} on {dev}")
    cal.put("dense_attention_gbps", att_gbps, f"K+V bytes per second, slope of the median times of {how} "
                                              f"over the two largest")
    cal.put_curve("dense_attention", xs, ts, f"median times of {how}, 1 query head per KV row")
    cal.put_curve("dense_attention_gqa", *curves[4], "the same with 4 query heads per KV row")
    # prefill: the engine's model.prefill_attention (fused SDPA; the materialised fp32
    # attend_heads for fp32 on a GPU): what the score matrix costs beyond
    # the rates model's max(flops, kv bytes) term, per element
    heads, seqs = 16, 1  # score matrices of 1 MiB (P = 128) to 256 MiB (P = 2048): inside the caches to far beyond
    ps = (128, 512, 1024) if quick else (128, 256, 512, 1024, 2048)
    if dev.startswith("cuda"):  # a batch's worth of rows, as the engine's prompt ops have (a few would be all launch)
        heads, seqs, ps = 64, 8, (512, 1024, 2048)
    fused = not (dev.startswith("cuda") and q.element_size() == 4)  # model.prefill_attention materialises only fp32 on a GPU
    # the K,V term as rates.py charges it: a fused kernel streams K,V at the stream rate, the
    # materialised path at the decode attention rate; the op's fixed cost (launch_us) is charged apart
    kv_Bps = (cal.values["stream_gbps"] if fused else att_gbps) * 1e9
    fixed_s = cal.values.get("dense_op_us", 0.0) * 1e-6
    # the flops rate the profile gives the engine's dtype (calibrate_profile): the engine blocks' achieved rate
    peak = cal.values.get("block_tflops", cal.values["gemm_fp32_tflops" if q.element_size() == 4 else "gemm_fp16_tflops"]) * 1e12
    xs, res = [], []
    for p in ps:
        qp = torch.randn(seqs, heads, p, d, device=dev).to(dt)  # [seqs, heads, P, d]
        with torch.inference_mode():
            s = _time_s(lambda: M.prefill_attention(qp, qp, qp), 3 if quick else 5, sync)
        # as rates.py charges a prefill attention op: its flops as the scheduler counts them
        # (causal: half of 4*P*P*d), or its K,V bytes at the rate above; plus launch_us
        n = seqs * heads
        base = max(2.0 * n * p * p * d / peak, 2 * n * p * d * qp.element_size() / kv_Bps)
        xs.append(n * p * p)
        res.append(s - fixed_s - base)
    _, per = calibrate_csd.fit_line(xs, res)
    how = (f"(median time of model.prefill_attention, {seqs}x{heads} heads d={d}, minus the fixed op cost and "
           f"max(causal flops 2*heads*P*P*d / peak, kv / {'stream' if fused else 'attention'} rate)) per score "
           f"element heads*P*P, {cal.opts.dtype} on {dev}")
    cal.put("attention_score_ns", per * 1e9, f"slope over P={list(ps)} of {how}")
    cal.put("attention_score_head_dim", d if fused else 0, "the head dim of the prefill attention timed for attention_score_*: "
            "the DES scales the per-element costs by an op's head_dim / this (the fused kernel's cost per score element "
            "grows with head_dim: on a CPU it computes the masked half too); 0 for the materialised fp32 path on a GPU")
    # per size as well: scores that fit in the caches cost less per element than ones that do not;
    # a fused kernel never holds the op's matrix, and its cost follows one head's P x P (rates.work_seconds)
    per_head = seqs * heads if fused else 1
    cal.put_series("attention_score_mib", [x / per_head * 4 / 2**20 for x in xs],
                   [max(0.0, r / x * 1e9) for r, x in zip(res, xs)], f"at P={list(ps)} of {how}")
    tick()


def engine_dispatch(cal: "Calibration", n_ops: int = 64, repeat: int = 5) -> None:
    """The real engine's own cost per op: `Engine.execute` over a chain of `n_ops` no-op ops
    (`merge`, which the engine runs as a no-op); the median gap between one op's end and
    the next one's start. It grows with the number of ops in a step (the engine rescans
    the waiting ops), so n_ops is a typical step's critical path."""
    import torch

    from inf2sim.config import default_config, specs_from_config
    from inf2sim.plan import DenseCompute, StepPlan
    from inf2sim.scheduler import build_plan

    from .engine import Engine, EngineContext

    spec = specs_from_config(default_config(model="llama-tiny", workload="tiny", policy="flexgen_dram"))
    _, b = build_plan(spec.model, spec.workload, spec.hardware, spec.policy)
    eng = Engine(EngineContext(spec, None, "cpu", torch.float32, torch.float32,
                               torch.zeros(spec.workload.batch, 1, dtype=torch.long), b.layout))
    gaps = []
    try:
        for r in range(repeat):
            ops, prev = [], None
            for i in range(n_ops):
                name = f"s{r}.L{i}.m0.merge"
                ops.append(DenseCompute(name, (prev,) if prev else (), r, i, 0, "merge", device="gpu"))
                prev = name
            spans = sorted(eng.execute(StepPlan(r, "decode", 1, 1, tuple(ops))), key=lambda sp: sp.start_s)
            gaps += [spans[i + 1].start_s - spans[i].end_s + spans[i + 1].dur_s for i in range(len(spans) - 1)]
    finally:
        eng.close()
    cal.put("engine_op_us", float(np.median(gaps)) * 1e6,
            f"median gap end->next start (+ its no-op duration) of inf2hw.engine.Engine over a chain of {n_ops} "
            f"no-op ops: the engine's dispatch cost per op, charged to every op's device or link")


def _copies(nbytes: int, total: int = 64 << 20) -> int:
    """How many copies of an `nbytes` working set a timing loop rotates over so that every
    call reads it from memory (>= `total` bytes in all: beyond a server's last-level cache)."""
    return min(64, max(1, -(-total // nbytes)))


def host_llc_bytes() -> int:
    """The largest CPU cache of cpu0 (sysfs; 0 where unreadable): the host's last-level cache."""
    import glob

    sizes = [0]
    for f in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            txt = open(f).read().strip().upper()
            sizes.append(int(txt[:-1]) * {"K": 1 << 10, "M": 1 << 20}[txt[-1]] if txt[-1] in "KM" else int(txt))
        except (OSError, ValueError, KeyError):
            continue
    return max(sizes)


def host_rotation_bytes() -> int:
    """Bytes a host-memory timing loop rotates over: 4x the last-level cache, at least 64 MiB
    (with 64 MiB an H100 host's 300 MiB L3 held the per-row CPU attention curve's working set
    at 256 rows, and the DES gave the engine's 1280-row calls, whose 346 MB no cache holds,
    0.67-0.80 of their measured time: BENCHMARKS.md, session 10)."""
    return max(64 << 20, 4 * host_llc_bytes())


def _cpu_attention_times(pool, attend, layout: str, rows: int, d: int, ctxs, dt, repeat: int, drives: int = 1,
                         group: int = 1, beside=None):
    """(K+V bytes, median seconds) per ctx of the engine's CPU attention op on `pool`, over
    K, V laid out by row ("rows": a MemStore view [rows, :n] of a longer buffer) or by token
    ("tokens": `drives` drive read buffers [n + 16, rows / drives, 2, d], one
    `host_attention.attend_drive_buffer` call per drive as `ops._attend_drives` makes them),
    with `group` query heads per K,V row (GQA). With `beside` (a factory of a
    `calibrate_io.H2dStream`), the seconds are each ctx's median time beside the stream's
    copies / its median alone, the two timed in turn, one call each, `repeat` times (the
    host's drift between two calls is small; between two blocks of calls it was not)."""
    import torch

    xs, ts = [], []
    for n in ctxs:
        cap = n + 16
        q = torch.randn(rows, group, 1, d).to(dt)  # [rows, G, 1, d]
        kn, vn = torch.randn(rows, 1, d).to(dt), torch.randn(rows, 1, d).to(dt)
        # distinct K and V, rotated over enough copies (>= 64 MB in all) that every call
        # reads them from memory, as a layer's history is when the engine reaches it
        size = 2 * rows * cap * d * torch.empty((), dtype=dt).element_size()
        copies = _copies(size, host_rotation_bytes())
        if layout == "rows":
            bufs = [(torch.randn(rows, cap, d).to(dt), torch.randn(rows, cap, d).to(dt)) for _ in range(copies)]
            views = [(kb[:, :n], vb[:, :n]) for kb, vb in bufs]
        else:
            per = [(i * rows // drives, (i + 1) * rows // drives) for i in range(drives)]
            views = [[torch.randn(cap, hi - lo, 2, d).to(dt) for lo, hi in per] for _ in range(copies)]
        turn = iter(range(1 << 30))

        def drive_calls(bufs):
            for (lo, hi), b in zip(per, bufs):
                attend(q[lo:hi], b, n, kn[lo:hi], vn[lo:hi])

        def call():
            v = views[next(turn) % len(views)]
            if layout == "rows":
                return pool.submit(attend, q, *v).result()
            return pool.submit(drive_calls, v).result()

        with torch.inference_mode():
            if beside is None:
                ts.append(_time_s(call, repeat))
            else:
                alone, near = [], []
                with beside() as stream:
                    call()
                    for _ in range(repeat):
                        stream.pause()
                        alone.append(_time_s(call, 1, warm=0))
                        stream.resume()
                        near.append(_time_s(call, 1, warm=0))
                ts.append(float(np.median(near) / np.median(alone)))
        xs.append(2 * rows * n * d * torch.empty((), dtype=dt).element_size())
    return xs, ts


def cpu_attention(cal: "Calibration", quick: bool, tick, dev: str = "cpu") -> None:
    """The engine's CPU attention call, fitted fixed + bytes / rate; and host GEMM. With a
    GPU (`dev` cuda), also how much slower it runs while pinned copies stream host -> GPU
    (`cpu_attention_beside_dma`)."""
    import torch

    from concurrent.futures import ThreadPoolExecutor

    from .host_attention import attend_drive_buffer as drive_attention  # ops._attend_drives' call
    from .host_attention import host_attention  # ops._cpu_attention's call over the host store
    from .run import DTYPES

    dt = DTYPES[cal.opts.dtype]
    # up to 1.07 GB (fp32, 1 thread; fp16, 8 threads) of K+V: a real KV cache is far beyond
    # the caches, and a (layer, micro-batch) of OPT-13B at batch 32, prompt 1536 is 1 GB; more
    # rows with more threads (a call over 64 rows cannot keep 8 threads busy; the engine's
    # calls span hundreds of rows on such a machine)
    rows, d = 64 * max(1, cal.opts.threads // 2), 128
    # from working sets inside the caches to far beyond them (the profile keeps every median)
    ctxs = (16, 128, 1024, 4096, 8192) if quick else (16, 32, 64, 128, 256, 512, 1024, 4096, 8192)
    pool = ThreadPoolExecutor(max_workers=1)  # the engine runs CPU attention on a one-thread pool
    try:
        for layout in ("rows", "tokens"):
            attend = host_attention if layout == "rows" else drive_attention

            def times(group: int):
                return _cpu_attention_times(pool, attend, layout, rows, d, ctxs, dt, 5 if quick else 11,
                                            drives=1 if layout == "rows" else cal.opts.ssd_count, group=group)

            xs, ts = times(1)
            if layout == "rows":
                a, b = calibrate_csd.fit_line(xs, ts)
                how = (f"the engine's host_attention.host_attention submitted to a one-thread pool as the engine does (distinct "
                       f"K, V, rotated so each call reads them from memory), rows={rows} d={d} ctx={list(ctxs)} "
                       f"{cal.opts.dtype}, {cal.opts.threads} torch thread(s)")
                fit = "; fit t = fixed + bytes/rate over the median times"
                cal.put("cpu_attention_gbps", 1.0 / b / 1e9 if b > 0 else max(xs) / max(ts) / 1e9, how + fit)
                # the fixed part, at most the smallest median (the profile's curves are the medians less it)
                cal.put("cpu_attention_fixed_us", min(a, min(ts)) * 1e6, how + fit + ", at most the smallest median")
                cal.put_curve("cpu_attention", xs, ts, how)
            else:
                cal.put_curve("cpu_tokens_attention", xs, ts, (
                    f"the calls inf2hw.ops._attend_drives makes: K, V token-major [ctx, rows / {cal.opts.ssd_count}, 2, d] "
                    f"as read back from each of {cal.opts.ssd_count} drive files (the profile's ssd_count), each attended "
                    f"in place with the new token as the softmax tail, "
                    f"rows={rows} d={d} ctx={list(ctxs)} {cal.opts.dtype}"))
            if layout == "rows" and dev == "cuda":
                # the next layers' weights stream host -> GPU while a FlexGen-style decode step attends on
                # the CPU: both read host memory (session 6: 0.73x and 0.92x of the rate alone on two hosts)
                big = tuple(n for n in ctxs if n >= 1024)
                xb, rb = _cpu_attention_times(pool, attend, layout, rows, d, big, dt, 9 if quick else 15,
                                              beside=lambda: calibrate_io.H2dStream(256 << 20))
                cal.put_series("cpu_attention_beside_dma", [x / 1024 for x in xb], rb, (
                    f"the same calls (ctx={list(big)}) beside a loop of pinned 256 MiB host -> GPU copies on a side "
                    f"stream / alone: median of {9 if quick else 15} calls each, timed in turn"))
            # GQA: 4 query heads per K,V row do 4x the arithmetic per byte (on a CPU that shows)
            cal.put_curve("cpu_attention_gqa" if layout == "rows" else "cpu_tokens_attention_gqa", *times(4),
                          "the same with 4 query heads per K,V row")
            tick()
        fixed_s = cal.values["cpu_attention_fixed_us"] * 1e-6
        for name in cal.opts.models:  # the same call at each named model's shape, per K,V row (cpu.op_curves)
            md = calibrate_ops.load_model(name, torch.empty((), dtype=dt).element_size())
            m_ctxs = (128, 256, 512, 1024, 2048, 4096) if quick else (64, 128, 256, 512, 1024, 2048, 4096, 8192)
            # 11 calls per point even when quick (a second at most): 5 left an H100 host's curve
            # non-monotone (session 10), its calls vary that much with 8 threads
            _, ts = _cpu_attention_times(pool, host_attention, "rows", rows, md.head_dim, m_ctxs, dt, 11,
                                         group=md.group_size)
            cal.put_op_curve("decode_attention", name, 0.0, list(m_ctxs), [max(0.0, t - fixed_s) * 1e6 / rows for t in ts],
                             f"median of the engine's host_attention.host_attention on a one-thread pool over a "
                             f"host-store view, {rows} K,V rows of {name} ({md.group_size} query head(s) per row, d "
                             f"{md.head_dim}) over ctx positions, {cal.opts.dtype}, {cal.opts.threads} torch thread(s), "
                             f"less op_overhead_us, per K,V row", group=md.group_size, head_dim=md.head_dim)
            tick()
    finally:
        pool.shutdown()
    m, k, n = (256, 1024, 1024) if quick else (1024, 2048, 2048)
    aa, bb = torch.randn(m, k), torch.randn(k, n)
    s = _time_s(lambda: aa @ bb, 3 if quick else 7)
    cal.put("cpu_gemm_gflops", 2.0 * m * k * n / s / 1e9, f"median torch matmul [{m}x{k}]@[{k}x{n}] fp32 on the host")
    tick()
