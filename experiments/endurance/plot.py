"""SSD endurance: flash bytes written per request for the request classes short
(256 in / 100 out tokens), medium (1K / 350) and long (8K / 350), and how many such
requests the written drives last before their rated endurance (PBW).

    inf2 -m +experiment=endurance hydra/launcher=joblib && python experiments/endurance/plot.py

Written bytes come from the plans (inf2sim.studies.storage_writes); the flash page
(`endurance.page_bytes` in conf/experiment/endurance.yaml) turns small spills into
whole-page programs. Writes results/endurance.csv and results/endurance.png.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import base_row, plt, save, setup, write_csv  # noqa: E402

from inf2sim.studies import endurance  # noqa: E402

CLASSES = ["short", "medium", "long"]
ORDER = ["flexgen_ssd", "flexgen_csd16", "ans16", "ans_wb16", "hilos16"]
LABELS = {"flexgen_ssd": "FLEX(SSD), 4 SSDs", "flexgen_csd16": "FLEX(16 SSDs)", "ans16": "ANS, c=1",
          "ans_wb16": "ANS+WB, c=2 (v1)", "hilos16": "HILOS, c=16 (v2)"}


def main() -> None:
    runs, out = setup("endurance", with_config=True)
    rows = []
    for r in runs:
        m = r["metrics"]
        page = int(r["config"]["endurance"]["page_bytes"])
        row = base_row(r)
        row["request_class"] = r["overrides"].get("experiment/request", "")
        near_storage = m["config"]["policy"]["attention_on"] == "csd"  # the policies with write-back knobs
        row["wb_c"] = (m["config"]["policy"]["wb"]["c"] if row["policy"] != "ans" else 1) if near_storage else None
        row["page_bytes"] = page
        row.update(endurance(m, page))
        rows.append(row)
    rows.sort(key=lambda x: (CLASSES.index(x["request_class"]), ORDER.index(x["system"])))
    write_csv(rows, out / "endurance.csv")

    get = {(x["request_class"], x["system"]): x for x in rows}
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(ORDER)
    xs = np.arange(len(CLASSES))
    for k, s in enumerate(ORDER):
        vals = [get.get((c, s)) for c in CLASSES]
        off = (k - (len(ORDER) - 1) / 2) * width
        ax[0].bar(xs + off, [v["requests_before_pbw"] or 0 if v else 0 for v in vals], width, label=LABELS[s])
        ax[1].bar(xs + off, [v["waf"] or 0 if v else 0 for v in vals], width, label=LABELS[s])
        for j, v in enumerate(vals):
            if v and not v["drives"]:
                ax[0].text(xs[j] + off, 1, "no flash writes", rotation=90, ha="center", va="bottom", fontsize=6)
    ax[0].set_yscale("log")
    ax[0].set(ylabel="requests before rated PBW (log)", title=f"{rows[0]['model']}, batch {rows[0]['batch']}")
    ax[1].set(ylabel="flash bytes / bytes written", title=f"write amplification ({rows[0]['page_bytes'] // 1024} KiB pages)")
    for a in ax:
        a.set_xticks(xs, [f"{c}\n{int(get[(c, ORDER[0])]['prompt_len'])}/{int(get[(c, ORDER[0])]['gen_len'])}"
                          if (c, ORDER[0]) in get else c for c in CLASSES])
    ax[1].legend(fontsize=7)
    save(fig, out, "endurance.png")


if __name__ == "__main__":
    main()
