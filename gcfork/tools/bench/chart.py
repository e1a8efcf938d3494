"""The chart of ``gcfork bench``: how memory sharing evolves as requests are
served, one line per variant.

matplotlib comes with the optional ``bench`` extra and is imported only when a
chart is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gcfork.tools.bench.results import Run

__all__ = ["write_chart"]


def write_chart(runs: Sequence[Run], path: Path) -> Path:
    """Cluster PSS and mean worker shared % against requests served, one line
    per variant (its first repeat), as PNG."""
    import matplotlib  # heavy: only the benchmark needs it (the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_pss, ax_shared) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        if run.repeat:
            continue
        points = [(c.requests, c.measured) for c in run.checkpoints if c.requests is not None]
        xs = [max(x, 1) for x, _ in points]
        ax_pss.plot(xs, [(m.get("cluster_pss") or 0) / 2**20 for _, m in points], marker="o",
                    label=run.variant)
        ax_shared.plot(xs, [m.get("mean_worker_shared_pct") or 0 for _, m in points], marker="o",
                       label=run.variant)
    for ax, title, unit in ((ax_pss, "cluster PSS", "MiB"),
                            (ax_shared, "mean worker shared", "% of RSS")):
        ax.set_xscale("log")
        ax.set_xlabel("requests served (log scale; 1 = after boot)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
