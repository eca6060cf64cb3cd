"""The inf2 engine against stock FlexGen 0.1.8 on the same machine, shape and workload.

    python benchmarks/engine_vs_flexgen.py --model opt-13b --gbs 16 --ngb 2 --prompt 2048 --gen 16 \\
        --weights gpu --flexgen dram,disk --engine flexgen_dram,flexgen_ssd,inf2 --alpha 0.75 --csds 8 \\
        --flexgen-wheels _fgwheels --work /tmp/bench --out benchmarks/results/h100_opt13b.json

Every run is its own process under `timeout` (FlexGen through
`benchmarks/flexgen_launcher/run_flexgen.py`; the engine through `--child engine`),
one after another, so each side has the machine to itself. Same OPT shape, batch
(gbs x ngb micro-batches = FlexGen's gpu batch size x number of GPU batches), prompt
and generation lengths, dtype (fp16 on a GPU; fp32 on a CPU, see
`flexgen_launcher/cpu_shims.py`), weight placement, and I/O mode:

  FlexGen dram   --percent W 0 100 100 0 ... KV in DRAM, --cpu-cache-compute --sep-layer 0
  FlexGen disk   KV on "disk" = files under --work (buffered I/O: the page cache while RAM is free)
  engine flexgen_dram / flexgen_ssd   the same placements as inf2 policies (ssd: one drive,
                 files under --work, buffered I/O)
  engine inf2 / ans / ...   emulated CSDs (one process each, KV files under --work, buffered
                 I/O so both sides read through the page cache), X-cache in pinned host DRAM
                 regenerated and attended on the GPU for a share alpha of the sequences.

Throughput uses FlexGen's conventions on both sides (prefill = batch x prompt / prefill s,
decode = batch x (gen - 1) / decode s, total = batch x gen / (prefill + decode)); FlexGen
times from after its warm-up and cache allocation, the engine from after its stores
and pinned buffers are allocated (weights are made before either clock starts).
Engine weights are `inf2hw.model.init_repeated` (random, same bytes per layer;
EngineOptions.weights_init="repeated"; weights that live on the GPU go there unpinned);
the host KV store (flexgen_dram) and the X-cache are pinned when they fit (--pin-host),
so the prompt's K,V reach the store by one DMA; each emulated CSD attends with
cores / csds torch threads (--csd-threads);
FlexGen's `--path _DUMMY_` weights are ones. FlexGen's prompts are its own
(left-padded "Paris is the capital city of"): the same amount of work per token.

Bounds: `--child measure` measures this machine (GEMM rate: the better of a 2048^3 matmul
and the model's FFN GEMM at a prefill micro-batch's tokens, device memory and host
link bandwidth, host memcpy, page-cache reads, the engine's CPU attention rate on all
cores and on one core, an emulated CSD's attention on its rows and threads) and writes
those numbers over `conf/hardware/paper_h100.yaml`'s shape; `inf2sim.cost.bound` of each
side's plan on that profile gives the machine's bound, and each measured total over it
the fraction reported.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HF_NAMES = {"opt-125m": "facebook/opt-125m", "opt-1.3b": "facebook/opt-1.3b", "opt-6.7b": "facebook/opt-6.7b",
            "opt-13b": "facebook/opt-13b", "opt-30b": "facebook/opt-30b", "opt-66b": "facebook/opt-66b"}
FLEX_EQUIV = {"dram": "flexgen_dram", "disk": "flexgen_ssd"}


# ------------------------------------------------------------------ specs
def _policy_alpha(token: str, default: float):
    """`inf2@0.5` -> ("inf2", 0.5): a policy with its own X-cache share."""
    name, _, alpha = token.partition("@")
    return name, float(alpha) if alpha else default


def _overrides(a, token: str) -> dict:
    policy, alpha = _policy_alpha(token, a.alpha)
    ov = {"model": a.model, "policy": policy, "workload.batch": a.gbs * a.ngb, "workload.num_micro_batches": a.ngb,
          "workload.prompt_len": a.prompt, "workload.gen_len": a.gen}
    from inf2sim.config import load_group

    if load_group("model", a.model).get("max_positions", 0) < a.prompt + a.gen:
        # OPT's learned position table has 2048 rows; FlexGen's padded prompts never index past
        # it (positions count real tokens), so prompt 2048 + gen runs there: extend the table here
        ov["model.max_positions"] = a.prompt + a.gen
    if a.weights == "gpu":
        ov.update({"policy.weights.gpu": 1.0, "policy.weights.host": 0.0})
    if policy == "flexgen_ssd":
        ov["hardware.ssd_count"] = 1
    if policy in ("ans", "ans_wb", "ans_xcache", "inf2", "inf2_v2"):
        ov["hardware.csd_count"] = a.csds
        if policy in ("ans_xcache", "inf2", "inf2_v2"):
            ov["policy.xcache.alpha"] = alpha
    if a.device == "cpu":
        ov["model.dtype_bytes"] = 4  # fp32 on the CPU: the plan counts the bytes that really move
    return ov


def _spec(a, policy: str, hw_over: dict | None = None):
    from inf2sim.config import default_config, specs_from_config

    ov = {"hardware": "paper_h100", **_overrides(a, policy), **(hw_over or {})}
    return specs_from_config(default_config(**ov))


# ------------------------------------------------------------- engine child
def child_engine(a) -> None:
    import torch

    from inf2hw.run import EngineOptions, csd_threads_for, run_engine

    dtype = "fp16" if a.device == "cuda" else "fp32"
    r = _spec(a, a.policy)
    if r.policy.kv_on == "csd" and r.policy.attention_on == "csd":  # the CSD processes each keep a core busy: no oversubscribed OpenMP here
        torch.set_num_threads(max(2, (os.cpu_count() or 2) - a.csds))
    work = Path(a.work) / f"engine_{a.policy}"
    opts = EngineOptions(device=a.device, dtype=dtype, csd_dirs=(str(work),), direct_io="off",
                         weights_init="repeated", csd_threads=a.csd_threads, cpu_threads=a.cpu_threads,
                         pin_host_kv=None if a.pin_host == "auto" else a.pin_host == "on", copy_threads=a.copy_threads)
    print(f"engine options: {opts}; csd threads {csd_threads_for(opts, a.csds)}, torch threads {torch.get_num_threads()}",
          flush=True)
    # warm-up (CUDA context, cuBLAS, kernels, CSD forkserver): a 2-layer run of the same policy
    from dataclasses import replace

    small = replace(r, model=replace(r.model, num_layers=2),
                    workload=replace(r.workload, batch=2 * a.ngb, prompt_len=16, gen_len=2))
    run_engine(small, opts, out_dir=tempfile.mkdtemp(prefix="warm-", dir=a.work))
    t0 = time.perf_counter()
    run_dir = tempfile.mkdtemp(prefix="run-", dir=a.work)
    tokens, _, m, spans = run_engine(r, opts, out_dir=run_dir)
    wall = time.perf_counter() - t0
    shutil.copy(Path(run_dir) / "trace.json", Path(a.json_out).with_suffix(".trace.json"))
    busy = {k: v for k, v in sorted(m.busy_frac.items(), key=lambda kv: -kv[1])[:8]}
    out = {"side": "engine", "policy": a.policy.split("@")[0], "alpha": m.alpha, "device": _device_name(),
           "dtype": dtype, "batch": r.workload.batch, "prompt_len": a.prompt, "gen_len": a.gen,
           "micro_batches": a.ngb, "weights": a.weights, "csds": a.csds if "csd" in str(r.policy.kv_on) else 0,
           "time_s": m.time_s, "throughput": m.throughput, "busy_frac": busy, "kv_io_share": m.kv_io_share,
           "ops": len(spans), "wall_s": wall, "tokens_seq0": tokens[0][:8],
           "engine_options": {"csd_threads": csd_threads_for(opts, a.csds), "cpu_threads": a.cpu_threads,
                              "pin_host_kv": a.pin_host, "copy_threads": a.copy_threads},
           "io_mode": "buffered files under --work (page cache)" if r.policy.kv_on in ("ssd", "csd") else "host DRAM"}
    Path(a.json_out).write_text(json.dumps(out, indent=2))
    t = m.throughput
    print(f"engine {a.policy}: prefill {t['prefill_tok_s']:.1f} tok/s  decode {t['decode_tok_s']:.2f} tok/s  "
          f"total {t['total_tok_s']:.2f} tok/s  ({wall:.1f} s wall)", flush=True)


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ------------------------------------------------------------ measure child
def _best(fn, reps: int = 3, warm: bool = False) -> float:
    """Seconds of the fastest of `reps` calls (after one untimed call if `warm`)."""
    if warm:
        fn()  # buffers allocated, pages touched
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def child_measure(a) -> None:
    """This machine's rates, for the bound (GB/s = 1e9 B/s; TFLOP/s)."""
    import torch

    from inf2hw.host_attention import cpu_attention, host_attention
    from inf2sim.config import default_config, specs_from_config

    md = specs_from_config(default_config(model=a.model)).model
    res = {"device": _device_name(), "cores": os.cpu_count()}
    with open("/proc/meminfo") as f:
        res["host_memory_gb"] = int(f.readline().split()[1]) * 1024 / 1e9
    n = 1 << 28  # 1 GiB of fp32
    src, dst = torch.ones(n), torch.empty(n)
    dst.copy_(src)
    res["host_copy_gbps"] = 4 * n / _best(lambda: dst.copy_(src)) / 1e9  # bytes copied per second
    # page cache: buffered write then read of 1 GiB in the work folder, one thread (what an emulated CSD does)
    path = Path(a.work) / "measure.bin"
    buf = os.urandom(1 << 20) * 1024
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.write(buf)
    res["pagecache_write_gbps"] = len(buf) / (time.perf_counter() - t) / 1e9
    fd = os.open(path, os.O_RDONLY)
    out = bytearray(len(buf))
    res["pagecache_read_gbps"] = len(buf) / _best(lambda: os.preadv(fd, [memoryview(out)], 0)) / 1e9
    # the engine's FlexGen drives split a large read over copy_threads preads (inf2hw.stores.DiskStore)
    from concurrent.futures import ThreadPoolExecutor

    nt, mv = max(1, a.copy_threads), memoryview(out)
    step = -(-len(out) // nt)
    with ThreadPoolExecutor(nt) as pool:
        def par():
            for j in [pool.submit(os.preadv, fd, [mv[o:o + step]], o) for o in range(0, len(out), step)]:
                j.result()
        res["pagecache_read_par_gbps"] = len(buf) / _best(par) / 1e9
    os.close(fd)
    path.unlink()
    # the engine's CPU attention at this run's shape: all cores, and one core (an emulated CSD)
    dt = torch.float16 if a.device == "cuda" else torch.float32
    rows, ctx, d = min(a.gbs * md.num_kv_heads, 640), a.prompt + a.gen, md.head_dim
    q = torch.randn(rows, md.group_size, 1, d, dtype=dt)
    k, v = torch.randn(rows, ctx, d, dtype=dt), torch.randn(rows, ctx, d, dtype=dt)
    kv_bytes = 2 * k.numel() * k.element_size()
    host_attention(q, k, v)
    res["cpu_attention_gbps"] = kv_bytes / _best(lambda: host_attention(q, k, v)) / 1e9  # what flexgen_dram runs
    nt = torch.get_num_threads()
    torch.set_num_threads(1)
    q1, k1, v1 = q[:32], k[:32], v[:32]
    res["cpu_attention_1core_gbps"] = 2 * k1.numel() * k1.element_size() / _best(lambda: cpu_attention(q1, k1, v1)) / 1e9
    res["csd_threads"] = _csd_threads(a)
    torch.set_num_threads(res["csd_threads"])
    res["csd_attention_gbps"] = csd_attention_gbps(q, k, v, max(1, a.gbs * md.num_kv_heads // a.csds))
    torch.set_num_threads(nt)
    a1 = torch.randn(2048, 2048)
    res["cpu_fp32_gflops_2048"] = 2 * 2048 ** 3 / _best(lambda: torch.mm(a1, a1)) / 1e9
    # a bound needs the best rate the run's own GEMMs reach: the FFN's [tokens, h] x [h, ffn] at a
    # prefill micro-batch's tokens (up to 4096) reaches more than a square 2048 one on a CPU
    t = min(a.gbs * a.prompt, 4096)
    xf, wf = torch.randn(t, md.hidden), torch.randn(md.ffn_dim, md.hidden)
    ffn = 2 * t * md.hidden * md.ffn_dim / _best(lambda: torch.nn.functional.linear(xf, wf)) / 1e9
    res["cpu_fp32_gflops"] = max(res["cpu_fp32_gflops_2048"], ffn)
    if torch.cuda.is_available():
        x = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        torch.mm(x, x)
        torch.cuda.synchronize()

        def mm():
            for _ in range(10):
                torch.mm(x, x)
            torch.cuda.synchronize()

        res["gpu_fp16_tflops"] = 10 * 2 * 8192 ** 3 / _best(mm) / 1e12
        g1, g2 = torch.empty(1 << 29, device="cuda"), torch.empty(1 << 29, device="cuda")

        def d2d():
            g2.copy_(g1)
            torch.cuda.synchronize()

        d2d()
        res["gpu_mem_gbps"] = 2 * 4 * (1 << 29) / _best(d2d) / 1e9  # bytes read + written
        h = torch.empty(1 << 28, pin_memory=True)
        g = torch.empty(1 << 28, device="cuda")

        def h2d():
            g.copy_(h, non_blocking=True)
            torch.cuda.synchronize()

        def d2h():
            h.copy_(g, non_blocking=True)
            torch.cuda.synchronize()

        h2d()
        res["h2d_gbps"] = 4 * (1 << 28) / _best(h2d) / 1e9
        res["d2h_gbps"] = 4 * (1 << 28) / _best(d2h) / 1e9
        res["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 1e9
    Path(a.json_out).write_text(json.dumps(res, indent=2))
    print("measured:", json.dumps(res), flush=True)


def csd_attention_gbps(q, k, v, rows: int) -> float:
    """An emulated CSD's attention (the worker's own function) over `rows` of q [., G, 1, d],
    k, v [., ctx, d], in GB/s of K,V, at the calling thread's torch threads."""
    from inf2hw.csd.worker import torch_attention
    from inf2hw.host_attention import AttnWorkspace

    qc, kc, vc = q[:rows, :, 0], k[:rows], v[:rows]
    ws = AttnWorkspace()
    t = _best(lambda: torch_attention(qc, kc, vc, kc.shape[1], None, ws))
    return 2 * kc.numel() * kc.element_size() / t / 1e9


def _csd_threads(a) -> int:
    """The torch threads each emulated CSD gets in `child_engine` (inf2hw.run.csd_threads_for there)."""
    if a.csd_threads > 0:
        return a.csd_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(max(2, (os.cpu_count() or 2) - a.csds), cores // max(1, a.csds)))


def child_cpuattn(a) -> None:
    """The engine's CPU attention at this run's shape, whole vs in pieces of rows (GB/s of KV)."""
    import torch

    from inf2hw.host_attention import cpu_attention
    from inf2sim.config import default_config, specs_from_config

    md = specs_from_config(default_config(model=a.model)).model
    dt = torch.float16 if a.device == "cuda" else torch.float32
    rows, ctx, d = a.gbs * md.num_kv_heads, a.prompt + a.gen, md.head_dim
    cap = ctx + 8
    q = torch.randn(rows, md.group_size, 1, d, dtype=dt)
    k, v = (torch.randn(rows, cap, d, dtype=dt)[:, :ctx] for _ in range(2))  # strided, as a store's view
    kv = 2 * rows * ctx * d * k.element_size()
    from inf2hw.attention import attend_partial
    from inf2hw.host_attention import AttnWorkspace

    n = torch.get_num_threads()
    t = _best(lambda: attend_partial(q, k, v), 3)
    print(f"cpu attention rows={rows} ctx={ctx} threads={n} whole (attend_partial): {kv / t / 1e9:.2f} GB/s", flush=True)
    ws = AttnWorkspace()
    for piece in (64, 32, 16, 8, 4):
        t = _best(lambda: cpu_attention(q, k, v, rows_per_piece=piece, ws=ws), 3)
        print(f"cpu attention rows={rows} ctx={ctx} threads={n} piece={piece}: {kv / t / 1e9:.2f} GB/s", flush=True)


def profile_overrides(mres: dict, cuda: bool) -> dict:
    """paper_h100's shape with this machine's measured numbers (see the module docstring)."""
    dram = mres["host_copy_gbps"]
    pc_r, pc_w = mres["pagecache_read_gbps"], mres["pagecache_write_gbps"]  # one stream: an emulated CSD's
    pc_r_par = mres.get("pagecache_read_par_gbps", pc_r)  # FlexGen's drive files: reads split over copy threads
    fast = {"up_gbps": dram, "down_gbps": dram, "latency_us": 1.0}
    ov = {"hardware.cpu.cores": mres["cores"], "hardware.cpu.attention_gbps": mres["cpu_attention_gbps"],
          "hardware.cpu.gemm_gflops": mres["cpu_fp32_gflops"],
          "hardware.host.memory_gb": mres["host_memory_gb"], "hardware.host.memory_budget_gb": mres["host_memory_gb"] / 2,
          "hardware.host.dram": {"up_gbps": dram * 2, "down_gbps": dram * 2, "latency_us": 0.1},
          "hardware.ssd.link": fast, "hardware.ssd_uplink": fast,
          "hardware.ssd.req_kib": [4, 131072], "hardware.ssd.read_gbps": [pc_r_par, pc_r_par],
          "hardware.ssd.write_gbps": [pc_w, pc_w],
          "hardware.csd.host_link": fast, "hardware.csd.internal_link": fast, "hardware.csd.ssd.link": fast,
          "hardware.chassis.uplink": fast, "hardware.chassis.port": fast,
          "hardware.csd.ssd.req_kib": [4, 131072], "hardware.csd.ssd.read_gbps": [pc_r, pc_r],
          "hardware.csd.ssd.write_gbps": [pc_w, pc_w],
          "hardware.csd.fpga.rate_gbps": mres.get("csd_attention_gbps", mres["cpu_attention_1core_gbps"])}
    if cuda:
        ov.update({"hardware.gpu.name": mres["device"], "hardware.gpu.memory_gb": mres["gpu_memory_gb"],
                   "hardware.gpu.fp16_tflops": mres["gpu_fp16_tflops"], "hardware.gpu.gemm_efficiency": 1.0,
                   "hardware.gpu.mem_gbps": mres["gpu_mem_gbps"], "hardware.gpu.attention_efficiency": 1.0,
                   "hardware.gpu.link": {"up_gbps": mres["d2h_gbps"], "down_gbps": mres["h2d_gbps"], "latency_us": 5}})
    else:  # no GPU: the "GPU" of the plan is this CPU, its "link" a host memcpy
        tf = mres["cpu_fp32_gflops"] / 1e3
        ov.update({"hardware.gpu.name": "cpu", "hardware.gpu.memory_gb": mres["host_memory_gb"],
                   "hardware.gpu.fp16_tflops": tf, "hardware.gpu.fp32_tflops": tf, "hardware.gpu.gemm_efficiency": 1.0,
                   "hardware.gpu.mem_gbps": dram * 2, "hardware.gpu.attention_efficiency": 1.0,
                   "hardware.gpu.link": fast})
    return ov


def bound_of(a, policy: str, hw_over: dict) -> dict:
    from inf2sim.cost import bound
    from inf2sim.scheduler import build_plan

    spec = _spec(a, policy, hw_over)
    _, builder = build_plan(spec.model, spec.workload, spec.hardware, spec.policy)
    b = bound(spec, builder)
    return {"total_tok_s": b.total_tok_s, "prefill_tok_s": b.prefill_tok_s, "decode_tok_s": b.decode_tok_s,
            "bottleneck": b.bottleneck}


# ------------------------------------------------------------------ parent
def _run(cmd, timeout_s: int, log: Path) -> int:
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        p = subprocess.run(["timeout", str(timeout_s), *cmd], stdout=f, stderr=subprocess.STDOUT)
    tail = log.read_text().strip().splitlines()[-3:]
    print("\n".join("  " + x for x in tail), flush=True)
    return p.returncode


def _install_flexgen(a) -> str:
    if a.site:
        return a.site
    site = Path(a.work) / "fgsite"
    if not (site / "flexgen").exists():
        wheels = sorted(str(p) for p in Path(a.flexgen_wheels).glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                        *wheels], check=True)
    return str(site)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opt-125m")
    ap.add_argument("--gbs", type=int, default=4, help="sequences per micro-batch (FlexGen's gpu batch size)")
    ap.add_argument("--ngb", type=int, default=2, help="micro-batches (FlexGen's number of GPU batches)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--weights", choices=("gpu", "cpu"), default="gpu", help="all weights on the GPU, or in host DRAM")
    ap.add_argument("--flexgen", default="dram,disk", help="FlexGen KV placements to run (dram, disk; empty: none)")
    ap.add_argument("--engine", default="flexgen_dram,flexgen_ssd,inf2", help="engine policies to run")
    ap.add_argument("--alpha", type=float, default=0.75, help="X-cache share for inf2 / ans_xcache")
    ap.add_argument("--csds", type=int, default=8, help="emulated CSDs (processes)")
    ap.add_argument("--csd-threads", type=int, default=0, help="torch threads per emulated CSD (0: cores / csds)")
    ap.add_argument("--cpu-threads", type=int, default=0, help="torch threads of the engine's CPU attention (0: default)")
    ap.add_argument("--pin-host", choices=("auto", "on", "off"), default="auto",
                    help="host KV / X-cache stores in pinned memory (auto: on a GPU, when they fit)")
    ap.add_argument("--copy-threads", type=int, default=4, help="threads copying prompt K,V into a pageable host store")
    ap.add_argument("--flexgen-wheels", default="_fgwheels")
    ap.add_argument("--site", default="", help="flexgen already installed here (skip the wheel install)")
    ap.add_argument("--work", default="", help="scratch folder for KV files (default: a temp folder)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per run")
    ap.add_argument("--out", default="", help="combined JSON")
    ap.add_argument("--child", choices=("engine", "measure", "cpuattn"), help=argparse.SUPPRESS)
    ap.add_argument("--policy", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.device:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    a.work = a.work or tempfile.mkdtemp(prefix="inf2-bench-")
    Path(a.work).mkdir(parents=True, exist_ok=True)
    if a.child == "engine":
        return child_engine(a)
    if a.child == "measure":
        return child_measure(a)
    if a.child == "cpuattn":
        return child_cpuattn(a)

    me = [sys.executable, str(Path(__file__).resolve()), "--model", a.model, "--gbs", str(a.gbs), "--ngb", str(a.ngb),
          "--prompt", str(a.prompt), "--gen", str(a.gen), "--weights", a.weights, "--alpha", str(a.alpha),
          "--csds", str(a.csds), "--work", a.work, "--device", a.device, "--csd-threads", str(a.csd_threads),
          "--cpu-threads", str(a.cpu_threads), "--pin-host", a.pin_host, "--copy-threads", str(a.copy_threads)]
    logs = Path(a.work) / "logs"
    logs.mkdir(exist_ok=True)
    results = {"machine": _device_name(), "args": vars(a), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "command": " ".join(sys.argv), "runs": {}}
    mj = str(logs / "measure.json")
    if _run(me + ["--child", "measure", "--json-out", mj], a.timeout, logs / "measure.log") == 0:
        results["measured"] = json.loads(Path(mj).read_text())
    place = "100 0" if a.weights == "gpu" else "0 100"
    for kv in [x for x in a.flexgen.split(",") if x]:
        site = _install_flexgen(a)
        cache = "0 100" if kv == "dram" else "0 0"
        off = Path(a.work) / "flexgen_offload"
        js = str(logs / f"flexgen_{kv}.json")
        cmd = [sys.executable, str(ROOT / "benchmarks/flexgen_launcher/run_flexgen.py"), "--site", site, "--json-out", js,
               "--", "--model", HF_NAMES[a.model], "--path", "_DUMMY_", "--offload-dir", str(off),
               "--percent", *place.split(), *cache.split(), "100", "0", "--gpu-batch-size", str(a.gbs),
               "--num-gpu-batches", str(a.ngb), "--prompt-len", str(a.prompt), "--gen-len", str(a.gen),
               "--cpu-cache-compute", "--sep-layer", "0"]
        rc = _run(cmd, a.timeout, logs / f"flexgen_{kv}.log")
        shutil.rmtree(off, ignore_errors=True)
        r = json.loads(Path(js).read_text()) if rc == 0 and Path(js).exists() else {"error": f"exit {rc}"}
        r["io_mode"] = "host DRAM" if kv == "dram" else "buffered files under --work (page cache)"
        r["log_tail"] = (logs / f"flexgen_{kv}.log").read_text()[-1500:]
        results["runs"][f"flexgen_{kv}"] = r
    for pol in [x for x in a.engine.split(",") if x]:
        js = str(logs / f"engine_{pol}.json")
        rc = _run(me + ["--child", "engine", "--policy", pol, "--json-out", js], a.timeout, logs / f"engine_{pol}.log")
        shutil.rmtree(Path(a.work) / f"engine_{pol}", ignore_errors=True)
        r = json.loads(Path(js).read_text()) if rc == 0 and Path(js).exists() else {"error": f"exit {rc}"}
        r["log_tail"] = (logs / f"engine_{pol}.log").read_text()[-1500:]
        results["runs"][f"engine_{pol}"] = r
    if "measured" in results:
        hw = profile_overrides(results["measured"], a.device == "cuda")
        results["profile_overrides"] = hw
        for name, r in results["runs"].items():
            pol = FLEX_EQUIV[name.split("_", 1)[1]] if name.startswith("flexgen_") else name.split("_", 1)[1]
            try:
                r["bound"] = bound_of(a, pol, hw)
                if "throughput" in r:
                    r["fraction_of_bound"] = r["throughput"]["total_tok_s"] / r["bound"]["total_tok_s"]
            except Exception as e:  # a bound that cannot be computed is reported, not fatal
                r["bound"] = {"error": f"{type(e).__name__}: {e}"}
    _summary(results)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2, default=str))
        print("wrote", a.out)


def _summary(results: dict) -> None:
    runs = results["runs"]
    ok = {k: v for k, v in runs.items() if "throughput" in v}
    flex = {k: v["throughput"]["total_tok_s"] for k, v in ok.items() if k.startswith("flexgen_")}
    best_flex = max(flex.values()) if flex else None
    print(f"\nmachine: {results['machine']}")
    print(f"{'run':24s} {'prefill':>9s} {'decode':>9s} {'total':>8s} {'bound':>8s} {'frac':>6s}  vs FlexGen")
    for k, v in runs.items():
        if "throughput" not in v:
            print(f"{k:24s} {v.get('error', '?')}")
            continue
        t = v["throughput"]
        b = v.get("bound", {}).get("total_tok_s")
        same = flex.get({"engine_flexgen_dram": "flexgen_dram", "engine_flexgen_ssd": "flexgen_disk"}.get(k, ""))
        ratio = ""
        if k.startswith("engine_") and same:
            ratio = f"{t['total_tok_s'] / same:.2f}x same placement"
        elif k.startswith("engine_") and best_flex:
            ratio = f"{t['total_tok_s'] / best_flex:.2f}x best FlexGen"
        v["ratio"] = ratio
        print(f"{k:24s} {t['prefill_tok_s']:9.1f} {t['decode_tok_s']:9.2f} {t['total_tok_s']:8.2f} "
              f"{(b or 0):8.2f} {v.get('fraction_of_bound', 0):6.2f}  {ratio}")


if __name__ == "__main__":
    main()
