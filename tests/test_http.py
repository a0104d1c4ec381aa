"""The shared HTTP pieces: bounded request bodies."""

from __future__ import annotations

from twisted.web.test.requesthelper import DummyChannel

from toystore.http import MAX_PEER_BODY_BYTES, BoundedRequest


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
