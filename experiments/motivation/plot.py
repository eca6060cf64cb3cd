"""Motivation: how much of FLEX(SSD)'s decode time is KV I/O, and how RAID0 throughput
scales with the number of conventional SSDs.

    inf2 -m +experiment=motivation hydra/launcher=joblib && python experiments/motivation/plot.py

Writes results/motivation.csv (one row per run) and results/motivation.png.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, ctx_label, plt, save, setup, write_csv  # noqa: E402


def main() -> None:
    runs, out = setup("motivation")
    rows = []
    for r in runs:
        row = base_row(r)
        busy = r["metrics"].get("busy_frac", {})
        row["ssd_uplink_busy"] = busy.get("link:ssd_sw")
        row["cpu_busy"] = busy.get("cpu")
        rows.append(row)
    rows.sort(key=lambda x: (x["prompt_len"], x["ssd_count"]))
    for row in rows:  # throughput relative to one SSD at the same context
        one = next(x for x in rows if x["prompt_len"] == row["prompt_len"] and x["ssd_count"] == 1)
        row["speedup_vs_1ssd"] = row["total_tok_s"] / one["total_tok_s"] if one["total_tok_s"] else None
    write_csv(rows, out / "motivation.csv")

    ctxs = sorted({x["prompt_len"] for x in rows})
    ssds = sorted({x["ssd_count"] for x in rows})
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for n in [n for n in ssds if n in (1, 2, 4, 8)]:  # the rest lie on these (see the CSV)
        pts = [x for x in rows if x["ssd_count"] == n]
        ax[0].plot([ctx_label(x["prompt_len"]) for x in pts], [100 * x["kv_io_share"] for x in pts], marker="o",
                   label=f"{n} SSD" + ("s" if n > 1 else ""))
    ax[0].set(xlabel="context (prompt tokens)", ylabel="decode time with KV I/O in flight (%)", ylim=(0, 105),
              title="FLEX(SSD): share of decode time on KV I/O")
    ax[0].legend(fontsize=7, ncol=2)
    for c in ctxs:
        pts = [x for x in rows if x["prompt_len"] == c]
        ax[1].plot([x["ssd_count"] for x in pts], [x["speedup_vs_1ssd"] for x in pts], marker="o", label=ctx_label(c))
    ax[1].plot(ssds, ssds, ls=":", color="grey", label="linear")
    ax[1].set(xlabel="conventional SSDs in RAID0", ylabel="total throughput / 1 SSD", title="FLEX(SSD): RAID0 scaling",
              ylim=(0, max(ssds) + 0.5))
    ax[1].legend(fontsize=8, title="context")
    save(fig, out, "motivation.png")


if __name__ == "__main__":
    main()
