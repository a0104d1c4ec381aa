"""The order service's calls to the catalog: reserve, confirm, release (the order saga).

They go to the catalog leader (:class:`~toystore.leader.LeaderCaller`), which a
replicated catalog may move; each carries request ids the catalog is idempotent by, so a
call that may have reached a leader that failed goes again to the next. Calls made in the
same reactor turn leave as one batch request: under load, one HTTP request per order would
cost a request's CPU on both sides per order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from toystore.http import MAX_BATCH_ITEMS, ApiError, JsonClient
from toystore.leader import LeaderCaller, Leadership
from toystore.order.replica import unavailable

log = Logger()


@dataclass(frozen=True)
class Reservation:
    request_id: str
    name: str
    quantity: int
    age: float


@dataclass(frozen=True)
class HeldPage:
    """One page of held reservations, oldest first; ``next`` is the cursor of the page after
    it, None once this is the last."""

    reservations: list[Reservation]
    next: str | None


def _message(payload: dict[str, Any]) -> str | None:
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


def _refusal(status: int, payload: dict[str, Any]) -> ApiError | None:
    """None for a reservation the catalog made; its 404 and 409 pass through, anything else is 503."""
    if status == 200:
        return None
    message = _message(payload) or "The catalog refused the reservation."
    if status in (404, 409):
        return ApiError(status, message)
    return unavailable(f"The catalog answered {status}: {message}")


class CatalogClient:
    """:param catalog: finds the catalog leader: the members' tracker, or a lone catalog.
    :param timeout: seconds a call may take, across catalog failovers (a lone catalog: its
        one attempt); then it fails with 503.
    """

    def __init__(self, catalog: Leadership, client: JsonClient, *, clock: IReactorTime, token: str | None,
                 timeout: float = 3.0) -> None:
        # A batch is as large as the catalog takes: the reaper settles a page of the
        # listing, up to the same limit, in one request.
        self._leader = LeaderCaller(catalog, client, clock, token, budget=timeout, attempt_timeout=timeout,
                                    max_batch=MAX_BATCH_ITEMS)

    async def reserve(self, name: str, quantity: int, request_id: str, term: int) -> None:
        """Take stock for an order (idempotent by request id); the catalog's 404 and 409 pass through."""
        (refusal,) = await self.reserve_each([(name, quantity, request_id)], term)
        if refusal is not None:
            raise refusal

    async def reserve_each(self, reservations: Sequence[tuple[str, int, str]], term: int) -> list[ApiError | None]:
        """:meth:`reserve` for each ``(name, quantity, request_id)``, in one call with the
        others of this turn: None for each reserved, else the error that refused it."""
        answers = await self._leader.call_batch("/buy_qty", "reservations", [
            {"name": name, "quantity": quantity, "request_id": request_id, "term": term}
            for name, quantity, request_id in reservations])
        return [_refusal(status, payload) for status, payload in answers]

    async def held_reservations(self, older_than: float, *, limit: int = MAX_BATCH_ITEMS,
                                after: str | None = None) -> HeldPage:
        """Held reservations at least ``older_than`` seconds old, oldest first: a page of at
        most ``limit``, from just past the cursor ``after``."""
        query = f"state=held&older_than={older_than}&limit={limit}"
        if after is not None:
            query += f"&after={quote(after, safe='')}"
        status, body = await self._leader.call("GET", f"/reservations?{query}")
        if status != 200:
            raise unavailable(f"The catalog answered {status} listing reservations: {_message(body)}")
        data = body["data"]
        return HeldPage([Reservation(r["request_id"], r["name"], r["quantity"], r["age"]) for r in data["reservations"]],
                        data["next"])

    async def settle(self, action: str, request_id: str, term: int) -> int:
        """``confirm`` or ``release`` one reservation; returns the catalog's status for it."""
        (status,) = await self.settle_each(action, [request_id], term)
        return status

    async def settle_each(self, action: str, request_ids: list[str], term: int) -> list[int]:
        """:meth:`settle` for each request id, in one call with the others of this turn (more
        than the catalog takes in one go travel as several). Refusals are logged here."""
        answers = await self._leader.call_batch(f"/{action}", "request_ids", request_ids, {"term": term})
        refused = [payload for status, payload in answers if status != 200]
        if refused:
            log.warn("The catalog refused {count} of {total} {action}s (term {term}): {message}", count=len(refused),
                     total=len(answers), action=action, term=term, message=_message(refused[0]) or "no reason given")
        return [status for status, _ in answers]
