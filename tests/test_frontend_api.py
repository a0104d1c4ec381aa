"""The frontend's public API in memory: a StubTreq client, a fake catalog and fake order replicas."""

from __future__ import annotations

import json
from typing import Any

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest

from test_frontend_leader import TOKEN, FakeNetwork
from toystore.frontend.api import FrontendApi
from toystore.frontend.cache import LruCache
from toystore.frontend.leader import OrderCaller, OrderLeaderTracker
from toystore.http import api_root
from toystore.leader import LoneLeader

CATALOG_URL = "http://catalog.test:8001"


class FakeCatalog:
    app = Klein()

    def __init__(self) -> None:
        self.products: dict[str, dict[str, Any]] = {"Tux": {"name": "Tux", "price": 15.99, "quantity": 100,
                                                            "internal": "not for clients"}}
        self.queries: list[tuple[str, str | None]] = []
        self.held: Deferred[None] | None = None  # when set, answers wait for it

    @app.route("/query/<string:name>", methods=["GET"])
    async def query(self, request: IRequest, name: str) -> bytes:
        auth = request.getHeader(b"authorization")
        self.queries.append((name, auth.decode() if auth else None))
        if self.held is not None:
            await self.held
        request.setHeader(b"content-type", b"application/json")
        if name not in self.products:
            request.setResponseCode(404)
            return json.dumps({"error": {"code": 404, "message": "No such product."}}).encode()
        return json.dumps({"data": self.products[name]}).encode()


class Frontend:
    """One frontend wired to fakes, and helpers to talk to it."""

    def __init__(self, cache_size: int = 8, replicas: int = 3) -> None:
        self.clock = Clock()
        self.network = FakeNetwork()
        self.network.add_replicas(replicas)
        self.catalog = FakeCatalog()
        self.network.add(CATALOG_URL, self.catalog.app.resource())
        urls = {ident: self.network.url_of(ident) for ident in self.network.replicas}
        self.cache: LruCache[dict[str, Any]] = LruCache(cache_size)
        self.tracker = OrderLeaderTracker(urls, self.network, self.clock, TOKEN)  # type: ignore[arg-type]
        caller = OrderCaller(self.tracker, self.network, self.clock, TOKEN)  # type: ignore[arg-type]
        self.api = FrontendApi(LoneLeader(CATALOG_URL, group="catalog"), self.cache, self.tracker, caller,
                               self.network, self.clock, TOKEN)  # type: ignore[arg-type]
        self.client = StubTreq(api_root(self.api.app))

    def lead(self, leader: int, term: int = 1) -> None:
        for ident, replica in self.network.replicas.items():
            if ident == leader:
                replica.lead(term)
            else:
                replica.follow(leader, term)

    def flush(self) -> None:
        for _ in range(5):  # batches leave at the next reactor turn; an answer may send another
            self.clock.advance(0)
            self.network.flush()
            self.client.flush()

    def start(self, method: str, path: str, body: Any = None, headers: dict[bytes, list[bytes]] | None = None,
              raw: bytes | None = None) -> Deferred[tuple[int, dict[str, str], Any]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.client.request(method, f"http://frontend.test{path}", data=data, headers=headers or {})

        async def read(response: Any) -> tuple[int, dict[str, str], Any]:
            content = await response.content()
            plain = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
            return response.code, plain, json.loads(content)

        return d.addCallback(lambda response: Deferred.fromCoroutine(read(response)))

    def finish(self, d: Deferred[Any], advance: float = 0.0, step: float = 0.05) -> tuple[int, dict[str, str], Any]:
        results: list[Any] = []
        d.addBoth(results.append)
        self.flush()
        elapsed = 0.0
        while not results and elapsed < advance:
            self.clock.advance(step)
            self.flush()
            elapsed += step
        assert results, "no answer"
        if hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def call(self, method: str, path: str, body: Any = None, headers: dict[bytes, list[bytes]] | None = None,
             raw: bytes | None = None, advance: float = 0.0) -> tuple[int, dict[str, str], Any]:
        return self.finish(self.start(method, path, body, headers, raw), advance)

    def order_requests(self) -> list[dict[str, Any]]:
        return [order for replica in self.network.replicas.values() for order in replica.orders_received()]


@pytest.fixture
def frontend() -> Frontend:
    return Frontend()


# ---------------------------------------------------------------- products


def test_product_miss_then_hit(frontend: Frontend) -> None:
    code, _, body = frontend.call("GET", "/products/Tux")
    assert (code, body) == (200, {"data": {"name": "Tux", "price": 15.99, "quantity": 100}})
    assert frontend.catalog.queries == [("Tux", f"Bearer {TOKEN}")]
    code, _, body = frontend.call("GET", "/products/Tux")
    assert (code, body["data"]["quantity"]) == (200, 100)
    assert len(frontend.catalog.queries) == 1
    code, _, health = frontend.call("GET", "/health")
    assert health["data"]["cache"] == {"size": 1, "capacity": 8, "hits": 1, "misses": 1, "invalidations": 0}


def test_cache_size_zero_asks_catalog_every_time() -> None:
    frontend = Frontend(cache_size=0)
    for _ in range(2):
        assert frontend.call("GET", "/products/Tux")[0] == 200
    assert len(frontend.catalog.queries) == 2


def test_unknown_product_is_404(frontend: Frontend) -> None:
    code, _, body = frontend.call("GET", "/products/Unicorn")
    assert (code, body["error"]["code"]) == (404, 404)
    code, _, _ = frontend.call("GET", "/products/" + "x" * 300)
    assert code == 404


def test_catalog_unreachable_is_503_with_retry_after(frontend: Frontend) -> None:
    frontend.network.down.add(CATALOG_URL)
    code, headers, body = frontend.call("GET", "/products/Tux")
    assert (code, headers["retry-after"], body["error"]["code"]) == (503, "1", 503)
    frontend.network.down.clear()
    assert frontend.call("GET", "/products/Tux")[0] == 200


def test_catalog_timeout_is_503(frontend: Frontend) -> None:
    frontend.network.hanging.add(CATALOG_URL)
    code, _, _ = frontend.call("GET", "/products/Tux", advance=3.5)
    assert code == 503


def test_invalidation_makes_next_query_refetch(frontend: Frontend) -> None:
    frontend.call("GET", "/products/Tux")
    frontend.catalog.products["Tux"]["quantity"] = 7
    code, _, body = frontend.call("POST", "/invalidate", {"name": "Tux"},
                                  headers={b"Authorization": [f"Bearer {TOKEN}".encode()]})
    assert (code, body) == (200, {"data": {"invalidated": True}})
    assert frontend.call("GET", "/products/Tux")[2]["data"]["quantity"] == 7
    assert len(frontend.catalog.queries) == 2


def test_invalidation_during_fetch_keeps_stale_value_out(frontend: Frontend) -> None:
    frontend.catalog.held = Deferred()
    first = frontend.start("GET", "/products/Tux")
    second = frontend.start("GET", "/products/Tux")
    frontend.flush()
    assert len(frontend.catalog.queries) == 1  # concurrent misses share one fetch
    frontend.call("POST", "/invalidate", {"name": "Tux"}, headers={b"Authorization": [f"Bearer {TOKEN}".encode()]})
    frontend.catalog.held, held = None, frontend.catalog.held
    held.callback(None)
    assert frontend.finish(first)[0] == 200
    assert frontend.finish(second)[0] == 200
    frontend.call("GET", "/products/Tux")
    assert len(frontend.catalog.queries) == 2  # the value fetched before the invalidation was not kept


def test_invalidate_needs_token(frontend: Frontend) -> None:
    code, _, body = frontend.call("POST", "/invalidate", {"name": "Tux"})
    assert (code, body["error"]["code"]) == (401, 401)
    code, _, _ = frontend.call("POST", "/invalidate", {"name": "Tux"}, headers={b"Authorization": [b"Bearer wrong"]})
    assert code == 401


def test_invalidating_all_makes_every_next_query_refetch(frontend: Frontend) -> None:
    frontend.catalog.products["Fox"] = {"name": "Fox", "price": 17.49, "quantity": 100}
    frontend.call("GET", "/products/Tux")
    frontend.call("GET", "/products/Fox")
    frontend.catalog.products["Tux"]["quantity"] = 7
    frontend.catalog.products["Fox"]["quantity"] = 8
    code, _, body = frontend.call("POST", "/invalidate", {"all": True},
                                  headers={b"Authorization": [f"Bearer {TOKEN}".encode()]})
    assert (code, body) == (200, {"data": {"invalidated": True}})
    assert frontend.call("GET", "/products/Tux")[2]["data"]["quantity"] == 7
    assert frontend.call("GET", "/products/Fox")[2]["data"]["quantity"] == 8
    assert len(frontend.catalog.queries) == 4


@pytest.mark.parametrize("raw", [b"[]", b'{"name": 3}', b'{"nam', b"", b'{"all": false}', b'{"all": 1}'])
def test_invalidate_bad_body_is_400(frontend: Frontend, raw: bytes) -> None:
    code, _, _ = frontend.call("POST", "/invalidate", raw=raw, headers={b"Authorization": [f"Bearer {TOKEN}".encode()]})
    assert code == 400


# ---------------------------------------------------------------- orders


def test_order_success_with_generated_key_and_invalidates_cache(frontend: Frontend) -> None:
    frontend.lead(1)
    frontend.call("GET", "/products/Tux")
    code, _, body = frontend.call("POST", "/orders", {"name": "Tux", "quantity": 2})
    assert (code, body) == (200, {"data": {"order_number": 0}})
    [sent] = frontend.order_requests()
    assert sent["name"] == "Tux" and sent["quantity"] == 2
    assert len(sent["request_id"]) == 32
    frontend.call("GET", "/products/Tux")
    assert len(frontend.catalog.queries) == 2
    second = frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1})[2]
    assert second == {"data": {"order_number": 1}}
    assert len({body["request_id"] for body in frontend.order_requests()}) == 2


def test_an_order_is_timed_to_the_leaders_answer_and_to_its_own(frontend: Frontend) -> None:
    frontend.lead(1)
    stages: list[str] = []
    frontend.api.stages.listeners.append(lambda stage, seconds: stages.append(stage))
    assert frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1})[0] == 200
    assert stages == ["leader answered", "answered"]
    assert frontend.call("POST", "/orders", {"name": "Tux", "quantity": 50})[0] == 409
    assert stages == ["leader answered", "answered", "leader answered"]  # a refusal is not timed as answered


def test_order_carries_token_to_leader(frontend: Frontend) -> None:
    frontend.lead(2)
    frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1})
    auths = {auth for r in frontend.network.replicas.values() for _m, path, _b, auth in r.requests}
    assert auths == {f"Bearer {TOKEN}"}


def test_idempotency_key_is_passed_through(frontend: Frontend) -> None:
    frontend.lead(1)
    headers = {b"Idempotency-Key": [b"client-key-1"]}
    first = frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1}, headers=headers)
    again = frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1}, headers=headers)
    assert first[2] == again[2] == {"data": {"order_number": 0}}
    assert [body["request_id"] for body in frontend.order_requests()] == ["client-key-1", "client-key-1"]


def test_421_hint_is_followed(frontend: Frontend) -> None:
    frontend.lead(3)
    frontend.tracker.note_leader_hint(1, None)
    code, _, body = frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1})
    assert (code, body) == (200, {"data": {"order_number": 0}})
    sent = frontend.order_requests()
    assert len(sent) == 2 and sent[0]["request_id"] == sent[1]["request_id"]


@pytest.mark.parametrize("failure", ["refused", "503"])
def test_leader_dies_mid_request_and_retry_reaches_new_leader(frontend: Frontend, failure: str) -> None:
    frontend.lead(3)
    frontend.tracker.note_leader_hint(3, None)
    if failure == "refused":
        frontend.network.kill(3)
    else:
        frontend.network.replicas[3].order_status = 503
        frontend.network.replicas[3].follow(None, 1)
    frontend.network.replicas[2].lead(2)
    frontend.network.replicas[1].follow(2, 2)
    code, _, body = frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1}, advance=2)
    assert (code, body) == (200, {"data": {"order_number": 0}})
    assert frontend.network.orders == [{"name": "Tux", "quantity": 1}]
    keys = {body["request_id"] for body in frontend.order_requests()}
    assert len(keys) == 1
    assert frontend.call("GET", "/health")[2]["data"]["leader_id"] == 2


def test_every_replica_down_is_503_after_budget(frontend: Frontend) -> None:
    for ident in frontend.network.replicas:
        frontend.network.kill(ident)
    d = frontend.start("POST", "/orders", {"name": "Tux", "quantity": 1})
    results: list[Any] = []
    d.addBoth(lambda result: (results.append(result), result)[1])
    frontend.flush()
    frontend.clock.pump([0.05] * 140)
    frontend.flush()
    assert results == []
    code, headers, body = frontend.finish(d, advance=1.0)
    assert (code, headers["retry-after"], body["error"]["code"]) == (503, "1", 503)


@pytest.mark.parametrize("status,message", [(404, "No such product."), (409, "Not enough stock.")])
def test_order_refusals_are_passed_through(frontend: Frontend, status: int, message: str) -> None:
    frontend.lead(1)
    body = {"name": "Tux", "quantity": 50} if status == 409 else {"name": "Unicorn", "quantity": 1}
    code, _, answer = frontend.call("POST", "/orders", body)
    assert (code, answer) == (status, {"error": {"code": status, "message": message}})
    assert len(frontend.order_requests()) == 1


@pytest.mark.parametrize("raw", [
    b'{"quantity": 1}',
    b'{"name": "Tux"}',
    b'{"name": 5, "quantity": 1}',
    b'{"name": "", "quantity": 1}',
    b'{"name": "Tux", "quantity": "1"}',
    b'{"name": "Tux", "quantity": true}',
    b'{"name": "Tux", "quantity": 1.0}',
    b'{"name": "Tux", "quantity": 0}',
    b'{"name": "Tux", "quantity": -3}',
    b'{"name": "Tux", "quantity": 2147483648}',
    b'{"name": "Tux", "quantity": 99999999999999999999999999}',
    b'["Tux", 1]',
    b'"Tux"',
    b'{"name": "Tux", "quant',
    b"\xff\xfe",
    b"",
])
def test_bad_order_body_is_400_and_reaches_no_replica(frontend: Frontend, raw: bytes) -> None:
    frontend.lead(1)
    code, _, body = frontend.call("POST", "/orders", raw=raw)
    assert (code, body["error"]["code"]) == (400, 400)
    assert frontend.order_requests() == []


@pytest.mark.parametrize("key", [b"k" * 201, b""])
def test_bad_idempotency_key_is_400(frontend: Frontend, key: bytes) -> None:
    frontend.lead(1)
    code, _, _ = frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1}, headers={b"Idempotency-Key": [key]})
    assert code == 400
    assert frontend.order_requests() == []


def test_longest_idempotency_key_is_accepted(frontend: Frontend) -> None:
    frontend.lead(1)
    code, _, _ = frontend.call("POST", "/orders", {"name": "Tux", "quantity": 1},
                               headers={b"Idempotency-Key": [b"k" * 200]})
    assert code == 200


def test_body_over_64_kib_is_413(frontend: Frontend) -> None:
    frontend.lead(1)
    raw = json.dumps({"name": "Tux", "quantity": 1, "pad": "x" * 70000}).encode()
    code, _, body = frontend.call("POST", "/orders", raw=raw)
    assert (code, body["error"]["code"]) == (413, 413)
    assert frontend.order_requests() == []


# ---------------------------------------------------------------- order lookup


def test_get_order_found_and_missing(frontend: Frontend) -> None:
    frontend.lead(2)
    frontend.call("POST", "/orders", {"name": "Tux", "quantity": 3})
    code, _, body = frontend.call("GET", "/orders/0")
    assert (code, body) == (200, {"data": {"number": 0, "name": "Tux", "quantity": 3}})
    code, _, body = frontend.call("GET", "/orders/5")
    assert (code, body["error"]["code"]) == (404, 404)


def test_get_order_follows_failover(frontend: Frontend) -> None:
    frontend.lead(3)
    frontend.call("POST", "/orders", {"name": "Tux", "quantity": 3})
    frontend.network.kill(3)
    frontend.lead(1, term=2)
    code, _, body = frontend.call("GET", "/orders/0", advance=2)
    assert (code, body["data"]["number"]) == (200, 0)


@pytest.mark.parametrize("number", ["abc", "-1", "1.5", "1e3", "%C2%B2"])
def test_get_order_with_bad_number_is_400(frontend: Frontend, number: str) -> None:
    frontend.lead(1)
    code, _, body = frontend.call("GET", f"/orders/{number}")
    assert (code, body["error"]["code"]) == (400, 400)


# ---------------------------------------------------------------- routing and health


def test_unknown_route_and_wrong_method_answer_json(frontend: Frontend) -> None:
    code, _, body = frontend.call("GET", "/nope")
    assert (code, body["error"]["code"]) == (404, 404)
    code, _, body = frontend.call("GET", "/orders")
    assert (code, body["error"]["code"]) == (405, 405)


def test_non_utf8_url_is_400(frontend: Frontend) -> None:
    code, _, body = frontend.call("GET", "/products/%FF")
    assert (code, body["error"]["code"]) == (400, 400)
    assert frontend.catalog.queries == []


def test_health_reports_leader(frontend: Frontend) -> None:
    code, _, body = frontend.call("GET", "/health")
    assert (code, body["data"]["status"], body["data"]["leader_id"]) == (200, "ok", None)
    frontend.lead(2)
    frontend.tracker.start()
    frontend.flush()
    assert frontend.call("GET", "/health")[2]["data"]["leader_id"] == 2
    frontend.tracker.stop()
