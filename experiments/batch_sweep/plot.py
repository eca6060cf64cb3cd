"""Batch sweep: batch 4..64 for FLEX(SSD), FLEX(DRAM), ANS and INF2.

    inf2 -m +experiment=batch_sweep hydra/launcher=joblib && python experiments/batch_sweep/plot.py

Writes results/batch_sweep.csv and results/batch_sweep.png (out-of-memory runs marked).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, plt, save, setup, write_csv  # noqa: E402

LABELS = {"flexgen_ssd": "FLEX(SSD)", "flexgen_dram": "FLEX(DRAM)", "ans": "ANS", "inf2": "INF2 (alpha=budget)"}


def main() -> None:
    runs, out = setup("batch_sweep")
    rows = sorted((base_row(r) for r in runs), key=lambda x: (list(LABELS).index(x["policy"]), x["batch"]))
    write_csv(rows, out / "batch_sweep.csv")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, (p, lab) in enumerate(LABELS.items()):
        pts = [x for x in rows if x["policy"] == p]
        ok = [x for x in pts if x["status"] == "ok"]
        ax.plot([x["batch"] for x in ok], [x["total_tok_s"] for x in ok], marker="o", label=lab, color=f"C{k}")
        bad = [x for x in pts if x["status"] != "ok"]
        if bad:
            ax.plot([x["batch"] for x in bad], [0] * len(bad), marker="x", ls="none", ms=10, color=f"C{k}",
                    label=f"{lab}: oom")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, None)
    ax.set(xlabel="batch", ylabel="total throughput (tok/s)",
           title=f"{rows[0]['model']}, prompt {rows[0]['prompt_len']}, {rows[0]['csd_count']} CSDs")
    ax.legend(fontsize=7)
    save(fig, out, "batch_sweep.png")


if __name__ == "__main__":
    main()
