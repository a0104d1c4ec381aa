"""Primary-backup replicas that come back behind or forked (issue 23): they are not chosen
before they have caught up, they resolve a forked tail by themselves, and they catch up
in bounded pages. Same in-process cluster as test_primary_backup.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from twisted.internet import defer

from tests.test_primary_backup import Cluster, cluster, result_of  # noqa: F401 (a fixture)
from toystore.frontend.leader import OrderLeaderTracker
from toystore.http import ApiError
from toystore.order.history import ForkSearch, Page
from toystore.order.primary_backup import PULL_PAGE, PrimaryBackupReplica
from toystore.order.state import OrderCommand, OrderStateMachine

TOKEN = "secret"


def history(*keys: str) -> OrderStateMachine:
    machine = OrderStateMachine()
    for key in keys:
        machine.apply(OrderCommand(key, "Tux", 1))
    return machine


def search(mine: OrderStateMachine, theirs: OrderStateMachine, page_size: int = 2) -> tuple[int | None, int]:
    """The fork point, and how many pages it took."""
    finder, pages = ForkSearch(mine, page_size), 0
    while not finder.done:
        after = finder.next_after
        orders = theirs.page(after, page_size)
        finder.feed(Page(orders, orders[-1].number < theirs.latest_number if orders else False,
                         theirs.latest_number))
        pages += 1
    return finder.fork, pages


@pytest.mark.parametrize("mine, theirs, fork", [
    (["a", "b"], ["a", "b", "c"], None),          # behind: nothing to move aside
    (["a", "b", "x"], ["a", "b", "c", "d"], 2),   # the usual fork: the last order was never pushed
    (["a", "x", "y", "z", "w", "v"], ["a", "b", "c", "d", "e", "f", "g"], 1),  # a tail longer than pages
    (["x", "y", "z"], ["a", "b", "c", "d"], 0),
    (["a", "b", "x", "y"], ["a", "b"], 2),        # the leader holds fewer: the rest is beyond its history
    (["a", "x", "y", "z", "w"], ["a", "b"], 1),
    (["x"], [], 0),
    ([], ["a"], None),
])
def test_the_fork_is_found_with_bounded_pages(mine: list[str], theirs: list[str], fork: int | None) -> None:
    found, pages = search(history(*mine), history(*theirs))
    assert found == fork
    assert pages <= 2 + len(mine) // 2


def tracker_of(cluster: Cluster) -> OrderLeaderTracker:
    from tests.test_primary_backup import REPLICAS
    return OrderLeaderTracker(REPLICAS, cluster.network, cluster.clock, TOKEN)  # type: ignore[arg-type]


def check(cluster: Cluster, tracker: OrderLeaderTracker, rounds: int = 3) -> None:
    for _ in range(rounds):
        defer.ensureDeferred(tracker.check())
        cluster.settle()


def announced(cluster: Cluster, to: int) -> bool:
    return bool(cluster.network.sent("/set_leader")) and \
        cluster.replicas[to].leader_id == to


def fork_the_old_leader(cluster: Cluster) -> None:
    """Replica 3 acknowledges "lost" alone and dies; 2 leads on with two other orders."""
    cluster.network.down.update({"r1", "r2"})
    cluster.order(cluster.replicas[3], "lost")
    cluster.settle()
    cluster.crash(3)
    cluster.network.down -= {"r1", "r2"}
    cluster.set_leader(2)
    cluster.place_all(2, ["other", "next"])


def test_a_returning_leader_with_a_forked_tail_is_not_chosen_before_it_resolved_it(cluster: Cluster) -> None:
    fork_the_old_leader(cluster)
    cluster.network.failing.add("/orders_since")  # it cannot read the leader's history yet
    returned = cluster.boot(3)
    assert not returned.status()["caught_up"]
    tracker = tracker_of(cluster)
    cluster.network.log.clear()
    check(cluster, tracker)
    assert tracker.leader_id == 2 and not announced(cluster, 3)
    assert cluster.held(3) == [(0, "lost")]
    cluster.network.failing.clear()
    cluster.run(1.1)  # its sync is retried
    assert returned.status()["caught_up"]
    assert cluster.held(3) == cluster.held(2) == [(0, "other"), (1, "next")]
    check(cluster, tracker)
    assert announced(cluster, 3) and tracker.leader_id == 3
    cluster.run(1.1)
    placed = cluster.order(returned, "k3")
    cluster.settle()
    assert placed[0].number == 2 and cluster.held(1)[-1] == cluster.held(2)[-1] == (2, "k3")


def test_a_replica_whose_first_pull_fails_serves_nothing_and_retries(cluster: Cluster) -> None:
    cluster.crash(1)
    cluster.place_all(3, [f"k{i}" for i in range(3)])
    cluster.network.failing.add("/orders_since")
    returned = cluster.boot(1)
    tracker = tracker_of(cluster)
    check(cluster, tracker)
    cluster.run(3)  # retried each second, still failing: it stays out
    assert not returned.status()["caught_up"] and cluster.held(1) == []
    returned.set_leader(1)  # even if named, it numbers nothing from its short history
    refused = cluster.order(returned, "k9")
    cluster.settle()
    assert refused[0].value.code == 503
    read: list[Any] = []
    defer.ensureDeferred(returned.read_order(0)).addErrback(read.append)
    assert read[0].value.code == 503
    cluster.network.failing.clear()
    cluster.run(1.1)
    assert returned.status()["caught_up"]
    placed = cluster.order(returned, "k9")
    cluster.settle()
    assert placed[0].number == 3


def test_a_replica_far_behind_catches_up_in_bounded_pages(cluster: Cluster) -> None:
    cluster.crash(1)
    cluster.catalog.stock = 10**6
    leader = cluster.replicas[3]
    for i in range(PULL_PAGE * 2 + 500):
        cluster.order(leader, f"k{i}")
        if i % 200 == 0:
            cluster.settle()
    cluster.settle()
    cluster.network.log.clear()
    returned = cluster.boot(1)
    cluster.run(1.1)
    assert returned.status()["caught_up"] and returned.orders.latest_number == leader.orders.latest_number
    pages = [parse_qs(urlparse(url).query) for url in cluster.network.sent("/orders_since")]
    assert len(pages) >= 3 and all(int(p["limit"][0]) == PULL_PAGE for p in pages)


def test_a_moved_aside_request_the_leader_is_placing_is_not_released(cluster: Cluster, monkeypatch: Any) -> None:
    cluster.order(cluster.replicas[3], "k0")
    cluster.settle()
    outcome = result_of(defer.ensureDeferred(cluster.replicas[3].release_unplaced(["k0"])))
    assert outcome == {"k0": "kept for order 0"}
    reserving: defer.Deferred[None] = defer.Deferred()
    reserve = cluster.catalog.reserve
    monkeypatch.setattr(cluster.catalog, "reserve", lambda *args: reserving.addCallback(
        lambda _: defer.ensureDeferred(reserve(*args))))
    placed = cluster.order(cluster.replicas[3], "slow")  # a client's retry, at the catalog now
    placing = result_of(defer.ensureDeferred(cluster.replicas[3].release_unplaced(["slow"])))
    assert placing == {"slow": "pending"} and "slow" not in cluster.catalog.settled
    reserving.callback(None)
    cluster.settle()
    assert placed[0].number == 1 and cluster.catalog.settled["slow"] == "confirm"


def test_only_the_leader_releases_and_pushes_wait_for_a_caught_up_follower(cluster: Cluster) -> None:
    with pytest.raises(ApiError) as refused:
        result_of(defer.ensureDeferred(cluster.replicas[1].release_unplaced(["k"])))
    assert refused.value.code == 421
    cluster.network.failing.add("/orders_since")
    cluster.crash(1)
    returned = cluster.boot(1)
    status, payload = cluster.post(1, "/replicate_order", {"orders": [
        {"number": 0, "request_id": "k0", "name": "Tux", "quantity": 1}]})
    assert status == 503 and cluster.held(1) == []
    assert not returned.ready


def test_an_order_no_follower_took_is_confirmed_once_one_holds_it(cluster: Cluster) -> None:
    cluster.network.down.update({"r1", "r2"})
    cluster.order(cluster.replicas[3], "alone")
    cluster.settle()
    assert "alone" not in cluster.catalog.settled  # its reservation stays held: it may yet be moved aside
    cluster.network.down.discard("r1")
    cluster.run(1.1)
    assert cluster.held(1) == [(0, "alone")] and cluster.catalog.settled["alone"] == "confirm"


def test_orders_since_answers_in_pages(cluster: Cluster) -> None:
    from tests.test_primary_backup import AUTH
    for i in range(5):
        cluster.order(cluster.replicas[3], f"k{i}")
    cluster.settle()

    def get(query: str) -> tuple[int, dict[str, Any]]:
        import treq
        response = result_of(cluster.network.stub.get(f"http://r1/orders_since{query}", headers=AUTH))
        return response.code, result_of(treq.json_content(response))

    status, body = get("?after=0&limit=2")
    assert status == 200
    assert [o["number"] for o in body["data"]["orders"]] == [1, 2]
    assert body["data"]["more"] is True and body["data"]["latest"] == 4
    assert get("?after=2&limit=2")[1]["data"]["more"] is False
    assert [o["number"] for o in get("")[1]["data"]["orders"]] == [0, 1, 2, 3, 4]
    for bad in ("?limit=0", "?limit=x", "?limit=100001", "?limit=-1"):
        status, body = get(bad)
        assert status == 400 and "limit" in body["error"]["message"]


def test_the_moved_aside_orders_are_listed(cluster: Cluster) -> None:
    from tests.test_primary_backup import AUTH
    import treq
    fork_the_old_leader(cluster)
    cluster.boot(3)
    cluster.run(2.1)
    response = result_of(cluster.network.stub.get("http://r3/moved_aside", headers=AUTH))
    listing = result_of(treq.json_content(response))["data"]["orders"]
    assert [(m["number"], m["request_id"], m["reservation"]) for m in listing] == [(0, "lost", "released")]


@pytest.fixture
def warnings() -> Any:
    """The text of every warning logged while the test runs."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_replica_whose_peers_never_answer_is_never_caught_up_nor_chosen(cluster: Cluster,
                                                                         warnings: list[str]) -> None:
    """The issue's case: the leader pushed an order to replica 1 only and died, and replica 1 went
    down too. Replica 2, alone, cannot know that it misses that order: it must not lead."""
    cluster.place_all(3, ["k0"])
    cluster.crash(2)
    acknowledged = cluster.order(cluster.replicas[3], "only-on-1")
    cluster.settle()
    assert acknowledged[0].number == 1 and cluster.held(1)[-1] == (1, "only-on-1")
    cluster.crash(3)
    cluster.crash(1)
    alone = cluster.boot(2)
    tracker = tracker_of(cluster)
    cluster.network.log.clear()
    for _ in range(6):
        cluster.run(5)  # far longer than any wait: it still never serves what it holds
        check(cluster, tracker)
        assert not alone.status()["caught_up"]
    assert tracker.leader_id is None and not cluster.network.sent("/set_leader")
    assert cluster.held(2) == [(0, "k0")]
    alone.set_leader(2)  # even if named, it numbers nothing and reads nothing
    refused = cluster.order(alone, "k9")
    cluster.run(2)
    assert refused[0].value.code == 503 and cluster.held(2) == [(0, "k0")]
    read: list[Any] = []
    defer.ensureDeferred(alone.read_order(0)).addErrback(read.append)
    assert read[0].value.code == 503
    waiting = [w for w in warnings if "waits for a peer" in w]
    assert 3 <= len(waiting) <= 5, waiting  # said now and then, not every second
    assert not [w for w in warnings if "failed" in w]

    cluster.boot(1)  # a peer that holds the order answers: replica 2 pulls it, then serves
    cluster.run(1.1)
    assert alone.status()["caught_up"] and cluster.held(2) == [(0, "k0"), (1, "only-on-1")]
    check(cluster, tracker, rounds=4)
    assert tracker.leader_id == 2
    cluster.run(1.1)
    placed = cluster.order(alone, "k9")
    cluster.settle()
    assert placed[0].number == 2 and cluster.held(1)[-1] == (2, "k9")


def test_a_whole_group_restarted_together_catches_up_and_serves(cluster: Cluster) -> None:
    """Every replica restarts at once, none caught up: they answer each other's health checks and
    pages all the same, so each adopts the longest history (here the old leader's forked tail goes)."""
    fork_the_old_leader(cluster)  # 3 holds [lost]; 1 and 2 hold [other, next]
    cluster.crash(1)
    cluster.crash(2)
    cluster.network.paused = True  # the three start before any request between them gets through
    cluster.network.down.clear()
    returned = {i: cluster.boot(i) for i in (1, 2, 3)}
    assert not any(r.status()["caught_up"] for r in returned.values())
    cluster.network.resume()
    cluster.settle()
    cluster.run(1.1)
    assert all(r.status()["caught_up"] and not r.status()["conflict"] for r in returned.values())
    assert cluster.held(1) == cluster.held(2) == cluster.held(3) == [(0, "other"), (1, "next")]
    assert [(m.order.number, m.order.request_id) for m in result_of(
        defer.ensureDeferred(returned[3]._aside.listing(-1, 10)))] == [(0, "lost")]
    tracker = tracker_of(cluster)
    check(cluster, tracker, rounds=4)
    assert tracker.leader_id == 3
    cluster.run(1.1)
    placed = cluster.order(returned[3], "k9")
    cluster.settle()
    assert placed[0].number == 2 and cluster.held(1)[-1] == cluster.held(2)[-1] == (2, "k9")


def test_a_single_replica_cluster_serves_at_once(tmp_path: Path) -> None:
    from tests.test_primary_backup import Network
    from tests.test_raft_replica import FakeCatalog
    from twisted.internet.task import Clock
    from toystore.db import Database, connect
    from toystore.order.moved_aside import MovedAsideStore
    from toystore.order.store import SCHEMA, ReplicaStore

    clock, network = Clock(), Network()
    network.down.clear()
    db = Database(connect(tmp_path / "order-1.sqlite3", SCHEMA), clock)
    store, catalog = ReplicaStore(db), FakeCatalog()
    replica = PrimaryBackupReplica(1, store, catalog, network,  # type: ignore[arg-type]
                                   {1: "http://r1"}, clock=clock, token=TOKEN, aside=MovedAsideStore(db))
    replica.start()
    assert replica.status()["caught_up"]  # it has no peer that could hold more
    replica.set_leader(1)
    placed = result_of(defer.ensureDeferred(replica.place_order("k0", "Tux", 1)))
    assert placed.number == 0 and catalog.settled["k0"] == "confirm"
    assert result_of(defer.ensureDeferred(replica.read_order(0))) == placed
    assert network.log == []
    replica.stop()
