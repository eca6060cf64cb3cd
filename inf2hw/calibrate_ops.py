"""Model-shaped microbenchmarks of `inf2 calibrate calibrate.models=[...]`: the engine's ops of named models.

Called by `inf2hw.calibrate.measure` after `calibrate_dense.dense_device` (whose fixed cost
per dense op, `dense_op_us`, is taken off every time here, as the profile charges it as
`gpu.launch_us`). For each model (a conf/model name) it times on the dense device, with the
engine's own functions and random weights:
  qkv, post          `model.qkv` (RoPE tables made beforehand, as the engine does once per
                     step) and `model.post` over 1 .. max_tokens tokens, called as a step calls
                     them (qkv, post, next layer) over enough layers' weights that each call
                     reads its weights from memory;
  head               `model.head` on the last position of 1 .. 256 sequences, then the argmax
                     the engine takes (its ids stay on the device);
  prefill_attention  `model.prefill_attention` of a 4-sequence prompt of 16 .. max length,
                     per K,V row (4 x KV heads).
Each becomes an `OpCurve` of the profile (`gpu.op_curves`), which `inf2sim.op_curves` uses
for ops of exactly this shape instead of the rates model (Vidur's approach: profile the
model's operators, simulate their composition). The end-to-end run is not timed here.
Units: seconds measured, written as us beyond the fixed cost; tokens.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, List, Tuple, TypeVar

import numpy as np

from . import speed_probe

if TYPE_CHECKING:
    from .calibrate import Calibration

T = TypeVar("T")
SEQS = 4  # sequences of the timed batch (the validation sweep's micro-batch on the CPU)


def load_model(name: str, dtype_bytes: int):
    """A conf/model spec by name (one-line SpecError naming the known ones if absent)."""
    from inf2sim.config import default_config, specs_from_config

    return replace(specs_from_config(default_config(model=name)).model, dtype_bytes=dtype_bytes)


def token_grid(max_tokens: int) -> List[int]:
    out, t = [], 1
    while t <= max_tokens:
        out.append(t)
        t *= 2
    return out


def _alternating_s(fns: List[Callable[[], object]], sync: Callable[[], None], budget_s: float) -> List[float]:
    """Median seconds of each of `fns`, called in turn (fns[0], fns[1], ..., fns[0], ...) as
    many rounds as fit `budget_s` (3 to 25) after one warm round: each call finds the caches
    as the others left them, as one op of a step finds them after the ops before it."""
    import time

    ts: List[List[float]] = [[] for _ in fns]
    spent = 0.0
    for r in range(26):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
            dt = time.perf_counter() - t0
            spent += dt
            if r:
                ts[i].append(dt)
        if r >= 3 and spent >= budget_s:
            break
    return [float(np.median(t)) for t in ts]


def layer_walk(md, layers, x, dt) -> List[Callable[[], object]]:
    """The calls of a step's walk over `layers` (`model.qkv` then `model.post` of each, on the
    tokens x [b, p, hidden], positions 0..p-1, a random attention output [b, heads, p, d]),
    for `_alternating_s`: each call finds the other's and the previous layers' weights in the
    caches, not its own, as in a step. Call under torch.inference_mode (RoPE tables made here,
    once, as the engine makes them once per step)."""
    import torch

    from . import model as M

    b, p = x.shape[:2]
    att = torch.randn(b, md.num_heads, p, md.head_dim, device=x.device).to(dt)  # [b, heads, p, d]
    pos = torch.arange(p, device=x.device).unsqueeze(0).expand(b, -1)  # [b, p]
    rope = M.rope_tables(md, pos, dt)
    fns: List[Callable[[], object]] = []
    for lw in layers:
        fns += [lambda lw=lw: M.qkv(lw, md, x, pos, rope), lambda lw=lw: M.post(lw, md, x, att)]
    return fns


def _shape(tokens: int) -> Tuple[int, int]:
    """[sequences, positions] of `tokens` tokens: a batch of SEQS sequences where it divides."""
    b = SEQS if tokens % SEQS == 0 else 1
    return b, tokens // b


def model_ops(cal: "Calibration", dev: str, names, quick: bool, tick) -> None:
    """Time every model in `names` (see the module docstring) into `cal.op_curves`."""
    import torch

    from . import model as M
    from .calibrate_dense import host_rotation_bytes  # (it imports this module)
    from .run import DTYPES

    dt = DTYPES[cal.opts.dtype]
    gpu = dev.startswith("cuda")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    # on the host's cores, the speed probe right before and after every point (`beside`):
    # `calibrate.measure` scales each point to the calibration's probe speed (a 2-core VM drifts
    # 10-25 % between 12-second windows; two calibrations 15 minutes apart whose probes agreed
    # timed these curves 1.12-1.68x apart, sweep local_v)
    probes: List[float] = []

    def beside(measure: Callable[[], T]) -> T:
        if gpu:
            return measure()
        p0 = speed_probe.probe_ms(3)
        out = measure()
        probes.append((p0 + speed_probe.probe_ms(3)) / 2)
        cal.near_probes.append(probes[-1])
        return out

    fixed_s = cal.values["dense_op_us"] * 1e-6
    budget = 0.2 if quick else 0.6
    max_tok = (8192 if quick else 32768) if gpu else (512 if quick else 2048)
    max_p = (2048 if quick else 8192) if gpu else (512 if quick else 2048)
    work = lambda s: max(0.0, s - fixed_s) * 1e6  # noqa: E731  (us beyond the fixed cost)
    for name in names:
        md = load_model(name, torch.empty((), dtype=dt).element_size())
        # enough layers that their weights exceed the caches: 256 MB on a GPU; on a CPU the
        # host-memory rotation (4x the last-level cache, >= 64 MiB), but no more layers than the
        # model has (a step's weights are its layers): over 3 layers (85 MB) a 2-vCPU VM on a
        # host with a 480 MiB L3 timed opt-125m's decode `post` at 2.0 ms, over its 12 layers
        # at 3.0 ms, as the engine measured (3.05 ms; benchmarks/op_curve_layers.py, session 11)
        if gpu:
            n_layers = int(np.clip(-(-(256 << 20) // md.layer_weight_bytes()), 2, 8))
        else:
            n_layers = int(np.clip(-(-host_rotation_bytes() // md.layer_weight_bytes()), 2, max(2, md.num_layers)))
        w = M.init_random(replace(md, num_layers=n_layers), dtype=dt, device=dev)
        grid = token_grid(max_tok)
        qkv_us, post_us = [], []
        probes.clear()
        for t in grid:
            b, p = _shape(t)
            x = torch.randn(b, p, md.hidden, device=dev).to(dt)  # [b, p, hidden]
            with torch.inference_mode():
                fns = layer_walk(md, w.layers, x, dt)
                ts = beside(lambda: _alternating_s(fns, sync, budget * n_layers))
            qkv_us.append(work(float(np.median(ts[0::2]))))
            post_us.append(work(float(np.median(ts[1::2]))))
        how = (f"median of the engine's model.{{}} on {name}'s layer shape, [b x p] tokens (b = {SEQS} where it "
               f"divides), called as a step does (qkv, post, next layer) over {n_layers} layers' weights, "
               f"{cal.opts.dtype} on {dev}, less dense_op_us")
        cal.put_op_curve("qkv", name, md.dense_flops_per_token("qkv"), grid, qkv_us, how.format("qkv"), probe_ms=probes)
        cal.put_op_curve("post", name, md.dense_flops_per_token("post"), grid, post_us, how.format("post"),
                         probe_ms=probes)
        tick()
        hgrid = token_grid(256)
        head_us = []
        probes.clear()
        for b in hgrid:
            x = torch.randn(b, 1, md.hidden, device=dev).to(dt)  # [b, 1, hidden]
            with torch.inference_mode():
                fns = [lambda: M.head(w, x)[:, -1].float().argmax(-1)]
                if not gpu:  # after a decode step's walk over the layers, as the engine calls it: alone,
                    # the caches kept the head's matrix between calls (opt-125m: 20.3 against 23.3 ms
                    # after the walk, engine 22.5 ms, on a 480 MiB L3; benchmarks/op_curve_layers.py --head)
                    fns += layer_walk(md, w.layers, x, dt)
                head_us.append(work(beside(lambda: _alternating_s(fns, sync, budget * max(1, len(fns) // 2))[0])))
        walk = "" if gpu else f", each call after qkv and post over the {n_layers} layers' weights above"
        cal.put_op_curve("head", name, md.dense_flops_per_token("head"), hgrid, head_us,
                         f"median of the engine's model.head on the last position of b sequences of {name}, then "
                         f"the argmax it takes (left on the device){walk}, {cal.opts.dtype} on {dev}, less dense_op_us",
                         probe_ms=probes)
        w = None  # free this model before the next
        tick()
        pgrid = [p for p in token_grid(max_p) if p >= 16]
        rows = SEQS * md.num_kv_heads
        att_us = []
        probes.clear()
        for p in pgrid:
            q = torch.randn(SEQS, md.num_heads, p, md.head_dim, device=dev).to(dt)  # [b, heads, P, d]
            k = torch.randn(SEQS, md.num_kv_heads, p, md.head_dim, device=dev).to(dt)  # [b, kv_heads, P, d]
            v = torch.randn_like(k)
            with torch.inference_mode():
                att_us.append(work(beside(lambda: _alternating_s([lambda: M.prefill_attention(q, k, v)], sync,
                                                                 budget)[0])) / rows)
        cal.put_op_curve("prefill_attention", name, 0.0, pgrid, att_us,
                         f"median of the engine's model.prefill_attention, {SEQS} sequences of {name}'s heads "
                         f"({md.num_heads} / {md.num_kv_heads} KV, d {md.head_dim}) over a P-token prompt, "
                         f"{cal.opts.dtype} on {dev}, less dense_op_us, per K,V row",
                         group=md.group_size, head_dim=md.head_dim, probe_ms=probes)
        tick()
