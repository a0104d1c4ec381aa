"""The catalog's HTTP API in memory: every route, every refusal, and invalidations that reach
every frontend before a buy answers."""

from __future__ import annotations

from urllib.parse import quote

import json
from pathlib import Path
from typing import Any

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from toystore.catalog.api import CatalogApi
from toystore.catalog.invalidation import Invalidator
from toystore.catalog.store import CatalogStore, open_database, schema
from toystore.db import Database, connect
from toystore.http import MAX_BATCH_BODY_BYTES

TOKEN = "s3cret"
FRONTENDS = ["http://front-a:8000", "http://front-b:8000"]
_case = SynchronousTestCase()


class FakeFrontend(Resource):
    """Records every invalidation; answers at once with ``code``, or holds the request when ``hold``."""

    isLeaf = True

    def __init__(self, code: int = 200, hold: bool = False) -> None:
        super().__init__()
        self.code = code
        self.hold = hold
        self.received: list[tuple[str, bytes, dict[str, Any], bytes | None]] = []
        self.pending: list[IRequest] = []

    def render_POST(self, request: IRequest) -> bytes | int:
        host = request.getHeader(b"host").decode()
        self.received.append((host, request.path, json.loads(request.content.read()), request.getHeader(b"authorization")))
        if self.hold:
            self.pending.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b'{"data": {"invalidated": true}}'

    def answer_all(self) -> None:
        for request in self.pending:
            request.write(b'{"data": {"invalidated": true}}')
            request.finish()
        self.pending = []

    def names(self) -> list[tuple[str, str]]:
        return [(host, body["name"]) for host, _, body, _ in self.received]


class Harness:
    """The catalog's API on a real SQLite store.

    :param commit_later: run each commit a turn later, as the database thread would, so
        that writes issued in one turn join one group commit (inline, each commits alone).
    """

    def __init__(self, tmp_path: Path, frontend: FakeFrontend, initial_stock: int = 100,
                 commit_later: bool = False) -> None:
        self.clock = Clock()
        self.frontend = frontend
        self.front_stub = StubTreq(frontend)
        path = tmp_path / "catalog.sqlite3"
        if commit_later:
            self.db = Database(connect(path, schema(initial_stock)), self.clock,
                               runner=lambda blocking: deferLater(self.clock, 0, blocking))
        else:
            self.db = open_database(path, self.clock, initial_stock)
        self.store = CatalogStore(self.db, self.clock)
        invalidator = Invalidator(self.front_stub, FRONTENDS, self.clock, TOKEN)
        self.api = CatalogApi(self.store, invalidator, TOKEN, restock_to=100)
        self.stub = StubTreq(self.api.resource())

    def flush(self) -> None:
        for _ in range(3):
            self.clock.advance(0)
            self.stub.flush()
            self.front_stub.flush()

    def send(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             token: str | None = TOKEN) -> Any:
        """Start a request; returns its Deferred response."""
        headers = {b"Authorization": [f"Bearer {token}".encode()]} if token is not None else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.stub.request(method, "http://catalog.test" + path, data=data, headers=headers)
        self.flush()
        return d

    def answer(self, d: Any) -> tuple[int, Any]:
        self.flush()
        response = _case.successResultOf(d)
        content = treq.json_content(response)
        self.flush()
        return response.code, _case.successResultOf(content)

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return self.answer(self.send(method, path, body, **kwargs))

    def stock(self, name: str = "Tux") -> int:
        code, body = self.call("GET", f"/query/{name}")
        assert code == 200
        return body["data"]["quantity"]

    def ledger(self) -> dict[str, Any]:
        return self.call("GET", "/ledger")[1]["data"]


@pytest.fixture
def frontend() -> FakeFrontend:
    return FakeFrontend()


@pytest.fixture
def h(tmp_path: Path, frontend: FakeFrontend) -> Harness:
    return Harness(tmp_path, frontend)


def assert_error(result: tuple[int, Any], code: int) -> str:
    status, body = result
    assert status == code, body
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def test_health_is_public(h: Harness) -> None:
    assert h.call("GET", "/health", token=None) == (200, {"data": {"status": "ok"}})


def test_query(h: Harness) -> None:
    assert h.call("GET", "/query/Tux") == (200, {"data": {"name": "Tux", "price": 15.99, "quantity": 100}})


@pytest.mark.parametrize("path", ["/query/Unicorn", "/query/%E2%98%83", "/query/T%75x%20",
                                  "/query/Tux/more", "/nowhere"])
def test_unknown_names_and_routes_are_404(h: Harness, path: str) -> None:
    assert_error(h.call("GET", path), 404)


@pytest.mark.parametrize("method,path", [("GET", "/query/%FF%FE"), ("POST", "/buy_qty/%C3")])
def test_non_utf8_path_is_400_without_a_traceback(h: Harness, method: str, path: str) -> None:
    with capturedLogs() as events:
        assert_error(h.call(method, path), 400)
    assert [e for e in events if "log_failure" in e] == []
    assert h.stock() == 100


@pytest.mark.parametrize("method,path", [("GET", "/buy_qty"), ("POST", "/query/Tux"), ("DELETE", "/ledger"),
                                         ("POST", "/health"), ("GET", "/release")])
def test_wrong_method_is_405(h: Harness, method: str, path: str) -> None:
    assert_error(h.call(method, path), 405)


BUY = {"name": "Tux", "quantity": 2, "request_id": "r1", "term": 1}


@pytest.mark.parametrize("token", [None, "wrong", ""])
@pytest.mark.parametrize("method,path,body", [
    ("GET", "/query/Tux", None), ("POST", "/buy_qty", BUY), ("POST", "/release", {"request_id": "r0", "term": 9}),
    ("POST", "/confirm", {"request_id": "r0", "term": 9}), ("GET", "/reservations", None),
    ("POST", "/restock", {}), ("GET", "/ledger", None),
])
def test_internal_endpoints_need_the_token(h: Harness, token: str | None, method: str, path: str, body: Any) -> None:
    h.call("POST", "/buy_qty", {"name": "Fox", "quantity": 100, "request_id": "r0"})
    before = h.ledger()
    assert_error(h.call(method, path, body, token=token), 401)
    assert h.ledger() == before


def test_buy(h: Harness) -> None:
    assert h.call("POST", "/buy_qty", BUY) == (
        200, {"data": {"request_id": "r1", "name": "Tux", "quantity": 2, "remaining": 98}})
    assert h.stock() == 98
    assert h.ledger()["highest_term"] == 1


def test_buy_term_is_optional(h: Harness) -> None:
    code, _ = h.call("POST", "/buy_qty", {"name": "Tux", "quantity": 1, "request_id": "r1"})
    assert code == 200
    _, body = h.call("GET", "/reservations")
    assert body["data"]["reservations"][0]["term"] == 0


def test_buy_retry_answers_the_same(h: Harness) -> None:
    first = h.call("POST", "/buy_qty", BUY)
    h.call("POST", "/buy_qty", {**BUY, "request_id": "r2"})
    assert h.call("POST", "/buy_qty", BUY) == first
    assert h.stock() == 96


def test_buy_unknown_toy(h: Harness) -> None:
    assert_error(h.call("POST", "/buy_qty", {**BUY, "name": "Unicorn"}), 404)


def test_buy_short_stock_changes_nothing(h: Harness) -> None:
    before = h.ledger()
    message = assert_error(h.call("POST", "/buy_qty", {**BUY, "quantity": 101}), 409)
    assert "Not enough" in message
    assert h.ledger() == before
    assert h.call("GET", "/reservations")[1] == {"data": {"reservations": [], "next": None}}


@pytest.mark.parametrize("body", [
    {"quantity": 1, "request_id": "r1"},
    {"name": "Tux", "request_id": "r1"},
    {"name": "Tux", "quantity": 1},
    {"name": 7, "quantity": 1, "request_id": "r1"},
    {"name": "Tux", "quantity": True, "request_id": "r1"},
    {"name": "Tux", "quantity": 1.0, "request_id": "r1"},
    {"name": "Tux", "quantity": 1.5, "request_id": "r1"},
    {"name": "Tux", "quantity": "1", "request_id": "r1"},
    {"name": "Tux", "quantity": 0, "request_id": "r1"},
    {"name": "Tux", "quantity": -1, "request_id": "r1"},
    {"name": "Tux", "quantity": 10**30, "request_id": "r1"},
    {"name": "Tux", "quantity": None, "request_id": "r1"},
    {"name": "Tux", "quantity": 1, "request_id": ""},
    {"name": "Tux", "quantity": 1, "request_id": "x" * 201},
    {"name": "Tux", "quantity": 1, "request_id": 5},
    {"name": "Tux", "quantity": 1, "request_id": "r1", "term": -1},
    {"name": "Tux", "quantity": 1, "request_id": "r1", "term": "2"},
    {"name": "Tux", "quantity": 1, "request_id": "r1", "term": False},
    {"name": "Tux", "quantity": 1, "request_id": "r1", "term": None},
    [1, 2],
    "Tux",
    None,
])
def test_buy_bad_body_is_400_and_changes_nothing(h: Harness, body: Any) -> None:
    before = h.ledger()
    assert_error(h.call("POST", "/buy_qty", raw=json.dumps(body).encode()), 400)
    assert h.ledger() == before
    assert h.frontend.received == []


@pytest.mark.parametrize("raw", [b'{"name": "Tux", "quantity": 1', b"", b"\xff\xfe", b"NaN-ish"])
def test_malformed_json_is_400(h: Harness, raw: bytes) -> None:
    assert_error(h.call("POST", "/buy_qty", raw=raw), 400)
    assert h.stock() == 100


def test_body_over_the_batch_limit_is_413(h: Harness) -> None:
    raw = json.dumps({**BUY, "pad": "x" * MAX_BATCH_BODY_BYTES}).encode()
    assert_error(h.call("POST", "/buy_qty", raw=raw), 413)
    assert h.stock() == 100


def test_buy_pushes_to_every_frontend_and_answers_without_waiting_for_them(tmp_path: Path) -> None:
    frontend = FakeFrontend(hold=True)
    h = Harness(tmp_path, frontend)
    d = h.send("POST", "/buy_qty", BUY)
    assert sorted(frontend.names()) == [("front-a:8000", "Tux"), ("front-b:8000", "Tux")]
    assert {(path, auth) for _, path, _, auth in frontend.received} == {(b"/invalidate", f"Bearer {TOKEN}".encode())}
    assert h.answer(d)[0] == 200  # while both frontends still hold their push


@pytest.mark.parametrize("frontend", [FakeFrontend(hold=True), FakeFrontend(code=500)])
def test_dead_frontend_does_not_fail_the_buy(h: Harness, frontend: FakeFrontend) -> None:
    with capturedLogs() as events:
        d = h.send("POST", "/buy_qty", BUY)
        h.clock.advance(0.5)
        assert h.answer(d)[0] == 200
    warnings = [e for e in events if e["log_level"] == LogLevel.warn and "Invalidation" in e["log_format"]]
    assert sorted((e["frontend"], e["name"]) for e in warnings) == [(url, "Tux") for url in FRONTENDS]
    assert h.stock() == 98


def test_release(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.frontend.received.clear()
    ok = (200, {"data": {"request_id": "r1", "state": "released"}})
    assert h.call("POST", "/release", {"request_id": "r1", "term": 1}) == ok
    assert sorted(h.frontend.names()) == [("front-a:8000", "Tux"), ("front-b:8000", "Tux")]
    assert h.stock() == 100
    assert h.call("POST", "/release", {"request_id": "r1", "term": 1}) == ok
    assert h.stock() == 100


def test_release_refusals(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.call("POST", "/buy_qty", {**BUY, "request_id": "r2", "term": 3})
    assert "fenced" in assert_error(h.call("POST", "/release", {"request_id": "r1", "term": 2}), 409)
    assert h.stock() == 96
    assert_error(h.call("POST", "/release", {"request_id": "nope", "term": 3}), 404)
    assert_error(h.call("POST", "/release", {"request_id": "r1"}), 400)
    assert_error(h.call("POST", "/release", {"term": 3}), 400)
    h.call("POST", "/confirm", {"request_id": "r1", "term": 3})
    assert_error(h.call("POST", "/release", {"request_id": "r1", "term": 3}), 409)
    assert h.stock() == 96


def test_rehold_through_the_api(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.call("POST", "/release", {"request_id": "r1", "term": 2})
    assert "fenced" in assert_error(h.call("POST", "/buy_qty", BUY), 409)
    assert h.call("POST", "/buy_qty", {**BUY, "term": 2})[1]["data"]["remaining"] == 98


def test_confirm(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    ok = (200, {"data": {"request_id": "r1", "state": "confirmed"}})
    assert h.call("POST", "/confirm", {"request_id": "r1", "term": 4}) == ok
    assert h.call("POST", "/confirm", {"request_id": "r1", "term": 4}) == ok
    assert h.ledger()["highest_term"] == 4
    assert h.ledger()["reservations"] == {"held": 0, "confirmed": 1, "released": 0}
    assert_error(h.call("POST", "/confirm", {"request_id": "nope", "term": 4}), 404)
    assert_error(h.call("POST", "/confirm", {"request_id": "r1", "term": 1.5}), 400)


def test_confirm_after_release_is_409_and_logged(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.call("POST", "/release", {"request_id": "r1", "term": 1})
    with capturedLogs() as events:
        assert_error(h.call("POST", "/confirm", {"request_id": "r1", "term": 1}), 409)
    assert [e["request_id"] for e in events if e["log_level"] == LogLevel.error] == ["r1"]


def test_reservations(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.clock.advance(20)
    h.call("POST", "/buy_qty", {**BUY, "request_id": "r2"})
    h.call("POST", "/confirm", {"request_id": "r2", "term": 1})
    h.clock.advance(5)
    code, body = h.call("GET", "/reservations?state=held&older_than=10")
    assert (code, body) == (200, {"data": {"reservations": [
        {"request_id": "r1", "name": "Tux", "quantity": 2, "state": "held", "term": 1, "age": 25.0}], "next": None}})
    assert [r["request_id"] for r in h.call("GET", "/reservations")[1]["data"]["reservations"]] == ["r1", "r2"]
    assert h.call("GET", "/reservations?state=held&older_than=30")[1] == {"data": {"reservations": [], "next": None}}


def test_reservations_come_in_pages_oldest_first(h: Harness) -> None:
    for i in range(7):
        h.call("POST", "/buy_qty", {**BUY, "quantity": 1, "request_id": f"r{i}"})
        h.clock.advance(1)
    h.call("POST", "/confirm", {"request_id": "r3", "term": 1})
    seen, query = [], "/reservations?state=held&limit=2"
    while True:
        page = h.call("GET", query)[1]["data"]
        assert len(page["reservations"]) <= 2
        seen += [r["request_id"] for r in page["reservations"]]
        if page["next"] is None:
            break
        query = f"/reservations?state=held&limit=2&after={quote(page['next'])}"
    assert seen == ["r0", "r1", "r2", "r4", "r5", "r6"]


@pytest.mark.parametrize("query", ["state=lost", "state=", "older_than=-1", "older_than=abc", "older_than=nan",
                                   "older_than=inf", "state=%FF", "limit=0", "limit=1025", "limit=-3", "limit=x",
                                   "after=nonsense", "after=inf,r1", "after="])
def test_reservations_bad_query_is_400(h: Harness, query: str) -> None:
    assert_error(h.call("GET", f"/reservations?{query}"), 400)


def test_restock(tmp_path: Path, frontend: FakeFrontend) -> None:
    h = Harness(tmp_path, frontend, initial_stock=2)
    for i, name in enumerate(["Tux", "Fox", "Lego"]):
        h.call("POST", "/buy_qty", {"name": name, "quantity": 2, "request_id": f"r{i}"})
    frontend.received.clear()
    assert h.call("POST", "/restock", {"name": "Tux"}) == (200, {"data": {"restocked": {"Tux": 100}}})
    assert sorted(frontend.names()) == [("front-a:8000", "Tux"), ("front-b:8000", "Tux")]
    assert h.call("POST", "/restock", raw=b"") == (200, {"data": {"restocked": {"Fox": 100, "Lego": 100}}})
    assert h.call("POST", "/restock", {}) == (200, {"data": {"restocked": {}}})
    assert_error(h.call("POST", "/restock", {"name": "Unicorn"}), 404)
    assert_error(h.call("POST", "/restock", {"name": 3}), 400)
    assert_error(h.call("POST", "/restock", raw=b"[]"), 400)
    assert h.ledger()["toys"]["Fox"] == {"price": 17.49, "quantity": 100, "initial": 2, "restocked": 100}


def test_a_price_change_is_durable_and_pushed_to_every_frontend(h: Harness, frontend: FakeFrontend) -> None:
    assert h.call("POST", "/price", {"name": "Tux", "price": 12.5}) == (200, {"data": {"name": "Tux", "price": 12.5}})
    assert sorted(frontend.names()) == [("front-a:8000", "Tux"), ("front-b:8000", "Tux")]
    assert h.call("GET", "/query/Tux")[1]["data"]["price"] == 12.5
    assert h.ledger()["toys"]["Tux"]["price"] == 12.5


@pytest.mark.parametrize("body", [{"name": "Tux", "price": -1}, {"name": "Tux", "price": "cheap"},
                                  {"name": "Tux", "price": True}, {"name": "Tux"}, {"price": 3.0},
                                  {"name": "Tux", "price": 1e300}])
def test_a_bad_price_is_400_and_changes_nothing(h: Harness, frontend: FakeFrontend, body: Any) -> None:
    assert_error(h.call("POST", "/price", body), 400)
    assert h.call("GET", "/query/Tux")[1]["data"]["price"] == 15.99
    assert frontend.received == []


def test_the_price_of_no_toy_is_404(h: Harness) -> None:
    assert "Unicorn" in assert_error(h.call("POST", "/price", {"name": "Unicorn", "price": 1.0}), 404)


def test_ledger(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    ledger = h.ledger()
    assert ledger["toys"]["Tux"] == {"price": 15.99, "quantity": 98, "initial": 100, "restocked": 0}
    assert len(ledger["toys"]) == 10
    assert ledger["reservations"] == {"held": 1, "confirmed": 0, "released": 0}
    assert ledger["highest_term"] == 1


def test_insecure_api_needs_no_token(tmp_path: Path, frontend: FakeFrontend) -> None:
    clock = Clock()
    store = CatalogStore(open_database(tmp_path / "c.sqlite3", clock, 100), clock)
    api = CatalogApi(store, Invalidator(StubTreq(frontend), FRONTENDS, clock, None), None, restock_to=100)
    stub = StubTreq(api.resource())
    d = stub.get("http://catalog.test/query/Tux")
    stub.flush()
    assert _case.successResultOf(d).code == 200


def test_invalidations_are_coalesced_per_round_and_callers_wait_for_a_later_push() -> None:
    frontend = FakeFrontend(hold=True)
    stub = StubTreq(frontend)
    invalidator = Invalidator(stub, FRONTENDS[:1], Clock(), TOKEN)
    finished: list[str] = []
    defer.ensureDeferred(invalidator.invalidate(["Tux"])).addCallback(lambda _: finished.append("first"))
    stub.flush()
    # Changes made while the first push is in flight wait for the next round, together.
    for label, name in (("second", "Tux"), ("third", "Tux"), ("fourth", "Fox")):
        defer.ensureDeferred(invalidator.invalidate([name])).addCallback(lambda _, l=label: finished.append(l))
    stub.flush()
    assert frontend.names() == [("front-a:8000", "Tux")]
    frontend.answer_all()
    stub.flush()
    assert finished == ["first"]
    assert sorted(frontend.names()) == [("front-a:8000", "Fox"), ("front-a:8000", "Tux"), ("front-a:8000", "Tux")]
    frontend.answer_all()
    stub.flush()
    assert finished == ["first", "second", "third", "fourth"]
    assert invalidator.pushes == 3


# ---------------------------------------------------------------- batches


def batch_results(result: tuple[int, Any]) -> list[dict[str, Any]]:
    status, body = result
    assert status == 200, body
    return body["data"]["results"]


def test_buy_batch_answers_each_item_as_its_single_call_would(h: Harness) -> None:
    h.call("POST", "/buy_qty", {**BUY, "request_id": "used"})
    items = [
        BUY,
        {**BUY, "request_id": "r2", "name": "Unicorn"},
        {**BUY, "request_id": "r3", "quantity": 97},
        {**BUY, "request_id": "used", "quantity": 3},
        {**BUY, "request_id": "r4", "quantity": 0},
        "Tux",
        {"name": "Fox", "quantity": 5, "request_id": "r5"},
    ]
    results = batch_results(h.call("POST", "/buy_qty", {"reservations": items}))
    assert [r["status"] for r in results] == [200, 404, 409, 409, 400, 400, 200]
    assert results[0] == {"status": 200, "data": {"request_id": "r1", "name": "Tux", "quantity": 2, "remaining": 96}}
    assert results[6] == {"status": 200, "data": {"request_id": "r5", "name": "Fox", "quantity": 5, "remaining": 95}}
    assert "JSON object" in results[5]["error"]["message"]
    # A refused item changed nothing: its single call now gets the very same refusal.
    for item, result in zip(items[1:5], results[1:5]):
        assert h.call("POST", "/buy_qty", item) == (result["status"], {"error": result["error"]})
    assert (h.stock("Tux"), h.stock("Fox")) == (96, 95)
    assert [r["request_id"] for r in h.call("GET", "/reservations")[1]["data"]["reservations"]] == ["r1", "r5", "used"]


def test_a_repeated_batch_answers_the_same_and_changes_nothing_more(h: Harness) -> None:
    batch = {"reservations": [BUY, {**BUY, "request_id": "r2", "name": "Unicorn"},
                              {**BUY, "request_id": "r3", "name": "Fox", "quantity": 7}]}
    first = h.call("POST", "/buy_qty", batch)
    assert [r["status"] for r in batch_results(first)] == [200, 404, 200]
    ledger = h.ledger()
    assert h.call("POST", "/buy_qty", batch) == first
    assert h.ledger() == ledger


def test_buy_batch_items_are_fenced_each_by_its_own_term(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.call("POST", "/release", {"request_id": "r1", "term": 3})
    results = batch_results(h.call("POST", "/buy_qty", {"reservations": [
        {**BUY, "term": 2}, {**BUY, "term": 3}]}))
    assert results[0]["status"] == 409 and "fenced" in results[0]["error"]["message"]
    assert results[1] == {"status": 200, "data": {"request_id": "r1", "name": "Tux", "quantity": 2, "remaining": 98}}
    assert h.stock() == 98


@pytest.mark.parametrize("path,body", [
    ("/buy_qty", {"reservations": []}),
    ("/buy_qty", {"reservations": [BUY] * 1025}),
    ("/buy_qty", {"reservations": BUY}),
    ("/confirm", {"request_ids": [], "term": 1}),
    ("/confirm", {"request_ids": ["r1"]}),
    ("/release", {"request_ids": ["r1"] * 1025, "term": 1}),
    ("/release", {"request_ids": "r1", "term": 1}),
    ("/release", {"request_ids": ["r1"], "term": -1}),
])
def test_a_batch_out_of_bounds_is_400_and_changes_nothing(h: Harness, path: str, body: Any) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.frontend.received.clear()
    before = h.ledger()
    assert_error(h.call("POST", path, body), 400)
    assert h.ledger() == before
    assert h.frontend.received == []


def test_a_full_batch_may_be_larger_than_a_single_call(h: Harness) -> None:
    # 1024 items with long escaped request ids: far over the 64 KiB a single call may send.
    refused = [{"name": "x" * 201, "quantity": 1, "request_id": "é" * 200} for _ in range(1023)]
    raw = json.dumps({"reservations": [*refused, BUY]}).encode()
    assert len(raw) > 1024 * 1024
    results = batch_results(h.call("POST", "/buy_qty", raw=raw))
    assert [r["status"] for r in results] == [400] * 1023 + [200]
    assert h.stock() == 98


def test_a_batch_pushes_one_round_of_invalidations(tmp_path: Path) -> None:
    frontend = FakeFrontend(hold=True)
    h = Harness(tmp_path, frontend)
    items = [BUY, {**BUY, "request_id": "r2", "name": "Fox"}, {**BUY, "request_id": "r3"},
             {**BUY, "request_id": "r4", "name": "Unicorn"}]
    d = h.send("POST", "/buy_qty", {"reservations": items})
    assert sorted(frontend.names()) == [("front-a:8000", "Fox"), ("front-a:8000", "Tux"),
                                        ("front-b:8000", "Fox"), ("front-b:8000", "Tux")]
    assert [r["status"] for r in batch_results(h.answer(d))] == [200, 200, 200, 404]
    assert len(frontend.received) == 4


def test_a_release_batch_answers_only_once_every_frontend_took_its_push(tmp_path: Path) -> None:
    frontend = FakeFrontend(hold=True)
    h = Harness(tmp_path, frontend)
    h.send("POST", "/buy_qty", BUY)
    frontend.answer_all()
    d = h.send("POST", "/release", {"request_ids": ["r1"], "term": 1})
    _case.assertNoResult(d)
    frontend.answer_all()
    assert [r["status"] for r in batch_results(h.answer(d))] == [200]


def test_a_batch_that_changed_nothing_pushes_nothing(h: Harness) -> None:
    results = batch_results(h.call("POST", "/buy_qty", {"reservations": [{**BUY, "name": "Unicorn"}, {}]}))
    assert [r["status"] for r in results] == [404, 400]
    assert h.frontend.received == []


def test_a_batch_costs_about_one_commit(tmp_path: Path, frontend: FakeFrontend) -> None:
    h = Harness(tmp_path, frontend, commit_later=True)
    items = [{**BUY, "request_id": f"r{n}", "quantity": 1} for n in range(8)]
    assert [r["status"] for r in batch_results(h.call("POST", "/buy_qty", {"reservations": items}))] == [200] * 8
    # The first write starts a commit at once; the seven others join the next one.
    assert h.db.commits <= 2
    assert h.stock() == 92


def test_release_batch(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.call("POST", "/buy_qty", {**BUY, "request_id": "r2", "name": "Fox"})
    h.call("POST", "/buy_qty", {**BUY, "request_id": "r3"})
    h.call("POST", "/confirm", {"request_id": "r3", "term": 1})
    h.frontend.received.clear()
    with capturedLogs() as events:
        results = batch_results(h.call("POST", "/release", {"request_ids": ["r1", "nope", "r3", 5, "r2"], "term": 2}))
    assert [r["status"] for r in results] == [200, 404, 409, 400, 200]
    assert results[0] == {"status": 200, "data": {"request_id": "r1", "state": "released"}}
    assert results[4] == {"status": 200, "data": {"request_id": "r2", "state": "released"}}
    assert (h.stock("Tux"), h.stock("Fox")) == (98, 100)
    releases = [e for e in events if "Released" in e["log_format"]]
    assert [(e["request_id"], e["name"], e["term"]) for e in releases] == [("r1", "Tux", 2), ("r2", "Fox", 2)]
    assert sorted(h.frontend.names()) == [("front-a:8000", "Fox"), ("front-a:8000", "Tux"),
                                          ("front-b:8000", "Fox"), ("front-b:8000", "Tux")]
    # Releasing again is harmless, item by item, as the single call is.
    assert h.call("POST", "/release", {"request_ids": ["r2"], "term": 2}) == (200, {"data": {"results": [results[4]]}})


def test_a_release_batch_from_an_old_term_is_fenced_item_by_item(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.call("POST", "/buy_qty", {**BUY, "request_id": "r2", "term": 3})
    results = batch_results(h.call("POST", "/release", {"request_ids": ["r1", "r2"], "term": 2}))
    assert [r["status"] for r in results] == [409, 409]
    assert all("fenced" in r["error"]["message"] for r in results)
    assert h.call("POST", "/release", {"request_id": "r1", "term": 2}) == (409, {"error": results[0]["error"]})
    assert h.stock() == 96
    assert [r["status"] for r in batch_results(
        h.call("POST", "/release", {"request_ids": ["r1", "r2"], "term": 3}))] == [200, 200]
    assert h.stock() == 100


def test_confirm_batch(h: Harness) -> None:
    h.call("POST", "/buy_qty", BUY)
    h.call("POST", "/buy_qty", {**BUY, "request_id": "r2"})
    h.call("POST", "/release", {"request_id": "r2", "term": 1})
    h.frontend.received.clear()
    with capturedLogs() as events:
        results = batch_results(h.call("POST", "/confirm", {"request_ids": ["r1", "r2", "nope", ""], "term": 4}))
    assert [r["status"] for r in results] == [200, 409, 404, 400]
    assert results[0] == {"status": 200, "data": {"request_id": "r1", "state": "confirmed"}}
    assert h.call("POST", "/confirm", {"request_id": "nope", "term": 4}) == (404, {"error": results[2]["error"]})
    assert [e["request_id"] for e in events if e["log_level"] == LogLevel.error] == ["r2"]
    ledger = h.ledger()
    assert (ledger["highest_term"], ledger["reservations"]) == (4, {"held": 0, "confirmed": 1, "released": 1})
    assert h.frontend.received == []
