"""The order service's calls to the catalog: reserve, confirm, release (the order saga).

Calls made in the same reactor turn leave as one batch request (:class:`Coalescer`): under
load, one HTTP request per order would cost a request's CPU on both sides per order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from toystore.deferreds import Coalescer
from toystore.http import MAX_BATCH_ITEMS, ApiError, JsonClient, fetch_json, split_batch_answer
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
    """:param base_url: the catalog, e.g. ``http://127.0.0.1:8001``."""

    def __init__(self, client: JsonClient, base_url: str, *, clock: IReactorTime, token: str | None,
                 timeout: float = 3.0) -> None:
        self._client = client
        self._base_url = base_url
        self._clock = clock
        self._token = token
        self._timeout = timeout
        self._reservations: Coalescer[str, dict[str, Any], tuple[int, dict[str, Any]]] = Coalescer(
            self._send_reservations, clock)
        # A settlement batch is as large as the catalog takes: the reaper settles a page of
        # the listing, up to the same limit, in one request.
        self._settlements: Coalescer[tuple[str, int], str, tuple[int, dict[str, Any]]] = Coalescer(
            self._send_settlements, clock, max_batch=MAX_BATCH_ITEMS)

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        try:
            return await fetch_json(self._client, method, self._base_url + path, reactor=self._clock,
                                    timeout=self._timeout, token=self._token, body=body)
        except Exception as e:
            raise unavailable(f"The catalog is unreachable ({e.__class__.__name__}); retry shortly.") from None

    async def _batch(self, path: str, body: dict[str, Any], count: int) -> list[tuple[int, dict[str, Any]]]:
        """One batch request; (status, payload) per item, as each single call would have answered."""
        status, payload = await self._call("POST", path, body)
        try:
            return split_batch_answer(status, payload, count)
        except ValueError as e:
            raise unavailable(f"The catalog answered {path} strangely ({e}); retry shortly.") from None

    async def _send_reservations(self, path: str, items: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        return await self._batch(path, {"reservations": items}, len(items))

    async def _send_settlements(self, key: tuple[str, int], request_ids: list[str]) -> list[tuple[int, dict[str, Any]]]:
        action, term = key
        answers = await self._batch(f"/{action}", {"request_ids": request_ids, "term": term}, len(request_ids))
        refused = [payload for status, payload in answers if status != 200]
        if refused:
            log.warn("The catalog refused {count} of {total} {action}s (term {term}): {message}", count=len(refused),
                     total=len(answers), action=action, term=term, message=_message(refused[0]) or "no reason given")
        return answers

    async def reserve(self, name: str, quantity: int, request_id: str, term: int) -> None:
        """Take stock for an order (idempotent by request id); the catalog's 404 and 409 pass through."""
        (refusal,) = await self.reserve_each([(name, quantity, request_id)], term)
        if refusal is not None:
            raise refusal

    async def reserve_each(self, reservations: Sequence[tuple[str, int, str]], term: int) -> list[ApiError | None]:
        """:meth:`reserve` for each ``(name, quantity, request_id)``, in one call with the
        others of this turn: None for each reserved, else the error that refused it."""
        answers = await self._reservations.submit_each("/buy_qty", [
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
        status, body = await self._call("GET", f"/reservations?{query}")
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
        answers = await self._settlements.submit_each((action, term), request_ids)
        return [status for status, _ in answers]
