"""Prometheus metrics for every service: ``GET /metrics`` in the text format.

Each service owns one :class:`ServiceMetrics` (its own ``CollectorRegistry``: tests build
several services in one process, and the global registry would mix them). Requests are
counted at one place, :class:`InstrumentedResource`, which wraps the service's Klein
resource and labels each request with the route pattern it matched (``/orders/<string:number>``),
never the raw path, so the number of label values stays bounded whatever clients send.

Domain figures are read from the objects that already hold them, at scrape time, by the
collectors below; nothing counts twice. Collectors of state that lives on disk (the
catalog's stock) refresh asynchronously just before the scrape.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol

from klein import Klein
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from toystore.http import ROUTE_MEMO_SIZE, ApiError, error_response, path_info
from toystore.raft.messages import Role
from toystore.raft.node import RaftNode
from toystore.timeline import StageTimer

log = Logger()

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"  # the route label of every path no route matches
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# Requests, Raft rounds and an order's stages: fine where a lone order's stages fall (0.5
# to 15 ms), so that a p50 read off the buckets is within a fraction of a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.0035, 0.004, 0.005, 0.006, 0.007, 0.008, 0.01,
                   0.0125, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DISK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
ROLES = ("leader", "follower", "candidate")


class ServiceMetrics:
    """One service's registry, its request metrics, and what ``/metrics`` answers.

    :param clock: request latency is measured on it (a ``task.Clock`` in tests).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self.requests = Counter("toystore_http_requests", "HTTP requests answered, by route pattern and status.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("toystore_http_request_duration_seconds",
                                 "Time from receiving a request to finishing its answer.",
                                 ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def add(self, collector: Collector) -> None:
        """Register a collector; one with an async ``refresh()`` is refreshed before each scrape."""
        self.registry.register(collector)
        refresh = getattr(collector, "refresh", None)
        if refresh is not None:
            self._refreshers.append(refresh)

    def histogram(self, name: str, documentation: str, buckets: Iterable[float] = DISK_BUCKETS) -> Histogram:
        """A histogram in this service's registry (for durations observed by callbacks)."""
        return Histogram(name, documentation, buckets=tuple(buckets), registry=self.registry)

    async def exposition(self) -> bytes:
        """The text format of everything registered, after refreshing the async collectors.

        A refresh that fails is logged and the collector reports what it read last: a scrape
        answers even when the disk is slow or broken.
        """
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception:
                log.failure("Refreshing metrics before a scrape failed")
        return generate_latest(self.registry)

    def wrap(self, resource: IResource, app: Klein) -> IResource:
        """The service's root resource: ``resource`` counted per route of ``app``, plus ``/metrics``."""
        return InstrumentedResource(resource, app, self)


def route_of(app: Klein, path: str | None, method: str) -> str:
    """The pattern of the route ``app`` serves ``path`` with (whatever the method), or
    :data:`UNMATCHED`: a bounded set of label values."""
    if path is None:
        return UNMATCHED
    adapter = app.url_map.bind("localhost")
    try:
        rule, _ = adapter.match(path, method, return_rule=True)
    except MethodNotAllowed as e:
        # The path exists, the method does not: still that route's 405.
        for allowed in sorted(e.valid_methods or ()):
            try:
                rule, _ = adapter.match(path, allowed, return_rule=True)
            except (HTTPException, RequestRedirect):
                continue
            return str(rule.rule)
        return UNMATCHED
    except (HTTPException, RequestRedirect):
        return UNMATCHED
    return str(rule.rule)


class InstrumentedResource(Resource):
    """Counts and times every request to ``wrapped`` by route, method and status, and answers
    ``GET /metrics`` itself (public, like ``/health``: the figures hold no secrets).

    :param wrapped: a leaf root resource (a Klein app's, perhaps behind ``Utf8PathGuard``).
    :param app: the Klein app whose url map names the routes.
    """

    isLeaf = True

    def __init__(self, wrapped: IResource, app: Klein, metrics: ServiceMetrics) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._app = app
        self._metrics = metrics
        # Matching the url map again for every request cost a visible share of a cache
        # hit; the map never changes, so remember recent answers (bounded).
        self._routes: dict[tuple[str | None, str], str] = {}
        # Labelling a metric takes a lock and validates every value; the label sets are few
        # (routes, methods and statuses are bounded), so each pair of children is kept.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def _route(self, path: str | None, method: str) -> str:
        key = (path, method)
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= ROUTE_MEMO_SIZE:
                self._routes.clear()
            route = self._routes[key] = route_of(self._app, path, method)
        return route

    def render(self, request: IRequest) -> Any:
        method = request.method.decode("ascii", "replace").upper()
        method_label = method if method in METHODS else "other"
        path = path_info(request)
        route = METRICS_PATH if path == METRICS_PATH else self._route(path, method)
        started = self._metrics.clock.seconds()
        request.notifyFinish().addBoth(self._observe, request, route, method_label, started)
        if route == METRICS_PATH:
            return self._render_metrics(request, method)
        return self._wrapped.render(request)

    def _observe(self, _: object, request: IRequest, route: str, method: str, started: float) -> None:
        key = (route, method, str(request.code))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._metrics.requests.labels(*key), self._metrics.latency.labels(*key))
        requests, latency = children
        requests.inc()
        latency.observe(self._metrics.clock.seconds() - started)

    def _render_metrics(self, request: IRequest, method: str) -> Any:
        if method not in ("GET", "HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return error_response(request, ApiError(405, "Method not allowed on this resource."))
        answered = Deferred.fromCoroutine(self._metrics.exposition())

        def write(body: bytes) -> None:
            request.setHeader(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"))
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            log.failure("Answering /metrics failed", failure)
            request.write(error_response(request, ApiError(500, "Internal error; the request may be retried.")))
            request.finish()

        answered.addCallbacks(write, failed)
        return NOT_DONE_YET


# ---------------------------------------------------------------- domain collectors


class HasCacheStats(Protocol):
    def stats(self) -> Any: ...


class CacheCollector(Collector):
    """The frontend's product cache, from ``LruCache.stats()``."""

    def __init__(self, cache: HasCacheStats) -> None:
        self._cache = cache

    def collect(self) -> Iterable[Metric]:
        stats = self._cache.stats()
        yield CounterMetricFamily("toystore_cache_hits", "Product lookups the cache answered.", stats.hits)
        yield CounterMetricFamily("toystore_cache_misses", "Product lookups that went to the catalog.", stats.misses)
        yield CounterMetricFamily("toystore_cache_invalidations", "Invalidations applied to the cache.",
                                  stats.invalidations)
        yield GaugeMetricFamily("toystore_cache_size", "Products in the cache now.", stats.size)
        yield GaugeMetricFamily("toystore_cache_capacity", "Products the cache can hold (0: caching off).",
                                stats.capacity)


class KnowsLeader(Protocol):
    @property
    def leader_id(self) -> int | None: ...

    failovers: int


class LeaderCollector(Collector):
    """The frontend's view of the order leader, from its ``LeaderTracker``."""

    def __init__(self, tracker: KnowsLeader) -> None:
        self._tracker = tracker

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("toystore_frontend_order_leader_id",
                                "The order replica the frontend sends to (0 while none is known).",
                                self._tracker.leader_id or 0)
        yield CounterMetricFamily("toystore_frontend_failovers",
                                  "Times the frontend moved from one known order leader to another.",
                                  self._tracker.failovers)


class ReplicaCollector(Collector):
    """An order replica's replication state, from its ``status()`` (the ``/health_check`` data).

    :param status: returns the status mapping; a Raft replica adds ``applied_index``
        (see :func:`raft_status`).
    """

    GAUGES = {
        "term": "The replica's current term (Raft; 0 in primary-backup mode).",
        "commit_index": "Highest log index known committed (orders held, in primary-backup mode).",
        "last_index": "Highest log index held.",
        "applied_index": "Highest log index applied to the orders.",
        "snapshot_index": "Last log index of the latest snapshot (0 while none).",
        "log_entries": "Log entries held now (the rest are in the snapshot).",
        "leader_id": "The leader this replica knows (0 while none).",
    }

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        status = self._status()
        for field, documentation in self.GAUGES.items():
            if field in status:
                yield GaugeMetricFamily(f"toystore_replica_{field}", documentation, status[field] or 0)
        role = GaugeMetricFamily("toystore_replica_role", "1 for the role the replica plays now.", labels=["role"])
        for name in ROLES:
            role.add_metric([name], 1 if status.get("role") == name else 0)
        yield role
        if "settlement" in status:
            settled = CounterMetricFamily("toystore_replica_settled_reservations",
                                          "Held reservations this replica settled, by outcome: confirmed, released, "
                                          "refused (the catalog said no) or failed (no answer).", labels=["outcome"])
            for outcome, count in status["settlement"].items():
                settled.add_metric([outcome], count)
            yield settled


def raft_status(node: RaftNode, status: Callable[[], Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A Raft node's status (or its host's ``status``, which holds it) with its applied index,
    for :class:`ReplicaCollector`."""
    return {**(status or node.status)(), "applied_index": node.core.applied_index}


class CountsPosts(Protocol):
    posts: int
    dropped: int


class TransportCollector(Collector):
    """The Raft transport's POSTs and the messages it dropped (a failed POST takes what was
    queued behind it; a peer that stopped answering fills its queue)."""

    def __init__(self, transport: CountsPosts) -> None:
        self._transport = transport

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily("toystore_raft_posts", "POSTs of Raft messages sent to peers.", self._transport.posts)
        yield CounterMetricFamily("toystore_raft_messages_dropped", "Raft messages to peers dropped before they "
                                  "were answered: their POST failed, or the peer's queue was full.",
                                  self._transport.dropped)


class CountsSnapshotsSent(Protocol):
    chunks_sent: int
    bytes_sent: int


class SnapshotCollector(Collector):
    """What a Raft leader sent of its snapshots (:class:`~toystore.raft.snapshots.SnapshotSender`)."""

    def __init__(self, sender: CountsSnapshotsSent) -> None:
        self._sender = sender

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily("toystore_raft_snapshot_chunks_sent", "Chunks of snapshots sent to followers "
                                  "(POST /install_snapshot).", self._sender.chunks_sent)
        yield CounterMetricFamily("toystore_raft_snapshot_bytes_sent", "Bytes of snapshot items sent to followers, "
                                  "encoded.", self._sender.bytes_sent)


class ElectionCounter(Collector):
    """Counts a Raft node's elections from its role changes (``RaftNode.role_listeners``):
    becoming candidate starts one, becoming leader wins one."""

    def __init__(self) -> None:
        self.started = 0
        self.won = 0
        self._role: Role | None = None

    def role_changed(self, role: Role, _leader_id: int) -> None:
        if role is not self._role:
            if role is Role.CANDIDATE:
                self.started += 1
            elif role is Role.LEADER:
                self.won += 1
        self._role = role

    def collect(self) -> Iterable[Metric]:
        elections = CounterMetricFamily("toystore_raft_elections", "Elections this replica took part in as a "
                                        "candidate, by outcome (started, won).", labels=["outcome"])
        elections.add_metric(["started"], self.started)
        elections.add_metric(["won"], self.won)
        yield elections


class CatalogCollector(Collector):
    """Stock and price per toy and reservations per state, read from the catalog's ledger
    just before each scrape (:meth:`refresh`)."""

    def __init__(self, ledger: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._read_ledger = ledger
        self._ledger: dict[str, Any] = {"toys": {}, "reservations": {}}

    async def refresh(self) -> None:
        self._ledger = await self._read_ledger()

    def collect(self) -> Iterable[Metric]:
        stock = GaugeMetricFamily("toystore_catalog_stock", "Units in stock, per toy.", labels=["toy"])
        price = GaugeMetricFamily("toystore_catalog_price", "Price, per toy.", labels=["toy"])
        restocked = CounterMetricFamily("toystore_catalog_restocked_units", "Units added by restocks, per toy.",
                                        labels=["toy"])
        for name, toy in sorted(self._ledger["toys"].items()):
            stock.add_metric([name], toy["quantity"])
            price.add_metric([name], toy["price"])
            restocked.add_metric([name], toy["restocked"])
        reservations = GaugeMetricFamily("toystore_catalog_reservations", "Stock reservations, per state.",
                                         labels=["state"])
        for state, count in sorted(self._ledger["reservations"].items()):
            reservations.add_metric([state], count)
        held = GaugeMetricFamily("toystore_reservations_held", "Reservations held, not yet confirmed or released "
                                 "(the saga's backlog).", self._ledger["reservations"].get("held", 0))
        oldest = GaugeMetricFamily("toystore_reservations_oldest_held_age_seconds",
                                   "Age of the oldest held reservation (0 when none is held).",
                                   self._ledger.get("oldest_held_age", 0.0))
        yield from (stock, price, restocked, reservations, held, oldest)


class CountsPushes(Protocol):
    pushes: int


class InvalidationCollector(Collector):
    """Invalidation pushes the catalog sent to frontends (``Invalidator.pushes``)."""

    def __init__(self, invalidator: CountsPushes) -> None:
        self._invalidator = invalidator

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily("toystore_catalog_invalidation_pushes",
                                  "Invalidations sent to frontends (one per toy per frontend per round).",
                                  self._invalidator.pushes)


class CommitsDurably(Protocol):
    commits: int
    commit_listeners: list[Callable[[float, int], None]]


def watch_database(metrics: ServiceMetrics, db: CommitsDurably) -> None:
    """Group commits of ``db``: how long each COMMIT (its fsync) took, and how many writes it carried."""
    fsync = metrics.histogram("toystore_db_commit_seconds", "Time of each group commit's COMMIT (the fsync).")
    batch = metrics.histogram("toystore_db_commit_writes", "Writes made durable by each group commit.",
                              buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

    def committed(seconds: float, writes: int) -> None:
        fsync.observe(seconds)
        batch.observe(writes)

    db.commit_listeners.append(committed)


def watch_raft(metrics: ServiceMetrics, node: RaftNode, status: Callable[[], Mapping[str, Any]] | None = None) -> None:
    """A Raft node's state (from its host's ``status`` when given), elections and append
    latency (proposal to commit, on the leader)."""
    metrics.add(ReplicaCollector(lambda: raft_status(node, status)))
    elections = ElectionCounter()
    node.role_listeners.append(elections.role_changed)
    metrics.add(elections)
    append = metrics.histogram("toystore_raft_append_seconds",
                               "Time from a leader's proposal of an entry to its commit.", LATENCY_BUCKETS)
    node.commit_listeners.append(append.observe)


def watch_stages(metrics: ServiceMetrics, timer: StageTimer) -> None:
    """The seconds from a request's arrival to each stage ``timer`` is told of, by stage."""
    histogram = Histogram("toystore_order_stage_seconds",
                          "Seconds from receiving an order (on the leader: a batch of them) to each stage of it.",
                          ["stage"], buckets=LATENCY_BUCKETS, registry=metrics.registry)
    by_stage: dict[str, Any] = {}

    def reached(stage: str, seconds: float) -> None:
        child = by_stage.get(stage)
        if child is None:
            child = by_stage[stage] = histogram.labels(stage=stage)
        child.observe(seconds)

    timer.listeners.append(reached)


def watch_replication(metrics: ServiceMetrics, replica: Any, transport: CountsPosts | None,
                      snapshots: CountsSnapshotsSent | None) -> None:
    """A replica's state from its ``status()`` (Raft's elections and append latency too when
    ``replica.node`` is a :class:`RaftNode`), and its ``transport`` and ``snapshots`` if any."""
    stages = getattr(replica, "stages", None)
    if isinstance(stages, StageTimer):
        watch_stages(metrics, stages)
    node = getattr(replica, "node", None)
    if isinstance(node, RaftNode):
        watch_raft(metrics, node, replica.status)
    else:
        metrics.add(ReplicaCollector(replica.status))
    if transport is not None:
        metrics.add(TransportCollector(transport))
    if snapshots is not None:
        metrics.add(SnapshotCollector(snapshots))


# ---------------------------------------------------------------- per role


def catalog_metrics(clock: IReactorTime, db: CommitsDurably, ledger: Callable[[], Awaitable[dict[str, Any]]],
                    invalidator: CountsPushes,
                    member: Any = None, transport: CountsPosts | None = None,
                    snapshots: CountsSnapshotsSent | None = None) -> ServiceMetrics:
    """The catalog's metrics: requests, group commits, stock and reservations (as ``ledger``
    reads them), invalidation pushes; for a ``member`` of a replicated catalog (with ``node`` and ``status()``), its
    Raft group's state as an order replica's, its ``transport`` and its ``snapshots``."""
    metrics = ServiceMetrics(clock)
    watch_database(metrics, db)
    metrics.add(CatalogCollector(ledger))
    metrics.add(InvalidationCollector(invalidator))
    if member is not None:
        watch_replication(metrics, member, transport, snapshots)
    return metrics


def frontend_metrics(clock: IReactorTime, cache: HasCacheStats, tracker: KnowsLeader,
                     stages: StageTimer) -> ServiceMetrics:
    """The frontend's metrics: requests, the product cache, the order leader and failovers,
    and the ``stages`` of an order."""
    metrics = ServiceMetrics(clock)
    metrics.add(CacheCollector(cache))
    metrics.add(LeaderCollector(tracker))
    watch_stages(metrics, stages)
    return metrics


def order_metrics(clock: IReactorTime, db: CommitsDurably, replica: Any, transport: CountsPosts | None = None,
                  snapshots: CountsSnapshotsSent | None = None) -> ServiceMetrics:
    """An order replica's metrics: requests, group commits, and its replication state (Raft's
    elections, append latency and ``transport`` too when ``replica.node`` is a :class:`RaftNode`)."""
    metrics = ServiceMetrics(clock)
    watch_database(metrics, db)
    watch_replication(metrics, replica, transport, snapshots)
    return metrics
