"""The HTTP pieces every service shares: JSON bodies, JSON errors, the cluster token, and
the HTTP clients on a persistent pool: a lean one for the services' calls to each other,
treq for the load client.

Every answer is ``{"data": ...}`` or ``{"error": {"code", "message"}}`` (DESIGN.md). Klein
apps call :func:`install_json_errors` once so that unknown routes, wrong methods, bad
input and unexpected failures all answer in that shape, never with a traceback.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence, TypeVar

from hyperlink import EncodedURL
from klein import Klein
from klein.resource import KleinResource
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone,
                                _HTTP11ClientFactory, _StandardEndpointFactory)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IRequest, IResponse
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect
from zope.interface import implementer

MAX_BODY_BYTES = 64 * 1024
# The largest body any route reads: a batch of replicated entries, behind the token.
MAX_PEER_BODY_BYTES = 16 * 1024 * 1024
JSON_CONTENT_TYPE = b"application/json"
# Internal routes take batches of up to MAX_BATCH_ITEMS items; a batch of them with the
# longest names and keys (200 characters, up to 12 bytes each once escaped) fits the body.
MAX_BATCH_ITEMS = 1024
MAX_BATCH_BODY_BYTES = 8 * 1024 * 1024
# Connections the kernel may hold, handshake done, until the reactor accepts them. Clients
# open theirs in bursts (the bench starts 256 at once), and Twisted's default of 50 let the
# queue overflow: Linux then drops the SYN, and the client retries it only after 1 s (a
# p99 of 1.05 s), or, once the queue of half-open ones fills too, answers with SYN cookies
# that fail when the reactor is a moment late to accept, and resets a connection whose
# request it already took (the load client counts an unknown outcome). The kernel caps it
# at net.core.somaxconn (4096 on Linux since 5.4). Every service listens with it: the
# frontend takes the clients' bursts, and the catalog and the replicas their peers' pools.
LISTEN_BACKLOG = 1024

log = Logger()


class ApiError(Exception):
    """A failure the client should see, with its HTTP status and one clear sentence.

    :param code: the HTTP status.
    :param message: one sentence for the client.
    :param headers: extra response headers (``Retry-After``, ...).
    :param details: extra fields for the error object (a leader hint, ...).
    """

    def __init__(
        self,
        code: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.details = dict(details or {})


def _encode(request: IRequest, code: int, payload: Mapping[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_CONTENT_TYPE)
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def json_response(request: IRequest, data: Any, code: int = 200) -> bytes:
    """Answer ``{"data": data}``."""
    return _encode(request, code, {"data": data})


def error_object(error: ApiError) -> dict[str, Any]:
    """``{"code", "message", ...details}``: what ``"error"`` holds in a failure's body."""
    return {"code": error.code, "message": error.message, **error.details}


def error_response(request: IRequest, error: ApiError) -> bytes:
    """Answer ``{"error": {"code", "message", ...details}}`` with the error's headers."""
    for name, value in error.headers.items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    return _encode(request, error.code, {"error": error_object(error)})


# Internal routes that take a batch answer 200 with one result per item, in order: the
# status and body that item would have had alone, as {"status": 200, "data": ...} or
# {"status": 409, "error": {...}}.

def batch_success(data: Any) -> dict[str, Any]:
    return {"status": 200, "data": data}


def batch_failure(error: ApiError) -> dict[str, Any]:
    return {"status": error.code, "error": error_object(error)}


def require_batch(body: Mapping[str, Any], field: str) -> list[Any]:
    """The items of a batch call: a list of 1 to :data:`MAX_BATCH_ITEMS`."""
    items = body.get(field)
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise ApiError(400, f"'{field}' must be a list of 1 to {MAX_BATCH_ITEMS} items.")
    return items


T = TypeVar("T")
R = TypeVar("R")
X = TypeVar("X")


def parsed_or_error(parse: Callable[[Any], T], item: Any) -> T | ApiError:
    """One item of a batch call, parsed, or the error that refused it (the others go on)."""
    try:
        return parse(item)
    except ApiError as e:
        return e


async def run_parsed(asked: list[T | ApiError], run_each: Callable[[list[T]], Awaitable[Sequence[R]]],
                     outcome_of: Callable[[T, R], X]) -> list[X | ApiError]:
    """Runs the calls that parsed, in one batch; each call's outcome in the order asked, a call
    that did not parse keeping its error."""
    results = iter(await run_each([call for call in asked if not isinstance(call, ApiError)]))
    return [call if isinstance(call, ApiError) else outcome_of(call, next(results)) for call in asked]


def split_batch_answer(status: int, payload: dict[str, Any], count: int) -> list[tuple[int, dict[str, Any]]]:
    """A batch call's answer as one (status, payload) per item, as if each had been sent
    alone: an answer other than 200 (a 421, a 503) is every item's answer. Raises
    ValueError when a 200 does not hold one result per item."""
    if status != 200:
        return [(status, payload)] * count
    data = payload.get("data")
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or len(results) != count:
        raise ValueError(f"a batch of {count} was answered without one result per item")
    answers = []
    for result in results:
        item_status = result.get("status") if isinstance(result, dict) else None
        if type(item_status) is not int:
            raise ValueError(f"not a batch result: {result!r:.200}")
        answers.append((item_status, {key: value for key, value in result.items() if key != "status"}))
    return answers


def read_json_object(request: IRequest, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object; 413 past ``max_bytes``, 400 for anything else malformed.

    :param max_bytes: 64 KiB for every public and most internal bodies; replication
        endpoints, behind the token, take larger batches.
    """
    declared = request.getHeader(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"The request body is larger than {max_bytes} bytes.")
    raw = request.content.read(max_bytes + 1) if request.content is not None else b""
    if len(raw) > max_bytes:
        raise ApiError(413, f"The request body is larger than {max_bytes} bytes.")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def require_positive_int(body: Mapping[str, Any], field: str, limit: int = 2**31 - 1) -> int:
    """A field that must be a whole number from 1 to ``limit`` (booleans and floats are not)."""
    value = body.get(field)
    if type(value) is not int or not 1 <= value <= limit:
        raise ApiError(400, f"'{field}' must be a whole number from 1 to {limit}.")
    return value


def require_string(body: Mapping[str, Any], field: str, max_length: int = 200) -> str:
    """A field that must be a non-empty string of at most ``max_length`` characters, all of
    them encodable (JSON admits a lone surrogate such as ``"\\ud800"``; UTF-8 and SQLite do not)."""
    value = body.get(field)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise ApiError(400, f"'{field}' must be a non-empty string of at most {max_length} characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"'{field}' holds a character that is not valid Unicode text.") from None
    return value


def require_token(request: IRequest, token: str | None) -> None:
    """401 unless the request carries ``Authorization: Bearer <token>``.

    ``token`` None means the service runs with ``--insecure``.
    """
    if token is None:
        return
    header = request.getHeader(b"authorization") or b""
    expected = b"Bearer " + token.encode("utf-8")
    if not hmac.compare_digest(header, expected):
        raise ApiError(401, "This endpoint needs the cluster token (Authorization: Bearer ...).")


def auth_headers(token: str | None) -> dict[bytes, list[bytes]]:
    """The headers an internal request carries."""
    if token is None:
        return {}
    return {b"Authorization": [b"Bearer " + token.encode("utf-8")]}


def install_json_errors(app: Klein) -> None:
    """Make every failure of ``app`` answer in the JSON error shape, without a traceback."""

    @app.handle_errors(ApiError)
    def _api_error(_instance: object, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, failure.value)

    @app.handle_errors(HTTPException)
    def _routing_error(_instance: object, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        code = exc.code or 400
        messages = {404: "No such resource.", 405: "Method not allowed on this resource."}
        return error_response(request, ApiError(code, messages.get(code, "Bad request.")))

    @app.handle_errors(Exception)
    def _unexpected(_instance: object, request: IRequest, failure: Failure) -> bytes:
        return unexpected_failure_response(request, failure)


def unexpected_failure_response(request: IRequest, failure: Failure) -> bytes:
    """Logs a failure no handler expected; the client hears a 500 without its details."""
    log.failure("Unexpected failure answering {method} {uri}", failure, method=request.method, uri=request.uri)
    return error_response(request, ApiError(500, "Internal error; the request may be retried."))


def path_info(request: IRequest) -> str | None:
    """The path as Klein routes it (percent-decoded segments), None when it is not UTF-8."""
    try:
        return "/" + b"/".join(request.postpath).decode("utf-8")
    except UnicodeDecodeError:
        return None


# Entries in a memo of what the URL map answers for a path; cleared when full, since
# paths come from clients.
ROUTE_MEMO_SIZE = 4096


class Utf8PathGuard(Resource):
    """Answers a URL that is not UTF-8 with a JSON 400 before Klein, which would log a
    traceback and answer in plain text.

    :param wrapped: a root, leaf resource such as a Klein app's.
    """

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        super().__init__()
        self._wrapped = wrapped

    def render(self, request: IRequest) -> Any:
        if path_info(request) is None:
            return error_response(request, ApiError(400, "The URL is not valid UTF-8."))
        return self._wrapped.render(request)


def api_root(app: Klein) -> IResource:
    """What a service serves for ``app`` (bound to its instance): JSON errors for URLs that
    are not UTF-8, and the routes through :class:`LeanKleinResource`."""
    return Utf8PathGuard(LeanKleinResource(app))


class LeanKleinResource(KleinResource):
    """Serves a Klein app as Klein's own resource does, for less CPU per request.

    Klein's ``render`` makes half a dozen closures per request, and one of them refers to
    itself and holds the request, so every request becomes garbage that only the cyclic
    collector frees: it took a tenth of each service's CPU under load. Here a request that
    matches a route calls it directly, through :class:`_Exchange`, whose references all go
    once the request has finished. Anything that matches no route (an unknown path, a wrong
    method, a trailing-slash redirect) goes to Klein's render, unchanged.

    A route answers bytes, or str; a failure goes to the app's error handlers, as in Klein.
    """

    def __init__(self, app: Klein) -> None:
        super().__init__(app)
        # The services route on the path and method only, never on the host.
        self._urls = app.url_map.bind("localhost")
        self._matches: dict[tuple[bytes, bytes], tuple[str, dict[str, Any]]] = {}

    def render(self, request: IRequest) -> Any:
        match = self._match(request)
        if match is None:
            return super().render(request)
        endpoint, arguments = match
        _Exchange(self._app, request).start(endpoint, arguments)
        return NOT_DONE_YET

    def _match(self, request: IRequest) -> tuple[str, dict[str, Any]] | None:
        key = (request.method, request.path)
        match = self._matches.get(key)
        if match is None:
            path = path_info(request)
            if path is None:
                return None
            try:
                rule, arguments = self._urls.match(path, request.method.decode("ascii"), return_rule=True)
            except (UnicodeDecodeError, HTTPException, RequestRedirect):
                return None
            if len(self._matches) >= ROUTE_MEMO_SIZE:
                self._matches.clear()
            match = self._matches[key] = (rule.endpoint, arguments)
        return match


class _Exchange:
    """One request answered by a route of :class:`LeanKleinResource`: the route's call,
    its error handlers, the write, and its cancellation if the client goes away first."""

    __slots__ = ("_app", "_request", "_ended")

    def __init__(self, app: Klein, request: IRequest) -> None:
        self._app = app
        self._request = request
        self._ended = False

    def start(self, endpoint: str, arguments: dict[str, Any]) -> None:
        answer = maybeDeferred(self._app.execute_endpoint, endpoint, self._request, **arguments)
        self._request.notifyFinish().addBoth(self._end, answer)
        answer.addErrback(self._handle_failure)
        answer.addCallback(self._write)
        answer.addErrback(self._write_failed)

    def _end(self, reason: object, answer: Deferred) -> None:
        self._ended = True
        if isinstance(reason, Failure):
            answer.cancel()  # the connection is gone: stop the route's work

    def _handle_failure(self, failure: Failure) -> Any:
        if self._ended:
            if not failure.check(CancelledError):
                log.failure("A route failed after its client went away", failure)
            return None
        # Klein keeps the handlers registered with ``handle_errors`` in this list, in order.
        for types, handler in self._app._error_handlers:
            if failure.check(*types):
                return self._app.execute_error_handler(handler, self._request, failure)
        return failure  # no handler: answered as unexpected

    def _write(self, body: object) -> None:
        if self._ended:
            return
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, bytes):
            raise TypeError(f"a route answered {type(body).__name__}, not bytes")
        # With its length known, the answer is not sent chunked: fewer writes here, and a
        # cheaper parse at the client (Twisted's chunked decoder was a visible cost).
        self._request.setHeader(b"content-length", b"%d" % len(body))
        self._request.write(body)
        self._request.finish()

    def _write_failed(self, failure: Failure) -> None:
        body = unexpected_failure_response(self._request, failure)
        if not self._ended:
            self._request.write(body)
            self._request.finish()


class BoundedRequest(Request):
    """Keeps at most one byte more of a body than any route reads, and discards the rest as
    it arrives: Twisted would otherwise buffer a body of any size (to a temporary file)
    before a route could refuse it. The route still sees that it is too large and answers
    413 (:func:`read_json_object`)."""

    _kept = 0

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length if length is not None and length <= MAX_PEER_BODY_BYTES else None)

    def handleContentChunk(self, data: bytes) -> None:
        room = MAX_PEER_BODY_BYTES + 1 - self._kept
        if room > 0:
            kept = data[:room]
            self._kept += len(kept)
            super().handleContentChunk(kept)


class QuietSite(Site):
    """A Site that writes no access-log line per request (metrics count requests), never
    shows a traceback to a client, and bounds what it buffers of a body."""

    displayTracebacks = False
    noisy = False
    requestFactory = BoundedRequest

    def __init__(self, resource: IResource, *args: Any, **kwargs: Any) -> None:
        # Our routes read JSON only; a Site would otherwise parse every POST's Content-Type
        # with the email package, looking for a form, at a measurable cost per request.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)

    def log(self, request: IRequest) -> None:
        pass


class HTTPPoolService(Service):
    """Closes a service's outgoing connections when it stops."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self._pool = pool

    def stopService(self) -> Deferred:
        super().stopService()
        return self._pool.closeCachedConnections()


class _QuietClientFactory(_HTTP11ClientFactory):
    """No "Starting factory" log line for every new outgoing connection."""

    noisy = False


def _persistent_pool(reactor: IReactorTime, max_per_host: int) -> HTTPConnectionPool:
    """``max_per_host`` covers the peak concurrency towards one peer, so bursts reuse
    connections instead of opening one per request."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = max_per_host
    pool.cachedConnectionTimeout = 120
    return pool


def make_http_client(reactor: IReactorTime, max_per_host: int = 64) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client on one persistent pool (the load client's); close the pool on stop."""
    pool = _persistent_pool(reactor, max_per_host)
    return HTTPClient(Agent(reactor, pool=pool)), pool


def make_internal_client(reactor: IReactorTime, max_per_host: int = 64) -> tuple[InternalClient, HTTPConnectionPool]:
    """The services' client for each other, on one persistent pool; close the pool on stop."""
    pool = _persistent_pool(reactor, max_per_host)
    endpoints = _EndpointPerPeer(_StandardEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), None, None))
    return InternalClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool)), pool


@implementer(IAgentEndpointFactory)
class _EndpointPerPeer:
    """Makes each peer's endpoint once. An Agent makes one per request, and IDNA-encoding
    the host name for it was about a twentieth of an order replica's CPU under load; the
    pool needs the endpoint only when it opens a connection."""

    def __init__(self, make: IAgentEndpointFactory) -> None:
        self._make = make
        self._endpoints: dict[tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._make.endpointForURI(uri)
        return endpoint


class JsonClient(Protocol):
    """What :func:`fetch_json` needs of a client: treq's ``HTTPClient`` (and its test
    double ``StubTreq``) or an :class:`InternalClient`. The response has ``code`` and
    ``content()``, which fires with the body."""

    def request(self, method: str, url: str, *, headers: Mapping[bytes, list[bytes]],
                data: bytes | None = None, allow_redirects: bool = False) -> Deferred[Any]: ...


class InternalClient:
    """A Twisted Agent with only what our services' calls to each other use.

    Per request, treq re-parses the URL twice, builds a cookie jar and consults it both
    ways, wraps redirect and gzip layers, and writes the body a reactor turn after the
    headers. On an order replica under load that was about a tenth of its CPU, and the
    turn of delay added latency to every internal call.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(self, method: str, url: str, *, headers: Mapping[bytes, list[bytes]],
                data: bytes | None = None, allow_redirects: bool = False) -> Deferred[_Answer]:
        """``allow_redirects`` is accepted for :class:`JsonClient`'s sake; no redirect is followed."""
        producer = _BytesProducer(data) if data is not None else None
        uri = url.encode("ascii") if url.isascii() else EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
        answer = self._agent.request(method.encode("ascii"), uri, Headers(dict(headers)), producer)
        return answer.addCallback(_read_answer)


@dataclass(frozen=True)
class _Answer:
    code: int
    body: bytes

    def content(self) -> Deferred[bytes]:
        return succeed(self.body)


def _read_answer(response: IResponse) -> Deferred[_Answer]:
    collector = _BodyCollector()
    response.deliverBody(collector)
    return collector.done.addCallback(lambda body: _Answer(response.code, body))


class _BodyCollector(protocol.Protocol):
    """Gathers a response body; cancelling drops the connection, whose state is then unknown
    (Twisted's readBody warns that it cannot do that on an HTTP/1.1 response)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred(lambda _: self.transport.stopProducing())

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


@implementer(IBodyProducer)
class _BytesProducer:
    """A body already in memory, written at once, in the same turn as the headers."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def fetch_json(
    client: JsonClient,
    method: str,
    url: str,
    *,
    reactor: IReactorTime,
    timeout: float,
    token: str | None = None,
    body: Any = None,
    headers: Mapping[bytes, list[bytes]] | None = None,
) -> Deferred[tuple[int, dict[str, Any]]]:
    """One JSON request; fires with (status, parsed body). Fails on transport failure or a
    non-JSON body, and with :class:`twisted.internet.defer.TimeoutError` past ``timeout``.

    :param timeout: seconds for the whole exchange, body included (treq's own timeout stops
        at the response headers, so a peer that stalls mid-body would hang the caller).
        Cancelling the Deferred from outside still fails it with CancelledError.
    :param reactor: the clock the timeout runs on.
    """
    all_headers = {**auth_headers(token), **(headers or {})}
    # Our services never redirect; skipping treq's redirect layer saves work on every call.
    kwargs: dict[str, Any] = {"headers": all_headers, "allow_redirects": False}
    if body is not None:
        kwargs["data"] = json.dumps(body).encode("utf-8")
        all_headers[b"Content-Type"] = [JSON_CONTENT_TYPE]
    exchange = Deferred.fromCoroutine(_exchange(client, method, url, kwargs))
    return exchange.addTimeout(timeout, reactor, onTimeoutCancel=_timed_out)


def _timed_out(result: Any, timeout: float) -> Any:
    # The cancelled exchange fails with whatever the layer it was in makes of the
    # cancellation (ResponseNeverReceived, ...); the caller hears that it timed out.
    if isinstance(result, Failure):
        raise defer.TimeoutError(timeout, "Deferred")
    return result


async def _exchange(client: JsonClient, method: str, url: str, kwargs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.request(method, url, **kwargs)
    # Our services answer UTF-8 JSON; treq.json_content would parse Content-Type with the
    # email package on every call, a measurable share of a replica's CPU under load.
    payload = json.loads(await response.content())
    if not isinstance(payload, dict):
        raise ValueError(f"{method} {url} answered with a JSON {type(payload).__name__}, not an object")
    return response.code, payload
