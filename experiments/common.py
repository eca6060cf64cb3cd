"""Shared by every `experiments/<study>/plot.py`: find the study's multirun, load its
jobs, and set up matplotlib. A plot script is run after its sweep:

    inf2 -m +experiment=<study> hydra/launcher=joblib     # writes multirun/<study>/<timestamp>/
    python experiments/<study>/plot.py [SWEEP_DIR] [--out DIR]

SWEEP_DIR defaults to the newest sweep under multirun/<study>/ (relative to the
current directory, where `inf2` wrote it); --out defaults to experiments/<study>/results.
Derived metrics (price, energy, endurance) come from `inf2sim.studies`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the checkout this script lives in, not another installed copy
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported for the plot scripts)

from inf2sim.studies import base_row, latest_sweep, load_runs, write_csv  # noqa: E402,F401


def setup(study: str, with_config: bool = False) -> Tuple[List[Dict[str, Any]], Path]:
    """Parse the command line; return (runs, output dir)."""
    ap = argparse.ArgumentParser(description=f"Tables and figure of the {study} study")
    ap.add_argument("sweep_dir", nargs="?", help=f"a multirun folder (default: newest under multirun/{study}/)")
    ap.add_argument("--out", help=f"output folder (default: experiments/{study}/results)")
    a = ap.parse_args()
    sweep = Path(a.sweep_dir) if a.sweep_dir else latest_sweep(Path("multirun") / study)
    out = Path(a.out) if a.out else ROOT / "experiments" / study / "results"
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(sweep, with_config=with_config)
    if not runs:
        raise SystemExit(f"{study}: no finished jobs in {sweep}")
    print(f"{study}: {len(runs)} runs from {sweep}")
    return runs, out


def ctx_label(tokens: float) -> str:
    """2048 -> '2K', 131072 -> '128K'."""
    t = int(tokens)
    return f"{t // 1024}K" if t >= 1024 and t % 1024 == 0 else str(t)


def fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v))


def save(fig, out: Path, name: str) -> Path:
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path
