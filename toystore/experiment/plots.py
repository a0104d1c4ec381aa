"""The experiment's PNG plots (matplotlib, Agg backend: no display needed).

Each function takes the figures of :mod:`toystore.experiment.report` and a path, and
writes one PNG. matplotlib is imported here only, so the rest of the package (and its
tests) work without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from toystore.experiment.report import (  # noqa: E402
    SHOWN_OPERATIONS, KillRun, LoadRun, cache_label, kill_timeline, latency_series, setting_label, settings,
    throughput_series)

CACHE_COLOURS = {True: "tab:blue", False: "tab:orange"}
STAT_STYLES = {"p50": "-", "p90": "--", "p99": ":"}
DPI = 110


def _p_axis(ax: Any, runs: Sequence[LoadRun]) -> None:
    """Every p of the experiment as a tick, so a line with one point still sits in place."""
    ps = sorted({run["p"] for run in runs})
    ax.set_xticks(ps)
    ax.set_xlim(ps[0] - 0.05, ps[-1] + 0.05)
    ax.set_xlabel("order probability p")


def save_figure(figure: Any, path: Path) -> None:
    """Writes ``figure`` as a PNG at ``path`` and frees it."""
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_latency(runs: Sequence[LoadRun], mode: str, db_delay: float, path: Path) -> None:
    """Query and order latency vs p, cache on and off, p50/p90/p99 as line styles."""
    figure, axes = plt.subplots(1, len(SHOWN_OPERATIONS), figsize=(11, 4.2))
    for ax, operation in zip(axes, SHOWN_OPERATIONS):
        for cache in (True, False):
            for stat, style in STAT_STYLES.items():
                xs, ys = latency_series(runs, mode, db_delay, cache, operation, stat)
                if xs:
                    ax.plot(xs, ys, style, marker="o", markersize=4, color=CACHE_COLOURS[cache],
                            label=f"cache {cache_label(cache)} {stat}")
        ax.set_title(f"{operation}")
        _p_axis(ax, runs)
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"Latency per operation vs p: {setting_label(mode, db_delay)}")
    save_figure(figure, path)


def plot_throughput(runs: Sequence[LoadRun], path: Path) -> None:
    """Operations per second vs p, one line per (mode, db-delay, cache)."""
    figure, ax = plt.subplots(figsize=(8, 4.5))
    markers = ["o", "s", "^", "D", "v", "P"]
    for index, (mode, db_delay) in enumerate(settings(runs)):
        for cache in (True, False):
            xs, ys = throughput_series(runs, mode, db_delay, cache)
            if xs:
                ax.plot(xs, ys, "-" if cache else "--", marker=markers[index % len(markers)],
                        label=f"{setting_label(mode, db_delay)}, cache {cache_label(cache)}")
    _p_axis(ax, runs)
    ax.set_ylabel("throughput (operations/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Throughput vs p")
    save_figure(figure, path)


def plot_kill(kill: KillRun, path: Path) -> None:
    """Each request's latency by the time it started, relative to the leader kill."""
    figure, ax = plt.subplots(figsize=(10, 4.5))
    colours = {"query": "tab:blue", "order": "tab:green"}
    for operation, line in sorted(kill_timeline(kill).items()):
        ax.scatter(line["ok_t"], line["ok_ms"], s=10, color=colours.get(operation, "tab:gray"), label=operation)
        if line["failed_t"]:
            ax.scatter(line["failed_t"], line["failed_ms"], s=40, marker="x", color="tab:red",
                       label=f"{operation} failed")
    ax.axvline(0, color="black", linestyle="--", linewidth=1)
    ax.annotate(f"kill -9 leader {kill['killed']}", xy=(0, 1), xycoords=("data", "axes fraction"),
                xytext=(4, -12), textcoords="offset points", fontsize=9)
    ax.set_xlabel("seconds since the leader was killed (request start)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"Latency around a leader kill ({kill['mode']}; new leader {kill['new_leader']})")
    save_figure(figure, path)
