"""The benchmark's pure parts: reading wrk's summary, the statistics, the report table and
the option defaults; and the Python load generator's accounting against a tiny local
server. No cluster."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from toystore.bench.__main__ import parse_arguments
from toystore.bench.loadgen import Job, LoadResult, combine, median, parse_wrk_output, percentile, run_python_load, split
from toystore.bench.plot import plot_latency
from toystore.bench.report import Row, latency_series, markdown_table, render, table_rows
from toystore.bench.runner import commit_check, window_ratios

# What wrk 4.1.0 prints with our done() hook (taken from a real run against a 405 route
# for the second line, so every request there is a status error).
WRK_STDOUT = """\
Running 1s test @ http://127.0.0.1:18998/products/Tux
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.28ms    4.60ms  36.81ms   86.39%
    Req/Sec     2.41k     2.85k    7.65k    80.00%
  2408 requests in 1.02s, 486.77KB read
Requests/sec:   2352.02
Transfer/sec:    475.46KB
TOYSTORE-WRK-DONE {"requests": 2408, "duration_us": 1023801, "status_errors": 0, "socket_errors": 0, "p50_us": 665, "p99_us": 23202}
"""


def test_wrk_summary_gives_rate_and_latencies_in_milliseconds() -> None:
    result = parse_wrk_output(WRK_STDOUT, concurrency=4)
    assert (result.generator, result.concurrency, result.completed, result.ok, result.errors) == ("wrk", 4, 2408, 2408, 0)
    assert result.seconds == pytest.approx(1.023801)
    assert result.requests_per_second == pytest.approx(2408 / 1.023801)
    assert (result.p50_ms, result.p99_ms) == (pytest.approx(0.665), pytest.approx(23.202))


def test_wrk_status_and_socket_errors_are_not_counted_as_ok() -> None:
    line = ('TOYSTORE-WRK-DONE {"requests": 287, "duration_us": 1000000, "status_errors": 280, '
            '"socket_errors": 3, "p50_us": 7272, "p99_us": 19422}')
    result = parse_wrk_output(line, concurrency=2)
    assert (result.completed, result.ok, result.errors) == (287, 7, 283)
    assert result.ok_per_second == pytest.approx(7.0)


def test_wrk_output_without_our_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="no summary"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n", concurrency=1)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100, shuffled order must not matter
    shuffled = values[50:] + values[:50]
    assert percentile(shuffled, 0.50) == 50.0
    assert percentile(shuffled, 0.99) == 99.0
    assert percentile(shuffled, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


def test_p99_of_few_samples_is_the_slowest_not_an_interpolation() -> None:
    assert percentile([1.0, 2.0, 3.0, 500.0], 0.99) == 500.0


def test_median_of_odd_and_even_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        median([])


def test_split_spreads_work_evenly_and_loses_none() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 4) == [1, 1, 0, 0]
    assert sum(split(10_000, 64)) == 10_000


def test_rates_of_an_empty_window_are_zero() -> None:
    result = LoadResult(generator="python", concurrency=1, seconds=0.0, completed=0, ok=0, p50_ms=0.0, p99_ms=0.0)
    assert (result.requests_per_second, result.ok_per_second) == (0.0, 0.0)


def test_combined_runs_add_counts_and_keep_the_worst_p99() -> None:
    first = LoadResult(generator="wrk", concurrency=16, seconds=10.0, completed=20_000, ok=20_000,
                       p50_ms=4.0, p99_ms=30.0, generator_cpu_s=3.0)
    second = LoadResult(generator="wrk", concurrency=16, seconds=10.0, completed=10_000, ok=9_990,
                        p50_ms=8.0, p99_ms=20.0, errors=10, generator_cpu_s=2.0)
    both = combine([first, second])
    assert both.ok_per_second == pytest.approx(29_990 / 20)
    assert (both.p50_ms, both.p99_ms, both.errors) == (6.0, 30.0, 10)
    assert both.generator_cores == pytest.approx(0.25)
    assert both.ok_total is None  # wrk cannot know about requests in flight at the end


def test_a_burst_during_one_cached_window_moves_one_ratio_not_the_median() -> None:
    def run(per_second: float) -> LoadResult:
        return LoadResult(generator="wrk", concurrency=16, seconds=3.0, completed=int(per_second * 3),
                          ok=int(per_second * 3), p50_ms=2.0, p99_ms=5.0)

    baseline = [run(6000), run(6000), run(7000), run(7000)]
    cached = [run(5400), run(3000), run(6300)]  # the machine was busy during the second window
    ratios = window_ratios(cached, baseline)
    assert ratios == pytest.approx([0.9, 3000 / 6500, 0.9])
    assert median(ratios) == pytest.approx(0.9)


def _report(**check_overrides: object) -> dict[str, object]:
    figures = {
        "baseline_get_rps": 2000.0, "baseline_get_p50_ms": 5.0, "baseline_get_p99_ms": 20.0,
        "baseline_get_generator_cores": 0.3,
        "cached_get_rps": 1700.0, "cached_get_p50_ms": 6.0, "cached_get_p99_ms": 25.0,
        "cached_get_to_baseline": 0.85, "cached_get_to_baseline_min": 0.7, "cached_get_to_baseline_max": 0.9,
        "uncached_get_rps": 600.0, "uncached_get_p50_ms": 20.0, "uncached_get_p99_ms": 60.0,
        "uncached_get_to_baseline": 0.3,
        "orders_c1_per_s": 90.0, "orders_c1_p50_ms": 10.0, "orders_c1_p99_ms": 30.0,
        "orders_c64_per_s": 1200.0, "orders_c64_p50_ms": 50.0, "orders_c64_p99_ms": 95.0,
        "failover_median_s": 0.9, "failover_min_s": 0.7, "failover_max_s": 1.4,
        "catchup_s": 1.8, "catchup_after_answering_s": 0.4, "catchup_orders": 10000,
    }
    checks = {"orders_c1": {"passed": True, "acknowledged": 900, "committed": 900},
              "orders_c64": {"passed": True, "acknowledged": 12000, "committed": 12000, **check_overrides}}
    return {
        "machine": {"cores": 2, "python": "3.11.7", "platform": "Linux", "load_average": [1.0, 0.5, 0.2],
                    "read_load_generator": "wrk 4.1.0", "order_load_generator": "python"},
        "settings": {"seconds_per_point": 10, "kills": 5, "db_delay": 0.0, "get_concurrency": 16,
                     "order_concurrency": [1, 64]},
        "figures": figures, "checks": checks, "durations_s": {"orders": 35.0, "total": 95.0},
        "all_checks_passed": all(c["passed"] for c in checks.values()),
    }


def test_table_has_one_row_per_figure_in_measuring_order() -> None:
    rows = table_rows(_report())
    assert [row.measurement for row in rows] == [
        "bare Klein baseline, GET (fixed body)",
        "cached GET /products/<name>",
        "uncached GET /products/<name> (cache size 0)",
        "committed orders, 1 client",
        "committed orders, 64 clients",
        "failover: kill -9 leader → next order acknowledged",
        "catch-up of 10,000 missed orders",
    ]
    cached = rows[1]
    assert cached.result == "1,700 req/s"
    assert "0.85 × baseline" in cached.detail and "p99 25.0 ms" in cached.detail
    assert "windows, each against the baseline windows either side: 0.70 to 0.90" in cached.detail
    assert "load generator used 0.30 cores" in rows[0].detail
    assert "12000 acknowledged, 12000 committed" in rows[4].detail
    assert rows[5].result == "median 0.90 s" and "over 5 kills" in rows[5].detail


def test_a_commit_mismatch_shows_in_the_table_and_below_it() -> None:
    report = _report(passed=False, committed=11990)
    assert "MISMATCH" in table_rows(report)[4].detail
    assert "Some checks failed" in render(report)


def test_markdown_table_escapes_pipes_and_keeps_its_columns() -> None:
    text = markdown_table([Row("a|b", "1 req/s", "x")])
    lines = text.splitlines()
    assert lines[:2] == ["| measurement | result | detail |", "|---|---|---|"]
    assert lines[2] == "| a\\|b | 1 req/s | x |"


def test_render_states_machine_generators_and_durations() -> None:
    text = render(_report())
    assert "2 cores, Python 3.11.7" in text
    assert "Reads by wrk 4.1.0; orders by python" in text
    assert "10 s per load point" in text and "whole run 95 s; orders 35 s." in text
    assert "Some checks failed" not in text


def test_cached_reads_are_set_against_the_bare_resource_and_uncached_against_cached() -> None:
    report = _report()
    report["figures"].update({"cached_get_to_bare_resource": 0.92, "cached_get_to_bare_resource_min": 0.9,  # type: ignore[attr-defined]
                              "cached_get_to_bare_resource_max": 0.95, "bare_resource_get_rps": 1850.0,
                              "uncached_get_to_cached": 0.35})
    rows = {row.measurement: row for row in table_rows(report)}
    assert "0.92 × a bare twisted.web Resource** (windows 0.90 to 0.95; it served 1,850 req/s)" in rows[
        "cached GET /products/<name>"].detail
    assert "0.35 × cached" in rows["uncached GET /products/<name> (cache size 0)"].detail


def test_orders_are_set_against_etcd_when_it_was_measured() -> None:
    report = _report()
    report["figures"].update({"etcd_put_c64_per_s": 3000.0, "etcd_put_c64_p50_ms": 20.0,  # type: ignore[attr-defined]
                              "etcd_put_c64_p99_ms": 40.0, "orders_c64_per_s_to_etcd": 0.4,
                              "orders_c64_p50_to_etcd": 2.5})
    rows = table_rows(report)
    orders = next(row for row in rows if row.measurement == "committed orders, 64 clients")
    assert "0.40 × etcd's puts/s" in orders.detail and "p50 2.50 × etcd's" in orders.detail
    etcd = next(row for row in rows if row.measurement.startswith("etcd puts"))
    assert etcd.result == "3,000 puts/s" and "p99 40.0 ms" in etcd.detail
    assert "etcd" not in " ".join(row.detail for row in table_rows(_report()))


def test_render_adds_the_lone_orders_stages_when_measured() -> None:
    assert "Where a lone order's time goes" not in render(_report())
    report = _report()
    report["details"] = {"orders_c1_stages": {
        "leader: stock reserved": {"p50_ms": 1.5, "p99_ms": 4.0, "mean_ms": 1.75, "count": 300},
        "leader fsync": {"p50_ms": None, "p99_ms": None, "mean_ms": 0.5, "count": 600}}}
    lines = render(report).splitlines()
    assert "| leader: stock reserved | 1.50 ms | 4.00 ms | 1.75 ms | 300 |" in lines
    assert "| leader fsync | n/a | n/a | 0.50 ms | 600 |" in lines


def test_latency_lines_are_by_connections_and_only_of_what_was_measured(tmp_path: Path) -> None:
    report = _report()
    report["figures"].update({"etcd_put_c64_p50_ms": 9.0, "etcd_put_c64_p99_ms": 20.0})
    assert latency_series(report, "orders", "p99") == ([1, 64], [30.0, 95.0])
    assert latency_series(report, "etcd_put", "p50") == ([64], [9.0])  # etcd's 1-connection point is missing
    assert plot_latency(report, tmp_path / "latency.png")
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")
    report["figures"] = {}
    assert not plot_latency(report, tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_quick_and_db_delay_shrink_the_defaults() -> None:
    normal = parse_arguments([])
    assert (normal.seconds, normal.kills, normal.catchup_orders) == (10.0, 5, 10_000)
    assert parse_arguments(["--db-delay", "0.2"]).catchup_orders == 500
    quick = parse_arguments(["--quick"])
    assert (quick.seconds, quick.kills) == (1.0, 1) and quick.catchup_orders < 500
    assert parse_arguments(["--quick", "--seconds", "3"]).seconds == 3.0
    assert parse_arguments(["--out", "results"]).out == Path("results")


def test_nonsense_durations_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_arguments(["--seconds", "0"])
    with pytest.raises(SystemExit):
        parse_arguments(["--kills", "0"])


def test_order_client_counts_are_a_comma_separated_list() -> None:
    assert parse_arguments([]).order_clients == (1, 16, 64, 256)
    assert parse_arguments(["--order-clients", "8,128"]).order_clients == (8, 128)
    for nonsense in ("", "0", "4,x", "-1"):
        with pytest.raises(SystemExit):
            parse_arguments(["--order-clients", nonsense])


class _CountingHandler(BaseHTTPRequestHandler):
    """Keep-alive JSON server that refuses every third request with 503."""

    protocol_version = "HTTP/1.1"
    seen = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).seen += 1
            refuse = self.seen % 3 == 0
        body = b'{"data":{}}'
        self.send_response(503 if refuse else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_python_generator_accounts_for_every_request_it_sends() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        job = Job(f"http://127.0.0.1:{server.server_port}/orders", method="POST", body=b'{"name":"Tux"}')
        result = run_python_load(job, concurrency=4, total=300, processes=2)
    finally:
        server.shutdown()
        server.server_close()
    assert _CountingHandler.seen == 300
    assert (result.completed, result.ok, result.ok_total, result.errors, result.unknown) == (300, 200, 200, 100, 0)
    assert result.statuses == {"200": 200, "503": 100}
    assert result.seconds > 0 and result.p99_ms >= result.p50_ms > 0


@pytest.mark.parametrize(("generator", "committed", "passed"), [
    ("python", 100, True), ("python", 99, False), ("python", 101, False),
    ("wrk", 100, True), ("wrk", 99, False), ("wrk", 100 + 16 + 2, True), ("wrk", 100 + 16 + 3, False),
])
def test_commit_check_allows_only_what_the_generator_cannot_have_heard(generator: str, committed: int,
                                                                        passed: bool) -> None:
    result = LoadResult(generator=generator, concurrency=16, seconds=10.0, completed=102, ok=100, p50_ms=1.0,
                        p99_ms=2.0, errors=2, ok_total=100 if generator == "python" else None)
    assert commit_check(result, 100, committed)["passed"] is passed
