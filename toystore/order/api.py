"""HTTP routes of an order replica (DESIGN.md, "Order replicas"); the replication mode
behind them is an :class:`~toystore.order.replica.OrderReplica`."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from toystore.http import (
    MAX_BATCH_BODY_BYTES,
    MAX_PEER_BODY_BYTES,
    ApiError,
    batch_failure,
    batch_success,
    install_json_errors,
    json_response,
    parsed_or_error,
    read_json_object,
    require_batch,
    require_positive_int,
    require_string,
    require_token,
    run_parsed,
    api_root,
)
from toystore.order.history import MAX_ORDER_NUMBER
from toystore.order.replica import InstallsSnapshots, MovesAside, OrderReplica
from toystore.order.state import Order, OrderCommand
from toystore.raft.snapshots import MAX_CHUNK_BYTES

# Orders per /orders_since answer at most, and when no limit is asked: answers stay bounded
# (about 8 MiB), and callers that read a short history in one answer still get it whole.
MAX_PAGE = 100_000

log = Logger()


def _order_number(text: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > MAX_ORDER_NUMBER:
        raise ApiError(400, "An order number is a whole number from 0.")
    return int(text)


def _order_command(body: Any) -> OrderCommand:
    if not isinstance(body, dict):
        raise ApiError(400, "An order is a JSON object.")
    name = require_string(body, "name")
    quantity = require_positive_int(body, "quantity")
    return OrderCommand(require_string(body, "request_id"), name, quantity)


def _result(outcome: Order | Failure) -> dict[str, Any] | ApiError:
    """One order's entry in a batch's results."""
    if not isinstance(outcome, Failure):
        return batch_success({"order_number": outcome.number})
    if outcome.check(ApiError):
        return outcome.value
    log.failure("Placing an order of a batch failed", outcome)
    return ApiError(500, "The order service failed on this order; retry with the same key.")


def _after_argument(request: IRequest) -> int:
    values = request.args.get(b"after")
    if not values:
        return -1
    text = values[0].decode("utf-8", "replace")
    if text == "-1":
        return -1
    return _order_number(text)


def _limit_argument(request: IRequest) -> int:
    """``limit`` of a paged listing: 1 to :data:`MAX_PAGE`, which is also the default."""
    values = request.args.get(b"limit")
    if not values:
        return MAX_PAGE
    text = values[0].decode("utf-8", "replace")
    if not text.isdigit() or not text.isascii() or not 1 <= int(text) <= MAX_PAGE:
        raise ApiError(400, f"'limit' must be a whole number from 1 to {MAX_PAGE}.")
    return int(text)


class OrderApi:
    """:param token: the cluster token, None with ``--insecure``."""

    app = Klein()

    def __init__(self, replica: OrderReplica, token: str | None) -> None:
        self._replica = replica
        self._token = token

    def resource(self) -> IResource:
        """What the replica's Site serves."""
        return api_root(self.app)

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        return json_response(request, {"status": "ok"})

    @app.route("/health_check", methods=["GET"])
    async def health_check(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        return json_response(request, self._replica.status())

    @app.route("/order", methods=["POST"])
    async def order(self, request: IRequest) -> bytes:
        """One order ``{name, quantity, request_id}``, or ``{"orders": [...]}``: a frontend's
        batch of them, answered with one result per order (:func:`batch_success`) and placed
        together (:meth:`OrderReplica.place_orders`)."""
        require_token(request, self._token)
        body = read_json_object(request, MAX_BATCH_BODY_BYTES)
        if "orders" not in body:
            command = _order_command(body)
            placed = await self._replica.place_order(command.request_id, command.name, command.quantity)
            return json_response(request, {"order_number": placed.number})
        asked = [parsed_or_error(_order_command, item) for item in require_batch(body, "orders")]
        outcomes = await run_parsed(asked, self._replica.place_orders, lambda _, outcome: _result(outcome))
        return json_response(request, {"results": [
            batch_failure(outcome) if isinstance(outcome, ApiError) else outcome for outcome in outcomes]})

    @app.route("/orders/<string:number>", methods=["GET"])
    async def get_order(self, request: IRequest, number: str) -> bytes:
        require_token(request, self._token)
        found = await self._replica.read_order(_order_number(number))
        if found is None:
            raise ApiError(404, f"There is no order {number}.")
        return json_response(request, found.public())

    @app.route("/latest_order_no", methods=["GET"])
    async def latest_order_no(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        return json_response(request, {"latest_order_no": self._replica.orders.latest_number})

    @app.route("/orders_since", methods=["GET"])
    async def orders_since(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        after, limit = _after_argument(request), _limit_argument(request)
        orders = self._replica.orders
        page = orders.page(after, limit)
        # Replicas catching up need the request ids too, to keep retries idempotent after a failover.
        return json_response(request, {"orders": [o.replicated() for o in page],
                                       "more": (page[-1].number if page else after) < orders.latest_number,
                                       "latest": orders.latest_number})

    @app.route("/moved_aside", methods=["GET"])
    async def moved_aside(self, request: IRequest) -> bytes:
        """Primary-backup: the orders this replica moved aside from a forked history, oldest
        first, paged by ``after`` (their ``seq``) and ``limit``."""
        require_token(request, self._token)
        if not isinstance(self._replica, MovesAside):
            raise ApiError(404, "This replica runs Raft, which never moves orders aside.")
        after, limit = _after_argument(request), _limit_argument(request)
        return json_response(request, {"orders": await self._replica.moved_aside(after, limit)})

    @app.route("/set_leader", methods=["POST"])
    async def set_leader(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        replica_id = require_positive_int(read_json_object(request), "id")
        self._replica.set_leader(replica_id)
        return json_response(request, {"accepted": True})

    @app.route("/members", methods=["GET"])
    async def members(self, request: IRequest) -> bytes:
        require_token(request, self._token)
        return json_response(request, self._replica.members())

    @app.route("/members", methods=["POST"])
    async def change_members(self, request: IRequest) -> bytes:
        """Raft: add or remove one member (:mod:`toystore.raft.members`)."""
        require_token(request, self._token)
        return json_response(request, await self._replica.change_members(read_json_object(request)))

    @app.route("/install_snapshot", methods=["POST"])
    async def install_snapshot(self, request: IRequest) -> bytes:
        """Raft: one chunk of the leader's snapshot (:mod:`toystore.raft.snapshots`)."""
        require_token(request, self._token)
        if not isinstance(self._replica, InstallsSnapshots):
            raise ApiError(404, "This replica runs primary-backup, which has no snapshots to install.")
        answer = await self._replica.receive_snapshot_chunk(read_json_object(request, MAX_CHUNK_BYTES))
        return json_response(request, {"accepted": True, **answer})

    @app.route("/<any(append_entries,request_vote,commit_entries,truncate_log,timeout_now,replicate_order,"
               "release_reservations):rpc>", methods=["POST"])
    async def peer_message(self, request: IRequest, rpc: str) -> bytes:
        require_token(request, self._token)
        answer = await self._replica.receive_peer(rpc, read_json_object(request, MAX_PEER_BODY_BYTES))
        return json_response(request, {"accepted": True, **answer})


install_json_errors(OrderApi.app)
