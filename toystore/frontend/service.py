"""The frontend as a twistd service: the HTTP listener, the leader health checks and the
connection pool, started and stopped together."""

from __future__ import annotations

from typing import Any, Mapping

from twisted.application.internet import TCPServer
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool

from toystore.frontend.api import FrontendApi, Product
from toystore.frontend.cache import LruCache
from toystore.frontend.leader import LeaderCaller, LeaderTracker
from toystore.http import QuietSite, Utf8PathGuard, make_http_client
from toystore.metrics import frontend_metrics


class FrontendService(MultiService):
    """Runs the leader health checks while started; closes pooled connections on stop.

    :param tracker: started in startService, stopped in stopService.
    :param pool: the treq client's pool.
    """

    def __init__(self, tracker: LeaderTracker, pool: HTTPConnectionPool) -> None:
        super().__init__()
        self.tracker = tracker
        self._pool = pool

    def startService(self) -> None:
        super().startService()
        self.tracker.start()

    def stopService(self) -> Deferred[Any]:
        self.tracker.stop()
        stopped: Deferred[Any] = Deferred.fromCoroutine(self._stop_children())
        return stopped

    async def _stop_children(self) -> None:
        await super().stopService()
        await self._pool.closeCachedConnections()


def build_frontend(
    reactor: Any,
    *,
    port: int,
    interface: str,
    cache_size: int,
    catalog_url: str,
    replicas: Mapping[int, str],
    token: str | None,
) -> FrontendService:
    """Wire the frontend: one treq client on a persistent pool shared by every outbound call.

    :param reactor: an IReactorTCP and IReactorTime (the global reactor in production).
    """
    clock: IReactorTime = reactor
    client, pool = make_http_client(clock)
    tracker = LeaderTracker(replicas, client, clock, token)
    caller = LeaderCaller(tracker, client, clock, token)
    cache: LruCache[Product] = LruCache(cache_size)
    api = FrontendApi(catalog_url, cache, tracker, caller, client, clock, token)
    service = FrontendService(tracker, pool)
    metrics = frontend_metrics(clock, cache, tracker)
    root = metrics.wrap(Utf8PathGuard(api.app.resource()), FrontendApi.app)
    listener = TCPServer(port, QuietSite(root), interface=interface, reactor=reactor)
    listener.setServiceParent(service)
    return service
