"""The order service's calls to the catalog: reserve, confirm, release (the order saga)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime

from toystore.http import ApiError, fetch_json
from toystore.order.replica import unavailable


@dataclass(frozen=True)
class Reservation:
    request_id: str
    name: str
    quantity: int
    age: float


class CatalogClient:
    """:param base_url: the catalog, e.g. ``http://127.0.0.1:8001``."""

    def __init__(self, client: HTTPClient, base_url: str, *, clock: IReactorTime, token: str | None,
                 timeout: float = 3.0) -> None:
        self._client = client
        self._base_url = base_url
        self._clock = clock
        self._token = token
        self._timeout = timeout

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        try:
            return await fetch_json(self._client, method, self._base_url + path, reactor=self._clock,
                                    timeout=self._timeout, token=self._token, body=body)
        except Exception as e:
            raise unavailable(f"The catalog is unreachable ({e.__class__.__name__}); retry shortly.") from None

    async def reserve(self, name: str, quantity: int, request_id: str, term: int) -> None:
        """Take stock for an order (idempotent by request id); the catalog's 404 and 409 pass through."""
        status, body = await self._call("POST", "/buy_qty",
                                        {"name": name, "quantity": quantity, "request_id": request_id, "term": term})
        if status == 200:
            return
        message = body.get("error", {}).get("message", "The catalog refused the reservation.")
        if status in (404, 409):
            raise ApiError(status, message)
        raise unavailable(f"The catalog answered {status}: {message}")

    async def held_reservations(self, older_than: float) -> list[Reservation]:
        status, body = await self._call("GET", f"/reservations?state=held&older_than={older_than}")
        if status != 200:
            raise unavailable(f"The catalog answered {status} listing reservations.")
        return [Reservation(r["request_id"], r["name"], r["quantity"], r["age"])
                for r in body["data"]["reservations"]]

    async def settle(self, action: str, request_id: str, term: int) -> int:
        """``confirm`` or ``release`` one reservation; returns the catalog's status."""
        status, _ = await self._call("POST", f"/{action}", {"request_id": request_id, "term": term})
        return status
