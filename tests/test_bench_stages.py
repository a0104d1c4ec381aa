"""The lone order's breakdown from histogram deltas: means, and quantiles off the buckets."""

from __future__ import annotations

import pytest

from toystore.bench.stages import Histogram, histograms, stage_figures


def _leader(reserved: tuple[int, int, int], reserved_sum: float, fsyncs: int) -> str:
    """A leader's exposition: the 'reserved' stage with counts at le 1 ms, 2 ms and +Inf
    (cumulative), and ``fsyncs`` commits of 2 ms each."""
    at_1, at_2, total = reserved
    return f"""\
# HELP toystore_order_stage_seconds Stages.
# TYPE toystore_order_stage_seconds histogram
toystore_order_stage_seconds_bucket{{stage="reserved",le="0.001"}} {at_1}.0
toystore_order_stage_seconds_bucket{{stage="reserved",le="0.002"}} {at_2}.0
toystore_order_stage_seconds_bucket{{stage="reserved",le="+Inf"}} {total}.0
toystore_order_stage_seconds_count{{stage="reserved"}} {total}.0
toystore_order_stage_seconds_sum{{stage="reserved"}} {reserved_sum}
toystore_order_stage_seconds_created{{stage="reserved"}} 1.7e9
toystore_db_commit_seconds_bucket{{le="0.001"}} 0.0
toystore_db_commit_seconds_bucket{{le="0.0025"}} {fsyncs}.0
toystore_db_commit_seconds_bucket{{le="+Inf"}} {fsyncs}.0
toystore_db_commit_seconds_sum {0.002 * fsyncs}
toystore_db_commit_seconds_count {fsyncs}.0
"""


def test_a_histogram_is_read_whole_with_its_buckets_apart_from_its_labels() -> None:
    found = histograms(_leader((10, 30, 40), 0.06, 5))
    reserved = found[("toystore_order_stage_seconds", 'stage="reserved"')]
    assert (reserved.sum, reserved.count) == (0.06, 40)
    assert reserved.buckets == {0.001: 10, 0.002: 30, float("inf"): 40}
    assert found[("toystore_db_commit_seconds", "")].buckets[0.0025] == 5


@pytest.mark.parametrize("q,expected", [(0.25, 0.001), (0.5, 0.0015), (0.75, 0.002), (0.125, 0.0005)])
def test_quantiles_interpolate_inside_the_bucket_the_rank_falls_in(q: float, expected: float) -> None:
    histogram = Histogram(buckets={0.001: 10, 0.002: 30, float("inf"): 40})
    assert histogram.quantile(q) == pytest.approx(expected)


def test_a_rank_in_the_top_bucket_reads_as_the_highest_finite_bound_and_nothing_observed_as_none() -> None:
    assert Histogram(buckets={0.001: 1, 0.002: 1, float("inf"): 100}).quantile(0.99) == 0.002
    assert Histogram(buckets={0.001: 0, float("inf"): 0}).quantile(0.5) is None


def test_figures_are_of_the_window_only_and_unobserved_stages_are_left_out() -> None:
    before = {"leader": histograms(_leader((100, 100, 100), 0.05, 7))}
    # In the window: 20 more 'reserved' stages, all between 1 and 2 ms, 30 ms in all.
    after = {"leader": histograms(_leader((100, 120, 120), 0.08, 7))}
    figures = stage_figures(before, after)
    assert figures["leader: stock reserved"] == {"p50_ms": 1.5, "p99_ms": pytest.approx(1.99), "mean_ms": 1.5,
                                                 "count": 20}
    assert "leader fsync" not in figures and "catalog fsync" not in figures  # its count did not move / no catalog
    assert "frontend: answer ready" not in figures  # no frontend scraped


def test_the_series_of_one_stage_are_added_bucket_by_bucket() -> None:
    # A follower's append route has one series per status; the stage is all of them.
    exposition = "".join(
        f'toystore_http_request_duration_seconds_bucket{{route="/<any(x):rpc>",status="{status}",le="{le}"}} {n}\n'
        for status, counts in (("200", (3, 4)), ("400", (0, 2))) for le, n in zip(("0.001", "+Inf"), counts)
    ) + "".join(
        f'toystore_http_request_duration_seconds_{kind}{{route="/<any(x):rpc>",status="{status}"}} {v}\n'
        for status, (s, c) in (("200", (0.006, 4)), ("400", (0.004, 2))) for kind, v in (("sum", s), ("count", c)))
    figures = stage_figures({}, {"follower": histograms(exposition)})
    assert figures["follower append (its POST)"]["count"] == 6
    assert figures["follower append (its POST)"]["mean_ms"] == 1.667  # 10 ms over 6, to the microsecond
    assert figures["follower append (its POST)"]["p50_ms"] == 1.0  # 3 of 6 within 1 ms
