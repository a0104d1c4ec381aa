"""Leader choice, preference announcements and failover, with fake replicas in memory.

The fakes (FakeReplica, FakeNetwork) are also used by test_frontend_api.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest

from toystore.frontend.leader import OrderCaller, OrderLeaderTracker, Preference
from toystore.http import ApiError
from toystore.leader import Final, HealthReport, Redirect, Retry, choose_leader, classify

TOKEN = "s3cret"


# ---------------------------------------------------------------- fakes


class FakeReplica:
    """An order replica that answers like the real one, with knobs for the tests."""

    app = Klein()

    def __init__(self, replica_id: int, network: FakeNetwork) -> None:
        self.replica_id = replica_id
        self.network = network
        self.role = "follower"
        self.term = 1
        self.leader_id: int | None = None
        self.orders: list[dict[str, Any]] = []
        self.by_request_id: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        self.set_leader_calls: list[int] = []
        self.order_status: int | None = None  # force an answer for /order and /orders/<n>
        self.stock: dict[str, int] = {"Tux": 10}
        self.members: list[int] | None = None  # the committed members its health check names, if any
        self.deposed_in_batch = False  # answers a batch 200 with a 421 for each order: it stopped leading

    def lead(self, term: int) -> None:
        self.role, self.term, self.leader_id = "leader", term, self.replica_id

    def follow(self, leader_id: int | None, term: int) -> None:
        self.role, self.term, self.leader_id = "follower", term, leader_id

    def _record(self, request: IRequest, body: dict[str, Any] | None) -> None:
        auth = request.getHeader(b"authorization")
        self.requests.append((request.method.decode(), request.path.decode(), body,
                              auth.decode() if auth else None))

    def _answer(self, request: IRequest, code: int, payload: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(payload).encode()

    def _error(self, request: IRequest, code: int, message: str, **details: Any) -> bytes:
        return self._answer(request, code, {"error": {"code": code, "message": message, **details}})

    def _not_leader(self, request: IRequest) -> bytes | None:
        if self.order_status is not None:
            return self._error(request, self.order_status, "forced")
        if self.role != "leader":
            leader = self.leader_id or 0
            details: dict[str, Any] = {"leader_id": leader}
            if leader:
                details["leader_url"] = self.network.url_of(leader)
            return self._error(request, 421, "not the leader", **details)
        return None

    @app.route("/health_check", methods=["GET"])
    def health_check(self, request: IRequest) -> bytes:
        self._record(request, None)
        data = {"id": self.replica_id, "role": self.role, "term": self.term, "leader_id": self.leader_id,
                "commit_index": len(self.orders), "last_index": len(self.orders)}
        if self.members is not None:
            data["members"] = [{"id": i, "url": self.network.url_of(i), "voter": True} for i in self.members]
        return self._answer(request, 200, {"data": data})

    @app.route("/set_leader", methods=["POST"])
    def set_leader(self, request: IRequest) -> bytes:
        body = json.loads(request.content.read())
        self._record(request, body)
        self.set_leader_calls.append(body["id"])
        return self._answer(request, 200, {"data": {"ok": True}})

    @app.route("/order", methods=["POST"])
    def order(self, request: IRequest) -> bytes:
        body = json.loads(request.content.read())
        self._record(request, body)
        refusal = self._not_leader(request)
        if refusal is not None:
            return refusal
        if "orders" in body:
            if self.deposed_in_batch:
                self.follow(self.network.leader_hint, self.term + 1)
                hint = {"leader_id": self.leader_id or 0, "leader_url": self.network.url_of(self.leader_id or 0)}
                refused = {"status": 421, "error": {"code": 421, "message": "not the leader", **hint}}
                return self._answer(request, 200, {"data": {"results": [refused for _ in body["orders"]]}})
            results = [self._place(order) for order in body["orders"]]
            return self._answer(request, 200, {"data": {"results": [{"status": status, **payload}
                                                                    for status, payload in results]}})
        status, payload = self._place(body)
        return self._answer(request, status, payload)

    def _place(self, order: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if order["name"] not in self.stock:
            return 404, {"error": {"code": 404, "message": "No such product."}}
        if self.stock[order["name"]] < order["quantity"]:
            return 409, {"error": {"code": 409, "message": "Not enough stock."}}
        return 200, {"data": {"order_number": self.network.place_order(order)}}

    def orders_received(self) -> list[dict[str, Any]]:
        """Every order sent to /order, one by one or in batches."""
        return [order for _method, path, body, _auth in self.requests if path == "/order"
                for order in (body["orders"] if "orders" in body else [body])]

    @app.route("/orders/<string:number>", methods=["GET"])
    def get_order(self, request: IRequest, number: str) -> bytes:
        self._record(request, None)
        refusal = self._not_leader(request)
        if refusal is not None:
            return refusal
        index = int(number)
        if index >= len(self.network.orders):
            return self._error(request, 404, "No such order.")
        return self._answer(request, 200, {"data": {"number": index, **self.network.orders[index]}})


class FakeNetwork:
    """An in-memory treq client: each base URL is a fake replica (or any Klein resource)
    under its own StubTreq; a host can be down (connection refused) or hang (never answers).

    The orders live here, shared by the replicas, as a replicated log would make them.
    """

    def __init__(self) -> None:
        self.stubs: dict[str, StubTreq] = {}
        self.down: set[str] = set()
        self.hanging: set[str] = set()
        self.orders: list[dict[str, Any]] = []
        self.by_request_id: dict[str, int] = {}
        self.replicas: dict[int, FakeReplica] = {}
        self.leader_hint = 0  # the leader a replica deposed in a batch names

    def add_replicas(self, count: int) -> dict[int, FakeReplica]:
        for ident in range(1, count + 1):
            replica = FakeReplica(ident, self)
            self.replicas[ident] = replica
            self.add(self.url_of(ident), replica.app.resource())
        return self.replicas

    def add(self, base_url: str, resource: Any) -> None:
        self.stubs[base_url] = StubTreq(resource)

    @staticmethod
    def url_of(replica_id: int) -> str:
        return f"http://replica{replica_id}.test:81{replica_id:02d}"

    def place_order(self, body: dict[str, Any]) -> int:
        key = body["request_id"]
        if key not in self.by_request_id:
            self.by_request_id[key] = len(self.orders)
            self.orders.append({"name": body["name"], "quantity": body["quantity"]})
        return self.by_request_id[key]

    def kill(self, replica_id: int) -> None:
        self.down.add(self.url_of(replica_id))

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        base = next((b for b in self.stubs if url.startswith(b + "/")), None)
        if base is None or base in self.down:
            return fail(ConnectionRefusedError(url))
        if base in self.hanging:
            return Deferred()
        return self.stubs[base].request(method, url, **kwargs)

    def flush(self) -> None:
        for stub in self.stubs.values():
            stub.flush()


def settle(clock: Clock, network: FakeNetwork) -> None:
    """Deliver what is ready now: batches leave at the next reactor turn (``advance(0)``),
    and an answer may send another request (a redirect)."""
    for _ in range(5):
        clock.advance(0)
        network.flush()


def run(clock: Clock, network: FakeNetwork, coroutine: Any, advance: float = 0.0, step: float = 0.05) -> Any:
    """Run ``coroutine`` to its end, advancing the clock by ``step`` up to ``advance`` seconds."""
    d = Deferred.fromCoroutine(coroutine)
    results: list[Any] = []
    d.addBoth(results.append)
    settle(clock, network)
    elapsed = 0.0
    while not results and elapsed < advance:
        clock.advance(step)
        settle(clock, network)
        elapsed += step
    assert results, "the operation did not finish"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def make_tracker(count: int = 3) -> tuple[Clock, FakeNetwork, OrderLeaderTracker]:
    clock = Clock()
    network = FakeNetwork()
    network.add_replicas(count)
    replicas = {ident: network.url_of(ident) for ident in range(1, count + 1)}
    return clock, network, OrderLeaderTracker(replicas, network, clock, TOKEN)  # type: ignore[arg-type]


# ---------------------------------------------------------------- pure choice


def report(ident: int, role: str, term: int, leader: int | None = None) -> HealthReport:
    return HealthReport(ident, role, term, leader)


def test_leader_with_highest_term_wins() -> None:
    reports = [report(1, "leader", 3, 1), report(2, "leader", 5, 2), report(3, "follower", 5, 2)]
    assert choose_leader(reports) == 2


def test_stale_leader_is_ignored_for_the_leader_its_successors_name() -> None:
    reports = [report(1, "leader", 3, 1), report(2, "follower", 4, 3), report(3, "follower", 4, 3)]
    assert choose_leader(reports) == 3


def test_stale_leader_is_ignored_during_an_election() -> None:
    reports = [report(1, "leader", 3, 1), report(2, "candidate", 4), report(3, "follower", 4)]
    assert choose_leader(reports) is None


def test_leader_named_by_followers_is_adopted_when_it_answered() -> None:
    reports = [report(1, "follower", 7, 3), report(2, "follower", 7, 3), report(3, "follower", 7, 3)]
    assert choose_leader(reports) == 3


def test_unresponsive_leader_named_by_followers_is_not_adopted() -> None:
    reports = [report(1, "follower", 7, 3), report(2, "follower", 7, 3)]
    assert choose_leader(reports) is None


def test_no_responsive_replica_means_no_leader() -> None:
    assert choose_leader([]) is None


def test_health_payload_parsing() -> None:
    good = {"data": {"id": 2, "role": "leader", "term": 4, "leader_id": 2, "commit_index": 0, "last_index": 0}}
    assert HealthReport.from_payload(2, good) == report(2, "leader", 4, 2)
    assert HealthReport.from_payload(2, {"data": {"role": "follower", "term": 1, "leader_id": 0}}) == \
        report(2, "follower", 1, None)
    for bad in ({}, {"data": []}, {"data": {"role": "king", "term": 1}}, {"data": {"role": "leader", "term": True}},
                {"data": {"role": "leader", "term": 1, "leader_id": "2"}}):
        assert HealthReport.from_payload(2, bad) is None


def test_preference_needs_two_consecutive_checks() -> None:
    preference = Preference()
    assert preference.observe({1, 2, 3}, leader=1, now=0.0) is None
    assert preference.observe({1, 2, 3}, leader=1, now=0.5) == 3


def test_preference_streak_restarts_when_the_highest_id_changes() -> None:
    preference = Preference()
    assert preference.observe({1, 2}, leader=1, now=0.0) is None
    assert preference.observe({1, 2, 3}, leader=1, now=0.5) is None
    assert preference.observe({1, 2}, leader=1, now=1.0) is None
    assert preference.observe({1, 2}, leader=1, now=1.5) == 2


def test_preference_is_rate_limited() -> None:
    preference = Preference(min_interval=5.0)
    preference.observe({1, 3}, leader=1, now=0.0)
    assert preference.observe({1, 3}, leader=1, now=0.5) == 3
    assert preference.observe({1, 3}, leader=1, now=1.0) is None
    assert preference.observe({1, 3}, leader=1, now=5.4) is None
    assert preference.observe({1, 3}, leader=1, now=5.5) == 3


def test_a_failover_right_after_a_transfer_is_not_held_back() -> None:
    # The preference moved back to a restarted replica 3 (a transfer at 0.5); 3 dies a
    # second later. No answering replica leads, and a primary-backup group takes no
    # orders until the frontend names one: neither the streak nor the interval meant for
    # transfers may delay it.
    preference = Preference(min_interval=5.0)
    preference.observe({1, 2, 3}, leader=2, now=0.0)
    assert preference.observe({1, 2, 3}, leader=2, now=0.5) == 3
    assert preference.observe({1, 2}, leader=None, now=1.5) == 2
    # ...and the failover does not count against the next transfer's interval.
    preference.observe({1, 2, 3}, leader=2, now=5.6)
    assert preference.observe({1, 2, 3}, leader=2, now=6.0) == 3


def test_no_announcement_when_preferred_already_leads_or_nobody_answers() -> None:
    preference = Preference()
    preference.observe({1, 3}, leader=3, now=0.0)
    assert preference.observe({1, 3}, leader=3, now=0.5) is None
    assert preference.observe(set(), leader=None, now=1.0) is None
    assert preference.observe(set(), leader=None, now=1.5) is None


def test_classify_answers() -> None:
    assert classify(200, {"data": {"order_number": 1}}) == Final(200, {"data": {"order_number": 1}})
    for status in (400, 404, 409):
        assert isinstance(classify(status, {"error": {}}), Final)
    assert classify(421, {"error": {"leader_id": 2, "leader_url": "http://x"}}) == Redirect(2, "http://x")
    assert classify(421, {"error": {"leader_id": 2}}) == Redirect(2, None)
    assert classify(421, {"error": {"leader_id": 0}}) == Retry(suspect=False)
    assert classify(421, {"error": "weird"}) == Retry(suspect=False)
    assert classify(503, {}) == Retry(suspect=True)


# ---------------------------------------------------------------- tracker with fake replicas


def test_health_checks_find_the_leader_and_carry_the_token() -> None:
    clock, network, tracker = make_tracker()
    network.replicas[2].lead(4)
    network.replicas[1].follow(2, 4)
    network.replicas[3].follow(2, 4)
    tracker.start()
    network.flush()
    assert tracker.current_leader() == (2, network.url_of(2))
    assert all(auth == f"Bearer {TOKEN}" for r in network.replicas.values() for *_, auth in r.requests)
    tracker.stop()


def test_the_tracker_follows_the_members_the_leader_names_and_no_one_else() -> None:
    clock, network, tracker = make_tracker(4)
    network.replicas[4].follow(None, 4)
    tracker.replicas.pop(4)  # started knowing 1 to 3; replica 4 joins later
    network.replicas[1].lead(4)
    network.replicas[1].members = [1, 2, 4]  # 3 was replaced by 4
    network.replicas[2].follow(1, 4)
    network.replicas[2].members = [2, 3]  # a follower's word does not count
    network.add("http://way-to-2.test:9", network.replicas[2].app.resource())
    tracker.replicas[2] = "http://way-to-2.test:9"  # this frontend's way to 2 is not the leader's
    run(clock, network, tracker.check())
    assert tracker.replicas == {1: network.url_of(1), 2: "http://way-to-2.test:9", 4: network.url_of(4)}
    network.kill(1)
    network.replicas[4].lead(5)
    network.replicas[4].members = [1, 2, 4]
    run(clock, network, tracker.check())
    assert tracker.current_leader() == (4, network.url_of(4))  # the new member, once it leads


def test_loop_runs_every_half_second_on_the_clock() -> None:
    clock, network, tracker = make_tracker()
    network.replicas[3].lead(1)
    tracker.start()
    network.flush()
    clock.pump([0.5] * 4)
    network.flush()
    checks = [r for r in network.replicas[1].requests if r[1] == "/health_check"]
    assert len(checks) == 5
    tracker.stop()
    clock.pump([0.5] * 4)
    assert len([r for r in network.replicas[1].requests if r[1] == "/health_check"]) == 5


def test_preference_announced_to_every_responsive_replica_after_two_checks() -> None:
    clock, network, tracker = make_tracker()
    network.replicas[1].lead(2)
    network.replicas[2].follow(1, 2)
    network.replicas[3].follow(1, 2)
    tracker.start()
    network.flush()
    assert all(r.set_leader_calls == [] for r in network.replicas.values())
    clock.advance(0.5)
    network.flush()
    assert [r.set_leader_calls for r in network.replicas.values()] == [[3], [3], [3]]
    # Rate limited: nothing more for five seconds even though 3 still does not lead.
    clock.pump([0.5] * 9)
    network.flush()
    assert [r.set_leader_calls for r in network.replicas.values()] == [[3], [3], [3]]
    clock.advance(0.5)
    network.flush()
    assert [r.set_leader_calls for r in network.replicas.values()] == [[3, 3], [3, 3], [3, 3]]
    tracker.stop()


def test_announcement_skips_unresponsive_replicas() -> None:
    clock, network, tracker = make_tracker()
    network.replicas[1].lead(2)
    network.replicas[2].follow(1, 2)
    network.kill(3)
    tracker.start()
    clock.advance(0.5)
    network.flush()
    assert [r.set_leader_calls for r in network.replicas.values()] == [[2], [2], []]
    tracker.stop()


def test_reselection_when_the_leader_stops_answering() -> None:
    clock, network, tracker = make_tracker()
    network.replicas[3].lead(1)
    network.replicas[1].follow(3, 1)
    network.replicas[2].follow(3, 1)
    tracker.start()
    network.flush()
    assert tracker.leader_id == 3
    network.kill(3)
    clock.advance(0.5)
    network.flush()
    assert tracker.current_leader() is None
    network.replicas[2].lead(2)
    network.replicas[1].follow(2, 2)
    clock.advance(0.5)
    network.flush()
    assert tracker.current_leader() == (2, network.url_of(2))
    tracker.stop()


def test_hung_replica_times_out_after_one_second() -> None:
    clock, network, tracker = make_tracker()
    network.replicas[1].lead(1)
    network.hanging.add(network.url_of(3))
    found = Deferred.fromCoroutine(tracker.find_leader())
    results: list[Any] = []
    found.addBoth(results.append)
    network.flush()
    clock.advance(0.9)
    assert results == []
    clock.advance(0.1)
    assert results == [(1, network.url_of(1))]


def test_hint_and_mark_failed() -> None:
    clock, network, tracker = make_tracker()
    assert tracker.note_leader_hint(2, "http://elsewhere") == (2, network.url_of(2))
    assert tracker.current_leader() == (2, network.url_of(2))
    tracker.mark_failed(1)
    assert tracker.leader_id == 2
    tracker.mark_failed(2)
    assert tracker.current_leader() is None


# ---------------------------------------------------------------- failover caller


def make_caller(count: int = 3) -> tuple[Clock, FakeNetwork, OrderLeaderTracker, OrderCaller]:
    clock, network, tracker = make_tracker(count)
    return clock, network, tracker, OrderCaller(tracker, network, clock, TOKEN)  # type: ignore[arg-type]


ORDER = {"name": "Tux", "quantity": 1, "request_id": "k1"}


def test_caller_follows_421_hint_at_once() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[1].follow(2, 3)
    network.replicas[2].lead(3)
    tracker.note_leader_hint(1, None)  # a stale belief
    status, payload = run(clock, network, caller.place_order(ORDER))
    assert (status, payload) == (200, {"data": {"order_number": 0}})
    assert tracker.leader_id == 2
    assert clock.seconds() == 0


def test_an_order_refused_inside_a_batch_by_a_deposed_leader_goes_to_the_new_one() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[1].lead(3)
    network.replicas[1].deposed_in_batch = True
    network.replicas[2].lead(4)
    network.leader_hint = 2
    tracker.note_leader_hint(1, None)
    status, payload = run(clock, network, caller.place_order(ORDER))
    assert (status, payload) == (200, {"data": {"order_number": 0}})
    assert [o["request_id"] for o in network.replicas[2].orders_received()] == ["k1"]
    assert tracker.leader_id == 2


def test_caller_fails_over_when_leader_refuses_connections() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[3].lead(1)
    tracker.note_leader_hint(3, None)
    network.kill(3)
    network.replicas[2].lead(2)
    status, payload = run(clock, network, caller.place_order(ORDER), advance=2)
    assert (status, payload) == (200, {"data": {"order_number": 0}})
    assert network.orders == [{"name": "Tux", "quantity": 1}]


def test_caller_retries_after_503_with_same_body() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[1].lead(1)
    network.replicas[1].order_status = 503
    tracker.note_leader_hint(1, None)
    d = Deferred.fromCoroutine(caller.place_order(ORDER))
    results: list[Any] = []
    d.addBoth(results.append)
    settle(clock, network)
    assert results == []
    network.replicas[1].order_status = None
    clock.advance(0.05)
    settle(clock, network)
    assert results == [(200, {"data": {"order_number": 0}})]
    assert network.replicas[1].orders_received() == [ORDER, ORDER]


def test_caller_gives_up_with_503_after_budget() -> None:
    clock, network, tracker, caller = make_caller()
    for ident in network.replicas:
        network.kill(ident)
    d = Deferred.fromCoroutine(caller.place_order(ORDER))
    results: list[Any] = []
    d.addBoth(results.append)
    finished_at: list[float] = []
    d.addBoth(lambda _: finished_at.append(clock.seconds()))
    clock.pump([0.05] * 150)
    assert results == []
    clock.pump([0.05] * 20)
    assert len(results) == 1
    error = results[0].value
    assert isinstance(error, ApiError)
    assert (error.code, error.headers) == (503, {"Retry-After": "1"})
    assert 7.5 < finished_at[0] <= 8.0 + 1e-9


def test_caller_passes_final_errors_through() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[1].lead(1)
    status, payload = run(clock, network, caller.place_order({**ORDER, "quantity": 99}))
    assert status == 409
    assert payload["error"]["message"] == "Not enough stock."
    assert len([r for r in network.replicas[1].requests if r[1] == "/order"]) == 1


def test_orders_of_one_turn_reach_the_leader_as_one_batch_with_their_own_outcomes() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[1].lead(1)
    tracker.note_leader_hint(1, None)
    orders = [ORDER, {**ORDER, "request_id": "k2", "quantity": 99}, {**ORDER, "request_id": "k3"}]
    answers: list[Any] = []
    for order in orders:
        Deferred.fromCoroutine(caller.place_order(order)).addBoth(answers.append)
    settle(clock, network)
    assert [status for status, _ in answers] == [200, 409, 200]
    assert [payload.get("data") for _, payload in answers] == [{"order_number": 0}, None, {"order_number": 1}]
    batches = [body for _, path, body, _ in network.replicas[1].requests if path == "/order"]
    assert batches == [{"orders": orders}]


def test_a_batch_refused_whole_redirects_each_order_to_the_named_leader() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[1].follow(2, 3)
    network.replicas[2].lead(3)
    tracker.note_leader_hint(1, None)
    answers: list[Any] = []
    for key in ("a", "b"):
        Deferred.fromCoroutine(caller.place_order({**ORDER, "request_id": key})).addBoth(answers.append)
    settle(clock, network)
    assert answers == [(200, {"data": {"order_number": 0}}), (200, {"data": {"order_number": 1}})]
    assert [body for _, path, body, _ in network.replicas[2].requests if path == "/order"] == [
        {"orders": [{**ORDER, "request_id": "a"}, {**ORDER, "request_id": "b"}]}]


def test_caller_attempt_times_out_after_three_seconds() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[1].lead(1)
    tracker.note_leader_hint(1, None)
    network.hanging.add(network.url_of(1))
    d = Deferred.fromCoroutine(caller.call("GET", "/orders/0"))
    results: list[Any] = []
    d.addBoth(results.append)
    clock.advance(2.9)
    assert tracker.leader_id == 1
    clock.advance(0.1)
    assert tracker.leader_id is None  # marked failed; rediscovery under way
    network.hanging.clear()
    network.orders.append({"name": "Tux", "quantity": 1})
    clock.pump([0.5] * 6)
    network.flush()
    assert results == [(200, {"data": {"number": 0, "name": "Tux", "quantity": 1}})]


def test_an_order_waiting_behind_a_batch_times_out_three_seconds_after_it_came() -> None:
    clock, network, tracker, caller = make_caller()
    network.replicas[1].lead(1)
    tracker.note_leader_hint(1, None)
    late: list[Any] = []

    def answered_late(method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        late.append(lambda: real_request(method, url, **kwargs).chainDeferred(answer))
        return answer

    real_request, network.request = network.request, answered_late  # type: ignore[method-assign]
    first: list[Any] = []
    Deferred.fromCoroutine(caller.place_order(ORDER)).addBoth(first.append)
    clock.advance(0)  # its batch is out
    Deferred.fromCoroutine(caller.place_order({**ORDER, "request_id": "k2"}))
    clock.advance(2.5)
    network.request = lambda method, url, **kwargs: Deferred()  # type: ignore[method-assign]
    late.pop()()  # the first batch is answered; the waiting order's batch leaves, and hangs
    clock.advance(0)
    assert first == [(200, {"data": {"order_number": 0}})]
    clock.advance(0.4)
    assert tracker.leader_id == 1
    clock.advance(0.1)
    assert tracker.leader_id is None  # the waiting order's attempt failed at its own deadline


@pytest.mark.parametrize("leader_ids", [(2, 1)])
def test_caller_stops_redirect_ping_pong(leader_ids: tuple[int, int]) -> None:
    clock, network, tracker, caller = make_caller(2)
    network.replicas[1].follow(leader_ids[0], 1)
    network.replicas[2].follow(leader_ids[1], 1)
    tracker.note_leader_hint(1, None)
    d = Deferred.fromCoroutine(caller.place_order(ORDER))
    results: list[Any] = []
    d.addBoth(results.append)
    settle(clock, network)
    order_requests = sum(1 for r in network.replicas.values() for req in r.requests if req[1] == "/order")
    assert results == []  # backing off rather than spinning
    assert order_requests <= 3
    clock.pump([0.1] * 100)
    assert results[0].value.code == 503
