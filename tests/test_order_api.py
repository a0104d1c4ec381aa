"""The order replica's routes in memory, over a fake replica."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from toystore.http import MAX_BATCH_BODY_BYTES, ApiError
from toystore.order.api import OrderApi
from toystore.order.replica import place_one_by_one
from toystore.order.state import Order, OrderCommand, OrderStateMachine

TOKEN = "secret"
AUTH = {b"Authorization": [b"Bearer secret"]}


@dataclass
class FakeReplica:
    orders: OrderStateMachine = field(default_factory=OrderStateMachine)
    leader: bool = True
    peer_messages: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    preferred: list[int] = field(default_factory=list)

    async def place_order(self, request_id: str, name: str, quantity: int) -> Order:
        if not self.leader:
            raise ApiError(421, "Not the leader.", details={"leader_id": 2, "leader_url": "http://r2"})
        if name == "Nope":
            raise ApiError(404, "No such toy.")
        return self.orders.apply(OrderCommand(request_id, name, quantity)).order

    async def place_orders(self, commands: Sequence[OrderCommand]) -> list[Order | Failure]:
        return await place_one_by_one(self, commands)

    async def read_order(self, number: int) -> Order | None:
        return self.orders.get(number)

    def status(self) -> dict[str, Any]:
        return {"id": 1, "role": "leader", "term": 3, "leader_id": 1, "commit_index": 4, "last_index": 4}

    def set_leader(self, replica_id: int) -> None:
        self.preferred.append(replica_id)

    async def receive_peer(self, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if "type" not in body:
            raise ApiError(400, "Not a Raft message.")
        self.peer_messages.append((endpoint, body))
        return {"messages": []}


def _call(stub: StubTreq, method: str, path: str, body: Any = None, headers: Mapping[bytes, list[bytes]] = AUTH,
          raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    d: Deferred = stub.request(method, "http://replica" + path, data=data, headers=dict(headers))
    response = SynchronousTestCase().successResultOf(d)
    content = SynchronousTestCase().successResultOf(response.content())
    return response.code, json.loads(content)


@pytest.fixture
def replica() -> FakeReplica:
    return FakeReplica()


@pytest.fixture
def stub(replica: FakeReplica) -> StubTreq:
    return StubTreq(OrderApi(replica, TOKEN).resource())


def test_order_then_read_it_back(stub: StubTreq) -> None:
    assert _call(stub, "POST", "/order", {"name": "Tux", "quantity": 2, "request_id": "k"}) == \
        (200, {"data": {"order_number": 0}})
    assert _call(stub, "GET", "/orders/0") == (200, {"data": {"number": 0, "name": "Tux", "quantity": 2}})
    assert _call(stub, "GET", "/latest_order_no") == (200, {"data": {"latest_order_no": 0}})


def test_orders_since(stub: StubTreq, replica: FakeReplica) -> None:
    for i in range(3):
        replica.orders.apply(OrderCommand(f"k{i}", "Fox", i + 1))
    assert [o["number"] for o in _call(stub, "GET", "/orders_since")[1]["data"]["orders"]] == [0, 1, 2]
    assert [o["number"] for o in _call(stub, "GET", "/orders_since?after=-1")[1]["data"]["orders"]] == [0, 1, 2]
    assert _call(stub, "GET", "/orders_since?after=1")[1]["data"]["orders"] == \
        [{"number": 2, "name": "Fox", "quantity": 3, "request_id": "k2"}]
    assert _call(stub, "GET", "/orders_since?after=x")[0] == 400
    assert _call(stub, "GET", "/latest_order_no")[1] == {"data": {"latest_order_no": 2}}


def test_empty_replica_reports_minus_one(stub: StubTreq) -> None:
    assert _call(stub, "GET", "/latest_order_no") == (200, {"data": {"latest_order_no": -1}})


@pytest.mark.parametrize("body", [
    {"quantity": 1, "request_id": "k"},
    {"name": "Tux", "request_id": "k"},
    {"name": "Tux", "quantity": 1},
    {"name": "Tux", "quantity": True, "request_id": "k"},
    {"name": "Tux", "quantity": 1.0, "request_id": "k"},
    {"name": "Tux", "quantity": "1", "request_id": "k"},
    {"name": "Tux", "quantity": 0, "request_id": "k"},
    {"name": "Tux", "quantity": -3, "request_id": "k"},
    {"name": "Tux", "quantity": 10**30, "request_id": "k"},
    {"name": 5, "quantity": 1, "request_id": "k"},
    {"name": "Tux", "quantity": 1, "request_id": ""},
    [1, 2],
])
def test_bad_order_bodies_are_400_and_change_nothing(stub: StubTreq, replica: FakeReplica, body: Any) -> None:
    code, payload = _call(stub, "POST", "/order", body)
    assert code == 400 and payload["error"]["code"] == 400 and payload["error"]["message"]
    assert replica.orders.latest_number == -1


def test_a_batch_answers_each_order_as_it_would_alone(stub: StubTreq, replica: FakeReplica) -> None:
    batch = [{"name": "Tux", "quantity": 2, "request_id": "a"}, {"name": "Nope", "quantity": 1, "request_id": "b"},
             {"name": "Tux", "quantity": 0, "request_id": "c"}, "not an order",
             {"name": "Fox", "quantity": 1, "request_id": "d"}, {"name": "Tux", "quantity": 2, "request_id": "a"}]
    code, payload = _call(stub, "POST", "/order", {"orders": batch})
    assert code == 200
    results = payload["data"]["results"]
    assert [r["status"] for r in results] == [200, 404, 400, 400, 200, 200]
    assert [r.get("data") for r in results] == [{"order_number": 0}, None, None, None, {"order_number": 1},
                                                {"order_number": 0}]
    assert results[1]["error"] == {"code": 404, "message": "No such toy."}
    assert replica.orders.latest_number == 1


def test_a_batch_at_a_follower_carries_the_leader_hint_per_order(stub: StubTreq, replica: FakeReplica) -> None:
    replica.leader = False
    code, payload = _call(stub, "POST", "/order", {"orders": [{"name": "Tux", "quantity": 1, "request_id": "a"}]})
    assert (code, payload["data"]["results"][0]["status"]) == (200, 421)
    assert payload["data"]["results"][0]["error"]["leader_url"] == "http://r2"


@pytest.mark.parametrize("orders", [[], {"name": "Tux"}, [{"name": "Tux", "quantity": 1, "request_id": "k"}] * 1025])
def test_a_batch_holds_1_to_1024_orders(stub: StubTreq, replica: FakeReplica, orders: Any) -> None:
    code, payload = _call(stub, "POST", "/order", {"orders": orders})
    assert code == 400 and "1 to 1024" in payload["error"]["message"]
    assert replica.orders.latest_number == -1


def test_truncated_json_and_huge_bodies(stub: StubTreq, replica: FakeReplica) -> None:
    assert _call(stub, "POST", "/order", raw=b'{"name": "Tux", "quan')[0] == 400
    assert _call(stub, "POST", "/order", raw=b"x" * (MAX_BATCH_BODY_BYTES + 1))[0] == 413
    assert replica.orders.latest_number == -1


def test_every_internal_route_needs_the_token(stub: StubTreq, replica: FakeReplica) -> None:
    for method, path, body in [("POST", "/order", {"name": "Tux", "quantity": 1, "request_id": "k"}),
                               ("GET", "/orders/0", None), ("GET", "/health_check", None),
                               ("GET", "/latest_order_no", None), ("GET", "/orders_since", None),
                               ("POST", "/set_leader", {"id": 2}), ("POST", "/append_entries", {"type": "append"})]:
        for headers in ({}, {b"Authorization": [b"Bearer wrong"]}):
            code, payload = _call(stub, method, path, body, headers=headers)
            assert (code, payload["error"]["code"]) == (401, 401), path
    assert replica.orders.latest_number == -1 and replica.preferred == [] and replica.peer_messages == []
    assert _call(stub, "GET", "/health", headers={}) == (200, {"data": {"status": "ok"}})


def test_order_numbers_in_paths(stub: StubTreq) -> None:
    assert _call(stub, "GET", "/orders/0")[0] == 404
    for bad in ("abc", "-1", "1.5", "%C3%A9", "99999999999999999999999"):
        assert _call(stub, "GET", f"/orders/{bad}")[0] == 400, bad


def test_follower_answers_421_with_a_hint(stub: StubTreq, replica: FakeReplica) -> None:
    replica.leader = False
    code, payload = _call(stub, "POST", "/order", {"name": "Tux", "quantity": 1, "request_id": "k"})
    assert code == 421
    assert payload["error"]["leader_id"] == 2 and payload["error"]["leader_url"] == "http://r2"


def test_catalog_errors_pass_through(stub: StubTreq) -> None:
    code, payload = _call(stub, "POST", "/order", {"name": "Nope", "quantity": 1, "request_id": "k"})
    assert (code, payload["error"]["code"]) == (404, 404)


def test_health_check_set_leader_and_peer_routes(stub: StubTreq, replica: FakeReplica) -> None:
    assert _call(stub, "GET", "/health_check")[1]["data"]["role"] == "leader"
    assert _call(stub, "POST", "/set_leader", {"id": 3}) == (200, {"data": {"accepted": True}})
    assert _call(stub, "POST", "/set_leader", {"id": "3"})[0] == 400
    assert replica.preferred == [3]
    for endpoint in ("append_entries", "request_vote", "commit_entries", "truncate_log", "timeout_now"):
        assert _call(stub, "POST", f"/{endpoint}", {"type": "x"})[0] == 200
    assert _call(stub, "POST", "/append_entries", {"no": "type"})[0] == 400
    assert [e for e, _ in replica.peer_messages] == ["append_entries", "request_vote", "commit_entries",
                                                      "truncate_log", "timeout_now"]


def test_unknown_routes_and_methods_answer_json(stub: StubTreq) -> None:
    assert _call(stub, "GET", "/nope") == (404, {"error": {"code": 404, "message": "No such resource."}})
    assert _call(stub, "DELETE", "/order")[0] == 405


def test_absurdly_deep_json_is_a_400_not_a_crash(stub: StubTreq, replica: FakeReplica) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert _call(stub, "POST", "/commit_entries", raw=b'{"type": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")[0] == 400
    assert _call(stub, "POST", "/order", raw=deep)[0] in (400, 413)
    assert replica.peer_messages == []
