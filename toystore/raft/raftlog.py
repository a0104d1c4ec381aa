"""The in-memory Raft log: a compaction boundary and three marks, persisted, committed and applied.

Entries up to the boundary (``compacted_index``) are gone: a snapshot holds what applying
them did. Only the boundary's own term is kept, so that an append right after it still
passes the log-matching check. ``persisted`` is how far storage is known to match memory;
everything after it goes out in the next Ready.
"""

from __future__ import annotations

from typing import Sequence

from toystore.raft.messages import Entry


class RaftLog:
    """A contiguous log after a compaction boundary, with commit/applied/persisted marks.

    :param entries: the persisted log, contiguous from ``compacted_index + 1``.
    :param compacted_index: the last entry dropped from the log, 0 when none was.
    :param compacted_term: that entry's term (0 exactly when ``compacted_index`` is 0).
    :param commit: the persisted commit index.
    :param applied: entries up to here were applied before a restart (at least the
        compacted ones: their effect is in the state machine's snapshot).
    :raises ValueError: on a log that storage could not have produced.
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        *,
        compacted_index: int = 0,
        compacted_term: int = 0,
        commit: int,
        applied: int,
    ) -> None:
        if compacted_index < 0 or (compacted_index == 0) != (compacted_term == 0):
            raise ValueError(f"a compaction boundary (index {compacted_index}, term {compacted_term}) has both "
                             "from 1 on, or both 0")
        self._entries = list(entries)
        self._compacted_index = compacted_index
        self._compacted_term = compacted_term
        for position, entry in enumerate(self._entries, start=compacted_index + 1):
            if entry.index != position:
                raise ValueError(f"persisted entries must be contiguous from {compacted_index + 1}, "
                                 f"found index {entry.index} at {position}")
        if self._entries and self._entries[0].term < compacted_term:
            raise ValueError(f"entry {compacted_index + 1} has a term below the compacted one ({compacted_term})")
        if not compacted_index <= applied <= commit <= self.last_index:
            raise ValueError(f"need compacted ({compacted_index}) <= applied ({applied}) <= commit ({commit}) "
                             f"<= last index ({self.last_index})")
        self.commit = commit
        self.applied = applied
        self.persisted = self.last_index

    @property
    def entries(self) -> Sequence[Entry]:
        """The entries held, from :attr:`first_index` on; the live list, not a copy:
        callers must not change it."""
        return self._entries

    @property
    def compacted_index(self) -> int:
        """The last index dropped by compaction (or a snapshot), 0 when none was."""
        return self._compacted_index

    @property
    def compacted_term(self) -> int:
        """The term at :attr:`compacted_index`."""
        return self._compacted_term

    @property
    def first_index(self) -> int:
        """The index of the first entry held (or of the next one when none is)."""
        return self._compacted_index + 1

    @property
    def last_index(self) -> int:
        """The index of the last entry, the compaction boundary's when none is held."""
        return self._compacted_index + len(self._entries)

    @property
    def last_term(self) -> int:
        """The term of the last entry, the compaction boundary's when none is held."""
        return self._entries[-1].term if self._entries else self._compacted_term

    def term_at(self, index: int) -> int | None:
        """:return: the term at ``index`` (the boundary's at :attr:`compacted_index`),
        ``None`` outside the log: compacted away, or not there yet."""
        if index == self._compacted_index:
            return self._compacted_term
        if self._compacted_index < index <= self.last_index:
            return self._entries[index - self.first_index].term
        return None

    def matches(self, index: int, term: int) -> bool:
        """The log-matching check: does our entry at ``index`` have ``term``?"""
        return self.term_at(index) == term

    def is_up_to_date(self, index: int, term: int) -> bool:
        """Is a log ending at (``index``, ``term``) at least as up to date as ours (§5.4.1)?"""
        return term > self.last_term or (term == self.last_term and index >= self.last_index)

    def slice(self, start: int, stop: int) -> tuple[Entry, ...]:
        """:return: the entries with ``start <= index < stop``; ``start`` must be held or next."""
        assert start >= self.first_index, f"slice from {start}, compacted up to {self._compacted_index}"
        return tuple(self._entries[start - self.first_index : stop - self.first_index])

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """:return: the index of the first of ``entries`` we lack or hold with another term, 0 if none."""
        for entry in entries:
            if self.term_at(entry.index) != entry.term:
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """:return: the largest index <= ``index`` whose term is <= ``term``, as far back as
        the compaction boundary: terms before it are unknown, so a match is assumed there.

        Lets a rejected append skip back a whole term at a time (etcd's fast backup).
        """
        index = min(index, self.last_index)
        while index > self._compacted_index and self._entries[index - self.first_index].term > term:
            index -= 1
        return index

    def append(self, entries: Sequence[Entry]) -> None:
        """Put ``entries`` in place, first cutting any suffix they replace.

        :raises AssertionError: when that would cut a committed entry (a bug in the caller).
        """
        if not entries:
            return
        first = entries[0].index
        assert self.commit < first <= self.last_index + 1, f"append at {first} with commit {self.commit}"
        self._cut_from(first)
        self._entries.extend(entries)

    def truncate_after(self, index: int) -> None:
        """Delete every entry past ``index`` (held, >= commit) without replacing it.

        Storage only deletes when it writes, so entry ``index`` is written again to carry
        the deletion (its own index starts the next Ready's entries).
        """
        assert max(self.first_index, self.commit) <= index < self.last_index, (
            f"truncate after {index} with commit {self.commit}, first index {self.first_index}")
        self._cut_from(index + 1)
        self.persisted = min(self.persisted, index - 1)

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lowers it). :return: whether it moved."""
        if index <= self.commit:
            return False
        assert index <= self.last_index, f"commit {index} past last index {self.last_index}"
        self.commit = index
        return True

    def compact(self, index: int) -> int:
        """Drop the entries up to ``index``, or up to what is both applied and durable if
        that is less: the state machine's snapshot holds the effect of applied entries,
        and storage need not be told to write them. No-op at or below the boundary.

        :return: the compaction boundary now.
        """
        index = self.compaction_point(index)
        if index > self._compacted_index:
            term = self.term_at(index)
            assert term is not None
            del self._entries[: index - self._compacted_index]
            self._compacted_index, self._compacted_term = index, term
        return self._compacted_index

    def compaction_point(self, index: int) -> int:
        """Where :meth:`compact` at ``index`` would leave the boundary (and changes nothing)."""
        return max(self._compacted_index, min(index, self.applied, self.persisted))

    def restore(self, index: int, term: int) -> bool:
        """Catch up with a leader's snapshot whose last entry is (``index``, ``term``), past
        our commit index.

        :return: whether the snapshot must be installed. Not when this log holds
            (``index``, ``term``): it is then the leader's up to there, so it is only
            committed to ``index``, and keeps what follows. Otherwise every entry goes, the
            snapshot's last entry becomes the boundary, and commit, applied and persisted
            move to it.
        """
        assert index > self.commit, f"restore to {index} with commit {self.commit}"
        if self.matches(index, term):
            self.commit = index
            return False
        self._entries.clear()
        self._compacted_index, self._compacted_term = index, term
        self.commit = self.applied = self.persisted = index
        return True

    def unpersisted(self) -> tuple[Entry, ...]:
        """The entries storage still has to write."""
        return tuple(self._entries[self.persisted - self._compacted_index :])

    def has_unpersisted(self) -> bool:
        """Is there anything for storage to write?"""
        return self.persisted < self.last_index

    def persisted_to(self, index: int, term: int) -> None:
        """Storage wrote up to (``index``, ``term``); ignored if the log changed since."""
        if index > self.persisted and self.term_at(index) == term:
            self.persisted = index

    def to_apply(self) -> tuple[Entry, ...]:
        """Committed entries not yet applied."""
        return tuple(self._entries[self.applied - self._compacted_index : self.commit - self._compacted_index])

    def has_to_apply(self) -> bool:
        """Are there committed entries not yet applied?"""
        return self.applied < self.commit

    def applied_to(self, index: int) -> None:
        """The node applied everything up to ``index``."""
        assert index <= self.commit, f"applied {index} past commit {self.commit}"
        self.applied = max(self.applied, index)

    def _cut_from(self, index: int) -> None:
        """Drop entries from ``index`` on, and forget that storage holds them."""
        del self._entries[index - self.first_index :]
        self.persisted = min(self.persisted, index - 1)
