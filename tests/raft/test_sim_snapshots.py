"""Log compaction on the simulated cluster: MIT 6.824's lab 3D scenarios, plus a follower
caught up from the kept tail, a wiped node, and logs that stay short however long the
history grows.

Nodes snapshot every :data:`SNAPSHOT_INTERVAL` applied entries (6.824's
``SnapShotInterval``). Every step is checked by
:class:`~toystore.raft.sim.InvariantChecker` (an installed snapshot must hold exactly
the entries applied elsewhere up to its index), and each scenario ends with the
log-matching check.
"""

from __future__ import annotations

import pytest

from toystore.raft.messages import MessageType
from toystore.raft.sim import TICKS_PER_SECOND, Cluster, SimNode

SNAPSHOT_INTERVAL = 10
#: Entries a log may hold: those since the last snapshot, those proposed and not yet
#: applied, and slack (6.824 bounds the persisted state's size instead).
MAX_LOG_ENTRIES = 4 * SNAPSHOT_INTERVAL
SEEDS = [1, 2, 3]


def other(cluster: Cluster, node_id: int, offset: int) -> int:
    return (node_id - 1 + offset) % len(cluster.ids) + 1


def check_logs_short(cluster: Cluster) -> None:
    for node_id in cluster.connected():
        entries = cluster.core(node_id).log_entries
        assert entries <= MAX_LOG_ENTRIES, f"seed={cluster.seed}: node {node_id} holds {entries} entries"


def applied_data(cluster: Cluster, node_id: int) -> list[str]:
    return [entry.data for entry in cluster.nodes[node_id].applied if entry.data]


def snapshot_common(seed: int, *, disconnect: bool, reliable: bool, crash: bool) -> Cluster:
    """6.824's ``snapcommon``: 30 rounds in which a victim (a follower, or every third
    round the leader) is cut off or crashed while a sender proposes about a snapshot
    interval's worth, then brought back, so that it usually needs a snapshot."""
    cluster = Cluster(3, seed=seed, snapshot_every=SNAPSHOT_INTERVAL)
    rng = cluster.rng
    size = len(cluster.ids)
    cluster.network.set_unreliable(not reliable)
    cluster.one(f"{rng.random()}", size)
    leader = cluster.check_one_leader()
    for round_ in range(30):
        victim, sender = other(cluster, leader, 1), leader
        if round_ % 3 == 1:
            sender, victim = victim, leader
        if disconnect:
            cluster.network.disconnect(victim)
            cluster.one(f"{rng.random()}", size - 1)
        if crash:
            cluster.crash(victim)
            cluster.one(f"{rng.random()}", size - 1)
        for _ in range(SNAPSHOT_INTERVAL // 2 + rng.randrange(SNAPSHOT_INTERVAL)):
            cluster.propose(sender, f"{rng.random()}")
        # Without faults, every follower catches up by entries (no SNAPSHOT needed).
        cluster.one(f"{rng.random()}", size if not (disconnect or crash) else size - 1)
        check_logs_short(cluster)
        if disconnect:
            cluster.network.connect(victim)
            cluster.one(f"{rng.random()}", size)
            leader = cluster.check_one_leader()
        if crash:
            cluster.restart(victim)
            cluster.one(f"{rng.random()}", size)
            leader = cluster.check_one_leader()
    cluster.check_logs_match()
    return cluster


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_basic(seed: int) -> None:
    cluster = snapshot_common(seed, disconnect=False, reliable=True, crash=False)
    assert all(cluster.core(node_id).snapshot_index > 0 for node_id in cluster.ids)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("disconnect", "reliable", "crash"), [
    pytest.param(True, True, False, id="install"),
    pytest.param(True, False, False, id="install-unreliable"),
    pytest.param(False, True, True, id="install-crash"),
    pytest.param(False, False, True, id="install-unreliable-crash"),
])
def test_snapshot_install(seed: int, disconnect: bool, reliable: bool, crash: bool) -> None:
    """6.824's TestSnapshotInstall3D and its unreliable and crash variants."""
    cluster = snapshot_common(seed, disconnect=disconnect, reliable=reliable, crash=crash)
    assert cluster.network.sent[MessageType.SNAPSHOT] >= 10


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_all_crash(seed: int) -> None:
    """Every node crashes at once, several times, each with a snapshot behind it."""
    cluster = Cluster(3, seed=seed, snapshot_every=SNAPSHOT_INTERVAL)
    rng = cluster.rng
    cluster.one("start", 3)
    for round_ in range(5):
        for n in range(SNAPSHOT_INTERVAL // 2 + rng.randrange(SNAPSHOT_INTERVAL)):
            cluster.one(f"{round_}-{n}", 3)
        before = cluster.one(f"{round_}-last", 3)
        for node_id in cluster.ids:
            cluster.crash(node_id)
        for node_id in cluster.ids:
            cluster.restart(node_id)
        assert all(cluster.core(node_id).snapshot_index > 0 for node_id in cluster.ids)
        assert cluster.one(f"{round_}-after", 3) > before
    cluster.check_logs_match()


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_init(seed: int) -> None:
    """A restart from a snapshot alone, then from a snapshot and a tail written after it."""
    cluster = Cluster(3, seed=seed, snapshot_every=SNAPSHOT_INTERVAL)
    cluster.one("start", 3)
    for n in range(SNAPSHOT_INTERVAL + 1):
        cluster.one(f"v{n}", 3)
    for _ in range(2):
        for node_id in cluster.ids:
            cluster.crash(node_id)
        for node_id in cluster.ids:
            cluster.restart(node_id)
        cluster.one(f"after-restart-{_}", 3)
    assert all(cluster.core(node_id).snapshot_index >= SNAPSHOT_INTERVAL for node_id in cluster.ids)
    expected = ["start", *(f"v{n}" for n in range(SNAPSHOT_INTERVAL + 1)), "after-restart-0", "after-restart-1"]
    assert all(applied_data(cluster, node_id) == expected for node_id in cluster.ids)
    cluster.check_logs_match()


# -- beyond 6.824 -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_a_follower_within_the_kept_tail_catches_up_by_entries(seed: int) -> None:
    cluster = Cluster(3, seed=seed, snapshot_every=SNAPSHOT_INTERVAL, snapshot_keep=2 * SNAPSHOT_INTERVAL)
    cluster.one("start", 3)
    follower = other(cluster, cluster.check_one_leader(), 1)
    cluster.network.disconnect(follower)
    for n in range(SNAPSHOT_INTERVAL + 3):
        cluster.one(f"v{n}", 2)
    leader = cluster.core(cluster.check_one_leader())
    assert leader.snapshot_index > cluster.core(follower).last_index >= leader.first_index - 1
    cluster.network.connect(follower)
    cluster.one("end", 3)
    assert cluster.network.sent[MessageType.SNAPSHOT] == 0
    assert applied_data(cluster, follower)[-2:] == [f"v{SNAPSHOT_INTERVAL + 2}", "end"]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_wiped_node_catches_up_by_snapshot(seed: int) -> None:
    cluster = Cluster(3, seed=seed, snapshot_every=SNAPSHOT_INTERVAL)
    for n in range(3 * SNAPSHOT_INTERVAL):
        cluster.one(f"v{n}", 3)
    wiped = other(cluster, cluster.check_one_leader(), 1)
    cluster.crash(wiped)
    cluster.nodes[wiped] = SimNode(wiped)
    cluster.restart(wiped)
    cluster.one("end", 3)
    assert cluster.network.sent[MessageType.SNAPSHOT] >= 1
    assert cluster.nodes[wiped].storage.snapshot is not None
    assert applied_data(cluster, wiped) == [*(f"v{n}" for n in range(3 * SNAPSHOT_INTERVAL)), "end"]
    cluster.check_logs_match()


@pytest.mark.parametrize("seed", SEEDS)
def test_logs_stay_short_however_long_the_history(seed: int) -> None:
    cluster = Cluster(5, seed=seed, snapshot_every=SNAPSHOT_INTERVAL, snapshot_keep=SNAPSHOT_INTERVAL // 2)
    for n in range(300):
        cluster.propose(cluster.leader() or 1, f"v{n}")
        cluster.tick()
        if n % 50 == 0:
            cluster.restart(cluster.rng.choice(cluster.ids))
    cluster.one("end", 5, max_ticks=10 * TICKS_PER_SECOND)
    check_logs_short(cluster)
    for node_id in cluster.ids:
        storage = cluster.nodes[node_id].storage
        assert len(storage.entries) <= MAX_LOG_ENTRIES, f"node {node_id} stores {len(storage.entries)} entries"
    cluster.check_logs_match()
