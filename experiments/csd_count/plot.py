"""CSD count: 1..16 CSDs for FlexGen on the CSDs as plain SSDs (flexgen_csd), attention
near storage (ans) and INF2.

    inf2 -m +experiment=csd_count hydra/launcher=joblib && python experiments/csd_count/plot.py

Writes results/csd_count.csv and results/csd_count.png.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, plt, save, setup, write_csv  # noqa: E402

LABELS = {"flexgen_csd": "FlexGen on CSDs as plain SSDs", "ans": "ANS", "inf2": "INF2 (alpha=budget)"}


def main() -> None:
    runs, out = setup("csd_count")
    rows = []
    for r in runs:
        row = base_row(r)
        busy = r["metrics"].get("busy_frac", {})
        row["chassis_uplink_busy"] = busy.get("link:chassis")
        rows.append(row)
    rows.sort(key=lambda x: (list(LABELS).index(x["policy"]), x["csd_count"]))
    for x in rows:
        one = next(y for y in rows if y["policy"] == x["policy"] and y["csd_count"] == 1)
        x["speedup_vs_1csd"] = x["total_tok_s"] / one["total_tok_s"] if x["status"] == "ok" and one["total_tok_s"] else None
    write_csv(rows, out / "csd_count.csv")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for p, lab in LABELS.items():
        pts = [x for x in rows if x["policy"] == p and x["status"] == "ok"]
        ax.plot([x["csd_count"] for x in pts], [x["total_tok_s"] for x in pts], marker="o", label=lab)
    ax.set(xlabel="CSDs", ylabel="total throughput (tok/s)",
           title=f"{rows[0]['model']}, batch {rows[0]['batch']}, prompt {rows[0]['prompt_len']}")
    ax.set_ylim(0, None)
    ax.legend(fontsize=8)
    save(fig, out, "csd_count.png")


if __name__ == "__main__":
    main()
