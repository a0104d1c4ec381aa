"""The shared HTTP pieces: bounded request bodies, and a deadline on the whole exchange."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyChannel

from toystore.http import MAX_PEER_BODY_BYTES, BoundedRequest, fetch_json


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
