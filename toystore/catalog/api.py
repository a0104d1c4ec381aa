"""The catalog's HTTP API (DESIGN.md, "Catalog"): queries, the reservation saga, restock, ledger.

Every endpoint but ``/health`` needs the cluster token. A change of stock is durable and
pushed to every frontend before the request that caused it is answered.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from toystore.catalog.invalidation import Invalidator
from toystore.catalog.store import STATES, CatalogStore, Conflict, NotFound, as_json
from toystore.http import (
    ApiError,
    Utf8PathGuard,
    error_response,
    install_json_errors,
    json_response,
    read_json_object,
    require_positive_int,
    require_string,
    require_token,
)

log = Logger()

MAX_TERM = 2**62


def require_term(body: Mapping[str, Any], required: bool) -> int:
    """The Raft term of the caller: a whole number >= 0; 0 when optional and absent."""
    if not required and "term" not in body:
        return 0
    value = body.get("term")
    if type(value) is not int or not 0 <= value <= MAX_TERM:
        raise ApiError(400, f"'term' must be a whole number from 0 to {MAX_TERM}.")
    return value


def _query_arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"'{name}' is not valid UTF-8.") from None


class CatalogApi:
    """The Klein routes over a :class:`CatalogStore`.

    :param store: the catalog's data.
    :param invalidator: pushes changed toys to the frontends.
    :param token: the cluster token, or None with ``--insecure``.
    :param restock_to: the stock a sold-out toy is brought back to.
    """

    app = Klein()

    def __init__(self, store: CatalogStore, invalidator: Invalidator, token: str | None, restock_to: int) -> None:
        self._store = store
        self._invalidator = invalidator
        self._token = token
        self._restock_to = restock_to

    def resource(self) -> IResource:
        """What the catalog's Site serves."""
        return Utf8PathGuard(self.app.resource())

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, ApiError(404, failure.value.message))

    @app.handle_errors(Conflict)
    def _conflict(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, ApiError(409, failure.value.message))

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        return json_response(request, {"status": "ok"})

    @app.route("/query/<string:name>", methods=["GET"])
    async def query(self, request: IRequest, name: str) -> bytes:
        require_token(request, self._token)
        return json_response(request, as_json(await self._store.query(name)))

    @app.route("/buy_qty", methods=["POST"])
    async def buy_qty(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        body = read_json_object(request)
        name = require_string(body, "name")
        quantity = require_positive_int(body, "quantity")
        request_id = require_string(body, "request_id")
        term = require_term(body, required=False)
        bought = await self._store.buy(request_id, name, quantity, term)
        await self._invalidator.invalidate([bought.name])
        return json_response(request, as_json(bought))

    @app.route("/release", methods=["POST"])
    async def release(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        body = read_json_object(request)
        request_id = require_string(body, "request_id")
        term = require_term(body, required=True)
        name = await self._store.release(request_id, term)
        log.info("Released reservation {request_id} of {name} (term {term}): stock returned",
                 request_id=request_id, name=name, term=term)
        await self._invalidator.invalidate([name])
        return json_response(request, {"request_id": request_id, "state": "released"})

    @app.route("/confirm", methods=["POST"])
    async def confirm(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        body = read_json_object(request)
        request_id = require_string(body, "request_id")
        term = require_term(body, required=True)
        try:
            await self._store.confirm(request_id, term)
        except Conflict as e:
            # The saga releases only what can never commit, so this means a bug somewhere.
            log.error("Protocol violation: confirm of {request_id} in term {term}: {message}",
                      request_id=request_id, term=term, message=e.message)
            raise
        # One per order: debug, so that the default level keeps to rarer events.
        log.debug("Confirmed reservation {request_id} (term {term})", request_id=request_id, term=term)
        return json_response(request, {"request_id": request_id, "state": "confirmed"})

    @app.route("/reservations", methods=["GET"])
    async def reservations(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        state = _query_arg(request, "state")
        if state is not None and state not in STATES:
            raise ApiError(400, f"'state' must be one of {', '.join(STATES)}.")
        older_text = _query_arg(request, "older_than")
        try:
            older_than = float(older_text) if older_text is not None else 0.0
        except ValueError:
            older_than = math.nan
        if not (math.isfinite(older_than) and older_than >= 0):
            raise ApiError(400, "'older_than' must be a number of seconds >= 0.")
        found = await self._store.reservations(state, older_than)
        return json_response(request, {"reservations": [as_json(r) for r in found]})

    @app.route("/restock", methods=["POST"])
    async def restock(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        empty = request.content is None or request.content.read(1) == b""
        if request.content is not None:
            request.content.seek(0)
        body = {} if empty else read_json_object(request)
        name = require_string(body, "name") if "name" in body else None
        restocked = await self._store.restock(self._restock_to, name)
        if restocked:
            log.info("Restocked {toys} (requested)", toys=", ".join(restocked), restocked=restocked,
                     trigger="requested")
        await self._invalidator.invalidate(restocked)
        return json_response(request, {"restocked": restocked})

    @app.route("/ledger", methods=["GET"])
    async def ledger(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        return json_response(request, await self._store.ledger())


install_json_errors(CatalogApi.app)
