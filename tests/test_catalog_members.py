"""Three members of the replicated catalog in one process: real nodes, SQLite stores and
routes on a task.Clock; Raft messages go through an in-memory network, HTTP (clients'
requests, snapshot chunks) through StubTreq."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import treq
from twisted.internet import defer
from twisted.internet.task import Clock

from tests.test_primary_backup import AUTH, TOKEN, result_of
from tests.test_primary_backup import Network as HttpNetwork
from tests.test_raft_replica import Network
from toystore.catalog.api import CatalogApi
from toystore.catalog.invalidation import Invalidator
from toystore.catalog.raft_store import CatalogRaftStore, member_schema
from toystore.catalog.replica import WRITE_TIMEOUT, CatalogReplica
from toystore.catalog.service import RestockService
from toystore.catalog.store import INITIAL_TOYS
from toystore.db import Database, connect
from toystore.raft.core import RaftCore
from toystore.raft.membership import Configuration
from toystore.raft.messages import Role
from toystore.raft.node import RaftNode, Timing
from toystore.raft.snapshots import SnapshotSender

MEMBERS = {1: "http://c1", 2: "http://c2", 3: "http://c3"}
STOCK = 10
SNAPSHOT_EVERY = 20
CHUNK_ITEMS = 7


class CatalogCluster:
    def __init__(self, tmp_path: Path, snapshot_every: int = 0) -> None:
        self.clock = Clock()
        self.network = Network(self.clock)
        self.http = HttpNetwork()
        self.http.down.clear()
        self.tmp_path = tmp_path
        self.snapshot_every = snapshot_every
        self.members: dict[int, CatalogReplica] = {}
        self.cleared: list[tuple[int, int]] = []  # (member, term) of each cache clearing asked for
        self.clearing_holds = False
        self.held_clearings: list[Any] = []
        for i in MEMBERS:
            self.boot(i)
        self.run(3.0)

    def boot(self, i: int) -> CatalogReplica:
        db = Database(connect(self.tmp_path / f"catalog-{i}.sqlite3", member_schema(STOCK)), self.clock)
        store = CatalogRaftStore(db)
        state = store.load_at_start(Configuration.of(sorted(MEMBERS), addresses=MEMBERS))

        async def clear_caches() -> None:
            self.cleared.append((i, member.host.core.term))
            if self.clearing_holds:
                held: defer.Deferred = defer.Deferred()
                self.held_clearings.append(held)
                await held

        member = CatalogReplica(i, store, MEMBERS, clock=self.clock, clear_caches=clear_caches)
        assert state.bootstrap is not None
        core = RaftCore(i, configuration=state.bootstrap, hard_state=state.hard_state, entries=state.entries,
                        snapshot=state.snapshot.meta if state.snapshot is not None else None,
                        applied=state.applied, rng=random.Random(i))
        node = RaftNode(core, clock=self.clock, transport=self.network.transport(i), state_machine=member,
                        storage=member, timing=Timing(), proposal_timeout=WRITE_TIMEOUT,
                        snapshot_every=self.snapshot_every, snapshot_keep=2)
        member.attach(node)
        sender = SnapshotSender(self.http, member.host.peers,  # type: ignore[arg-type]
                                source=member, clock=self.clock, token=TOKEN, on_answer=node.receive,
                                on_done=node.report_snapshot, chunk_items=CHUNK_ITEMS)
        self.network.snapshot_senders[i] = sender
        invalidator = Invalidator(self.http, [], self.clock, TOKEN)  # type: ignore[arg-type]
        self.http.hosts.apis[f"c{i}"] = CatalogApi(member, invalidator, TOKEN, restock_to=STOCK,
                                                    raft=member.host).app.resource()
        self.http.down.discard(f"c{i}")
        self.network.nodes[i] = node
        self.members[i] = member
        member.start()
        return member

    def crash(self, i: int) -> None:
        self.members.pop(i).stop()
        del self.network.nodes[i]
        self.http.down.add(f"c{i}")

    def wipe(self, i: int) -> None:
        for path in self.tmp_path.glob(f"catalog-{i}.sqlite3*"):
            path.unlink()

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.001)):
            self.clock.advance(0.001)
            self.http.stub.flush()

    def leader(self) -> CatalogReplica:
        leaders = [m for m in self.members.values() if m.host.core.role is Role.LEADER
                   and m.id not in self.network.cut]
        assert len(leaders) == 1, f"expected one leader, got {[m.id for m in leaders]}"
        return leaders[0]

    def follower(self) -> CatalogReplica:
        return next(m for m in self.members.values() if m.host.core.role is not Role.LEADER)

    def call(self, i: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        sent = self.http.stub.request(method, f"http://c{i}{path}", data=data,
                                      headers={**AUTH, b"Content-Type": [b"application/json"]})
        response = self.wait(sent)
        return response.code, self.wait(treq.json_content(response))

    def wait(self, d: Any) -> Any:
        """Runs the cluster until ``d`` has a result (not only fired: a chain may wait on another)."""
        outcome: list[Any] = []
        d.addBoth(lambda result: outcome.append(result) or result)
        for _ in range(3000):
            if outcome:
                break
            self.run(0.001)
        return result_of(d)

    def buy(self, i: int, request_id: str, name: str = "Tux", quantity: int = 1, term: int = 1) -> tuple[int, Any]:
        return self.call(i, "POST", "/buy_qty", {"name": name, "quantity": quantity, "request_id": request_id,
                                                 "term": term})

    def state_of(self, i: int) -> tuple[Any, Any, int]:
        """Toys, reservations and fence as member ``i`` has them in memory and on disk."""
        machine = self.members[i]._store.machine
        rows = self.members[i]._store._db.look_up(
            lambda conn: conn.execute("SELECT * FROM reservations ORDER BY request_id").fetchall())
        return machine.toys, rows, machine.highest_term


@pytest.fixture
def cluster(tmp_path: Path) -> CatalogCluster:
    return CatalogCluster(tmp_path)


def test_a_batch_of_buys_is_one_entry_applied_alike_on_every_member(cluster: CatalogCluster) -> None:
    leader = cluster.leader()
    before = leader.host.core.last_index
    code, answer = cluster.call(leader.id, "POST", "/buy_qty", {"reservations": [
        {"name": "Tux", "quantity": 2, "request_id": "a", "term": 1},
        {"name": "Tux", "quantity": 99, "request_id": "b", "term": 1},
        {"name": "Fox", "quantity": 1, "request_id": "c", "term": 1}]})
    assert code == 200, answer
    results = answer["data"]["results"]
    assert [r["status"] for r in results] == [200, 409, 200]
    assert results[0]["data"]["remaining"] == STOCK - 2
    assert leader.host.core.last_index == before + 1
    cluster.run(0.5)
    states = {i: cluster.state_of(i) for i in MEMBERS}
    assert states[1] == states[2] == states[3]
    toys = {t.name: t.quantity for t in states[1][0]}
    assert toys["Tux"] == STOCK - 2 and toys["Fox"] == STOCK - 1


def test_a_follower_names_the_leader_for_writes_and_reads_and_changes_nothing(cluster: CatalogCluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    before = cluster.state_of(follower.id)
    for method, path, body in [("POST", "/buy_qty", {"name": "Tux", "quantity": 1, "request_id": "x"}),
                               ("POST", "/release", {"request_id": "x", "term": 1}),
                               ("POST", "/confirm", {"request_id": "x", "term": 1}),
                               ("POST", "/restock", None), ("GET", "/query/Tux", None),
                               ("GET", "/reservations?state=held", None), ("GET", "/ledger", None)]:
        code, answer = cluster.call(follower.id, method, path, body)
        assert code == 421, (path, answer)
        assert answer["error"]["leader_id"] == leader.id and answer["error"]["leader_url"] == MEMBERS[leader.id]
    cluster.run(0.5)
    assert cluster.state_of(follower.id) == before
    assert cluster.state_of(leader.id) == before


def test_a_read_at_the_leader_reflects_every_buy_acknowledged_before_it(cluster: CatalogCluster) -> None:
    leader = cluster.leader()
    for k in range(3):
        assert cluster.buy(leader.id, f"r{k}")[0] == 200
    code, toy = cluster.call(leader.id, "GET", "/query/Tux")
    assert code == 200 and toy["data"]["quantity"] == STOCK - 3
    code, ledger = cluster.call(leader.id, "GET", "/ledger")
    assert ledger["data"]["reservations"]["held"] == 3


def test_a_buy_retried_at_the_next_leader_takes_stock_once(cluster: CatalogCluster) -> None:
    first = cluster.leader()
    code, answer = cluster.buy(first.id, "k1", quantity=3)
    assert code == 200
    cluster.crash(first.id)
    cluster.run(3.0)
    second = cluster.leader()
    assert second.id != first.id
    code, again = cluster.buy(second.id, "k1", quantity=3)
    assert (code, again["data"]) == (200, answer["data"])
    code, toy = cluster.call(second.id, "GET", "/query/Tux")
    assert toy["data"]["quantity"] == STOCK - 3
    # The old leader comes back from its disk and agrees.
    cluster.boot(first.id)
    cluster.run(2.0)
    assert cluster.state_of(first.id) == cluster.state_of(second.id)


def test_a_release_from_a_deposed_order_leader_is_fenced_on_every_member(cluster: CatalogCluster) -> None:
    leader = cluster.leader()
    assert cluster.buy(leader.id, "old", term=4)[0] == 200
    assert cluster.buy(leader.id, "new", term=5)[0] == 200
    code, answer = cluster.call(leader.id, "POST", "/release", {"request_id": "old", "term": 4})
    assert code == 409 and "fenced" in answer["error"]["message"]
    cluster.crash(leader.id)
    cluster.run(3.0)
    code, answer = cluster.call(cluster.leader().id, "POST", "/release", {"request_id": "old", "term": 4})
    assert code == 409, answer
    assert cluster.call(cluster.leader().id, "POST", "/release", {"request_id": "old", "term": 5})[0] == 200
    code, toy = cluster.call(cluster.leader().id, "GET", "/query/Tux")
    assert toy["data"]["quantity"] == STOCK - 1


def test_restocks_go_through_the_log_and_only_the_leader_runs_the_loop(cluster: CatalogCluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    assert cluster.buy(leader.id, "all", quantity=STOCK)[0] == 200
    loops = {m.id: RestockService(m, Invalidator(cluster.http, [], cluster.clock, TOKEN),  # type: ignore[arg-type]
                                  cluster.clock, 1.0, STOCK, may_restock=lambda m=m: m.leads)
             for m in (leader, follower)}
    follower_index = follower.host.core.last_index
    cluster.wait(defer.ensureDeferred(loops[follower.id].restock_once()))
    assert follower.host.core.last_index == follower_index  # the follower proposed nothing
    cluster.wait(defer.ensureDeferred(loops[leader.id].restock_once()))
    cluster.run(0.5)
    for i in MEMBERS:
        tux = next(t for t in cluster.state_of(i)[0] if t.name == "Tux")
        assert (tux.quantity, tux.restocked) == (STOCK, STOCK)
    # A restock of a toy in stock adds nothing: repeating one after a failover doubles nothing.
    code, answer = cluster.call(leader.id, "POST", "/restock", {"name": "Tux"})
    assert (code, answer["data"]["restocked"]) == (200, {})


def test_a_price_change_goes_through_the_log_from_the_leader_only(cluster: CatalogCluster) -> None:
    leader, follower = cluster.leader(), cluster.follower()
    code, answer = cluster.call(follower.id, "POST", "/price", {"name": "Tux", "price": 11.0})
    assert code == 421 and answer["error"]["leader_id"] == leader.id
    assert cluster.call(leader.id, "POST", "/price", {"name": "Tux", "price": 11.0}) == (
        200, {"data": {"name": "Tux", "price": 11.0}})
    assert cluster.call(leader.id, "POST", "/price", {"name": "Robot", "price": 1.0})[0] == 404
    cluster.run(0.5)
    for i in MEMBERS:
        assert next(t.price for t in cluster.state_of(i)[0] if t.name == "Tux") == 11.0
    cluster.crash(leader.id)
    cluster.run(3.0)
    assert cluster.call(cluster.leader().id, "GET", "/query/Tux")[1]["data"]["price"] == 11.0


def test_a_member_restarts_from_its_disk_with_the_same_state(cluster: CatalogCluster) -> None:
    leader = cluster.leader()
    for k in range(5):
        cluster.buy(leader.id, f"k{k}")
    cluster.call(leader.id, "POST", "/confirm", {"request_ids": ["k0", "k1"], "term": 1})
    cluster.call(leader.id, "POST", "/release", {"request_ids": ["k2"], "term": 1})
    cluster.run(0.5)
    follower = cluster.follower()
    before = cluster.state_of(follower.id)
    cluster.crash(follower.id)
    back = cluster.boot(follower.id)
    cluster.run(1.0)
    assert cluster.state_of(back.id) == before == cluster.state_of(leader.id)
    assert back._store.machine.counts() == {"held": 2, "confirmed": 2, "released": 1}


def test_a_new_leader_clears_every_cache_before_it_answers_anything(cluster: CatalogCluster) -> None:
    first = cluster.leader()
    assert (first.id, first.host.core.term) in cluster.cleared
    cluster.clearing_holds = True
    cluster.crash(first.id)
    cluster.run(3.0)
    second = cluster.leader()
    assert cluster.cleared[-1] == (second.id, second.host.core.term)
    code, answer = cluster.buy(second.id, "during")
    assert code == 503 and "clearing" in answer["error"]["message"]
    assert cluster.call(second.id, "GET", "/query/Tux")[0] == 503
    cluster.held_clearings.pop().callback(None)
    assert cluster.buy(second.id, "after")[0] == 200
    code, toy = cluster.call(second.id, "GET", "/query/Tux")
    assert (code, toy["data"]["quantity"]) == (200, STOCK - 1)  # the refused buy took nothing


def test_health_check_has_the_order_replicas_shape(cluster: CatalogCluster) -> None:
    leader = cluster.leader()
    code, health = cluster.call(leader.id, "GET", "/health_check")
    data = health["data"]
    assert code == 200
    assert {"id", "role", "term", "leader_id", "commit_index", "last_index", "snapshot_index", "log_entries",
            "members"} <= set(data)
    assert data["role"] == "leader" and data["leader_id"] == leader.id
    assert [m["id"] for m in data["members"]] == [1, 2, 3]


def test_a_wiped_member_catches_up_by_snapshot_and_holds_the_same_state(tmp_path: Path) -> None:
    cluster = CatalogCluster(tmp_path, snapshot_every=SNAPSHOT_EVERY)
    follower = cluster.follower().id
    cluster.crash(follower)
    leader = cluster.leader()
    for k in range(45):  # one entry each: the log is compacted past the follower
        assert cluster.buy(leader.id, f"k{k:02}", name=INITIAL_TOYS[k % len(INITIAL_TOYS)][0])[0] == 200
    cluster.call(leader.id, "POST", "/confirm", {"request_ids": [f"k{k:02}" for k in range(10)], "term": 1})
    cluster.run(0.5)
    assert leader.host.core.snapshot_index > 0
    cluster.wipe(follower)
    back = cluster.boot(follower)
    cluster.run(3.0)
    assert back.host.core.snapshot_index > 0
    assert cluster.state_of(follower) == cluster.state_of(leader.id)
    assert back._store.machine.counts() == leader._store.machine.counts()


BAD_REQUESTS = [
    ("POST", "/buy_qty", {"name": "Tux", "quantity": 0, "request_id": "q"}),
    ("POST", "/buy_qty", {"reservations": "many"}),
    ("POST", "/release", {"request_id": "q"}),
    ("POST", "/confirm", {"request_ids": "k1", "term": 1}),
    ("POST", "/restock", {"name": 7}),
    ("POST", "/price", {"name": "Tux", "price": -3}),
    ("GET", "/reservations?state=lost", None),
    ("POST", "/members", {"add": {"id": "four"}}),
    ("POST", "/append_entries", {"type": "append"}),
    ("POST", "/install_snapshot", {"message": {}}),
]


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_bad_input_at_any_member_is_a_clear_json_error_and_changes_nothing(cluster: CatalogCluster,
                                                                          role: str) -> None:
    member = cluster.leader() if role == "leader" else cluster.follower()
    assert cluster.buy(cluster.leader().id, "before")[0] == 200
    cluster.run(0.5)
    states = {i: cluster.state_of(i) for i in MEMBERS}
    last = {i: m.host.core.last_index for i, m in cluster.members.items()}
    for method, path, body in BAD_REQUESTS:
        code, answer = cluster.call(member.id, method, path, body)
        assert code == 400 and answer["error"]["message"], (path, code, answer)
    cluster.run(0.5)
    assert {i: cluster.state_of(i) for i in MEMBERS} == states
    assert {i: m.host.core.last_index for i, m in cluster.members.items()} == last


def test_a_snapshot_chunk_whose_header_is_not_a_catalogs_is_refused(tmp_path: Path) -> None:
    cluster = CatalogCluster(tmp_path, snapshot_every=SNAPSHOT_EVERY)
    leader = cluster.leader()
    for k in range(25):
        assert cluster.buy(leader.id, f"k{k:02}", name=INITIAL_TOYS[k % len(INITIAL_TOYS)][0])[0] == 200
    cluster.run(0.5)
    snapshot = leader.latest_snapshot()
    assert snapshot is not None
    follower = cluster.follower()
    message = {"type": "snapshot", "term": leader.host.core.term, "sender": leader.id, "to": follower.id,
               "index": snapshot.meta.index, "log_term": snapshot.meta.term,
               "config": leader.host.core.committed_configuration.to_json()}
    before = cluster.state_of(follower.id)
    for header in [{"toys": "none", "highest_term": 0}, {"toys": [["Tux", 1.0, -1, 10, 0]], "highest_term": 0},
                   {"toys": []}]:
        code, answer = cluster.call(follower.id, "POST", "/install_snapshot", {
            "message": message, "size": 1, "header": header, "offset": 0,
            "items": [["r", "Tux", 1, "held", 1, 0.0, 9, None]]})
        assert code == 400 and "header" in answer["error"]["message"] or "toy" in answer["error"]["message"], answer
    code, answer = cluster.call(follower.id, "POST", "/install_snapshot", {
        "message": message, "size": 1, "header": dict(snapshot.header), "offset": 0,
        "items": [["r", "Tux", 0, "held", 1, 0.0, 9, None]]})
    assert code == 400 and "reservation" in answer["error"]["message"], answer
    assert cluster.state_of(follower.id) == before
    assert follower._store.snapshots.staged is None
