"""The frontend's live status page: ``GET /`` serves ``status.html``, whose script polls
``GET /status.json``, built here from the catalog leader's ``/ledger`` and the
``/health_check`` of every order replica and catalog member. The cluster token stays on the server: the browser only ever
talks to the frontend, and the JSON holds nothing the public API does not already show,
apart from the replicas' replication state.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Callable, Mapping

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from toystore.http import ApiError, JsonClient, fetch_json
from toystore.leader import ROLES, LeaderCaller, Leadership, LeaderTracker

STATUS_TIMEOUT = 1.0
REPLICA_FIELDS = ("role", "term", "leader_id", "commit_index", "last_index")
# The page's script and style are inline; it may fetch from this origin and nothing else.
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'")


@functools.cache
def status_page() -> bytes:
    """The HTML of the page (package data beside this module), read once."""
    return resources.files(__package__).joinpath("status.html").read_bytes()


def _toys(payload: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The ledger's toys as ``[{"name", "price", "quantity"}]`` by name, None when malformed."""
    data = payload.get("data")
    toys = data.get("toys") if isinstance(data, dict) else None
    if not isinstance(toys, dict):
        return None
    rows = []
    for name, toy in sorted(toys.items()):
        if not isinstance(toy, dict) or not {"price", "quantity"} <= toy.keys():
            return None
        rows.append({"name": name, "price": toy["price"], "quantity": toy["quantity"]})
    return rows


def _backlog(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The saga's backlog from the ledger, ``{"held", "oldest_held_age"}``; None when malformed."""
    data = payload.get("data")
    counts = data.get("reservations") if isinstance(data, dict) else None
    held = counts.get("held") if isinstance(counts, dict) else None
    oldest = data.get("oldest_held_age") if isinstance(data, dict) else None
    if type(held) is not int or not isinstance(oldest, (int, float)):
        return None
    return {"held": held, "oldest_held_age": oldest}


def _replica(replica_id: int, status: int | None, payload: Mapping[str, Any]) -> dict[str, Any]:
    """One replica's row: its health fields when it answered in the documented shape."""
    data = payload.get("data")
    if status != 200 or not isinstance(data, dict) or data.get("role") not in ROLES:
        return {"id": replica_id, "reachable": False, **dict.fromkeys(REPLICA_FIELDS)}
    return {"id": replica_id, "reachable": True, **{name: data.get(name) for name in REPLICA_FIELDS}}


class StatusReport:
    """Gathers the status page's figures on each request (the page polls about once a second).

    :param catalog: finds the catalog leader, which alone answers ``/ledger``.
    :param replicas: ``{id: base URL}`` of the order replicas now (they follow membership changes).
    :param client: the frontend's treq client.
    :param clock: for the per-request timeout.
    :param token: the cluster token, or None with ``--insecure``; sent to peers, never to the browser.
    """

    def __init__(self, catalog: Leadership, replicas: Callable[[], Mapping[int, str]], client: JsonClient,
                 clock: IReactorTime, token: str | None, timeout: float = STATUS_TIMEOUT) -> None:
        self._catalog_leadership = catalog
        self._catalog = LeaderCaller(catalog, client, clock, token, budget=timeout, attempt_timeout=timeout)
        self._replicas = replicas
        self._client = client
        self._clock = clock
        self._token = token
        self._timeout = timeout

    def page(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", PAGE_POLICY.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return status_page()

    async def snapshot(self, frontend_leader: int | None) -> dict[str, Any]:
        """``{"toys", "catalog_reachable", "reservations", "replicas", "catalog_members",
        "frontend_leader_id", "catalog_leader_id", "time"}``; an unreachable peer is reported
        as such, never as a failure of the whole page. A lone catalog has no members and no
        leader id (None)."""
        catalog = Deferred.fromCoroutine(self._ledger())
        replicas = dict(self._replicas())
        tracker = self._catalog_leadership
        catalog_members = dict(tracker.replicas) if isinstance(tracker, LeaderTracker) else {}
        healths = [Deferred.fromCoroutine(self._get(f"{url}/health_check"))
                   for _, url in sorted(replicas.items()) + sorted(catalog_members.items())]
        answers = await gatherResults([catalog, *healths])
        toys = _toys(answers[0][1]) if answers[0][0] == 200 else None
        rows = [_replica(member_id, status, payload)
                for member_id, (status, payload) in zip(sorted(replicas) + sorted(catalog_members), answers[1:])]
        return {
            "toys": toys or [],
            "catalog_reachable": toys is not None,
            "reservations": _backlog(answers[0][1]) if toys is not None else None,
            "replicas": rows[:len(replicas)],
            "catalog_members": rows[len(replicas):],
            "frontend_leader_id": frontend_leader,
            "catalog_leader_id": tracker.leader_id,
            "time": self._clock.seconds(),
        }

    async def _ledger(self) -> tuple[int | None, dict[str, Any]]:
        try:
            return await self._catalog.call("GET", "/ledger")
        except ApiError:  # no catalog leader answered in time
            return None, {}

    async def _get(self, url: str) -> tuple[int | None, dict[str, Any]]:
        try:
            return await fetch_json(self._client, "GET", url, reactor=self._clock, timeout=self._timeout,
                                    token=self._token)
        except CancelledError:
            raise
        except Exception:
            return None, {}
