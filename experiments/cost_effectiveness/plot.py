"""Cost-effectiveness: total throughput per 1,000 USD of system price, for FlexGen
baselines and near-storage systems on the A100 and H100 profiles.

    inf2 -m +experiment=cost_effectiveness hydra/launcher=joblib && python experiments/cost_effectiveness/plot.py

Prices: each profile's *.price_usd; which parts a system buys: inf2sim.studies.system_parts_usd
(docs/metrics.md). Writes results/cost_effectiveness.csv and results/cost_effectiveness.png.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, plt, save, setup, write_csv  # noqa: E402

from inf2sim.studies import system_parts_usd, tok_s_per_kusd  # noqa: E402

ORDER = ["flexgen_ssd", "flexgen_dram", "flexgen_csd16", "ans16", "inf2_4", "inf2_16"]
LABELS = {"flexgen_ssd": "FLEX(SSD)", "flexgen_dram": "FLEX(DRAM)", "flexgen_csd16": "FLEX(16 SSDs)",
          "ans16": "ANS (16)", "inf2_4": "INF2 (4)", "inf2_16": "INF2 (16)"}


def main() -> None:
    runs, out = setup("cost_effectiveness")
    rows = []
    for r in runs:
        m = r["metrics"]
        row = base_row(r)
        parts = system_parts_usd(m["config"])
        row.update({f"price_{k}_usd": v for k, v in parts.items()})
        row["price_usd"] = sum(parts.values())
        row["tok_s_per_kusd"] = tok_s_per_kusd(m)
        rows.append(row)
    rows.sort(key=lambda x: (x["hardware"], ORDER.index(x["system"])))
    ref = {x["hardware"]: x for x in rows if x["system"] == "flexgen_ssd"}
    a100 = ref.get("paper_a100")
    for x in rows:
        base = ref.get(x["hardware"])
        x["rel_vs_flexgen_ssd_same_gpu"] = (x["tok_s_per_kusd"] / base["tok_s_per_kusd"]
                                            if x["tok_s_per_kusd"] and base and base["tok_s_per_kusd"] else None)
        x["rel_vs_flexgen_ssd_a100"] = (x["tok_s_per_kusd"] / a100["tok_s_per_kusd"]
                                        if x["tok_s_per_kusd"] and a100 and a100["tok_s_per_kusd"] else None)
    write_csv(rows, out / "cost_effectiveness.csv")

    hws = sorted({x["hardware"] for x in rows})
    get = {(x["hardware"], x["system"]): x for x in rows}
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(hws)
    xs = np.arange(len(ORDER))
    for k, hw in enumerate(hws):
        vals = [get.get((hw, s)) for s in ORDER]
        off = (k - (len(hws) - 1) / 2) * width
        ax[0].bar(xs + off, [v["total_tok_s"] if v and v["status"] == "ok" else 0 for v in vals], width, label=hw)
        ax[1].bar(xs + off, [v["tok_s_per_kusd"] or 0 if v else 0 for v in vals], width, label=hw)
        for j, v in enumerate(vals):
            if v and v["status"] != "ok":
                for a in ax:
                    a.text(xs[j] + off, 0, "oom", rotation=90, ha="center", va="bottom", fontsize=7)
    for a, yl in zip(ax, ("total throughput (tok/s)", "tok/s per 1,000 USD")):
        a.set_xticks(xs, [LABELS[s] for s in ORDER], fontsize=7, rotation=20)
        a.set_ylabel(yl)
        a.legend(fontsize=8)
    ax[0].set_title(f"{rows[0]['model']}, batch {rows[0]['batch']}, prompt {rows[0]['prompt_len']}")
    ax[1].set_title("cost-effectiveness")
    save(fig, out, "cost_effectiveness.png")


if __name__ == "__main__":
    main()
