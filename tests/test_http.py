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

from toystore.http import (MAX_PEER_BODY_BYTES, ApiError, BoundedRequest, QuietSite, Utf8PathGuard, api_root,
                           error_response, fetch_json, install_json_errors, json_response, make_internal_client)


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


def _connection(site: Site) -> tuple[Any, StringTransport]:
    """A client connection to ``site``, and the transport that collects what it writes."""
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def _garbage_per_request(site: Site, requests: int = 50) -> float:
    """Objects the cyclic collector frees per request served over one kept-alive connection,
    once the first request has built what lasts (werkzeug compiles its matcher then)."""
    request = b"POST /order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    channel, _ = _connection(site)
    channel.dataReceived(request)
    gc.collect()
    gc.disable()
    try:
        for _ in range(requests):
            channel.dataReceived(request)
        freed = gc.collect()
    finally:
        gc.enable()
        channel.connectionLost(Failure(ConnectionError()))
    return freed / requests


class _Refused(Exception):
    """An app's own failure, answered by its own error handler (as the catalog's are)."""


class _ToyApi:
    app = Klein()

    def __init__(self) -> None:
        self.pending: defer.Deferred[bytes] = defer.Deferred()

    @app.handle_errors(_Refused)
    def _refused(self, request: Any, failure: Failure) -> bytes:
        return error_response(request, ApiError(409, "Refused by the app."))

    @app.route("/order", methods=["POST"])
    def order(self, request: Any) -> bytes:
        return json_response(request, {"ok": True})

    @app.route("/items/<string:name>", methods=["GET"])
    async def item(self, request: Any, name: str) -> bytes:
        if name == "api-error":
            raise ApiError(404, "No such item.", headers={"Retry-After": "1"})
        if name == "refused":
            raise _Refused()
        if name == "broken":
            raise RuntimeError("a bug")
        if name == "not-bytes":
            return {"data": 1}  # type: ignore[return-value]
        return json_response(request, {"name": name})

    @app.route("/pending", methods=["GET"])
    async def wait(self, request: Any) -> bytes:
        return await self.pending

    @app.route("/dir/", methods=["GET"])
    def directory(self, request: Any) -> bytes:
        return b"{}"


install_json_errors(_ToyApi.app)


def _answer(resource: Resource, raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """What a site serving ``resource`` answers the raw request: its status line, its headers
    but the Date and the framing, and its body (de-chunked)."""
    channel, transport = _connection(QuietSite(resource))
    channel.dataReceived(raw)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    if headers.pop(b"transfer-encoding", None) == b"chunked":
        chunks = []
        while True:
            size, _, rest = body.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            chunks.append(rest[:int(size, 16)])
            body = rest[int(size, 16) + 2:]
        body = b"".join(chunks)
    else:
        assert headers.get(b"content-length", b"0") == b"%d" % len(body) or raw.startswith(b"HEAD")
    for framing in (b"date", b"content-length"):
        headers.pop(framing, None)
    return status, headers, body


@pytest.mark.parametrize("raw", [
    b"POST /order HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /items/Tux HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /items/api-error HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /items/refused HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /items/broken HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /items/Tux HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /order HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /dir HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /items/%FF HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_the_lean_resource_answers_as_klein_does(raw: bytes, logged_failures: list[dict[str, Any]]) -> None:
    lean = _answer(api_root(_ToyApi().app), raw)
    klein = _answer(Utf8PathGuard(_ToyApi().app.resource()), raw)
    assert lean == klein
    assert lean[0].startswith(b"HTTP/1.1 ")


def test_the_lean_resource_logs_an_unexpected_failure_and_answers_500(logged_failures: list[dict[str, Any]]) -> None:
    status, _, body = _answer(api_root(_ToyApi().app), b"GET /items/broken HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 500 ")
    assert json.loads(body)["error"]["code"] == 500
    assert b"a bug" not in body and b"Traceback" not in body
    assert [event["log_failure"].type for event in logged_failures] == [RuntimeError]


def test_a_route_that_answers_no_bytes_is_a_logged_500(logged_failures: list[dict[str, Any]]) -> None:
    status, _, body = _answer(api_root(_ToyApi().app), b"GET /items/not-bytes HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 500 ")
    assert json.loads(body)["error"]["code"] == 500
    assert [event["log_failure"].type for event in logged_failures] == [TypeError]


def test_an_answer_is_sent_with_its_length_not_chunked() -> None:
    channel, transport = _connection(QuietSite(api_root(_ToyApi().app)))
    channel.dataReceived(b"GET /items/Tux HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(body) in head.split(b"\r\n")
    assert json.loads(body) == {"data": {"name": "Tux"}}


def test_a_client_that_goes_away_cancels_the_route_quietly(logged_failures: list[dict[str, Any]]) -> None:
    api = _ToyApi()
    channel, transport = _connection(QuietSite(api_root(api.app)))
    channel.dataReceived(b"GET /pending HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value() == b""
    channel.connectionLost(Failure(ConnectionError()))
    assert api.pending.called  # cancelled, so the route's work stops
    assert transport.value() == b""
    assert logged_failures == []


def test_a_finished_request_leaves_nothing_for_the_cyclic_collector() -> None:
    # Klein's own render keeps every request in a reference cycle, which the collector
    # has to find and free, on every service, for every request.
    api = _ToyApi()
    assert _garbage_per_request(QuietSite(api_root(api.app))) == 0
    assert _garbage_per_request(QuietSite(api.app.resource())) > 20
