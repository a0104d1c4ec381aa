"""Where a lone order's time goes, from the histograms every service already keeps.

Around the bench's 1-client order point, each process's ``/metrics`` is read before and
after; a histogram's ``_sum`` and ``_count`` deltas give the mean of what it observed in
the window. At one client the stages do not overlap across orders, so their means read
as a breakdown of one order: the frontend's whole handling contains the leader's, which
contains the stock reservation and the Raft round (proposal to commit), which contains
the leader's own fsync and, beside it, a follower's append.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Mapping

# (process, metric name, its labels as exposed) for each stage, outermost first.
STAGES: dict[str, tuple[str, str, str]] = {
    "frontend POST /orders": ("frontend", "toystore_http_request_duration_seconds",
                              'method="POST",route="/orders",status="200"'),
    "leader POST /order": ("leader", "toystore_http_request_duration_seconds",
                           'method="POST",route="/order",status="200"'),
    "catalog reserves (POST /buy_qty)": ("catalog", "toystore_http_request_duration_seconds",
                                         'method="POST",route="/buy_qty",status="200"'),
    "catalog fsync": ("catalog", "toystore_db_commit_seconds", ""),
    "Raft round: proposal to commit": ("leader", "toystore_raft_append_seconds", ""),
    "leader fsync": ("leader", "toystore_db_commit_seconds", ""),
    "follower append (its POST)": ("follower", "toystore_http_request_duration_seconds", 'route="/<any('),
    "follower fsync": ("follower", "toystore_db_commit_seconds", ""),
}

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)_(?P<kind>sum|count)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def exposition(base_url: str, timeout: float = 5.0) -> str:
    """A process's ``GET /metrics``, the Prometheus text format (public, no token)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=timeout) as response:
        return response.read().decode()


def histogram_totals(exposition: str) -> dict[tuple[str, str], tuple[float, float]]:
    """``(name, labels) -> (sum, count)`` of every histogram in a Prometheus text exposition."""
    totals: dict[tuple[str, str], list[float]] = {}
    for line in exposition.splitlines():
        match = _SAMPLE.match(line)
        if match:
            pair = totals.setdefault((match["name"], match["labels"] or ""), [0.0, 0.0])
            pair[0 if match["kind"] == "sum" else 1] = float(match["value"])
    return {key: (pair[0], pair[1]) for key, pair in totals.items()}


def _window(before: Mapping[tuple[str, str], tuple[float, float]],
            after: Mapping[tuple[str, str], tuple[float, float]], name: str, labels: str) -> tuple[float, float]:
    """The (sum, count) observed in the window by the histograms of ``name`` whose labels
    contain ``labels`` (a follower's peer route has one series per status)."""
    total, count = 0.0, 0.0
    for (metric, series), (s, c) in after.items():
        if metric == name and labels in series:
            s0, c0 = before.get((metric, series), (0.0, 0.0))
            total, count = total + s - s0, count + c - c0
    return total, count


def stage_means_ms(before: Mapping[str, Mapping[tuple[str, str], tuple[float, float]]],
                   after: Mapping[str, Mapping[tuple[str, str], tuple[float, float]]]) -> dict[str, dict[str, float]]:
    """Per stage, the mean in milliseconds and how many observations it is the mean of;
    ``before``/``after`` map a process (``frontend``, ``catalog``, ``leader``,
    ``follower``) to its :func:`histogram_totals`. Stages nothing observed are left out."""
    means = {}
    for stage, (process, name, labels) in STAGES.items():
        if process not in after:
            continue
        total, count = _window(before.get(process, {}), after[process], name, labels)
        if count > 0:
            means[stage] = {"mean_ms": round(total / count * 1000, 3), "count": count}
    return means
