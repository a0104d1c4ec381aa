"""Learners (non-voting members): they receive the log but count in no quorum, never
campaign, and cannot be handed leadership. Unit tests of the core, then the simulated
cluster with every invariant checked after every step."""

from __future__ import annotations

import pytest

from toystore.raft.messages import MessageType, Role
from toystore.raft.sim import TICKS_PER_SECOND, Cluster

from tests.raft.cores import make, msg, sent

T = MessageType


def leader_with_learner():  # type: ignore[no-untyped-def]
    """Node 1 leads voters 1-3 with learner 4, its no-op acknowledged by nobody yet."""
    core = make(learners=(4,), pre_vote=False)
    core.campaign()
    votes = sent(core)
    assert sorted(m.to for m in votes) == [2, 3]  # a learner is not asked to vote
    core.step(msg(T.VOTE_RESP, 2, 1, 1))
    assert {m.to for m in sent(core) if m.type is T.APPEND} == {2, 3, 4}  # the no-op goes to the learner too
    assert core.role is Role.LEADER
    return core


def test_a_candidate_counts_no_learners_vote() -> None:
    core = make(learners=(4,), pre_vote=False)
    core.campaign()
    sent(core)
    core.step(msg(T.VOTE_RESP, 4, 1, 1))
    assert core.role is Role.CANDIDATE
    core.step(msg(T.VOTE_RESP, 3, 1, 1))
    assert core.role is Role.LEADER


def test_a_leader_replicates_to_a_learner_but_commits_only_with_a_voter() -> None:
    core = leader_with_learner()
    core.step(msg(T.APPEND_RESP, 4, 1, 1, index=1))
    sent(core)
    assert core.commit_index == 0  # the leader and the learner: two of four, one of three voters
    core.step(msg(T.APPEND_RESP, 3, 1, 1, index=1))
    sent(core)
    assert core.commit_index == 1


def test_a_learners_heartbeat_answer_confirms_no_read() -> None:
    core = leader_with_learner()
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    sent(core)
    core.read_index("r")
    sent(core)
    core.step(msg(T.HEARTBEAT_RESP, 4, 1, 1, context="r"))
    assert not core.ready().read_states
    core.step(msg(T.HEARTBEAT_RESP, 3, 1, 1, context="r"))
    assert [r.context for r in core.ready().read_states] == ["r"]


def test_leadership_is_never_handed_to_a_learner() -> None:
    core = leader_with_learner()
    core.step(msg(T.APPEND_RESP, 4, 1, 1, index=1))
    sent(core)
    core.transfer_leadership(4)
    assert not [m for m in sent(core) if m.type is T.TIMEOUT_NOW]
    core.propose("still leading")  # no transfer under way: proposals are taken


def test_a_learner_never_campaigns() -> None:
    learner = make(4, learners=(4,))
    for _ in range(100):
        learner.tick()
    learner.campaign()
    learner.step(msg(T.TIMEOUT_NOW, 1, 4, 1))
    assert learner.role is Role.FOLLOWER and not [m for m in sent(learner) if m.type in (T.VOTE, T.PRE_VOTE)]


@pytest.mark.parametrize("peers, learners", [((1, 2), (2,)), ((), (1,)), ((2, 3), (0,))])
def test_members_must_be_distinct_with_a_voter(peers: tuple[int, ...], learners: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        make(1, peers, learners=learners)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_learner_applies_every_entry_but_keeps_no_quorum_alive(seed: int) -> None:
    cluster = Cluster(3, learners=1, seed=seed)
    cluster.check_one_leader()
    index = cluster.one("x", 4)  # the learner applied it too
    assert cluster.n_committed(index) == (4, "x")
    leader = cluster.leader()
    assert leader is not None and leader != 4
    # With two voters down, the leader and the learner are two of four, but one of three voters.
    for voter in [v for v in cluster.voters if v != leader]:
        cluster.crash(voter)
    before = cluster.nodes[4].applied[:]
    placed = cluster.propose(leader, "not committed")
    assert placed is not None
    cluster.tick(3 * TICKS_PER_SECOND)
    assert cluster.nodes[4].applied == before and cluster.n_committed(placed[0])[0] == 0
    # The learner never takes over, however long no leader is heard of.
    assert 4 not in cluster.leaders().values()
    for voter in cluster.voters:
        cluster.restart(voter)
    cluster.check_one_leader()
    assert cluster.n_committed(cluster.one("y", 4))[0] == 4
    cluster.check_logs_match()


def test_a_partitioned_learner_keeps_its_term_and_catches_up_when_healed() -> None:
    cluster = Cluster(3, learners=1, seed=5)
    cluster.check_one_leader()
    term = cluster.core(4).term
    cluster.network.partition({1, 2, 3}, {4})
    for n in range(5):
        cluster.one(f"v{n}", 3)
    cluster.tick(5 * TICKS_PER_SECOND)
    assert cluster.core(4).term == term and cluster.core(4).role is Role.FOLLOWER
    cluster.network.heal()
    index = cluster.one("after", 4)
    assert cluster.n_committed(index) == (4, "after")


def test_a_learner_alone_answering_does_not_keep_a_leader_in_office() -> None:
    core = leader_with_learner()
    for _ in range(2 * 10):  # two election timeouts (make's default: 10 ticks)
        core.step(msg(T.HEARTBEAT_RESP, 4, 1, 1))
        core.tick()
        sent(core)
    assert core.role is not Role.LEADER  # check-quorum: no voter answered
