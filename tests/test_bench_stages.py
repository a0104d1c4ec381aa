"""The lone order's breakdown from histogram deltas."""

from __future__ import annotations

from toystore.bench.stages import histogram_totals, stage_means_ms

EXPOSITION = """\
# HELP toystore_http_request_duration_seconds Request time.
toystore_http_request_duration_seconds_bucket{method="POST",route="/order",status="200",le="0.001"} 1.0
toystore_http_request_duration_seconds_sum{method="POST",route="/order",status="200"} {order_sum}
toystore_http_request_duration_seconds_count{method="POST",route="/order",status="200"} {order_count}
toystore_raft_append_seconds_sum {raft_sum}
toystore_raft_append_seconds_count {raft_count}
toystore_db_commit_seconds_sum 2.0
toystore_db_commit_seconds_count 1000.0
"""


def _leader(order_sum: float, order_count: int, raft_sum: float, raft_count: int) -> str:
    return (EXPOSITION.replace("{order_sum}", str(order_sum)).replace("{order_count}", str(order_count))
            .replace("{raft_sum}", str(raft_sum)).replace("{raft_count}", str(raft_count)))


def test_totals_read_each_histograms_sum_and_count() -> None:
    totals = histogram_totals(_leader(1.5, 300, 0.9, 300))
    assert totals[("toystore_raft_append_seconds", "")] == (0.9, 300.0)
    assert totals[("toystore_http_request_duration_seconds", 'method="POST",route="/order",status="200"')] == (1.5, 300)


def test_means_are_of_the_window_only_and_unobserved_stages_are_left_out() -> None:
    before = {"leader": histogram_totals(_leader(1.0, 100, 0.5, 100))}
    after = {"leader": histogram_totals(_leader(1.6, 200, 0.8, 200))}
    means = stage_means_ms(before, after)
    assert means["leader POST /order"] == {"mean_ms": 6.0, "count": 100}
    assert means["Raft round: proposal to commit"] == {"mean_ms": 3.0, "count": 100}
    assert "leader fsync" not in means  # its count did not move
    assert "frontend POST /orders" not in means  # no frontend scraped
