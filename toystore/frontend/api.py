"""The frontend's public HTTP API (DESIGN.md, "Public API"): products through the LRU cache,
orders through the order leader with failover, and the catalog's cache invalidations.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import quote

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from toystore.deferreds import SingleFlight
from toystore.frontend.cache import LruCache
from toystore.frontend.leader import OrderCaller, OrderLeaderTracker
from toystore.frontend.status import StatusReport
from toystore.http import (
    ApiError,
    JsonClient,
    install_json_errors,
    json_response,
    read_json_object,
    require_positive_int,
    require_string,
    require_token,
)
from toystore.leader import LeaderCaller, Leadership
from toystore.timeline import StageTimer

MAX_KEY_LENGTH = 200
MAX_NAME_LENGTH = 200
MAX_ORDER_NUMBER = 2**63 - 1
ORDER_NUMBER = re.compile(r"[0-9]+")
PRODUCT_FIELDS = ("name", "price", "quantity")
ORDER_FIELDS = ("number", "name", "quantity")
PASSED_THROUGH = (400, 404, 409)
LEADER_ANSWERED, ANSWERED = "leader answered", "answered"  # an order's stages here

log = Logger()

Product = dict[str, Any]


def _catalog_down() -> ApiError:
    return ApiError(503, "The catalog is unreachable; try again shortly.", headers={"Retry-After": "1"})


def _unexpected_answer(service: str, status: int) -> ApiError:
    log.warn("The {service} answered with unexpected status {status}", service=service, status=status)
    return ApiError(502, f"The {service} gave an unexpected answer.")


def _pick(payload: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any] | None:
    """``payload["data"]`` cut to ``fields``, or None when any is missing."""
    data = payload.get("data")
    if not isinstance(data, dict) or any(name not in data for name in fields):
        return None
    return {name: data[name] for name in fields}


def _error_message(payload: dict[str, Any], default: str) -> str:
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else default


def _idempotency_key(request: IRequest) -> str:
    """The client's Idempotency-Key, or a fresh one: a write is never retried without a key."""
    raw = request.getHeader(b"idempotency-key")
    if raw is None:
        return uuid.uuid4().hex
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        key = ""
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise ApiError(400, f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable characters.")
    return key


class FrontendApi:
    """Klein routes of the frontend.

    :param catalog: finds the catalog leader (a lone catalog is always it).
    :param cache: the product cache (capacity 0 turns caching off).
    :param tracker: knows the order leader (for ``/health``).
    :param orders: sends order requests to the leader with failover.
    :param client: treq client for the catalog.
    :param clock: for request timeouts.
    :param token: the cluster token, or None with ``--insecure``.
    :param catalog_timeout: seconds a catalog query may take, across catalog failovers.
    """

    app = Klein()

    def __init__(
        self,
        catalog: Leadership,
        cache: LruCache[Product],
        tracker: OrderLeaderTracker,
        orders: OrderCaller,
        client: JsonClient,
        clock: IReactorTime,
        token: str | None,
        *,
        catalog_timeout: float = 3.0,
    ) -> None:
        self._catalog_leadership = catalog
        self._catalog = LeaderCaller(catalog, client, clock, token, budget=catalog_timeout,
                                     attempt_timeout=catalog_timeout)
        self._cache = cache
        self._tracker = tracker
        self._orders = orders
        self._token = token
        self._fills: SingleFlight[str, Product] = SingleFlight()
        self._status = StatusReport(catalog, lambda: tracker.replicas, client, clock, token)
        # Seconds from receiving an order to the leader's answer, and to this one's.
        self.stages = StageTimer(clock)

    # ------------------------------------------------------------ products

    @app.route("/products/<string:name>", methods=["GET"])
    async def get_product(self, request: IRequest, name: str) -> bytes:
        if len(name) > MAX_NAME_LENGTH:
            raise ApiError(404, "No such product.")
        product = self._cache.get(name)
        if product is None:
            product = await self._fills.run(name, lambda: self._fill(name))
        return json_response(request, dict(product))

    async def _fill(self, name: str) -> Product:
        """Fetch ``name`` from the catalog and cache it unless it was invalidated meanwhile."""
        generation = self._cache.begin_fill(name)
        try:
            product = await self._query_catalog(name)
        except BaseException:
            self._cache.end_fill(name, generation, None)
            raise
        self._cache.end_fill(name, generation, product)
        return product

    async def _query_catalog(self, name: str) -> Product:
        try:
            status, payload = await self._catalog.call("GET", f"/query/{quote(name, safe='')}")
        except ApiError as error:  # no catalog leader answered in time
            log.warn("Catalog query for {name} failed: {error}", name=name, error=error)
            raise _catalog_down() from None
        if status == 404:
            raise ApiError(404, "No such product.")
        product = _pick(payload, PRODUCT_FIELDS) if status == 200 else None
        if product is None:
            if status >= 500:
                raise _catalog_down()
            raise _unexpected_answer("catalog", status)
        return product

    # ------------------------------------------------------------ orders

    @app.route("/orders", methods=["POST"])
    async def place_order(self, request: IRequest) -> bytes:
        body = read_json_object(request)
        name = require_string(body, "name", MAX_NAME_LENGTH)
        quantity = require_positive_int(body, "quantity")
        key = _idempotency_key(request)
        reached = self.stages.start()
        try:
            status, payload = await self._orders.place_order({"name": name, "quantity": quantity, "request_id": key})
        finally:
            # Stock may have changed even when we never heard back. The catalog's push for
            # a reservation does not wait to land (toystore.catalog.api), so this is what
            # keeps a client's next read here from missing the order it was just told of.
            self._cache.invalidate(name)
        if reached is not None:
            reached(LEADER_ANSWERED)
        if status == 200:
            data = payload.get("data")
            number = data.get("order_number") if isinstance(data, dict) else None
            if type(number) is int:
                answer = json_response(request, {"order_number": number})
                if reached is not None:
                    reached(ANSWERED)
                return answer
        elif status in PASSED_THROUGH:
            raise ApiError(status, _error_message(payload, "The order service refused the order."))
        raise _unexpected_answer("order service", status)

    @app.route("/orders/<string:number>", methods=["GET"])
    async def get_order(self, request: IRequest, number: str) -> bytes:
        if not ORDER_NUMBER.fullmatch(number):
            raise ApiError(400, "The order number must be a whole number from 0 up.")
        if int(number) > MAX_ORDER_NUMBER:
            raise ApiError(404, "No such order.")
        status, payload = await self._orders.call("GET", f"/orders/{int(number)}")
        if status == 200:
            order = _pick(payload, ORDER_FIELDS)
            if order is not None:
                return json_response(request, order)
        elif status in PASSED_THROUGH:
            raise ApiError(status, _error_message(payload, "No such order."))
        raise _unexpected_answer("order service", status)

    # ------------------------------------------------------------ internal and health

    @app.route("/invalidate", methods=["POST"])
    def invalidate(self, request: IRequest) -> bytes:
        """``{"name": toy}`` drops one toy; ``{"all": true}`` (a new catalog leader) drops every one."""
        require_token(request, self._token)
        body = read_json_object(request)
        if set(body) == {"all"} and body["all"] is True:
            self._cache.invalidate_all()
        else:
            self._cache.invalidate(require_string(body, "name", MAX_NAME_LENGTH))
        return json_response(request, {"invalidated": True})

    @app.route("/", methods=["GET"])
    def status_page(self, request: IRequest) -> bytes:
        return self._status.page(request)

    @app.route("/status.json", methods=["GET"])
    async def status_json(self, request: IRequest) -> bytes:
        return json_response(request, await self._status.snapshot(self._tracker.leader_id))

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        stats = self._cache.stats()
        return json_response(request, {
            "status": "ok",
            "leader_id": self._tracker.leader_id,
            "catalog_leader_id": self._catalog_leadership.leader_id,
            "cache": {"size": stats.size, "capacity": stats.capacity, "hits": stats.hits,
                      "misses": stats.misses, "invalidations": stats.invalidations},
        })


install_json_errors(FrontendApi.app)
