"""The load client: pure statistics, sessions against an in-memory fake frontend, options.

No sockets: the fake frontend is a Klein app behind ``StubTreq``, time is a ``task.Clock``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from client.run import RunOptions, parse_args, run_sessions
from client.session import TOYS, Session, SessionConfig
from client.stats import (IntegrityFailure, OperationStats, RunStats, exit_code, format_report, percentile,
                          summarize)
from toystore.http import ApiError, install_json_errors, json_response, read_json_object

FRONTEND = "http://frontend.test"


class FakeFrontend:
    """The frontend's public API in memory, with knobs to misbehave."""

    app = Klein()

    def __init__(self, stock: int = 100) -> None:
        self.stock = dict.fromkeys(TOYS, stock)
        self.orders: list[dict[str, Any]] = []
        self.numbers_by_key: dict[str, int] = {}
        #: Every POST /orders as received: (Idempotency-Key or None, body).
        self.order_posts: list[tuple[str | None, dict[str, Any]]] = []
        self.order_reads: list[int] = []
        #: Answer this many coming POST /orders with 503 (before touching anything).
        self.unavailable_posts = 0
        self.retry_after = "1"
        #: Rewrites an order on GET /orders/<n>; None makes it a 404.
        self.tamper: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda order: order

    @app.route("/products/<name>", methods=["GET"])
    async def product(self, request: IRequest, name: str) -> bytes:
        if name not in self.stock:
            raise ApiError(404, f"No toy named {name!r}.")
        return json_response(request, {"name": name, "price": 9.99, "quantity": self.stock[name]})

    @app.route("/orders", methods=["POST"])
    async def place(self, request: IRequest) -> bytes:
        body = read_json_object(request)
        raw_key = request.getHeader(b"idempotency-key")
        key = raw_key.decode("ascii") if raw_key is not None else None
        self.order_posts.append((key, body))
        if self.unavailable_posts:
            self.unavailable_posts -= 1
            raise ApiError(503, "No order leader is reachable.", headers={"Retry-After": self.retry_after})
        if key is not None and key in self.numbers_by_key:
            return json_response(request, {"order_number": self.numbers_by_key[key]})
        name, quantity = body["name"], body["quantity"]
        if self.stock[name] < quantity:
            raise ApiError(409, "Not enough stock.")
        self.stock[name] -= quantity
        number = len(self.orders)
        self.orders.append({"number": number, "name": name, "quantity": quantity})
        if key is not None:
            self.numbers_by_key[key] = number
        return json_response(request, {"order_number": number})

    @app.route("/orders/<int:number>", methods=["GET"])
    async def read(self, request: IRequest, number: int) -> bytes:
        self.order_reads.append(number)
        order = self.tamper(self.orders[number]) if number < len(self.orders) else None
        if order is None:
            raise ApiError(404, f"No order number {number}.")
        return json_response(request, order)


install_json_errors(FakeFrontend.app)


def drive(d: Deferred[Any], stub: StubTreq, clock: Clock, step: float = 0.1, limit: float = 600) -> Any:
    """Pump the in-memory HTTP and the clock until ``d`` has a result; return it."""
    results: list[Any] = []
    d.addBoth(results.append)
    waited = 0.0
    stub.flush()
    while not results:
        assert waited < limit, "the session never finished"
        clock.advance(step)
        waited += step
        stub.flush()
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def run_session(fake: FakeFrontend, p: float, iterations: int = 20, seed: int = 7,
                quantity_max: int = 3, http: Any = None) -> tuple[Session, RunStats]:
    clock = Clock()
    stub = StubTreq(fake.app.resource())
    stats = RunStats()
    session = Session(0, SessionConfig(FRONTEND, iterations, p, quantity_max), http or stub, clock,
                      random.Random(seed), stats)
    drive(ensureDeferred(session.run()), stub, clock)
    return session, stats


# -- statistics ------------------------------------------------------------------------------

def test_percentile_nearest_rank_on_known_data() -> None:
    samples = [7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]  # 1..10, unsorted
    assert percentile(samples, 50) == 5.0
    assert percentile(samples, 90) == 9.0
    assert percentile(samples, 99) == 10.0
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 10.0
    assert percentile(samples, 51) == 6.0
    assert percentile([42.0], 99) == 42.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(samples, 101)


def test_operation_summary_counts_rates_and_milliseconds() -> None:
    op = OperationStats()
    for seconds, ok in [(0.010, True), (0.020, True), (0.030, False), (0.040, True)]:
        op.record(seconds, ok)
    summary = op.summary()
    assert (summary["count"], summary["successes"], summary["success_rate"]) == (4, 3, 0.75)
    assert summary["latency_ms"] == {"p50": 20.0, "p90": 40.0, "p99": 40.0, "mean": 25.0}
    assert OperationStats().summary()["success_rate"] is None


def _stats_with(outcomes: dict[str, int], failures: int = 0) -> RunStats:
    stats = RunStats()
    for name in ("query", "order", "verify"):
        stats.operations[name].record(0.5, True)
    stats.order_outcomes.update(outcomes)
    stats.integrity_checked = outcomes.get("200", 0)
    stats.integrity_failures = [IntegrityFailure(0, n, "lost") for n in range(failures)]
    return stats


def test_summary_has_the_stable_json_shape() -> None:
    summary = summarize(_stats_with({"200": 5, "409": 2, "503": 1}), {"clients": 2, "seed": 1}, wall_seconds=1.5)
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary) >= {"config", "operations", "throughput_ops_per_s", "integrity"}
    assert list(summary["operations"]) == ["query", "order", "verify"]
    assert set(summary["operations"]["order"]) == {"count", "successes", "success_rate", "latency_ms"}
    assert set(summary["operations"]["order"]["latency_ms"]) == {"p50", "p90", "p99", "mean"}
    assert set(summary["integrity"]) == {"checked", "failures", "details"}
    assert summary["config"] == {"clients": 2, "seed": 1}
    assert summary["throughput_ops_per_s"] == 2.0  # three operations in 1.5 s
    assert summary["orders"]["placed"] == 5
    assert summary["orders"]["not_enough_stock"] == 2
    assert summary["orders"]["failed_by_status"] == {"409": 2, "503": 1}
    assert summary["orders"]["unexpected_failures"] == 1


@pytest.mark.parametrize("outcomes, failures, code", [
    ({"200": 3, "409": 4, "404": 1}, 0, 0),  # stock running out is normal
    ({"200": 3, "500": 1}, 0, 1),
    ({"200": 3, "error": 1}, 0, 1),  # no answer even after retries
    ({"200": 3}, 1, 1),
])
def test_exit_code_follows_integrity_and_unexpected_order_failures(
        outcomes: dict[str, int], failures: int, code: int) -> None:
    assert exit_code(summarize(_stats_with(outcomes, failures), {}, 1.0)) == code


def test_report_lists_the_first_integrity_failures_and_counts_the_rest() -> None:
    report = format_report(summarize(_stats_with({"200": 9}, failures=7), {"seed": 3}, 1.0))
    assert "seed=3" in report
    assert "integrity FAILED: 9 orders checked, 7 failures" in report
    assert "session 0 order 4: lost" in report
    assert "session 0 order 5" not in report
    assert "... and 2 more" in report


# -- sessions against the fake frontend --------------------------------------------------------

def test_p_zero_never_orders() -> None:
    fake = FakeFrontend()
    _, stats = run_session(fake, p=0.0)
    assert fake.order_posts == []
    assert stats.operations["query"].count == stats.operations["query"].successes == 20
    assert stats.iterations_done == 20


def test_p_one_orders_every_toy_in_stock_with_its_own_key() -> None:
    fake = FakeFrontend()
    session, stats = run_session(fake, p=1.0, quantity_max=3)
    assert len(fake.order_posts) == 20
    keys = [key for key, _ in fake.order_posts]
    assert all(key for key in keys) and len(set(keys)) == 20
    assert all(1 <= body["quantity"] <= 3 and body["name"] in TOYS for _, body in fake.order_posts)
    assert [(o.number, o.name, o.quantity) for o in session.placed] == \
        [(o["number"], o["name"], o["quantity"]) for o in fake.orders]
    assert stats.order_outcomes == {"200": 20}


def test_no_order_when_the_toy_is_out_of_stock() -> None:
    fake = FakeFrontend(stock=0)
    _, stats = run_session(fake, p=1.0)
    assert fake.order_posts == []
    assert stats.operations["order"].count == 0


def test_order_rate_follows_p() -> None:
    fake = FakeFrontend(stock=10_000)
    _, stats = run_session(fake, p=0.3, iterations=400, quantity_max=1)
    assert 80 <= len(fake.order_posts) <= 160  # 120 expected; bounds are > 4 standard deviations


def test_short_stock_gives_409_which_is_not_an_error() -> None:
    fake = FakeFrontend(stock=4)
    _, stats = run_session(fake, p=1.0, iterations=60)
    assert stats.order_outcomes["409"] > 0
    summary = summarize(stats, {}, 1.0)
    assert summary["orders"]["unexpected_failures"] == 0
    assert exit_code(summary) == 0


def test_the_same_seed_makes_the_same_choices() -> None:
    first, second = FakeFrontend(), FakeFrontend()
    run_session(first, p=0.5, seed=11)
    run_session(second, p=0.5, seed=11)
    assert [body for _, body in first.order_posts] == [body for _, body in second.order_posts]
    assert {key for key, _ in first.order_posts}.isdisjoint(key for key, _ in second.order_posts)


def test_retry_after_503_reuses_the_key_and_honours_retry_after() -> None:
    fake = FakeFrontend()
    fake.unavailable_posts = 2
    fake.retry_after = "1.5"
    clock = Clock()
    stub = StubTreq(fake.app.resource())
    stats = RunStats()
    session = Session(0, SessionConfig(FRONTEND, 1, 1.0), stub, clock, random.Random(1), stats)
    d = ensureDeferred(session.run())
    stub.flush()
    assert len(fake.order_posts) == 1
    clock.advance(1.4)
    stub.flush()
    assert len(fake.order_posts) == 1  # still waiting out Retry-After
    clock.advance(0.1)
    stub.flush()
    assert len(fake.order_posts) == 2
    drive(d, stub, clock)
    keys = {key for key, _ in fake.order_posts}
    assert len(fake.order_posts) == 3 and len(keys) == 1
    assert stats.retries == 2
    assert stats.order_outcomes == {"200": 1}
    assert len(session.placed) == 1 and len(fake.orders) == 1


def test_retry_after_is_capped_at_two_seconds() -> None:
    fake = FakeFrontend()
    fake.unavailable_posts = 1
    fake.retry_after = "30"
    clock = Clock()
    stub = StubTreq(fake.app.resource())
    session = Session(0, SessionConfig(FRONTEND, 1, 1.0), stub, clock, random.Random(1), RunStats())
    d = ensureDeferred(session.run())
    stub.flush()
    clock.advance(2.0)
    stub.flush()
    assert len(fake.order_posts) == 2
    drive(d, stub, clock)


def test_gives_up_after_three_retries() -> None:
    fake = FakeFrontend()
    fake.unavailable_posts = 100
    _, stats = run_session(fake, p=1.0, iterations=1)
    assert len(fake.order_posts) == 4
    assert stats.order_outcomes == {"503": 1}
    assert exit_code(summarize(stats, {}, 1.0)) == 1


def test_connection_failure_is_retried_with_the_same_key() -> None:
    fake = FakeFrontend()
    stub = StubTreq(fake.app.resource())
    sent_keys: list[list[bytes]] = []

    class RefuseFirstPost:
        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            if method == "POST":
                sent_keys.append(kwargs["headers"][b"Idempotency-Key"])
                if len(sent_keys) == 1:
                    return fail(ConnectionRefusedError())
            return stub.request(method, url, **kwargs)

    clock = Clock()
    stats = RunStats()
    session = Session(0, SessionConfig(FRONTEND, 1, 1.0), RefuseFirstPost(), clock, random.Random(1), stats)
    drive(ensureDeferred(session.run()), stub, clock)
    assert len(sent_keys) == 2 and sent_keys[0] == sent_keys[1]
    assert stats.order_outcomes == {"200": 1}
    assert stats.retries == 1


def test_every_order_is_verified_at_the_end() -> None:
    fake = FakeFrontend()
    session, stats = run_session(fake, p=0.7, iterations=30)
    assert fake.order_reads == [order.number for order in session.placed] != []
    assert stats.integrity_checked == len(session.placed)
    assert stats.integrity_failures == []
    assert stats.operations["verify"].successes == len(session.placed)


def test_wrong_quantity_on_read_back_is_an_integrity_failure() -> None:
    fake = FakeFrontend()
    fake.tamper = lambda order: {**order, "quantity": order["quantity"] + 1}
    session, stats = run_session(fake, p=1.0, iterations=5)
    assert len(stats.integrity_failures) == stats.integrity_checked == 5
    assert "quantity" in stats.integrity_failures[0].reason
    assert exit_code(summarize(stats, {}, 1.0)) == 1


def test_missing_acknowledged_order_is_an_integrity_failure() -> None:
    fake = FakeFrontend()
    fake.tamper = lambda order: None if order["number"] == 2 else order
    _, stats = run_session(fake, p=1.0, iterations=5)
    assert [failure.order_number for failure in stats.integrity_failures] == [2]
    assert "404" in stats.integrity_failures[0].reason
    assert exit_code(summarize(stats, {}, 1.0)) == 1


def test_run_sessions_reports_every_session() -> None:
    fake = FakeFrontend()
    clock = Clock()
    stub = StubTreq(fake.app.resource())
    options = RunOptions(FRONTEND, clients=3, iterations=10, p=0.5, seed=5, quantity_max=2, timeout=10.0,
                         json_file=None, progress=False)
    summary = drive(ensureDeferred(run_sessions(options, stub, clock, progress=None)), stub, clock)
    assert summary["iterations_done"] == 30
    assert summary["operations"]["query"]["count"] == 30
    assert summary["orders"]["placed"] == len(fake.orders) == summary["integrity"]["checked"]
    assert summary["config"]["seed"] == 5 and "json_file" not in summary["config"]
    assert exit_code(summary) == 0


# -- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, complaint", [
    (["-p", "1.5"], "-p: 1.5 is out of range"),
    (["-p", "-0.1"], "-p: -0.1 is out of range"),
    (["--clients", "0"], "--clients: 0 is out of range"),
    (["--frontend", "ftp://x"], "is not a URL"),
])
def test_bad_arguments_exit_2_with_a_clear_message(
        argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_defaults_and_a_chosen_seed() -> None:
    options = parse_args([])
    assert (options.frontend, options.clients, options.iterations, options.p) == ("http://127.0.0.1:8000", 5, 20, 0.5)
    assert (options.quantity_max, options.timeout, options.progress) == (3, 10.0, True)
    assert isinstance(options.seed, int)
    assert parse_args(["--seed", "9", "--no-progress"]).seed == 9


def test_command_line_exits_2_on_bad_probability() -> None:
    done = subprocess.run([sys.executable, "-m", "client", "-p", "1.5"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert done.returncode == 2
    assert "-p: 1.5 is out of range: must be from 0 to 1" in done.stderr
