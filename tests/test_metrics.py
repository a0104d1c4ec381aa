"""Metrics in memory: requests counted per route pattern and status at the wrapper,
``/metrics`` in the Prometheus text format, and the domain collectors reading real state."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from klein import Klein
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest

from toystore.catalog.store import CatalogStore, open_database
from toystore.frontend.cache import LruCache
from toystore.frontend.leader import OrderLeaderTracker
from toystore.http import ApiError, Utf8PathGuard, install_json_errors, json_response
from toystore.metrics import (
    CacheCollector,
    CatalogCollector,
    ElectionCounter,
    LeaderCollector,
    ReplicaCollector,
    ServiceMetrics,
    SnapshotCollector,
    TransportCollector,
    UNMATCHED,
    raft_status,
    watch_database,
    watch_raft,
    watch_stages,
)
from toystore.raft.messages import Role
from toystore.timeline import StageTimer

_case = SynchronousTestCase()

Samples = dict[str, list[tuple[dict[str, str], float]]]


class ToyApi:
    """A small Klein app standing in for a service's routes."""

    app = Klein()

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @app.route("/items/<string:name>", methods=["GET"])
    async def item(self, request: IRequest, name: str) -> bytes:
        if name == "missing":
            raise ApiError(404, "No such item.")
        return json_response(request, {"name": name})

    @app.route("/slow", methods=["POST"])
    async def slow(self, request: IRequest) -> bytes:
        await deferLater(self._clock, 0.25)
        return json_response(request, {"done": True})


install_json_errors(ToyApi.app)


def serve(clock: Clock) -> tuple[ServiceMetrics, StubTreq]:
    metrics = ServiceMetrics(clock)
    root = metrics.wrap(Utf8PathGuard(ToyApi(clock).app.resource()), ToyApi.app)
    return metrics, StubTreq(root)


def request(stub: StubTreq, method: str, url: str) -> tuple[int, bytes, Any]:
    d = stub.request(method, "http://service" + url)
    stub.flush()
    response = _case.successResultOf(d)
    body = stub.content(response)
    stub.flush()
    return response.code, _case.successResultOf(body), response.headers


def scrape(stub: StubTreq) -> Samples:
    code, body, headers = request(stub, "GET", "/metrics")
    assert code == 200
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4")
    return parsed(body.decode("utf-8"))


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {found[label] for found, _ in samples.get(name, [])}


def parsed(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def exposed(metrics: ServiceMetrics) -> Samples:
    return parsed(_case.successResultOf(defer.ensureDeferred(metrics.exposition())).decode("utf-8"))


def collected(collector: Any) -> Samples:
    samples: Samples = {}
    for family in collector.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


# ---------------------------------------------------------------- the wrapper


def test_requests_are_counted_per_route_pattern_and_status() -> None:
    _, stub = serve(Clock())
    assert request(stub, "GET", "/items/a")[0] == 200
    assert request(stub, "GET", "/items/b")[0] == 200
    assert request(stub, "GET", "/items/missing")[0] == 404
    samples = scrape(stub)
    route = "/items/<string:name>"
    assert value(samples, "toystore_http_requests_total", route=route, method="GET", status="200") == 2
    assert value(samples, "toystore_http_requests_total", route=route, method="GET", status="404") == 1
    assert label_values(samples, "toystore_http_requests_total", "route") == {route}
    assert value(samples, "toystore_http_request_duration_seconds_count", route=route, status="200") == 2


def test_unknown_paths_share_one_label_value() -> None:
    _, stub = serve(Clock())
    for path in ("/nope", "/x/y/z", "/items", "/items/a/b", "/%ff%fe"):
        assert request(stub, "GET", path)[0] in (400, 404)
    samples = scrape(stub)
    # The scrape itself is counted once it has finished, so it shows from the next one.
    assert label_values(samples, "toystore_http_requests_total", "route") == {UNMATCHED}
    assert value(samples, "toystore_http_requests_total", route=UNMATCHED) == 5
    # And once more: a fresh random path adds no label value.
    request(stub, "GET", "/random-4711")
    again = scrape(stub)
    assert label_values(again, "toystore_http_requests_total", "route") == {UNMATCHED, "/metrics"}


def test_a_wrong_method_counts_against_its_route() -> None:
    _, stub = serve(Clock())
    assert request(stub, "POST", "/items/a")[0] == 405
    samples = scrape(stub)
    assert value(samples, "toystore_http_requests_total", route="/items/<string:name>", method="POST",
                 status="405") == 1


def test_latency_is_measured_on_the_clock_until_the_answer_is_finished() -> None:
    clock = Clock()
    _, stub = serve(clock)
    d = stub.request("POST", "http://service/slow")
    stub.flush()
    clock.advance(0.25)
    stub.flush()
    assert _case.successResultOf(d).code == 200
    samples = scrape(stub)
    assert value(samples, "toystore_http_request_duration_seconds_sum", route="/slow") == 0.25
    assert value(samples, "toystore_http_request_duration_seconds_bucket", route="/slow", le="0.1") == 0
    assert value(samples, "toystore_http_request_duration_seconds_bucket", route="/slow", le="0.25") == 1


def test_metrics_is_public_and_counted_like_any_route() -> None:
    _, stub = serve(Clock())
    scrape(stub)
    samples = scrape(stub)
    assert value(samples, "toystore_http_requests_total", route="/metrics", status="200") == 1
    code, body, _ = request(stub, "POST", "/metrics")
    assert code == 405 and b'"code":405' in body


def test_each_service_has_its_own_registry() -> None:
    _, first = serve(Clock())
    _, second = serve(Clock())
    request(first, "GET", "/items/a")
    assert value(scrape(second), "toystore_http_requests_total", route="/items/<string:name>") == 0


def test_a_failing_refresh_still_answers_with_the_last_figures() -> None:
    class BrokenLedger:
        async def ledger(self) -> dict[str, Any]:
            raise OSError("disk gone")

    metrics, stub = serve(Clock())
    metrics.add(CatalogCollector(BrokenLedger().ledger))
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        request(stub, "GET", "/items/a")
        samples = scrape(stub)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert value(samples, "toystore_http_requests_total", route="/items/<string:name>") == 1
    assert "toystore_catalog_stock" not in samples
    assert any("log_failure" in event and "disk gone" in str(event["log_failure"].value) for event in logged)


# ---------------------------------------------------------------- domain collectors


def test_cache_collector_reads_the_cache_stats() -> None:
    cache: LruCache[str] = LruCache(2)
    cache.get("Tux")
    cache.put("Tux", "t")
    cache.get("Tux")
    cache.get("Tux")
    cache.invalidate("Whale")
    samples = collected(CacheCollector(cache))
    assert value(samples, "toystore_cache_hits_total") == 2
    assert value(samples, "toystore_cache_misses_total") == 1
    assert value(samples, "toystore_cache_invalidations_total") == 1
    assert value(samples, "toystore_cache_size") == 1
    assert value(samples, "toystore_cache_capacity") == 2


def test_leader_collector_reports_the_leader_and_failovers() -> None:
    tracker = OrderLeaderTracker({1: "http://r1", 2: "http://r2", 3: "http://r3"}, client=None,  # type: ignore[arg-type]
                                 clock=Clock(), token=None)
    collector = LeaderCollector(tracker)
    assert value(collected(collector), "toystore_frontend_order_leader_id") == 0
    tracker.note_leader_hint(3, None)
    tracker.mark_failed(3)
    tracker.note_leader_hint(3, None)  # the same leader again: no failover
    assert value(collected(collector), "toystore_frontend_failovers_total") == 0
    tracker.note_leader_hint(2, None)
    samples = collected(collector)
    assert value(samples, "toystore_frontend_order_leader_id") == 2
    assert value(samples, "toystore_frontend_failovers_total") == 1


class FakeCore:
    applied_index = 6


class FakeNode:
    def __init__(self) -> None:
        self.core = FakeCore()
        self.role_listeners: list[Any] = []
        self.commit_listeners: list[Any] = []

    def status(self) -> dict[str, Any]:
        return {"id": 2, "role": "leader", "term": 4, "leader_id": 2, "commit_index": 7, "last_index": 9,
                "snapshot_index": 5, "log_entries": 4}


def test_replica_collector_reports_the_raft_state() -> None:
    samples = collected(ReplicaCollector(lambda: raft_status(FakeNode())))  # type: ignore[arg-type]
    assert value(samples, "toystore_replica_term") == 4
    assert value(samples, "toystore_replica_commit_index") == 7
    assert value(samples, "toystore_replica_last_index") == 9
    assert value(samples, "toystore_replica_applied_index") == 6
    assert value(samples, "toystore_replica_snapshot_index") == 5
    assert value(samples, "toystore_replica_log_entries") == 4
    assert value(samples, "toystore_replica_leader_id") == 2
    assert value(samples, "toystore_replica_role", role="leader") == 1
    assert value(samples, "toystore_replica_role", role="follower") == 0


def test_a_hosts_status_brings_its_settlement_counts_and_the_transport_its_drops() -> None:
    node = FakeNode()
    status = {**node.status(), "settlement": {"confirmed": 5, "released": 2, "refused": 1, "failed": 0}}
    metrics = ServiceMetrics(Clock())
    watch_raft(metrics, node, lambda: status)  # type: ignore[arg-type]
    metrics.add(TransportCollector(SimpleNamespace(posts=40, dropped=3)))  # type: ignore[arg-type]
    metrics.add(SnapshotCollector(SimpleNamespace(chunks_sent=7, bytes_sent=9000)))  # type: ignore[arg-type]
    samples = exposed(metrics)
    assert value(samples, "toystore_replica_settled_reservations_total", outcome="confirmed") == 5
    assert value(samples, "toystore_replica_settled_reservations_total", outcome="refused") == 1
    assert value(samples, "toystore_replica_applied_index") == 6
    assert value(samples, "toystore_raft_posts_total") == 40
    assert value(samples, "toystore_raft_messages_dropped_total") == 3
    assert value(samples, "toystore_raft_snapshot_chunks_sent_total") == 7
    assert value(samples, "toystore_raft_snapshot_bytes_sent_total") == 9000


def test_elections_are_counted_from_role_changes() -> None:
    counter = ElectionCounter()
    for role in (Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.CANDIDATE, Role.FOLLOWER,
                 Role.CANDIDATE, Role.LEADER, Role.LEADER, Role.FOLLOWER):
        counter.role_changed(role, 0)
    samples = collected(counter)
    assert value(samples, "toystore_raft_elections_total", outcome="started") == 2
    assert value(samples, "toystore_raft_elections_total", outcome="won") == 1


def test_append_latency_and_elections_come_from_the_nodes_listeners() -> None:
    clock = Clock()
    metrics = ServiceMetrics(clock)
    node = FakeNode()
    watch_raft(metrics, node)  # type: ignore[arg-type]
    for listener in node.commit_listeners:
        listener(0.04)
    node.role_listeners[0](Role.LEADER, 2)
    samples = exposed(metrics)
    assert value(samples, "toystore_raft_append_seconds_count") == 1
    assert abs(value(samples, "toystore_raft_append_seconds_sum") - 0.04) < 1e-9
    assert value(samples, "toystore_raft_elections_total", outcome="won") == 1
    assert value(samples, "toystore_replica_commit_index") == 7


def test_stages_are_one_histogram_labelled_by_stage() -> None:
    clock = Clock()
    metrics = ServiceMetrics(clock)
    timer = StageTimer(clock)
    watch_stages(metrics, timer)
    for elapsed in (0.002, 0.0045):
        reached = timer.start()
        assert reached is not None
        clock.advance(elapsed)
        reached("reserved")
    samples = exposed(metrics)
    assert value(samples, "toystore_order_stage_seconds_count", stage="reserved") == 2
    assert abs(value(samples, "toystore_order_stage_seconds_sum", stage="reserved") - 0.0065) < 1e-9
    assert value(samples, "toystore_order_stage_seconds_bucket", stage="reserved", le="0.0025") == 1


def test_nothing_is_timed_while_no_one_listens() -> None:
    assert StageTimer(Clock()).start() is None


def test_catalog_collector_and_group_commits_from_a_real_store(tmp_path: Path) -> None:
    clock = Clock()
    db = open_database(tmp_path / "catalog.sqlite3", clock, 10)
    store = CatalogStore(db, clock)
    metrics = ServiceMetrics(clock)
    watch_database(metrics, db)
    metrics.add(CatalogCollector(store.ledger))
    _case.successResultOf(defer.ensureDeferred(store.buy("r1", "Tux", 3)))
    _case.successResultOf(defer.ensureDeferred(store.buy("r2", "Fox", 1)))
    _case.successResultOf(defer.ensureDeferred(store.release("r2", 1)))
    samples = exposed(metrics)
    assert value(samples, "toystore_catalog_stock", toy="Tux") == 7
    assert value(samples, "toystore_catalog_stock", toy="Fox") == 10
    assert value(samples, "toystore_catalog_price", toy="Tux") == 15.99
    assert len(samples["toystore_catalog_stock"]) == 10
    assert value(samples, "toystore_catalog_reservations", state="held") == 1
    assert value(samples, "toystore_catalog_reservations", state="released") == 1
    assert value(samples, "toystore_reservations_held") == 1
    assert value(samples, "toystore_reservations_oldest_held_age_seconds") == 0.0  # bought at this very time
    assert value(samples, "toystore_db_commit_seconds_count") == db.commits == 3
    assert value(samples, "toystore_db_commit_writes_sum") == 3
