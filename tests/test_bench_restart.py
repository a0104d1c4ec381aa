"""The bench's restart-under-load point in the report (the measurement itself runs real
processes: ``scripts/bench --replication primary-backup``)."""

from __future__ import annotations

from tests.test_bench import _report
from toystore.bench.report import table_rows


def test_the_restart_point_reports_the_rates_before_during_and_after() -> None:
    report = _report()
    report["figures"].update({  # type: ignore[attr-defined]
        "restart_before_per_s": 430.0, "restart_down_per_s": 410.0, "restart_rejoin_per_s": 380.0,
        "restart_after_per_s": 420.0, "restart_after_over_before": 0.977, "restart_caught_up_s": 1.4})
    row = table_rows(report)[-1]
    assert row.measurement == "kill -9 and restart of the leader, 64 connections"
    assert row.result == "after/before 0.98"
    assert "430 before, 410 down, 380 rejoining, 420 after" in row.detail
    assert len(table_rows(_report())) == len(table_rows(report)) - 1  # raft runs do not measure it
