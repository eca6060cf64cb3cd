"""GQA and MoE: Qwen2.5-32B and Mixtral-8x7B under FLEX(SSD), FLEX(DRAM), ANS and INF2.

    inf2 -m +experiment=gqa_moe hydra/launcher=joblib && python experiments/gqa_moe/plot.py

Writes results/gqa_moe.csv (with the speedup over FLEX(SSD) per model and context, and
what the cooperative rows keep: X or K,V) and results/gqa_moe.png.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, ctx_label, plt, save, setup, write_csv  # noqa: E402

ORDER = ["flexgen_ssd", "flexgen_dram", "ans", "inf2"]
LABELS = {"flexgen_ssd": "FLEX(SSD)", "flexgen_dram": "FLEX(DRAM)", "ans": "ANS", "inf2": "INF2 (alpha=budget)"}


def main() -> None:
    runs, out = setup("gqa_moe")
    rows = []
    for r in runs:
        row = base_row(r)
        md = r["metrics"]["config"]["model"]
        row["group_size"] = md["num_heads"] // md["num_kv_heads"]
        x_values, kv_values = md["hidden"], 2 * md["num_kv_heads"] * md["head_dim"]
        row["coop_rows_keep"] = "X" if x_values < kv_values else "K,V"
        row["x_over_kv"] = x_values / kv_values
        rows.append(row)
    rows.sort(key=lambda x: (x["model"], x["prompt_len"], ORDER.index(x["policy"])))
    get = {(x["model"], x["prompt_len"], x["policy"]): x for x in rows}
    for x in rows:
        ref = get.get((x["model"], x["prompt_len"], "flexgen_ssd"))
        ok = x["status"] == "ok" and ref and ref["status"] == "ok"
        x["speedup_vs_flexgen_ssd"] = x["total_tok_s"] / ref["total_tok_s"] if ok else None
    write_csv(rows, out / "gqa_moe.csv")

    groups = sorted({(x["model"], x["prompt_len"]) for x in rows})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(ORDER)
    xs = np.arange(len(groups))
    for k, p in enumerate(ORDER):
        vals = [get.get((m, c, p)) for m, c in groups]
        ax.bar(xs + (k - 1.5) * width, [v["total_tok_s"] if v and v["status"] == "ok" else 0 for v in vals], width,
               label=LABELS[p])
        for j, v in enumerate(vals):
            if v and v["status"] != "ok":
                ax.text(xs[j] + (k - 1.5) * width, 0, "oom", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [f"{m}\n{ctx_label(c)}" for m, c in groups], fontsize=8)
    ax.set(ylabel="total throughput (tok/s)", title=f"GQA / MoE, batch {rows[0]['batch']}, {rows[0]['csd_count']} CSDs")
    ax.legend(fontsize=7)
    save(fig, out, "gqa_moe.png")


if __name__ == "__main__":
    main()
