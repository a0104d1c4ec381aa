"""Assembles one order replica: database, Raft node, saga, HTTP."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import Logger

from toystore.db import Database
from toystore.http import QuietSite, make_http_client
from toystore.order.api import OrderApi
from toystore.order.catalog_client import CatalogClient
from toystore.order.raft_replica import RaftReplica
from toystore.order.state import OrderStateMachine
from toystore.order.store import SCHEMA, ReplicaStore
from toystore.raft.core import RaftCore
from toystore.raft.node import RaftNode, Timing
from toystore.raft.transport import HttpTransport

log = Logger()


class OrderReplicaService(service.MultiService):
    """Starts the replica after its listening port, and on stop closes what it opened."""

    def __init__(self, replica: RaftReplica, closers: list[Any]) -> None:
        super().__init__()
        self.replica = replica
        self._closers = closers

    def startService(self) -> None:
        super().startService()
        self.replica.start()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.replica.stop()
        yield super().stopService()
        for close in self._closers:
            yield close()


def build_raft_replica(*, reactor: Any, node_id: int, replicas: Mapping[int, str], catalog_url: str,
                       data_dir: Path, token: str | None, interface: str, port: int,
                       db_delay: float = 0.0, timing: Timing = Timing()) -> OrderReplicaService:
    """One Raft order replica listening on ``interface:port``, its files in ``data_dir/order-N``."""
    db, thread_pool = Database.open_threaded(data_dir / f"order-{node_id}" / "order.sqlite3", SCHEMA, reactor,
                                             db_delay=db_delay)
    store = ReplicaStore(db)
    state = store.load_at_start()
    orders = OrderStateMachine(state.orders)
    http_client, http_pool = make_http_client(reactor)
    catalog = CatalogClient(http_client, catalog_url, clock=reactor, token=token)
    replica = RaftReplica(node_id, orders, store, catalog, replicas, clock=reactor)
    core = RaftCore(node_id, sorted(replicas), hard_state=state.hard_state, entries=state.entries,
                    applied=state.applied, rng=random.Random(), election_ticks=timing.election_ticks,
                    heartbeat_ticks=timing.heartbeat_ticks)
    peers = {i: url for i, url in replicas.items() if i != node_id}
    transport = HttpTransport(http_client, peers, clock=reactor, token=token)
    replica.attach(RaftNode(core, clock=reactor, transport=transport, apply_entry=replica.apply_entry,
                            persist=replica.persist_cycle, timing=timing))
    log.info("Order replica {id} (raft) restored term {term}, {entries} log entries, {orders} orders",
             id=node_id, term=state.hard_state.term, entries=len(state.entries), orders=len(state.orders))

    def close_storage() -> None:
        thread_pool.stop()  # waits for the write in progress, so the connection is idle
        db.close()

    top = OrderReplicaService(replica, [http_pool.closeCachedConnections, close_storage])
    site = QuietSite(OrderApi(replica, token).resource())
    internet.TCPServer(port, site, interface=interface).setServiceParent(top)
    return top
