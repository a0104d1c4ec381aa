"""Raft order replicas that compact their logs and send snapshots: real nodes, SQLite
stores and ``/install_snapshot`` routes on a task.Clock; Raft messages go through the
in-memory network, snapshot chunks through StubTreq."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import treq

from tests.test_primary_backup import AUTH, TOKEN, result_of
from tests.test_primary_backup import Network as HttpNetwork
from tests.test_raft_replica import REPLICAS, Cluster
from toystore.order.api import OrderApi
from toystore.order.raft_replica import RaftReplica
from toystore.raft.messages import Message, MessageType
from toystore.raft import snapshots
from toystore.raft.snapshots import MAX_CHUNK_ITEMS, SnapshotSender

SNAPSHOT_EVERY = 20
CHUNK_ITEMS = 7


class SnapshotCluster(Cluster):
    def __init__(self, tmp_path: Path) -> None:
        self.http = HttpNetwork()
        self.http.down.clear()
        self.senders: dict[int, SnapshotSender] = {}
        self.chunks: dict[int, list[tuple[int, int]]] = {}  # per replica, (offset, items) of each chunk it got
        super().__init__(tmp_path)

    def boot(self, i: int, *, join: bool = False, **node_options: Any) -> RaftReplica:
        replica = super().boot(i, join=join, snapshot_every=SNAPSHOT_EVERY, snapshot_keep=2, **node_options)
        node = replica.node
        assert node is not None
        sender = SnapshotSender(self.http, replica.peers,  # type: ignore[arg-type]
                                source=replica, clock=self.clock, token=TOKEN, on_answer=node.receive,
                                on_done=node.report_snapshot, chunk_items=CHUNK_ITEMS)
        node.membership_listeners.append(lambda _: sender.set_peers(replica.peers))
        self.senders[i] = self.network.snapshot_senders[i] = sender
        receive, got = replica.receive_snapshot_chunk, self.chunks.setdefault(i, [])

        async def recording(body: Any) -> Any:
            got.append((body.get("offset"), len(body.get("items", []))))
            return await receive(body)

        replica.receive_snapshot_chunk = recording  # type: ignore[method-assign]
        self.http.hosts.apis[f"r{i}"] = OrderApi(replica, TOKEN).app.resource()
        self.http.down.discard(f"r{i}")
        return replica

    def crash(self, i: int) -> None:
        super().crash(i)
        self.http.down.add(f"r{i}")

    def follower(self) -> int:
        """The lowest id that does not lead."""
        return next(i for i in REPLICAS if i != self.leader().id)

    def wipe(self, i: int) -> None:
        for path in self.tmp_path.glob(f"order-{i}.sqlite3*"):
            path.unlink()

    def rejoin_wiped(self) -> tuple[int, RaftReplica]:
        """A follower is down while 45 orders commit (the log is compacted past it), then
        comes back with an empty disk; :return: its id and the replica back."""
        follower = self.follower()
        self.crash(follower)
        self.place([f"k{i}" for i in range(45)])
        self.wipe(follower)
        return follower, self.boot(follower)

    @staticmethod
    def after_each_chunk(replica: RaftReplica, hook: Callable[[Any], None]) -> None:
        """Calls ``hook`` with each chunk's answer once ``replica`` has handled it; the
        answer the leader gets is what the hook leaves (an exception: none)."""
        receive = replica.receive_snapshot_chunk

        async def hooked(body: Any) -> Any:
            answer = await receive(body)
            hook(answer)
            return answer

        replica.receive_snapshot_chunk = hooked  # type: ignore[method-assign]

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.001)):
            self.clock.advance(0.001)
            self.http.stub.flush()

    def place(self, keys: list[str]) -> list[list[Any]]:
        leader = self.leader()
        outcomes = [self.order(leader, key) for key in keys]
        self.run(0.5)
        return outcomes

    def post_chunk(self, i: int, body: Any) -> tuple[int, dict[str, Any]]:
        posted = self.http.stub.post(f"http://r{i}/install_snapshot", data=json.dumps(body).encode(),
                                     headers={**AUTH, b"Content-Type": [b"application/json"]})
        response = self.wait(posted)
        return response.code, self.wait(treq.json_content(response))

    def wait(self, d: Any) -> Any:
        """Runs the cluster until ``d`` fires (a chunk that installs waits for a cycle)."""
        for _ in range(1000):
            if d.called:
                break
            self.run(0.001)
        return result_of(d)


@pytest.fixture
def cluster(tmp_path: Path) -> SnapshotCluster:
    return SnapshotCluster.started(tmp_path)


def _held(replica: RaftReplica) -> list[tuple[int, str]]:
    return [(o.number, o.request_id) for o in replica.orders.page(-1, 1000)]


def test_the_log_is_compacted_every_n_entries_and_a_restart_reads_only_its_tail(cluster: SnapshotCluster) -> None:
    cluster.place([f"k{i}" for i in range(50)])
    for replica in cluster.replicas.values():
        status = replica.status()
        assert status["snapshot_index"] >= 40, status
        assert status["log_entries"] <= SNAPSHOT_EVERY + 3, status
    leader = cluster.leader()
    expected = _held(leader)
    assert [n for n, _ in expected] == list(range(50))
    follower = cluster.follower()
    cluster.crash(follower)
    restarted = cluster.boot(follower)
    assert restarted.node is not None and restarted.node.core.log_entries <= SNAPSHOT_EVERY + 3
    cluster.run(1.0)
    assert _held(restarted) == expected
    cluster.place(["after"])
    assert _held(cluster.replicas[follower])[-1] == (50, "after")


def test_a_retry_of_a_compacted_order_keeps_its_number_and_buys_nothing(cluster: SnapshotCluster) -> None:
    (first,), *_ = cluster.place([f"k{i}" for i in range(45)])
    leader = cluster.leader()
    assert leader.node is not None and leader.node.core.first_index > 1  # k0's entry is gone
    stock = cluster.catalog.stock
    (again,) = cluster.order(leader, "k0")
    assert again.number == first.number == 0 and cluster.catalog.stock == stock


def test_a_wiped_follower_catches_up_by_snapshot_in_chunks_then_by_entries(cluster: SnapshotCluster) -> None:
    follower, back = cluster.rejoin_wiped()
    leader = cluster.leader()
    assert leader.node is not None and leader.node.core.snapshot_index >= 40
    cluster.run(2.0)
    assert _held(back) == _held(leader)
    assert back.node is not None and back.node.core.snapshot_index == leader.node.core.snapshot_index
    sent = leader._store.snapshot
    assert sent is not None and sent.size > 2 * CHUNK_ITEMS
    # Bounded chunks, one after another, and nothing sent twice.
    assert cluster.chunks[follower] == [(offset, min(CHUNK_ITEMS, sent.size - offset))
                                        for offset in range(0, sent.size, CHUNK_ITEMS)]
    cluster.place(["after"])
    assert _held(back)[-1] == (45, "after")


def test_a_cut_transfer_resumes_where_the_follower_is(cluster: SnapshotCluster) -> None:
    follower, back = cluster.rejoin_wiped()

    def cut_off(_: Any) -> None:
        if len(cluster.chunks[follower]) == 3:
            cluster.http.down.add(f"r{follower}")  # the follower holds 21 orders, the leader hears nothing
            cluster.clock.callLater(0.3, cluster.http.down.discard, f"r{follower}")

    cluster.after_each_chunk(back, cut_off)
    cluster.run(3.0)
    assert _held(back) == _held(cluster.leader())
    offsets = [offset for offset, _ in cluster.chunks[follower]]
    # The next transfer starts at 0, hears that the follower holds 21, and goes on from there.
    restart = offsets.index(0, 1)
    assert offsets[:restart] == [0, 7, 14] and offsets[restart + 1] == 21
    assert offsets[restart + 1:] == list(range(21, offsets[-1] + 1, CHUNK_ITEMS))


def _chunk(cluster: SnapshotCluster, to: int, *, term: int | None = None, offset: int = 0, size: int = 3,
           items: Any = None, index: int = 30) -> dict[str, Any]:
    leader = cluster.leader()
    assert leader.node is not None
    message = Message(MessageType.SNAPSHOT, leader.id, to, term or leader.node.core.term, index=index, log_term=1)
    if items is None:
        items = [{"number": n, "request_id": f"s{n}", "name": "Tux", "quantity": 1} for n in range(offset, size)]
    return {"message": message.to_json(), "size": size, "header": {}, "offset": offset, "items": items}


@pytest.mark.parametrize("change, status, words", [
    (lambda body: body.update(message={"type": "append"}), 400, "not a Raft message"),
    (lambda body: body["message"].update(type="heartbeat"), 400, "does not belong"),
    (lambda body: body.update(offset=-1), 400, "'offset'"),
    (lambda body: body.update(size="3"), 400, "'size'"),
    (lambda body: body.update(items=[{"number": 0, "request_id": "s0", "name": "Tux"}] * 3), 400, "quantity"),
    (lambda body: body.update(items=[{"number": n, "request_id": "same", "name": "Tux", "quantity": 1}
                                     for n in range(3)]), 400, "one request id"),
    (lambda body: body.update(size=2), 400, "pass the snapshot's size"),
    (lambda body: body.update(offset=2, items=body["items"][2:]), 409, "holds 0 items"),
    (lambda body: body["message"].update(term=1), 409, "older than"),
    (lambda body: body.update(size=MAX_CHUNK_ITEMS + 1, items=[{}] * (MAX_CHUNK_ITEMS + 1)), 413, "at most"),
])
def test_a_bad_chunk_is_refused_with_a_clear_error_and_changes_nothing(
        cluster: SnapshotCluster, change: Any, status: int, words: str) -> None:
    cluster.place(["a", "b"])
    cluster.leader().set_leader(cluster.follower())  # a transfer: term 1 is stale from now on
    cluster.run(1.0)
    assert cluster.leader().node.core.term > 1  # type: ignore[union-attr]
    follower = cluster.follower()
    replica = cluster.replicas[follower]
    before = (_held(replica), replica.node.core.commit_index if replica.node else None)
    body = _chunk(cluster, follower, size=3)
    change(body)
    code, payload = cluster.post_chunk(follower, body)
    assert code == status and words in payload["error"]["message"], payload
    assert (_held(replica), replica.node.core.commit_index if replica.node else None) == before
    assert replica._store.snapshots.staged is None  # nothing staged


def test_an_out_of_order_chunk_names_the_count_held(cluster: SnapshotCluster) -> None:
    follower = cluster.follower()
    code, payload = cluster.post_chunk(follower, _chunk(cluster, follower, size=5, items=[
        {"number": n, "request_id": f"s{n}", "name": "Tux", "quantity": 1} for n in range(2)]))
    assert code == 200 and payload["data"]["received"] == 2
    code, payload = cluster.post_chunk(follower, _chunk(cluster, follower, size=5, offset=4, items=[
        {"number": 4, "request_id": "s4", "name": "Tux", "quantity": 1}]))
    assert code == 409 and payload["error"]["received"] == 2


def test_an_oversized_chunk_body_is_refused(cluster: SnapshotCluster) -> None:
    follower = cluster.follower()
    body = _chunk(cluster, follower, size=1, items=[{"number": 0, "request_id": "x" * (5 << 20), "name": "Tux",
                                                     "quantity": 1}])
    code, payload = cluster.post_chunk(follower, body)
    assert code == 413 and "larger than" in payload["error"]["message"]


def test_a_follower_that_crashes_mid_transfer_resumes_from_what_it_staged(cluster: SnapshotCluster) -> None:
    follower, back = cluster.rejoin_wiped()
    crashed = []

    def crash_after_two(_: Any) -> None:
        if len(cluster.chunks[follower]) == 2 and not crashed:
            crashed.append(True)
            cluster.crash(follower)  # right after the second chunk is durable

    cluster.after_each_chunk(back, crash_after_two)
    cluster.run(0.5)
    assert crashed and follower not in cluster.replicas
    del cluster.chunks[follower]
    again = cluster.boot(follower)
    cluster.run(3.0)
    assert _held(again) == _held(cluster.leader())
    offsets = [offset for offset, _ in cluster.chunks[follower]]
    assert offsets[:2] == [0, 2 * CHUNK_ITEMS]  # refused at 0: it holds two chunks from before its crash


def test_the_reaper_confirms_a_reservation_whose_entry_was_compacted(cluster: SnapshotCluster) -> None:
    cluster.place([f"k{i}" for i in range(45)])
    leader = cluster.leader()
    assert leader.node is not None and leader.node.core.first_index > 5
    # The confirmation of k0 was lost: its reservation is held, and its entry is compacted away.
    del cluster.catalog.settled["k0"]
    cluster.run(4.0)
    assert cluster.catalog.settled["k0"] == "confirm"


def test_a_lost_answer_to_the_last_chunk_costs_two_empty_requests_not_a_second_transfer(
        cluster: SnapshotCluster) -> None:
    follower, back = cluster.rejoin_wiped()
    lost = []

    def lose_the_installs_answer(answer: Any) -> None:
        if answer["messages"] and not lost:
            lost.append(True)
            raise RuntimeError("the connection dropped before the answer went out")

    cluster.after_each_chunk(back, lose_the_installs_answer)
    cluster.run(3.0)
    assert lost and _held(back) == _held(cluster.leader())
    size = back._store.snapshot.size if back._store.snapshot else 0
    first = len(range(0, size, CHUNK_ITEMS))
    # The retry hears that the follower holds it all, and sends the last chunk empty.
    assert cluster.chunks[follower][first:] == [(0, CHUNK_ITEMS), (size, 0)]
    assert back._store.snapshots.staged is None


def test_chunks_are_cut_by_their_encoded_size(cluster: SnapshotCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "CHUNK_ITEM_BYTES", 400)
    follower = cluster.follower()
    cluster.crash(follower)
    cluster.place([f"{'🧸' * 5}{i}" for i in range(45)])  # each key escapes to over 60 bytes
    cluster.wipe(follower)
    back = cluster.boot(follower)
    cluster.run(2.0)
    assert _held(back) == _held(cluster.leader())
    sizes = [items for _, items in cluster.chunks[follower]]
    assert max(sizes) < CHUNK_ITEMS and sum(sizes) == back._store.snapshot.size  # type: ignore[union-attr]
