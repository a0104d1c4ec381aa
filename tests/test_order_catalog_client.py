"""The order service's catalog client against the real catalog API in memory: calls made in
one reactor turn leave as one batch request, and each caller still sees what a single call
would have given it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from test_catalog_api import TOKEN, FakeFrontend, Harness
from toystore.http import ApiError
from toystore.leader import LoneLeader
from toystore.order.catalog_client import CatalogClient

_case = SynchronousTestCase()


class Recorder(Resource):
    """Records each request (method, path, JSON body) before ``wrapped`` answers it."""

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.requests: list[tuple[str, str, Any]] = []

    def render(self, request: IRequest) -> Any:
        raw = request.content.read()
        request.content.seek(0)
        self.requests.append((request.method.decode(), request.uri.decode(), json.loads(raw) if raw else None))
        return self.wrapped.render(request)


class Silent(Resource):
    """A catalog that takes requests and never answers."""

    isLeaf = True

    def render(self, request: IRequest) -> Any:
        return NOT_DONE_YET


class Garbled(Resource):
    """A proxy in front of the catalog answering an HTML error page."""

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(502)
        return b"<html>Bad gateway</html>"


class ShortAnswer(Resource):
    """A catalog that answers a batch with one result fewer than it was sent."""

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        items = json.loads(request.content.read())["reservations"]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"data": {"results": [{"status": 200, "data": {}}] * (len(items) - 1)}}).encode()


class Setup:
    """A CatalogClient on the catalog of a :class:`Harness` (or on ``resource``), through a recorder."""

    def __init__(self, tmp_path: Path, resource: IResource | None = None, token: str = TOKEN,
                 initial_stock: int = 100) -> None:
        self.catalog = Harness(tmp_path, FakeFrontend(), initial_stock=initial_stock)
        self.recorder = Recorder(resource or self.catalog.api.resource())
        self.stub = StubTreq(self.recorder)
        self.client = CatalogClient(LoneLeader("http://catalog.test", group="catalog"), self.stub,
                                    clock=self.catalog.clock, token=token)

    def pump(self) -> None:
        for _ in range(4):
            self.catalog.clock.advance(0)
            self.stub.flush()
            self.catalog.flush()

    def run(self, *calls: Any) -> list[defer.Deferred]:
        """Start ``calls`` in one turn, then let them finish."""
        started = [defer.ensureDeferred(call) for call in calls]
        self.pump()
        return started

    def posts(self) -> list[tuple[str, Any]]:
        return [(path, body) for method, path, body in self.recorder.requests if method == "POST"]


def refusal(d: defer.Deferred) -> tuple[int, str]:
    error = _case.failureResultOf(d, ApiError).value
    return error.code, error.message


def test_reserves_of_one_turn_leave_as_one_request(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    first, second = s.run(s.client.reserve("Tux", 2, "r1", 3), s.client.reserve("Fox", 1, "r2", 3))
    assert (_case.successResultOf(first), _case.successResultOf(second)) == (None, None)
    assert s.posts() == [("/buy_qty", {"reservations": [
        {"name": "Tux", "quantity": 2, "request_id": "r1", "term": 3},
        {"name": "Fox", "quantity": 1, "request_id": "r2", "term": 3}]})]
    assert (s.catalog.stock("Tux"), s.catalog.stock("Fox")) == (98, 99)
    s.run(s.client.reserve("Tux", 1, "r3", 3))
    assert len(s.posts()) == 2


def test_each_reserve_of_a_batch_gets_its_own_answer(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    ok, unknown, short, bad = s.run(
        s.client.reserve("Tux", 2, "r1", 3), s.client.reserve("Unicorn", 1, "r2", 3),
        s.client.reserve("Fox", 101, "r3", 3), s.client.reserve("Fox", 0, "r4", 3))
    assert _case.successResultOf(ok) is None
    assert refusal(unknown) == (404, "There is no toy named 'Unicorn'.")
    assert refusal(short) == (409, "Not enough Fox in stock: 100 left, 101 asked.")
    code, message = refusal(bad)  # the catalog refusing our own request is not the client's fault
    assert code == 503 and "400" in message
    assert len(s.posts()) == 1
    assert (s.catalog.stock("Tux"), s.catalog.stock("Fox")) == (98, 100)


@pytest.mark.parametrize("catalog", ["silent", "garbled", "wrong token", "one result short"])
def test_a_failed_batch_fails_every_call_with_503(tmp_path: Path, catalog: str) -> None:
    resource = {"silent": Silent(), "garbled": Garbled(), "wrong token": None, "one result short": ShortAnswer()}[catalog]
    s = Setup(tmp_path, resource, token="wrong" if catalog == "wrong token" else TOKEN)
    calls = s.run(s.client.reserve("Tux", 2, "r1", 3), s.client.reserve("Fox", 1, "r2", 3))
    s.catalog.clock.advance(3.0)  # the client's timeout
    for call in calls:
        error = _case.failureResultOf(call, ApiError).value
        assert (error.code, error.headers) == (503, {"Retry-After": "1"})
    assert len(s.posts()) == 1
    assert s.catalog.stock("Tux") == 100


def test_settles_of_one_turn_leave_as_one_request_per_action_and_term(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    for n in range(4):
        s.catalog.call("POST", "/buy_qty", {"name": "Tux", "quantity": 1, "request_id": f"r{n}", "term": 3})
    calls = s.run(s.client.settle("confirm", "r0", 3), s.client.settle("release", "r1", 3),
                  s.client.settle("confirm", "nope", 3), s.client.settle("release", "r2", 3),
                  s.client.settle("confirm", "r3", 4))
    assert [_case.successResultOf(call) for call in calls] == [200, 200, 404, 200, 200]
    assert s.posts() == [("/confirm", {"request_ids": ["r0", "nope"], "term": 3}),
                         ("/release", {"request_ids": ["r1", "r2"], "term": 3}),
                         ("/confirm", {"request_ids": ["r3"], "term": 4})]
    assert s.catalog.stock() == 98


def test_settle_answers_a_refused_batch_s_status_for_each_item(tmp_path: Path) -> None:
    s = Setup(tmp_path, token="wrong")
    calls = s.run(s.client.settle("release", "r1", 3), s.client.settle("release", "r2", 3))
    assert [_case.successResultOf(call) for call in calls] == [401, 401]


def test_settle_through_a_dead_catalog_is_503(tmp_path: Path) -> None:
    s = Setup(tmp_path, Silent())
    (call,) = s.run(s.client.settle("confirm", "r1", 3))
    s.catalog.clock.advance(3.0)
    assert _case.failureResultOf(call, ApiError).value.code == 503
