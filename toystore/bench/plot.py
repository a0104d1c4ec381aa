"""The bench's plot (matplotlib, Agg backend): p50 and p99 latency against connections, for
committed orders and for etcd's puts measured in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from toystore.bench.report import LATENCY_LINES, latency_series  # noqa: E402
from toystore.experiment.plots import save_figure  # noqa: E402

COLOURS = ("tab:blue", "tab:orange")
STAT_STYLES = {"p50": "-", "p99": ":"}


def plot_latency(report: dict[str, Any], path: Path) -> bool:
    """Writes the plot at ``path``; False (and no file) when the run measured no latency."""
    figure, ax = plt.subplots(figsize=(8, 4.5))
    connections: set[int] = set()
    for (prefix, label), colour in zip(LATENCY_LINES, COLOURS):
        for stat, style in STAT_STYLES.items():
            xs, ys = latency_series(report, prefix, stat)
            if xs:
                ax.plot(xs, ys, style, marker="o", markersize=4, color=colour, label=f"{label}, {stat}")
                connections.update(xs)
    if not connections:
        plt.close(figure)
        return False
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(connections), [str(c) for c in sorted(connections)])
    ax.set_yscale("log")
    ax.set_xlabel("connections (wrk)" if report["settings"].get("order_generator") == "wrk" else "connections")
    ax.set_ylabel("latency (ms, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    machine = report.get("machine", {})
    ax.set_title(f"Latency against connections, same run ({machine.get('cores', '?')} cores, 3 members each)")
    save_figure(figure, path)
    return True
