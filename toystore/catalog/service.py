"""The catalog as a Twisted service: the database, the HTTP pool, the API and the restock loop,
started in that order and stopped in the reverse one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from twisted.application.internet import TCPServer
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from toystore.catalog.api import CatalogApi
from toystore.catalog.invalidation import Invalidator
from toystore.catalog.raft_store import CatalogRaftStore, member_schema
from toystore.catalog.replica import WRITE_TIMEOUT, CatalogReplica
from toystore.catalog.store import DATABASE_FILE, CatalogStore, schema
from toystore.config import DEFAULT_SNAPSHOT_EVERY
from toystore.db import Database, DatabaseService
from toystore.http import LISTEN_BACKLOG, HTTPPoolService, QuietSite, make_internal_client
from toystore.metrics import catalog_metrics
from toystore.raft.host import build_node
from toystore.raft.membership import Configuration
from toystore.raft.node import Timing
from toystore.runtime import GarbageCollectorTuning, StartsAfterChildren

log = Logger()


class Invalidates(Protocol):
    async def invalidate(self, names: Iterable[str]) -> None: ...


class Restocks(Protocol):
    async def restock(self, restock_to: int, name: str | None = None) -> dict[str, int]: ...


class RestockService(Service):
    """Every ``interval`` seconds, brings each sold-out toy back to ``restock_to``.

    :param interval: seconds between restocks; 0 disables the loop.
    :param may_restock: whether this process restocks now: a replicated catalog's leader
        only, so that a restock goes through the log once, from one member.
    """

    def __init__(self, store: Restocks, invalidator: Invalidates, clock: IReactorTime,
                 interval: float, restock_to: int, may_restock: Callable[[], bool] = lambda: True) -> None:
        self._store = store
        self._may_restock = may_restock
        self._invalidator = invalidator
        self._clock = clock
        self._interval = interval
        self._restock_to = restock_to
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if self._interval > 0:
            self._loop = LoopingCall(lambda: defer.ensureDeferred(self.restock_once()))
            self._loop.clock = self._clock
            self._loop.start(self._interval, now=False)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    async def restock_once(self) -> None:
        """One restock; a failure is logged and never raised, so that the loop goes on."""
        if not self._may_restock():
            return
        try:
            restocked = await self._store.restock(self._restock_to)
            await self._invalidator.invalidate(restocked)
        except Exception:
            log.failure("Periodic restock failed; the next one runs in {interval} s", interval=self._interval)
            return
        if restocked:
            log.info("Restocked {toys} (periodic)", toys=", ".join(restocked), restocked=restocked, trigger="periodic")


def _assembled(top: MultiService, parts: list[tuple[str, Service]]) -> MultiService:
    for name, part in parts:
        part.setName(name)
        part.setServiceParent(top)
    return top


def make_catalog_service(
    reactor: Any,
    *,
    data_dir: Path,
    port: int,
    interface: str,
    token: str | None,
    frontends: Sequence[str],
    restock_interval: float,
    restock_to: int,
    initial_stock: int,
    db_delay: float = 0.0,
) -> MultiService:
    """The whole catalog, built in dependency order. Opening the database creates it, with the
    ten toys, when it is absent."""
    db = Database.open_threaded(data_dir / DATABASE_FILE, schema(initial_stock), reactor, db_delay)
    store = CatalogStore(db, reactor)
    client, http_pool = make_internal_client(reactor)
    invalidator = Invalidator(client, frontends, reactor, token)
    api = CatalogApi(store, invalidator, token, restock_to)
    metrics = catalog_metrics(reactor, db, store.ledger, invalidator)

    top = MultiService()
    parts: list[tuple[str, Service]] = [
        ("database", DatabaseService(db)),
        ("http-pool", HTTPPoolService(http_pool)),
        ("gc", GarbageCollectorTuning()),
        ("api", TCPServer(port, QuietSite(metrics.wrap(api.resource(), CatalogApi.app)), backlog=LISTEN_BACKLOG,
                                interface=interface)),
        ("restock", RestockService(store, invalidator, reactor, restock_interval, restock_to)),
    ]
    return _assembled(top, parts)


def make_catalog_member_service(
    reactor: Any,
    *,
    member_id: int,
    members: Mapping[int, str],
    data_dir: Path,
    port: int,
    interface: str,
    token: str | None,
    frontends: Sequence[str],
    restock_interval: float,
    restock_to: int,
    initial_stock: int,
    db_delay: float = 0.0,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    timing: Timing = Timing(),
) -> MultiService:
    """Member ``member_id`` of the replicated catalog, its files in ``data_dir/catalog-N``.

    :param members: the group a first start makes; later starts take their membership from
        disk, and reach the members named here besides. Every member starts with the ten
        toys at ``initial_stock``, so every member must be given the same.
    """
    db = Database.open_threaded(data_dir / f"catalog-{member_id}" / "catalog.sqlite3", member_schema(initial_stock),
                                reactor, db_delay)
    store = CatalogRaftStore(db)
    state = store.load_at_start(Configuration.of(sorted(members), addresses=dict(members)))
    client, http_pool = make_internal_client(reactor)
    invalidator = Invalidator(client, frontends, reactor, token)
    replica = CatalogReplica(member_id, store, dict(members), clock=reactor, clear_caches=invalidator.clear_all)
    node, transport, snapshots = build_node(
        replica.host, state, machine=replica, storage=replica, source=replica, attach=replica.attach,
        http_client=client, reactor=reactor, token=token, timing=timing, proposal_timeout=WRITE_TIMEOUT,
        snapshot_every=snapshot_every)
    api = CatalogApi(replica, invalidator, token, restock_to, raft=replica.host)
    metrics = catalog_metrics(reactor, db, replica.local_ledger, invalidator, replica, transport, snapshots)
    log.info("Catalog member {id} restored term {term}, snapshot at {snapshot}, {entries} log entries; "
             "members {members}", id=member_id, term=state.hard_state.term, snapshot=node.core.snapshot_index,
             entries=len(state.entries), members=", ".join(str(m.id) for m in node.core.configuration.members))

    top = StartsAfterChildren(replica)
    parts: list[tuple[str, Service]] = [
        ("database", DatabaseService(db)),
        ("http-pool", HTTPPoolService(http_pool)),
        ("gc", GarbageCollectorTuning()),
        ("api", TCPServer(port, QuietSite(metrics.wrap(api.resource(), CatalogApi.app)), backlog=LISTEN_BACKLOG,
                                interface=interface)),
        ("restock", RestockService(replica, invalidator, reactor, restock_interval, restock_to,
                                   may_restock=lambda: replica.leads)),
    ]
    return _assembled(top, parts)

