"""The frontend's side of following the order leader: what only the order group takes.

The frontend tells the order replicas which one it wants as leader (``/set_leader``, the
highest live id that says it is caught up: :class:`Preference` decides when), and sends
orders to the leader in batches. Finding and following the leader is shared with the
catalog's clients, in :mod:`toystore.leader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from toystore.http import JsonClient, fetch_json
from toystore.leader import HealthReport, LeaderCaller, LeaderTracker

log = Logger()


@dataclass
class Preference:
    """Decides when to tell the replicas which one the frontend wants as leader.

    The frontend prefers the highest responsive id. It asks for it only once that id has
    answered ``required_streak`` consecutive checks (so a replica that flaps, or misses one
    check, does not cause a transfer each time it comes back), and at most once per
    ``min_interval`` seconds. When no answering replica leads (the leader died) the request
    is the failover itself and is asked for at the first check that sees it: a
    primary-backup group has no leader until the frontend names one, and waiting for a
    streak, or out the interval of the transfer just before (the preference moving back to
    a restarted leader), kept the store from taking orders for up to ``min_interval`` s.
    Announcing without a leader is harmless in Raft mode, where only a leader acts on it.
    """

    min_interval: float = 5.0
    required_streak: int = 2
    _candidate: int | None = field(default=None, init=False)
    _streak: int = field(default=0, init=False)
    _last_announced: float | None = field(default=None, init=False)

    def observe(self, responsive: Collection[int], leader: int | None, now: float) -> int | None:
        """Record one round of health checks; returns the id to announce, or None."""
        preferred = max(responsive) if responsive else None
        if preferred is None or preferred != self._candidate:
            self._candidate, self._streak = preferred, 0
        if preferred is None:
            return None
        self._streak += 1
        if leader is None:
            return preferred  # a failover, not a transfer: neither delayed nor counted against the next transfer
        if self._streak < self.required_streak or preferred == leader:
            return None
        if self._last_announced is not None and now - self._last_announced < self.min_interval:
            return None
        self._last_announced = now
        return preferred


class OrderLeaderTracker(LeaderTracker):
    """The order group's :class:`LeaderTracker`, which also announces the frontend's
    preference for the leader after each round of health checks, when it is due.

    :param checks: ``check_interval`` and ``check_timeout``, as :class:`LeaderTracker` takes them.
    """

    def __init__(self, replicas: Mapping[int, str], client: JsonClient, clock: IReactorTime, token: str | None, *,
                 announce_interval: float = 5.0, **checks: float) -> None:
        super().__init__(replicas, client, clock, token, group="order", **checks)
        self._preference = Preference(min_interval=announce_interval)

    async def check(self) -> dict[int, HealthReport]:
        """One round: probe every replica, adopt the leader, announce the preference if due."""
        reports = await super().check()
        # A replica that is still catching up would lead with a short or forked history.
        eligible = [ident for ident, report in reports.items() if report.caught_up]
        wanted = self._preference.observe(eligible, self.leader_id, self._clock.seconds())
        if wanted is not None:
            await self._announce(wanted, sorted(reports))
        return reports

    async def _announce(self, wanted: int, responsive: list[int]) -> None:
        log.info("Asking order replicas {ids} to make {wanted} the leader", ids=responsive, wanted=wanted)
        await gatherResults(
            [Deferred.fromCoroutine(self._send_set_leader(ident, wanted)) for ident in responsive]
        )

    async def _send_set_leader(self, replica_id: int, wanted: int) -> None:
        try:
            await fetch_json(self._client, "POST", f"{self.replicas[replica_id]}/set_leader", reactor=self._clock,
                             timeout=self._check_timeout, token=self._token, body={"id": wanted})
        except CancelledError:
            raise
        except Exception as error:
            log.info("Order replica {id} did not take /set_leader: {error}", id=replica_id, error=error)


class OrderCaller(LeaderCaller):
    """Sends requests to the order leader; orders that reach this frontend together travel
    to it in one batch."""

    async def place_order(self, order: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /order`` for one order ``{name, quantity, request_id}``, with the retries of
        :meth:`~toystore.leader.LeaderCaller.call_batch`."""
        (answer,) = await self.call_batch("/order", "orders", [order])
        return answer
