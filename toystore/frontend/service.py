"""The frontend as a twistd service: the HTTP listener, the leader health checks and the
connection pool, started and stopped together."""

from __future__ import annotations

from typing import Any, Mapping

from twisted.application.internet import TCPServer
from twisted.internet.interfaces import IReactorTime

from toystore.frontend.api import FrontendApi, Product
from toystore.frontend.cache import LruCache
from toystore.frontend.leader import OrderCaller, OrderLeaderTracker
from toystore.http import LISTEN_BACKLOG, HTTPPoolService, QuietSite, api_root, make_internal_client
from toystore.leader import HealthChecks, leadership_of
from toystore.metrics import frontend_metrics
from toystore.runtime import GarbageCollectorTuning, StartsAfterChildren


def build_frontend(
    reactor: Any,
    *,
    port: int,
    interface: str,
    cache_size: int,
    catalog_url: str | Mapping[int, str],
    replicas: Mapping[int, str],
    token: str | None,
) -> StartsAfterChildren:
    """Wire the frontend: one treq client on a persistent pool shared by every outbound call.

    :param reactor: an IReactorTCP and IReactorTime (the global reactor in production).
    :param catalog_url: a lone catalog's URL, or ``{id: URL}`` of the catalog's members.
    """
    clock: IReactorTime = reactor
    client, pool = make_internal_client(clock)
    tracker = OrderLeaderTracker(replicas, client, clock, token)
    caller = OrderCaller(tracker, client, clock, token)
    catalog = leadership_of(catalog_url, client, clock, token, group="catalog")
    cache: LruCache[Product] = LruCache(cache_size)
    api = FrontendApi(catalog, cache, tracker, caller, client, clock, token)
    service = StartsAfterChildren(tracker)  # the order leader's health checks run while started
    GarbageCollectorTuning().setServiceParent(service)
    HTTPPoolService(pool).setServiceParent(service)  # stopped after the listener: children stop in reverse
    HealthChecks(catalog).setServiceParent(service)
    metrics = frontend_metrics(clock, cache, tracker, api.stages)
    root = metrics.wrap(api_root(api.app), FrontendApi.app)
    listener = TCPServer(port, QuietSite(root), backlog=LISTEN_BACKLOG, interface=interface, reactor=reactor)
    listener.setServiceParent(service)
    return service
