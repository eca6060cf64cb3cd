"""Validation sweep: every (model, context length, policy) on the engine and the DES.

Run by hand (it is the acceptance table of docs/calibration.md):

    python experiments/validation/run.py --hardware local            # this CPU, emulated CSDs
    python experiments/validation/run.py --hardware h100 --device cuda --dtype fp16 --models opt-13b-4l,qwen2.5-32b-4l

For each configuration it calls `inf2hw.validate.validate_spec` (engine, then DES, both on
the named calibrated profile) and writes, under --out (default
experiments/validation/results/<hardware>/): table.md (the acceptance table, with the
command, the machine and the date), results.json (every number, per-op-kind errors
included) and, per configuration, its validation.json / timeline.png under --work
(default outputs/validation/<hardware>/, not committed; --png copies one timeline into
--out). Models (--models, conf/model names): opt-125m (MHA) and llama-110m (GQA, llama-tiny
widened); opt-13b-4l (MHA) and qwen2.5-32b-4l (GQA) on the H100. Units: tokens/s; errors in percent.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ["flexgen_ssd", "flexgen_dram", "ans", "ans_wb", "ans_xcache", "inf2"]


def build_spec(model: str, prompt: int, policy: str, hardware: str, batch: int, gen: int, extra: dict):
    from inf2sim.config import default_config, specs_from_config

    from omegaconf import OmegaConf

    hw = OmegaConf.load(hardware) if hardware.endswith(".yaml") else hardware  # a name in conf/hardware, or a file
    o = {"model": model, "policy": policy, "hardware": hw, "workload.batch": batch,  # model: a conf/model name
         "workload.prompt_len": prompt, "workload.gen_len": gen, **extra}
    return specs_from_config(default_config(**o))


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cache_weights() -> None:
    """Reuse seeded random weights across the runs of a sweep (every engine run would draw
    the same tensors again: seconds per run for a 13B-shaped layer). The engine still
    copies them to the device per run as it always does."""
    import inf2hw.run as R

    make, cache = R._weights, {}

    def weights(spec, dtype, device, *rest):
        if spec.model.checkpoint:
            return make(spec, dtype, device, *rest)
        key = (spec.model, spec.workload.seed, dtype, device, spec.policy.weights, *rest)
        if key not in cache:
            cache.clear()  # one model's weights at a time
            cache[key] = make(spec, dtype, device, *rest)
        return cache[key]

    R._weights = weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default="local", help="a conf/hardware name, or a profile .yaml file")
    ap.add_argument("--models", default="opt-125m,llama-110m")
    ap.add_argument("--prompts", default="128,512")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--csd-dir", default="", help="directory for CSD / drive files (default: under --work)")
    ap.add_argument("--direct-io", default="auto", help="csd.direct_io of the engine: auto | on | off")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the profile's cpu.threads)")
    ap.add_argument("--floor-ms", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=1, help="engine runs per config per pass; the median run is compared")
    ap.add_argument("--passes", type=int, default=1,
                    help="passes over every config (one engine run each; the median of all is compared): "
                         "spreads the runs of one config over time on a machine shared with other work")
    ap.add_argument("--set", action="append", default=[], help="extra key=value override for every config")
    ap.add_argument("--out", default="")
    ap.add_argument("--work", default="")
    ap.add_argument("--png", default="", help="config label substring whose timeline.png is copied into --out")
    ap.add_argument("--resim", action="store_true",
                    help="do not run the engine: re-simulate and compare against the runs already under --work")
    ap.add_argument("--tar", default="", help="also pack every config's emu/ (metrics, trace, speed probes) into this .tgz")
    ap.add_argument("--kept-run-ops", action="store_true",
                    help="per-op errors from the kept (median) run's ops alone, not each op's median over all the runs "
                         "(the tables before session 9)")
    ap.add_argument("--disk-probe", action="store_true",
                    help="simulate the emulated CSDs' flash at the disk probe's speed around each run (recorded always)")
    ap.add_argument("--no-probe", action="store_true",
                    help="simulate at the profile's host and disk speeds, not at those the probes around each run measured")
    a = ap.parse_args()

    from inf2hw.loop import pin_threads

    probe = build_spec(a.models.split(",")[0] if hasattr(a, "models") else a.model, 128, "ans", a.hardware, 4, 4, {})
    pin_threads(a.threads or probe.hardware.cpu.threads or os.cpu_count() or 1)  # before torch loads
    import torch

    from inf2hw.run import EngineOptions
    from inf2hw.validate import compare_run, kinds_table, results_table, validate_spec

    cache_weights()

    hw_name = Path(a.hardware).stem
    out = Path(a.out or ROOT / "experiments" / "validation" / "results" / hw_name)
    work = Path(a.work or ROOT / "outputs" / "validation" / hw_name)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    extra = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        extra[k] = json.loads(v) if v[:1] in "0123456789-[{tf" and v not in ("true", "false") else (
            v == "true" if v in ("true", "false") else v)
    from inf2hw.validate import engine_spec, measure_once, pick_median

    results, failures, t0 = [], [], time.time()
    def write_tables() -> int:
        """table.md + results.json of the configs done so far (rewritten after each: a cut run keeps them)."""
        cmd = "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(ROOT))] + sys.argv[1:])
        ok = sum(r.ok() for r in results)
        head = [f"# Validation on `{hw_name}`: engine (backend=emu) vs DES (backend=sim)", "",
                f"Command: `{cmd}`  ", f"Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}  ",
                f"Machine: {platform.node()} {platform.machine()}, device={a.device}, dtype={a.dtype}, "
                f"csd.direct_io={a.direct_io}, "
                + ("engine runs re-simulated from --work (the median run each config's sweep kept), " if a.resim else
                   f"engine runs per config {a.repeat} x {a.passes} pass(es) (median run compared), ")
                + f"batch {a.batch}, gen {a.gen}, torch threads {torch.get_num_threads()}  ",
                f"Error = simulated / measured - 1 (total tokens/s). Per-op-kind MAPE over ops matched by name with a "
                f"measured duration >= {a.floor_ms:g} ms"
                + (" (the kept run's ops)" if a.kept_run_ops else
                   ", each op's measured duration the median over all the config's runs (the kept one's when one)")
                + ". Within bounds: |error| <= 10 % and every kind's MAPE <= 20 %.  ",
                ("The DES runs at the profile's host and disk speeds (--no-probe).  " if a.no_probe else
                 "The DES runs the host's compute ops at the speed the probes around each compared run measured "
                 "(column: probe / the profile's host.probe_ms; 1.000 where either is missing)"
                 + (", and the emulated CSDs' flash at the disk probe's around it (--disk-probe).  " if a.disk_probe
                    else ".  ")),
                "Last column: the disk probe around the run / the profile's csd.ssd.probe_*_gbps (1.00 where either "
                "is missing)" + (", applied" if a.disk_probe and not a.no_probe else ", recorded, not applied") + ".  ",
                f"{ok} of {len(results)} configurations within bounds"
                + (f" ({len(failures)} more did not run, listed below)." if failures else "."), ""]
        body = [results_table(results), ""]
        if failures:
            body += ["Configurations that did not run:", ""] + [f"- {lab}: `{msg}`" for lab, msg in failures] + [""]
        body += ["## Per-op-kind errors", ""]
        for r in results:
            body += [f"### {r.config}", "", kinds_table(r), ""]
        (out / "table.md").write_text("\n".join(head + body))
        (out / "results.json").write_text(json.dumps({"command": cmd, "results": [r.to_dict() for r in results],
                                                      "failures": failures}, indent=2))
        return ok

    configs = [(m, int(p), pol) for m in a.models.split(",") for p in a.prompts.split(",")
               for pol in a.policies.split(",")]
    for k in range(1, a.passes if not a.resim else 1):  # extra passes first; the last pass compares
        for model, prompt, policy in configs:
            spec = build_spec(model, prompt, policy, a.hardware, a.batch, a.gen, extra)
            torch.set_num_threads(a.threads or spec.hardware.cpu.threads or torch.get_num_threads())
            label = f"{model} p{prompt} {policy}"
            d = work / label.replace(" ", "_")
            csd_dir = Path(a.csd_dir) / label.replace(" ", "_") if a.csd_dir else d / "kv"
            opts = EngineOptions(device=a.device, dtype=a.dtype, csd_dirs=(str(csd_dir),), direct_io=a.direct_io)
            try:
                if k == 1:
                    shutil.rmtree(d / "emu_runs", ignore_errors=True)
                tok = measure_once(engine_spec(spec, a.dtype), opts, d)
                print(f"[{time.time() - t0:6.0f} s] pass {k}: {label}: {tok:.3f} tok/s", flush=True)
            except Exception as e:  # the comparing pass reports it
                print(f"[{time.time() - t0:6.0f} s] pass {k}: {label}: failed {type(e).__name__}: {e}", flush=True)
    for model in a.models.split(","):
        for prompt in [int(p) for p in a.prompts.split(",")]:
            for policy in a.policies.split(","):
                spec = build_spec(model, prompt, policy, a.hardware, a.batch, a.gen, extra)
                threads = a.threads or spec.hardware.cpu.threads or torch.get_num_threads()
                torch.set_num_threads(threads)
                label = f"{model} p{prompt} {policy}"
                d = work / label.replace(" ", "_")
                csd_dir = Path(a.csd_dir) / label.replace(" ", "_") if a.csd_dir else d / "kv"
                opts = EngineOptions(device=a.device, dtype=a.dtype, csd_dirs=(str(csd_dir),), direct_io=a.direct_io)
                t1 = time.time()
                try:
                    if a.resim:
                        if not (d / "emu").exists() and (d / "emu_runs").exists():  # a packed sweep: runs only
                            pick_median(d)
                        r = compare_run(spec, d, a.dtype, a.floor_ms, label, probe=not a.no_probe,
                                        per_op_median=not a.kept_run_ops, disk_probe=a.disk_probe)
                    elif a.passes > 1:  # runs of the earlier passes are kept in d/emu_runs; one more, then compare
                        load0 = _load()
                        for _ in range(a.repeat):
                            measure_once(engine_spec(spec, a.dtype), opts, d)
                        r = compare_run(spec, d, a.dtype, a.floor_ms, label, True, None, a.passes - 1 + a.repeat,
                                        (load0, _load()), probe=not a.no_probe, per_op_median=not a.kept_run_ops,
                                        disk_probe=a.disk_probe)
                    else:
                        r = validate_spec(spec, opts, str(d), floor_ms=a.floor_ms, label=label, repeat=a.repeat,
                                          probe=not a.no_probe, disk_probe=a.disk_probe)
                except Exception as e:  # report what failed and go on: the table says which configs ran
                    msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                    failures.append((label, msg))
                    print(f"[{time.time() - t0:6.0f} s] {label}: FAILED {msg}", flush=True)
                    continue
                results.append(r)
                write_tables()
                print(f"[{time.time() - t0:6.0f} s] {label}: measured {r.measured_tok_s:.3f} simulated "
                      f"{r.simulated_tok_s:.3f} tok/s error {100 * r.error:+.1f} % worst kind "
                      f"{r.worst_kind()} {100 * (r.worst_mape or 0):.1f} % ({time.time() - t1:.0f} s, load "
                      f"{r.load_avg[0]:.1f}/{r.load_avg[1]:.1f})", flush=True)
                if a.png and a.png in label:
                    shutil.copy(r.png, out / f"timeline_{label.replace(' ', '_')}.png")
    ok = write_tables()
    if a.tar:
        import tarfile

        with tarfile.open(a.tar, "w:gz") as tf:
            for r in results:
                for f in ("metrics.json", "trace.json", "probe.json"):  # probe.json: --resim keeps the probe scale
                    p = Path(r.out_dir) / "emu" / f
                    if p.exists():
                        tf.add(p, arcname=f"{Path(r.out_dir).name}/emu/{f}")
    print(results_table(results))
    print(f"{ok}/{len(results)} within bounds; wrote {out / 'table.md'}")


if __name__ == "__main__":
    main()
