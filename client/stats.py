"""What a load run measured, and how it is reported: pure, no I/O.

Sessions record into one :class:`RunStats`; at the end :func:`summarize` turns it into the
stable dict that ``--json`` writes, :func:`format_report` into the table printed, and
:func:`exit_code` into the process status.

Percentiles use the **nearest-rank** method: the p-th percentile of n sorted samples is
the sample at rank ``ceil(p/100 * n)`` (1-based), so it is always a latency that was
actually observed, and p100 is the maximum.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

OPERATIONS = ("query", "order", "verify")

#: Order answers that are normal outcomes of a load run, not errors: 409 is "not enough
#: stock", 404 an unknown product.
EXPECTED_ORDER_FAILURES = frozenset({"409", "404"})

#: How many integrity failures the printed report lists (the JSON keeps them all).
REPORTED_FAILURES = 5


def percentile(samples: Sequence[float], pct: float) -> float | None:
    """The nearest-rank ``pct``-th percentile of ``samples``; None when there are none.

    :param pct: from 0 to 100; 0 gives the minimum.
    """
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, not {pct}")
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class OperationStats:
    """Latencies (seconds) and outcomes of one kind of operation, across all sessions."""

    latencies: list[float] = field(default_factory=list)
    successes: int = 0

    def record(self, seconds: float, ok: bool) -> None:
        self.latencies.append(seconds)
        if ok:
            self.successes += 1

    @property
    def count(self) -> int:
        return len(self.latencies)

    def summary(self) -> dict[str, Any]:
        """Count, successes, success rate (None without samples) and latencies in ms."""

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 3)

        count = self.count
        mean = sum(self.latencies) / count if count else None
        return {
            "count": count,
            "successes": self.successes,
            "success_rate": round(self.successes / count, 4) if count else None,
            "latency_ms": {
                "p50": ms(percentile(self.latencies, 50)),
                "p90": ms(percentile(self.latencies, 90)),
                "p99": ms(percentile(self.latencies, 99)),
                "mean": ms(mean),
            },
        }


@dataclass(frozen=True)
class IntegrityFailure:
    """An acknowledged order that could not be read back as recorded."""

    session: int
    order_number: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.session, "order_number": self.order_number, "reason": self.reason}


@dataclass
class RunStats:
    """Everything one run measured; sessions share one instance (one reactor, no locks)."""

    operations: dict[str, OperationStats] = field(
        default_factory=lambda: {name: OperationStats() for name in OPERATIONS})
    #: Order outcomes by status: "200", "409", "503", ..., or "error" for a transport failure.
    order_outcomes: Counter[str] = field(default_factory=Counter)
    #: Extra attempts made for orders and verifications after a 503 or a connection failure.
    retries: int = 0
    integrity_checked: int = 0
    integrity_failures: list[IntegrityFailure] = field(default_factory=list)
    iterations_done: int = 0

    def unexpected_order_failures(self) -> int:
        """Orders that ended in anything but success, 409 or 404."""
        return sum(n for status, n in self.order_outcomes.items()
                   if status != "200" and status not in EXPECTED_ORDER_FAILURES)


def summarize(stats: RunStats, config: Mapping[str, Any], wall_seconds: float) -> dict[str, Any]:
    """The stable report dict (``--json``): config, operations, throughput, orders, integrity.

    :param wall_seconds: the run's wall time; throughput is all operations over it.
    """
    total_ops = sum(op.count for op in stats.operations.values())
    outcomes = stats.order_outcomes
    return {
        "config": dict(config),
        "wall_seconds": round(wall_seconds, 3),
        "iterations_done": stats.iterations_done,
        "operations": {name: stats.operations[name].summary() for name in OPERATIONS},
        "throughput_ops_per_s": round(total_ops / wall_seconds, 2) if wall_seconds > 0 else None,
        "orders": {
            "placed": outcomes.get("200", 0),
            "not_enough_stock": outcomes.get("409", 0),
            "failed_by_status": {status: n for status, n in sorted(outcomes.items()) if status != "200"},
            "unexpected_failures": stats.unexpected_order_failures(),
            "retries": stats.retries,
        },
        "integrity": {
            "checked": stats.integrity_checked,
            "failures": len(stats.integrity_failures),
            "details": [failure.as_dict() for failure in stats.integrity_failures],
        },
    }


def exit_code(summary: Mapping[str, Any]) -> int:
    """0 when every order read back as recorded and no order failed unexpectedly, else 1."""
    clean = summary["integrity"]["failures"] == 0 and summary["orders"]["unexpected_failures"] == 0
    return 0 if clean else 1


def _cell(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(header), *map(list, rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_report(summary: Mapping[str, Any]) -> str:
    """The human-readable report of a :func:`summarize` dict."""
    config = summary["config"]
    lines = [
        f"toystore load run: {config.get('clients')} sessions x {config.get('iterations')} iterations, "
        f"p={config.get('p')}, seed={config.get('seed')}, frontend {config.get('frontend')}",
        "",
    ]
    rows = []
    for name, op in summary["operations"].items():
        latency = op["latency_ms"]
        rate = None if op["success_rate"] is None else f"{op['success_rate'] * 100:.1f}%"
        rows.append([name, str(op["count"]), str(op["successes"]), _cell(rate),
                     _cell(latency["p50"]), _cell(latency["p90"]), _cell(latency["p99"]), _cell(latency["mean"])])
    lines += _table(["operation", "count", "ok", "ok rate", "p50 ms", "p90 ms", "p99 ms", "mean ms"], rows)
    orders = summary["orders"]
    failed = ", ".join(f"{status}: {n}" for status, n in orders["failed_by_status"].items()) or "none"
    lines += [
        "",
        f"wall time {summary['wall_seconds']} s, throughput {_cell(summary['throughput_ops_per_s'])} ops/s",
        f"orders placed {orders['placed']}, not placed by status: {failed} "
        f"(409 = not enough stock, a normal outcome); unexpected failures {orders['unexpected_failures']}; "
        f"retries {orders['retries']}",
    ]
    queries = summary["operations"]["query"]
    if queries["count"] and not queries["successes"]:
        lines.append(f"warning: no query succeeded; is the frontend at {config.get('frontend')} up?")
    integrity = summary["integrity"]
    verdict = "OK" if integrity["failures"] == 0 else "FAILED"
    lines.append(f"integrity {verdict}: {integrity['checked']} orders checked, {integrity['failures']} failures")
    for detail in integrity["details"][:REPORTED_FAILURES]:
        lines.append(f"  session {detail['session']} order {detail['order_number']}: {detail['reason']}")
    if integrity["failures"] > REPORTED_FAILURES:
        lines.append(f"  ... and {integrity['failures'] - REPORTED_FAILURES} more")
    return "\n".join(lines)
