"""Alpha sweep: share of sequences in the cooperative X-cache (inf2 v1), with the
alpha that the `auto` (bandwidth model) and `budget` (host memory) rules pick.

    inf2 -m +experiment=alpha_sweep hydra/launcher=joblib && python experiments/alpha_sweep/plot.py

Writes results/alpha_sweep.csv and results/alpha_sweep.png.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, plt, save, setup, write_csv  # noqa: E402


def main() -> None:
    runs, out = setup("alpha_sweep")
    rows = []
    for r in runs:
        row = base_row(r)
        row["alpha_setting"] = r["overrides"].get("policy.xcache.alpha", "")
        busy = r["metrics"].get("busy_frac", {})
        row["gpu_busy"] = busy.get("gpu")
        row["csd0_flash_busy"] = busy.get("link:csd0.nand")
        rows.append(row)
    rows.sort(key=lambda x: (x["alpha_setting"] in ("auto", "budget"), x["alpha"]))
    best = max((x for x in rows if x["status"] == "ok"), key=lambda x: x["total_tok_s"])
    for x in rows:
        x["vs_best"] = x["total_tok_s"] / best["total_tok_s"] if x["status"] == "ok" else None
    write_csv(rows, out / "alpha_sweep.csv")

    grid = [x for x in rows if x["alpha_setting"] not in ("auto", "budget")]
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    ax.plot([x["alpha"] for x in grid], [x["total_tok_s"] if x["status"] == "ok" else float("nan") for x in grid],
            marker="o", label="inf2 (c=2, X in host DRAM)")
    for x in rows:
        if x["alpha_setting"] in ("auto", "budget") and x["status"] == "ok":
            big = x["alpha_setting"] == "auto"  # drawn larger, behind: the rules may pick the same alpha
            ax.plot([x["alpha"]], [x["total_tok_s"]], marker="o" if big else "*", ms=16 if big else 10, ls="none",
                    mfc="none" if big else None, mew=2, label=f"alpha={x['alpha_setting']} picks {x['alpha']:.3g}")
    ax2 = ax.twinx()
    ax2.plot([x["alpha"] for x in grid], [x["gpu_busy"] or 0 for x in grid], ls="--", color="grey", label="GPU busy")
    ax2.plot([x["alpha"] for x in grid], [x["csd0_flash_busy"] or 0 for x in grid], ls=":", color="black",
             label="CSD0 flash busy")
    ax2.set_ylabel("busy fraction")
    ax2.set_ylim(0, 1.05)
    ax.set(xlabel="alpha (share of sequences in the X-cache)", ylabel="total throughput (tok/s)",
           title=f"{rows[0]['model']}, batch {rows[0]['batch']}, prompt {rows[0]['prompt_len']}, {rows[0]['csd_count']} CSDs")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    save(fig, out, "alpha_sweep.png")


if __name__ == "__main__":
    main()
