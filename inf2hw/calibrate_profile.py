"""Turn a `Calibration` into conf/hardware/<name>.yaml: every number with how and when.

Called by `inf2hw.loop.calibrate_cli` after `inf2hw.calibrate.measure`. The YAML is
written as text (not dumped) so that every value carries a comment naming the
microbenchmark that gave it and the date; it loads like any hand-written profile
(`inf2sim.config.load_group("hardware", name)` -> `HardwareProfile`).

How the machine maps onto the simulator's model (`inf2sim.topology`, `inf2sim.rates`):
  - The plan's `gpu` is the device that runs the dense ops: the GPU when there is one,
    else the CPU itself. Without a GPU, the `gpu` link carries no bytes in the engine
    (weights and activations are already in host memory), so it gets a "no copy"
    bandwidth and, as latency, the measured fixed cost of a host-side copy op.
  - Emulated CSDs are processes on this host: the chassis, port and CSD host links are
    shared memory (memcpy bandwidth); the CSD host link's latency is the measured cost
    of handing a command to a worker; its flash is the O_DIRECT curve of the
    calibration disk, shared by all CSDs (`csd.ssd.shared_*`: N processes at once).
  - FlexGen's "SSDs" are files written and read with buffered I/O (`inf2hw.stores.DiskStore`),
    so `ssd` gets the buffered curves (warm page cache), shared likewise.
  - fpga.rate_gbps and host.ipc_us come from the emulated CSD's attention fit.
Units: GB/s = 1e9 B/s, us, GB = 1e9 B, KiB for request sizes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from inf2sim.accel import kv_bytes
from inf2sim.specs import CYCLE_MODEL

from .calibrate import Calibration
from .calibrate_io import monotone
from .ops import IO_THREADS

NO_COPY_GBPS = 1000.0  # "no bytes move" links: far above anything else in the profile


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


def _r(x: float, digits: int = 4) -> float:
    """Round to `digits` significant digits (keeps small rates readable)."""
    if x == 0:
        return 0.0
    from math import floor, log10

    return round(x, max(0, digits - 1 - floor(log10(abs(x)))))


def _fmt_list(xs: List[float]) -> str:
    return "[" + ", ".join(f"{_r(x, 3):g}" for x in xs) + "]"


def _curve_lines(prefix: str, kib: List[float], seconds: List[float], fixed_us: float, fixed_name: str,
                 how: str) -> List[str]:
    """`<prefix>_kib` / `<prefix>_us` (inf2sim.rates.curve_seconds): the medians less the
    fixed part the profile charges separately (`fixed_name`)."""
    us = [max(0.0, t * 1e6 - fixed_us) for t in seconds]
    return [f"{prefix}_kib: {_fmt_list(kib)}   # K+V KiB",
            f"{prefix}_us: {_fmt_list(us)}   # {how}, less {fixed_name}'s {_r(fixed_us)} us"]


def _measured(cal: Calibration, key: str, prefix: str, fixed_us: float, fixed_name: str, src: str) -> List[str]:
    c = cal.curves.get(key)
    if not c:
        return []
    return _curve_lines(prefix, [b / 1024 for b in c["bytes"]], c["seconds"], fixed_us, fixed_name,
                        f"{cal.how[key]} ({src})")


def _copy_engines(cal: Calibration, src: str) -> List[str]:
    """gpu.copy_engines: 1 when two copies into the GPU are served one after the other
    (the first of two finishes in about one copy's time), else 0 (they share the link)."""
    r = cal.values.get("copy_h2d_first_of_two")
    if r is None:
        return []
    return [f"  copy_engines: {1 if r < 1.5 else 0}   # the first of two concurrent copies into the GPU finished "
            f"at {_r(r, 3)}x one copy's time: {cal.how['copy_h2d_first_of_two']} ({src})"]


def _series(cal: Calibration, key: str, prefix: str, x_what: str, y_suffix: str, src: str) -> List[str]:
    if key not in cal.series:
        return []
    xs, ys = cal.series[key]
    return [f"{prefix}: {_fmt_list(xs)}   # {x_what}",
            f"{prefix}{y_suffix}: {_fmt_list(ys)}   # {cal.how[key]} ({src})"]


def _op_curves(cal: Calibration, src: str, cpu: bool = False) -> List[str]:
    """gpu.op_curves (cpu=False: the dense device's ops, inf2hw.calibrate_ops) or cpu.op_curves
    (the host's decode attention, inf2hw.calibrate_dense.cpu_attention): one flow mapping per
    (model, op), how it was measured beside it."""
    curves = [c for c in cal.op_curves if (c["what"] == "decode_attention") == cpu]
    if not curves:
        return []
    lines = ["  op_curves:   # the engine's ops of calibrate.models, timed on this device: "
             "used by the DES for ops of exactly these shapes"]
    for c in curves:
        keys = (f"what: {c['what']}, model: {c['model']}, flops_per_token: {c['flops_per_token']:.0f}, "
                f"group: {c['group']}, head_dim: {c['head_dim']}")
        lines.append(f"    - {{{keys}, tokens: {c['tokens']}, us: [{', '.join(f'{_r(u):g}' for u in c['us'])}]}}   "
                     f"# {c['how']} ({src})")
    return lines


def _curves(c, indent: str, tag: str) -> List[str]:
    kib = [b / 1024 for b in c.req_bytes]
    lines = [
        f"{indent}req_kib: {_fmt_list(kib)}",
        f"{indent}read_gbps: {_fmt_list(monotone(c.read_gbps))}     # {tag}: 1 process, QD1, payload GB/s (running max over sizes)",
        f"{indent}write_gbps: {_fmt_list(monotone(c.write_gbps))}    # {tag}: 1 process, QD1" +
        (" (< 4 KiB: read-modify-write of a 4 KiB block, as inf2hw.csd.kvfile does)" if c.mode == "direct" else ""),
    ]
    if c.procs > 1:
        who = (f"{c.procs} streams at once in one process, sharing one pool of the split calls' threads as "
               "DiskStore's drives do") if c.mode == "diskstore" else f"{c.procs} processes at once"
        lines += [
            f"{indent}shared_read_gbps: {_fmt_list(monotone(c.read_agg_gbps))}   # {tag}: {who}, aggregate (one disk)",
            f"{indent}shared_write_gbps: {_fmt_list(monotone(c.write_agg_gbps))}  # {tag}: {who}, aggregate",
        ]
        if c.mode == "direct":  # one device queue: benchmarks/csd_disk_mix.py measured its round-robin of requests
            lines.append(f"{indent}shared_by: requests   # O_DIRECT on one disk: one request of each stream per round, "
                         "reads and writes in one queue (inf2sim/des/disks.py)")
    return lines


def profile_yaml(cal: Calibration, csd_count: int = 2, ssd_count: int = 2) -> str:
    """The profile as YAML text (see the module docstring)."""
    v, o = cal.values, cal.opts
    day = cal.when[:10]
    src = f"inf2 calibrate {day}"
    gpu = cal.device != "cpu"
    peak32, peak16 = v["gemm_fp32_tflops"], v["gemm_fp16_tflops"]
    how32, how16 = cal.how["gemm_fp32_tflops"], cal.how["gemm_fp16_tflops"]
    if "block_tflops" in v:  # the engine dtype's rate is the achieved rate of the engine's blocks
        blk = f"{cal.how['block_tflops']} (a plain GEMM: {{}} TFLOP/s)"
        if o.dtype == "fp32":
            peak32, how32 = v["block_tflops"], blk.format(_r(peak32))
        else:
            peak16, how16 = v["block_tflops"], blk.format(_r(peak16))
    mem = v["stream_gbps"]
    att_eff = v["dense_attention_gbps"] / mem if mem > 0 else 1.0
    memcpy = v["memcpy_gbps"]
    csd = cal.csd.get(o.csd_compute) or cal.csd.get("torch")
    disp = v.get("engine_op_us", 0.0)  # the engine's dispatch per op, charged once to each op's device or link
    plus = f" + engine dispatch {_r(disp, 3)} us"
    disk_csd = cal.disk.get("direct" if o.csd_io == "direct" else "buffered") or cal.disk.get("buffered")
    disk_ssd = cal.disk.get("diskstore") or cal.disk.get("buffered")
    lines = [
        f"# Hardware profile `{o.name}`, written by `inf2 calibrate` on {cal.when} ({cal.seconds:.0f} s,",
        f"# {'quick' if o.quick else 'full'} mode) on: {cal.machine}; dense device: {cal.device}.",
        f"# Engine setting it describes: dtype={o.dtype}, torch threads={o.threads}, csd.compute={csd.compute if csd else '-'}, "
        f"csd.direct_io={'on' if o.csd_io == 'direct' else 'off'},",
        f"# disk directory {o.directory or '(temporary dir)'}. Every value names its microbenchmark (inf2hw/calibrate*.py).",
        "# Re-run `inf2 calibrate calibrate.name=" + o.name + "` to refresh; see docs/calibration.md.",
        f"name: {o.name}",
        "has_gpu: true   # the plan's `gpu` ops run on the dense device" + ("" if gpu else ": here the CPU (engine device=cpu)"),
        f'notes: "calibrated {cal.when} on {cal.machine}; dense device {cal.device}; dtype {o.dtype}; '
        f'{o.threads} torch thread(s); csd.direct_io={"on" if o.csd_io == "direct" else "off"}"',
        f"csd_count: {csd_count}   # emulated CSD processes (any count up to max_count; they share the disk below)",
        f"ssd_count: {ssd_count}   # FlexGen drive files",
        "gpu:",
        f"  name: {cal.device if gpu else 'host CPU as the dense device'}",
        f"  memory_gb: {_r(_ram_gb() if not gpu else v.get('gpu_memory_gb', 80.0))}   # "
        + ("host RAM (sysconf)" if not gpu else "torch.cuda.get_device_properties total memory"),
        f"  fp16_tflops: {_r(peak16)}   # {how16} ({src})",
        f"  fp32_tflops: {_r(peak32)}   # {how32} ({src})",
        f"  mem_gbps: {_r(mem)}   # {cal.how['stream_gbps']} ({src})",
        f"  head_mem_gbps: {_r(v['head_gbps'])}   # {cal.how['head_gbps']} ({src})",
        "  gemm_efficiency: 1.0   # the rates above are achieved rates, not datasheet peaks",
        f"  attention_efficiency: {_r(att_eff, 3)}   # {_r(v['dense_attention_gbps'])} GB/s of decode attention / mem_gbps: "
        f"{cal.how['dense_attention_gbps']} ({src})",
        f"  attention_score_ns: {_r(v['attention_score_ns'], 3)}   # {cal.how['attention_score_ns']} ({src})",
        *_series(cal, "attention_score_mib", "  attention_score_mib",
                 "MiB of fp32 scores: one head's (P*P*4) when attention_score_head_dim > 0 (a fused kernel), else "
                 "the op's (heads*P*P*4)", "_ns", src),
        f"  attention_score_head_dim: {int(v['attention_score_head_dim'])}   # {cal.how['attention_score_head_dim']}",
        f"  launch_us: {_r(v['dense_op_us'] + disp)}   # {_r(v['dense_op_us'])} us: {cal.how['dense_op_us']}{plus} ({src})",
        *_copy_engines(cal, src),
        *_measured(cal, "dense_attention", "  decode_attention", v["dense_op_us"], "launch_us", src),
        *_measured(cal, "dense_attention_gqa", "  decode_attention_gqa", v["dense_op_us"], "launch_us", src)[1:],
        *_op_curves(cal, src),
        "  power_w: 0",
        "  price_usd: 0",
        "  link:",
    ]
    if gpu:
        lines += [
            f"    up_gbps: {_r(v['copy_d2h_pinned_gbps'])}    # GPU->host pinned (the engine's D2H relays are pinned); "
            f"pageable: {_r(v['copy_d2h_pageable_gbps'])} ({src})",
            f"    down_gbps: {_r(v['copy_h2d_pinned_gbps'])}  # host->GPU pinned (weights, X-cache stores are pinned); "
            f"pageable: {_r(v['copy_h2d_pageable_gbps'])} ({src})",
            f"    latency_us: {_r(v['copy_latency_us'] + disp)}   # {_r(v['copy_latency_us'])} us: {cal.how['copy_latency_us']}{plus} ({src})",
        ]
        if "copy_duplex_gbps" in v:  # both directions share it when their sum is below up + down
            d = v["copy_duplex_gbps"]
            share = d < v["copy_d2h_pinned_gbps"] + v["copy_h2d_pinned_gbps"]
            lines.append(f"    duplex_gbps: {_r(d) if share else 0}   # {cal.how['copy_duplex_gbps']} ({src})"
                         + ("" if share else f": {_r(d)}, not below up + down, so the directions are independent"))
    else:
        lines += [
            f"    up_gbps: {_r(memcpy)}    # memcpy_gbps: with no GPU the dense device is the host itself, but what "
            "leaves it for a host store (the prompt's K,V, X) is copied into that store",
            f"    down_gbps: {NO_COPY_GBPS:g}   # no copy: the dense device reads host stores and weights in place",
            f"    latency_us: {_r(v['host_op_us'] + disp)}   # {_r(v['host_op_us'])} us: {cal.how['host_op_us']}{plus} ({src})",
        ]
    lines += [
        "cpu:",
        f"  name: {cal.machine.split(' ', 1)[-1]!r}",
        f"  cores: {os.cpu_count()}   # os.cpu_count()",
        f"  attention_gbps: {_r(v['cpu_attention_gbps'])}   # {cal.how['cpu_attention_gbps']} ({src})",
        f"  gemm_gflops: {_r(v['cpu_gemm_gflops'])}   # {cal.how['cpu_gemm_gflops']} ({src})",
        f"  op_overhead_us: {_r(v['cpu_attention_fixed_us'] + disp)}   # fixed part of the same fit "
        f"({_r(v['cpu_attention_fixed_us'])} us){plus} ({src})",
        "  power_w: 0",
        f"  threads: {o.threads}   # torch intra-op threads the engine must use for these rates to hold",
        *_measured(cal, "cpu_attention", "  attention", v["cpu_attention_fixed_us"], "op_overhead_us", src),
        *_measured(cal, "cpu_attention_gqa", "  attention_gqa", v["cpu_attention_fixed_us"], "op_overhead_us", src)[1:],
        *_measured(cal, "cpu_tokens_attention", "  tokens_attention", v["cpu_attention_fixed_us"], "op_overhead_us",
                   src),
        *_measured(cal, "cpu_tokens_attention_gqa", "  tokens_attention_gqa", v["cpu_attention_fixed_us"],
                   "op_overhead_us", src)[1:],
        *_series(cal, "cpu_attention_beside_dma", "  beside_dma_kib", "KiB of K+V of one attention call", "_ratio",
                 src),
        *_op_curves(cal, src, cpu=True),
        "host:",
        f"  memory_gb: {_r(_ram_gb())}   # host RAM (sysconf)",
        f"  memory_budget_gb: {_r(_ram_gb() / 2)}   # half of RAM, as the papers' default budget",
        f"  ipc_us: {_r((csd.attend_fixed_us if csd else 0.0) + disp)}   # fixed part of the emulated CSD's attend "
        f"time ({_r(csd.attend_fixed_us) if csd else 0} us, fit below){plus} ({src})",
        *([f"  probe_ms: {_r(v['probe_ms'])}   # {cal.how['probe_ms']} ({src})"] if "probe_ms" in v else []),
        "  price_usd: 0",
        "  power_w: 0",
        *([f"  shared_cores: {os.cpu_count()}   # os.cpu_count(): the dense device (this CPU), the CPU-attention "
           "thread and the emulated CSDs' workers all compute on these cores",
           "  core_devices: [gpu, cpu, fpga]",
           "  core_moves: [ssd]   # FlexGen's drive reads / writes are page-cache copies on the engine's I/O threads"]
          if not gpu else []),
        "  dram:   # every host-side flow crosses this link; no flow here is limited by DRAM itself (DMA from pinned",
        "         # memory, or the CPU copies charged on the links that make them), so it does not limit",
        f"    up_gbps: {NO_COPY_GBPS:g}   # (CPU memcpy measured {_r(memcpy)} GB/s: {cal.how['memcpy_gbps']}, {src})",
        f"    down_gbps: {NO_COPY_GBPS:g}",
        "    latency_us: 0",
        "ssd:   # FlexGen drives: files under csd.dirs, buffered I/O (inf2hw.stores.DiskStore), warm page cache",
        "  link:",
        f"    up_gbps: {_r(memcpy)}   # host memory (memcpy_gbps)",
        f"    down_gbps: {_r(memcpy)}",
        f"    latency_us: {_r(disp)}   # engine dispatch per op ({cal.how.get('engine_op_us', '-')}, {src})",
    ]
    lines += _curves(disk_ssd, "  ", f"page cache, DiskStore-style pread + copy / pwrite ({src})")
    lines += [
        f"  io_threads: {IO_THREADS}   # the engine serves this many drive reads / writes at once, in order "
        "(inf2hw.ops.IO_THREADS)",
        "  capacity_gb: 0",
        "ssd_uplink:   # no PCIe switch: the drive files sit in host memory / one disk",
        f"  up_gbps: {_r(memcpy)}",
        f"  down_gbps: {_r(memcpy)}",
        "  latency_us: 0",
        "chassis:   # no chassis: emulated CSDs are processes; their commands go through shared memory",
        "  ports: 8",
        "  csds_per_port: 2",
        "  uplink:",
        f"    up_gbps: {_r(memcpy)}   # memcpy_gbps",
        f"    down_gbps: {_r(memcpy)}",
        "    latency_us: 0",
        "  port:",
        f"    up_gbps: {_r(memcpy)}",
        f"    down_gbps: {_r(memcpy)}",
        "    latency_us: 0",
        "csd:   # emulated CSD (inf2hw.csd.emulated): a worker process owning KV files on the calibration disk",
        "  max_count: 16",
        "  io_threads: 1   # the emulated CSD's worker serves its loads, stores and spills on one I/O thread, in order "
        "(inf2hw.csd.worker)",
        "  host_link:   # the arena copy + pipe hand-off of one command",
        f"    up_gbps: {_r(memcpy)}   # memcpy_gbps",
        f"    down_gbps: {_r(memcpy)}",
    ]
    if csd:
        lines.append(f"    latency_us: {_r((csd.down_us + csd.up_us) / 2)}   # mean of the median worker-side send_query "
                     f"({csd.down_us:.0f} us) and fetch ({csd.up_us:.0f} us) spans; engine-side round trip of a "
                     f"small command {csd.roundtrip_us:.0f} us ({src})")
    else:
        lines.append("    latency_us: 0")
    lines += [
        "  internal_link:   # 'SSD -> FPGA' is the worker reading its own files into its staging buffer",
        f"    up_gbps: {_r(memcpy)}",
        f"    down_gbps: {_r(memcpy)}",
        f"    latency_us: {_r(disp)}   # engine dispatch per op (every CSD transfer crosses this link once; {src})",
        "  ssd:",
        "    link:",
        f"      up_gbps: {_r(memcpy)}",
        f"      down_gbps: {_r(memcpy)}",
        "      latency_us: 0",
    ]
    tag = f"{'O_DIRECT' if disk_csd.mode == 'direct' else 'page cache'} preadv/pwrite, as inf2hw.csd.kvfile ({src})"
    lines += _curves(disk_csd, "    ", tag)
    if disk_csd.mode == "direct" and "disk_probe_read_gbps" in v:
        lines += [f"    probe_{k}: {_r(v['disk_probe_' + k])}   # {cal.how['disk_probe_' + k]} ({src})"
                  for k in ("read_gbps", "write_gbps")]
    lines += [
        "    capacity_gb: 0",
        "  fpga:   # the worker's attention thread",
        "    clock_mhz: 0     # no cycle model: rate_gbps below is measured",
        "    macs: 0",
        "    block_tokens: 128",
        "    pipeline_depth: 0",
        "    dram_gb: 0",
        "    power_w: 0",
    ]
    if csd:
        other = {k: c for k, c in cal.csd.items() if k != csd.compute}
        alt = "; ".join(f"csd.compute={k}: {_r(c.rate_gbps)} GB/s + {_r(c.attend_fixed_us)} us ({c.dtype})"
                        for k, c in other.items())
        lines.append(f"    rate_gbps: {_r(csd.rate_gbps)}   # csd.compute={csd.compute}, {csd.dtype}: fit attend = "
                     f"{_r(csd.attend_fixed_us)} us + accel.kv_bytes / rate over ctx {csd.ctx} (rows {csd.rows}, "
                     f"d {csd.head_dim}), worker-side stamps ({src})" + (f". Other: {alt}" if alt else ""))
        if csd.attend_s:
            kib = [kv_bytes(csd.rows, n, csd.head_dim, csd.group, 1, 1) / 1024 for n in csd.ctx]
            lines += _curve_lines("  attend", kib, csd.attend_s, csd.attend_fixed_us, "host.ipc_us",
                                  f"median worker-side attend of the fit above ({src})")
            gqa = cal.csd_gqa.get(csd.compute)
            if gqa is not None and gqa.ctx == csd.ctx:
                lines += _curve_lines("  attend_gqa", kib, gqa.attend_s, csd.attend_fixed_us, "host.ipc_us",
                                      f"the same with {gqa.group} query heads per K,V row ({src})")[1:]
            if cal.csd_together is not None and csd.compute == "torch":
                alone, together = cal.csd_together
                lines += [f"  attend_together: {_fmt_list([t / a for a, t in zip(alone, together)])}   # median "
                          f"attend of {cal.opts.procs} emulated CSDs attending at once / one alone, same sizes "
                          f"(inf2hw.calibrate_csd.measure_together; {', '.join(f'{_r(t * 1e3)}' for t in together)} "
                          f"against {', '.join(f'{_r(a * 1e3)}' for a in alone)} ms; {src})",
                          f"  together_count: {cal.opts.procs}"]
    else:
        lines.append(f"    rate_gbps: {CYCLE_MODEL:g}   # no emulated CSD was measured: the DES uses the kernel's cycle model")
    for s in cal.skipped:
        lines.append(f"# not measured: {s}")
    return "\n".join(lines) + "\n"


def write_profile(cal: Calibration, conf_dir: Path, **kw) -> Path:
    path = Path(conf_dir) / "hardware" / f"{cal.opts.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile_yaml(cal, **kw))
    return path
