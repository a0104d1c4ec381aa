"""What a leader knows about each follower's log (etcd-io/raft's tracker.Progress).

A follower is probed one append at a time until an append succeeds, then replicated
optimistically: the leader sends batch after batch without waiting, up to a bounded
number of unacknowledged appends.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    """How the leader sends to a follower."""

    PROBE = "probe"
    REPLICATE = "replicate"


@dataclass
class Inflights:
    """The last index of each unacknowledged append, oldest first, bounded."""

    capacity: int
    _last_indexes: deque[int] = field(default_factory=deque)

    @property
    def full(self) -> bool:
        """No more appends until some are acknowledged."""
        return len(self._last_indexes) >= self.capacity

    def add(self, last_index: int) -> None:
        """Record an append whose entries end at ``last_index``."""
        self._last_indexes.append(last_index)

    def free_up_to(self, index: int) -> None:
        """Forget the appends acknowledged by a match at ``index``."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first(self) -> None:
        """Forget the oldest append, which was probably lost, so another can go."""
        if self._last_indexes:
            self._last_indexes.popleft()

    def clear(self) -> None:
        """Forget every append."""
        self._last_indexes.clear()


@dataclass
class Progress:
    """A leader's view of one follower.

    :param match: the highest index known to match the leader's log.
    :param next: the index of the next entry to send.
    :param probe_sent: in probe state, an append is out; wait for its answer or a heartbeat's.
    :param recent_active: heard from within the current check-quorum period.
    :param sent_commit: the highest commit index already told to the follower.
    :param answered_lately: answered an append since the last periodic heartbeat.
    """

    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    sent_commit: int = 0
    answered_lately: bool = False

    @property
    def paused(self) -> bool:
        """Must the leader hold further appends?"""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        return self.inflights.full

    def become_probe(self) -> None:
        """Go back to one append at a time from just after ``match``."""
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.clear()

    def become_replicate(self) -> None:
        """Start pipelining from just after ``match``."""
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.clear()

    def sent(self, count: int, last_index: int) -> None:
        """An append with ``count`` entries ending at ``last_index`` went out."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The follower matches up to ``index``. :return: whether ``match`` moved."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append after ``rejected``; it may match up to ``match_hint``.

        :return: False when the rejection is stale (answers an append sent before the
            current ``next``), True when ``next`` moved back.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True
