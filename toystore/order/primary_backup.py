"""The order service replicated primary-backup (the spec's parts 1-4).

The frontend names the leader (``POST /set_leader``, the highest responsive id). The
leader reserves stock, assigns the next dense number, makes the order durable, pushes
it to every follower (``POST /replicate_order``) and then answers. Followers apply
pushed orders in number order and pull what they miss from the leader
(``/latest_order_no``, ``/orders_since``). A replica named leader first pulls the
longest history any peer holds. docs/replication.md explains the window in which an
acknowledged order can be lost, and what a replica does when histories conflict.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from toystore.deferreds import SingleFlight
from toystore.http import ApiError, JsonClient, fetch_json, require_positive_int, require_string
from toystore.order.catalog_client import CatalogClient
from toystore.order.replica import not_leader, place_one_by_one, unavailable
from toystore.order.state import Order, OrderCommand, OrderStateMachine
from toystore.order.store import Changes, ReplicaStore

log = Logger()

RAFT_ENDPOINTS = frozenset({"append_entries", "request_vote", "commit_entries", "truncate_log", "timeout_now"})
PEER_TIMEOUT = 1.0        # a follower that does not answer a push by then is noted as behind
CATCH_UP_INTERVAL = 1.0   # how often followers pull and the leader re-probes followers it noted
MAX_BATCH = 1000          # orders per /replicate_order push
MAX_ORDER_NUMBER = 2**62


def parse_replicated_orders(body: Mapping[str, Any]) -> list[Order]:
    """The orders of a ``/replicate_order`` body, in number order; ApiError(400) on any bad one."""
    items = body.get("orders")
    if not isinstance(items, list) or not items:
        raise ApiError(400, "'orders' must be a non-empty list of orders.")
    orders = []
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(400, "Every order must be an object with number, request_id, name and quantity.")
        number = item.get("number")
        if type(number) is not int or not 0 <= number <= MAX_ORDER_NUMBER:
            raise ApiError(400, "'number' must be a whole number from 0.")
        orders.append(Order(number, require_string(item, "request_id"), require_string(item, "name"),
                            require_positive_int(item, "quantity")))
    numbers = [o.number for o in orders]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ApiError(400, "The orders of one push must have consecutive numbers.")
    return orders


class PrimaryBackupReplica:
    """One order replica in primary-backup mode.

    :param orders: the state machine restored from ``store``.
    :param peers_client: HTTP client for the other replicas.
    :param replicas: ``{id: URL}`` of every replica, this one included.
    :param token: the cluster token for peer requests, None with ``--insecure``.
    """

    def __init__(self, node_id: int, orders: OrderStateMachine, store: ReplicaStore, catalog: CatalogClient,
                 peers_client: JsonClient, replicas: Mapping[int, str], *, clock: IReactorTime,
                 token: str | None) -> None:
        self.id = node_id
        self.orders = orders
        self._store = store
        self._catalog = catalog
        self._client = peers_client
        self._replicas = dict(replicas)
        self._peers = {i: url for i, url in replicas.items() if i != node_id}
        self._clock = clock
        self._token = token
        self.leader_id: int | None = None
        # Until the first pull from the peers is done (at start, on becoming leader), no orders are taken.
        self.ready = False
        self._attempts: SingleFlight[str, Order] = SingleFlight()
        # Per follower: the highest number it acknowledged (None: not known), and whether it missed a push.
        self._acked: dict[int, int | None] = dict.fromkeys(self._peers)
        self._behind: set[int] = set()
        self._push_locks = {i: defer.DeferredLock() for i in self._peers}
        self._pull_lock = defer.DeferredLock()
        self._conflicts: set[int] = set()
        self._loop = LoopingCall(self._tick_logged)
        self._loop.clock = clock

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Pulls from the peers (this replica may have been down), then catches up every second."""
        self._loop.start(CATCH_UP_INTERVAL, now=False)
        return defer.ensureDeferred(self._pull_then_ready())

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    # -- orders ---------------------------------------------------------------------

    async def place_order(self, request_id: str, name: str, quantity: int) -> Order:
        if request_id in self._attempts:
            # A retry while the first attempt still runs shares its outcome.
            return await self._attempts.run(request_id, lambda: self._commit_order(request_id, name, quantity))
        existing = self.orders.for_request(request_id)
        if existing is not None:
            return existing
        if self.leader_id != self.id:
            raise not_leader(self.leader_id, self._replicas)
        if not self.ready:
            raise unavailable("This replica became leader and is still catching up; retry shortly.")
        if self._conflicts:
            raise unavailable("This replica's history conflicts with a peer's; it takes no orders until resolved.")
        return await self._attempts.run(request_id, lambda: self._commit_order(request_id, name, quantity))

    async def place_orders(self, commands: Sequence[OrderCommand]) -> list[Order | Failure]:
        return await place_one_by_one(self, commands)

    async def _commit_order(self, request_id: str, name: str, quantity: int) -> Order:
        await self._catalog.reserve(name, quantity, request_id, 0)
        if self.leader_id != self.id:
            # Deposed while reserving: numbering here would fork the history. The retry goes to the new leader.
            raise unavailable("Leadership moved while the order was placed; retry with the same Idempotency-Key.")
        # Synchronous, so concurrent orders get dense numbers; their saves join group commits in this order.
        order = self.orders.apply(OrderCommand(request_id, name, quantity)).order
        try:
            await self._store.save(Changes(orders=[order]))
        except Exception as e:
            log.error("Order {number} is numbered but could not be made durable: {error}", number=order.number, error=e)
            raise unavailable("The order could not be made durable; retry with the same Idempotency-Key.") from None
        await defer.DeferredList([defer.ensureDeferred(self._push(peer, order.number)) for peer in self._peers])
        status = await self._catalog.settle("confirm", request_id, 0)
        if status != 200:
            log.warn("The catalog answered {status} confirming {request_id}", status=status, request_id=request_id)
        return order

    async def read_order(self, number: int) -> Order | None:
        if not self.ready:
            raise unavailable("This replica is still catching up; retry shortly.")
        return self.orders.get(number)

    # -- pushing to followers -------------------------------------------------------

    async def _push(self, peer: int, up_to: int) -> None:
        """Sends ``peer`` the orders it lacks up to ``up_to``; one push per follower at a time, in order."""
        if peer in self._behind:
            return  # noted: the loop probes it and catches it up, so orders need not wait on it
        async with self._push_locks[peer]:
            if peer in self._behind:
                return  # an earlier push to it failed while this one waited
            acked = self._acked[peer]
            start = up_to if acked is None else acked + 1
            while start <= up_to:
                # Each batch repeats the order before it, so a follower whose history forked notices.
                first = max(start - 1, 0)
                batch = [o.replicated() for o in self.orders.since(first - 1)[:min(MAX_BATCH, up_to - first + 1)]]
                if not await self._send(peer, batch):
                    self._behind.add(peer)
                    return
                start = batch[-1]["number"] + 1
                self._acked[peer] = start - 1

    async def _send(self, peer: int, batch: list[dict[str, Any]]) -> bool:
        try:
            status, body = await self._call(peer, "POST", "/replicate_order", {"orders": batch})
        except Exception as e:
            log.warn("Replica {peer} missed orders {first}..{last} ({error}); it will be caught up",
                     peer=peer, first=batch[0]["number"], last=batch[-1]["number"], error=e.__class__.__name__)
            return False
        if status != 200:
            log.warn("Replica {peer} refused orders {first}..{last}: {status} {body}",
                     peer=peer, first=batch[0]["number"], last=batch[-1]["number"], status=status, body=body)
        return status == 200

    async def _probe_behind(self) -> None:
        """The leader brings noted followers up to date from what they report holding."""
        for peer in sorted(self._behind):
            latest = await self._latest_of(peer)
            if latest is None:
                continue
            self._acked[peer] = latest
            self._behind.discard(peer)
            log.info("Replica {peer} answers again at order {latest}; catching it up", peer=peer, latest=latest)
            await self._push(peer, self.orders.latest_number)

    # -- receiving ------------------------------------------------------------------

    async def receive_peer(self, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if endpoint in RAFT_ENDPOINTS:
            raise ApiError(404, f"Replica {self.id} runs primary-backup; Raft endpoints are off.")
        if endpoint != "replicate_order":
            raise ApiError(404, f"There is no peer endpoint /{endpoint}.")
        incoming = parse_replicated_orders(body)
        complete, new = self._apply(incoming)
        if not complete:
            log.info("Orders from {first} leave a gap after {latest}; pulling the missing ones",
                     first=incoming[0].number, latest=self.orders.latest_number)
            self._background(self._catch_up())
        # The leader hears back only once the orders are durable here.
        await self._save(new)
        return {}

    def _apply(self, incoming: Iterable[Order]) -> tuple[bool, list[Order]]:
        """Applies the orders that extend this replica's history.

        :return: False on a gap, and the orders applied, which the caller makes durable."""
        new: list[Order] = []
        gap = False
        for order in incoming:
            mine = self.orders.get(order.number)
            if mine is not None:
                self._check_same(mine, order)
            elif order.number == self.orders.latest_number + 1 and not self._conflicts:
                applied = self.orders.apply(OrderCommand(order.request_id, order.name, order.quantity))
                if applied.order.number != order.number:
                    self._conflict(applied.order, order)
                    break
                new.append(applied.order)
            else:
                gap = not self._conflicts
                break
        return not gap, new

    def _check_same(self, mine: Order, theirs: Order) -> None:
        if mine != theirs:
            self._conflict(mine, theirs)

    def _conflict(self, mine: Order, theirs: Order) -> None:
        """Histories forked (an order acknowledged by a leader that died before pushing it). This replica keeps
        its durable orders and stops applying others' from here: an operator decides (docs/replication.md)."""
        if mine.number not in self._conflicts:
            self._conflicts.add(mine.number)
            log.error("Conflicting order {number}: this replica holds {mine}, a peer holds {theirs}; keeping ours "
                      "and applying no later orders", number=mine.number, mine=mine, theirs=theirs)

    async def _save(self, new: list[Order]) -> None:
        if new:
            await self._store.save(Changes(orders=new))

    # -- pulling --------------------------------------------------------------------

    async def _call(self, peer: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        return await fetch_json(self._client, method, self._peers[peer] + path, reactor=self._clock,
                                timeout=PEER_TIMEOUT, token=self._token, body=body)

    async def _latest_of(self, peer: int) -> int | None:
        """The peer's latest order number, None when it does not answer."""
        try:
            status, body = await self._call(peer, "GET", "/latest_order_no")
        except Exception:
            return None
        latest = body.get("data", {}).get("latest_order_no") if status == 200 else None
        return latest if type(latest) is int else None

    async def _pull_from(self, peer: int) -> None:
        after = max(self.orders.latest_number - 1, -1)  # one order of overlap, to notice a forked history
        status, body = await self._call(peer, "GET", f"/orders_since?after={after}")
        if status != 200:
            raise ValueError(f"replica {peer} answered {status} to /orders_since")
        orders = parse_replicated_orders(body["data"]) if body["data"]["orders"] else []
        if orders:
            await self._save(self._apply(orders)[1])
            log.info("Caught up from replica {peer} to order {latest}", peer=peer, latest=self.orders.latest_number)

    async def _catch_up(self, only: int | None = None) -> None:
        """Pulls from ``only`` or, when None, from the peer holding the most orders."""
        if self._conflicts:
            return  # this replica applies no more orders until an operator resolves the fork
        async with self._pull_lock:
            candidates = [only] if only is not None else sorted(self._peers)
            latest = await defer.gatherResults([defer.ensureDeferred(self._latest_of(p)) for p in candidates])
            best = max(((n, p) for n, p in zip(latest, candidates) if n is not None), default=None)
            if best is not None and best[0] > self.orders.latest_number:
                await self._pull_from(best[1])

    async def _pull_then_ready(self) -> None:
        try:
            await self._catch_up()
        except Exception as e:
            log.warn("Pulling orders from the peers failed ({error}); serving what this replica holds", error=e)
        self.ready = True

    # -- cluster --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        held = len(self.orders.since(-1))
        return {"id": self.id, "role": "leader" if self.leader_id == self.id else "follower", "term": 0,
                "leader_id": self.leader_id, "commit_index": held, "last_index": held,
                "replication": "primary-backup"}

    def set_leader(self, replica_id: int) -> None:
        if replica_id not in self._replicas:
            raise ApiError(400, f"There is no replica {replica_id}.")
        if replica_id == self.leader_id:
            return
        was_leader = self.leader_id == self.id
        self.leader_id = replica_id
        log.info("Replica {leader} is the leader now", leader=replica_id)
        if replica_id == self.id and not was_leader:
            # Start from the most complete history any peer holds; followers' state is re-learned by pushing.
            self.ready = False
            self._acked = dict.fromkeys(self._peers)
            self._behind.clear()
            self._background(self._pull_then_ready())
        elif replica_id != self.id:
            self._background(self._catch_up(replica_id))

    def _background(self, work: Any) -> None:
        d = defer.ensureDeferred(work)
        d.addErrback(lambda f: log.warn("Replication work failed: {error}", error=f.getErrorMessage()))

    def _tick_logged(self) -> defer.Deferred:
        d = defer.ensureDeferred(self._tick())
        d.addErrback(lambda f: log.warn("Catching up failed: {error}", error=f.getErrorMessage()))
        return d

    async def _tick(self) -> None:
        if self.leader_id == self.id:
            await self._probe_behind()
        elif self.leader_id is not None:
            await self._catch_up(self.leader_id)
