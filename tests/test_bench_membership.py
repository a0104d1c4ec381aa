"""The membership benchmark's pure parts: the pause between acknowledgements, and the report."""

from __future__ import annotations

from toystore.bench.membership import parse_arguments, render
from toystore.bench.orderload import OrderLoad


def test_the_longest_pause_counts_from_the_window_edges() -> None:
    load = OrderLoad("http://127.0.0.1:1", connections=1)
    load.acknowledged += [(10.2, "a", 0), (10.3, "b", 1), (11.0, "c", 2), (20.0, "late", 3)]
    assert round(load.longest_pause(10.0, 11.5), 3) == 0.7  # 10.3 to 11.0
    assert round(load.longest_pause(11.0, 14.0), 3) == 3.0  # nothing after 11.0 until the end
    assert load.longest_pause(12.0, 13.0) == 1.0  # nothing at all


def test_the_report_names_every_figure_and_a_failed_check() -> None:
    report = {"run": {"orders": 100_000, "snapshot_every": 10_000, "connections": 16, "add_member_s": 1.4241,
                      "replace_s": 2.1, "new_leader_after_s": 6.3, "longest_pause_s": 0.403,
                      "during_to_before": 1.08, "orders_failed": 2,
                      "checks": {"none_failed_or_lost": {"passed": False, "failed": 2, "lost": 0}}}}
    text = render(report)
    assert "1.424 s" in text and "0.403 s" in text and "100,000 orders" in text
    assert 'none_failed_or_lost  ' in text and 'FAILED {"passed": false, "failed": 2' in text


def test_arguments_default_to_the_issues_figures() -> None:
    args = parse_arguments([])
    assert (args.orders, args.connections) == (100_000, 16)
