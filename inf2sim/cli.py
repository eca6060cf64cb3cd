"""The `inf2` console entry point: one Hydra app, a thin layer over the Python API.

    inf2                                   default run (sim), prints a summary table
    inf2 model=opt-175b policy=ans hardware.csd_count=16
    inf2 -m policy=flexgen_ssd,ans hardware.csd_count=1,2,4 hydra/launcher=joblib
    inf2 tune | inf2 mode=tune             policy search (inf2sim.tune)
    inf2 backend=emu model=opt-125m ...    the real engine (inf2hw)
    inf2 calibrate | inf2 validate         measure this machine / compare sim vs real

Every run writes into its Hydra output dir: the resolved config (.hydra/),
metrics.json and trace.json. Bad input ends with one line `inf2: error: ...`
naming the field, exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List

from .config import CONF_DIR, SpecError
from .driver import RunFailure

MODES = ("run", "tune", "calibrate", "validate")
GROUPS = ("model", "workload", "hardware", "policy", "backend")


def _precheck(argv: List[str]) -> List[str]:
    """Turn `inf2 tune` into `mode=tune`; reject unknown group options in one line
    before Hydra prints its multi-line composition error."""
    out = []
    for a in argv:
        if a in MODES:
            out.append(f"mode={a}")
            continue
        key, eq, val = a.partition("=")
        key = key.lstrip("+~")
        if eq and key in GROUPS:
            names = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml") if not p.stem.startswith("_"))
            for v in val.split(","):
                if v and v not in names:
                    raise SpecError(f"{key}={v!r} is not known; choose one of {', '.join(names)}")
        if eq and key == "mode":
            for v in val.split(","):
                if v not in MODES:
                    raise SpecError(f"mode={v!r} is not allowed; choose one of {', '.join(MODES)}")
        out.append(a)
    return out


def _table(rows: List[dict]) -> str:
    cols = ["policy", "status", "prefill_tok_s", "decode_tok_s", "total_tok_s", "bound_tok_s", "bottleneck"]
    cells = [[str(r.get(c, "")) if not isinstance(r.get(c), float) else f"{r[c]:.2f}" for c in cols] for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(xs, width)))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in width])] + [line(x) for x in cells])


def summary_row(m) -> dict:
    r = {"policy": m.policy, "status": m.status, "bound_tok_s": m.bound_tok_s, "bottleneck": m.bottleneck}
    r.update(m.throughput)
    if m.status != "ok":
        r["bottleneck"] = m.oom
    return r


def run_config(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    mode = cfg.get("mode", "run")
    if mode == "tune":
        from .tune import tune_cli

        return tune_cli(cfg, out_dir)
    if mode in ("calibrate", "validate"):
        try:
            from inf2hw import loop
        except ImportError:
            raise SpecError(f"mode={mode} is not built yet (issue 6: calibrate / validate)") from None

        return getattr(loop, f"{mode}_cli")(cfg, out_dir)
    backend = cfg.backend.name
    if backend == "emu":
        from inf2hw.run import run_cli

        return run_cli(cfg, out_dir)
    if backend != "sim":
        raise SpecError(f"backend={backend!r} is not allowed; choose one of sim, emu")
    from .simulate import resolve, simulate_spec

    main_m = simulate_spec(resolve(cfg), out_dir=str(out_dir), progress=not multirun)
    rows = [summary_row(main_m)]
    if not multirun:
        for other in cfg.get("compare", []) or []:
            if other == cfg.policy.name:
                continue
            c2 = OmegaConf.to_container(cfg, resolve=True)
            from .config import load_group

            c2["policy"] = OmegaConf.to_container(load_group("policy", other))
            rows.insert(0, summary_row(simulate_spec(resolve(OmegaConf.create(c2)), out_dir=str(out_dir / f"compare_{other}"))))
    m = cfg.model.name
    w = cfg.workload
    print(f"{m}  batch={w.batch} prompt={w.prompt_len} gen={w.gen_len}  hardware={cfg.hardware.name} "
          f"csds={cfg.hardware.csd_count} ssds={cfg.hardware.ssd_count}  fidelity={cfg.sim.fidelity}")
    print(_table(rows))
    if len(rows) > 1 and rows[0]["status"] == "ok" and rows[-1]["status"] == "ok" and rows[0].get("total_tok_s"):
        print(f"speedup {rows[-1]['policy']} / {rows[0]['policy']}: {rows[-1]['total_tok_s'] / rows[0]['total_tok_s']:.2f}x")
    print(f"outputs: {out_dir}")


def main() -> None:
    import hydra

    try:
        sys.argv = [sys.argv[0]] + _precheck(sys.argv[1:])
    except SpecError as e:
        print(f"inf2: error: {e}", file=sys.stderr)
        sys.exit(2)

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _app(cfg) -> None:
        try:
            run_config(cfg)
        except SpecError as e:
            print(f"inf2: error: {e}", file=sys.stderr)
            sys.exit(2)
        except RunFailure as e:
            print(f"inf2: error: {e}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("inf2: interrupted; devices closed and temporary files removed", file=sys.stderr)
            sys.exit(130)

    _app()


if __name__ == "__main__":
    main()
