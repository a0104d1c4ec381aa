"""The snapshot benchmark's pure parts: options, batches, /proc parsing, log scanning, the
on/off ratios and the table (the measurement itself runs real processes:
``python -m toystore.bench.snapshots``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from toystore.bench import whole_numbers
from toystore.bench.snapshots import (
    DEFAULT_SIZES,
    Budget,
    leader_hint,
    order_batches,
    parse_arguments,
    parse_vmrss_kib,
    ratio,
    render,
    scan_log,
    size_ratios,
    text_table,
)
from toystore.http import MAX_BATCH_ITEMS


def test_defaults_measure_ten_and_a_hundred_thousand_orders() -> None:
    args = parse_arguments([])
    assert args.sizes == DEFAULT_SIZES == (10_000, 100_000)
    assert args.snapshot_every == 10_000 and args.json is None and args.data_dir is None
    assert 1 <= args.connections <= 32
    assert 1 <= args.batch <= MAX_BATCH_ITEMS


def test_sizes_and_json_path_are_read() -> None:
    args = parse_arguments(["--sizes", "1000, 1_000_000", "--json", "out/r.json", "--connections", "4"])
    assert args.sizes == (1000, 1_000_000)
    assert args.json == Path("out/r.json") and args.connections == 4


@pytest.mark.parametrize("text", ["", "10,x", "0", "10,-5"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        whole_numbers(text)


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--batch", str(MAX_BATCH_ITEMS + 1)], ["--connections", "0"],
                                  ["--snapshot-every", "0"], ["--time-limit", "0"]])
def test_bad_options_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_arguments(argv)


def test_batches_hold_every_order_once_within_the_batch_limit() -> None:
    batches = order_batches("run", 1000, 256)
    assert [len(b) for b in batches] == [256, 256, 256, 232]
    ids = [order["request_id"] for batch in batches for order in batch]
    assert len(set(ids)) == 1000 and ids[0] == "run-0" and ids[-1] == "run-999"
    assert all(order["quantity"] == 1 and isinstance(order["name"], str) for batch in batches for order in batch)
    assert order_batches("x", 0, 10) == []


def test_vmrss_is_read_in_kib() -> None:
    status = "Name:\ttwistd\nVmPeak:\t  300000 kB\nVmRSS:\t   65432 kB\nThreads:\t3\n"
    assert parse_vmrss_kib(status) == 65432
    with pytest.raises(ValueError):
        parse_vmrss_kib("Name:\tzombie\n")


def test_ratio_is_none_without_both_figures() -> None:
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 4.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None


def test_leader_hint_comes_from_the_421_error_object() -> None:
    assert leader_hint({"error": {"code": 421, "message": "...", "leader_id": 3}}) == 3
    assert leader_hint({"error": {"code": 421, "message": "...", "leader_id": 0}}) is None
    assert leader_hint({"error": "odd"}) is None and leader_hint({}) is None


def test_log_scan_finds_errors_and_each_tracebacks_exception() -> None:
    lines = [
        "2026-01-01T00:00:00+0000 [toystore.order.service#info] Order replica 1 (raft) restored term 0",
        "2026-01-01T00:00:01+0000 [toystore.raft.snapshots#error] Sending the snapshot to 2 failed",
        "\tTraceback (most recent call last):",
        "\t  File \"x.py\", line 1, in f",
        "\tbuiltins.RuntimeError: asked to install the snapshot at 10",
        "2026-01-01T00:00:02+0000 [toystore.order.api#warn] something mild",
        "2026-01-01T00:00:03+0000 [-] Unhandled Error",
        "\tTraceback (most recent call last):",
        "\tbuiltins.KeyError: 'x'",
    ]
    assert scan_log(lines) == [
        "2026-01-01T00:00:01+0000 [toystore.raft.snapshots#error] Sending the snapshot to 2 failed"
        " -> builtins.RuntimeError: asked to install the snapshot at 10",
        "traceback: builtins.KeyError: 'x'",
    ]
    # twistd ends a traceback with a tab-only line; an error without one stays as it is.
    assert scan_log(lines[1:5] + ["\t", "x [a#critical] down"]) == [
        lines[1] + " -> builtins.RuntimeError: asked to install the snapshot at 10", "x [a#critical] down"]
    assert scan_log(lines[:1] + lines[5:6]) == []


def test_budget_caps_each_wait_and_stops_the_run_when_spent() -> None:
    now = [0.0]
    budget = Budget(100, clock=lambda: now[0])
    assert budget.cap(30, "x") == 30
    now[0] = 90
    assert budget.cap(30, "x") == 10
    now[0] = 101
    with pytest.raises(TimeoutError, match="time limit"):
        budget.cap(30, "the history was posted")


def _run(orders: int, every: int, **figures: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "orders": orders, "snapshot_every": every, "checks": {"history_committed": {"passed": True}},
        "history_s": 8.0, "history_orders_per_s": orders / 8.0, "leader_rss_mib": 60.0,
        "restart_first_order_s": 1.0, "restart_first_answer_s": 0.5, "restarted_leader_rss_mib": 55.0,
        "catchup_s": 0.5,
        "health_after_history": {str(i): {"snapshot_index": 100_000 if every else 0,
                                          "log_entries": 1000 if every else orders} for i in (1, 2, 3)},
        "log_findings": {"count": 0, "by_file": {}, "first": []},
    }
    return {**base, **figures}


def _report(runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"machine": {"cores": 2, "python": "3.11.7", "platform": "Linux", "load_average": [0.1, 0.2, 0.3]},
            "settings": {"sizes": [100_000], "snapshot_every": 10_000, "connections": 16, "batch": 256,
                         "db_delay": 0.0},
            "runs": runs, "ratios": size_ratios(runs), "durations_s": {"total": 60.0}, "error": None, **extra}


def test_ratios_set_each_size_with_snapshots_against_without() -> None:
    runs = [_run(100_000, 10_000, restart_first_order_s=1.0, leader_rss_mib=60.0, catchup_s=2.0,
                 orders_c64_per_s=950.0),
            _run(100_000, 0, restart_first_order_s=4.0, leader_rss_mib=120.0, catchup_s=8.0, orders_c64_per_s=1000.0),
            _run(10_000, 10_000)]  # its baseline missing: no ratio
    assert size_ratios(runs) == [{"orders": 100_000, "restart": 0.25, "leader_rss": 0.5,
                                  "restarted_leader_rss": 1.0, "catchup": 0.25, "throughput": 0.95}]


def test_table_has_a_row_per_run_then_the_ratios() -> None:
    runs = [_run(100_000, 10_000, restart_first_order_s=1.0, leader_rss_mib=60.0),
            _run(100_000, 0, restart_first_order_s=4.0, leader_rss_mib=120.0)]
    text = render(_report(runs))
    assert "2 cores" in text and "batches of 256" in text and "--snapshot-every 10000" in text
    lines = text.splitlines()
    on = next(line for line in lines if "every 10000" in line and line.lstrip().startswith("100,000"))
    off = next(line for line in lines if " off " in line and line.lstrip().startswith("100,000"))
    assert "60.0 MiB" in on and "1.00 s" in on and "100000/1000, 100000/1000, 100000/1000" in on
    assert "120.0 MiB" in off and "4.00 s" in off and "0/100000" in off
    ratio_line = lines[lines.index(next(line for line in lines if line.startswith("Snapshots on / off"))) + 3]
    assert ratio_line.split()[:3] == ["100,000", "0.25", "0.50"]
    assert "Checks: all passed." in text and "no errors or tracebacks" in text


def test_table_reports_failed_checks_log_findings_and_a_stopped_run() -> None:
    bad = _run(10_000, 10_000, checks={"catchup_by_snapshot": {"passed": False, "snapshot_index": 0}},
               log_findings={"count": 2, "by_file": {"order-1": 2},
                             "first": ["order-1: traceback: builtins.RuntimeError: snapshot"]})
    partial = {"orders": 10_000, "snapshot_every": 0, "checks": {}}  # stopped before any figure
    text = render(_report([bad, partial], error="cluster 'n10000-off' did not come up"))
    assert "Checks FAILED:" in text and "catchup_by_snapshot" in text
    assert "run stopped: cluster 'n10000-off' did not come up" in text
    assert "order-1 2" in text and "builtins.RuntimeError: snapshot" in text
    assert "Snapshots on / off" in text  # both halves exist, figures missing show as "-"
    assert size_ratios([bad, partial])[0]["restart"] is None


def test_text_table_aligns_numbers_right_and_words_left() -> None:
    table = text_table(["name", "value"], [["a", "1.5 s"], ["long name", "10.25 s"]]).splitlines()
    assert table[0] == "name         value"
    assert table[2] == "a            1.5 s"
    assert table[3] == "long name  10.25 s"
