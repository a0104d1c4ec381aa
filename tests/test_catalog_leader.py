"""Clients of a replicated catalog find its leader: the order replicas' CatalogClient (the
saga's reserve, settle and listing calls) and the frontend (product queries, the status
page), against fake catalog members in memory, every timer on a task.Clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.iweb import IRequest

from test_frontend_api import Frontend
from test_frontend_leader import TOKEN, FakeNetwork, run, settle
from toystore.frontend.api import FrontendApi
from toystore.frontend.leader import OrderCaller
from toystore.frontend.service import build_frontend
from toystore.http import ApiError, api_root
from toystore.leader import HealthChecks, LeaderCaller, LeaderTracker, LoneLeader
from toystore.order.catalog_client import CatalogClient

LONE_URL = "http://catalog.test:8001"


class CatalogGroup:
    """What the members hold alike, as their replicated log would make it: stock, the
    reservations by request id, and how many restocks were done."""

    def __init__(self) -> None:
        self.stock = {"Tux": 10}
        self.reservations: dict[str, dict[str, Any]] = {}
        self.settled: dict[str, str] = {}
        self.restocks = 0


class FakeCatalogMember:
    """A catalog member: its health check has the order replica's shape; as a follower it
    answers writes and linearizable reads with 421 and the leader's hint; as the leader it
    reserves idempotently by request id. ``forced`` answers every write and read with that
    status after doing the work, as a leader that lost its leadership before it could answer."""

    app = Klein()

    def __init__(self, member_id: int, group: CatalogGroup, network: FakeNetwork, members: list[int]) -> None:
        self.member_id = member_id
        self.group = group
        self.network = network
        self.members = members
        self.role, self.term, self.leader_id = "follower", 1, None
        self.forced: int | None = None
        self.unsure_once: set[str] = set()  # request ids answered 503 inside a 200, once each
        self.requests: list[tuple[str, str, Any]] = []

    def lead(self, term: int) -> None:
        self.role, self.term, self.leader_id = "leader", term, self.member_id

    def follow(self, leader_id: int | None, term: int) -> None:
        self.role, self.term, self.leader_id = "follower", term, leader_id

    def paths(self, path: str) -> list[Any]:
        """The bodies of the requests to ``path`` (None for a GET)."""
        return [body for _, p, body in self.requests if p.split("?")[0] == path]

    def _answer(self, request: IRequest, code: int, payload: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(payload).encode()

    def _record(self, request: IRequest) -> Any:
        raw = request.content.read() if request.content is not None else b""
        body = json.loads(raw) if raw else None
        self.requests.append((request.method.decode(), request.uri.decode(), body))
        return body

    def _refusal(self, request: IRequest) -> bytes | None:
        if self.role == "leader":
            return None
        details: dict[str, Any] = {"leader_id": self.leader_id or 0}
        if self.leader_id:
            details["leader_url"] = member_url(self.leader_id)
        return self._answer(request, 421, {"error": {"code": 421, "message": "not the catalog leader", **details}})

    def _done(self, request: IRequest, payload: dict[str, Any]) -> bytes:
        if self.forced is not None:
            return self._answer(request, self.forced, {"error": {"code": self.forced, "message": "forced"}})
        return self._answer(request, 200, payload)

    @app.route("/health_check", methods=["GET"])
    def health_check(self, request: IRequest) -> bytes:
        self._record(request)
        return self._answer(request, 200, {"data": {
            "id": self.member_id, "role": self.role, "term": self.term, "leader_id": self.leader_id,
            "commit_index": 0, "last_index": 0,
            "members": [{"id": i, "url": member_url(i), "voter": True} for i in self.members]}})

    @app.route("/buy_qty", methods=["POST"])
    def buy_qty(self, request: IRequest) -> bytes:
        body = self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        return self._done(request, {"data": {"results": [self._reserve(item) for item in body["reservations"]]}})

    def _reserve(self, item: dict[str, Any]) -> dict[str, Any]:
        if item["request_id"] in self.unsure_once:
            self.unsure_once.discard(item["request_id"])
            return {"status": 503, "error": {"code": 503, "message": "outcome not known yet"}}
        first = self.group.reservations.get(item["request_id"])
        if first is not None:
            return first  # a repeated request id changes nothing and answers as the first time did
        if self.group.stock.get(item["name"], 0) < item["quantity"]:
            return {"status": 409, "error": {"code": 409, "message": "Not enough stock."}}
        self.group.stock[item["name"]] -= item["quantity"]
        answer = {"status": 200, "data": {"request_id": item["request_id"], "state": "held"}}
        self.group.reservations[item["request_id"]] = answer
        return answer

    @app.route("/<any(confirm, release):action>", methods=["POST"])
    def settle(self, request: IRequest, action: str) -> bytes:
        body = self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        for request_id in body["request_ids"]:
            self.group.settled[request_id] = action
        return self._done(request, {"data": {"results": [{"status": 200, "data": {}} for _ in body["request_ids"]]}})

    @app.route("/reservations", methods=["GET"])
    def reservations(self, request: IRequest) -> bytes:
        self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        held = [{"request_id": rid, "name": "Tux", "quantity": 1, "age": 5.0}
                for rid in self.group.reservations if rid not in self.group.settled]
        return self._done(request, {"data": {"reservations": held, "next": None}})

    @app.route("/restock", methods=["POST"])
    def restock(self, request: IRequest) -> bytes:
        self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        self.group.restocks += 1
        self.group.stock["Tux"] = 100
        return self._done(request, {"data": {"restocked": {"Tux": 100}}})

    @app.route("/query/<string:name>", methods=["GET"])
    def query(self, request: IRequest, name: str) -> bytes:
        self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        return self._done(request, {"data": {"name": name, "price": 15.99, "quantity": self.group.stock[name]}})

    @app.route("/ledger", methods=["GET"])
    def ledger(self, request: IRequest) -> bytes:
        self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        toys = {name: {"price": 15.99, "quantity": quantity} for name, quantity in self.group.stock.items()}
        return self._done(request, {"data": {"toys": toys, "reservations": {"held": 0}, "oldest_held_age": 0}})


def member_url(member_id: int) -> str:
    return f"http://catalog{member_id}.test:800{member_id}"


class Catalog:
    """Three catalog members on a fake network, and a catalog client of the order service."""

    def __init__(self, network: FakeNetwork | None = None, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.network = network or FakeNetwork()
        self.group = CatalogGroup()
        self.members = {i: FakeCatalogMember(i, self.group, self.network, [1, 2, 3]) for i in (1, 2, 3)}
        for i, member in self.members.items():
            self.network.add(member_url(i), member.app.resource())
        self.leadership = LeaderTracker({i: member_url(i) for i in self.members}, self.network,  # type: ignore[arg-type]
                                        self.clock, TOKEN, group="catalog")
        self.client = CatalogClient(self.leadership, self.network, clock=self.clock, token=TOKEN)  # type: ignore[arg-type]

    def elect(self, leader: int, term: int) -> None:
        for i, member in self.members.items():
            if i == leader:
                member.lead(term)
            else:
                member.follow(leader, term)

    def settle(self) -> None:
        settle(self.clock, self.network)

    def run(self, coroutine: Any, advance: float = 0.0) -> Any:
        """The result of ``coroutine`` (raised, if it fails), the clock advanced up to ``advance`` s."""
        return run(self.clock, self.network, coroutine, advance)

    def crash_after_next(self, member_id: int, path: str) -> None:
        """The member takes the next request to ``path``, then dies before it answers."""
        real_request = self.network.request

        def request(method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            if not url.startswith(member_url(member_id) + path):
                return real_request(method, url, **kwargs)
            real_request(method, url, **kwargs)  # delivered: the member acts on it...
            self.network.down.add(member_url(member_id))  # ...and is gone before it answers
            self.network.request = real_request  # type: ignore[method-assign]
            return fail(ResponseNeverReceived([Failure(ConnectionLost())]))

        self.network.request = request  # type: ignore[method-assign]

    def health_checks(self) -> int:
        return sum(len(member.paths("/health_check")) for member in self.members.values())


# ---------------------------------------------------------------- the order service's catalog client


def test_the_client_finds_the_leader_among_three_members_and_reserves_there() -> None:
    catalog = Catalog()
    catalog.elect(3, term=2)
    assert catalog.run(catalog.client.reserve("Tux", 2, "r1", term=7)) is None
    assert [len(m.paths("/health_check")) for m in catalog.members.values()] == [1, 1, 1]
    assert [m.paths("/buy_qty") for m in catalog.members.values()] == [
        [], [], [{"reservations": [{"name": "Tux", "quantity": 2, "request_id": "r1", "term": 7}]}]]
    assert catalog.group.stock["Tux"] == 8


def test_a_421_hint_is_followed_at_once_and_the_batch_stays_one_request() -> None:
    catalog = Catalog()
    catalog.elect(2, term=3)
    catalog.leadership.note_leader_hint(1, None)  # a belief from before the catalog's election
    outcomes: list[Any] = []
    for key in ("a", "b"):
        Deferred.fromCoroutine(catalog.client.reserve("Tux", 1, key, term=7)).addBoth(outcomes.append)
    catalog.settle()
    assert outcomes == [None, None]
    assert catalog.clock.seconds() == 0 and catalog.health_checks() == 0
    batch = {"reservations": [{"name": "Tux", "quantity": 1, "request_id": key, "term": 7} for key in ("a", "b")]}
    assert [catalog.members[i].paths("/buy_qty") for i in (1, 2, 3)] == [[batch], [batch], []]
    assert catalog.leadership.leader_id == 2
    assert catalog.group.stock["Tux"] == 8


def test_a_buy_the_crashed_leader_took_is_sent_again_to_the_new_leader_and_reserved_once() -> None:
    catalog = Catalog()
    catalog.elect(1, term=2)
    catalog.leadership.note_leader_hint(1, None)
    catalog.crash_after_next(1, "/buy_qty")
    catalog.members[2].lead(3)
    catalog.members[3].follow(2, 3)
    assert catalog.run(catalog.client.reserve("Tux", 4, "r1", term=7), advance=1.0) is None
    assert len(catalog.members[1].paths("/buy_qty")) == 1  # it took the buy before it died
    assert len(catalog.members[2].paths("/buy_qty")) == 1  # the same request id, at the new leader
    assert catalog.group.stock["Tux"] == 6  # reserved once, not twice
    assert list(catalog.group.reservations) == ["r1"]


def test_only_the_items_answered_503_inside_a_200_go_again_and_each_is_reserved_once() -> None:
    catalog = Catalog()
    catalog.elect(3, term=2)
    catalog.leadership.note_leader_hint(3, None)
    catalog.members[3].unsure_once = {"b"}
    refusals = catalog.run(catalog.client.reserve_each([("Tux", 1, key) for key in "abc"], term=7), advance=1.0)
    assert refusals == [None, None, None]
    assert [[item["request_id"] for item in body["reservations"]] for body in catalog.members[3].paths("/buy_qty")] \
        == [["a", "b", "c"], ["b"]]
    assert 0 < catalog.clock.seconds() <= 0.1  # after one backoff, not an attempt's timeout
    assert catalog.group.stock["Tux"] == 7


def test_a_large_batch_follows_the_leader_as_one_with_one_deadline() -> None:
    catalog = Catalog()
    catalog.elect(3, term=2)
    catalog.leadership.note_leader_hint(3, None)
    catalog.network.hanging.add(member_url(3))
    timers_before = len(catalog.clock.getDelayedCalls())
    Deferred.fromCoroutine(catalog.client.reserve_each([("Tux", 1, f"r{i}") for i in range(1000)], term=7))
    catalog.clock.advance(0)  # the batch is out, unanswered
    # The attempt's deadline and the request's own timeout: not one timer per item.
    assert len(catalog.clock.getDelayedCalls()) - timers_before <= 2


def test_settles_and_the_listing_follow_the_leader_too() -> None:
    catalog = Catalog()
    catalog.elect(3, term=2)
    catalog.run(catalog.client.reserve("Tux", 1, "r1", term=7))
    catalog.elect(2, term=3)  # the catalog's leader moved; the client still believes in 3
    page = catalog.run(catalog.client.held_reservations(2.0))
    assert [r.request_id for r in page.reservations] == ["r1"]
    assert catalog.run(catalog.client.settle_each("release", ["r1"], term=7)) == [200]
    assert catalog.group.settled == {"r1": "release"}
    assert catalog.members[2].paths("/release") == [{"request_ids": ["r1"], "term": 7}]


def test_a_leader_unknown_for_longer_than_the_budget_is_503_after_three_seconds() -> None:
    catalog = Catalog()
    for member in catalog.members.values():
        member.follow(None, 4)  # an election that does not end
    with pytest.raises(ApiError) as error:
        catalog.run(catalog.client.reserve("Tux", 1, "r1", term=7), advance=5.0)
    assert (error.value.code, error.value.headers) == (503, {"Retry-After": "1"})
    assert 2.5 < catalog.clock.seconds() <= 3.05
    assert catalog.group.stock["Tux"] == 10


def test_health_checks_run_on_the_clock_and_notice_a_new_leader_before_any_call() -> None:
    catalog = Catalog()
    catalog.elect(3, term=2)
    checks = HealthChecks(catalog.leadership)
    checks.startService()
    catalog.settle()
    assert catalog.leadership.leader_id == 3
    catalog.network.down.add(member_url(3))
    catalog.members[2].lead(3)
    catalog.members[1].follow(2, 3)
    catalog.clock.advance(0.5)
    catalog.settle()
    assert catalog.leadership.leader_id == 2
    assert catalog.run(catalog.client.reserve("Tux", 1, "r1", term=7)) is None
    assert [len(catalog.members[i].paths("/buy_qty")) for i in (1, 2, 3)] == [0, 1, 0]
    checks.stopService()
    before = catalog.health_checks()
    catalog.clock.pump([0.5] * 4)
    assert catalog.health_checks() == before


def test_a_restock_is_not_sent_again_once_it_may_have_been_done() -> None:
    # A restock carries no request id: sent twice, it would restock twice.
    catalog = Catalog()
    catalog.elect(1, term=2)
    caller = LeaderCaller(catalog.leadership, catalog.network, catalog.clock, TOKEN, budget=3.0)  # type: ignore[arg-type]
    catalog.leadership.note_leader_hint(1, None)
    catalog.members[1].forced = 503  # it restocks, then cannot say so
    catalog.members[2].lead(3)
    with pytest.raises(ApiError) as error:
        catalog.run(caller.call("POST", "/restock", {}), advance=3.0)
    assert error.value.code == 503 and "may or may not have been done" in error.value.message
    assert catalog.group.restocks == 1
    assert [len(catalog.members[i].paths("/restock")) for i in (1, 2, 3)] == [1, 0, 0]


def test_a_restock_still_follows_a_421_and_a_refused_connection() -> None:
    # Neither reached a leader that acted on it, so sending it again is safe.
    catalog = Catalog()
    catalog.elect(2, term=2)
    caller = LeaderCaller(catalog.leadership, catalog.network, catalog.clock, TOKEN, budget=3.0)  # type: ignore[arg-type]
    catalog.leadership.note_leader_hint(1, None)  # 1 follows and names 2
    assert catalog.run(caller.call("POST", "/restock", {}))[0] == 200
    catalog.network.down.add(member_url(2))
    catalog.members[3].lead(3)
    catalog.members[1].follow(3, 3)
    assert catalog.run(caller.call("POST", "/restock", {}), advance=1.0)[0] == 200
    assert catalog.group.restocks == 2
    assert [len(catalog.members[i].paths("/restock")) for i in (1, 2, 3)] == [1, 1, 1]


def test_a_lone_catalog_is_never_polled_and_gets_one_attempt_as_before() -> None:
    clock, network = Clock(), FakeNetwork()
    group = CatalogGroup()
    lone = FakeCatalogMember(1, group, network, [1])
    lone.lead(1)
    network.add(LONE_URL, lone.app.resource())
    leadership = LoneLeader(LONE_URL, group="catalog")
    client = CatalogClient(leadership, network, clock=clock, token=TOKEN)  # type: ignore[arg-type]
    checks = HealthChecks(leadership)
    checks.startService()
    clock.pump([0.5] * 20)
    network.flush()
    assert lone.requests == []
    assert run(clock, network, client.reserve("Tux", 1, "r1", term=7)) is None
    assert [path for _, path, _ in lone.requests] == ["/buy_qty"]
    network.down.add(LONE_URL)
    with pytest.raises(ApiError) as error:
        run(clock, network, client.reserve("Tux", 1, "r2", term=7))  # at once: no other member to wait for
    assert error.value.code == 503
    checks.stopService()


# ---------------------------------------------------------------- the frontend


class FrontendWithCatalogGroup(Frontend):
    """The frontend of test_frontend_api, wired to three catalog members instead of one."""

    def __init__(self) -> None:
        super().__init__()
        self.catalog_members = Catalog(self.network, self.clock)
        orders = OrderCaller(self.tracker, self.network, self.clock, TOKEN)  # type: ignore[arg-type]
        self.api = FrontendApi(self.catalog_members.leadership, self.cache, self.tracker, orders,
                               self.network, self.clock, TOKEN)  # type: ignore[arg-type]
        self.client = StubTreq(api_root(self.api.app))


def test_the_frontend_queries_products_at_the_catalog_leader() -> None:
    frontend = FrontendWithCatalogGroup()
    catalog = frontend.catalog_members
    catalog.elect(2, term=5)
    catalog.leadership.note_leader_hint(3, None)
    code, _, body = frontend.call("GET", "/products/Tux")
    assert (code, body) == (200, {"data": {"name": "Tux", "price": 15.99, "quantity": 10}})
    assert [len(catalog.members[i].paths("/query/Tux")) for i in (1, 2, 3)] == [0, 1, 1]
    assert frontend.call("GET", "/health")[2]["data"]["catalog_leader_id"] == 2


def test_the_status_page_shows_the_catalog_leader_s_ledger() -> None:
    frontend = FrontendWithCatalogGroup()
    catalog = frontend.catalog_members
    catalog.elect(1, term=5)
    frontend.lead(2)
    data = frontend.call("GET", "/status.json", advance=1.0)[2]["data"]
    assert data["catalog_reachable"] is True
    assert data["toys"] == [{"name": "Tux", "price": 15.99, "quantity": 10}]
    assert data["catalog_leader_id"] == 1
    assert [len(catalog.members[i].paths("/ledger")) for i in (1, 2, 3)] == [1, 0, 0]
    # The catalog group's members, with the order replicas' fields.
    assert [(m["id"], m["reachable"], m["role"], m["term"], m["leader_id"]) for m in data["catalog_members"]] == [
        (1, True, "leader", 5, 1), (2, True, "follower", 5, 1), (3, True, "follower", 5, 1)]


def _connections(reactor: MemoryReactorClock) -> set[int]:
    return {port for _host, port, *_ in reactor.tcpClients}


def test_a_frontend_started_with_catalog_members_polls_them_and_one_with_one_url_does_not() -> None:
    for catalog_url, polled in [({1: "http://127.0.0.1:8001", 2: "http://127.0.0.1:8002"}, {8001, 8002}),
                                ("http://127.0.0.1:8001", set())]:
        reactor = MemoryReactorClock()
        service = build_frontend(reactor, port=8000, interface="127.0.0.1", cache_size=8, catalog_url=catalog_url,
                                 replicas={1: "http://127.0.0.1:8101"}, token="t")
        for child in service:
            if isinstance(child, HealthChecks):
                child.startService()  # not the listener: no socket here
        reactor.pump([0.5] * 3)
        assert _connections(reactor) == polled
        for child in service:
            if isinstance(child, HealthChecks):
                child.stopService()
