"""Where a lone order's time goes, from the histograms every service already keeps.

Around the bench's 1-client order point, each process's ``/metrics`` is read before and
after; a histogram's bucket, ``_sum`` and ``_count`` deltas give what it observed in the
window: its mean, and its p50 and p99 read off the buckets as Prometheus's
``histogram_quantile`` does (linearly inside the bucket the rank falls in).

Two timelines come first, each from the moment its process received the order: the
frontend's (the leader's answer arrived, its own answer ready) and the leader's (stock
reserved, entries appended to its log, durable on its disk, committed on a majority and
applied, answer ready). At one client the orders do not overlap, so the nested figures
after them read as a breakdown of one order: the catalog's reservation and fsync, and a
follower's append, which runs beside the leader's own fsync.
"""

from __future__ import annotations

import math
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Mapping

STAGE_METRIC = "toystore_order_stage_seconds"
HTTP_METRIC = "toystore_http_request_duration_seconds"
FSYNC_METRIC = "toystore_db_commit_seconds"

# (process, metric name, a part of its labels as exposed) for each stage, in timeline order.
STAGES: dict[str, tuple[str, str, str]] = {
    "frontend: leader's answer arrived": ("frontend", STAGE_METRIC, 'stage="leader answered"'),
    "frontend: answer ready": ("frontend", STAGE_METRIC, 'stage="answered"'),
    "leader: stock reserved": ("leader", STAGE_METRIC, 'stage="reserved"'),
    "leader: appended to its log": ("leader", STAGE_METRIC, 'stage="appended"'),
    "leader: durable on its disk": ("leader", STAGE_METRIC, 'stage="durable"'),
    "leader: committed on a majority, applied": ("leader", STAGE_METRIC, 'stage="committed"'),
    "leader: answer ready": ("leader", STAGE_METRIC, 'stage="answered"'),
    "leader fsync": ("leader", FSYNC_METRIC, ""),
    "catalog POST /buy_qty (the reservation)": ("catalog", HTTP_METRIC, 'method="POST",route="/buy_qty",status="200"'),
    "catalog fsync": ("catalog", FSYNC_METRIC, ""),
    "follower append (its POST)": ("follower", HTTP_METRIC, 'route="/<any('),
    "follower fsync": ("follower", FSYNC_METRIC, ""),
}

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)_(?P<kind>bucket|sum|count)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LE = re.compile(r',?le="(?P<bound>[^"]+)"')


@dataclass
class Histogram:
    """One histogram series: its sum and count, and its cumulative count per upper bound."""

    sum: float = 0.0
    count: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, earlier: Histogram | None) -> Histogram:
        """What was observed since ``earlier`` (None: since the start)."""
        if earlier is None:
            return self
        return Histogram(self.sum - earlier.sum, self.count - earlier.count,
                         {bound: n - earlier.buckets.get(bound, 0.0) for bound, n in self.buckets.items()})

    def plus(self, other: Histogram) -> Histogram:
        return Histogram(self.sum + other.sum, self.count + other.count,
                         {bound: self.buckets.get(bound, 0.0) + other.buckets.get(bound, 0.0)
                          for bound in self.buckets.keys() | other.buckets.keys()})

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 to 1) in seconds, interpolated inside its bucket; None when
        nothing was observed. A rank in the top (+Inf) bucket reads as the highest finite bound."""
        bounds = sorted(self.buckets)
        if not bounds or self.buckets[bounds[-1]] <= 0:
            return None
        rank = q * self.buckets[bounds[-1]]
        lower, below = 0.0, 0.0
        for bound in bounds:
            cumulative = self.buckets[bound]
            if cumulative >= rank and cumulative > below:
                if math.isinf(bound):
                    return lower
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return lower


def exposition(base_url: str, timeout: float = 5.0) -> str:
    """A process's ``GET /metrics``, the Prometheus text format (public, no token)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=timeout) as response:
        return response.read().decode()


def histograms(exposition: str) -> dict[tuple[str, str], Histogram]:
    """``(name, labels) -> Histogram`` of every histogram in a Prometheus text exposition;
    ``labels`` as exposed, without ``le``."""
    found: dict[tuple[str, str], Histogram] = {}
    for line in exposition.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels, value = match["labels"] or "", float(match["value"])
        if match["kind"] == "bucket":
            bound = _LE.search(labels)
            if bound is None:
                continue
            histogram = found.setdefault((match["name"], _LE.sub("", labels, count=1)), Histogram())
            histogram.buckets[float(bound["bound"])] = value
        else:
            histogram = found.setdefault((match["name"], labels), Histogram())
            if match["kind"] == "sum":
                histogram.sum = value
            else:
                histogram.count = value
    return found


def _window(before: Mapping[tuple[str, str], Histogram], after: Mapping[tuple[str, str], Histogram],
            name: str, labels: str) -> Histogram:
    """What the histograms of ``name`` whose labels contain ``labels`` observed in the window,
    together (a follower's peer route has one series per status)."""
    total = Histogram()
    for (metric, series), histogram in after.items():
        if metric == name and labels in series:
            total = total.plus(histogram.minus(before.get((metric, series))))
    return total


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def stage_figures(before: Mapping[str, Mapping[tuple[str, str], Histogram]],
                  after: Mapping[str, Mapping[tuple[str, str], Histogram]]) -> dict[str, dict[str, float | None]]:
    """Per stage, its p50, p99 and mean in milliseconds and how many observations they are
    of; ``before``/``after`` map a process (``frontend``, ``catalog``, ``leader``,
    ``follower``) to its :func:`histograms`. Stages nothing observed are left out."""
    figures: dict[str, dict[str, float | None]] = {}
    for stage, (process, name, labels) in STAGES.items():
        if process not in after:
            continue
        observed = _window(before.get(process, {}), after[process], name, labels)
        if observed.count > 0:
            figures[stage] = {"p50_ms": _ms(observed.quantile(0.5)), "p99_ms": _ms(observed.quantile(0.99)),
                              "mean_ms": _ms(observed.sum / observed.count), "count": observed.count}
    return figures
