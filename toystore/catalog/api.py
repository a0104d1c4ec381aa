"""The catalog's HTTP API (DESIGN.md, "Catalog"): queries, the reservation saga, restock, ledger.

Every endpoint but ``/health`` needs the cluster token. A change of stock is durable
before the request that caused it is answered, and pushed to every frontend: releases,
confirmations and restocks answer once the push is done. A reservation answers without
waiting for it: nobody reads through its answer, the order it is for answers a Raft round
later, and the frontend that took that order drops its own cached copy before answering,
so waiting would only add two hops to every order.

The saga calls (``/buy_qty``, ``/confirm``, ``/release``) also take a batch, so that the
order leader sends one request per reactor turn instead of one per order: each item is
answered as its single call would be, on its own, and the batch costs about one group commit
and one round of invalidations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from toystore.catalog.invalidation import Invalidator
from toystore.catalog.rules import check_price
from toystore.catalog.store import STATES, Bought, CatalogError, Conflict, Cursor, NotFound, Page, Toy, as_json
from toystore.http import (
    MAX_BATCH_BODY_BYTES,
    MAX_BATCH_ITEMS,
    MAX_PEER_BODY_BYTES,
    ApiError,
    api_root,
    batch_failure,
    batch_success,
    error_response,
    install_json_errors,
    json_response,
    parsed_or_error,
    read_json_object,
    require_batch,
    require_positive_int,
    require_string,
    require_token,
    run_parsed,
)
from toystore.raft.host import RaftHost
from toystore.raft.snapshots import MAX_CHUNK_BYTES

log = Logger()


class Catalog(Protocol):
    """What the routes need: the single catalog's store, or a member of the replicated one."""

    async def query(self, name: str) -> Toy: ...

    async def buy_each(self, reservations: Sequence[tuple[str, str, int, int]]) -> list[Bought | CatalogError]: ...

    async def release_each(self, request_ids: Sequence[str], term: int) -> list[str | CatalogError]: ...

    async def confirm_each(self, request_ids: Sequence[str], term: int) -> list[None | CatalogError]: ...

    async def reservations(self, state: str | None = None, older_than: float = 0.0, limit: int | None = None,
                           after: Cursor | None = None) -> Page: ...

    async def restock(self, restock_to: int, name: str | None = None) -> dict[str, int]: ...

    async def set_price(self, name: str, price: float) -> float: ...

    async def ledger(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]:
        """The ``/health_check`` body."""
        ...

MAX_TERM = 2**62


def require_term(body: Mapping[str, Any], required: bool) -> int:
    """The Raft term of the caller: a whole number >= 0; 0 when optional and absent."""
    if not required and "term" not in body:
        return 0
    value = body.get("term")
    if type(value) is not int or not 0 <= value <= MAX_TERM:
        raise ApiError(400, f"'term' must be a whole number from 0 to {MAX_TERM}.")
    return value


def as_api_error(error: CatalogError) -> ApiError:
    """What the client sees of a refused store operation."""
    return ApiError(404 if isinstance(error, NotFound) else 409, error.message)


@dataclass(frozen=True)
class Done:
    """One saga call's ``data``, and the toy whose stock it may have changed (to invalidate)."""

    data: dict[str, Any]
    toy: str | None = None


def _reservation(item: Any) -> tuple[str, str, int, int]:
    """``(request_id, name, quantity, term)`` of one reservation asked for."""
    if not isinstance(item, dict):
        raise ApiError(400, "Each reservation must be a JSON object.")
    name = require_string(item, "name")
    quantity = require_positive_int(item, "quantity")
    return require_string(item, "request_id"), name, quantity, require_term(item, required=False)


def _request_id(raw: Any) -> str:
    return require_string({"request_id": raw}, "request_id")


def _bought(outcome: Bought | CatalogError) -> Done | ApiError:
    if isinstance(outcome, CatalogError):
        return as_api_error(outcome)
    return Done(as_json(outcome), outcome.name)


def _released(request_id: str, term: int, outcome: str | CatalogError) -> Done | ApiError:
    if isinstance(outcome, CatalogError):
        return as_api_error(outcome)
    log.info("Released reservation {request_id} of {name} (term {term}): stock returned",
             request_id=request_id, name=outcome, term=term)
    return Done({"request_id": request_id, "state": "released"}, outcome)


def _confirmed(request_id: str, term: int, outcome: None | CatalogError) -> Done | ApiError:
    if isinstance(outcome, Conflict):
        # The saga releases only what can never commit, so this means a bug somewhere.
        log.error("Protocol violation: confirm of {request_id} in term {term}: {message}",
                  request_id=request_id, term=term, message=outcome.message)
    if isinstance(outcome, CatalogError):
        return as_api_error(outcome)
    return Done({"request_id": request_id, "state": "confirmed"})


def _result(outcome: Done | ApiError) -> dict[str, Any]:
    return batch_failure(outcome) if isinstance(outcome, ApiError) else batch_success(outcome.data)


def _query_arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"'{name}' is not valid UTF-8.") from None


def _limit(text: str | None) -> int:
    """A listing's page size: 1 to :data:`MAX_BATCH_ITEMS` (the default), so that a page can be
    settled in one batch call."""
    if text is None:
        return MAX_BATCH_ITEMS
    if not text.isdigit() or not 1 <= int(text) <= MAX_BATCH_ITEMS:
        raise ApiError(400, f"'limit' must be a whole number from 1 to {MAX_BATCH_ITEMS}.")
    return int(text)


class CatalogApi:
    """The Klein routes over a :class:`Catalog`.

    :param store: the catalog's data: the single catalog's store, or a catalog member.
    :param invalidator: pushes changed toys to the frontends.
    :param token: the cluster token, or None with ``--insecure``.
    :param restock_to: the stock a sold-out toy is brought back to.
    :param raft: a member's Raft side (peer messages, snapshots, membership); None for the single catalog.
    """

    app = Klein()

    def __init__(self, store: Catalog, invalidator: Invalidator, token: str | None, restock_to: int,
                 raft: RaftHost | None = None) -> None:
        self._store = store
        self._invalidator = invalidator
        self._token = token
        self._restock_to = restock_to
        self._raft = raft

    def resource(self) -> IResource:
        """What the catalog's Site serves."""
        return api_root(self.app)

    @app.handle_errors(CatalogError)
    def _refused(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, as_api_error(failure.value))

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        return json_response(request, {"status": "ok"})

    @app.route("/query/<string:name>", methods=["GET"])
    async def query(self, request: IRequest, name: str) -> bytes:
        require_token(request, self._token)
        return json_response(request, as_json(await self._store.query(name)))

    @app.route("/buy_qty", methods=["POST"])
    async def buy_qty(self, request: IRequest) -> bytes:
        """``{name, quantity, request_id, term?}``, or ``{"reservations": [...]}`` of those."""
        require_token(request, self._token)
        body = read_json_object(request, MAX_BATCH_BODY_BYTES)
        batch = "reservations" in body
        asked = [parsed_or_error(_reservation, item) for item in (require_batch(body, "reservations") if batch else [body])]
        outcomes = await run_parsed(asked, self._store.buy_each, lambda _, bought: _bought(bought))
        return await self._answer(request, outcomes, batch, wait_for_push=False)

    @app.route("/release", methods=["POST"])
    async def release(self, request: IRequest) -> bytes:
        """``{request_id, term}``, or ``{"request_ids": [...], term}``."""
        return await self._settle(request, self._store.release_each, _released)

    @app.route("/confirm", methods=["POST"])
    async def confirm(self, request: IRequest) -> bytes:
        """``{request_id, term}``, or ``{"request_ids": [...], term}``."""
        return await self._settle(request, self._store.confirm_each, _confirmed)

    async def _settle(self, request: IRequest, settle_each: Callable[[list[str], int], Awaitable[list[Any]]],
                      outcome_of: Callable[[str, int, Any], Done | ApiError]) -> bytes:
        require_token(request, self._token)
        body = read_json_object(request, MAX_BATCH_BODY_BYTES)
        batch = "request_ids" in body
        raw_ids = require_batch(body, "request_ids") if batch else [body.get("request_id")]
        term = require_term(body, required=True)
        asked = [parsed_or_error(_request_id, raw_id) for raw_id in raw_ids]
        outcomes = await run_parsed(asked, lambda request_ids: settle_each(request_ids, term),
                                    lambda request_id, settled: outcome_of(request_id, term, settled))
        return await self._answer(request, outcomes, batch, wait_for_push=True)

    async def _answer(self, request: IRequest, outcomes: list[Done | ApiError], batch: bool, *,
                      wait_for_push: bool) -> bytes:
        """One call's answer, or a batch's results; either way once the changed toys are pushed
        (or the push has started, without ``wait_for_push``)."""
        if not batch and isinstance(outcomes[0], ApiError):
            raise outcomes[0]
        changed = sorted({outcome.toy for outcome in outcomes if isinstance(outcome, Done) and outcome.toy})
        if changed:
            await self._push(changed, wait_for_push)
        if batch:
            return json_response(request, {"results": [_result(outcome) for outcome in outcomes]})
        return json_response(request, outcomes[0].data)  # type: ignore[union-attr]

    async def _push(self, toys: list[str], wait: bool) -> None:
        # The Invalidator never fails: a frontend that does not take a push costs a warning.
        pushed = Deferred.fromCoroutine(self._invalidator.invalidate(toys))
        if wait:
            await pushed

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
        limit = _limit(_query_arg(request, "limit"))
        after_text = _query_arg(request, "after")
        try:
            after = Cursor.decode(after_text) if after_text is not None else None
        except ValueError:
            raise ApiError(400, "'after' must be the 'next' cursor of an earlier page.") from None
        page = await self._store.reservations(state, older_than, limit, after)
        return json_response(request, {"reservations": [as_json(r) for r in page.reservations],
                                       "next": page.next.encode() if page.next else None})

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

    @app.route("/price", methods=["POST"])
    async def price(self, request: IRequest) -> bytes:
        """``{"name", "price"}``: a toy's new price, answered once every frontend was told."""
        require_token(request, self._token)
        body = read_json_object(request)
        name = require_string(body, "name")
        try:
            price = check_price(body.get("price"))
        except ValueError as e:
            raise ApiError(400, f"'price' must be {str(e).removeprefix('a price is ')}.") from None
        await self._store.set_price(name, price)
        log.info("Price of {name} set to {price}", name=name, price=price)
        await self._invalidator.invalidate([name])
        return json_response(request, {"name": name, "price": price})

    @app.route("/ledger", methods=["GET"])
    async def ledger(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        return json_response(request, await self._store.ledger())

    # -- the Raft group of a replicated catalog ----------------------------------------

    @app.route("/health_check", methods=["GET"])
    async def health_check(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        return json_response(request, self._store.status())

    def _member(self, request: IRequest) -> RaftHost:
        require_token(request, self._token)
        if self._raft is None:
            raise ApiError(404, "This catalog runs alone (no --id): it has no Raft group.")
        return self._raft

    @app.route("/members", methods=["GET"])
    async def members(self, request: IRequest) -> bytes:
        return json_response(request, self._member(request).members())

    @app.route("/members", methods=["POST"])
    async def change_members(self, request: IRequest) -> bytes:
        """Add or remove one member (:mod:`toystore.raft.members`)."""
        raft = self._member(request)
        return json_response(request, await raft.change_members(read_json_object(request)))

    @app.route("/install_snapshot", methods=["POST"])
    async def install_snapshot(self, request: IRequest) -> bytes:
        """One chunk of the leader's snapshot (:mod:`toystore.raft.snapshots`)."""
        raft = self._member(request)
        answer = await raft.receive_snapshot_chunk(read_json_object(request, MAX_CHUNK_BYTES))
        return json_response(request, {"accepted": True, **answer})

    @app.route("/<any(append_entries,request_vote,commit_entries,truncate_log,timeout_now):rpc>", methods=["POST"])
    async def peer_message(self, request: IRequest, rpc: str) -> bytes:
        raft = self._member(request)
        answer = await raft.receive_peer(rpc, read_json_object(request, MAX_PEER_BODY_BYTES))
        return json_response(request, {"accepted": True, **answer})


install_json_errors(CatalogApi.app)
