"""The catalog benchmark's pure parts: the comparison of 3 members against 1, its checks, the report."""

from __future__ import annotations

from pathlib import Path

from toystore.bench.catalog import CatalogBench, parse_arguments, render


def _bench(**figures: object) -> CatalogBench:
    bench = CatalogBench(Path("/nowhere"), connections=64, seconds=10.0, kills=5, say=lambda line: None)
    bench.run.update(figures)
    return bench


def test_the_replicated_figures_are_set_against_the_lone_catalogs_of_the_same_run() -> None:
    bench = _bench(orders_per_s_1=1000.0, orders_per_s_3=800.0, orders_c1_p50_ms_1=7.0, orders_c1_p50_ms_3=10.5,
                   catalog_failover_s=[1.1, 1.3, 2.0], catalog_failover_median_s=1.3,
                   orders_failed_1=0, orders_failed_3=0)
    bench._compare()
    run = bench.run
    assert (run["orders_per_s_3_to_1"], run["orders_c1_p50_3_to_1"]) == (0.8, 1.5)
    assert all(check["passed"] for check in run["checks"].values()), run["checks"]


def test_a_cost_over_a_quarter_a_slow_failover_or_a_failed_order_fails_its_check() -> None:
    bench = _bench(orders_per_s_1=1000.0, orders_per_s_3=700.0, catalog_failover_median_s=1.6,
                   orders_failed_1=0, orders_failed_3=2)
    bench._compare()
    checks = bench.run["checks"]
    assert not checks["throughput_cost_at_most_25_percent"]["passed"]
    assert not checks["catalog_failover_median_at_most_1_5_s"]["passed"]
    assert checks["no_order_failed"] == {"passed": False, "failed": 2}


def test_the_report_names_every_figure_and_where_the_cpu_goes() -> None:
    bench = _bench(orders_per_s_1=1914.0, orders_per_s_3=1377.5, orders_c1_p50_ms_1=6.92, orders_c1_p50_ms_3=10.28,
                   catalog_failover_median_s=1.336, cpu_us_per_order_1={"catalog": 122, "order": 471, "frontend": 268},
                   cpu_us_per_order_3={"catalog": 604, "order": 497, "frontend": 283},
                   orders_failed_1=0, orders_failed_3=0)
    bench._compare()
    text = render({"run": bench.run})
    assert "1,914.000" in text and "1,377.500" in text and "0.720" in text
    assert "10.280 ms" in text and "1.336 s" in text
    assert "CPU per order at 64 connections: catalog" in text and "604 us" in text and "4.951" in text
    assert "throughput_cost_at_most_25_percent" in text and "FAILED" in text


def test_arguments_default_to_the_issues_figures() -> None:
    args = parse_arguments([])
    assert (args.connections, args.seconds, args.kills) == (64, 10.0, 5)
