"""The experiment's tables, plot series and options, on made-up figures (no cluster)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from toystore.experiment.__main__ import build_parser, plan_from_args
from toystore.experiment.report import (
    kill_summary, kill_table, kill_timeline, latency_series, latency_table, markdown_table, render_report, settings,
    throughput_series, throughput_table)
from toystore.experiment.runner import PS, QUICK_PS


def summary(query_p50: float | None, order_p50: float | None, throughput: float | None,
            placed: int = 0, failures: int = 0) -> dict[str, Any]:
    """A client ``--json`` dict with the figures the report reads (p90/p99 derived)."""

    def op(p50: float | None) -> dict[str, Any]:
        scale = (lambda k: None) if p50 is None else (lambda k: p50 * k)
        return {"count": 0 if p50 is None else 10, "successes": 0, "success_rate": None,
                "latency_ms": {"p50": scale(1), "p90": scale(2), "p99": scale(3), "mean": scale(1)}}

    return {"operations": {"query": op(query_p50), "order": op(order_p50), "verify": op(None)},
            "throughput_ops_per_s": throughput, "orders": {"placed": placed},
            "integrity": {"failures": failures}}


def load_run(mode: str, delay: float, cache: bool, p: float, **figures: Any) -> dict[str, Any]:
    return {"mode": mode, "db_delay": delay, "cache": cache, "p": p, "summary": summary(**figures)}


RUNS = [
    load_run("raft", 0.0, False, 0.8, query_p50=30.0, order_p50=250.0, throughput=40.0, placed=20),
    load_run("raft", 0.0, True, 0.0, query_p50=10.0, order_p50=None, throughput=200.0),
    load_run("raft", 0.0, False, 0.0, query_p50=30.0, order_p50=None, throughput=120.0),
    load_run("raft", 0.0, True, 0.8, query_p50=12.0, order_p50=240.0, throughput=45.0, placed=21, failures=1),
    load_run("primary-backup", 0.2, True, 0.0, query_p50=5.0, order_p50=None, throughput=300.0),
]


def test_latency_table_has_one_row_per_p_and_cache_in_order() -> None:
    header, rows = latency_table(RUNS, "raft", 0.0)
    assert header[:5] == ["p", "cache", "query p50 ms", "query p90 ms", "query p99 ms"]
    assert [(row[0], row[1]) for row in rows] == [("0.0", "on"), ("0.0", "off"), ("0.8", "on"), ("0.8", "off")]
    on_08 = dict(zip(header, rows[2]))
    assert on_08["order p50 ms"] == "240.0" and on_08["order p99 ms"] == "720.0"
    assert on_08["orders placed"] == "21" and on_08["integrity failures"] == "1"
    assert dict(zip(header, rows[0]))["order p50 ms"] == "-"  # p = 0 places no order


def test_settings_put_raft_first() -> None:
    assert settings(RUNS) == [("raft", 0.0), ("primary-backup", 0.2)]


def test_throughput_table_has_a_column_per_p_and_dashes_where_a_setting_did_not_run() -> None:
    header, rows = throughput_table(RUNS)
    assert header == ["mode", "db-delay s", "cache", "p=0.0", "p=0.8"]
    assert rows == [["raft", "0", "on", "200.0", "45.0"], ["raft", "0", "off", "120.0", "40.0"],
                    ["primary-backup", "0.2", "on", "300.0", "-"]]


def test_series_are_sorted_by_p_and_skip_runs_without_samples() -> None:
    assert latency_series(RUNS, "raft", 0.0, True, "query", "p90") == ([0.0, 0.8], [20.0, 24.0])
    assert latency_series(RUNS, "raft", 0.0, True, "order", "p50") == ([0.8], [240.0])
    assert throughput_series(RUNS, "raft", 0.0, False) == ([0.0, 0.8], [120.0, 40.0])


KILL = {"mode": "raft", "kill_at": 2.0, "killed": 3, "new_leader": 1, "samples": [
    {"t": 1.0, "operation": "query", "latency_s": 0.01, "status": 200},
    {"t": 1.5, "operation": "order", "latency_s": 0.2, "status": 200},
    {"t": 2.1, "operation": "order", "latency_s": 1.4, "status": 200},
    {"t": 2.2, "operation": "order", "latency_s": 0.5, "status": 503},
    {"t": 2.3, "operation": "query", "latency_s": 0.02, "status": None},
]}


def test_kill_timeline_is_relative_to_the_kill_and_splits_failures() -> None:
    lines = kill_timeline(KILL)
    assert lines["order"] == {"ok_t": [-0.5, 0.1], "ok_ms": [200.0, 1400.0], "failed_t": [0.2], "failed_ms": [500.0]}
    assert lines["query"]["failed_t"] == [0.3]


def test_kill_summary_measures_recovery_from_the_kill_to_the_first_acknowledged_order() -> None:
    assert kill_summary(KILL) == {"requests_before": 2, "failed_before": 0, "requests_after": 3,
                                  "failed_after": 2, "max_order_ms_after": 1400.0, "recovery_s": 1.5}
    assert kill_table([KILL])[1] == [["raft", "3", "1", "2", "0", "3", "2", "1400.0", "1.500"]]


def test_kill_summary_without_any_acknowledged_order_after_the_kill() -> None:
    quiet = dict(KILL, samples=KILL["samples"][:2])
    assert kill_summary(quiet)["recovery_s"] is None and kill_summary(quiet)["max_order_ms_after"] is None


def test_markdown_table_right_aligns_numeric_columns() -> None:
    assert markdown_table(["mode", "ms"], [["raft", "1.5"], ["pb", "-"]]).splitlines() == [
        "| mode | ms |", "|---|---:|", "| raft | 1.5 |", "| pb | - |"]


def test_report_has_a_section_and_image_per_setting_and_the_kill() -> None:
    meta = {"clients": 5, "iterations": 5, "seed": 7, "ps": [0.0, 0.8], "modes": ["raft", "primary-backup"],
            "db_delays": [0.0, 0.2], "cache_size": 8, "started": "now", "duration_s": 12.0}
    images = {"latency/raft/0": "latency-raft-delay0.png", "throughput": "throughput.png", "kill/raft": "kill-raft.png"}
    text = render_report(meta, RUNS, [KILL], images)
    assert "## Latency: raft, db-delay 0 s" in text and "## Latency: primary-backup, db-delay 0.2 s" in text
    assert "(latency-raft-delay0.png)" in text and "(throughput.png)" in text and "(kill-raft.png)" in text
    assert "| 0.8 | off | 30.0 |" in text


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["--out", "x", *argv])


def test_full_plan_covers_the_spec_and_quick_plan_is_small() -> None:
    full = plan_from_args(parse())
    assert full.modes == ("raft", "primary-backup") and full.db_delays == (0.0, 0.2)
    assert full.ps == PS == (0.0, 0.2, 0.4, 0.6, 0.8) and full.clients == 5 and full.iterations == 20
    assert len(full.settings()) == 8
    quick = plan_from_args(parse("--quick"))
    assert quick.ps == QUICK_PS and quick.modes == ("raft",) and quick.iterations == 5
    assert plan_from_args(parse("--quick", "--modes", "primary-backup", "--iterations", "3")).modes == (
        "primary-backup",)


@pytest.mark.parametrize("argv", [["--modes", "paxos"], ["--db-delays", "-1"], ["--db-delays", "x"],
                                  ["--iterations", "0"]])
def test_bad_options_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2


def test_out_is_required() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
