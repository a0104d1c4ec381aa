"""Assembles one order replica: database, replication (Raft or primary-backup), saga, HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from twisted.application import internet
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from toystore.config import DEFAULT_SNAPSHOT_EVERY
from toystore.db import Database, DatabaseService
from toystore.http import LISTEN_BACKLOG, HTTPPoolService, JsonClient, QuietSite, make_internal_client
from toystore.leader import HealthChecks, Leadership, leadership_of
from toystore.metrics import order_metrics
from toystore.order.api import OrderApi
from toystore.order.catalog_client import CatalogClient
from toystore.order.moved_aside import MovedAsideStore
from toystore.order.primary_backup import PrimaryBackupReplica
from toystore.order.raft_replica import ORDER_TIMEOUT, RaftReplica
from toystore.order.store import SCHEMA, ReplicaStore
from toystore.raft.membership import Configuration
from toystore.raft.host import build_node
from toystore.raft.node import Timing
from toystore.raft.snapshots import SnapshotSender
from toystore.raft.sqlite_log import RaftState
from toystore.raft.transport import HttpTransport
from toystore.runtime import GarbageCollectorTuning, StartsAfterChildren

log = Logger()


@dataclass
class ReplicaParts:
    """What both replication modes build alike: storage restored from disk, HTTP client, catalog."""

    store: ReplicaStore
    state: RaftState
    http_client: JsonClient
    catalog: CatalogClient
    catalog_leader: Leadership
    http_pool: HTTPConnectionPool
    db: Database


def _open_parts(reactor: Any, node_id: int, catalog_url: str | Mapping[int, str], data_dir: Path,
                token: str | None, db_delay: float, first_configuration: Configuration = Configuration()) -> ReplicaParts:
    db = Database.open_threaded(data_dir / f"order-{node_id}" / "order.sqlite3", SCHEMA, reactor, db_delay=db_delay)
    store = ReplicaStore(db)
    state = store.load_at_start(first_configuration)
    http_client, http_pool = make_internal_client(reactor)
    catalog_leader = leadership_of(catalog_url, http_client, reactor, token, group="catalog")
    return ReplicaParts(store, state, http_client,
                        CatalogClient(catalog_leader, http_client, clock=reactor, token=token), catalog_leader,
                        http_pool, db)


def _serve(reactor: Any, replica: RaftReplica | PrimaryBackupReplica, parts: ReplicaParts, token: str | None,
           interface: str, port: int, transport: HttpTransport | None = None,
           snapshots: SnapshotSender | None = None) -> StartsAfterChildren:
    top = StartsAfterChildren(replica)
    GarbageCollectorTuning().setServiceParent(top)
    DatabaseService(parts.db).setServiceParent(top)
    HTTPPoolService(parts.http_pool).setServiceParent(top)
    HealthChecks(parts.catalog_leader).setServiceParent(top)  # started before the replica, stopped after it
    metrics = order_metrics(reactor, parts.db, replica, transport, snapshots)
    site = QuietSite(metrics.wrap(OrderApi(replica, token).resource(), OrderApi.app))
    internet.TCPServer(port, site, backlog=LISTEN_BACKLOG, interface=interface).setServiceParent(top)
    return top


def build_raft_replica(*, reactor: Any, node_id: int, replicas: Mapping[int, str], catalog_url: str,
                       data_dir: Path, token: str | None, interface: str, port: int,
                       db_delay: float = 0.0, timing: Timing = Timing(),
                       snapshot_every: int = DEFAULT_SNAPSHOT_EVERY, join: bool = False) -> StartsAfterChildren:
    """One Raft order replica listening on ``interface:port``, its files in ``data_dir/order-N``.

    :param replicas: the group a first start makes, unless ``join``; later starts take
        their membership from disk, and reach the replicas named here besides.
    :param snapshot_every: entries applied between two snapshots (0: none; see :func:`build_node`).
    :param join: at a first start, wait to be added to a running group (``POST /members``
        at its leader) instead of making one: it never campaigns on its own.
    """
    first = Configuration() if join else Configuration.of(sorted(replicas), addresses=dict(replicas))
    parts = _open_parts(reactor, node_id, catalog_url, data_dir, token, db_delay, first)
    state = parts.state
    replica = RaftReplica(node_id, parts.store, parts.catalog, replicas, clock=reactor)
    node, transport, snapshots = build_node(
        replica.host, state, machine=replica, storage=replica, source=replica, attach=replica.attach,
        http_client=parts.http_client, reactor=reactor, token=token, timing=timing, proposal_timeout=ORDER_TIMEOUT,
        snapshot_every=snapshot_every)
    core = node.core
    config = core.configuration
    log.info("Order replica {id} (raft) restored term {term}, snapshot at {snapshot}, {entries} log entries, "
             "{orders} orders; members {members}", id=node_id, term=state.hard_state.term,
             snapshot=core.snapshot_index, entries=len(state.entries), orders=parts.store.orders.latest_number + 1,
             members=", ".join(f"{m.id}{'' if m.voter else ' (learner)'}" for m in config.members) or
             "none yet: waiting to be added")
    return _serve(reactor, replica, parts, token, interface, port, transport, snapshots)


def build_primary_backup_replica(*, reactor: Any, node_id: int, replicas: Mapping[int, str], catalog_url: str,
                                 data_dir: Path, token: str | None, interface: str, port: int,
                                 db_delay: float = 0.0) -> StartsAfterChildren:
    """One primary-backup order replica listening on ``interface:port``, its files in ``data_dir/order-N``."""
    parts = _open_parts(reactor, node_id, catalog_url, data_dir, token, db_delay)
    replica = PrimaryBackupReplica(node_id, parts.store, parts.catalog, parts.http_client, replicas,
                                   clock=reactor, token=token, aside=MovedAsideStore(parts.db))
    log.info("Order replica {id} (primary-backup) restored {orders} orders", id=node_id,
             orders=parts.store.orders.latest_number + 1)
    return _serve(reactor, replica, parts, token, interface, port)
