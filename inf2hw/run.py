"""Run a configuration on the real engine: `inf2 backend=emu ...` and `run_engine(...)`.

Called by the CLI (`inf2sim.cli`, backend=emu) and by tests/benchmarks. Builds the
plan with the same scheduler the simulator uses, sets up weights (seeded random or
a local HF checkpoint), prompts (`workload.prompts` JSON file or seeded random ids),
the host stores and one emulated CSD process per CSD, then drives the plan through
`inf2sim.driver.drive`. Writes tokens.json (one id list per sequence), metrics.json
(same format as the simulator, measured) and trace.json into the output dir.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional

import torch

from inf2sim.config import RunSpec
from inf2sim.driver import drive
from inf2sim.layout import keeps_x
from inf2sim.metrics import Metrics, fill_span_metrics, link_bytes, throughput, write_chrome_trace
from inf2sim.scheduler import build_plan
from inf2sim.specs import SpecError

from . import model as M
from .csd.base import CsdConfig
from .engine import Engine, EngineContext
from .stores import DiskStore, MemStore

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class EngineOptions:
    device: str = "cpu"
    dtype: str = "fp32"
    csd_dirs: tuple = ()
    csd_read_gbps: float = 0.0
    keep_files: bool = False
    compute: str = "torch"
    direct_io: str = "auto"
    progress: bool = False
    csd_backend: str = "emulated"  # emulated | smartssd
    smartssd: tuple = ()  # ((bdf, mount), ...) one per CSD
    xclbin: str = ""
    pyxrt_emulation: bool = False  # use inf2hw.csd.pyxrt_emu (the g++ kernel) instead of XRT
    csd_timeout_s: float = 10.0  # a CSD with no progress for this long is reported as stalled
    csd_threads: int = 0  # torch threads per emulated CSD worker; 0: its share of the cores (`csd_threads_for`)
    cpu_threads: int = 0  # torch threads of the engine's CPU-attention thread; 0: torch's default for a new thread
    pin_host_kv: Optional[bool] = None  # CUDA: host KV and X-cache stores pinned when they fit; None: on for cuda
    copy_threads: int = 4  # threads copying the prompt's K,V into a pageable host store, and reading one large
    # drive-file read in parts (FlexGen uses 4 copy threads)
    weights_init: str = "random"  # no checkpoint: random (exact tests) | repeated (benchmarks: one block copied per layer)


def options_from_cfg(cfg) -> EngineOptions:
    csd = cfg.get("csd", {}) or {}
    ss = csd.get("smartssd", {}) or {}
    cards = tuple((str(c["bdf"]), str(c["mount"])) for c in (ss.get("cards", []) or []))
    return EngineOptions(str(cfg.get("device", "cpu")), str(cfg.get("dtype", "fp32")), tuple(csd.get("dirs", []) or []),
                         float(csd.get("read_gbps", 0.0)), bool(csd.get("keep_files", False)),
                         str(csd.get("compute", "torch")), str(csd.get("direct_io", "auto")),
                         csd_backend=str(csd.get("backend", "emulated")), smartssd=cards,
                         xclbin=str(ss.get("xclbin", "")), pyxrt_emulation=bool(ss.get("emulate", False)),
                         csd_timeout_s=float(csd.get("timeout_s", 10.0)), csd_threads=int(csd.get("threads", 0) or 0))


def csd_threads_for(opts: EngineOptions, csd_count: int) -> int:
    """Torch threads of each emulated CSD worker: `opts.csd_threads`, or by default its share of
    this process's cores (at least 1), never more than this process's own torch threads (a
    run pinned to N threads, e.g. by `inf2 validate`, keeps its CSDs within N too)."""
    if opts.csd_threads > 0:
        return opts.csd_threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores // max(1, csd_count)))


def load_prompts(spec: RunSpec) -> torch.Tensor:
    wl, md = spec.workload, spec.model
    if wl.prompts:
        try:
            ids = json.loads(Path(wl.prompts).read_text())
        except (OSError, ValueError) as e:
            raise SpecError(f"workload.prompts={wl.prompts!r}: cannot read a JSON list of token-id lists ({e})") from None
        if not ids or any(len(x) != len(ids[0]) for x in ids):
            raise SpecError("workload.prompts: every prompt must have the same length (a list of equal-length id lists)")
        t = torch.tensor(ids, dtype=torch.long)
        if int(t.max()) >= md.vocab_size or int(t.min()) < 0:
            raise SpecError(f"workload.prompts: token ids must be in [0, {md.vocab_size})")
        return t
    g = torch.Generator().manual_seed(wl.seed)
    return torch.randint(0, md.vocab_size, (wl.batch, wl.prompt_len), generator=g)


def _check(spec: RunSpec, opts: EngineOptions) -> None:
    if opts.dtype not in DTYPES:
        raise SpecError(f"dtype={opts.dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")
    if opts.device not in ("cpu", "cuda") and not opts.device.startswith("cuda:"):
        raise SpecError(f"device={opts.device!r} is not allowed; choose one of cpu, cuda")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("device=cuda is not available on this machine (torch sees no GPU); use device=cpu")
    if opts.compute not in ("torch", "hls"):
        raise SpecError(f"csd.compute={opts.compute!r} is not allowed; choose one of torch, hls")
    need = spec.workload.prompt_len + spec.workload.gen_len
    if need > spec.model.max_positions:
        raise SpecError(f"workload.prompt_len + gen_len = {need} exceeds model.max_positions={spec.model.max_positions}")
    if spec.policy.weights.storage > 0:
        raise SpecError("policy.weights.storage > 0 is not supported by the real engine (weights stream from host DRAM)")
    if opts.weights_init not in ("random", "repeated"):
        raise SpecError(f"weights_init={opts.weights_init!r} is not allowed; choose one of random, repeated")


def run_engine(spec: RunSpec, opts: EngineOptions, out_dir: Optional[str] = None, prompts: Optional[torch.Tensor] = None,
               on_op=None):
    """Run one configuration for real. Returns (tokens [batch][gen_len], last_logits, Metrics, spans).
    `on_op(span, ctx)` is called after every op (tests use it to inject failures).
    Whatever happens (an error, Ctrl-C), CSD processes and their shared memory are
    closed and temporary KV files removed (unless keep_files) before this returns."""
    _check(spec, opts)
    plan, builder = build_plan(spec.model, spec.workload, spec.hardware, spec.policy)
    wl, md = spec.workload, spec.model
    if prompts is None:
        prompts = load_prompts(spec)
    if prompts.shape != (wl.batch, wl.prompt_len):
        spec = replace(spec, workload=replace(wl, batch=prompts.shape[0], prompt_len=prompts.shape[1]))
        plan, builder = build_plan(spec.model, spec.workload, spec.hardware, spec.policy)
        wl = spec.workload
    cdt = DTYPES[opts.dtype]
    weights = _weights(spec, cdt, opts.device, opts.weights_init)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="inf2-run-"))
    out.mkdir(parents=True, exist_ok=True)
    work = out / "kv"
    lay = builder.layout
    cap = wl.prompt_len + wl.gen_len
    cuda = opts.device.startswith("cuda")
    ctx = EngineContext(spec, weights, opts.device, cdt, cdt, prompts, lay,
                        pin_host=cuda and (opts.pin_host_kv is None or opts.pin_host_kv),
                        cpu_threads=opts.cpu_threads, copy_threads=opts.copy_threads)
    dirs = [str(Path(d)) for d in opts.csd_dirs] or [str(work)]
    kvh, d = md.num_kv_heads, md.head_dim
    if builder.kv_on == "host":
        ctx.host_kv = MemStore(lay.rows_total, cap, d, cdt)
    elif builder.kv_on == "gpu":
        ctx.gpu_kv = MemStore(lay.rows_total, cap, d, cdt, device=opts.device)
    elif builder.kv_on in ("ssd", "csd") and builder.attention_on != "csd":
        n = spec.hardware.ssd_count if builder.kv_on == "ssd" else spec.hardware.csd_count
        ctx.disk_kv = DiskStore([os.path.join(dirs[i % len(dirs)], f"drive{i}") for i in range(n)], lay.rows_total,
                                cap, d, cdt, md.num_layers, wl.num_micro_batches, read_threads=opts.copy_threads)
    if builder.attention_on == "csd":
        ctx.recent = MemStore(lay.rows_total, cap, d, cdt)
    if lay.x_seqs:
        width, rows, pairs = (md.hidden, lay.x_seqs, False) if keeps_x(md) else (d, lay.x_seqs * kvh, True)
        ctx.coop_store = MemStore(rows, cap, width, cdt, pairs=pairs)
        if spec.policy.xcache.where == "ssd":
            n = spec.hardware.csd_count
            ctx.coop_disk = DiskStore([os.path.join(dirs[i % len(dirs)], f"csd{i}") for i in range(n)], rows, cap,
                                      width, cdt, md.num_layers, wl.num_micro_batches, pairs=pairs, name="x")
    if opts.device.startswith("cuda"):
        ctx.copy_stream = torch.cuda.Stream()
    engine = Engine(ctx, on_op=(lambda sp: on_op(sp, ctx)) if on_op else None)
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.num_steps, desc="generating", unit="tok")
    step_end = {}

    def on_step(step, _spans):
        step_end[step.step] = engine.now()
        if bar is not None:
            bar.update(1)

    try:
        if builder.attention_on == "csd":
            _make_csds(spec, builder, opts, dirs, cdt, into=ctx.csds)
        compute = engine.runner.compute_stream if engine.runner.cuda else None  # current for the run (`OpRunner`)
        with torch.inference_mode(), torch.cuda.stream(compute):  # (None: no-op, the CPU)
            spans = drive(plan.steps(), engine, on_step)
    finally:
        if bar is not None:
            bar.close()
        engine.close()
        for c in ctx.csds:
            if c is not None:
                try:
                    c.close()
                except Exception as e:  # keep closing the others; the run's own error matters more
                    warnings.warn(f"closing csd{c.index}: {e}")
        for s in (ctx.disk_kv, ctx.coop_disk):
            if s is not None:
                s.close(keep=opts.keep_files)
        if not opts.keep_files and work.exists():
            shutil.rmtree(work, ignore_errors=True)
    tokens = engine.runner.tokens
    m = _metrics(spec, builder, spans, step_end)
    (out / "tokens.json").write_text(json.dumps(tokens))
    m.write(out / "metrics.json")
    write_chrome_trace(spans, out / "trace.json")
    return tokens, engine.runner.last_logits, m, spans


def _weights(spec: RunSpec, dtype: torch.dtype, device: str, init: str = "random"):
    md = spec.model
    if md.checkpoint:
        from .weights import load_checkpoint

        w = load_checkpoint(md, md.checkpoint, dtype=dtype)
    elif init == "repeated":
        w = M.init_repeated(md, seed=spec.workload.seed, dtype=dtype)
    else:
        w = M.init_random(md, seed=spec.workload.seed, dtype=dtype)
    if device.startswith("cuda"):
        resident = spec.policy.weights.gpu >= 1.0
        if not resident:
            w = w.pin_memory()  # layers stream to the GPU every step: DMA from page-locked memory
        dev = M.Weights(md, w.embed.to(device), w.final_norm.to(device), w.lm_head.to(device), w.layers,
                        None if w.pos_embed is None else w.pos_embed.to(device),
                        None if w.final_norm_b is None else w.final_norm_b.to(device))
        if resident:  # copied once, before the clock: pinning them first would only cost setup time
            dev.layers = [lw.to(device) for lw in w.layers]
        return dev
    return w


def _make_csds(spec: RunSpec, builder, opts: EngineOptions, dirs: List[str], dtype, into: list) -> list:
    """Open one CSD per index into `into` (filled as they open, so a failure part-way
    still lets the caller close the ones already started)."""
    from .csd.emulated import EmulatedCsd

    md, wl, lay = spec.model, spec.workload, builder.layout
    if opts.csd_backend not in ("emulated", "smartssd"):
        raise SpecError(f"csd.backend={opts.csd_backend!r} is not allowed; choose one of emulated, smartssd")
    if opts.csd_backend == "smartssd" and len(opts.smartssd) < spec.hardware.csd_count:
        raise SpecError(f"csd.smartssd.cards lists {len(opts.smartssd)} cards; hardware.csd_count={spec.hardware.csd_count} needs one {{bdf, mount}} per CSD")
    out = into
    name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    threads = csd_threads_for(opts, spec.hardware.csd_count)
    for i in range(spec.hardware.csd_count):
        r0, r1 = lay.csd_rows(i)
        if r1 <= r0:  # no rows for this CSD (e.g. the X-cache took them): the plan never uses it
            out.append(None)
            continue
        cfg = CsdConfig(i, os.path.join(dirs[i % len(dirs)], f"csd{i}"), md.num_layers, wl.num_micro_batches,
                        r1 - r0, r0, wl.prompt_len + wl.gen_len, md.head_dim, md.group_size, name, opts.compute,
                        opts.csd_read_gbps, opts.direct_io, opts.keep_files, opts.csd_timeout_s)
        if opts.csd_backend == "smartssd":
            from .csd import smartssd

            emu = None
            if opts.pyxrt_emulation:
                from .csd import pyxrt_emu as emu
            bdf, mount = opts.smartssd[i]
            out.append(smartssd.SmartSsdCsd(cfg, bdf, mount, opts.xclbin, pyxrt_module=emu))
        else:
            out.append(EmulatedCsd(cfg, compute_threads=threads, pin_results=opts.device.startswith("cuda")))
    return out


def _metrics(spec: RunSpec, builder, spans, step_end) -> Metrics:
    wl = spec.workload
    prefill = step_end.get(0, 0.0)
    total = max(step_end.values()) if step_end else 0.0
    m = Metrics(policy=spec.policy.name, alpha=builder.alpha)
    m.time_s = {"prefill": prefill, "decode": total - prefill, "total": total}
    m.throughput = throughput(wl.batch, wl.prompt_len, wl.gen_len, prefill, total - prefill)
    fill_span_metrics(m, spans, prefill, total)
    from inf2sim.topology import build_topology

    moves = [(*s.resource.split("->"), s.nbytes) for s in spans if "->" in s.resource]
    m.bytes = link_bytes(moves, build_topology(spec.hardware))
    m.extra = {"backend": "emu", "ops": len(spans)}
    return m


def run_cli(cfg, out_dir: Path) -> None:
    from inf2sim.simulate import resolve

    spec = resolve(cfg)
    opts = replace(options_from_cfg(cfg), progress=True)
    tokens, _, m, _ = run_engine(spec, opts, out_dir=str(out_dir))
    t = m.throughput
    print(f"{spec.model.name} policy={spec.policy.name} backend=emu device={opts.device} dtype={opts.dtype} "
          f"batch={spec.workload.batch} prompt={spec.workload.prompt_len} gen={spec.workload.gen_len}")
    print(f"prefill {t['prefill_tok_s']:.1f} tok/s  decode {t['decode_tok_s']:.1f} tok/s  total {t['total_tok_s']:.1f} tok/s")
    print(f"tokens[0]: {tokens[0]}")
    print(f"outputs: {out_dir}")
