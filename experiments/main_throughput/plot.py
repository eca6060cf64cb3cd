"""Main throughput: OPT-30B/66B/175B, FLEX(SSD), FLEX(DRAM), FLEX(16 SSDs) and INF2 on
4 and 16 CSDs, over context length.

    inf2 -m +experiment=main_throughput hydra/launcher=joblib && python experiments/main_throughput/plot.py

Writes results/main_throughput.csv (one row per run), results/speedup.csv (INF2 over the
best baseline that ran, per model and context) and results/main_throughput.png.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, ctx_label, plt, save, setup, write_csv  # noqa: E402

SYSTEMS = ["flexgen_ssd", "flexgen_dram", "flexgen_csd16", "inf2_4", "inf2_16"]
LABELS = {"flexgen_ssd": "FLEX(SSD)", "flexgen_dram": "FLEX(DRAM)", "flexgen_csd16": "FLEX(16 SSDs)",
          "inf2_4": "INF2 (4 CSDs)", "inf2_16": "INF2 (16 CSDs)"}
BASELINES = ["flexgen_ssd", "flexgen_dram", "flexgen_csd16"]


def main() -> None:
    runs, out = setup("main_throughput")
    rows = sorted((base_row(r) for r in runs), key=lambda x: (x["model"], x["prompt_len"], SYSTEMS.index(x["system"])))
    write_csv(rows, out / "main_throughput.csv")
    models = sorted({x["model"] for x in rows}, key=lambda m: float(m.split("-")[1].rstrip("b")))
    ctxs = sorted({x["prompt_len"] for x in rows})
    get = {(x["model"], x["prompt_len"], x["system"]): x for x in rows}

    speed = []
    for m in models:
        for c in ctxs:
            ok = {s: get[(m, c, s)] for s in SYSTEMS if (m, c, s) in get and get[(m, c, s)]["status"] == "ok"}
            base = max((ok[s] for s in BASELINES if s in ok), key=lambda x: x["total_tok_s"], default=None)
            row = {"model": m, "prompt_len": c, "best_baseline": base["system"] if base else None,
                   "best_baseline_tok_s": base["total_tok_s"] if base else None}
            for s in ("inf2_4", "inf2_16"):
                v = ok.get(s)
                row[f"{s}_tok_s"] = v["total_tok_s"] if v else None
                row[f"{s}_alpha"] = v["alpha"] if v else None
                row[f"{s}_speedup"] = v["total_tok_s"] / base["total_tok_s"] if v and base else None
            speed.append(row)
    write_csv(speed, out / "speedup.csv")

    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.2), sharey=True)
    width = 0.8 / len(SYSTEMS)
    for ax, m in zip(np.atleast_1d(axes), models):
        x = np.arange(len(ctxs))
        for k, s in enumerate(SYSTEMS):
            vals = [get.get((m, c, s)) for c in ctxs]
            h = [v["total_tok_s"] if v and v["status"] == "ok" else 0 for v in vals]
            ax.bar(x + (k - 2) * width, h, width, label=LABELS[s])
            for j, v in enumerate(vals):
                if v and v["status"] != "ok":
                    ax.text(x[j] + (k - 2) * width, 1.2e-3, "OOM", rotation=90, ha="center", va="bottom", fontsize=6,
                            color=f"C{k}")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, None)
        ax.set_xticks(x, [ctx_label(c) for c in ctxs])
        ax.set(title=m.upper(), xlabel="context (prompt tokens)")
    np.atleast_1d(axes)[0].set_ylabel("total throughput (tok/s, log)")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    save(fig, out, "main_throughput.png")


if __name__ == "__main__":
    main()
