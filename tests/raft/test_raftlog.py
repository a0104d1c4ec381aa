"""Unit tests of :class:`RaftLog`'s compaction boundary: what it keeps, what it forgets,
and how a snapshot replaces it."""

from __future__ import annotations

from typing import Any

import pytest

from toystore.raft.raftlog import RaftLog

from tests.raft.cores import entries


def compacted_log() -> RaftLog:
    """Compacted up to 5 (term 2); holds 6..9 with terms 2, 3, 3, 4; commit 8, applied 7."""
    return RaftLog(entries(6, 2, 3, 3, 4), compacted_index=5, compacted_term=2, commit=8, applied=7)


def test_the_boundary_keeps_its_term_and_forgets_what_is_before() -> None:
    log = compacted_log()
    assert (log.first_index, log.last_index, log.last_term) == (6, 9, 4)
    assert [log.term_at(index) for index in range(0, 11)] == [None] * 5 + [2, 2, 3, 3, 4, None]
    # An append right after the boundary passes the log-matching check...
    assert log.matches(5, 2) and not log.matches(5, 1)
    # ...and one before it cannot be judged.
    assert not log.matches(4, 2)
    assert log.slice(6, 8) == tuple(entries(6, 2, 3))


def test_a_log_compacted_whole_ends_at_its_boundary() -> None:
    log = RaftLog([], compacted_index=5, compacted_term=2, commit=5, applied=5)
    assert (log.first_index, log.last_index, log.last_term) == (6, 5, 2)
    assert log.is_up_to_date(5, 2) and not log.is_up_to_date(4, 2)
    assert log.unpersisted() == () and log.to_apply() == ()


def test_marks_count_from_the_boundary() -> None:
    log = compacted_log()
    assert log.to_apply() == tuple(entries(8, 3))
    log.append(entries(10, 4, 4))
    assert log.unpersisted() == tuple(entries(10, 4, 4))
    log.persisted_to(11, 4)
    assert not log.has_unpersisted()


def test_fast_backup_stops_at_the_boundary() -> None:
    log = compacted_log()
    assert log.find_conflict_by_term(9, 3) == 8
    # Every entry held has a later term: the boundary is the best guess, not index 0.
    assert log.find_conflict_by_term(9, 1) == 5
    assert log.find_conflict_by_term(3, 1) == 3


def test_compact_drops_up_to_the_index_and_keeps_its_term() -> None:
    log = compacted_log()
    assert log.compact(7) == 7
    assert (log.first_index, log.term_at(7), log.term_at(6)) == (8, 3, None)
    assert list(log.entries) == entries(8, 3, 4)
    assert log.to_apply() == tuple(entries(8, 3))


def test_compact_goes_no_further_than_applied_nor_persisted() -> None:
    log = compacted_log()
    assert log.compact(9) == 7  # applied
    log.applied_to(8)
    log.truncate_after(8)  # entry 8 is to be written again, so it is not durable now
    assert log.compact(9) == 7
    log.persisted_to(8, 3)
    assert log.compact(9) == 8


def test_compact_never_moves_the_boundary_back() -> None:
    log = compacted_log()
    assert log.compact(3) == 5
    assert log.term_at(5) == 2 and log.first_index == 6


def test_restore_of_a_log_that_does_not_hold_the_snapshot_drops_every_entry() -> None:
    log = compacted_log()
    assert log.restore(9, 5)
    assert (log.first_index, log.last_index, log.last_term, list(log.entries)) == (10, 9, 5, [])
    assert (log.commit, log.applied, log.persisted) == (9, 9, 9)
    assert not log.has_to_apply() and not log.has_unpersisted()
    # Past the last entry too: the log then starts after the snapshot.
    assert log.restore(20, 6)
    assert (log.first_index, log.term_at(20), log.term_at(9)) == (21, 6, None)


def test_restore_of_a_log_that_holds_the_snapshot_keeps_the_suffix() -> None:
    log = compacted_log()
    assert not log.restore(9, 4)
    assert list(log.entries) == entries(6, 2, 3, 3, 4)
    # Committed to there; what follows the applied index still goes through apply.
    assert (log.commit, log.applied, log.compacted_index) == (9, 7, 5)
    assert log.to_apply() == tuple(entries(8, 3, 4))


@pytest.mark.parametrize(
    "arguments",
    [
        {"entries": entries(7, 2), "compacted_index": 5, "compacted_term": 2},
        {"entries": entries(6, 1), "compacted_index": 5, "compacted_term": 2},
        {"entries": [], "compacted_index": 5, "compacted_term": 0},
        {"entries": [], "compacted_index": 0, "compacted_term": 1},
        {"entries": entries(6, 2), "compacted_index": 5, "compacted_term": 2, "applied": 4, "commit": 6},
    ],
)
def test_refuses_a_log_storage_could_not_have_produced(arguments: dict[str, Any]) -> None:
    arguments.setdefault("commit", arguments["compacted_index"])
    arguments.setdefault("applied", arguments["compacted_index"])
    with pytest.raises(ValueError):
        RaftLog(**arguments)
