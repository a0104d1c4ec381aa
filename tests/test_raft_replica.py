"""Three Raft order replicas in one process: real nodes, real SQLite stores, a fake
catalog, and messages delivered through an in-memory network on a task.Clock."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from toystore.db import Database, connect
from toystore.http import ApiError
from toystore.order.catalog_client import HeldPage, Reservation
from toystore.order.raft_replica import ORDER_TIMEOUT, RaftReplica
from toystore.order.state import OrderCommand
from toystore.order.store import SCHEMA, ReplicaStore
from toystore.raft.core import RaftCore
from toystore.raft.membership import Configuration
from toystore.raft.messages import Entry, Message, MessageType, Role
from toystore.raft.node import RaftNode, Timing

TIMING = Timing()
REPLICAS = {1: "http://r1", 2: "http://r2", 3: "http://r3"}
CATCH_UP_TIMEOUT = 3.0  # seconds an added replica has to catch up


@dataclass
class FakeCatalog:
    """Keeps reservations as the catalog does: idempotent per request id, and releases fenced
    by the highest term seen. With ``hold_answers``, a reservation is made at once but its
    answer waits in ``held_answers`` (a slow link back from the catalog)."""

    stock: int = 100
    held: dict[str, int] = field(default_factory=dict)
    settled: dict[str, str] = field(default_factory=dict)
    highest_term: int = 0
    hold_answers: bool = False
    held_answers: list[defer.Deferred[None]] = field(default_factory=list)

    async def reserve(self, name: str, quantity: int, request_id: str, term: int) -> None:
        self._reserve_now(name, quantity, request_id, term)

    def _reserve_now(self, name: str, quantity: int, request_id: str, term: int) -> None:
        if request_id in self.held and self.settled.get(request_id) != "release":
            self.highest_term = max(self.highest_term, term)
            return
        if quantity > self.stock:
            raise ApiError(409, "Not enough stock.")
        self.stock -= quantity
        self.held[request_id] = quantity
        self.settled.pop(request_id, None)
        self.highest_term = max(self.highest_term, term)

    async def reserve_each(self, reservations: list[tuple[str, int, str]], term: int) -> list[ApiError | None]:
        refusals: list[ApiError | None] = []
        for name, quantity, request_id in reservations:
            try:
                self._reserve_now(name, quantity, request_id, term)
                refusals.append(None)
            except ApiError as refused:
                refusals.append(refused)
        if self.hold_answers:
            self.held_answers.append(defer.Deferred())
            await self.held_answers[-1]
        return refusals

    def let_answers_through(self) -> None:
        self.hold_answers = False
        while self.held_answers:
            self.held_answers.pop(0).callback(None)

    async def held_reservations(self, older_than: float, *, limit: int, after: str | None = None) -> HeldPage:
        held = [Reservation(r, "Tux", q, 10.0) for r, q in self.held.items() if r not in self.settled]
        return HeldPage(held, None)

    async def settle(self, action: str, request_id: str, term: int) -> int:
        (status,) = await self.settle_each(action, [request_id], term)
        return status

    async def settle_each(self, action: str, request_ids: list[str], term: int) -> list[int]:
        statuses = []
        for request_id in request_ids:
            state = self.settled.get(request_id)
            if action == "release" and (term < self.highest_term or state == "confirm"):
                statuses.append(409)
                continue
            if action == "confirm" and state == "release":
                statuses.append(409)
                continue
            self.highest_term = max(self.highest_term, term)
            if action == "release" and state is None:
                self.stock += self.held[request_id]
            self.settled[request_id] = action
            statuses.append(200)
        return statuses


class Network:
    """Delivers messages between nodes on the clock, unless a node is cut off."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.nodes: dict[int, RaftNode] = {}
        self.cut: set[int] = set()
        self.sent: list[Message] = []
        # Per node, what takes its SNAPSHOT messages (their data goes over HTTP); none: dropped.
        self.snapshot_senders: dict[int, Any] = {}

    def transport(self, owner: int) -> Any:
        network = self

        class _Transport:
            def send(self, message: Message) -> None:
                network.sent.append(message)
                if owner in network.cut or message.to in network.cut:
                    return
                if message.type is MessageType.SNAPSHOT:
                    if owner in network.snapshot_senders:
                        network.snapshot_senders[owner].send(message)
                    return
                network.clock.callLater(0.001, network._deliver, message)

        return _Transport()

    def _deliver(self, message: Message) -> None:
        node = self.nodes.get(message.to)
        if node is not None and message.to not in self.cut:
            node.receive(message)


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.network = Network(self.clock)
        self.catalog = FakeCatalog()
        self.tmp_path = tmp_path
        self.replicas: dict[int, RaftReplica] = {}
        for i in REPLICAS:
            self.boot(i)

    @classmethod
    def started(cls, tmp_path: Path) -> Any:
        """A cluster that has run long enough to elect a leader."""
        cluster = cls(tmp_path)
        cluster.run(3.0)
        return cluster

    def boot(self, i: int, *, join: bool = False, **node_options: Any) -> RaftReplica:
        """Start replica ``i`` from its disk; at its first start it makes the group of
        REPLICAS, or with ``join`` waits to be added, as the service does."""
        store = ReplicaStore(Database(connect(self.tmp_path / f"order-{i}.sqlite3", SCHEMA), self.clock))
        state = store.load_at_start(Configuration() if join else Configuration.of(sorted(REPLICAS), addresses=REPLICAS))
        assert state.bootstrap is not None
        replica = RaftReplica(i, store, self.catalog, REPLICAS, clock=self.clock, catch_up_timeout=CATCH_UP_TIMEOUT)
        core = RaftCore(i, configuration=state.bootstrap, hard_state=state.hard_state, entries=state.entries,
                        snapshot=state.snapshot.meta if state.snapshot is not None else None,
                        applied=state.applied, rng=random.Random(i))
        node = RaftNode(core, clock=self.clock, transport=self.network.transport(i),
                        state_machine=replica, storage=replica, timing=TIMING, **node_options)
        replica.attach(node)
        self.network.nodes[i] = node
        self.replicas[i] = replica
        replica.start()
        return replica

    def crash(self, i: int) -> None:
        self.replicas.pop(i).stop()
        del self.network.nodes[i]

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.001)):
            self.clock.advance(0.001)

    def leader(self) -> RaftReplica:
        leaders = [r for r in self.replicas.values() if r.node.core.role is Role.LEADER
                   and r.id not in self.network.cut]
        assert len(leaders) == 1, f"expected one leader, got {[r.id for r in leaders]}"
        return leaders[0]

    def order(self, replica: RaftReplica, key: str, quantity: int = 1) -> list[Any]:
        outcome: list[Any] = []
        d = defer.ensureDeferred(replica.place_order(key, "Tux", quantity))
        d.addCallbacks(outcome.append, outcome.append)
        return outcome


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster.started(tmp_path)


def test_an_order_commits_on_every_replica_with_a_dense_number(cluster: Cluster) -> None:
    leader = cluster.leader()
    commit_latencies: list[float] = []
    leader.node.commit_listeners.append(commit_latencies.append)
    outcomes = [cluster.order(leader, f"k{i}") for i in range(5)]
    cluster.run(0.5)
    assert [o[0].number for o in outcomes] == [0, 1, 2, 3, 4]
    assert len(commit_latencies) == 5 and all(0 < t < 0.1 for t in commit_latencies)
    for replica in cluster.replicas.values():
        assert [o.request_id for o in replica.orders.page(-1, 1000)] == [f"k{i}" for i in range(5)]
    assert cluster.catalog.stock == 95


def test_the_leaders_write_of_a_cycle_is_under_way_when_its_orders_are_answered(cluster: Cluster) -> None:
    leader = cluster.leader()
    save, applied_written = leader._store.save, []

    async def recording_save(changes: Any) -> None:
        applied_written.append(changes.applied or 0)
        await save(changes)

    leader._store.save = recording_save
    applied_written_when_answered: list[int] = []
    defer.ensureDeferred(leader.place_order("k1", "Tux", 1)).addCallback(
        lambda _: applied_written_when_answered.append(max(applied_written)))
    entry_index = leader.node.core.last_index + 1
    cluster.run(0.1)
    # The cycle that applied the order had handed its write (applied index included) to
    # the disk before the order's answer ran.
    assert applied_written_when_answered and applied_written_when_answered[0] >= entry_index


def test_orders_placed_together_share_one_catalog_call_and_one_proposal(cluster: Cluster) -> None:
    leader = cluster.leader()
    reservations: list[list[str]] = []
    proposals: list[int] = []
    reserve_each, propose_each = cluster.catalog.reserve_each, leader.node.propose_each

    async def recorded_reserve_each(asked: list[tuple[str, int, str]], term: int) -> list[ApiError | None]:
        reservations.append([request_id for _, _, request_id in asked])
        return await reserve_each(asked, term)

    def recorded_propose_each(data: list[str], **options: Any) -> defer.Deferred:
        proposals.append(len(data))
        return propose_each(data, **options)

    cluster.catalog.reserve_each = recorded_reserve_each  # type: ignore[method-assign]
    leader.node.propose_each = recorded_propose_each  # type: ignore[method-assign]
    commands = [OrderCommand("a", "Tux", 1), OrderCommand("b", "Tux", 1000), OrderCommand("c", "Tux", 2),
                OrderCommand("a", "Tux", 1)]
    outcomes: list[Any] = []
    defer.ensureDeferred(leader.place_orders(commands)).addCallback(outcomes.extend)
    cluster.run(0.1)
    a, b, c, a_again = outcomes
    assert (a.number, c.number, a_again.number) == (0, 1, 0)  # the same key twice is one order
    assert b.value.code == 409  # refused by the catalog; the others go on
    assert reservations == [["a", "b", "c"]]
    assert proposals == [2]


def test_the_leader_times_each_stage_of_a_batch_of_orders_once_and_in_order(cluster: Cluster) -> None:
    leader = cluster.leader()
    heard: dict[int, list[tuple[str, float]]] = {}
    for replica in cluster.replicas.values():
        replica.stages.listeners.append(lambda stage, seconds, i=replica.id: heard.setdefault(i, []).append(
            (stage, seconds)))
    cluster.clock.advance(0.0005)  # off the millisecond grid, so that every stage reads a time of its own
    outcomes: list[Any] = []
    defer.ensureDeferred(leader.place_orders([OrderCommand("a", "Tux", 1), OrderCommand("b", "Tux", 1)])).addCallback(
        outcomes.extend)
    cluster.run(0.2)
    assert [o.number for o in outcomes] == [0, 1]
    timeline = heard.pop(leader.id)
    assert [stage for stage, _ in timeline] == ["reserved", "appended", "durable", "committed", "answered"]
    seconds = [t for _, t in timeline]
    assert seconds == sorted(seconds)
    assert seconds[3] >= 0.002  # committed only after a follower's answer crossed the network
    assert heard == {}  # followers time no orders; they only append


def test_a_stopping_leader_answers_503_to_orders_not_yet_in_its_log(cluster: Cluster) -> None:
    leader = cluster.leader()
    outcome = cluster.order(leader, "k")  # reserved and proposed; the next cycle would append it
    leader.stop()
    assert outcome and outcome[0].value.code == 503


def test_a_follower_answers_421_with_the_leaders_url(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(r for r in cluster.replicas.values() if r is not leader)
    outcome = cluster.order(follower, "k")
    cluster.run(0.1)
    error = outcome[0].value
    assert error.code == 421
    assert error.details == {"leader_id": leader.id, "leader_url": REPLICAS[leader.id]}


def test_a_retried_request_id_gets_the_same_number_and_buys_once(cluster: Cluster) -> None:
    leader = cluster.leader()
    first = cluster.order(leader, "same", 3)
    again = cluster.order(leader, "same", 3)
    cluster.run(0.5)
    later = cluster.order(leader, "same", 3)
    cluster.run(0.5)
    assert first[0].number == again[0].number == later[0].number == 0
    assert cluster.catalog.stock == 97


def test_no_order_is_acknowledged_without_a_majority(cluster: Cluster) -> None:
    leader = cluster.leader()
    cluster.network.cut |= {i for i in REPLICAS if i != leader.id}
    outcome = cluster.order(leader, "lonely")
    cluster.run(6.0)
    assert outcome and isinstance(outcome[0].value, ApiError) and outcome[0].value.code in (421, 503)
    assert all(r.orders.latest_number == -1 for r in cluster.replicas.values())


def test_orders_are_answered_503_after_the_order_timeout_when_no_disk_takes_them(cluster: Cluster) -> None:
    leader = cluster.leader()
    hanging: list[defer.Deferred[None]] = []  # held, or the collector would end the stuck cycles

    def hang(changes: Any) -> defer.Deferred[None]:
        hanging.append(defer.Deferred())
        return hanging[-1]

    for replica in cluster.replicas.values():
        replica._store.save = hang  # every write from now on hangs
    first = cluster.order(leader, "first")   # its cycle's write hangs
    cluster.run(0.05)
    second = cluster.order(leader, "second")  # waits for that cycle to end
    cluster.run(ORDER_TIMEOUT - 0.1)
    assert first == [] and second == []
    cluster.run(0.2)
    assert [outcome[0].value.code for outcome in (first, second)] == [503, 503]


def test_a_new_leader_takes_orders_and_releases_the_lost_reservation(cluster: Cluster) -> None:
    old = cluster.leader()
    cluster.network.cut.add(old.id)
    lost = cluster.order(old, "lost", 5)  # reserved, appended on the old leader only
    cluster.run(4.0)
    assert lost and lost[0].value.code in (421, 503)
    new = cluster.leader()
    assert new.id != old.id
    ok = cluster.order(new, "after")
    cluster.run(4.0)  # the reaper settles reservations older than 2 s
    assert ok[0].number == 0
    assert cluster.catalog.settled == {"lost": "release", "after": "confirm"}
    assert cluster.catalog.stock == 99


def test_the_reaper_sees_an_order_as_in_flight_while_its_entry_waits_in_the_log(cluster: Cluster) -> None:
    leader = cluster.leader()
    followers = {i for i in REPLICAS if i != leader.id}
    cluster.network.cut |= followers
    outcome = cluster.order(leader, "waiting")
    cluster.run(0.05)
    assert not outcome
    leader._attempts = type(leader._attempts)()  # as if the client's attempt had given up
    assert leader._in_flight("waiting") and not leader._in_flight("other")
    cluster.network.cut -= followers
    cluster.run(0.2)
    assert leader.orders.for_request("waiting") is not None
    assert not leader._in_flight("waiting")


def test_leadership_moves_to_the_frontends_choice(cluster: Cluster) -> None:
    leader = cluster.leader()
    target = max(i for i in REPLICAS if i != leader.id)
    leader.set_leader(target)
    cluster.run(1.0)
    assert cluster.leader().id == target


def test_a_restarted_replica_keeps_its_orders_and_catches_up(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(i for i in REPLICAS if i != leader.id)
    cluster.order(leader, "before")
    cluster.run(0.5)
    cluster.crash(follower)
    for i in range(3):
        cluster.order(leader, f"during{i}")
    cluster.run(0.5)
    restarted = cluster.boot(follower)
    assert [o.request_id for o in restarted.orders.page(-1, 1000)] == ["before"]
    cluster.run(1.0)
    assert [o.request_id for o in restarted.orders.page(-1, 1000)] == ["before", "during0", "during1", "during2"]


def test_a_leader_read_waits_for_a_majority(cluster: Cluster) -> None:
    leader = cluster.leader()
    cluster.order(leader, "k")
    cluster.run(0.5)
    read: list[Any] = []
    defer.ensureDeferred(leader.read_order(0)).addCallbacks(read.append, read.append)
    cluster.run(0.1)
    assert read[0].request_id == "k"
    cluster.network.cut |= {i for i in REPLICAS if i != leader.id}
    stale: list[Any] = []
    defer.ensureDeferred(leader.read_order(0)).addCallbacks(stale.append, stale.append)
    cluster.run(3.0)
    assert stale[0].value.code in (421, 503)


def test_reads_that_arrive_together_share_one_heartbeat_round(cluster: Cluster) -> None:
    leader = cluster.leader()
    cluster.order(leader, "k")
    cluster.run(0.5)
    cluster.network.sent.clear()
    reads: list[Any] = []
    for _ in range(10):
        defer.ensureDeferred(leader.read_order(0)).addCallback(reads.append)
    cluster.run(0.01)
    assert [r.request_id for r in reads] == ["k"] * 10
    contexts = {m.context for m in cluster.network.sent if m.type is MessageType.HEARTBEAT and m.context}
    assert len(contexts) == 1


def test_a_committed_entry_that_is_not_an_order_is_skipped_alike_everywhere(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert leader.node is not None
    skipped: list[Any] = []
    garbage = ["not json", "[1, 2]", '{"request_id": "x", "name": "Tux", "quantity": true}']
    leader.node.propose_each(garbage).addCallback(skipped.extend)
    after = cluster.order(leader, "real")
    cluster.run(0.5)
    assert skipped == [None, None, None]  # committed, applied as nothing
    assert after[0].number == 0
    for replica in cluster.replicas.values():
        assert [o.request_id for o in replica.orders.page(-1, 1000)] == ["real"]
        assert replica.node.core.applied_index == leader.node.core.applied_index


def test_a_batch_of_peer_messages_with_one_bad_message_is_refused_whole(cluster: Cluster) -> None:
    follower = next(r for r in cluster.replicas.values() if r is not cluster.leader())
    term = follower.node.core.term
    good = Message(MessageType.HEARTBEAT, cluster.leader().id, follower.id, term + 5).to_json()
    for batch in ({"messages": [good, {"type": "heartbeat"}]},
                  {"messages": [good, {**good, "type": "vote"}]},
                  {"messages": [good, {**good, "to": 99}]},
                  {"messages": [good, {**good, "sender": 3 if good["sender"] != 3 else 1}]},
                  {"messages": []}):
        outcome: list[Any] = []
        defer.ensureDeferred(follower.receive_peer("commit_entries", batch)).addErrback(outcome.append)
        assert outcome[0].value.code == 400
    cluster.run(0.01)
    assert follower.node.core.term == term  # nothing of the refused batches was stepped


def test_a_peers_request_gets_its_answers_in_reply_not_through_the_transport(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(r for r in cluster.replicas.values() if r is not leader)
    term = leader.node.core.term
    heartbeat = Message(MessageType.HEARTBEAT, leader.id, follower.id, term, context="c").to_json()
    sent_before = len(cluster.network.sent)
    answered: list[Any] = []
    defer.ensureDeferred(follower.receive_peer("commit_entries", {"messages": [heartbeat]})).addCallback(answered.append)
    cluster.run(0.002)
    assert [(m["type"], m["sender"], m["to"], m["context"]) for m in answered[0]["messages"]] == \
        [("heartbeat_resp", follower.id, leader.id, "c")]
    assert not any(m.context == "c" for m in cluster.network.sent[sent_before:])


def test_a_stopping_replica_answers_waiting_peers_with_nothing(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(r for r in cluster.replicas.values() if r is not leader)
    heartbeat = Message(MessageType.HEARTBEAT, leader.id, follower.id, leader.node.core.term).to_json()
    answered: list[Any] = []
    defer.ensureDeferred(follower.receive_peer("commit_entries", heartbeat)).addCallback(answered.append)
    follower.stop()
    assert answered == [{"messages": []}]


def test_answers_take_the_transport_when_waiting_for_them_would_hold_the_peer_back(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(r for r in cluster.replicas.values() if r is not leader)
    core = follower.node.core
    save, held = follower._store.save, []

    async def slow_save(changes: Any) -> None:  # a slow disk: each write waits to be let through
        held.append(defer.Deferred())
        await held[-1]
        await save(changes)

    follower._store.save = slow_save
    term, last = leader.node.core.term, core.last_index
    append = Message(MessageType.APPEND, leader.id, follower.id, term, log_term=core.log[-1].term, index=last,
                     entries=(Entry(last + 1, term, ""),), commit=core.commit_index)
    first: list[Any] = []
    defer.ensureDeferred(follower.receive_peer("append_entries", append.to_json())).addCallback(first.append)
    cluster.run(0.002)  # its write is on disk now
    heartbeat = Message(MessageType.HEARTBEAT, leader.id, follower.id, term, context="c").to_json()
    second: list[Any] = []
    defer.ensureDeferred(follower.receive_peer("commit_entries", heartbeat)).addCallback(second.append)
    assert second == [{"messages": []}]  # at once: its answer could only come a whole write later
    assert first == []
    cluster.run(0.03)
    assert first == [{"messages": []}]  # the answer wait is over; the write is not
    sent_before = len(cluster.network.sent)
    while held:
        held.pop(0).callback(None)
        cluster.run(0.01)
    answers = [(m.type, m.index, m.context) for m in cluster.network.sent[sent_before:] if m.sender == follower.id]
    assert (MessageType.APPEND_RESP, last + 1, "") in answers
    assert (MessageType.HEARTBEAT_RESP, 0, "c") in [(t, 0, c) for t, _, c in answers]


def committed_quantity(replica: RaftReplica) -> int:
    return sum(order.quantity for order in replica.orders.page(-1, 1000))


def lead_a_later_term_with_a_reservation_answer_on_its_way(cluster: Cluster, *,
                                                           others_reap: bool) -> tuple[RaftReplica, int]:
    """Replica B reserves "Y" in its term; the catalog's answer is held back while another
    replica leads a later term (and releases "Y" when ``others_reap``), then B leads again,
    in a third term. Returns B, before the answer arrives, and the term B was deposed in."""
    b = cluster.leader()
    cluster.catalog.hold_answers = True
    cluster.order(b, "Y", 5)
    cluster.run(0.01)
    assert cluster.catalog.held_answers, "the reservation was not asked for"
    first_term = b.node.core.term
    for replica in cluster.replicas.values():
        if replica is not b and not others_reap:
            replica.reaper.stop()
    cluster.network.cut.add(b.id)
    cluster.run(3.0)
    d = cluster.leader()
    assert d is not b and d.node.core.term > first_term
    assert (cluster.catalog.settled.get("Y") == "release") == others_reap
    middle_term = d.node.core.term
    cluster.network.cut.discard(b.id)
    cluster.run(1.0)
    d.set_leader(b.id)
    cluster.run(1.0)
    assert cluster.leader() is b and b.node.core.term > middle_term
    return b, middle_term


def test_a_reservation_of_an_earlier_term_never_becomes_an_order_in_a_later_one(cluster: Cluster) -> None:
    b, _ = lead_a_later_term_with_a_reservation_answer_on_its_way(cluster, others_reap=True)
    first = cluster.order(b, "Y", 5)  # joins the first attempt, still waiting for its answer
    cluster.catalog.let_answers_through()  # "reserved", though the stock was given back meanwhile
    cluster.run(0.5)
    assert first[0].value.code == 503  # retryable: nothing was appended
    assert b.orders.for_request("Y") is None
    retry = cluster.order(b, "Y", 5)  # the frontend's retry with the same key reserves again
    cluster.run(3.0)
    assert retry[0].number == 0
    assert cluster.catalog.stock + committed_quantity(b) == 100  # stock conserved
    assert cluster.catalog.settled["Y"] == "confirm"


def test_an_order_is_appended_in_a_term_only_once_that_term_has_fenced_the_catalog(cluster: Cluster) -> None:
    b, stale_term = lead_a_later_term_with_a_reservation_answer_on_its_way(cluster, others_reap=False)
    b.reaper.stop()  # its confirmation of "Y" would raise the fence and hide the window
    cluster.catalog.let_answers_through()
    cluster.run(0.5)
    retry = cluster.order(b, "Y", 5)
    cluster.run(0.5)
    assert retry[0].number == 0
    # A deposed leader's release, sent in its term before it heard of the new one, arrives now.
    release: list[int] = []
    defer.ensureDeferred(cluster.catalog.settle("release", "Y", stale_term)).addCallback(release.append)
    cluster.run(3.0)
    assert release == [409]
    assert cluster.catalog.stock + committed_quantity(b) == 100
