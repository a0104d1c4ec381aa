"""What a leader knows about each follower's log (etcd-io/raft's tracker.Progress).

A follower is probed one append at a time until an append succeeds, then replicated
optimistically: the leader sends batch after batch without waiting, up to a bounded
number of unacknowledged appends. A follower that needs entries the leader compacted
away is sent the snapshot instead, and nothing else until it has it or its transfer failed.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    """How the leader sends to a follower."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


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
    :param pending_snapshot: in snapshot state, the index of the snapshot sent.
    """

    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    sent_commit: int = 0
    answered_lately: bool = False
    pending_snapshot: int = 0

    @property
    def paused(self) -> bool:
        """Must the leader hold further appends?"""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return self.inflights.full

    def become_probe(self) -> None:
        """Go back to one append at a time from just after ``match``, or after the
        snapshot pending, which the follower holds by now."""
        self.next = max(self.match, self.pending_snapshot) + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        """Start pipelining from just after ``match``."""
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        """The snapshot at ``index`` is on its way: hold appends until it is in place."""
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index
        self.next = index + 1
        # Installing it commits the follower up to there.
        self.sent_commit = max(self.sent_commit, index)

    def snapshot_ended(self, *, failed: bool) -> None:
        """The host's transfer of the pending snapshot ended. Probe again, once a heartbeat
        answers (the follower's answer to the snapshot may still be on its way): from just
        past the snapshot if it arrived, from ``match`` if not, which sends it again when
        still needed."""
        if failed:
            self.pending_snapshot = 0
        self.become_probe()
        self.probe_sent = True

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
        next_ = max(min(rejected, match_hint + 1), self.match + 1)
        if next_ == self.next:
            # The follower lacks an entry it acknowledged (its disk was lost, see
            # :meth:`lost_entries`); probing it again now would only repeat the exchange.
            return False
        self.next = next_
        self.probe_sent = False
        return True

    def lost_entries(self, last_index: int) -> None:
        """The follower says its log ends at ``last_index``, below ``match``: its disk was
        lost since it acknowledged ``match``. Probe it from where it is now."""
        if last_index < self.match:
            self.match = last_index
            self.become_probe()

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.pending_snapshot = 0
        self.probe_sent = False
        self.inflights.clear()
