"""Unit tests of log compaction in :class:`RaftCore`: the host's snapshot reports, the
leader's SNAPSHOT to a follower it cannot catch up by entries, the follower's
``Ready.snapshot``, and a restart from a snapshot and a log tail."""

from __future__ import annotations

from typing import Any

import pytest

from toystore.raft.core import RaftCore
from toystore.raft.membership import Configuration
from toystore.raft.messages import Entry, HardState, Message, MessageType, Role, SnapshotMeta

from tests.raft.cores import entries, make, msg, sent, take

T = MessageType
#: The configuration of the cores that ``make`` builds, which their snapshots record.
THREE = Configuration.of((1, 2, 3))


def compacted_leader(keep: int = 0) -> RaftCore:
    """Node 1, leader of term 1: entries 1 (its no-op) to 6 committed with node 3, applied,
    and a snapshot at 6 reported; node 2 has heard nothing of it (its first probe is out)."""
    core = make(pre_vote=False)
    core.campaign()
    sent(core)
    core.step(msg(T.VOTE_RESP, 3, 1, 1))
    sent(core)
    core.propose_batch([f"p{n}" for n in range(2, 7)])
    sent(core)
    core.step(msg(T.APPEND_RESP, 3, 1, 1, index=6))
    sent(core)
    assert (core.role, core.applied_index) == (Role.LEADER, 6)
    core.compact(6, keep=keep)
    return core


def snapshot_to_2(core: RaftCore) -> Message:
    """Node 2 answers a heartbeat; :return: the SNAPSHOT this gets it."""
    core.step(msg(T.HEARTBEAT_RESP, 2, 1, core.term))
    [snapshot] = sent(core)
    return snapshot


# -- the host's reports -------------------------------------------------------------------


def test_compact_records_the_snapshot_and_drops_the_log_up_to_it_less_what_to_keep() -> None:
    core = compacted_leader(keep=2)
    assert (core.snapshot_index, core.first_index, core.log_entries) == (6, 5, 2)
    # A later snapshot with no tail kept: the log goes up to it; an older one changes nothing.
    core.propose("p7")
    sent(core)
    core.step(msg(T.APPEND_RESP, 3, 1, 1, index=7))
    sent(core)
    assert core.compact(7) == 7
    assert core.compact(6, keep=0) == 7
    assert (core.snapshot_index, core.first_index, core.log_entries, core.last_index) == (7, 8, 0, 7)


def test_compact_never_moves_the_log_boundary_back() -> None:
    core = compacted_leader(keep=0)
    assert core.compact(6, keep=4) == 6
    assert core.first_index == 7


@pytest.mark.parametrize(("index", "keep"), [(7, 0), (0, 0), (6, -1)])
def test_compact_refuses_a_snapshot_the_state_machine_cannot_have(index: int, keep: int) -> None:
    core = compacted_leader()
    with pytest.raises(ValueError):
        core.compact(index, keep=keep)


# -- the leader ---------------------------------------------------------------------------


def test_a_follower_behind_the_compaction_gets_the_snapshot_then_entries() -> None:
    leader = compacted_leader()
    leader.propose("p7")
    sent(leader)
    follower = make(2)
    snapshot = snapshot_to_2(leader)
    assert snapshot == msg(T.SNAPSHOT, 1, 2, 1, index=6, log_term=1, config=THREE)

    follower.step(snapshot)
    ready = take(follower)
    assert ready.snapshot == SnapshotMeta(6, 1, THREE)
    assert ready.committed_entries == () and ready.entries == ()
    assert ready.hard_state == HardState(term=1, vote=0, commit=6)
    [answer] = ready.messages
    assert answer == msg(T.APPEND_RESP, 2, 1, 1, index=6, log_term=1, commit=6)
    assert (follower.snapshot_index, follower.first_index, follower.applied_index) == (6, 7, 6)
    assert not follower.has_ready()

    # The snapshot told it the commit index: entries follow at once, no heartbeat.
    leader.step(answer)
    assert sent(leader) == [msg(T.APPEND, 1, 2, 1, index=6, log_term=1, entries=(Entry(7, 1, "p7"),), commit=6)]


def test_a_rejection_below_the_compaction_is_answered_with_the_snapshot() -> None:
    # Restarted from a snapshot at 6 with no tail, node 1 wins term 2 and probes node 2
    # from its last index; node 2's log is empty.
    leader = make(pre_vote=False, hard_state=HardState(term=1, commit=6), snapshot=SnapshotMeta(6, 1), applied=6)
    leader.campaign()
    sent(leader)
    leader.step(msg(T.VOTE_RESP, 3, 1, 2))
    assert msg(T.APPEND, 1, 2, 2, index=6, log_term=1, entries=(Entry(7, 2, ""),), commit=6) in sent(leader)
    leader.step(msg(T.APPEND_RESP, 2, 1, 2, index=6, reject=True, reject_hint=0))
    assert sent(leader) == [msg(T.SNAPSHOT, 1, 2, 2, index=6, log_term=1, config=THREE)]


def test_a_follower_that_lost_its_disk_is_probed_again_from_where_it_is() -> None:
    # Node 2 acknowledged entries up to 6 in this term, then came back with an empty
    # disk: its rejection of the probe after 6 looks stale, its heartbeat answer says why.
    leader = compacted_leader()
    leader.step(msg(T.APPEND_RESP, 2, 1, 1, index=6))
    sent(leader)
    leader.propose("p7")
    sent(leader)
    follower = make(2)
    follower.step(msg(T.HEARTBEAT, 1, 2, 1, commit=6))
    [answer] = sent(follower)
    assert answer == msg(T.HEARTBEAT_RESP, 2, 1, 1, reject=True, reject_hint=0)
    leader.step(answer)
    assert sent(leader) == [msg(T.SNAPSHOT, 1, 2, 1, index=6, log_term=1, config=THREE)]


def test_nothing_more_goes_to_a_follower_until_its_snapshot_is_in_place() -> None:
    leader = compacted_leader()
    snapshot_to_2(leader)
    leader.propose("p7")
    leader.step(msg(T.HEARTBEAT_RESP, 2, 1, 1))
    # A late answer to an append sent before the snapshot does not end the wait either.
    leader.step(msg(T.APPEND_RESP, 2, 1, 1, index=3))
    assert [m.to for m in sent(leader) if m.type is not T.HEARTBEAT] == [3]


def test_a_failed_snapshot_is_sent_again_once_a_heartbeat_answers() -> None:
    leader = compacted_leader()
    snapshot = snapshot_to_2(leader)
    leader.report_snapshot(2, 6, failed=True)
    assert sent(leader) == []
    leader.tick()
    assert msg(T.HEARTBEAT, 1, 2, 1, commit=0) in sent(leader)
    assert snapshot_to_2(leader) == snapshot


def test_after_a_snapshot_got_through_the_next_probe_starts_past_it() -> None:
    # The follower's answer was lost: the host's report is what gets it going.
    leader = compacted_leader()
    snapshot_to_2(leader)
    leader.report_snapshot(2, 6, failed=False)
    assert sent(leader) == []
    leader.step(msg(T.HEARTBEAT_RESP, 2, 1, 1))
    assert sent(leader) == [msg(T.APPEND, 1, 2, 1, index=6, log_term=1, commit=6)]


def test_a_leader_keeps_the_entries_after_a_snapshot_it_is_sending() -> None:
    # A transfer that outlasts many new entries must leave the follower something to catch
    # up by, or it would be sent a snapshot again once it has this one, and again.
    leader = compacted_leader()
    snapshot_to_2(leader)
    leader.propose_batch([f"p{n}" for n in range(7, 13)])
    sent(leader)
    leader.step(msg(T.APPEND_RESP, 3, 1, 1, index=12))
    take(leader)
    assert leader.applied_index == 12
    assert leader.compaction_point(12) == 6
    assert leader.compact(12) == 6 and (leader.snapshot_index, leader.first_index) == (12, 7)
    leader.step(msg(T.APPEND_RESP, 2, 1, 1, index=6))  # node 2 installed the snapshot at 6
    sent(leader)
    assert leader.compaction_point(12) == leader.compact(12) == 12


def test_snapshot_reports_are_ignored_unless_a_snapshot_is_pending() -> None:
    leader = compacted_leader()
    leader.report_snapshot(3, 6, failed=True)
    leader.report_snapshot(1, 6, failed=True)
    leader.propose("p7")
    assert [(m.type, m.to) for m in sent(leader)] == [(T.APPEND, 3)]
    follower = make(2)
    follower.report_snapshot(1, 6, failed=True)
    assert not follower.has_ready()


def test_the_report_of_another_transfer_leaves_the_pending_one_alone() -> None:
    # An earlier transfer to node 2 (another snapshot) ends while this one is under way.
    leader = compacted_leader()
    snapshot_to_2(leader)
    leader.report_snapshot(2, 4, failed=False)
    leader.step(msg(T.HEARTBEAT_RESP, 2, 1, 1))
    assert [m for m in sent(leader) if m.to == 2] == []
    leader.report_snapshot(2, 6, failed=False)
    leader.step(msg(T.HEARTBEAT_RESP, 2, 1, 1))
    assert sent(leader) == [msg(T.APPEND, 1, 2, 1, index=6, log_term=1, commit=6)]


# -- the follower -------------------------------------------------------------------------


def follower_with_commit_4() -> RaftCore:
    """Node 2 in term 2, holding 1..6 of terms 1,1,2,2,2,2 with 4 committed and applied."""
    core = make(2, entries=entries(1, 1, 1, 2, 2, 2, 2), hard_state=HardState(term=2, commit=4), applied=4)
    assert not core.has_ready()
    return core


def test_a_snapshot_already_covered_by_the_commit_index_changes_nothing() -> None:
    core = follower_with_commit_4()
    core.step(msg(T.SNAPSHOT, 1, 2, 2, index=3, log_term=2))
    assert sent(core) == [msg(T.APPEND_RESP, 2, 1, 2, index=4, log_term=2, commit=6)]
    assert (core.snapshot_index, core.first_index, core.last_index, core.commit_index) == (0, 1, 6, 4)


def test_a_snapshot_of_a_stale_term_is_answered_as_a_stale_append() -> None:
    core = follower_with_commit_4()
    core.step(msg(T.SNAPSHOT, 3, 2, 1, index=9, log_term=1))
    assert sent(core) == [msg(T.APPEND_RESP, 2, 3, 2)]
    assert (core.snapshot_index, core.last_index, core.commit_index, core.leader_id) == (0, 6, 4, 0)


def test_a_snapshot_that_the_log_holds_only_commits_it() -> None:
    core = follower_with_commit_4()
    core.step(msg(T.SNAPSHOT, 1, 2, 2, index=5, log_term=2))
    ready = take(core)
    assert ready.snapshot is None
    assert ready.committed_entries == tuple(entries(5, 2))
    assert ready.messages == (msg(T.APPEND_RESP, 2, 1, 2, index=5, log_term=2, commit=6),)
    assert (core.snapshot_index, core.first_index, core.last_index, core.leader_id) == (0, 1, 6, 1)


def test_a_snapshot_that_the_log_does_not_hold_replaces_it() -> None:
    core = follower_with_commit_4()
    # Entries 5 and 6 were an old leader's; the new one's snapshot ends at 8, of term 3.
    core.step(msg(T.SNAPSHOT, 1, 2, 3, index=8, log_term=3))
    ready = take(core)
    assert ready.snapshot == SnapshotMeta(8, 3, THREE)
    assert ready.committed_entries == ()
    assert (core.term, core.leader_id, core.snapshot_index, core.log_entries, core.last_index) == (3, 1, 8, 0, 8)
    # An append after it matches at the snapshot's last entry.
    core.step(msg(T.APPEND, 1, 2, 3, index=8, log_term=3, entries=tuple(entries(9, 3)), commit=9))
    ready = take(core)
    assert ready.snapshot is None
    assert ready.entries == ready.committed_entries == tuple(entries(9, 3))


def test_a_candidate_that_gets_a_snapshot_follows_its_sender() -> None:
    core = make(2, pre_vote=False)
    core.campaign()
    sent(core)
    core.step(msg(T.SNAPSHOT, 1, 2, 1, index=4, log_term=1))
    assert (core.role, core.leader_id, take(core).snapshot) == (Role.FOLLOWER, 1, SnapshotMeta(4, 1, THREE))


def test_a_truncate_that_would_cut_every_entry_held_is_left_to_the_next_append() -> None:
    # Compacted up to its commit index, holding only an old term's entries after it: the
    # deletion would have no entry to carry it to storage.
    core = make(2, snapshot=SnapshotMeta(5, 1), entries=entries(6, 1, 1), hard_state=HardState(term=2, commit=5),
                applied=5)
    core.step(msg(T.TRUNCATE, 1, 2, 2, index=5))
    assert core.last_index == 7 and not take(core).entries


# -- ReadIndex, transfer and restart across the boundary ---------------------------------


def test_read_index_works_on_a_leader_compacted_up_to_its_commit_index() -> None:
    leader = compacted_leader()
    assert leader.log_entries == 0
    leader.read_index("r")
    heartbeats = [m for m in sent(leader) if m.type is T.HEARTBEAT]
    assert [m.context for m in heartbeats] == ["r", "r"]
    leader.step(msg(T.HEARTBEAT_RESP, 3, 1, 1, context="r"))
    assert [(s.context, s.index) for s in take(leader).read_states] == [("r", 6)]


def test_a_transfer_to_a_follower_behind_the_compaction_goes_through_the_snapshot() -> None:
    leader = compacted_leader()
    leader.step(msg(T.HEARTBEAT_RESP, 2, 1, 1))
    sent(leader)
    leader.transfer_leadership(2)
    assert sent(leader) == []
    leader.step(msg(T.APPEND_RESP, 2, 1, 1, index=6, log_term=1, commit=6))
    assert sent(leader) == [msg(T.TIMEOUT_NOW, 1, 2, 1)]


def test_a_node_restarted_from_a_snapshot_and_a_tail_elects_itself_and_replicates() -> None:
    # Snapshot at 6; storage kept the tail from the compaction point 4 on (4 included),
    # and entry 7 past it.
    tail = entries(4, 1, 1, 2, 2)
    core = make(1, snapshot=SnapshotMeta(6, 2), entries=tail, hard_state=HardState(term=2, commit=6), applied=6,
                pre_vote=False)
    assert (core.snapshot_index, core.first_index, core.last_index, core.log_entries) == (6, 5, 7, 3)
    assert not core.has_ready()
    core.campaign()
    votes = sent(core)
    assert {(m.index, m.log_term) for m in votes} == {(7, 2)}
    core.step(msg(T.VOTE_RESP, 2, 1, 3))
    noop = take(core)
    assert noop.entries == (Entry(8, 3, ""),)
    assert {(m.to, m.index, m.log_term) for m in noop.messages} == {(2, 7, 2), (3, 7, 2)}
    # Node 2 lacks 7 and matches at 4, before the snapshot: it gets the kept tail.
    core.step(msg(T.APPEND_RESP, 2, 1, 3, index=7, reject=True, reject_hint=4, conflict_term=1))
    [append] = sent(core)
    assert (append.index, append.log_term, [e.index for e in append.entries]) == (4, 1, [5, 6, 7, 8])
    # Node 3 lacks everything from 2 on: only the snapshot can catch it up.
    core.step(msg(T.APPEND_RESP, 3, 1, 3, index=7, reject=True, reject_hint=1, conflict_term=1))
    assert sent(core) == [msg(T.SNAPSHOT, 1, 3, 3, index=6, log_term=2, config=THREE)]
    core.step(msg(T.APPEND_RESP, 2, 1, 3, index=8))
    assert core.commit_index == 8


def test_a_node_restarted_after_installing_a_snapshot_starts_its_log_after_it() -> None:
    core = make(2, snapshot=SnapshotMeta(6, 2), entries=entries(7, 2), hard_state=HardState(term=2, commit=6), applied=6)
    assert (core.first_index, core.last_index) == (7, 7)
    core.step(msg(T.APPEND, 1, 2, 2, index=6, log_term=2, entries=tuple(entries(7, 2)), commit=7))
    assert take(core).committed_entries == tuple(entries(7, 2))


@pytest.mark.parametrize(
    "options",
    [
        {"snapshot": SnapshotMeta(6, 2), "applied": 5, "entries": entries(7, 2)},
        {"snapshot": SnapshotMeta(6, 2), "applied": 6, "entries": entries(8, 2)},
        {"snapshot": SnapshotMeta(6, 2), "applied": 6, "entries": entries(4, 1, 1)},
        {"snapshot": SnapshotMeta(6, 2), "applied": 6, "entries": entries(4, 1, 1, 1)},
        {"snapshot": None, "applied": 0, "entries": entries(4, 1)},
    ],
)
def test_restart_refuses_a_snapshot_and_log_that_do_not_fit(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(hard_state=HardState(term=2, commit=options["applied"]), **options)


def test_snapshot_messages_cross_the_wire() -> None:
    message = msg(T.SNAPSHOT, 1, 2, 3, index=10, log_term=2)
    assert message.to_json()["type"] == "snapshot"
    assert Message.from_json(message.to_json()) == message
