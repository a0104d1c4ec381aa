"""One member of the replicated catalog (``toystore-catalog --id N``): the catalog's operations
as proposals to its Raft group, and its reads at the leader after a ReadIndex round.

It offers what the routes need of the single catalog's :class:`~toystore.catalog.store.CatalogStore`
(the same methods, the same outcomes), so both run behind one API. A batch of buys (or of
confirms, of releases) that reached the leader in one request is one command and one log
entry; each item is answered as if it ran alone. Off the leader, every operation is a 421
naming the leader.

A new leader clears every frontend's cache before it answers anything: a toy whose change
the old leader committed but never pushed would otherwise stay stale in some cache for good.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from toystore.catalog.raft_store import CatalogRaftStore, parse_reservation, parse_snapshot_header
from toystore.catalog.rules import Bought, CatalogError, ReservationRow
from toystore.catalog.state import BUY, CONFIRM, PRICE, RELEASE, RESTOCK, CatalogCommand
from toystore.catalog.store import Cursor, NotFound, Page, Toy, ledger_answer
from toystore.raft.core import NotLeader
from toystore.raft.host import RaftHost, unavailable
from toystore.raft.messages import Entry, Ready, Role, SnapshotMeta
from toystore.raft.node import ProposalDropped, RaftNode
from toystore.raft.statemachine import Snapshot

log = Logger()

WRITE_TIMEOUT = 5.0  # a command not committed by then is answered 503 (outcome unknown)
READ_TIMEOUT = 2.0   # a ReadIndex round that cannot reach a majority by then is 503


class CatalogReplica:
    """A catalog member: state machine, storage, snapshot source and sink of its node.

    :param store: the durable state, loaded.
    :param members: ``{id: URL}`` of the members named at start (``TOYSTORE_CATALOG_URL``).
    :param clear_caches: pushes ``{"all": true}`` to every frontend; a new leader awaits it
        before it answers anything.
    """

    def __init__(self, node_id: int, store: CatalogRaftStore, members: dict[int, str], *, clock: IReactorTime,
                 clear_caches: Callable[[], Awaitable[None]]) -> None:
        self.id = node_id
        self._store = store
        self._clock = clock
        self._clear_caches = clear_caches
        self.host = RaftHost(node_id, members, clock=clock, redirect="send catalog requests to the leader",
                             read_timeout=READ_TIMEOUT)
        self._caches_cleared_in: int | None = None  # the term whose leader (this one) cleared them

    def attach(self, node: RaftNode) -> None:
        """The node is built with this member as its state machine, storage and snapshot sink."""
        self.host.attach(node, self)
        node.role_listeners.append(self._role_changed)

    @property
    def node(self) -> RaftNode | None:
        return self.host.node

    @property
    def leads(self) -> bool:
        return self.host.leads

    # -- the node's state machine and storage (toystore.raft.statemachine) ------------

    def apply(self, entry: Entry) -> list[Any] | None:
        if not entry.data:
            return None  # a leader's no-op
        try:
            command = CatalogCommand.decode(entry.data)
        except ValueError:
            # Only a faulty or forged peer writes such an entry; every member skips it alike.
            log.error("Skipping committed entry {index} (term {term}): not a catalog command: {data!r}",
                      index=entry.index, term=entry.term, data=entry.data[:200])
            return None
        return self._store.machine.apply(command)

    async def persist(self, ready: Ready, results: Sequence[Any]) -> None:
        applied = ready.committed_entries[-1].index if ready.committed_entries else None
        if ready.hard_state is None and not ready.entries and applied is None:
            return
        await self._store.save(ready.hard_state, ready.entries, applied)

    async def save_snapshot(self, meta: SnapshotMeta, compact_before: int) -> None:
        snapshot = await self._store.save_snapshot(meta, compact_before)
        log.info("Snapshot at {index}: {size} reservations", index=meta.index, size=snapshot.size)

    async def install_snapshot(self, meta: SnapshotMeta) -> None:
        staged = self._store.snapshots.received_whole()
        if staged is None or staged.meta != meta:
            raise RuntimeError(f"asked to install the snapshot at {meta}, but {staged} is staged")
        await self._store.install(staged)
        log.info("Installed the snapshot at {index}: {size} reservations", index=meta.index, size=staged.size)

    # -- InstallSnapshot (toystore.raft.snapshots) -----------------------------------

    def latest_snapshot(self) -> Snapshot | None:
        return self._store.snapshots.latest

    async def read_items(self, snapshot: Snapshot, offset: int, limit: int) -> list[Any]:
        return await self._store.snapshot_items(snapshot, offset, limit)

    def received(self, snapshot: Snapshot) -> int:
        return self._store.snapshots.received(snapshot)

    def parse_items(self, snapshot: Snapshot, items: list[Any], offset: int) -> list[ReservationRow]:
        if offset == 0:
            parse_snapshot_header(dict(snapshot.header))
        rows = [parse_reservation(item) for item in items]
        if len({row.request_id for row in rows}) != len(rows):
            raise ValueError("two reservations of the chunk have one request id")
        return rows

    async def stage(self, snapshot: Snapshot, offset: int, items: list[ReservationRow]) -> None:
        await self._store.stage(snapshot, offset, items)

    async def discard(self) -> None:
        await self._store.discard_staged()

    # -- leadership -------------------------------------------------------------------

    def _role_changed(self, role: Role, leader_id: int) -> None:
        if role is Role.LEADER and self._caches_cleared_in != self.host.core.term:
            defer.ensureDeferred(self._clear_for(self.host.core.term))

    async def _clear_for(self, term: int) -> None:
        await self._clear_caches()
        if self.host.core.term == term:
            self._caches_cleared_in = term
            log.info("Leading the catalog in term {term}: every frontend's cache is cleared", term=term)

    def _ready_to_answer(self) -> None:
        """Raises a 421 off the leader; at the leader, returns once the frontends' caches were
        cleared in this term (503 while the clearing runs)."""
        if not self.leads:
            raise self.host.not_leader()
        if self._caches_cleared_in != self.host.core.term:
            raise unavailable("A new catalog leader is clearing the frontends' caches; retry in a moment.")

    # -- the catalog's operations (as CatalogStore's) --------------------------------

    async def _propose(self, command: CatalogCommand) -> list[Any]:
        if command.op in (BUY, CONFIRM, RELEASE) and not command.items:
            return []  # every item of the request was refused as malformed: a 400 here, leader or not
        self._ready_to_answer()
        assert self.node is not None
        (outcome,) = await self.node.propose_each([command.encode()])
        if isinstance(outcome, Failure):
            if outcome.check(NotLeader):
                raise self.host.not_leader(outcome.value.leader_id)
            if outcome.check(ProposalDropped):  # ProposalTimedOut included
                raise unavailable("The catalog's leader changed before the change committed; its outcome is not "
                                  "known yet: retry with the same request id.")
            outcome.raiseException()
        return outcome

    async def _read(self) -> None:
        self._ready_to_answer()
        await self.host.read_barrier()

    async def query(self, name: str) -> Toy:
        await self._read()
        toy = self._store.machine.toy(name)
        if toy is None:
            raise NotFound(f"There is no toy named {name!r}.")
        return Toy(toy.name, toy.price, toy.quantity)

    async def buy_each(self, reservations: Sequence[tuple[str, str, int, int]]) -> list[Bought | CatalogError]:
        return await self._propose(CatalogCommand(BUY, tuple(reservations), at=self._clock.seconds()))

    async def release_each(self, request_ids: Sequence[str], term: int) -> list[str | CatalogError]:
        return await self._propose(CatalogCommand(RELEASE, tuple(request_ids), term=term))

    async def confirm_each(self, request_ids: Sequence[str], term: int) -> list[None | CatalogError]:
        return await self._propose(CatalogCommand(CONFIRM, tuple(request_ids), term=term))

    async def set_price(self, name: str, price: float) -> float:
        (outcome,) = await self._propose(CatalogCommand(PRICE, (price,), name=name))
        if isinstance(outcome, CatalogError):
            raise outcome
        return outcome

    async def restock(self, restock_to: int, name: str | None = None) -> dict[str, int]:
        (outcome,) = await self._propose(CatalogCommand(RESTOCK, to=restock_to, name=name))
        if isinstance(outcome, CatalogError):
            raise outcome
        return outcome

    async def reservations(self, state: str | None = None, older_than: float = 0.0, limit: int | None = None,
                           after: Cursor | None = None) -> Page:
        await self._read()
        return await self._store.reservations(self._clock.seconds(), state, older_than, limit, after)

    async def ledger(self) -> dict[str, Any]:
        await self._read()
        return await self.local_ledger()

    async def local_ledger(self) -> dict[str, Any]:
        """The ledger as this member has applied it, without asking the group (metrics)."""
        machine = self._store.machine
        toys = [(t.name, t.price, t.quantity, t.initial, t.restocked) for t in machine.toys]
        return ledger_answer(toys, machine.counts(), await self._store.oldest_held_created(), self._clock.seconds(),
                             machine.highest_term)

    # -- cluster ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {**self.host.status(), "replication": "raft"}

    def start(self) -> None:
        assert self.node is not None
        self.node.start()

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()

