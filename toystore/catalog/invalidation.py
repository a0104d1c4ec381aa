"""Invalidations pushed to every frontend after a toy's stock or price changed durably.

The catalog awaits them before it answers the request that caused the change, so a client
never reads a stale quantity from a frontend cache after its order returned. A frontend
that is down or slow only costs a warning: its cache entry expires or is refreshed later,
and a buy never fails because of it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from toystore.http import fetch_json

log = Logger()

INVALIDATION_TIMEOUT = 0.5


class Invalidator:
    """Pushes ``POST <frontend>/invalidate {"name"}`` to every frontend.

    :param client: the treq client (a StubTreq of a fake frontend in tests).
    :param frontends: base URLs of every frontend.
    :param reactor: the clock for the per-push timeout.
    :param token: the cluster token, or None with ``--insecure``.
    """

    def __init__(
        self,
        client: HTTPClient,
        frontends: Sequence[str],
        reactor: IReactorTime,
        token: str | None,
        timeout: float = INVALIDATION_TIMEOUT,
    ) -> None:
        self._client = client
        self._frontends = list(frontends)
        self._reactor = reactor
        self._token = token
        self._timeout = timeout

    async def invalidate(self, names: Iterable[str]) -> None:
        """Push every name to every frontend at once; returns when all have answered or failed."""
        pushes = [
            defer.ensureDeferred(self._push(frontend, name)) for name in names for frontend in self._frontends
        ]
        await defer.gatherResults(pushes)

    async def _push(self, frontend: str, name: str) -> None:
        try:
            request = defer.ensureDeferred(fetch_json(
                self._client, "POST", f"{frontend}/invalidate", reactor=self._reactor,
                timeout=self._timeout, token=self._token, body={"name": name},
            ))
            # treq's timeout stops at the response headers; this one also covers the body.
            status, _ = await request.addTimeout(self._timeout, self._reactor)
        except Exception as e:
            log.warn("Invalidation of {name} at {frontend} failed: {error}", name=name, frontend=frontend,
                     error=repr(e))
            return
        if status != 200:
            log.warn("Invalidation of {name} at {frontend} answered {status}", name=name, frontend=frontend,
                     status=status)
