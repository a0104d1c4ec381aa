"""Invalidations pushed to every frontend after a toy's stock or price changed durably.

The catalog awaits them before it answers a release, confirmation or restock (see
``toystore.catalog.api`` for why a reservation does not wait). A frontend that is down or
slow only costs a warning: its cache entry expires or is refreshed later, and a buy never
fails because of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from toystore.http import JsonClient, fetch_json

log = Logger()

INVALIDATION_TIMEOUT = 0.5


class Invalidator:
    """Pushes ``POST <frontend>/invalidate {"name"}`` to every frontend.

    Pushes are coalesced per frontend: while one round of pushes is in flight, the
    names changed meanwhile wait for the next round, which starts when it ends. So
    under load a frontend receives one push per toy per round trip instead of one per
    buy, and each caller still waits for a push that started after its change.

    :param client: the treq client (a StubTreq of a fake frontend in tests).
    :param frontends: base URLs of every frontend.
    :param reactor: the clock for the per-push timeout.
    :param token: the cluster token, or None with ``--insecure``.
    """

    def __init__(
        self,
        client: JsonClient,
        frontends: Sequence[str],
        reactor: IReactorTime,
        token: str | None,
        timeout: float = INVALIDATION_TIMEOUT,
    ) -> None:
        self._client = client
        self._reactor = reactor
        self._token = token
        self._timeout = timeout
        self._rounds = {frontend: _Rounds() for frontend in frontends}
        self.pushes = 0  # POSTs sent, for tests and metrics

    async def invalidate(self, names: Iterable[str]) -> None:
        """Push every name to every frontend; returns when all have answered or failed."""
        names = set(names)
        waits = [self._join(frontend, rounds, names) for frontend, rounds in self._rounds.items()]
        await defer.gatherResults(waits)

    def _join(self, frontend: str, rounds: "_Rounds", names: set[str]) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        rounds.names |= names
        rounds.waiters.append(done)
        if not rounds.in_flight:
            defer.ensureDeferred(self._run_rounds(frontend, rounds))
        return done

    async def _run_rounds(self, frontend: str, rounds: "_Rounds") -> None:
        rounds.in_flight = True
        try:
            while rounds.waiters:
                names, rounds.names = rounds.names, set()
                waiters, rounds.waiters = rounds.waiters, []
                toys = sorted(names)
                delivered = await defer.gatherResults([defer.ensureDeferred(self._push(frontend, n)) for n in toys])
                # One line per round (a failed push also warns on its own, with its error).
                log.debug("Invalidation round to {frontend}: {toys}; {delivered} of {pushed} delivered, "
                          "{callers} changes waited on it", frontend=frontend, toys=toys,
                          delivered=sum(delivered), pushed=len(toys), callers=len(waiters))
                for waiter in waiters:
                    waiter.callback(None)
        finally:
            rounds.in_flight = False

    async def clear_all(self) -> None:
        """Empty every frontend's cache (``{"all": true}``); returns when all have answered or failed."""
        await defer.gatherResults([defer.ensureDeferred(self._post(frontend, {"all": True}, "every toy"))
                                   for frontend in self._rounds])

    async def _push(self, frontend: str, name: str) -> bool:
        return await self._post(frontend, {"name": name}, name)

    async def _post(self, frontend: str, body: dict[str, Any], what: str) -> bool:
        """One push; whether the frontend took it. Never raises: a frontend down costs a warning."""
        self.pushes += 1
        try:
            status, _ = await fetch_json(self._client, "POST", f"{frontend}/invalidate", reactor=self._reactor,
                                         timeout=self._timeout, token=self._token, body=body)
        except Exception as e:
            log.warn("Invalidation of {name} at {frontend} failed: {error}", name=what, frontend=frontend,
                     error=repr(e))
            return False
        if status != 200:
            log.warn("Invalidation of {name} at {frontend} answered {status}", name=what, frontend=frontend,
                     status=status)
            return False
        return True


@dataclass
class _Rounds:
    """One frontend's coalescing state: names and callers waiting for the next round."""

    names: set[str] = field(default_factory=set)
    waiters: list[defer.Deferred] = field(default_factory=list)
    in_flight: bool = False
