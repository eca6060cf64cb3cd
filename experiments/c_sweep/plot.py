"""Write-back period sweep: ANS + delayed write-back (ans_wb) at c = 1..32, v1 (tail
k/v shipped to the CSD) and v2 (host computes the tail's scores).

    inf2 -m +experiment=c_sweep hydra/launcher=joblib && python experiments/c_sweep/plot.py

Writes results/c_sweep.csv (with the spill request size per KV row, c x head_dim x
dtype bytes, and the flash bytes per request with 4 KiB pages) and results/c_sweep.png.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, plt, save, setup, write_csv  # noqa: E402

from inf2sim.studies import flash_bytes  # noqa: E402

PAGE_BYTES = 4096  # the same page as the endurance study's conf/experiment/endurance.yaml


def main() -> None:
    runs, out = setup("c_sweep")
    rows = []
    for r in runs:
        row = base_row(r)
        cfg = r["metrics"]["config"]
        row["c"] = int(r["overrides"].get("policy.wb.c", cfg["policy"]["wb"]["c"]))
        row["variant"] = r["overrides"].get("policy.wb.variant", cfg["policy"]["wb"]["variant"])
        req = row["c"] * cfg["model"]["head_dim"] * cfg["model"]["dtype_bytes"]
        row["spill_req_bytes"] = req
        row["flash_write_amplification"] = flash_bytes(req, req, PAGE_BYTES) / req
        rows.append(row)
    rows.sort(key=lambda x: (x["variant"], x["c"]))
    for x in rows:
        one = next((y for y in rows if y["variant"] == x["variant"] and y["c"] == 1), None)
        x["decode_vs_c1"] = x["decode_tok_s"] / one["decode_tok_s"] if one and one["decode_tok_s"] else None
    write_csv(rows, out / "c_sweep.csv")

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for v in sorted({x["variant"] for x in rows}):
        pts = [x for x in rows if x["variant"] == v]
        ax[0].plot([x["c"] for x in pts], [x["decode_tok_s"] for x in pts], marker="o", label=f"write-back {v}")
    ax[0].set_xscale("log", base=2)
    ax[0].set_ylim(0, 1.15 * max(x["decode_tok_s"] for x in rows))  # from zero: the change is small
    ax[0].set(xlabel="c (tokens buffered per spill)", ylabel="decode throughput (tok/s)",
              title=f"{rows[0]['model']}, prompt {rows[0]['prompt_len']}, {rows[0]['csd_count']} CSDs")
    ax[0].legend(fontsize=8)
    pts = [x for x in rows if x["variant"] == rows[0]["variant"]]
    ax[1].plot([x["c"] for x in pts], [x["flash_write_amplification"] for x in pts], marker="s", color="C3")
    ax[1].set_xscale("log", base=2)
    ax[1].set(xlabel="c", ylabel=f"flash bytes / bytes spilled ({PAGE_BYTES // 1024} KiB pages)",
              title="spill request = c x head_dim x 2 B per KV row")
    save(fig, out, "c_sweep.png")


if __name__ == "__main__":
    main()
