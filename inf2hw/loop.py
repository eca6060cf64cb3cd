"""The calibrate -> validate loop behind `inf2 calibrate` and `inf2 validate`.

Called by `inf2sim.cli.run_config` for mode=calibrate and mode=validate (the CLI
imports this module lazily, so the simulator never needs torch).

    inf2 calibrate calibrate.name=mybox calibrate.dir=/mnt/nvme0/inf2   # -> conf/hardware/mybox.yaml
    inf2 validate hardware=mybox model=opt-125m policy=ans workload=tiny # engine vs DES, same config

calibrate_cli: runs `inf2hw.calibrate.measure` (tqdm bar) and writes the profile with
`inf2hw.calibrate_profile.write_profile` into conf/hardware/ (`calibrate.conf_dir` to
write elsewhere) plus a copy and calibration.json into the run dir.
validate_cli: `inf2hw.validate.validate_spec` on the composed config; prints the
end-to-end and per-op-kind table, writes validation.json, timeline.png, the engine's
and the simulator's outputs (emu/, sim/) into the run dir.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path


def pin_threads(threads: int) -> None:
    """Give every thread of this process, and of the CSD worker processes it starts, a torch
    / OpenMP team of `threads`. torch.set_num_threads only sets the calling thread's team:
    the engine's CPU-attention and I/O threads and a CSD worker's compute thread would
    each fork an OpenMP team of all cores, and on a machine with other load every op then
    waits tens of ms at the team's barrier. OMP_NUM_THREADS must be set before torch loads."""
    import os
    import sys
    import warnings

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        warnings.warn("torch was imported before pin_threads: OMP_NUM_THREADS only reaches new processes",
                      RuntimeWarning, stacklevel=2)
    import torch

    torch.set_num_threads(threads)


def _section(cfg, name: str) -> dict:
    from omegaconf import OmegaConf

    sec = cfg.get(name) if hasattr(cfg, "get") else None
    return OmegaConf.to_container(sec, resolve=True) if sec is not None else {}


def calibrate_options(cfg):
    from inf2sim.config import load_group
    from inf2sim.specs import SpecError

    from .calibrate import CalibrateOptions

    c = _section(cfg, "calibrate")
    known = {"name", "dir", "quick", "device", "threads", "procs", "csd_compute", "csd_io", "conf_dir", "csd_count",
             "ssd_count", "models"}
    bad = sorted(set(c) - known)
    if bad:
        raise SpecError(f"calibrate.{bad[0]} is not known; choose from {', '.join(sorted(known))}")
    name = str(c.get("name", "local"))
    if not name or "/" in name or name.startswith("."):
        raise SpecError(f"calibrate.name={name!r} is not allowed; use a plain file name (e.g. mybox)")
    dtype = str(cfg.get("dtype", "fp32"))
    if dtype not in ("fp32", "fp16", "bf16"):
        raise SpecError(f"dtype={dtype!r} is not allowed; choose one of fp32, fp16, bf16")
    dev = str(c.get("device", "auto"))
    if dev not in ("auto", "cpu", "cuda"):
        raise SpecError(f"calibrate.device={dev!r} is not allowed; choose one of auto, cpu, cuda")
    comp = str(c.get("csd_compute", "torch"))
    if comp not in ("torch", "hls"):
        raise SpecError(f"calibrate.csd_compute={comp!r} is not allowed; choose one of torch, hls")
    csd_io = str(c.get("csd_io", "direct"))
    if csd_io not in ("direct", "buffered"):
        raise SpecError(f"calibrate.csd_io={csd_io!r} is not allowed; choose one of direct, buffered")
    models = c.get("models") or []
    models = [m for m in models.split(",") if m] if isinstance(models, str) else [str(m) for m in models]
    for m in models:  # one line naming the known models if one is not
        try:
            load_group("model", m)
        except SpecError as e:
            raise SpecError(f"calibrate.models: {e}") from None
    return CalibrateOptions(name=name, directory=str(c.get("dir", "") or ""), quick=bool(c.get("quick", False)),
                            device=dev, dtype=dtype, threads=int(c.get("threads", 1)), procs=int(c.get("procs", 2)),
                            csd_compute=comp, csd_io=csd_io, ssd_count=max(1, int(c.get("ssd_count", 2))),
                            models=tuple(models))


def calibrate_cli(cfg, out_dir: Path):
    """`inf2 calibrate`: measure, write conf/hardware/<name>.yaml, print where."""
    from inf2sim.config import CONF_DIR, load_group, specs_from_config

    from .calibrate import measure
    from .calibrate_profile import write_profile

    opts = calibrate_options(cfg)
    pin_threads(max(1, opts.threads))
    c = _section(cfg, "calibrate")
    conf_dir = Path(c.get("conf_dir") or CONF_DIR)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"calibrating this machine -> {conf_dir / 'hardware' / (opts.name + '.yaml')} "
          f"({'quick' if opts.quick else 'full'} mode, disk dir {opts.directory or '(temporary, in the run dir)'})")
    cal = measure(opts, run_dir=str(out), progress=True)
    path = write_profile(cal, conf_dir, csd_count=int(c.get("csd_count", 2)), ssd_count=int(c.get("ssd_count", 2)))
    shutil.copy(path, out / path.name)
    (out / "calibration.json").write_text(json.dumps(
        {"options": asdict(opts), "when": cal.when, "machine": cal.machine, "device": cal.device,
         "seconds": cal.seconds, "values": cal.values, "how": cal.how, "skipped": cal.skipped,
         "disk": {k: asdict(v) for k, v in cal.disk.items()}, "csd": {k: asdict(v) for k, v in cal.csd.items()},
         "csd_gqa": {k: asdict(v) for k, v in cal.csd_gqa.items()},
         "curves": cal.curves, "op_curves": cal.op_curves},
        indent=2))
    if conf_dir.resolve() == Path(CONF_DIR).resolve():  # check it loads as a profile (fails loudly if not)
        specs_from_config({"model": "opt-125m", "workload": "tiny", "hardware": load_group("hardware", opts.name),
                           "policy": "ans", "sim": {}})
    v = cal.values
    print(f"dense device {cal.device}: {v['gemm_fp32_tflops'] * 1e3:.1f} GFLOP/s fp32, weight streaming "
          f"{v['stream_gbps']:.2f} GB/s, {v['dense_op_us']:.0f} us per dense op")
    for k, cc in cal.csd.items():
        print(f"emulated CSD ({k}, {cc.dtype}): attention {cc.rate_gbps:.2f} GB/s + {cc.attend_fixed_us:.0f} us per call")
    for mode, d in cal.disk.items():
        i = min(range(len(d.req_bytes)), key=lambda j: abs(d.req_bytes[j] - (1 << 20)))
        print(f"disk {mode} @ {d.req_bytes[i] >> 10} KiB: read {d.read_gbps[i]:.2f} GB/s ({d.procs} procs: "
              f"{d.read_agg_gbps[i]:.2f}), write {d.write_gbps[i]:.2f} GB/s")
    for s in cal.skipped:
        print(f"not measured: {s}")
    print(f"wrote {path} in {cal.seconds:.0f} s; use it with hardware={opts.name}")
    print(f"outputs: {out}")
    return path


def validate_cli(cfg, out_dir: Path):
    """`inf2 validate`: the composed config on backend=emu and backend=sim, compared."""
    import os

    from inf2sim.simulate import resolve

    v = _section(cfg, "validate")
    spec = resolve(cfg)
    threads = int(v.get("threads", 0) or spec.hardware.cpu.threads or os.cpu_count() or 1)
    pin_threads(threads)

    from .run import options_from_cfg
    from .validate import kinds_table, results_table, validate_spec

    opts = replace(options_from_cfg(cfg), progress=True)
    if spec.hardware.cpu.threads and threads != spec.hardware.cpu.threads:
        print(f"warning: profile {spec.hardware.name} was calibrated with {spec.hardware.cpu.threads} torch "
              f"thread(s); running with {threads}")
    print(f"validating {spec.model.name} policy={spec.policy.name} on hardware={spec.hardware.name} "
          f"(engine device={opts.device} dtype={opts.dtype}, {threads} torch thread(s)) against the DES")
    r = validate_spec(spec, opts, str(out_dir), floor_ms=float(v.get("floor_ms", 1.0)),
                      warmup=bool(v.get("warmup", True)), repeat=int(v.get("repeat", 1)),
                      probe=bool(v.get("probe", True)), disk_probe=bool(v.get("disk_probe", False)))
    print(results_table([r]))
    print()
    print(kinds_table(r))
    print(f"timeline: {r.png}")
    print(f"outputs: {out_dir}")
    return r
