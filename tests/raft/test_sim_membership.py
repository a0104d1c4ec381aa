"""Membership changes in the simulated cluster, under partitions, message loss and
crashes in the middle of a change, every invariant checked after every step (one leader
per term, committed entries identical and never lost, each committed configuration one
server away from the one before, so that two majorities never stand apart)."""

from __future__ import annotations

import random
from typing import Callable

import pytest

from toystore.raft.membership import Configuration
from toystore.raft.messages import Role
from toystore.raft.sim import TICKS_PER_SECOND, Cluster

SEEDS = [1, 2, 3]


def leader_config(cluster: Cluster) -> Configuration | None:
    """The committed configuration of the current leader, if there is one."""
    leader = cluster.leader()
    return cluster.core(leader).committed_configuration if leader is not None else None


def change(cluster: Cluster, step: Callable[[Configuration], Configuration], done: Callable[[Configuration], bool],
           max_ticks: int = 30 * TICKS_PER_SECOND) -> None:
    """Ask whichever node leads for ``step`` until its committed configuration is ``done``
    (a leader may die or lose its change meanwhile, and the change is asked again)."""
    deadline = cluster.now + max_ticks
    while cluster.now < deadline:
        leader = cluster.leader()
        if leader is not None:
            core = cluster.core(leader)
            if done(core.committed_configuration):
                return
            if not core.configuration_pending and not done(core.configuration):
                cluster.change_membership(leader, step)
        cluster.tick()
    raise AssertionError(f"seed={cluster.seed}: the change did not commit; leader config {leader_config(cluster)}")


def add(cluster: Cluster, node_id: int, max_ticks: int = 30 * TICKS_PER_SECOND) -> None:
    """Start ``node_id`` empty, add it as a learner, and promote it once it holds the log."""
    if node_id not in cluster.nodes:
        cluster.add_node(node_id)
    change(cluster, lambda c: c.with_learner(node_id, ""), lambda c: c.member(node_id) is not None, max_ticks)
    change(cluster, lambda c: c.with_voter(node_id), lambda c: node_id in c.voters, max_ticks)


def remove(cluster: Cluster, node_id: int, max_ticks: int = 30 * TICKS_PER_SECOND) -> None:
    change(cluster, lambda c: c.without(node_id), lambda c: c.member(node_id) is None, max_ticks)


def commit_with(cluster: Cluster, voters: set[int], data: str) -> None:
    """``data`` commits and every one of ``voters`` applies it."""
    index = cluster.one(data, 1)
    assert cluster.run_until(lambda: all(len(cluster.nodes[v].applied) >= index for v in voters),
                             10 * TICKS_PER_SECOND), f"seed={cluster.seed}: {voters} did not all apply {index}"
    assert all(cluster.nodes[v].applied[index - 1].data == data for v in voters)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("unreliable", [False, True], ids=["reliable", "unreliable"])
def test_added_servers_hold_the_log_and_make_the_new_majority(seed: int, unreliable: bool) -> None:
    cluster = Cluster(3, seed=seed)
    cluster.network.set_unreliable(unreliable)
    cluster.check_one_leader()
    for n in range(20):
        cluster.one(f"before-{n}", 3)
    add(cluster, 4)
    add(cluster, 5)
    commit_with(cluster, {1, 2, 3, 4, 5}, "five")
    # Two of the first three crash: the new members make the majority of five.
    for node_id in (1, 2):
        cluster.crash(node_id)
    cluster.network.set_unreliable(False)
    commit_with(cluster, {3, 4, 5}, "without-1-and-2")
    assert len(cluster.nodes[4].applied) > 20


@pytest.mark.parametrize("seed", SEEDS)
def test_a_server_whose_disk_died_is_replaced_and_the_new_one_catches_up_by_snapshot(seed: int) -> None:
    cluster = Cluster(3, seed=seed, snapshot_every=10, snapshot_keep=2)
    cluster.check_one_leader()
    for n in range(40):
        cluster.one(f"e{n}", 3)
    cluster.wipe(3)  # its disk is gone: it never comes back
    remove(cluster, 3)
    add(cluster, 4)
    assert cluster.nodes[4].storage.snapshot is not None  # the log before it was compacted away
    commit_with(cluster, {1, 2, 4}, "replaced")
    cluster.crash(1)
    commit_with(cluster, {2, 4}, "with-the-new-one")


@pytest.mark.parametrize("seed", SEEDS)
def test_removing_the_leader_hands_over_within_an_election_timeout(seed: int) -> None:
    cluster = Cluster(3, seed=seed)
    old = cluster.check_one_leader()
    cluster.one("x", 3)
    start = cluster.now
    remove(cluster, old)
    assert cluster.run_until(lambda: cluster.leader() not in (None, old), 2 * cluster.election_ticks)
    assert cluster.now - start <= 4 * cluster.election_ticks
    others = set(cluster.ids) - {old}
    commit_with(cluster, others, "after")
    cluster.tick(20 * TICKS_PER_SECOND)
    assert cluster.core(old).role is Role.FOLLOWER and cluster.leader() in others


@pytest.mark.parametrize("seed", SEEDS)
def test_a_removed_server_that_keeps_running_and_campaigning_disrupts_nothing(seed: int) -> None:
    cluster = Cluster(3, seed=seed)
    leader = cluster.check_one_leader()
    removed = next(i for i in cluster.ids if i != leader)
    cluster.one("x", 3)
    # Cut off before it hears of its removal: it keeps the old configuration and campaigns.
    cluster.network.disconnect(removed)
    remove(cluster, removed)
    cluster.tick(5 * TICKS_PER_SECOND)
    cluster.network.connect(removed)
    term, now_leading = cluster.core(leader).term, cluster.leader()
    for n in range(20):
        cluster.tick(TICKS_PER_SECOND // 2)
        cluster.one(f"after-{n}", 2)
    assert (cluster.core(leader).term, cluster.leader()) == (term, now_leading)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_learner_that_never_catches_up_is_never_promoted_and_the_group_goes_on(seed: int) -> None:
    cluster = Cluster(3, seed=seed, max_entries_per_append=4)
    cluster.check_one_leader()
    cluster.add_node(4)
    cluster.network.disconnect(4)
    change(cluster, lambda c: c.with_learner(4, ""), lambda c: c.member(4) is not None)
    for n in range(20):
        cluster.one(f"e{n}", 3)
    for _ in range(5 * TICKS_PER_SECOND):
        leader = cluster.leader()
        if leader is not None:
            cluster.change_membership(leader, lambda c: c.with_voter(4))
        cluster.tick()
    assert 4 in cluster.core(cluster.check_one_leader()).configuration.learners
    remove(cluster, 4)  # given up: the group is as before
    commit_with(cluster, {1, 2, 3}, "as-before")


@pytest.mark.parametrize("seed", range(24))
def test_random_changes_under_faults_are_safe_then_live(seed: int) -> None:
    """Adds, removals and replacements while nodes crash, restart and are cut off, and
    messages are lost; the checker looks after every step. Then faults heal and the
    group must elect a leader and commit with every voter it has."""
    rng = random.Random(seed)
    cluster = Cluster(3, seed=seed, snapshot_every=rng.choice([0, 15]), snapshot_keep=3)
    cluster.network.set_unreliable(rng.random() < 0.5)
    next_id = 4
    for _ in range(80):
        action = rng.random()
        leader = cluster.leader()
        config = cluster.core(leader).configuration if leader is not None else None
        if leader is not None and config is not None and action < 0.25:
            if rng.random() < 0.5 and len(config.ids) < 6:
                cluster.add_node(next_id)
                cluster.change_membership(leader, lambda c, new=next_id: c.with_learner(new, ""))
                next_id += 1
            elif config.learners and rng.random() < 0.7:
                cluster.change_membership(leader, lambda c: c.with_voter(min(c.learners)))
            elif len(config.voters) > 2:
                cluster.change_membership(leader, lambda c: c.without(rng.choice(sorted(c.ids))))
        elif action < 0.4:
            victim = rng.choice(cluster.ids)
            if cluster.is_up(victim):
                cluster.crash(victim)
            else:
                cluster.restart(victim)
        elif action < 0.5:
            cluster.network.disconnect(rng.choice(cluster.ids))
        elif action < 0.6:
            cluster.network.heal()
        elif leader is not None:
            cluster.propose(leader, f"op-{cluster.now}")
        cluster.tick(rng.randint(1, TICKS_PER_SECOND))
        cluster.check_logs_match()
    cluster.network.heal()
    cluster.network.set_unreliable(False)
    for node_id in cluster.ids:
        if not cluster.is_up(node_id):
            cluster.restart(node_id)
    leader = cluster.check_one_leader(30 * TICKS_PER_SECOND)
    voters = set(cluster.core(leader).configuration.voters)
    commit_with(cluster, voters, "healed")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("committed", [False, True], ids=["before-commit", "after-commit"])
def test_a_leader_that_crashes_in_the_middle_of_a_change_leaves_it_whole_or_undone(seed: int, committed: bool) -> None:
    cluster = Cluster(5, seed=seed)
    leader = cluster.check_one_leader()
    cluster.one("x", 5)
    core = cluster.core(leader)
    victim = max(i for i in cluster.ids if i != leader)
    if not committed:
        # Only the leader has the entry: the new leader's log cuts it, and the change is gone.
        for peer in cluster.ids:
            if peer != leader:
                cluster.network.disconnect(peer)
    index, _ = cluster.change_membership(leader, lambda c: c.without(victim)) or (0, 0)
    assert index and core.configuration.ids == set(cluster.ids) - {victim}
    if committed:
        assert cluster.run_until(lambda: core.commit_index >= index, 5 * TICKS_PER_SECOND)
    cluster.crash(leader)
    cluster.network.heal()
    new = cluster.check_one_leader()
    commit_with(cluster, set(cluster.core(new).configuration.voters) - {leader}, "after the crash")
    assert (victim in cluster.core(new).committed_configuration.ids) is not committed
    cluster.restart(leader)  # the old leader's uncommitted entry is cut when it rejoins
    commit_with(cluster, {leader}, "rejoined")
    assert cluster.core(leader).configuration == cluster.core(new).committed_configuration
    remove(cluster, min(i for i in cluster.ids if i not in (leader, victim)))  # and the next change goes through
