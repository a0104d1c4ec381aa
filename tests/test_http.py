"""The shared HTTP pieces: bounded request bodies, a deadline on the whole exchange, and the
services' internal client."""

from __future__ import annotations

import gc
import json
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from klein import Klein
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyChannel

from toystore.http import MAX_PEER_BODY_BYTES, BoundedRequest, QuietSite, fetch_json, json_response, make_internal_client


def _kept(request: BoundedRequest) -> int:
    request.content.seek(0, 2)
    return request.content.tell()


def test_a_huge_body_is_kept_only_up_to_one_byte_past_the_largest_limit() -> None:
    request = BoundedRequest(DummyChannel())
    request.gotLength(10**12)
    chunk = b"x" * (1024 * 1024)
    for _ in range(20):
        request.handleContentChunk(chunk)
    assert _kept(request) == MAX_PEER_BODY_BYTES + 1


def test_an_ordinary_body_is_kept_whole() -> None:
    request = BoundedRequest(DummyChannel())
    request.gotLength(11)
    request.handleContentChunk(b'{"a": ')
    request.handleContentChunk(b'"b"}')
    request.content.seek(0)
    assert request.content.read() == b'{"a": "b"}'


class _StallingResponse:
    """Headers arrived; the body never does."""

    code = 200

    def content(self) -> defer.Deferred:
        return defer.Deferred()


class _StallingClient:
    def request(self, method: str, url: str, **kwargs: object) -> defer.Deferred:
        return defer.succeed(_StallingResponse())


def test_fetch_json_times_out_on_a_body_that_never_arrives() -> None:
    clock = Clock()
    outcome: list[Failure] = []
    fetch_json(_StallingClient(), "GET", "http://peer/x", reactor=clock, timeout=2.0).addErrback(outcome.append)  # type: ignore[arg-type]
    clock.advance(1.9)
    assert outcome == []
    clock.advance(0.2)
    assert outcome[0].check(defer.TimeoutError)


def test_fetch_json_cancelled_from_outside_fails_as_cancelled() -> None:
    clock = Clock()
    outcome: list[Failure] = []
    d = fetch_json(_StallingClient(), "GET", "http://peer/x", reactor=clock, timeout=2.0)  # type: ignore[arg-type]
    d.addErrback(outcome.append)
    d.cancel()
    assert outcome[0].check(defer.CancelledError)
    assert clock.getDelayedCalls() == []


# ---------------------------------------------------------------- the internal client, over real TCP


class _EchoPeer(Resource):
    """Answers every request with what it received, and the client port it came from."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hang = False

    def render(self, request: Request) -> bytes | int:
        if self.hang:
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({
            "method": request.method.decode(), "path": request.uri.decode(),
            "body": request.content.read().decode(), "length": (request.getHeader(b"content-length") or b"").decode(),
            "authorization": request.getHeader(b"authorization").decode(),
            "client_port": request.getClientAddress().port, "server_port": request.getHost().port,
        }).encode()


@pytest.fixture
def echo_peer() -> Iterator[tuple[str, _EchoPeer]]:
    peer = _EchoPeer()
    port = reactor.listenTCP(0, Site(peer), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}", peer
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_internal_client_sends_body_and_token_and_reuses_its_connection(
        echo_peer: tuple[str, _EchoPeer]) -> None:
    url, _ = echo_peer
    client, pool = make_internal_client(reactor)
    try:
        status, first = await fetch_json(client, "POST", f"{url}/order", reactor=reactor, timeout=5, token="tok",
                                         body={"name": "Tux", "quantity": 2})
        _, second = await fetch_json(client, "GET", f"{url}/query/Élan", reactor=reactor, timeout=5, token="tok")
    finally:
        await pool.closeCachedConnections()
    assert status == 200
    assert (first["method"], first["path"], first["authorization"]) == ("POST", "/order", "Bearer tok")
    assert json.loads(first["body"]) == {"name": "Tux", "quantity": 2}
    assert first["length"] == str(len(first["body"]))
    assert second["path"] == "/query/%C3%89lan"
    assert second["client_port"] == first["client_port"]  # one persistent connection


@pytest_twisted.ensureDeferred
async def test_the_internal_client_keeps_peers_apart(echo_peer: tuple[str, _EchoPeer]) -> None:
    # Endpoints are made once per peer; each request must still reach its own peer.
    url, _ = echo_peer
    other = reactor.listenTCP(0, Site(_EchoPeer()), interface="127.0.0.1")
    other_port = other.getHost().port
    client, pool = make_internal_client(reactor)
    try:
        answered_by = []
        for target in (url, f"http://127.0.0.1:{other_port}", url, f"http://localhost:{other_port}"):
            _, echo = await fetch_json(client, "GET", f"{target}/x", reactor=reactor, timeout=5, token="t")
            answered_by.append(echo["server_port"])
    finally:
        await pool.closeCachedConnections()
        await other.stopListening()
    first_port = int(url.rsplit(":", 1)[1])
    assert answered_by == [first_port, other_port, first_port, other_port]


@pytest_twisted.ensureDeferred
async def test_the_internal_client_gives_up_on_a_peer_that_never_answers(echo_peer: tuple[str, _EchoPeer]) -> None:
    url, peer = echo_peer
    peer.hang = True
    client, pool = make_internal_client(reactor)
    try:
        with pytest.raises(defer.TimeoutError):
            await fetch_json(client, "GET", f"{url}/slow", reactor=reactor, timeout=0.2)
    finally:
        await pool.closeCachedConnections()


def _garbage_per_request(site: Site, requests: int = 50) -> float:
    """Objects the cyclic collector frees per request served over one kept-alive connection."""
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    gc.collect()
    gc.disable()
    try:
        for _ in range(requests):
            channel.dataReceived(b"POST /order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 2\r\n\r\n{}")
        freed = gc.collect()
    finally:
        gc.enable()
        channel.connectionLost(Failure(ConnectionError()))
    return freed / requests


def test_a_finished_request_leaves_little_for_the_cyclic_collector() -> None:
    # Klein's render keeps each request in a reference cycle; what the request still holds
    # once finished is walked by the collector, on every service, for every request.
    app = Klein()

    @app.route("/order", methods=["POST"])
    def order(request: Any) -> bytes:
        return json_response(request, {"ok": True})

    class PlainSite(QuietSite):
        requestFactory = Request

    emptied = _garbage_per_request(QuietSite(app.resource()))
    plain = _garbage_per_request(PlainSite(app.resource()))
    assert emptied < plain * 0.75, (emptied, plain)  # about 28 against 42 objects
