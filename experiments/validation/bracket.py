"""Validation bracketed by two calibrations (the protocol for a machine whose speed drifts).

Run by hand:

    python experiments/validation/bracket.py --name local --passes 3            # this CPU
    python experiments/validation/bracket.py --name local --passes 3 --models opt-125m

Steps, each an existing command run as a subprocess (its output goes to --out/log.txt):
1. `inf2 calibrate calibrate.name=<name>_before calibrate.models=[<models>]` (conf/hardware/<name>_before.yaml, with the run models' op curves);
2. `run.py --hardware <name>_before --passes N` (the engine sweep; table_before.md);
3. `inf2 calibrate calibrate.name=<name>` (conf/hardware/<name>.yaml, right after);
4. `run.py --hardware <name> --resim` (the same engine runs; table_after.md);
5. `midpoint_profile.py` -> <out>/<name>_mid.yaml, the mean of the two profiles, and
   `run.py --hardware <out>/<name>_mid.yaml --resim` (table.md).
All three tables are kept: the midpoint is the linear-drift estimate of the machine during
the sweep, not a fit to it. Arguments after `--` go to run.py (prompts, policies, ...).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _run(cmd, log) -> None:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    r = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"bracket: step failed (exit {r.returncode}): {' '.join(cmd)}; see {log.name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="local", help="profile name: <name>_before and <name> are calibrated")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--out", default="", help="default experiments/validation/results/<name>/")
    ap.add_argument("--work", default="", help="engine runs (default outputs/validation/<name>/)")
    ap.add_argument("--models", default="opt-125m,llama-110m",
                    help="the models run (run.py --models) and calibrated (calibrate.models: their ops' curves)")
    ap.add_argument("rest", nargs="*", help="after --: more run.py arguments")
    a = ap.parse_args()
    out = Path(a.out or HERE / "results" / a.name)
    work = a.work or str(ROOT / "outputs" / "validation" / a.name)
    out.mkdir(parents=True, exist_ok=True)
    py, run = sys.executable, str(HERE / "run.py")
    tmp = out / ".bracket"
    cal_models = f"calibrate.models=[{a.models}]"
    a.rest = ["--models", a.models, *a.rest]
    with open(out / "log.txt", "w") as log:
        _run([py, "-m", "inf2sim.cli", "calibrate", f"calibrate.name={a.name}_before", cal_models], log)
        _run([py, run, "--hardware", f"{a.name}_before", "--passes", str(a.passes), "--out", str(tmp / "before"),
              "--work", work, *a.rest], log)
        _run([py, "-m", "inf2sim.cli", "calibrate", f"calibrate.name={a.name}", cal_models], log)
        _run([py, run, "--hardware", a.name, "--resim", "--out", str(tmp / "after"), "--work", work, *a.rest], log)
        conf = ROOT / "conf" / "hardware"
        mid = out / f"{a.name}_mid.yaml"
        before = out / f"{a.name}_before.yaml"
        shutil.move(str(conf / f"{a.name}_before.yaml"), before)  # kept with its table, out of conf/
        _run([py, str(HERE / "midpoint_profile.py"), str(before), str(conf / f"{a.name}.yaml"),
              "--name", f"{a.name}_mid", "--out", str(mid)], log)
        _run([py, run, "--hardware", str(mid), "--resim", "--out", str(tmp / "mid"), "--work", work, *a.rest], log)
    for tag, suffix in (("before", "_before"), ("after", "_after"), ("mid", "")):
        shutil.copy(tmp / tag / "table.md", out / f"table{suffix}.md")
        shutil.copy(tmp / tag / "results.json", out / f"results{suffix}.json")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}/table.md (midpoint profile), table_before.md, table_after.md")


if __name__ == "__main__":
    main()
