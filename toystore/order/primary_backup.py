"""The order service replicated primary-backup (the spec's parts 1-4).

The frontend names the leader (``POST /set_leader``, the highest id among the replicas
that say they are caught up). The leader reserves stock, assigns the next dense number,
makes the order durable, pushes it to every follower (``POST /replicate_order``, which
answers with how far the follower holds orders durably) and then answers. Followers apply
pushed orders in number order; the leader sends again from a follower's latest a push that
left a gap, and a follower that has taken no push for a second pulls what it misses from
the leader (``/latest_order_no``, pages of ``/orders_since``).

No replica serves, leads or takes pushes before it has caught up: at start, on being
named leader and after its history is seen to conflict, it pulls from the current leader
(or, when none leads, from the peer holding the most orders) until it holds that history.
A forked tail (orders a leader made durable and died before pushing) is moved aside
(:mod:`toystore.order.moved_aside`) and the leader's history adopted; the current leader
then releases those orders' reservations unless it holds the same request. Failed pulls
are retried every second, never skipped: a replica that no peer answers waits for one
(alone it cannot know which orders it misses), unless it is the only replica configured.
Replicas answer ``/health_check`` and ``/orders_since`` while they catch up themselves, so
a whole group restarted together catches up from the one holding the most orders.
docs/replication.md says which acknowledged orders this mode can lose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from toystore.db import DatabaseClosed
from toystore.deferreds import SingleFlight
from toystore.http import MAX_BATCH_ITEMS, ApiError, JsonClient, fetch_json, require_batch
from toystore.order.catalog_client import CatalogClient
from toystore.order.history import ForkSearch, Page, parse_replicated_orders
from toystore.order.moved_aside import PENDING, MovedAsideStore
from toystore.order.replica import not_leader, place_one_by_one, unavailable
from toystore.order.state import Order, OrderCommand
from toystore.order.store import Changes, ReplicaStore
from toystore.raft.members import members_answer
from toystore.raft.membership import Configuration

log = Logger()

RAFT_ENDPOINTS = frozenset({"append_entries", "request_vote", "commit_entries", "truncate_log", "timeout_now"})
PEER_TIMEOUT = 1.0        # a follower that does not answer a push by then is noted as behind
PAGE_TIMEOUT = 5.0        # one page of PULL_PAGE orders
# How often followers that take no pushes pull, the leader re-probes followers it noted, failed syncs retry.
CATCH_UP_INTERVAL = 1.0
MAX_BATCH = 1000          # orders per /replicate_order push
PULL_PAGE = 1000          # orders per /orders_since page a puller asks for
WAITING_WARN_EVERY = 10.0  # how often a replica that no peer answers says, in its log, that it waits


class Forked(Exception):
    """A pull met an order that differs from this replica's; the next sync finds the fork."""


@dataclass(frozen=True)
class PeerView:
    """What a peer's ``/health_check`` says that a sync needs."""

    leads: bool
    caught_up: bool
    latest: int

    @classmethod
    def from_payload(cls, peer: int, payload: Mapping[str, Any]) -> "PeerView | None":
        data = payload.get("data")
        if not isinstance(data, dict) or type(data.get("last_index")) is not int:
            return None
        return cls(data.get("role") == "leader" and data.get("leader_id") == peer, data.get("caught_up") is True,
                   data["last_index"] - 1)


def choose_source(views: Mapping[int, PeerView], leading: bool, latest: int) -> int | None:
    """The peer whose history a syncing replica adopts, None when it need pull nothing.

    A follower adopts the current leader's history, even a shorter one: what it holds beyond
    it was never replicated. A new leader, or a replica when nobody leads, pulls from the
    peer holding the most orders, if that peer holds more than it does.
    """
    if not leading:
        leaders = [peer for peer, view in views.items() if view.leads and view.caught_up]
        if leaders:
            return max(leaders)
    ahead = [(view.latest, peer) for peer, view in views.items() if view.latest > latest]
    return max(ahead)[1] if ahead else None


class PrimaryBackupReplica:
    """One order replica in primary-backup mode.

    :param store: the durable state, loaded; its orders are the state machine.
    :param peers_client: HTTP client for the other replicas.
    :param replicas: ``{id: URL}`` of every replica, this one included.
    :param token: the cluster token for peer requests, None with ``--insecure``.
    :param aside: where forked-off orders are kept: a table in ``store``'s database.
    """

    def __init__(self, node_id: int, store: ReplicaStore, catalog: CatalogClient,
                 peers_client: JsonClient, replicas: Mapping[int, str], *, clock: IReactorTime,
                 token: str | None, aside: MovedAsideStore) -> None:
        self.id = node_id
        self.orders = store.orders
        self._store = store
        self._aside = aside
        self._catalog = catalog
        self._client = peers_client
        self._replicas = dict(replicas)
        self._peers = {i: url for i, url in replicas.items() if i != node_id}
        self._clock = clock
        self._token = token
        self.leader_id: int | None = None
        # Caught up: False until a sync with the peers is done (at start, on becoming leader, after a conflict).
        self.ready = False
        self._halted = False  # a durable write failed: never caught up again before a restart
        self._conflict: int | None = None  # the number at which a peer's order differed, until resolved
        self._waiting_since: float | None = None  # since when no peer answered its sync; None: not waiting
        self._waiting_warned: float | None = None
        self._attempts: SingleFlight[str, Order] = SingleFlight()
        self._releasing: set[str] = set()  # request ids whose old reservation the leader is releasing
        self._unsettled = True  # moved-aside orders may wait for their reservation to be settled
        # Orders acknowledged while no follower took them: confirmed at the catalog once one holds them.
        self._unconfirmed: list[Order] = []
        # Per follower: the highest number it acknowledged (None: not known), and whether it missed a push.
        self._acked: dict[int, int | None] = dict.fromkeys(self._peers)
        self._behind: set[int] = set()
        self._push_locks = {i: defer.DeferredLock() for i in self._peers}
        self._pushed_at: float | None = None  # when this replica last took a push
        self._pull_lock = defer.DeferredLock()
        self._loop = LoopingCall(self._tick_logged)
        self._loop.clock = clock

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Syncs with the peers (this replica may have been down), then catches up every second;
        a sync that fails is retried by the loop."""
        self._loop.start(CATCH_UP_INTERVAL, now=False)
        return self._background(self._sync())

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
        if request_id in self._releasing:
            raise unavailable("An earlier reservation of this request is being released; retry shortly.")
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
        await self._save([order])
        held = await defer.gatherResults([defer.ensureDeferred(self._push(peer)) for peer in self._peers])
        if self._peers and not any(held):
            # Only this replica holds it: if it dies now, the order is moved aside on its return and its
            # reservation released, which the catalog refuses once confirmed.
            self._unconfirmed.append(order)
            return order
        status = await self._catalog.settle("confirm", request_id, 0)
        if status != 200:
            log.warn("The catalog answered {status} confirming {request_id}", status=status, request_id=request_id)
        return order

    async def read_order(self, number: int) -> Order | None:
        if not self.ready:
            raise unavailable("This replica is still catching up; retry shortly.")
        return self.orders.get(number)

    # -- pushing to followers -------------------------------------------------------

    async def _push(self, peer: int) -> bool:
        """Sends ``peer`` the durable orders it lacks; one push per follower at a time, in order.
        A push carries every order made durable while the one before it was out, so under load
        a follower gets one request (and one fsync) per round trip, not one per order.

        :return: whether the peer holds every order that was durable when the caller asked."""
        if peer in self._behind:
            return False  # noted: the loop probes it and catches it up, so orders need not wait on it
        async with self._push_locks[peer]:
            if peer in self._behind:
                return False  # an earlier push to it failed while this one waited
            up_to = self.orders.durable_number
            acked = self._acked[peer]
            start = up_to if acked is None else acked + 1
            gapped = False
            while start <= up_to:
                # Each batch repeats the order before it, so a follower whose history forked notices.
                first = max(start - 1, 0)
                batch = [o.replicated() for o in self.orders.page(first - 1, min(MAX_BATCH, up_to - first + 1))]
                if not batch or batch[-1]["number"] < start:
                    return False  # this history was cut back meanwhile: what was to go is moved aside
                held = await self._send(peer, batch)
                if held is None or (held < batch[-1]["number"] and (gapped or up_to - held > MAX_BATCH)):
                    # Failed, or far behind: orders go on without it while it pulls and the probe waits.
                    self._behind.add(peer)
                    return False
                if held < batch[-1]["number"]:
                    # It lacks orders before the batch (a new leader does not know what a follower
                    # holds): they go at once, from its latest on.
                    gapped = True
                    start = held + 1
                    continue
                start = batch[-1]["number"] + 1
                self._acked[peer] = start - 1
            return True

    async def _send(self, peer: int, batch: list[dict[str, Any]]) -> int | None:
        """Pushes ``batch``; returns the peer's latest durable order number, None when it did not take it."""
        try:
            status, body = await self._call(peer, "POST", "/replicate_order", {"orders": batch})
        except Exception as e:
            log.warn("Replica {peer} missed orders {first}..{last} ({error}); it will be caught up",
                     peer=peer, first=batch[0]["number"], last=batch[-1]["number"], error=e.__class__.__name__)
            return None
        data = body.get("data")
        latest = data.get("latest_order_no") if status == 200 and isinstance(data, dict) else None
        if type(latest) is not int:
            log.warn("Replica {peer} refused orders {first}..{last}: {status} {body}",
                     peer=peer, first=batch[0]["number"], last=batch[-1]["number"], status=status, body=body)
            return None
        return latest

    async def _probe_behind(self) -> None:
        """The leader brings noted followers up to date once they say they are caught up."""
        for peer in sorted(self._behind):
            view = await self._view_of(peer)
            if view is None or not view.caught_up or self.orders.durable_number - view.latest > MAX_BATCH:
                continue  # far behind, it pulls by itself, and no order waits on its catch-up meanwhile
            # Its health check is no acknowledgement (what it holds may be a forked tail, or not yet
            # durable): the first push, answered with its durable latest, says where to start.
            self._acked[peer] = None
            self._behind.discard(peer)
            log.info("Replica {peer} answers again at order {latest}; catching it up", peer=peer, latest=view.latest)
            if await self._push(peer):
                await self._confirm_held_by(self._acked[peer])

    async def _confirm_held_by(self, acked: int | None) -> None:
        """Confirms the reservations of the orders a follower now holds."""
        done = [o for o in self._unconfirmed if acked is not None and o.number <= acked]
        if done:
            self._unconfirmed = [o for o in self._unconfirmed if o not in done]
            await self._catalog.settle_each("confirm", [o.request_id for o in done], 0)

    # -- receiving ------------------------------------------------------------------

    async def receive_peer(self, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if endpoint in RAFT_ENDPOINTS:
            raise ApiError(404, f"Replica {self.id} runs primary-backup; Raft endpoints are off.")
        if endpoint == "release_reservations":
            ids = require_batch(body, "request_ids")
            if not all(isinstance(i, str) and i for i in ids):
                raise ApiError(400, "'request_ids' must be a list of non-empty strings.")
            return {"outcomes": await self.release_unplaced(ids)}
        if endpoint != "replicate_order":
            raise ApiError(404, f"There is no peer endpoint /{endpoint}.")
        incoming = parse_replicated_orders(body.get("orders"))
        if not incoming:
            raise ApiError(400, "'orders' must be a non-empty list of orders.")
        if self.leader_id == self.id:
            # A deposed leader that has not heard yet: its orders would interleave with this one's numbering.
            raise ApiError(409, f"Replica {self.id} leads and takes no pushes.")
        if not self.ready:
            # Pushes could overtake the answers of its own pulls; the leader pushes again once it is caught up.
            raise unavailable(f"Replica {self.id} is catching up and takes no pushes until it has.")
        new = self._apply(incoming)
        # The leader hears back only once the orders are durable here, and how far this replica
        # holds them: a push that leaves a gap acknowledges nothing, and the leader sends what
        # lies between at once.
        await self._save(new)
        if self.orders.durable_number < min(incoming[-1].number, self.orders.latest_number):
            await self._store.flushed()  # a pull applied some of them, and its write is still under way
        if self._conflict is not None:
            raise ApiError(409, f"Order {self._conflict} differs from this replica's; it is catching up.")
        if self.orders.durable_number >= incoming[-1].number:
            self._pushed_at = self._clock.seconds()
        return {"latest_order_no": self.orders.durable_number}

    def _apply(self, incoming: Iterable[Order]) -> list[Order]:
        """Applies the orders that extend this replica's history, up to a gap or a conflict.

        :return: the orders applied, which the caller makes durable."""
        new: list[Order] = []
        for order in incoming:
            mine = self.orders.get(order.number)
            if mine is not None:
                if mine != order:
                    self._conflicted(mine, order)
                    break
            elif order.number == self.orders.latest_number + 1 and self._conflict is None:
                applied = self.orders.apply(OrderCommand(order.request_id, order.name, order.quantity))
                if applied.order.number != order.number:
                    self._conflicted(applied.order, order)
                    break
                new.append(applied.order)
            else:
                break
        return new

    def _conflicted(self, mine: Order, theirs: Order) -> None:
        """Histories forked (a leader died holding orders it never pushed): this replica stops
        serving and applying, and syncs with the current leader, which resolves the fork."""
        if self._conflict is None:
            log.error("Conflicting order {number}: this replica holds {mine}, a peer holds {theirs}; catching up "
                      "with the leader's history", number=mine.number, mine=mine, theirs=theirs)
            self._conflict = mine.number
            self.ready = False
            self._background(self._sync())

    async def _save(self, new: list[Order]) -> None:
        """Makes ``new`` durable; a write that fails halts this replica."""
        if not new:
            return
        try:
            await self._store.save(Changes(orders=new))
        except Exception as e:
            self._halt(e)
            raise unavailable(f"Replica {self.id} could not make orders durable and stopped taking part; "
                              "retry with the same Idempotency-Key.") from None

    def _halt(self, error: Exception) -> None:
        """A failed durable write leaves memory ahead of disk: this replica stops taking part
        (fail-stop, as Raft mode does), so that it never pushes, serves or acknowledges what its
        disk may not hold; it answers 503 until restarted, when it recovers from disk."""
        if not isinstance(error, DatabaseClosed):  # else the service is stopping anyway
            log.critical("A durable write failed ({error}); replica {id} stops taking part until it is restarted",
                         error=error, id=self.id)
        self._halted = True
        self.ready = False
        self.stop()

    # -- pulling --------------------------------------------------------------------

    async def _call(self, peer: int, method: str, path: str, body: Any = None,
                    timeout: float = PEER_TIMEOUT) -> tuple[int, dict[str, Any]]:
        return await fetch_json(self._client, method, self._peers[peer] + path, reactor=self._clock,
                                timeout=timeout, token=self._token, body=body)

    async def _latest_of(self, peer: int) -> int | None:
        """The peer's latest order number, None when it does not answer."""
        try:
            status, body = await self._call(peer, "GET", "/latest_order_no")
        except Exception:
            return None
        latest = body.get("data", {}).get("latest_order_no") if status == 200 else None
        return latest if type(latest) is int else None

    async def _view_of(self, peer: int) -> PeerView | None:
        """What the peer's health check says, None when it does not answer."""
        try:
            status, body = await self._call(peer, "GET", "/health_check")
        except Exception:
            return None
        return PeerView.from_payload(peer, body) if status == 200 else None

    async def _page(self, peer: int, after: int) -> Page:
        status, body = await self._call(peer, "GET", f"/orders_since?after={after}&limit={PULL_PAGE}",
                                        timeout=PAGE_TIMEOUT)
        if status != 200 or not isinstance(body.get("data"), dict):
            raise ValueError(f"replica {peer} answered {status} to /orders_since")
        return Page.from_payload(body["data"], after)

    async def _pull_forward(self, peer: int) -> None:
        """Pulls the orders after this replica's latest from ``peer``, a page at a time, until none remain.

        :raises Forked: when an order differs (the sync that :meth:`_conflicted` starts resolves it)."""
        while True:
            page = await self._page(peer, self.orders.latest_number)
            new = self._apply(page.orders)
            await self._save(new)
            if self._conflict is not None:
                raise Forked(f"replica {peer} holds a different order {self._conflict}")
            if new:
                log.info("Caught up from replica {peer} to order {latest}", peer=peer, latest=self.orders.latest_number)
            if not page.more:
                return

    async def _catch_up(self) -> None:
        """A caught-up follower pulls what the leader holds beyond it."""
        leader = self.leader_id
        if leader is None or leader == self.id or not self.ready:
            return
        async with self._pull_lock:
            latest = await self._latest_of(leader)
            if self.ready and latest is not None and latest > self.orders.latest_number:
                await self._pull_forward(leader)

    async def _sync(self) -> None:
        """Makes this replica hold the current leader's history (or, when none leads or this one
        was just named, the longest a peer holds) before it serves, leads or takes pushes."""
        async with self._pull_lock:
            if self.ready or self._halted:
                return
            leading = self.leader_id == self.id
            if leading:
                await self._claim_leadership()
            answers = await defer.gatherResults([defer.ensureDeferred(self._view_of(p)) for p in sorted(self._peers)])
            views = {p: v for p, v in zip(sorted(self._peers), answers) if v is not None}
            if self._peers and not views:
                # Alone it cannot know which orders it misses (the last leader may have pushed one
                # only to a replica that is down now): it waits, and the loop asks again each second.
                self._waiting_for_a_peer()
                return
            self._waiting_since = self._waiting_warned = None
            source = choose_source(views, leading, self.orders.latest_number)
            if source is not None:
                if self.leader_id is None and views[source].leads:
                    log.info("Replica {leader} leads, its peers say", leader=source)
                    self.leader_id = source  # so that this one pulls from it and settles with it
                await self._adopt(source)
            self._conflict = None
            self.ready = True
            log.info("Replica {id} is caught up at order {latest}", id=self.id, latest=self.orders.latest_number)

    def _waiting_for_a_peer(self) -> None:
        """Says in the log, now and then, that no peer answers and this replica does not serve."""
        now = self._clock.seconds()
        if self._waiting_since is None:
            self._waiting_since = now
        if self._waiting_warned is None or now - self._waiting_warned >= WAITING_WARN_EVERY:
            self._waiting_warned = now
            log.warn("Replica {id} waits for a peer to answer before it serves ({seconds:.0f} s so far): alone it "
                     "cannot know which orders it misses; it holds {count}", id=self.id,
                     seconds=now - self._waiting_since, count=self.orders.latest_number + 1)

    async def _claim_leadership(self) -> None:
        """Tells the peers that this replica leads, so that a previous leader numbers no more
        orders before this one has pulled the ones it did."""
        await defer.DeferredList([defer.ensureDeferred(self._call(p, "POST", "/set_leader", {"id": self.id}))
                                  for p in sorted(self._peers)], consumeErrors=True)

    async def _adopt(self, peer: int) -> None:
        """Finds where this history leaves ``peer``'s, moves aside what lies past it, then pulls the rest."""
        search = ForkSearch(self.orders, PULL_PAGE)
        while not search.done:
            search.feed(await self._page(peer, search.next_after))
        if search.fork is not None and search.fork <= self.orders.latest_number:
            await self._move_aside(search.fork, peer)
        self._conflict = None
        await self._pull_forward(peer)

    async def _move_aside(self, fork: int, peer: int) -> None:
        tail = self.orders.page(fork - 1, self.orders.latest_number - fork + 1)
        for order in tail:
            log.error("Order {number} ({request_id}: {quantity} {name}) was never replicated; replica {peer} "
                      "holds another history, so it is moved aside (GET /moved_aside)", number=order.number,
                      request_id=order.request_id, quantity=order.quantity, name=order.name, peer=peer)
        # Durable first: until then, the table would still answer for the moved request ids.
        await self._aside.move(tail, self._clock.seconds())
        self.orders.truncate_from(fork)
        self._acked = dict.fromkeys(self._peers)  # what followers acknowledged may be among them
        self._unsettled = True

    # -- moved-aside reservations ---------------------------------------------------

    async def release_unplaced(self, request_ids: Sequence[str]) -> dict[str, str]:
        """On the leader: releases the reservations of these moved-aside requests unless this
        history holds the request (its order keeps the reservation) or is placing it now.

        :return: per request id, what became of its reservation (``pending``: ask again)."""
        if self.leader_id != self.id:
            raise not_leader(self.leader_id, self._replicas)
        if not self.ready:
            raise unavailable("This replica became leader and is still catching up; retry shortly.")
        outcomes: dict[str, str] = {}
        free: list[str] = []
        for request_id in dict.fromkeys(request_ids):
            order = self.orders.for_request(request_id)
            if order is not None:
                outcomes[request_id] = f"kept for order {order.number}"
            elif request_id in self._attempts or request_id in self._releasing:
                outcomes[request_id] = PENDING
            else:
                free.append(request_id)
        self._releasing.update(free)
        try:
            statuses = await self._catalog.settle_each("release", free, 0) if free else []
        finally:
            self._releasing.difference_update(free)
        for request_id, status in zip(free, statuses):
            outcomes[request_id] = {200: "released", 404: "no reservation at the catalog",
                                    409: "confirmed at the catalog; not released"}.get(status, PENDING)
        return outcomes

    async def _settle_moved_aside(self) -> None:
        """Has the leader settle the reservations of this replica's moved-aside orders."""
        if not self._unsettled or not self.ready or self.leader_id is None:
            return
        pending = await self._aside.pending(MAX_BATCH_ITEMS)
        if not pending:
            self._unsettled = False
            return
        request_ids = [m.order.request_id for m in pending]
        if self.leader_id == self.id:
            outcomes = await self.release_unplaced(request_ids)
        else:
            status, body = await self._call(self.leader_id, "POST", "/release_reservations",
                                            {"request_ids": request_ids})
            outcomes = body.get("data", {}).get("outcomes") if status == 200 else None
            if not isinstance(outcomes, dict):
                raise ValueError(f"the leader answered {status} to /release_reservations")
        settled = {r: o for r, o in outcomes.items() if r in request_ids and isinstance(o, str) and o != PENDING}
        for moved in pending:
            if moved.order.request_id in settled:
                log.info("Moved-aside order {number} ({request_id}): reservation {outcome}", number=moved.order.number,
                         request_id=moved.order.request_id, outcome=settled[moved.order.request_id])
        await self._aside.record(settled)

    async def moved_aside(self, after: int, limit: int) -> list[dict[str, Any]]:
        """The orders moved aside here, for ``GET /moved_aside``."""
        return [m.as_json() for m in await self._aside.listing(after, limit)]

    # -- cluster --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        held = self.orders.latest_number + 1
        return {"id": self.id, "role": "leader" if self.leader_id == self.id else "follower", "term": 0,
                "leader_id": self.leader_id, "commit_index": held, "last_index": held,
                "snapshot_index": 0, "log_entries": 0,  # no log: each order is pushed as it is
                "replication": "primary-backup", "caught_up": self.ready, "conflict": self._conflict is not None,
                **self.members()}

    def members(self) -> dict[str, Any]:
        """Primary-backup's members are the replicas named at start, for good."""
        return members_answer(Configuration.of(sorted(self._replicas), addresses=self._replicas))

    async def change_members(self, body: Mapping[str, Any]) -> dict[str, Any]:
        raise ApiError(400, "Primary-backup's members are fixed at start; membership changes need --replication raft.")

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
            self._background(self._sync())
        elif was_leader:
            # It may hold orders it made durable and never pushed: it adopts the new leader's
            # history, moving aside what differs, before it serves or takes pushes again.
            self.ready = False
            self._background(self._sync())
        else:
            self._background(self._catch_up())

    def _background(self, work: Any) -> defer.Deferred:
        d = defer.ensureDeferred(work)
        d.addErrback(lambda f: log.warn("Replication work failed: {error}", error=f.getErrorMessage()))
        return d

    def _tick_logged(self) -> defer.Deferred:
        d = defer.ensureDeferred(self._tick())
        d.addErrback(lambda f: log.warn("Catching up failed: {error}", error=f.getErrorMessage()))
        return d

    async def _tick(self) -> None:
        if not self.ready:
            await self._sync()
            return
        if self.leader_id == self.id:
            await self._probe_behind()
        elif not self._taking_pushes():
            await self._catch_up()
        await self._settle_moved_aside()

    def _taking_pushes(self) -> bool:
        """Whether a push came within the last interval: then the leader tracks this follower
        and sends whatever it lacks, and a pull would fetch the same orders a second time."""
        return self._pushed_at is not None and self._clock.seconds() - self._pushed_at < CATCH_UP_INTERVAL
