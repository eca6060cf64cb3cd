"""The validation timeline: simulated above, measured below, one row per resource.

Called by `inf2hw.validate.validate_spec`. Draws every span as a bar on its resource's
row (compute devices by name; transfers by "src->dst"), coloured by op kind (class and
`what`), both panels on one time axis in seconds so gaps and stretched ops line up.
Uses matplotlib's Agg backend (no display needed). Returns the PNG path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from inf2sim.plan import Span


def _rows(spans: List[Span]) -> List[str]:
    def key(r: str):
        transfer = "->" in r
        return (transfer, r.split("->")[0] if transfer else r, r)

    return sorted({s.resource for s in spans}, key=key)


def plot_timelines(sim: List[Span], meas: List[Span], path: Path, title: str, sim_label: str = "simulated",
                   meas_label: str = "measured") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(sim + meas)
    kinds = sorted({f"{s.kind}/{s.what}" for s in sim + meas})
    cmap = plt.get_cmap("tab20")
    color: Dict[str, tuple] = {k: cmap(i % 20) for i, k in enumerate(kinds)}
    height = max(4.0, 0.22 * len(rows) * 2 + 2.0)
    fig, axes = plt.subplots(2, 1, figsize=(16, height), sharex=True)
    end = max([s.end_s for s in sim + meas] + [1e-9])
    for ax, spans, label in ((axes[0], sim, sim_label), (axes[1], meas, meas_label)):
        by: Dict[tuple, List[tuple]] = {}
        for s in spans:
            by.setdefault((rows.index(s.resource), f"{s.kind}/{s.what}"), []).append(
                (s.start_s, max(s.end_s - s.start_s, end * 2e-4)))
        for (y, k), bars in by.items():
            ax.broken_barh(bars, (y - 0.4, 0.8), facecolors=color[k], edgecolor="none")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=7)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_title(label, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[1].set_xlabel("seconds since the run started")
    axes[1].set_xlim(0, end * 1.01)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[k]) for k in kinds]
    fig.legend(handles, kinds, loc="upper right", fontsize=7, ncol=1, bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 0.86, 0.97))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
