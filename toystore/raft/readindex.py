"""A leader's ReadIndex requests waiting for a heartbeat round to confirm its leadership."""

from __future__ import annotations

from dataclasses import dataclass, field

from toystore.raft.messages import ReadState


@dataclass
class _Request:
    index: int
    acks: set[int]


@dataclass
class PendingReads:
    """ReadIndex requests as they arrived, each with the nodes that acknowledged it.

    :param voters: whose acknowledgements count; a majority of them confirms a read. A
        leader that is not among them (it removed itself) confirms nothing by its own.
    """

    voters: frozenset[int] = frozenset()
    _requests: dict[str, _Request] = field(default_factory=dict)

    def add(self, context: str, index: int, leader_id: int) -> bool:
        """Start a request for the commit ``index`` at this moment.

        :return: False when ``context`` is already pending (it is not restarted).
        """
        if context in self._requests:
            return False
        self._requests[context] = _Request(index, {leader_id})
        return True

    @property
    def last_context(self) -> str:
        """The newest pending context, to piggyback on heartbeats ("" when none)."""
        return next(reversed(self._requests), "")

    def acknowledge(self, context: str, sender: int) -> list[ReadState]:
        """Record a heartbeat answer echoing ``context``.

        :return: the requests now confirmed: this one and every older one, since a
            quorum that answered a later heartbeat also confirms the earlier requests.
        """
        request = self._requests.get(context)
        if request is None:
            return []
        request.acks.add(sender)
        return self._release_through(context) if self._confirmed(request) else []

    def set_voters(self, voters: frozenset[int]) -> list[ReadState]:
        """The configuration changed: count only these from now on. :return: the requests
        that these voters confirm already (a group shrunk to its leader, say)."""
        self.voters = voters
        newest = next((context for context, request in reversed(self._requests.items())
                       if self._confirmed(request)), None)
        return self._release_through(newest) if newest is not None else []

    def clear(self) -> None:
        """Drop every request (leadership lost; the node times them out)."""
        self._requests.clear()

    def _confirmed(self, request: _Request) -> bool:
        return len(request.acks & self.voters) >= len(self.voters) // 2 + 1

    def _release_through(self, context: str) -> list[ReadState]:
        confirmed = []
        for pending in list(self._requests):
            confirmed.append(ReadState(pending, self._requests.pop(pending).index))
            if pending == context:
                break
        return confirmed
