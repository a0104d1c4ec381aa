"""One load session: K iterations of query-then-maybe-order, then a check of every order it made.

A session owns its random generator (derived from the run's seed and its index), so the
toys it picks, the quantities and the order decisions are the same on every run with that
seed, whatever the store answers: each iteration draws all three up front.

Orders carry an ``Idempotency-Key`` (a fresh uuid4 per order, never derived from the seed,
so a rerun with the same seed cannot collide with an earlier run's orders). The session
retries an order itself with the same key after a 503 or a connection failure, at most
:data:`MAX_RETRIES` times, waiting ``Retry-After`` (capped at :data:`RETRY_AFTER_CAP`)
on the injected clock. Verification reads are retried the same way, so a failover in
progress is not mistaken for a lost order.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import quote

import treq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.iweb import IResponse

from client.stats import IntegrityFailure, RunStats

TOYS = ("Tux", "Whale", "Elephant", "Dolphin", "Fox", "Python", "Lego", "Monopoly", "Frisbee", "Marbles")

#: Extra attempts after the first, for an order or a verification read.
MAX_RETRIES = 3
#: The longest ``Retry-After`` the session honours, in seconds.
RETRY_AFTER_CAP = 2.0
#: The wait before a retry when the answer gave no usable ``Retry-After`` (or there was none).
DEFAULT_RETRY_DELAY = 0.5


class HttpRequester(Protocol):
    """What a session needs of its HTTP client: treq's ``HTTPClient`` or a ``StubTreq``."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[IResponse]: ...


@dataclass(frozen=True)
class SessionConfig:
    """The part of the run's options every session follows.

    :param frontend: base URL without a trailing slash.
    :param order_probability: chance of ordering a toy seen in stock, 0..1.
    :param timeout: seconds per HTTP attempt.
    """

    frontend: str
    iterations: int
    order_probability: float
    quantity_max: int = 3
    timeout: float = 10.0


@dataclass(frozen=True)
class PlacedOrder:
    """An order the store acknowledged, as this session recorded it."""

    number: int
    name: str
    quantity: int


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, or its absence.

    :param status: the HTTP status, None when no answer arrived (refused, reset, timed out).
    :param payload: the parsed JSON object, empty when the body was not one.
    :param retry_after: the ``Retry-After`` header in seconds, when present and numeric.
    :param problem: why there is no usable answer, for reports.
    """

    status: int | None
    payload: dict[str, Any]
    retry_after: float | None = None
    problem: str | None = None

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 503

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.problem})"
        error = self.payload.get("error")
        message = error.get("message") if isinstance(error, dict) else self.problem
        return f"answered {self.status}" + (f": {message}" if message else "")


def _retry_after_seconds(values: list[bytes] | None) -> float | None:
    if not values:
        return None
    try:
        seconds = float(values[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None  # an HTTP-date; the default delay serves
    return seconds if seconds >= 0 else None


class Session:
    """One simulated customer.

    :param index: the session's number, for reports.
    :param http: the shared HTTP client (one persistent pool for all sessions).
    :param clock: times requests and retry waits; also treq's timeout clock.
    :param rng: this session's own generator.
    :param stats: shared by all sessions of the run.
    :param on_iteration: called after each iteration (the progress bar).
    """

    def __init__(
        self,
        index: int,
        config: SessionConfig,
        http: HttpRequester,
        clock: IReactorTime,
        rng: random.Random,
        stats: RunStats,
        on_iteration: Callable[[], None] = lambda: None,
    ) -> None:
        self.index = index
        self.config = config
        self.http = http
        self.clock = clock
        self.rng = rng
        self.stats = stats
        self.on_iteration = on_iteration
        self.placed: list[PlacedOrder] = []

    async def run(self) -> None:
        """All iterations, then the integrity check of every acknowledged order."""
        for _ in range(self.config.iterations):
            await self._iteration()
            self.stats.iterations_done += 1
            self.on_iteration()
        for order in self.placed:
            await self._verify(order)

    async def _iteration(self) -> None:
        name = self.rng.choice(TOYS)
        wants_order = self.rng.random() < self.config.order_probability
        quantity = self.rng.randint(1, self.config.quantity_max)
        in_stock = await self._query(name)
        if in_stock is not None and in_stock > 0 and wants_order:
            await self._order(name, quantity)

    async def _query(self, name: str) -> int | None:
        """The toy's stock as the frontend reports it; None when the query failed."""
        started = self.clock.seconds()
        reply = await self._send("GET", f"/products/{quote(name, safe='')}")
        data = reply.payload.get("data")
        stock = data.get("quantity") if isinstance(data, dict) else None
        ok = reply.status == 200 and type(stock) is int
        self.stats.operations["query"].record(self.clock.seconds() - started, ok)
        return stock if ok else None

    async def _order(self, name: str, quantity: int) -> None:
        key = uuid.uuid4().hex
        started = self.clock.seconds()
        reply = await self._send_with_retries(
            "POST", "/orders", body={"name": name, "quantity": quantity},
            headers={b"Idempotency-Key": [key.encode("ascii")]})
        data = reply.payload.get("data")
        number = data.get("order_number") if isinstance(data, dict) else None
        ok = reply.status == 200 and type(number) is int
        self.stats.operations["order"].record(self.clock.seconds() - started, ok)
        if ok:
            assert isinstance(number, int)
            self.placed.append(PlacedOrder(number, name, quantity))
            outcome = "200"
        elif reply.status == 200:
            outcome = "200-without-order-number"
        else:
            outcome = "error" if reply.status is None else str(reply.status)
        self.stats.order_outcomes[outcome] += 1

    async def _verify(self, order: PlacedOrder) -> None:
        started = self.clock.seconds()
        reply = await self._send_with_retries("GET", f"/orders/{order.number}")
        problem = self._mismatch(order, reply)
        self.stats.operations["verify"].record(self.clock.seconds() - started, problem is None)
        self.stats.integrity_checked += 1
        if problem is not None:
            self.stats.integrity_failures.append(IntegrityFailure(self.index, order.number, problem))

    @staticmethod
    def _mismatch(order: PlacedOrder, reply: Reply) -> str | None:
        """Why the read-back does not match the recorded order; None when it matches exactly."""
        if reply.status != 200:
            return f"could not be read back: {reply.describe()}"
        data = reply.payload.get("data")
        if not isinstance(data, dict):
            return "read back without a data object"
        seen = (data.get("number"), data.get("name"), data.get("quantity"))
        expected = (order.number, order.name, order.quantity)
        if seen != expected or type(seen[0]) is not int or type(seen[2]) is not int:
            return (f"read back as number={seen[0]!r} name={seen[1]!r} quantity={seen[2]!r}, "
                    f"expected number={order.number} name={order.name!r} quantity={order.quantity}")
        return None

    async def _send_with_retries(self, method: str, path: str, **kwargs: Any) -> Reply:
        """The request, repeated unchanged (same key) after a 503 or no answer."""
        reply = await self._send(method, path, **kwargs)
        for _ in range(MAX_RETRIES):
            if not reply.retryable:
                break
            self.stats.retries += 1
            delay = min(RETRY_AFTER_CAP, reply.retry_after if reply.retry_after is not None else DEFAULT_RETRY_DELAY)
            await deferLater(self.clock, delay, lambda: None)
            reply = await self._send(method, path, **kwargs)
        return reply

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> Reply:
        """One attempt. Never raises: a missing answer is a Reply with no status."""
        all_headers = dict(headers or {})
        kwargs: dict[str, Any] = {"timeout": self.config.timeout, "reactor": self.clock}
        if body is not None:
            all_headers[b"Content-Type"] = [b"application/json"]
            kwargs["data"] = json.dumps(body).encode("utf-8")
        try:
            response = await self.http.request(method, self.config.frontend + path, headers=all_headers, **kwargs)
            raw = await treq.content(response)
        except Exception as failure:  # refused, reset, timed out: all mean "no answer"
            return Reply(None, {}, problem=type(failure).__name__)
        retry_after = _retry_after_seconds(response.headers.getRawHeaders(b"retry-after"))
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return Reply(response.code, {}, retry_after, problem="the body is not JSON")
        if not isinstance(payload, dict):
            return Reply(response.code, {}, retry_after, problem="the body is not a JSON object")
        return Reply(response.code, payload, retry_after)
