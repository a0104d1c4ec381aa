"""Whole-cluster scenarios on the simulated network, ported from MIT 6.824's Raft tests
(2A election, 2B agreement, 2C persistence) plus pre-vote, check-quorum, leadership
transfer and ReadIndex.

Every step of every run is checked by :class:`~toystore.raft.sim.InvariantChecker`;
failures name the seed (also in the test id) to replay them. Time: 20 ticks = 1 s.
The scenarios that commit entries run twice: with whole logs, and with compaction.
"""

from __future__ import annotations

import itertools

import pytest

from toystore.raft.messages import MessageType, Role
from toystore.raft.sim import TICKS_PER_SECOND, Cluster

ELECTION_TIMEOUT = TICKS_PER_SECOND  # 6.824's RaftElectionTimeout: 1 s
SEEDS = [1, 2, 3]


@pytest.fixture(params=[{}, {"snapshot_every": 5}], ids=["whole-logs", "compacting"])
def compaction(request: pytest.FixtureRequest) -> dict[str, int]:
    """How nodes keep their logs: whole, or compacted at a snapshot every 5 applied
    entries, so that a node back from a fault often needs a snapshot."""
    return request.param  # type: ignore[no-any-return]


def other(cluster: Cluster, node_id: int, offset: int) -> int:
    """6.824's ``(leader + offset) % servers`` over ids 1..N."""
    return (node_id - 1 + offset) % len(cluster.ids) + 1


def applied_data(cluster: Cluster, node_id: int) -> list[str]:
    return [entry.data for entry in cluster.nodes[node_id].applied if entry.data]


# -- 2A: election ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_initial_election(size: int, seed: int) -> None:
    cluster = Cluster(size, seed=seed)
    leader = cluster.check_one_leader()
    cluster.tick(1)
    term = cluster.check_terms()
    assert term >= 1
    # Without failures, neither the term nor the leader changes.
    cluster.tick(2 * ELECTION_TIMEOUT)
    assert cluster.check_terms() == term
    assert cluster.check_one_leader() == leader


@pytest.mark.parametrize("seed", SEEDS)
def test_re_election(seed: int) -> None:
    cluster = Cluster(3, seed=seed)
    leader1 = cluster.check_one_leader()
    # The leader disconnects: a new one is elected.
    cluster.network.disconnect(leader1)
    leader2 = cluster.check_one_leader()
    assert leader2 != leader1
    term = cluster.check_terms()
    # The old leader rejoins: it must not disturb the new one.
    cluster.network.connect(leader1)
    cluster.tick(2 * ELECTION_TIMEOUT)
    assert cluster.check_one_leader() == leader2
    assert cluster.check_terms() == term
    # No quorum: no leader.
    cluster.network.disconnect(leader2)
    cluster.network.disconnect(other(cluster, leader2, 1))
    cluster.tick(2 * ELECTION_TIMEOUT)
    cluster.check_no_leader()
    # A quorum again: a leader.
    cluster.network.connect(other(cluster, leader2, 1))
    cluster.check_one_leader()
    cluster.network.connect(leader2)
    cluster.check_one_leader()


@pytest.mark.parametrize("seed", SEEDS)
def test_many_elections(seed: int) -> None:
    cluster = Cluster(7, seed=seed)
    cluster.check_one_leader()
    for _ in range(10):
        isolated = cluster.rng.sample(cluster.ids, 3)
        for node_id in isolated:
            cluster.network.disconnect(node_id)
        # Either the current leader is still alive, or the remaining four elect one.
        cluster.check_one_leader()
        for node_id in isolated:
            cluster.network.connect(node_id)
    cluster.check_one_leader()


# -- 2B: agreement -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5])
def test_basic_agree(size: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(size, seed=size, **compaction)
    cluster.check_one_leader()
    cluster.tick(2)
    previous = cluster.core(cluster.leader() or 0).commit_index
    for n in range(1, 4):
        count, _ = cluster.n_committed(previous + 1)
        assert count == 0, "committed before Start()"
        index = cluster.one(f"cmd{n}", size, retry=False)
        assert index == previous + 1
        previous = index


@pytest.mark.parametrize("seed", SEEDS)
def test_fail_agree(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(3, seed=seed, **compaction)
    cluster.one("101", 3)
    follower = other(cluster, cluster.check_one_leader(), 1)
    cluster.network.disconnect(follower)
    # The leader and the remaining follower agree without it...
    cluster.one("102", 2)
    cluster.one("103", 2)
    cluster.tick(ELECTION_TIMEOUT)
    cluster.one("104", 2)
    cluster.one("105", 2)
    # ...and it catches up once back.
    cluster.network.connect(follower)
    cluster.one("106", 3)
    cluster.tick(ELECTION_TIMEOUT)
    cluster.one("107", 3)
    assert applied_data(cluster, follower) == [str(n) for n in range(101, 108)]


@pytest.mark.parametrize("seed", SEEDS)
def test_fail_no_agree(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(5, seed=seed, **compaction)
    cluster.one("10", 5)
    leader = cluster.check_one_leader()
    for offset in (1, 2, 3):
        cluster.network.disconnect(other(cluster, leader, offset))
    placed = cluster.propose(leader, "20")
    assert placed is not None
    cluster.tick(2 * ELECTION_TIMEOUT)
    assert cluster.n_committed(placed[0]) == (0, None), "committed without a majority"
    for offset in (1, 2, 3):
        cluster.network.connect(other(cluster, leader, offset))
    # The majority may elect a new leader; either way agreement resumes.
    leader2 = cluster.check_one_leader()
    assert cluster.propose(leader2, "30") is not None
    cluster.one("1000", 5)
    assert "30" in applied_data(cluster, 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_concurrent_starts(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(3, seed=seed, **compaction)
    for _attempt in range(5):
        leader = cluster.check_one_leader()
        term = cluster.core(leader).term
        placed = [cluster.propose(leader, f"c{n}") for n in range(5)]
        if any(p is None or p[1] != term for p in placed):
            continue  # the term changed meanwhile: try again, as 6.824 does
        indexes = [p[0] for p in placed if p is not None]
        assert cluster.run_until(lambda: all(cluster.n_committed(i)[0] == 3 for i in indexes), 2 * TICKS_PER_SECOND)
        if cluster.core(leader).term != term:
            continue
        assert sorted(cluster.n_committed(i)[1] or "" for i in indexes) == [f"c{n}" for n in range(5)]
        return
    raise AssertionError("term changed too often")


@pytest.mark.parametrize("seed", SEEDS)
def test_rejoin_of_partitioned_leader(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(3, seed=seed, **compaction)
    cluster.one("101", 3)
    leader1 = cluster.check_one_leader()
    cluster.network.disconnect(leader1)
    # The isolated leader accepts entries that can never commit.
    for data in ("102", "103", "104"):
        assert cluster.propose(leader1, data) is not None
    cluster.one("103", 2)
    leader2 = cluster.check_one_leader()
    cluster.network.disconnect(leader2)
    cluster.network.connect(leader1)
    cluster.one("104", 2)
    cluster.network.connect(leader2)
    cluster.one("105", 3)
    for node_id in cluster.ids:
        assert applied_data(cluster, node_id) == ["101", "103", "104", "105"]


@pytest.mark.parametrize(("seed", "batch"), [(1, 512), (2, 512), (3, 1), (4, 1)])
def test_backup_of_many_uncommitted_entries(seed: int, batch: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(5, seed=seed, max_entries_per_append=batch, **compaction)
    rng = cluster.rng
    cluster.one("first", 5)
    # Put the leader and one follower in a partition.
    leader1 = cluster.check_one_leader()
    for offset in (2, 3, 4):
        cluster.network.disconnect(other(cluster, leader1, offset))
    # 50 entries that will never commit.
    for n in range(50):
        cluster.propose(leader1, f"lost-a{n}")
    cluster.tick(ELECTION_TIMEOUT // 2)
    cluster.network.disconnect(leader1)
    cluster.network.disconnect(other(cluster, leader1, 1))
    # The other three form a majority and commit 50 entries.
    for offset in (2, 3, 4):
        cluster.network.connect(other(cluster, leader1, offset))
    for n in range(50):
        cluster.one(f"b{n}-{rng.random()}", 3)
    # Now a leader and one follower again, with 50 entries that will not commit.
    leader2 = cluster.check_one_leader()
    bystander = next(other(cluster, leader1, k) for k in (2, 3, 4) if other(cluster, leader1, k) != leader2)
    cluster.network.disconnect(bystander)
    for n in range(50):
        cluster.propose(leader2, f"lost-c{n}")
    cluster.tick(ELECTION_TIMEOUT // 2)
    # Bring the original leader's side back with the bystander: they must back up.
    for node_id in cluster.ids:
        cluster.network.disconnect(node_id)
    for node_id in (leader1, other(cluster, leader1, 1), bystander):
        cluster.network.connect(node_id)
    for n in range(50):
        cluster.one(f"d{n}-{rng.random()}", 3)
    for node_id in cluster.ids:
        cluster.network.connect(node_id)
    last = cluster.one("last", 5)
    logs = {tuple(applied_data(cluster, node_id)) for node_id in cluster.ids}
    assert len(logs) == 1
    assert not any(data.startswith("lost") for data in logs.pop())
    assert cluster.n_committed(last) == (5, "last")


@pytest.mark.parametrize("seed", SEEDS)
def test_rejoining_old_leader_gets_its_longer_stale_suffix_truncated(seed: int) -> None:
    cluster = Cluster(3, seed=seed)
    cluster.one("a", 3)
    old = cluster.check_one_leader()
    cluster.network.disconnect(old)
    for n in range(30):
        cluster.propose(old, f"stale{n}")
    cluster.one("b", 2)
    # A second election: the new leader's first probe then lands inside the stale suffix
    # (a first one would land on the common prefix and overwrite the suffix directly).
    cluster.restart(cluster.check_one_leader())
    cluster.one("b2", 2)
    new_leader = cluster.check_one_leader()
    assert cluster.core(old).last_index > cluster.core(new_leader).last_index
    cluster.network.connect(old)
    cluster.one("c", 3)
    assert cluster.network.sent[MessageType.TRUNCATE] > 0
    assert list(cluster.core(old).log) == list(cluster.core(new_leader).log)
    assert applied_data(cluster, old) == ["a", "b", "b2", "c"]


# -- 2C: persistence ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_persist_across_crash_of_every_node(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(3, seed=seed, **compaction)
    cluster.one("11", 3)
    for node_id in cluster.ids:
        cluster.crash(node_id)
    for node_id in cluster.ids:
        cluster.restart(node_id)
    cluster.one("12", 3)
    leader1 = cluster.check_one_leader()
    cluster.restart(leader1)
    cluster.one("13", 3)
    leader2 = cluster.check_one_leader()
    cluster.crash(leader2)
    cluster.one("14", 2)
    cluster.restart(leader2)
    # Wait for it to catch up before crashing another.
    assert cluster.run_until(lambda: cluster.n_committed(cluster.core(leader2).last_index)[0] == 3, ELECTION_TIMEOUT * 5)
    third = other(cluster, cluster.check_one_leader(), 1)
    cluster.crash(third)
    cluster.one("15", 2)
    cluster.restart(third)
    cluster.one("16", 3)
    assert applied_data(cluster, third) == [str(n) for n in range(11, 17)]


@pytest.mark.parametrize("seed", SEEDS)
def test_persist_with_partitions_and_restarts(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(5, seed=seed, **compaction)
    index = 1
    for _ in range(5):
        cluster.one(f"{10 + index}", 5)
        index += 1
        leader1 = cluster.check_one_leader()
        cluster.crash(other(cluster, leader1, 1))
        cluster.crash(other(cluster, leader1, 2))
        cluster.one(f"{10 + index}", 3)
        index += 1
        for offset in (0, 3, 4):
            cluster.crash(other(cluster, leader1, offset))
        cluster.restart(other(cluster, leader1, 1))
        cluster.restart(other(cluster, leader1, 2))
        cluster.tick(ELECTION_TIMEOUT)
        cluster.restart(other(cluster, leader1, 3))
        cluster.one(f"{10 + index}", 3)
        index += 1
        cluster.restart(other(cluster, leader1, 4))
        cluster.restart(leader1)
    cluster.one("1000", 5)


@pytest.mark.parametrize("seed", SEEDS)
def test_persist_partitioned_leader_and_follower_crash(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(3, seed=seed, **compaction)
    cluster.one("101", 3)
    leader = cluster.check_one_leader()
    cluster.network.disconnect(other(cluster, leader, 2))
    cluster.one("102", 2)
    cluster.crash(leader)
    cluster.crash(other(cluster, leader, 1))
    cluster.network.connect(other(cluster, leader, 2))
    cluster.restart(leader)
    cluster.one("103", 2)
    cluster.restart(other(cluster, leader, 1))
    cluster.one("104", 3)


@pytest.mark.parametrize(("seed", "batch"), [(1, 1), (3, 512)])
def test_figure_8(seed: int, batch: int, compaction: dict[str, int]) -> None:
    """Leaders crash at random moments, often right after accepting an entry; every
    committed entry must survive (the checker verifies it against each new leader).

    One entry per APPEND lets a new leader's acknowledgements cover an older term's
    entries apart from its own no-op: the situation of the paper's Figure 8."""
    cluster = Cluster(5, seed=seed, max_entries_per_append=batch, **compaction)
    rng = cluster.rng
    # Reliable but not instantaneous, so that a crash cuts replication half-way.
    cluster.network.delay = (0, 2)
    cluster.one("start", 1)
    up = len(cluster.ids)
    crashes = 0
    while crashes < 1000:
        leader = None
        for node_id in cluster.ids:
            if cluster.propose(node_id, f"x{rng.random()}") is not None:
                leader = node_id
        # Mostly crash at once, sometimes after up to half an election timeout.
        if rng.random() < 0.1:
            cluster.tick(rng.randrange(ELECTION_TIMEOUT // 2))
        else:
            cluster.tick(rng.randrange(2))
        if leader is not None:
            cluster.crash(leader)
            crashes += 1
            up -= 1
        if up < 3:
            node_id = rng.choice(cluster.ids)
            if not cluster.is_up(node_id):
                cluster.restart(node_id)
                up += 1
    for node_id in cluster.ids:
        if not cluster.is_up(node_id):
            cluster.restart(node_id)
    cluster.one("end", 5)
    assert len(cluster.checker.committed) > 20


@pytest.mark.parametrize("seed", SEEDS)
def test_unreliable_agree(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(5, seed=seed, **compaction)
    cluster.network.set_unreliable(True)
    for iteration in range(50):
        for n in range(4):
            cluster.one(f"{iteration}-{n}", 1)
        cluster.one(f"{iteration}", 1)
    cluster.network.set_unreliable(False)
    cluster.one("100", 5)


@pytest.mark.parametrize("seed", [1, 2])
def test_figure_8_unreliable(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(5, seed=seed, **compaction)
    rng = cluster.rng
    cluster.network.set_unreliable(True)
    cluster.one("start", 1)
    up = len(cluster.ids)
    disconnections = 0
    # 6.824 runs 1000 iterations; most find no leader, so count disconnected leaders.
    for iteration in itertools.count():
        if disconnections == 300:
            break
        if iteration == 200:
            cluster.network.long_delay_rate = 0.3
        leader = None
        for node_id in cluster.ids:
            if cluster.propose(node_id, f"x{rng.random()}") is not None and node_id in cluster.connected():
                leader = node_id
        if rng.random() < 0.1:
            cluster.tick(rng.randrange(ELECTION_TIMEOUT // 2))
        else:
            cluster.tick(rng.randrange(2))
        if leader is not None and rng.random() < 0.5:
            cluster.network.disconnect(leader)
            disconnections += 1
            up -= 1
        if up < 3:
            node_id = rng.choice(cluster.ids)
            if node_id not in cluster.connected():
                cluster.network.connect(node_id)
                up += 1
    for node_id in cluster.ids:
        cluster.network.connect(node_id)
    cluster.one("end", 5, max_ticks=30 * TICKS_PER_SECOND)


@pytest.mark.parametrize("unreliable", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_churn(seed: int, unreliable: bool, compaction: dict[str, int]) -> None:
    """Nodes crash, restart and disconnect at random while clients propose; whatever a
    client saw committed is in every node's final log."""
    cluster = Cluster(5, seed=seed, **compaction)
    rng = cluster.rng
    cluster.network.set_unreliable(unreliable)
    pending: dict[int, tuple[str, int]] = {}  # index -> (data, term) awaiting commit
    seen_committed: set[str] = set()
    serial = 0

    def clients_step() -> None:
        nonlocal serial
        for _client in range(3):
            node_id = rng.choice(cluster.ids)
            if node_id in cluster.connected():
                serial += 1
                placed = cluster.propose(node_id, f"v{serial}")
                if placed is not None:
                    pending[placed[0]] = (f"v{serial}", placed[1])
        for index, (data, _term) in list(pending.items()):
            count, value = cluster.n_committed(index)
            if count:
                del pending[index]
                if value == data:
                    seen_committed.add(data)

    for _ in range(20):
        if rng.random() < 0.2:
            cluster.network.disconnect(rng.choice(cluster.ids))
        if rng.random() < 0.5:
            node_id = rng.choice(cluster.ids)
            if not cluster.is_up(node_id):
                cluster.restart(node_id)
            cluster.network.connect(node_id)
        if rng.random() < 0.2:
            cluster.crash(rng.choice(cluster.ids))
        for _tick in range(ELECTION_TIMEOUT * 7 // 10):
            clients_step()
            cluster.tick()
    cluster.network.set_unreliable(False)
    for node_id in cluster.ids:
        if not cluster.is_up(node_id):
            cluster.restart(node_id)
        cluster.network.connect(node_id)
    cluster.tick(ELECTION_TIMEOUT)
    cluster.one("final", 5)
    assert seen_committed, "churn left nothing committed: the test proves little"
    for node_id in cluster.ids:
        assert seen_committed <= set(applied_data(cluster, node_id))


# -- beyond 6.824: pre-vote, check-quorum, transfer, ReadIndex ---------------------------


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_check_quorum_isolated_leader_steps_down(size: int, seed: int) -> None:
    cluster = Cluster(size, seed=seed)
    leader = cluster.check_one_leader()
    cluster.network.disconnect(leader)
    cluster.tick(2 * cluster.election_ticks)
    assert cluster.core(leader).role is not Role.LEADER


def test_without_check_quorum_an_isolated_leader_stays() -> None:
    cluster = Cluster(3, seed=1, check_quorum=False)
    leader = cluster.check_one_leader()
    cluster.network.disconnect(leader)
    cluster.tick(10 * cluster.election_ticks)
    assert cluster.core(leader).role is Role.LEADER


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_pre_vote_keeps_a_partitioned_node_from_disrupting(size: int, seed: int) -> None:
    cluster = Cluster(size, seed=seed)
    leader = cluster.check_one_leader()
    cluster.one("a", size)
    term = cluster.check_terms()
    loner = other(cluster, leader, 1)
    cluster.network.disconnect(loner)
    cluster.tick(10 * ELECTION_TIMEOUT)
    assert cluster.core(loner).term == term
    cluster.network.connect(loner)
    cluster.one("b", size)
    assert cluster.check_one_leader() == leader
    assert cluster.check_terms() == term


def test_without_pre_vote_a_rejoining_node_disrupts() -> None:
    """The counterpart of the test above: it shows that the test can fail."""
    cluster = Cluster(3, seed=1, pre_vote=False)
    leader = cluster.check_one_leader()
    term = cluster.check_terms()
    loner = other(cluster, leader, 1)
    cluster.network.disconnect(loner)
    cluster.tick(10 * ELECTION_TIMEOUT)
    assert cluster.core(loner).term > term
    cluster.network.connect(loner)
    cluster.one("b", 3)
    assert cluster.check_terms() > term


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_leadership_transfer(size: int, seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(size, seed=seed, **compaction)
    leader = cluster.check_one_leader()
    term = cluster.core(leader).term
    target = other(cluster, leader, 1)
    # The target lags: it misses entries that the leader must send before handing over.
    cluster.network.disconnect(target)
    accepted = [cluster.propose(leader, f"p{n}") for n in range(20)]
    cluster.tick(3)
    cluster.network.connect(target)
    cluster.transfer_leadership(leader, target)
    assert cluster.propose(leader, "refused") is None
    assert cluster.run_until(lambda: cluster.leader() == target, cluster.election_ticks)
    assert cluster.core(target).term == term + 1
    cluster.one("after", size)
    log = applied_data(cluster, target)
    assert [f"p{n}" for n in range(20)] == log[:20] and all(accepted)


def test_leadership_transfer_to_an_unreachable_target_is_abandoned() -> None:
    cluster = Cluster(3, seed=4)
    leader = cluster.check_one_leader()
    target = other(cluster, leader, 1)
    cluster.network.disconnect(target)
    cluster.transfer_leadership(leader, target)
    assert cluster.propose(leader, "refused") is None
    cluster.tick(cluster.election_ticks)
    assert cluster.leader() == leader
    assert cluster.propose(leader, "accepted") is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_read_index_after_a_committed_write(seed: int, compaction: dict[str, int]) -> None:
    cluster = Cluster(3, seed=seed, **compaction)
    cluster.network.set_unreliable(True)
    for n in range(20):
        index = cluster.one(f"w{n}", 1)
        leader = cluster.leader()
        if leader is None or not cluster.read_index(leader, f"r{n}"):
            continue
        node = cluster.nodes[leader]
        cluster.run_until(lambda: any(r.context == f"r{n}" for r in node.read_states), ELECTION_TIMEOUT)
        for state in node.read_states:
            if state.context == f"r{n}":
                assert state.index >= index


@pytest.mark.parametrize("seed", SEEDS)
def test_deposed_leader_serves_no_read(seed: int, compaction: dict[str, int]) -> None:
    # Without check-quorum the deposed leader keeps believing it leads.
    cluster = Cluster(5, seed=seed, check_quorum=False, **compaction)
    old = cluster.check_one_leader()
    cluster.one("a", 5)
    minority = [old, other(cluster, old, 1)]
    cluster.network.partition([n for n in cluster.ids if n not in minority], minority)
    new = cluster.check_one_leader()
    index = cluster.one("b", 3)
    assert cluster.core(old).role is Role.LEADER
    assert cluster.read_index(old, "stale")
    assert cluster.read_index(new, "fresh")
    cluster.tick(5 * ELECTION_TIMEOUT)
    assert cluster.nodes[old].read_states == []
    [fresh] = cluster.nodes[new].read_states
    assert fresh.index >= index
