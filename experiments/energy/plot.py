"""Energy: joules per generated token, from each device's power x its busy time plus
the rest-of-server power over the run (inf2sim.studies.energy_breakdown_j, docs/metrics.md).

    inf2 -m +experiment=energy hydra/launcher=joblib && python experiments/energy/plot.py

Writes results/energy.csv (J/token and joules per component) and results/energy.png.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, plt, save, setup, write_csv  # noqa: E402

from inf2sim.studies import energy_breakdown_j, joules_per_token  # noqa: E402

ORDER = ["flexgen_ssd", "flexgen_dram", "flexgen_csd16", "ans16", "inf2_16"]
LABELS = {"flexgen_ssd": "FLEX(SSD)", "flexgen_dram": "FLEX(DRAM)", "flexgen_csd16": "FLEX(16 SSDs)",
          "ans16": "ANS (16)", "inf2_16": "INF2 (16)"}
PARTS = ["host_static", "gpu", "cpu", "ssds", "csds"]


def main() -> None:
    runs, out = setup("energy")
    rows = []
    for r in runs:
        m = r["metrics"]
        row = base_row(r)
        tokens = row["batch"] * row["gen_len"]
        if m["status"] == "ok":
            e = energy_breakdown_j(m)
            row.update({f"j_per_tok_{k}": v / tokens for k, v in e.items()})
        row["j_per_tok"] = joules_per_token(m)
        rows.append(row)
    rows.sort(key=lambda x: ORDER.index(x["system"]))
    ref = next((x for x in rows if x["system"] == "flexgen_ssd"), None)
    for x in rows:
        x["rel_vs_flexgen_ssd"] = x["j_per_tok"] / ref["j_per_tok"] if x["j_per_tok"] and ref and ref["j_per_tok"] else None
    write_csv(rows, out / "energy.csv")

    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(rows)
    for p in PARTS:
        h = [x.get(f"j_per_tok_{p}") or 0 for x in rows]
        ax.bar([LABELS[x["system"]] for x in rows], h, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, h)]
    for i, x in enumerate(rows):
        if x["status"] != "ok":
            ax.text(i, 0, "oom", ha="center", va="bottom")
    ax.set(ylabel="energy per generated token (J)",
           title=f"{rows[0]['model']}, batch {rows[0]['batch']}, prompt {rows[0]['prompt_len']}, gen {rows[0]['gen_len']} "
                 f"(fidelity {rows[0]['fidelity']})")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    save(fig, out, "energy.png")


if __name__ == "__main__":
    main()
