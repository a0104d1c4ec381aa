"""The frontend's listener: its accept queue holds a burst of new client connections."""

from __future__ import annotations

from twisted.application.internet import TCPServer
from twisted.internet.testing import MemoryReactorClock

from toystore.bench.__main__ import parse_arguments
from toystore.frontend.service import build_frontend


def test_listener_queue_holds_the_bench_burst_of_connections() -> None:
    # Twisted's default backlog of 50 overflowed when the bench's 256 clients connected at
    # once: dropped SYNs retried after 1 s (p99 1.05 s) and failed SYN cookies reset
    # connections (orders of unknown outcome).
    reactor = MemoryReactorClock()
    service = build_frontend(reactor, port=8000, interface="127.0.0.1", cache_size=8,
                             catalog_url="http://127.0.0.1:8001", replicas={1: "http://127.0.0.1:8101"},
                             token="secret")
    listener = next(child for child in service if isinstance(child, TCPServer))
    listener.startService()
    try:
        [(port, _factory, backlog, interface)] = reactor.tcpServers
        assert (port, interface) == (8000, "127.0.0.1")
        assert backlog >= 2 * max(parse_arguments([]).order_clients)
    finally:
        listener.stopService()
