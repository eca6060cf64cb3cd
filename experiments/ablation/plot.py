"""Ablation: ANS, +write-back, +X-cache, all three (inf2), with FLEX(SSD) for reference.

    inf2 -m +experiment=ablation hydra/launcher=joblib && python experiments/ablation/plot.py

Writes results/ablation.csv (one row per run, with the speedup over ANS and over
FLEX(SSD) at the same context) and results/ablation.png.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, ctx_label, plt, save, setup, write_csv  # noqa: E402

ORDER = ["flexgen_ssd", "ans", "ans_wb", "ans_xcache", "inf2"]
LABELS = {"flexgen_ssd": "FLEX(SSD)", "ans": "ANS", "ans_wb": "ANS+WB", "ans_xcache": "ANS+X-cache",
          "inf2": "ANS+WB+X-cache (INF2)"}


def main() -> None:
    runs, out = setup("ablation")
    rows = [base_row(r) for r in runs]
    for x in rows:
        x["system"] = x["policy"]
    rows.sort(key=lambda x: (x["prompt_len"], ORDER.index(x["policy"])))
    get = {(x["prompt_len"], x["policy"]): x for x in rows}
    for x in rows:
        for ref in ("ans", "flexgen_ssd"):
            r = get.get((x["prompt_len"], ref))
            ok = x["status"] == "ok" and r and r["status"] == "ok"
            x[f"speedup_vs_{ref}"] = x["total_tok_s"] / r["total_tok_s"] if ok else None
    write_csv(rows, out / "ablation.csv")

    ctxs = sorted({x["prompt_len"] for x in rows})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(ORDER)
    xs = np.arange(len(ctxs))
    for k, p in enumerate(ORDER):
        vals = [get.get((c, p)) for c in ctxs]
        ax.bar(xs + (k - 2) * width, [v["speedup_vs_flexgen_ssd"] or 0 if v else 0 for v in vals], width, label=LABELS[p])
        for j, v in enumerate(vals):
            if v and v["status"] == "ok" and v["alpha"]:
                ax.text(xs[j] + (k - 2) * width, (v["speedup_vs_flexgen_ssd"] or 0) + 0.02, f"a={v['alpha']:.2g}",
                        ha="center", fontsize=6, rotation=90, va="bottom")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(xs, [ctx_label(c) for c in ctxs])
    ax.set(xlabel="context (prompt tokens)", ylabel="total throughput / FLEX(SSD)",
           title=f"Ablation ({rows[0]['model']}, batch {rows[0]['batch']}, {rows[0]['csd_count']} CSDs)")
    ax.legend(fontsize=7)
    save(fig, out, "ablation.png")


if __name__ == "__main__":
    main()
