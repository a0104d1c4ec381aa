"""The catalog as a Twisted service: the database, the HTTP pool, the API and the restock loop,
started in that order and stopped in the reverse one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from twisted.application.internet import TCPServer
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from toystore.catalog.api import CatalogApi
from toystore.catalog.invalidation import Invalidator
from toystore.catalog.store import DATABASE_FILE, CatalogStore, schema
from toystore.db import Database, DatabaseService
from toystore.http import LISTEN_BACKLOG, HTTPPoolService, QuietSite, make_internal_client
from toystore.metrics import catalog_metrics
from toystore.runtime import GarbageCollectorTuning

log = Logger()


class Invalidates(Protocol):
    async def invalidate(self, names: Iterable[str]) -> None: ...


class RestockService(Service):
    """Every ``interval`` seconds, brings each sold-out toy back to ``restock_to``.

    :param interval: seconds between restocks; 0 disables the loop.
    """

    def __init__(self, store: CatalogStore, invalidator: Invalidates, clock: IReactorTime,
                 interval: float, restock_to: int) -> None:
        self._store = store
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
        try:
            restocked = await self._store.restock(self._restock_to)
            await self._invalidator.invalidate(restocked)
        except Exception:
            log.failure("Periodic restock failed; the next one runs in {interval} s", interval=self._interval)
            return
        if restocked:
            log.info("Restocked {toys} (periodic)", toys=", ".join(restocked), restocked=restocked, trigger="periodic")


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
    metrics = catalog_metrics(reactor, db, store, invalidator)

    top = MultiService()
    parts: list[tuple[str, Service]] = [
        ("database", DatabaseService(db)),
        ("http-pool", HTTPPoolService(http_pool)),
        ("gc", GarbageCollectorTuning()),
        ("api", TCPServer(port, QuietSite(metrics.wrap(api.resource(), CatalogApi.app)), backlog=LISTEN_BACKLOG,
                                interface=interface)),
        ("restock", RestockService(store, invalidator, reactor, restock_interval, restock_to)),
    ]
    for name, part in parts:
        part.setName(name)
        part.setServiceParent(top)
    return top
