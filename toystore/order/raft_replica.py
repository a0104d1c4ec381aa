"""The order service replicated with Raft (the default mode).

An order is a small saga keyed by the request id (DESIGN.md): the leader registers
the id as pending, reserves stock at the catalog, appends the order to the Raft log,
and answers once the entry is committed and applied here. Applying assigns the next
dense number unless the id was applied before. The reaper settles reservations whose
order committed or never will.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from toystore.deferreds import SingleFlight
from toystore.http import ApiError
from toystore.order.catalog_client import CatalogClient
from toystore.order.reaper import LeaderView, ReservationReaper
from toystore.order.history import parse_replicated_orders
from toystore.order.state import Applied, Order, OrderCommand
from toystore.order.store import Changes, ReplicaStore
from toystore.raft.core import NotLeader, TermChanged
from toystore.raft.host import RaftHost, unavailable
from toystore.raft.members import CATCH_UP_TIMEOUT
from toystore.raft.messages import Entry, Ready, Role, SnapshotMeta
from toystore.raft.node import ProposalDropped, RaftNode
from toystore.raft.sqlite_log import snapshot_header
from toystore.raft.statemachine import Snapshot
from toystore.timeline import Reached, StageTimer

log = Logger()

# Stages of a batch of orders on the leader, after the node's (appended, durable, committed).
RESERVED, ANSWERED = "reserved", "answered"

ORDER_TIMEOUT = 5.0   # an order not committed by then is answered 503 (outcome unknown)
READ_TIMEOUT = 2.0    # a ReadIndex round that cannot reach a majority by then is 503


def _request_id_of(entry: Entry) -> str | None:
    """The request id of an order entry; None for a no-op or an entry that is not an order."""
    try:
        return OrderCommand.decode(entry.data).request_id if entry.data else None
    except ValueError:
        return None


class RaftReplica:
    """One order replica in Raft mode.

    :param store: the durable state, loaded; its orders are the state machine.
    :param replicas: ``{id: URL}`` of the replicas named at start (``TOYSTORE_ORDER_REPLICAS``):
        where to reach them until the configuration in force says otherwise.
    :param catch_up_timeout: seconds an added server has to catch up before it is removed again.
    """

    def __init__(self, node_id: int, store: ReplicaStore, catalog: CatalogClient,
                 replicas: Mapping[int, str], *, clock: IReactorTime,
                 catch_up_timeout: float = CATCH_UP_TIMEOUT) -> None:
        self.id = node_id
        self.orders = orders = store.orders
        self._store = store
        self._catalog = catalog
        self.host = RaftHost(node_id, replicas, clock=clock, redirect="send orders to the leader",
                             read_timeout=READ_TIMEOUT, catch_up_timeout=catch_up_timeout)
        self._clock = clock
        self._attempts: SingleFlight[str, Order] = SingleFlight()
        # Seconds from receiving a batch of orders to its stock reserved, its entries
        # appended, durable here, committed and applied, and its answer ready.
        self.stages = StageTimer(clock)
        self._uncommitted_memo: tuple[tuple[int, int, int] | None, frozenset[str]] = (None, frozenset())
        self.reaper = ReservationReaper(catalog, LeaderView(
            can_judge=self._can_judge_reservations, term=lambda: self._core.term,
            committed=lambda rid: orders.for_request(rid) is not None, in_flight=self._in_flight,
        ), clock=clock)

    def attach(self, node: RaftNode) -> None:
        """The node is built with this replica as its state machine, storage and snapshot sink."""
        self.host.attach(node, self)

    @property
    def node(self) -> RaftNode | None:
        return self.host.node

    @property
    def peers(self) -> dict[int, str]:
        """``{id: URL}`` of every other replica this one may have to reach."""
        return self.host.peers

    @property
    def _core(self) -> Any:
        return self.host.core

    # -- the node's state machine and storage (toystore.raft.statemachine) ------------

    def apply(self, entry: Entry) -> Applied | None:
        if not entry.data:
            return None  # a leader's no-op
        try:
            command = OrderCommand.decode(entry.data)
        except ValueError:
            # Only a faulty or forged peer writes such an entry. Every replica skips it
            # alike, which keeps them identical, instead of stopping at it for good.
            log.error("Skipping committed entry {index} (term {term}): not an order: {data!r}",
                      index=entry.index, term=entry.term, data=entry.data[:200])
            return None
        return self.orders.apply(command)

    async def persist(self, ready: Ready, results: Sequence[Applied | None]) -> None:
        new_orders = [r.order for r in results if r is not None and r.created]
        applied = ready.committed_entries[-1].index if ready.committed_entries else None
        if ready.hard_state is None and not ready.entries and applied is None:
            return
        await self._store.save(Changes(ready.hard_state, ready.entries, new_orders, applied))

    async def save_snapshot(self, meta: SnapshotMeta, compact_before: int) -> None:
        # Called between cycles: every order applied so far is durable, none past meta.index.
        await self._store.save_snapshot(Snapshot(meta, self.orders.latest_number + 1, snapshot_header(meta)),
                                        compact_before)
        log.info("Snapshot at {index}: {orders} orders; the log keeps {entries} entries", index=meta.index,
                 orders=self.orders.latest_number + 1, entries=self._core.last_index - max(compact_before, 1) + 1)

    async def install_snapshot(self, meta: SnapshotMeta) -> None:
        staged = self._store.snapshots.received_whole()
        if staged is None or staged.meta != meta:
            raise RuntimeError(f"asked to install the snapshot at {meta}, but {staged} is staged")
        await self._store.install(staged)
        log.info("Installed the snapshot at {index}: {orders} orders", index=meta.index,
                 orders=self.orders.latest_number + 1)

    # -- InstallSnapshot (toystore.raft.snapshots) -----------------------------------

    def latest_snapshot(self) -> Snapshot | None:
        return self._store.snapshot

    async def read_items(self, snapshot: Snapshot, offset: int, limit: int) -> list[Any]:
        return [order.replicated() for order in await self._store.snapshot_orders(snapshot, offset, limit)]

    def received(self, snapshot: Snapshot) -> int:
        return self._store.snapshots.received(snapshot)

    def parse_items(self, snapshot: Snapshot, items: list[Any], offset: int) -> list[Order]:
        try:
            orders = parse_replicated_orders(items)
        except ApiError as e:
            raise ValueError(e.message) from None
        if [o.number for o in orders] != list(range(offset, offset + len(orders))):
            raise ValueError(f"the orders are not numbered from {offset} on, one after another")
        if len({o.request_id for o in orders}) != len(orders):
            raise ValueError("two orders of the chunk have one request id")
        return orders

    async def stage(self, snapshot: Snapshot, offset: int, items: list[Order]) -> None:
        await self._store.stage(snapshot, offset, items)

    async def discard(self) -> None:
        await self._store.discard_staged()

    async def receive_snapshot_chunk(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.host.receive_snapshot_chunk(body)

    # -- orders ---------------------------------------------------------------------

    async def place_order(self, request_id: str, name: str, quantity: int) -> Order:
        (outcome,) = await self.place_orders([OrderCommand(request_id, name, quantity)])
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome

    async def place_orders(self, commands: Sequence[OrderCommand]) -> list[Order | Failure]:
        outcomes: list[Order | Failure | None] = [self.orders.for_request(c.request_id) for c in commands]
        new = [command for command, outcome in zip(commands, outcomes) if outcome is None]
        if not new:
            return outcomes  # type: ignore[return-value]
        if self._core.role is not Role.LEADER:
            placed: list[Order | Failure] = [Failure(self.host.not_leader())] * len(new)
        else:
            reached = self.stages.start()
            # A retry while the first attempt still runs shares its outcome.
            placed = await self._attempts.run_each([(c.request_id, c) for c in new],
                                                   lambda batch: self._commit_orders(batch, reached))
            if reached is not None:
                reached(ANSWERED)
        fresh = iter(placed)
        return [outcome if outcome is not None else next(fresh) for outcome in outcomes]

    async def _commit_orders(self, commands: list[OrderCommand], reached: Reached | None) -> list[Order | Failure]:
        """Reserves, then proposes, the orders that reached this leader together: one catalog
        call and one proposal for them all.

        The reservations carry this leader's term, and the orders are appended only while that
        term lasts: once it has passed, a leader of a later term may have released them (the
        catalog fences releases by term, not reservations). A retry reserves again in the
        term of its own attempt, which also raises the catalog's fence to it.
        """
        for command in commands:
            await self.reaper.wait_released(command.request_id)
        core = self._core
        if core.role is not Role.LEADER:
            return [Failure(self.host.not_leader())] * len(commands)
        term = core.term
        refusals = await self._catalog.reserve_each([(c.name, c.quantity, c.request_id) for c in commands], term)
        if reached is not None:
            reached(RESERVED)
        reserved = [command.encode() for command, refusal in zip(commands, refusals) if refusal is None]
        assert self.node is not None
        applied = iter(await self.node.propose_each(reserved, term=term, progress=reached))
        return [Failure(refusal) if refusal is not None else self._placed(next(applied)) for refusal in refusals]

    def _placed(self, outcome: Applied | Failure) -> Order | Failure:
        if not isinstance(outcome, Failure):
            return outcome.order
        if outcome.check(NotLeader):
            return Failure(self.host.not_leader(outcome.value.leader_id))
        if outcome.check(TermChanged):  # nothing was appended; a retry reserves again
            if self._core.role is not Role.LEADER:
                return Failure(self.host.not_leader())
            return Failure(unavailable("Leadership changed while the stock was reserved; retry with the same "
                                       "Idempotency-Key."))
        if outcome.check(ProposalDropped):  # ProposalTimedOut included
            return Failure(unavailable("The order's outcome is not known yet; retry with the same Idempotency-Key."))
        return outcome

    def _in_flight(self, request_id: str) -> bool:
        return request_id in self._attempts or request_id in self._uncommitted_request_ids()

    def _uncommitted_request_ids(self) -> frozenset[str]:
        # The reaper asks once per held reservation; decode the log's tail once per state of
        # it. A leader only appends within its term, so these three pin that tail down.
        core = self._core
        key = (core.term, core.commit_index, core.last_index)
        if core.role is not Role.LEADER or self._uncommitted_memo[0] != key:
            uncommitted = core.log[core.commit_index + 1 - core.first_index:]
            ids = frozenset(filter(None, map(_request_id_of, uncommitted)))
            self._uncommitted_memo = (key, ids)
        return self._uncommitted_memo[1]

    def _can_judge_reservations(self) -> bool:
        core = self._core
        return core.role is Role.LEADER and core.term_at(core.commit_index) == core.term

    async def read_order(self, number: int) -> Order | None:
        if self._core.role is Role.LEADER:
            await self.host.read_barrier()
        return self.orders.get(number)

    # -- cluster --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {**self.host.status(), "replication": "raft", "settlement": self.reaper.counts()}

    def members(self) -> dict[str, Any]:
        return self.host.members()

    async def change_members(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.host.change_members(body)

    def set_leader(self, replica_id: int) -> None:
        if self._core.role is Role.LEADER and replica_id != self.id and replica_id in self._core.configuration.voters:
            log.info("Transferring leadership to {target} at the frontend's request", target=replica_id)
            assert self.node is not None
            self.node.transfer_leadership(replica_id)

    async def receive_peer(self, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.host.receive_peer(endpoint, body)

    def start(self) -> None:
        assert self.node is not None
        self.node.start()
        self.reaper.start()

    def stop(self) -> None:
        self.reaper.stop()
        if self.node is not None:
            self.node.stop()
