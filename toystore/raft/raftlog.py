"""The in-memory Raft log and its three boundaries: persisted, committed and applied.

The whole log stays in memory (the store has no snapshots), so an entry's position in
the list is its index minus one. ``persisted`` is how far storage is known to match
memory; everything after it goes out in the next Ready.
"""

from __future__ import annotations

from typing import Sequence

from toystore.raft.messages import Entry


class RaftLog:
    """A contiguous log from index 1 with commit/applied/persisted marks.

    :param entries: the persisted log, indexes from 1, contiguous.
    :param commit: the persisted commit index.
    :param applied: entries up to here were applied before a restart.
    :raises ValueError: on a log that storage could not have produced.
    """

    def __init__(self, entries: Sequence[Entry], *, commit: int, applied: int) -> None:
        self._entries = list(entries)
        for position, entry in enumerate(self._entries, start=1):
            if entry.index != position:
                raise ValueError(f"persisted entries must be contiguous from 1, found index {entry.index} at {position}")
        if not 0 <= applied <= commit <= len(self._entries):
            raise ValueError(f"need 0 <= applied ({applied}) <= commit ({commit}) <= last index ({len(self._entries)})")
        self.commit = commit
        self.applied = applied
        self.persisted = len(self._entries)

    @property
    def entries(self) -> Sequence[Entry]:
        """The live list, not a copy: callers must not change it."""
        return self._entries

    @property
    def last_index(self) -> int:
        """The index of the last entry, 0 when empty."""
        return len(self._entries)

    @property
    def last_term(self) -> int:
        """The term of the last entry, 0 when empty."""
        return self._entries[-1].term if self._entries else 0

    def term_at(self, index: int) -> int | None:
        """:return: the term at ``index`` (0 at index 0), ``None`` outside the log."""
        if index == 0:
            return 0
        if 0 < index <= len(self._entries):
            return self._entries[index - 1].term
        return None

    def matches(self, index: int, term: int) -> bool:
        """The log-matching check: does our entry at ``index`` have ``term``?"""
        return self.term_at(index) == term

    def is_up_to_date(self, index: int, term: int) -> bool:
        """Is a log ending at (``index``, ``term``) at least as up to date as ours (§5.4.1)?"""
        return term > self.last_term or (term == self.last_term and index >= self.last_index)

    def slice(self, start: int, stop: int) -> tuple[Entry, ...]:
        """:return: the entries with ``start <= index < stop``."""
        return tuple(self._entries[start - 1 : stop - 1])

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """:return: the index of the first of ``entries`` we lack or hold with another term, 0 if none."""
        for entry in entries:
            if self.term_at(entry.index) != entry.term:
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """:return: the largest index <= ``index`` whose term is <= ``term``.

        Lets a rejected append skip back a whole term at a time (etcd's fast backup).
        """
        index = min(index, self.last_index)
        while index > 0 and self._entries[index - 1].term > term:
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
        """Delete every entry past ``index`` (>= 1, >= commit) without replacing it.

        Storage only deletes when it writes, so entry ``index`` is written again to carry
        the deletion (its own index starts the next Ready's entries).
        """
        assert max(1, self.commit) <= index < self.last_index, f"truncate after {index} with commit {self.commit}"
        self._cut_from(index + 1)
        self.persisted = min(self.persisted, index - 1)

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lowers it). :return: whether it moved."""
        if index <= self.commit:
            return False
        assert index <= self.last_index, f"commit {index} past last index {self.last_index}"
        self.commit = index
        return True

    def unpersisted(self) -> tuple[Entry, ...]:
        """The entries storage still has to write."""
        return tuple(self._entries[self.persisted :])

    def has_unpersisted(self) -> bool:
        """Is there anything for storage to write?"""
        return self.persisted < len(self._entries)

    def persisted_to(self, index: int, term: int) -> None:
        """Storage wrote up to (``index``, ``term``); ignored if the log changed since."""
        if index > self.persisted and self.term_at(index) == term:
            self.persisted = index

    def to_apply(self) -> tuple[Entry, ...]:
        """Committed entries not yet applied."""
        return tuple(self._entries[self.applied : self.commit])

    def has_to_apply(self) -> bool:
        """Are there committed entries not yet applied?"""
        return self.applied < self.commit

    def applied_to(self, index: int) -> None:
        """The node applied everything up to ``index``."""
        assert index <= self.commit, f"applied {index} past commit {self.commit}"
        self.applied = max(self.applied, index)

    def _cut_from(self, index: int) -> None:
        """Drop entries from ``index`` on, and forget that storage holds them."""
        del self._entries[index - 1 :]
        self.persisted = min(self.persisted, index - 1)
