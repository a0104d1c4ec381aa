"""Three primary-backup order replicas in one process: real routes and SQLite stores, a fake
catalog, and peer HTTP through StubTreq on a task.Clock (a replica can be cut off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from tests.test_raft_replica import FakeCatalog
from toystore.db import Database, connect
from toystore.http import ApiError
from toystore.order.api import OrderApi
from toystore.order.moved_aside import MovedAsideStore
from toystore.order import primary_backup
from toystore.order.primary_backup import PrimaryBackupReplica
from toystore.order.state import Order
from toystore.order.store import SCHEMA, ReplicaStore

REPLICAS = {1: "http://r1", 2: "http://r2", 3: "http://r3"}
TOKEN = "secret"
AUTH = {b"Authorization": [b"Bearer " + TOKEN.encode()]}


class Hosts(Resource):
    """Serves each replica's routes under its own host name."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.apis: dict[str, Resource] = {}

    def render(self, request: Any) -> Any:
        return self.apis[request.getRequestHostname().decode()].render(request)


class Network:
    """A treq-like client for the replicas; requests to a host in ``down`` are refused."""

    def __init__(self) -> None:
        self.hosts = Hosts()
        self.stub = StubTreq(self.hosts)
        self.down: set[str] = {urlparse(url).hostname or "" for url in REPLICAS.values()}  # until booted

        self.paused = False
        self._waiting: list[tuple[defer.Deferred, str, str, dict[str, Any]]] = []
        self.failing: set[str] = set()  # paths (e.g. "/orders_since") whose requests time out
        self.log: list[tuple[str, str]] = []  # (method, url) of every request that went through

    def request(self, method: str, url: str, **kwargs: Any) -> defer.Deferred:
        if urlparse(url).hostname in self.down:
            return defer.fail(ConnectionRefusedError())
        if urlparse(url).path in self.failing:
            return defer.fail(defer.TimeoutError())
        self.log.append((method, url))
        if self.paused:
            waiting: defer.Deferred = defer.Deferred()
            self._waiting.append((waiting, method, url, kwargs))
            return waiting
        return self.stub.request(method, url, **kwargs)

    def sent(self, path: str) -> list[str]:
        """The URLs of the requests that went through to ``path``, in the order sent."""
        return [url for _, url in self.log if urlparse(url).path == path]

    def resume(self) -> None:
        """Delivers the requests held while paused."""
        self.paused = False
        waiting, self._waiting = self._waiting, []
        for d, method, url, kwargs in waiting:
            self.stub.request(method, url, **kwargs).chainDeferred(d)


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.network = Network()
        self.catalog = FakeCatalog()
        self.tmp_path = tmp_path
        self.replicas: dict[int, PrimaryBackupReplica] = {}

    def boot(self, i: int) -> PrimaryBackupReplica:
        db = Database(connect(self.tmp_path / f"order-{i}.sqlite3", SCHEMA), self.clock)
        store = ReplicaStore(db)
        replica = PrimaryBackupReplica(i, store, self.catalog,
                                       self.network, REPLICAS, clock=self.clock, token=TOKEN,  # type: ignore[arg-type]
                                       aside=MovedAsideStore(db))
        self.network.hosts.apis[f"r{i}"] = OrderApi(replica, TOKEN).app.resource()
        self.network.down.discard(f"r{i}")
        self.replicas[i] = replica
        replica.start()
        self.settle()
        return replica

    def crash(self, i: int) -> None:
        self.replicas.pop(i).stop()
        self.network.down.add(f"r{i}")

    def set_leader(self, leader: int) -> None:
        for replica in self.replicas.values():
            replica.set_leader(leader)
        self.settle()

    def settle(self) -> None:
        for _ in range(30):
            self.network.stub.flush()
            self.clock.advance(0)

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)
            self.settle()

    def order(self, replica: PrimaryBackupReplica, key: str, quantity: int = 1) -> list[Any]:
        outcome: list[Any] = []
        defer.ensureDeferred(replica.place_order(key, "Tux", quantity)).addCallbacks(outcome.append, outcome.append)
        return outcome

    def place_all(self, i: int, keys: list[str]) -> None:
        """Orders each key at replica ``i`` and lets every push and answer through."""
        for key in keys:
            self.order(self.replicas[i], key)
        self.settle()

    def held(self, i: int) -> list[tuple[int, str]]:
        return [(o.number, o.request_id) for o in self.replicas[i].orders.page(-1, 1000)]

    def post(self, i: int, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        response = result_of(self.network.stub.post(f"http://r{i}{path}", json=body, headers=AUTH))
        payload = result_of(treq.json_content(response))
        self.settle()
        return response.code, payload


def result_of(d: defer.Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    c = Cluster(tmp_path)
    for i in REPLICAS:
        c.boot(i)
    c.run(1.1)  # those booted before their peers retry their sync
    c.set_leader(3)
    return c


def test_the_leader_numbers_orders_densely_and_every_follower_holds_them(cluster: Cluster) -> None:
    leader = cluster.replicas[3]
    outcomes = [cluster.order(leader, f"k{i}") for i in range(5)]
    cluster.settle()
    assert [o[0].number for o in outcomes] == [0, 1, 2, 3, 4]
    expected = [(i, f"k{i}") for i in range(5)]
    assert cluster.held(1) == cluster.held(2) == cluster.held(3) == expected
    assert cluster.catalog.stock == 95
    assert all(cluster.catalog.settled[f"k{i}"] == "confirm" for i in range(5))
    assert leader.status() == {"id": 3, "role": "leader", "term": 0, "leader_id": 3, "commit_index": 5,
                               "last_index": 5, "snapshot_index": 0, "log_entries": 0,
                               "replication": "primary-backup", "caught_up": True, "conflict": False,
                               "members": [{"id": i, "url": f"http://r{i}", "voter": True} for i in (1, 2, 3)]}
    assert cluster.replicas[1].status()["role"] == "follower"


def test_orders_survive_a_restart_of_the_replica(cluster: Cluster) -> None:
    cluster.order(cluster.replicas[3], "k0")
    cluster.settle()
    cluster.crash(2)
    assert cluster.boot(2).orders.page(-1, 1000) == [Order(0, "k0", "Tux", 1)]


def test_a_follower_answers_421_with_the_leader(cluster: Cluster) -> None:
    outcome = cluster.order(cluster.replicas[1], "k0")
    cluster.settle()
    assert isinstance(outcome[0].value, ApiError)
    assert outcome[0].value.code == 421
    assert outcome[0].value.details == {"leader_id": 3, "leader_url": "http://r3"}
    assert cluster.catalog.stock == 100


def test_orders_made_durable_while_a_push_is_out_go_to_each_follower_in_one_push(cluster: Cluster) -> None:
    """Under load, one push per order would cost each follower a request and an fsync per
    order, and hold every order behind all the pushes before it (rounds of 64 orders took
    half a second at 64 connections)."""
    leader = cluster.replicas[3]
    cluster.network.paused = True
    outcomes = [cluster.order(leader, f"k{i}") for i in range(20)]
    cluster.settle()
    assert not any(outcomes)  # the first push to each follower is still out
    cluster.network.resume()
    cluster.settle()
    assert [o[0].number for o in outcomes] == list(range(20))
    assert sorted(cluster.network.sent("/replicate_order")) == ["http://r1/replicate_order"] * 2 + ["http://r2/replicate_order"] * 2
    assert cluster.held(1) == cluster.held(2) == [(i, f"k{i}") for i in range(20)]
    assert all(cluster.catalog.settled[f"k{i}"] == "confirm" for i in range(20))


def test_a_retried_request_gets_its_first_number_and_takes_stock_once(cluster: Cluster) -> None:
    leader = cluster.replicas[3]
    first, during = cluster.order(leader, "k0", 2), cluster.order(leader, "k0", 2)
    cluster.settle()
    after = cluster.order(leader, "k0", 2)
    cluster.settle()
    assert first[0].number == during[0].number == after[0].number == 0
    assert leader.orders.latest_number == 0
    assert cluster.catalog.stock == 98


def test_a_follower_that_missed_pushes_is_caught_up(cluster: Cluster) -> None:
    cluster.network.down.add("r1")
    for i in range(3):
        cluster.order(cluster.replicas[3], f"k{i}")
    cluster.settle()
    assert cluster.held(1) == []
    cluster.network.down.discard("r1")
    cluster.run(1.1)
    assert [o.public() for o in cluster.replicas[1].orders.page(-1, 1000)] == [
        o.public() for o in cluster.replicas[3].orders.page(-1, 1000)]
    assert cluster.replicas[1].orders.latest_number == 2
    cluster.order(cluster.replicas[3], "k3")
    cluster.settle()
    assert cluster.held(1)[-1] == (3, "k3")


def test_a_push_that_leaves_a_gap_acknowledges_nothing_and_says_how_far_the_follower_holds(
        cluster: Cluster) -> None:
    cluster.network.down.add("r1")
    cluster.place_all(3, ["k0", "k1"])
    cluster.network.down.discard("r1")
    status, payload = cluster.post(1, "/replicate_order", {"orders": [
        {"number": 1, "request_id": "k1", "name": "Tux", "quantity": 1}]})
    assert (status, payload) == (200, {"data": {"accepted": True, "latest_order_no": -1}})
    assert cluster.held(1) == []


def test_a_new_leader_sends_a_follower_the_orders_it_lacks_before_the_one_it_pushes(cluster: Cluster) -> None:
    """A new leader does not know what a follower holds and pushes only its newest order; the
    follower's answer says it lacks those before, and they go at once. Before, the follower
    answered 200 to the gap and the leader took the order as held there."""
    cluster.network.down.add("r1")
    cluster.place_all(3, ["k0", "k1"])
    cluster.network.down.discard("r1")
    cluster.network.failing = {"/latest_order_no"}  # so that replica 1 does not pull them by itself
    cluster.set_leader(2)
    assert cluster.held(1) == []
    cluster.place_all(2, ["k2"])
    assert cluster.held(1) == cluster.held(2) == [(0, "k0"), (1, "k1"), (2, "k2")]
    assert cluster.network.sent("/replicate_order").count("http://r1/replicate_order") == 2  # the newest order, then every order from the follower's latest on


def test_a_replica_that_starts_behind_catches_up_before_it_serves(cluster: Cluster) -> None:
    cluster.crash(1)
    cluster.place_all(3, [f"k{i}" for i in range(4)])
    cluster.network.down.discard("r1")
    db = Database(connect(cluster.tmp_path / "order-1.sqlite3", SCHEMA), cluster.clock)
    store = ReplicaStore(db)
    replica = PrimaryBackupReplica(1, store, cluster.catalog,
                                   cluster.network, REPLICAS, clock=cluster.clock, token=TOKEN,  # type: ignore[arg-type]
                                   aside=MovedAsideStore(db))
    cluster.network.paused = True
    started = replica.start()
    read: list[Any] = []
    defer.ensureDeferred(replica.read_order(0)).addErrback(read.append)
    assert read[0].value.code == 503  # not while its peers have not answered
    cluster.network.hosts.apis["r1"] = OrderApi(replica, TOKEN).app.resource()
    cluster.network.resume()
    cluster.settle()
    assert started.called and replica.ready
    assert [(o.number, o.request_id) for o in replica.orders.page(-1, 1000)][-1][0] == 3
    assert [o.public() for o in replica.orders.page(-1, 1000)] == [o.public() for o in cluster.replicas[3].orders.page(-1, 1000)]
    replica.stop()


def test_a_new_leader_first_pulls_the_longest_history_from_its_peers(cluster: Cluster) -> None:
    cluster.network.down.add("r1")
    cluster.order(cluster.replicas[3], "k0")
    cluster.settle()
    cluster.network.down.add("r2")  # k1 reaches no follower: lost when 3 dies
    cluster.network.down.discard("r1")
    cluster.order(cluster.replicas[3], "k1")
    cluster.settle()
    cluster.crash(3)
    cluster.network.down.discard("r2")
    # Replica 1 missed k0, replica 2 holds it; the frontend names 1 (as if 2 were slow to answer).
    assert cluster.held(1) == [] and cluster.held(2) == [(0, "k0")]
    cluster.network.paused = True
    cluster.replicas[1].set_leader(1)
    blocked = cluster.order(cluster.replicas[1], "k2")
    assert blocked[0].value.code == 503  # it does not number orders before it has pulled
    cluster.network.resume()
    cluster.settle()
    placed = cluster.order(cluster.replicas[1], "k2")
    cluster.settle()
    assert placed[0].number == 1
    assert [(o.number, o.name) for o in cluster.replicas[1].orders.page(-1, 1000)] == [(0, "Tux"), (1, "Tux")]


def test_a_returning_leader_moves_its_lost_order_aside_and_adopts_the_leaders_history(cluster: Cluster) -> None:
    cluster.network.down.update({"r1", "r2"})
    cluster.order(cluster.replicas[3], "lost")  # durable and acknowledged on 3 only
    cluster.settle()
    assert "lost" not in cluster.catalog.settled  # no follower holds it: its reservation stays held
    cluster.crash(3)
    cluster.network.down -= {"r1", "r2"}
    cluster.set_leader(2)
    cluster.order(cluster.replicas[2], "other")
    cluster.settle()
    assert cluster.held(2) == cluster.held(1) == [(0, "other")]
    returned = cluster.boot(3)
    cluster.order(cluster.replicas[2], "next")
    cluster.run(1.1)
    assert cluster.held(3) == cluster.held(2) == cluster.held(1) == [(0, "other"), (1, "next")]
    assert returned.status()["caught_up"] and not returned.status()["conflict"]
    assert [(m.order.number, m.order.request_id, m.reservation) for m in result_of(
        defer.ensureDeferred(returned._aside.listing(-1, 10)))] == [(0, "lost", "released")]
    assert cluster.catalog.settled["lost"] == "release" and cluster.catalog.stock == 98
    cluster.set_leader(3)
    placed = cluster.order(returned, "k9")
    cluster.settle()
    assert placed[0].number == 2


def test_a_deposed_leader_moves_aside_the_tail_it_never_pushed_and_adopts_the_new_leaders_history(
        cluster: Cluster) -> None:
    """Replica 3 numbers an order no follower took, then is cut off; replica 2 is named and
    numbers another order with the same number. Told of it, replica 3 adopts replica 2's
    history. Before, it kept its own order under that number, and replica 2 (its probe taking
    the health check's count as an acknowledgement) confirmed its own order as held there."""
    cluster.network.down.update({"r1", "r2"})
    cluster.order(cluster.replicas[3], "lost")
    cluster.settle()
    cluster.network.down = {"r3"}
    for i in (1, 2):
        cluster.replicas[i].set_leader(2)
    cluster.settle()
    cluster.network.down = {"r1"}
    cluster.order(cluster.replicas[2], "kept")
    cluster.settle()
    assert cluster.held(2) == [(0, "kept")] and cluster.held(3) == [(0, "lost")]
    assert "kept" not in cluster.catalog.settled  # no follower holds it yet
    cluster.replicas[3].set_leader(2)
    cluster.run(1.1)
    assert cluster.held(3) == cluster.held(2) == [(0, "kept")]
    assert cluster.catalog.settled == {"kept": "confirm", "lost": "release"}


def test_a_leader_takes_no_pushes(cluster: Cluster) -> None:
    status, payload = cluster.post(3, "/replicate_order", {"orders": [
        {"number": 0, "request_id": "k0", "name": "Tux", "quantity": 1}]})
    assert status == 409 and "leads" in payload["error"]["message"]
    assert cluster.held(3) == []


def test_a_follower_far_behind_pulls_by_itself_and_is_pushed_to_once_it_is_close(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushing it the whole lag would hold every order placed meanwhile behind that catch-up."""
    monkeypatch.setattr(primary_backup, "MAX_BATCH", 3)
    cluster.network.down.add("r1")
    cluster.place_all(3, [f"k{i}" for i in range(10)])
    cluster.network.down.discard("r1")
    cluster.network.failing = {"/orders_since"}  # its pulls fail for now: it stays far behind
    cluster.network.log.clear()
    cluster.run(2.1)
    assert cluster.held(1) == []
    assert "http://r1/replicate_order" not in cluster.network.sent("/replicate_order")
    cluster.network.failing = set()
    cluster.run(2.1)  # it pulls; then the probe finds it close
    assert cluster.held(1) == cluster.held(3)
    cluster.place_all(3, ["k10"])
    assert cluster.held(1)[-1] == (10, "k10")
    assert "http://r1/replicate_order" in cluster.network.sent("/replicate_order")


@pytest.mark.parametrize("body", [
    {},
    {"orders": []},
    {"orders": "no"},
    {"orders": [{"number": -1, "request_id": "k", "name": "Tux", "quantity": 1}]},
    {"orders": [{"number": True, "request_id": "k", "name": "Tux", "quantity": 1}]},
    {"orders": [{"number": 0, "request_id": "", "name": "Tux", "quantity": 1}]},
    {"orders": [{"number": 0, "request_id": "k", "name": "Tux", "quantity": 0}]},
    {"orders": [{"number": 0, "request_id": "k", "name": "Tux", "quantity": 1}, 7]},
    {"orders": [{"number": 0, "request_id": "a", "name": "Tux", "quantity": 1},
                {"number": 2, "request_id": "b", "name": "Tux", "quantity": 1}]},
])
def test_a_malformed_push_is_400_and_changes_nothing(cluster: Cluster, body: Any) -> None:
    status, payload = cluster.post(1, "/replicate_order", body)
    assert status == 400, payload
    assert cluster.held(1) == []


def test_raft_endpoints_are_404_in_this_mode(cluster: Cluster) -> None:
    status, payload = cluster.post(1, "/append_entries", {"type": "append"})
    assert status == 404
    assert "primary-backup" in payload["error"]["message"]


def _lone_replica_with_held_writes(tmp_path: Path) -> tuple[PrimaryBackupReplica, Database, Clock,
                                                             list[tuple[defer.Deferred, Any]]]:
    """The only replica configured (it has no peer to wait for, so it is caught up at once),
    on a database whose writes go to disk only when the test lets each one through."""
    held: list[tuple[defer.Deferred, Any]] = []

    def gated(blocking: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        held.append((d, blocking))
        return d

    clock = Clock()
    db = Database(connect(tmp_path / "order-1.sqlite3", SCHEMA), clock, runner=gated)
    replica = PrimaryBackupReplica(1, ReplicaStore(db), FakeCatalog(), Network(), {1: REPLICAS[1]},
                                   clock=clock, token=TOKEN, aside=MovedAsideStore(db))  # type: ignore[arg-type]
    replica.start()
    assert replica.ready
    return replica, db, clock, held


def test_a_push_of_orders_a_pull_applied_is_answered_once_the_pulls_write_is_durable(tmp_path: Path) -> None:
    """A pull and a push can carry the same orders: the second to arrive applies nothing, and
    must not answer before the first one's write is on disk."""
    replica, _, _, held = _lone_replica_with_held_writes(tmp_path)
    push = {"orders": [{"number": 0, "request_id": "a", "name": "Tux", "quantity": 1}]}
    first: list[Any] = []
    second: list[Any] = []
    defer.ensureDeferred(replica.receive_peer("replicate_order", push)).addBoth(first.append)
    defer.ensureDeferred(replica.receive_peer("replicate_order", push)).addBoth(second.append)
    assert first == second == [] and len(held) == 1
    while held:
        write, blocking = held.pop(0)
        write.callback(blocking())
        if held:
            assert second == []  # its empty write waits in the group after the first one's
    assert first == second == [{"latest_order_no": 0}]
    replica.stop()


def test_a_follower_that_takes_pushes_pulls_nothing_and_one_that_takes_none_pulls(cluster: Cluster) -> None:
    before = len(cluster.network.sent("/latest_order_no"))
    for i in range(30):
        cluster.order(cluster.replicas[3], f"k{i}")
        cluster.run(0.1)
    assert len(cluster.network.sent("/latest_order_no")) == before
    cluster.run(2.05)
    assert len(cluster.network.sent("/latest_order_no")) >= before + 2  # each follower, once pushes stopped


def test_a_follower_answers_a_push_only_once_the_orders_are_durable(tmp_path: Path) -> None:
    replica, db, _, held = _lone_replica_with_held_writes(tmp_path)
    answered: list[Any] = []
    push = {"orders": [{"number": 0, "request_id": "a", "name": "Tux", "quantity": 1}]}
    defer.ensureDeferred(replica.receive_peer("replicate_order", push)).addBoth(answered.append)
    assert answered == [] and len(held) == 1
    write, blocking = held.pop()
    write.callback(blocking())
    assert answered == [{"latest_order_no": 0}]
    assert [o.request_id for o in ReplicaStore(db).orders.page(-1, 10)] == ["a"]
    replica.stop()


def test_a_replica_whose_write_failed_stops_taking_part_until_it_is_restarted(tmp_path: Path) -> None:
    """Its memory holds orders its disk may not: it must not push, serve or acknowledge them,
    and nothing but a restart (which reads the disk) makes it caught up again."""
    replica, _, clock, held = _lone_replica_with_held_writes(tmp_path)
    replica.set_leader(1)
    answered: list[Any] = []
    defer.ensureDeferred(replica.place_order("a", "Tux", 1)).addBoth(answered.append)
    write, _ = held.pop()
    write.errback(Failure(OSError("disk I/O error")))
    assert isinstance(answered[0].value, ApiError) and answered[0].value.code == 503
    assert not replica.status()["caught_up"]
    clock.advance(5)  # where a replica not caught up syncs again, each second
    assert not replica.ready
    refused: list[Any] = []
    defer.ensureDeferred(replica.place_order("b", "Tux", 1)).addBoth(refused.append)
    defer.ensureDeferred(replica.read_order(0)).addBoth(refused.append)
    assert [r.value.code for r in refused] == [503, 503] and held == []
    replica.stop()

