"""Memory budget: host.memory_budget_gb from 256 GB to 1 TB with INF2's X-cache sized
by it (alpha=budget); FLEX(SSD), which does not use the budget, for reference.

    inf2 -m +experiment=memory_budget hydra/launcher=joblib && python experiments/memory_budget/plot.py

Writes results/memory_budget.csv and results/memory_budget.png.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, plt, save, setup, write_csv  # noqa: E402


def main() -> None:
    runs, out = setup("memory_budget")
    rows = []
    for r in runs:
        row = base_row(r)
        row["memory_budget_gb"] = r["metrics"]["config"]["hardware"]["host"]["memory_budget_gb"]
        rows.append(row)
    rows.sort(key=lambda x: (x["policy"], x["memory_budget_gb"]))
    for x in rows:
        ref = next((y for y in rows if y["policy"] == "flexgen_ssd" and y["memory_budget_gb"] == x["memory_budget_gb"]), None)
        ok = x["status"] == "ok" and ref and ref["status"] == "ok"
        x["speedup_vs_flexgen_ssd"] = x["total_tok_s"] / ref["total_tok_s"] if ok else None
    write_csv(rows, out / "memory_budget.csv")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for p, lab in (("inf2", "INF2 (alpha=budget)"), ("flexgen_ssd", "FLEX(SSD)")):
        pts = [x for x in rows if x["policy"] == p and x["status"] == "ok"]
        ax.plot([x["memory_budget_gb"] for x in pts], [x["total_tok_s"] for x in pts], marker="o", label=lab)
    ax2 = ax.twinx()
    pts = [x for x in rows if x["policy"] == "inf2"]
    ax2.plot([x["memory_budget_gb"] for x in pts], [x["alpha"] for x in pts], ls="--", marker=".", color="grey",
             label="INF2 alpha (right)")
    ax2.set(ylabel="alpha (share of sequences in the X-cache)", ylim=(0, 1.05))
    ax.set(xlabel="host memory budget (GB)", ylabel="total throughput (tok/s)",
           title=f"{rows[0]['model']}, batch {rows[0]['batch']}, prompt {rows[0]['prompt_len']}, {rows[0]['csd_count']} CSDs")
    ax.set_ylim(0, None)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
    save(fig, out, "memory_budget.png")


if __name__ == "__main__":
    main()
