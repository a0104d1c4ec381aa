"""Unit tests of a single :class:`RaftCore`: feed it events, assert exactly what it emits."""

from __future__ import annotations

import random
from typing import Any

import pytest

from toystore.raft.core import MAX_INFLIGHT_APPENDS, TRANSFER_CONTEXT, NotLeader, RaftCore, TermChanged
from toystore.raft.messages import Entry, HardState, Message, MessageType, ReadState, Role, SoftState

from tests.raft.cores import entries, make, msg, sent, take

T = MessageType


def tick_until_campaign(core: RaftCore, limit: int = 100) -> int:
    """Tick until the core emits something. :return: the ticks it took."""
    for ticks in range(1, limit):
        core.tick()
        if core.has_ready():
            return ticks
    raise AssertionError("no campaign")


def leader(peers: tuple[int, ...] = (1, 2, 3), **options: Any) -> RaftCore:
    """Node 1 elected leader in term 1 (or the persisted term + 1), its Readies done."""
    options.setdefault("pre_vote", False)
    core = make(1, peers, **options)
    core.campaign()
    sent(core)
    for peer in peers[1:]:
        core.step(msg(T.VOTE_RESP, peer, 1, core.term))
    assert core.role is Role.LEADER
    sent(core)
    return core


def ack_all(core: RaftCore, peers: tuple[int, ...] = (2, 3)) -> list[Message]:
    """Every follower acknowledges the whole log; :return: what the leader sends then."""
    for peer in peers:
        core.step(msg(T.APPEND_RESP, peer, core.id, core.term, index=core.last_index))
    return sent(core)


# -- elections --------------------------------------------------------------------------


def test_election_timeout_is_randomized_in_range() -> None:
    waits = set()
    for seed in range(40):
        core = RaftCore(1, (1, 2, 3), rng=random.Random(seed))
        waits.add(tick_until_campaign(core))
    assert min(waits) >= 10 and max(waits) < 20 and len(waits) > 3


def test_pre_vote_asks_for_next_term_without_bumping_own() -> None:
    core = make(hard_state=HardState(term=4), entries=entries(1, 1, 4))
    tick_until_campaign(core)
    ready = take(core)
    assert ready.hard_state is None
    assert ready.soft_state == SoftState(Role.PRE_CANDIDATE, 0)
    assert ready.messages == (
        msg(T.PRE_VOTE, 1, 2, 5, index=2, log_term=4),
        msg(T.PRE_VOTE, 1, 3, 5, index=2, log_term=4),
    )
    assert core.term == 4
    core.step(msg(T.PRE_VOTE_RESP, 2, 1, 5))
    ready = take(core)
    assert core.role is Role.CANDIDATE and core.term == 5
    assert ready.hard_state == HardState(term=5, vote=1, commit=0)
    assert [m.type for m in ready.messages] == [T.VOTE, T.VOTE]


def test_vote_is_persisted_with_the_grant_and_given_once_per_term() -> None:
    core = make(2, pre_vote=False)
    core.step(msg(T.VOTE, 1, 2, 3))
    ready = take(core)
    assert ready.hard_state == HardState(term=3, vote=1, commit=0)
    assert ready.messages == (msg(T.VOTE_RESP, 2, 1, 3),)
    core.step(msg(T.VOTE, 3, 2, 3))
    assert sent(core) == [msg(T.VOTE_RESP, 2, 3, 3, reject=True)]
    # The same candidate asking again (a lost answer) gets the vote again.
    core.step(msg(T.VOTE, 1, 2, 3))
    assert sent(core) == [msg(T.VOTE_RESP, 2, 1, 3)]


def test_restarted_voter_keeps_its_vote() -> None:
    core = make(2, hard_state=HardState(term=3, vote=1), pre_vote=False)
    core.step(msg(T.VOTE, 3, 2, 3))
    assert sent(core) == [msg(T.VOTE_RESP, 2, 3, 3, reject=True)]


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [(3, 2, True), (5, 2, True), (2, 2, False), (9, 1, False), (1, 3, True)],
)
def test_vote_requires_an_up_to_date_log(last_index: int, last_term: int, granted: bool) -> None:
    core = make(2, entries=entries(1, 1, 2, 2), hard_state=HardState(term=2), pre_vote=False)
    core.step(msg(T.VOTE, 1, 2, 3, index=last_index, log_term=last_term))
    assert sent(core) == [msg(T.VOTE_RESP, 2, 1, 3, reject=not granted)]


def test_candidate_wins_with_a_quorum_and_appends_a_noop() -> None:
    core = make(pre_vote=False)
    core.campaign()
    sent(core)
    core.step(msg(T.VOTE_RESP, 2, 1, 1))
    ready = take(core)
    assert ready.soft_state == SoftState(Role.LEADER, 1)
    assert ready.entries == (Entry(1, 1, ""),)
    assert ready.messages == (
        msg(T.APPEND, 1, 2, 1, entries=(Entry(1, 1, ""),)),
        msg(T.APPEND, 1, 3, 1, entries=(Entry(1, 1, ""),)),
    )


def test_candidate_loses_on_a_quorum_of_rejections() -> None:
    core = make(pre_vote=False)
    core.campaign()
    sent(core)
    core.step(msg(T.VOTE_RESP, 2, 1, 1, reject=True))
    core.step(msg(T.VOTE_RESP, 3, 1, 1, reject=True))
    assert core.role is Role.FOLLOWER and core.term == 1


def test_rejected_pre_vote_with_higher_term_adopts_it() -> None:
    core = make(hard_state=HardState(term=2))
    core.campaign()
    sent(core)
    core.step(msg(T.PRE_VOTE_RESP, 2, 1, 7, reject=True))
    assert (core.role, core.term) == (Role.FOLLOWER, 7)


def test_single_node_elects_itself_and_commits_on_its_own_persistence() -> None:
    core = make(1, (1,))
    ticks = tick_until_campaign(core)
    assert 10 <= ticks < 20
    ready = take(core)
    assert ready.soft_state == SoftState(Role.LEADER, 1)
    assert ready.entries == (Entry(1, 1, ""),)
    assert ready.committed_entries == () and ready.messages == ()
    ready = take(core)
    assert ready.committed_entries == (Entry(1, 1, ""),)
    assert ready.hard_state == HardState(term=1, vote=1, commit=1)
    assert core.propose("x") == (2, 1)
    take(core)
    assert take(core).committed_entries == (Entry(2, 1, "x"),)


def test_follower_in_lease_ignores_votes_unless_for_a_transfer() -> None:
    core = make(2)
    core.step(msg(T.HEARTBEAT, 1, 2, 1))
    sent(core)
    core.step(msg(T.PRE_VOTE, 3, 2, 2))
    core.step(msg(T.VOTE, 3, 2, 2))
    assert sent(core) == [] and core.term == 1
    core.step(msg(T.VOTE, 3, 2, 2, context=TRANSFER_CONTEXT))
    assert sent(core) == [msg(T.VOTE_RESP, 2, 3, 2)]


def test_pre_vote_granted_once_the_lease_expired_without_changing_term() -> None:
    core = make(2)
    core.step(msg(T.HEARTBEAT, 1, 2, 1))
    sent(core)
    for _ in range(10):
        core.tick()
    core.step(msg(T.PRE_VOTE, 3, 2, 2))
    assert sent(core) == [msg(T.PRE_VOTE_RESP, 2, 3, 2)]
    assert core.term == 1 and core.leader_id == 1


# -- terms ------------------------------------------------------------------------------


def test_stale_append_and_heartbeat_are_answered_with_our_term() -> None:
    core = make(2, hard_state=HardState(term=5))
    core.step(msg(T.APPEND, 1, 2, 3, index=0))
    core.step(msg(T.HEARTBEAT, 1, 2, 3))
    core.step(msg(T.PRE_VOTE, 3, 2, 4))
    core.step(msg(T.VOTE, 3, 2, 4))
    assert sent(core) == [
        msg(T.APPEND_RESP, 2, 1, 5),
        msg(T.APPEND_RESP, 2, 1, 5),
        msg(T.PRE_VOTE_RESP, 2, 3, 5, reject=True),
    ]


def test_leader_steps_down_on_a_higher_term() -> None:
    core = leader()
    core.step(msg(T.APPEND_RESP, 2, 1, 9))
    assert (core.role, core.term, core.leader_id) == (Role.FOLLOWER, 9, 0)
    assert take(core).soft_state == SoftState(Role.FOLLOWER, 0)


def test_higher_term_append_makes_the_sender_leader() -> None:
    core = make(2)
    core.step(msg(T.APPEND, 3, 2, 4, entries=(Entry(1, 4, ""),)))
    assert (core.term, core.leader_id, core.role) == (4, 3, Role.FOLLOWER)


def test_ignores_misaddressed_and_malformed_messages() -> None:
    core = make(2)
    core.step(msg(T.APPEND, 1, 3, 1))
    core.step(msg(T.APPEND, 2, 2, 1))
    assert not core.has_ready()
    # Entries that do not follow the previous index are dropped, though the term counts.
    core.step(msg(T.APPEND, 1, 2, 1, index=0, entries=(Entry(2, 1, "x"),)))
    assert sent(core) == [] and core.last_index == 0


# -- replication ------------------------------------------------------------------------


def test_follower_rejects_a_mismatch_with_a_term_hint() -> None:
    core = make(2, entries=entries(1, 1, 1, 2, 2, 2), hard_state=HardState(term=3))
    # Our entry 5 has term 2, not 3: the leader will skip its entries of terms above 2.
    core.step(msg(T.APPEND, 1, 2, 3, index=5, log_term=3))
    assert sent(core) == [
        msg(T.APPEND_RESP, 2, 1, 3, index=5, reject=True, reject_hint=5, conflict_term=2, log_term=2, commit=5)
    ]
    # A leader believing we hold term 1 at 4 learns where our term-1 entries end.
    core.step(msg(T.APPEND, 1, 2, 3, index=4, log_term=1))
    assert (sent(core)[0].reject_hint, sent(core) == []) == (2, True)
    # Past our log, the hint is our last index.
    core.step(msg(T.APPEND, 1, 2, 3, index=9, log_term=3))
    assert sent(core)[0].reject_hint == 5


def test_follower_replaces_only_the_conflicting_suffix() -> None:
    core = make(2, entries=entries(1, 1, 1, 2, 2), hard_state=HardState(term=3, commit=1))
    core.step(msg(T.APPEND, 1, 2, 3, index=1, log_term=1, commit=2, entries=(Entry(2, 1, "e2"), Entry(3, 3, "n3"))))
    ready = take(core)
    assert ready.entries == (Entry(3, 3, "n3"),)
    assert ready.committed_entries == (Entry(1, 1, "e1"), Entry(2, 1, "e2"))
    assert ready.messages == (msg(T.APPEND_RESP, 2, 1, 3, index=3, log_term=3, commit=3),)
    assert [e.term for e in core.log] == [1, 1, 3]


def test_follower_keeps_matching_entries_on_a_stale_append() -> None:
    core = make(2, hard_state=HardState(term=2))
    core.step(msg(T.APPEND, 1, 2, 2, entries=tuple(entries(1, 2, 2, 2))))
    sent(core)
    core.step(msg(T.APPEND, 1, 2, 2, index=0, entries=tuple(entries(1, 2))))
    assert core.last_index == 3
    assert sent(core) == [msg(T.APPEND_RESP, 2, 1, 2, index=1, log_term=2, commit=3)]


def test_follower_commits_no_further_than_the_entries_it_was_sent() -> None:
    # Entries 3 and 4 are an old leader's, beyond what this append vouches for.
    core = make(2, entries=entries(1, 1, 1, 1, 1), hard_state=HardState(term=2))
    core.step(msg(T.APPEND, 1, 2, 2, index=1, log_term=1, commit=9, entries=(Entry(2, 1, "e2"),)))
    assert core.commit_index == 2 and core.last_index == 4


def test_follower_never_truncates_a_committed_entry() -> None:
    core = make(2, entries=entries(1, 1, 1), hard_state=HardState(term=2, commit=2))
    # An append starting below our commit index is answered with the commit index.
    core.step(msg(T.APPEND, 1, 2, 2, index=1, log_term=1, entries=(Entry(2, 2, "evil"),)))
    core.step(msg(T.APPEND, 1, 2, 2, index=0, entries=(Entry(1, 2, "evil"),)))
    assert [m.index for m in sent(core)] == [2, 2]
    assert core.log == entries(1, 1, 1)


def test_leader_backs_up_a_whole_term_per_rejection() -> None:
    core = leader(entries=entries(1, 1, 1, 1, 4, 4, 5, 5, 6, 6, 6), hard_state=HardState(term=6))
    assert core.last_index == 11
    # The follower holds 1,1,1,2,2,2,3,3,3,3,3: its entry at 10 has term 3.
    core.step(msg(T.APPEND_RESP, 2, 1, 7, index=10, reject=True, reject_hint=10, conflict_term=3, commit=11))
    out = sent(core)
    assert [(m.type, m.to, m.index, m.log_term) for m in out] == [(T.APPEND, 2, 3, 1)]
    assert [e.index for e in out[0].entries] == list(range(4, 12))


def test_only_current_term_entries_commit_by_counting() -> None:
    core = leader(entries=entries(1, 1, 2), hard_state=HardState(term=2))
    assert core.term == 3
    # A majority holds the term-2 entry, not the no-op of term 3: nothing commits.
    core.step(msg(T.APPEND_RESP, 2, 1, 3, index=2))
    assert core.commit_index == 0
    core.step(msg(T.APPEND_RESP, 2, 1, 3, index=3))
    assert core.commit_index == 3
    assert take(core).committed_entries == tuple(core.log)


def test_commit_reaches_idle_followers_by_heartbeat_at_once() -> None:
    core = leader()
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    out = sent(core)
    assert out == [msg(T.HEARTBEAT, 1, 2, 1, commit=1)]
    # Node 3 has not acknowledged: its heartbeat never commits past its match index. Node 2
    # answered an append this period, so its periodic heartbeat is skipped.
    core.tick()
    assert sent(core) == [msg(T.HEARTBEAT, 1, 3, 1, commit=0)]


def test_a_commit_no_append_carries_is_told_commit_ticks_later() -> None:
    core = leader(election_ticks=20, heartbeat_ticks=10, commit_ticks=3)
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    assert core.commit_index == 1
    assert sent(core) == []  # nobody waits for the followers to hear of it
    for _ in range(2):
        core.tick()
        assert sent(core) == []
    core.tick()
    # Node 3 has not acknowledged: there is nothing it may commit.
    assert sent(core) == [msg(T.HEARTBEAT, 1, 2, 1, commit=1)]


def test_an_append_sent_meanwhile_carries_the_commit_and_no_heartbeat_follows() -> None:
    core = leader(election_ticks=20, heartbeat_ticks=10, commit_ticks=3)
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    sent(core)
    core.propose("p")
    assert [(m.type, m.to, m.commit) for m in sent(core)] == [(T.APPEND, 2, 1)]  # 3 is still probed
    for _ in range(3):
        core.tick()
        assert sent(core) == []


def test_periodic_heartbeats_skip_followers_that_answer_appends() -> None:
    core = leader()
    ack_all(core)
    core.tick()
    assert [m for m in sent(core) if m.type is T.HEARTBEAT] == []  # both answered appends lately
    core.propose("p")
    sent(core)
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=core.last_index))
    sent(core)
    # Node 2 answered an append within this period: a heartbeat would tell it nothing.
    core.tick()
    assert [m.to for m in sent(core) if m.type is T.HEARTBEAT] == [3]
    # Quiet for a period: node 2 gets its heartbeat again.
    core.tick()
    assert [m.to for m in sent(core) if m.type is T.HEARTBEAT] == [2, 3]


def replicating_to_2(proposals: int) -> tuple[RaftCore, list[Message]]:
    """A leader whose follower 2 took the no-op (so appends to it are pipelined), after
    ``proposals`` proposals; :return: it, and what those proposals sent."""
    core = leader()
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    sent(core)
    for n in range(proposals):
        core.propose(f"p{n}")
    return core, sent(core)


def test_a_follower_whose_appends_are_stuck_gets_its_heartbeat() -> None:
    core, _ = replicating_to_2(MAX_INFLIGHT_APPENDS + 1)
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=2))  # an answer, yet the window is full again
    for n in range(3):
        core.propose(f"q{n}")
    sent(core)
    core.tick()
    assert 2 in [m.to for m in sent(core) if m.type is T.HEARTBEAT]


def test_periodic_heartbeats_go_to_everyone_while_a_read_waits() -> None:
    core = leader()
    ack_all(core)
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=core.last_index))
    core.read_index("r")
    sent(core)
    core.tick()
    assert {(m.to, m.context) for m in sent(core) if m.type is T.HEARTBEAT} == {(2, "r"), (3, "r")}


def test_follower_commits_from_heartbeat() -> None:
    core = make(2)
    core.step(msg(T.APPEND, 1, 2, 1, entries=tuple(entries(1, 1, 1))))
    sent(core)
    core.step(msg(T.HEARTBEAT, 1, 2, 1, commit=2, context="r"))
    ready = take(core)
    assert ready.committed_entries == tuple(entries(1, 1, 1))
    assert ready.messages == (msg(T.HEARTBEAT_RESP, 2, 1, 1, context="r"),)


def test_probe_sends_one_append_then_pipelines_when_matching() -> None:
    core = leader(max_entries_per_append=2)
    for n in range(5):
        core.propose(f"p{n}")
    assert sent(core) == []  # probing: the no-op append is still unanswered
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    out = [m for m in sent(core) if m.to == 2 and m.type is T.APPEND]
    assert [[e.index for e in m.entries] for m in out] == [[2, 3], [4, 5], [6]]


def test_a_batch_of_proposals_goes_out_as_one_append_per_follower() -> None:
    core = leader()
    ack_all(core)
    placed = core.propose_batch(["a", "b", "c"])
    assert placed == [(2, 1), (3, 1), (4, 1)]
    appends = [m for m in sent(core) if m.type is T.APPEND]
    assert sorted((m.to, [e.index for e in m.entries]) for m in appends) == [(2, [2, 3, 4]), (3, [2, 3, 4])]


def test_a_proposal_prepared_in_an_earlier_term_is_refused_whole() -> None:
    core = leader()
    ack_all(core)
    assert core.propose_batch(["a"], term=core.term) == [(2, 1)]
    core.step(msg(T.APPEND, 2, 1, core.term + 1, log_term=1, index=2, commit=0))  # deposed ...
    for _ in range(100):  # ... and elected again, in a later term
        core.tick()
        if core.role is Role.LEADER:
            break
        for m in sent(core):
            if m.type in (T.PRE_VOTE, T.VOTE):
                core.step(msg(T.PRE_VOTE_RESP if m.type is T.PRE_VOTE else T.VOTE_RESP, m.to, 1, m.term))
    assert core.role is Role.LEADER and core.term == 3
    last = core.last_index
    with pytest.raises(TermChanged) as refused:
        core.propose_batch(["b", "c"], term=1)
    assert (refused.value.proposed_in, refused.value.current) == (1, 3)
    assert core.last_index == last
    assert core.propose_batch(["b"], term=3) == [(last + 1, 3)]


def test_a_refused_batch_appends_nothing() -> None:
    core = leader()
    core.transfer_leadership(2)
    with pytest.raises(NotLeader):
        core.propose_batch(["a", "b"])
    assert core.last_index == 1


def test_replicate_state_bounds_unacknowledged_appends() -> None:
    core, out = replicating_to_2(MAX_INFLIGHT_APPENDS + 5)
    appends = [m for m in out if m.to == 2]
    assert len(appends) == MAX_INFLIGHT_APPENDS
    # Two appends acknowledged: room for two more, and one batch holds everything left.
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=3))
    assert [[e.index for e in m.entries] for m in sent(core) if m.to == 2 and m.type is T.APPEND] == [
        [66, 67, 68, 69, 70]
    ]


def test_rejection_in_replicate_state_falls_back_to_probing() -> None:
    core = leader()
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    core.propose("a")
    core.propose("b")
    sent(core)
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=2, reject=True, reject_hint=1, conflict_term=1))
    assert [(m.index, len(m.entries)) for m in sent(core) if m.to == 2] == [(1, 2)]


# -- truncate ---------------------------------------------------------------------------


def test_truncate_drops_only_an_older_term_suffix_past_commit() -> None:
    core = make(2, entries=entries(1, 1, 1, 2, 2, 2, 2), hard_state=HardState(term=3, commit=2))
    core.step(msg(T.HEARTBEAT, 1, 2, 3))
    sent(core)
    core.step(msg(T.TRUNCATE, 1, 2, 3, index=3))
    assert [e.index for e in core.log] == [1, 2, 3]
    # Storage deletes only when it writes: the kept last entry is written again.
    assert take(core).entries == (Entry(3, 2, "e3"),)


def test_truncate_never_removes_committed_entries() -> None:
    core = make(2, entries=entries(1, 1, 1, 2, 2, 2), hard_state=HardState(term=3, commit=4))
    core.step(msg(T.TRUNCATE, 1, 2, 3, index=1))
    assert core.last_index == 4


def test_truncate_never_removes_current_term_entries() -> None:
    core = make(2, hard_state=HardState(term=3))
    core.step(msg(T.APPEND, 1, 2, 3, entries=tuple(entries(1, 2, 3, 3))))
    sent(core)
    core.step(msg(T.TRUNCATE, 1, 2, 3, index=1))
    assert core.last_index == 3


def test_truncate_from_an_old_term_is_ignored() -> None:
    core = make(2, entries=entries(1, 1, 1, 2), hard_state=HardState(term=4))
    core.step(msg(T.TRUNCATE, 1, 2, 3, index=1))
    assert core.last_index == 3


def test_leader_sends_truncate_to_a_follower_with_an_outdated_longer_log() -> None:
    core = leader()
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=0, reject=True, reject_hint=0, log_term=0, commit=0))
    sent(core)
    # A follower reporting 9 entries of term 0 (lower than ours) past our last index 1.
    core.step(msg(T.APPEND_RESP, 3, 1, 1, index=0, reject=True, log_term=0, commit=9))
    assert msg(T.TRUNCATE, 1, 3, 1, index=1) in sent(core)


# -- check quorum, ReadIndex, transfer --------------------------------------------------


def test_check_quorum_steps_down_without_answers() -> None:
    core = leader()
    for _ in range(9):
        core.tick()
        core.step(msg(T.HEARTBEAT_RESP, 2, 1, 1))
    core.tick()
    assert core.role is Role.LEADER
    for _ in range(10):
        core.tick()
    assert (core.role, core.term) == (Role.FOLLOWER, 1)


def test_read_index_waits_for_a_quorum_and_own_term_commit() -> None:
    core = leader()
    with pytest.raises(NotLeader):
        make(2).read_index("x")
    core.read_index("r1")
    assert sent(core) == []  # the no-op of our term is not committed yet
    ack_all(core)
    assert core.commit_index == 1
    core.tick()
    out = sent(core)
    assert msg(T.HEARTBEAT, 1, 2, 1, commit=1, context="r1") in out
    core.step(msg(T.HEARTBEAT_RESP, 2, 1, 1, context="r1"))
    assert take(core).read_states == (ReadState("r1", 1),)


def test_read_index_on_a_committed_leader_sends_heartbeats_at_once() -> None:
    core = leader()
    ack_all(core)
    core.read_index("a")
    core.read_index("b")
    out = sent(core)
    assert [m.context for m in out if m.to == 2] == ["a", "b"]
    core.step(msg(T.HEARTBEAT_RESP, 3, 1, 1, context="b"))
    assert take(core).read_states == (ReadState("a", 1), ReadState("b", 1))


def test_single_node_read_index_needs_no_round_trip() -> None:
    core = make(1, (1,))
    core.campaign()
    core.read_index("early")
    ready = take(core)  # persists the no-op, which commits it
    assert ready.read_states == ()
    assert take(core).read_states == (ReadState("early", 1),)
    core.read_index("now")
    assert take(core).read_states == (ReadState("now", 1),)


def test_deposed_leader_loses_pending_reads() -> None:
    core = leader()
    ack_all(core)
    core.read_index("a")
    sent(core)
    core.step(msg(T.APPEND_RESP, 2, 1, 2))
    core.step(msg(T.HEARTBEAT_RESP, 3, 1, 1, context="a"))
    readies = []
    while core.has_ready():
        readies.append(take(core))
    assert [r.read_states for r in readies if r.read_states] == []


def test_transfer_catches_the_target_up_then_sends_timeout_now() -> None:
    core = leader()
    ack_all(core, (3,))
    core.transfer_leadership(2)
    with pytest.raises(NotLeader):
        core.propose("refused")
    assert [m.type for m in sent(core)] == []  # probe of node 2 still outstanding
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    assert msg(T.TIMEOUT_NOW, 1, 2, 1) in sent(core)


def test_transfer_to_an_up_to_date_target_is_immediate_and_aborts_on_timeout() -> None:
    core = leader()
    ack_all(core)
    core.transfer_leadership(2)
    assert sent(core) == [msg(T.TIMEOUT_NOW, 1, 2, 1)]
    for _ in range(10):
        core.tick()
        core.step(msg(T.HEARTBEAT_RESP, 3, 1, 1))
    assert core.propose("accepted") == (2, 1)


@pytest.mark.parametrize("target", [1, 7])
def test_transfer_to_self_or_unknown_is_a_no_op(target: int) -> None:
    core = leader()
    core.transfer_leadership(target)
    assert core.propose("x") == (2, 1)


def test_timeout_now_campaigns_at_once_skipping_pre_vote() -> None:
    core = make(2)
    core.step(msg(T.HEARTBEAT, 1, 2, 1))
    sent(core)
    core.step(msg(T.TIMEOUT_NOW, 1, 2, 1))
    out = sent(core)
    assert out == [msg(T.VOTE, 2, 1, 2, context=TRANSFER_CONTEXT), msg(T.VOTE, 2, 3, 2, context=TRANSFER_CONTEXT)]


def test_not_leader_names_the_known_leader() -> None:
    core = make(2)
    core.step(msg(T.HEARTBEAT, 3, 2, 1))
    with pytest.raises(NotLeader) as caught:
        core.propose("x")
    assert caught.value.leader_id == 3


# -- restart ----------------------------------------------------------------------------


def test_restart_applies_from_applied_to_commit() -> None:
    core = make(entries=entries(1, 1, 1, 2, 2), hard_state=HardState(term=2, vote=1, commit=3), applied=1)
    ready = take(core)
    assert ready.hard_state is None and ready.entries == ()
    assert ready.committed_entries == tuple(entries(1, 1, 1, 2))[1:]
    assert (core.term, core.commit_index, core.applied_index, core.last_index) == (2, 3, 3, 4)
    assert not core.has_ready()


@pytest.mark.parametrize(
    "options",
    [
        {"entries": [Entry(2, 1, "")]},
        {"hard_state": HardState(commit=1)},
        {"entries": entries(1, 1), "applied": 2},
        {"hard_state": HardState(vote=9)},
        {"election_ticks": 1},
    ],
)
def test_restart_refuses_impossible_persisted_state(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**options)


# -- wire format ------------------------------------------------------------------------


def test_message_json_round_trip() -> None:
    message = msg(T.APPEND, 1, 2, 3, index=4, log_term=2, entries=(Entry(5, 3, '{"a": 1}'),), commit=4, context="c")
    assert Message.from_json(message.to_json()) == message
    assert Message.from_json({"type": "vote", "sender": 1, "to": 2, "term": 1}) == msg(T.VOTE, 1, 2, 1)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"type": "bogus"}, "unknown message type"),
        ({"term": True}, "'term' must be an integer"),
        ({"term": -1}, "'term' must be between"),
        ({"index": 2**64}, "'index' must be between"),
        ({"sender": 0}, "'sender' must be between"),
        ({"reject": 1}, "'reject' must be a boolean"),
        ({"extra": 1}, "unknown field 'extra'"),
        ({"entries": [{"index": 7, "term": 1, "data": ""}]}, "contiguous"),
        ({"entries": [{"index": 5, "term": 9, "data": ""}]}, "must not decrease nor pass"),
        ({"entries": [{"index": 5, "term": 1}]}, "lacks field 'data'"),
        ({"entries": "no"}, "must be a list"),
        ({"context": 5}, "'context' must be a string"),
    ],
)
def test_message_from_json_refuses_malformed_input(change: dict[str, Any], complaint: str) -> None:
    data = msg(T.APPEND, 1, 2, 3, index=4).to_json()
    data.update(change)
    with pytest.raises(ValueError, match=complaint):
        Message.from_json(data)


def test_message_from_json_refuses_non_objects_and_missing_fields() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        Message.from_json([])
    with pytest.raises(ValueError, match="lacks field 'to'"):
        Message.from_json({"type": "vote", "sender": 1, "term": 1})
    with pytest.raises(ValueError, match="carries no entries"):
        Message.from_json({"type": "vote", "sender": 1, "to": 2, "term": 1, "entries": [{"index": 1, "term": 1, "data": ""}]})
