"""Settling held reservations: confirm committed orders, release those that can never commit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from test_order_catalog_client import Setup
from toystore.http import MAX_BATCH_ITEMS, ApiError
from toystore.order.catalog_client import HeldPage, Reservation
from toystore.order.reaper import LeaderView, ReservationReaper, Verdict, judge

_case = SynchronousTestCase()


@dataclass
class FakeCatalog:
    """Settles with 200 unless told otherwise; ``gate`` holds every settle until it fires; a
    batch with an ``unreachable`` request id in it fails whole, as an unreachable catalog would."""

    held: list[Reservation]
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    gate: defer.Deferred | None = None
    fail_listing: bool = False
    listing_gate: defer.Deferred | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)

    async def held_reservations(self, older_than: float, *, limit: int, after: str | None = None) -> HeldPage:
        if self.listing_gate is not None:
            await self.listing_gate
        if self.fail_listing:
            raise ApiError(503, "catalog down")
        return HeldPage(list(self.held), None)

    async def settle_each(self, action: str, request_ids: list[str], term: int) -> list[int]:
        self.calls.extend((action, request_id, term) for request_id in request_ids)
        if self.gate is not None:
            await self.gate
        if self.unreachable.intersection(request_ids):
            raise ApiError(503, "catalog down")
        return [self.statuses.get(request_id, 200) for request_id in request_ids]


def _reservation(request_id: str) -> Reservation:
    return Reservation(request_id, "Tux", 1, age=5.0)


def _view(*, can_judge: bool = True, committed: set[str] = frozenset(), in_flight: set[str] = frozenset()) -> LeaderView:
    return LeaderView(can_judge=lambda: can_judge, term=lambda: 7,
                      committed=lambda rid: rid in committed, in_flight=lambda rid: rid in in_flight)


def test_judge() -> None:
    r = _reservation("a")
    assert judge(r, committed=lambda _: True, in_flight=lambda _: True) == Verdict.CONFIRM
    assert judge(r, committed=lambda _: False, in_flight=lambda _: True) == Verdict.WAIT
    assert judge(r, committed=lambda _: False, in_flight=lambda _: False) == Verdict.RELEASE


def test_settles_each_reservation_with_the_leaders_term() -> None:
    catalog = FakeCatalog([_reservation("done"), _reservation("busy"), _reservation("lost")])
    reaper = ReservationReaper(catalog, _view(committed={"done"}, in_flight={"busy"}), clock=Clock())
    defer.ensureDeferred(reaper.run_once())
    assert catalog.calls == [("confirm", "done", 7), ("release", "lost", 7)]
    assert (reaper.confirmed, reaper.released) == (1, 1)


def test_a_replica_that_cannot_judge_touches_nothing() -> None:
    catalog = FakeCatalog([_reservation("lost")])
    reaper = ReservationReaper(catalog, _view(can_judge=False), clock=Clock())
    defer.ensureDeferred(reaper.run_once())
    assert catalog.calls == []


def test_a_leader_deposed_while_listing_touches_nothing() -> None:
    gate: defer.Deferred = defer.Deferred()
    catalog = FakeCatalog([_reservation("lost")], listing_gate=gate)
    leading = [True]
    view = LeaderView(can_judge=lambda: leading[0], term=lambda: 7, committed=lambda _: False,
                      in_flight=lambda _: False)
    reaper = ReservationReaper(catalog, view, clock=Clock())
    defer.ensureDeferred(reaper.run_once())
    leading[0] = False
    gate.callback(None)
    assert catalog.calls == []


def test_an_order_for_a_request_being_released_waits_for_the_release() -> None:
    gate: defer.Deferred = defer.Deferred()
    catalog = FakeCatalog([_reservation("lost")], gate=gate)
    reaper = ReservationReaper(catalog, _view(), clock=Clock())
    defer.ensureDeferred(reaper.run_once())
    finished: list[str] = []
    defer.ensureDeferred(reaper.wait_released("lost")).addCallback(lambda _: finished.append("lost"))
    defer.ensureDeferred(reaper.wait_released("other")).addCallback(lambda _: finished.append("other"))
    assert finished == ["other"]
    gate.callback(None)
    assert finished == ["other", "lost"]


def test_the_loop_survives_a_failing_round() -> None:
    clock = Clock()
    catalog = FakeCatalog([_reservation("lost")], fail_listing=True)
    reaper = ReservationReaper(catalog, _view(), clock=clock, interval=1.0)
    reaper.start()
    clock.pump([1.0, 1.0])
    assert catalog.calls == []
    catalog.fail_listing = False
    clock.pump([1.0])
    assert catalog.calls == [("release", "lost", 7)]
    reaper.stop()


def test_a_round_submits_every_settle_in_one_turn() -> None:
    gate: defer.Deferred = defer.Deferred()
    catalog = FakeCatalog([_reservation("done"), _reservation("lost"), _reservation("gone")], gate=gate)
    reaper = ReservationReaper(catalog, _view(committed={"done"}), clock=Clock())
    defer.ensureDeferred(reaper.run_once())
    # Every call is out before any is answered, so the client can batch them.
    assert catalog.calls == [("confirm", "done", 7), ("release", "lost", 7), ("release", "gone", 7)]
    assert (reaper.confirmed, reaper.released) == (0, 0)
    gate.callback(None)
    assert (reaper.confirmed, reaper.released) == (1, 2)


def test_a_failing_action_does_not_lose_the_other() -> None:
    catalog = FakeCatalog([_reservation(rid) for rid in ("down", "lost", "done", "fenced", "late")],
                          unreachable={"down"}, statuses={"fenced": 409, "late": 404})
    reaper = ReservationReaper(catalog, _view(committed={"done", "fenced", "late"}), clock=Clock())
    finished: list[str] = []
    with capturedLogs() as events:
        round_ = defer.ensureDeferred(reaper.run_once())
        for rid in ("down", "lost"):
            defer.ensureDeferred(reaper.wait_released(rid)).addCallback(lambda _, r=rid: finished.append(r))
    assert _case.successResultOf(round_) is None
    assert [rid for _, rid, _ in catalog.calls] == ["done", "fenced", "late", "down", "lost"]
    assert finished == ["down", "lost"]  # a failed release lets waiting orders go on
    # Only what the catalog settled counts.
    assert (reaper.confirmed, reaper.released) == (1, 0)
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert [(e["failed"], e["count"]) for e in warnings] == [(2, 5)]


def test_a_round_is_one_listing_and_one_batch_per_action(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    for rid in ("done", "busy", "lost-1", "lost-2"):
        s.catalog.call("POST", "/buy_qty", {"name": "Tux", "quantity": 1, "request_id": rid, "term": 1})
    s.catalog.clock.advance(5.0)
    reaper = ReservationReaper(s.client, _view(committed={"done"}, in_flight={"busy"}), clock=s.catalog.clock)
    (round_,) = s.run(reaper.run_once())
    assert _case.successResultOf(round_) is None
    assert [(method, path.split("?")[0]) for method, path, _ in s.recorder.requests] == [
        ("GET", "/reservations"), ("POST", "/confirm"), ("POST", "/release")]
    assert s.posts() == [("/confirm", {"request_ids": ["done"], "term": 7}),
                         ("/release", {"request_ids": ["lost-1", "lost-2"], "term": 7})]
    assert (reaper.confirmed, reaper.released) == (1, 2)
    assert s.catalog.stock() == 98
    assert s.catalog.ledger()["reservations"] == {"held": 1, "confirmed": 1, "released": 2}


def _round(s: Setup, reaper: ReservationReaper) -> None:
    done = defer.ensureDeferred(reaper.run_once())
    while not done.called:
        s.pump()
    assert _case.successResultOf(done) is None


def test_a_backlog_of_5000_is_settled_in_bounded_rounds_within_the_catalogs_limits(tmp_path: Path) -> None:
    s = Setup(tmp_path, initial_stock=1000)
    toys = sorted(s.catalog.ledger()["toys"])
    ids = [f"r{n}" for n in range(5000)]
    for start in range(0, len(ids), 1000):
        code, _ = s.catalog.call("POST", "/buy_qty", {"reservations": [
            {"name": toys[n % len(toys)], "quantity": 1, "request_id": ids[n], "term": 1}
            for n in range(start, start + 1000)]})
        assert code == 200
    s.catalog.clock.advance(5.0)
    reaper = ReservationReaper(s.client, _view(committed=set(ids[::2])), clock=s.catalog.clock)
    listings_per_round = []
    for _ in range(2):  # 4 pages of 1024 a round
        before = len(s.recorder.requests)
        _round(s, reaper)
        listings_per_round.append(sum(method == "GET" for method, _, _ in s.recorder.requests[before:]))
    assert listings_per_round == [4, 1]
    assert s.catalog.ledger()["reservations"] == {"held": 0, "confirmed": 2500, "released": 2500}
    assert reaper.counts() == {"confirmed": 2500, "released": 2500, "refused": 0, "failed": 0}
    assert max(len(body["request_ids"]) for _, body in s.posts()) <= MAX_BATCH_ITEMS
    assert sum(toy["quantity"] for toy in s.catalog.ledger()["toys"].values()) == 1000 * len(toys) - 2500


def test_a_refusal_is_logged_with_the_catalogs_reason_and_retried_next_round(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.catalog.call("POST", "/buy_qty", {"name": "Tux", "quantity": 1, "request_id": "lost", "term": 1})
    s.catalog.call("POST", "/buy_qty", {"name": "Tux", "quantity": 1, "request_id": "other", "term": 9})
    s.catalog.call("POST", "/release", {"request_id": "other", "term": 9})  # a later leader spoke
    s.catalog.clock.advance(5.0)
    term = [7]
    view = LeaderView(can_judge=lambda: True, term=lambda: term[0], committed=lambda _: False,
                      in_flight=lambda _: False)
    reaper = ReservationReaper(s.client, view, clock=s.catalog.clock)
    with capturedLogs() as events:
        _round(s, reaper)
    (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
    assert (warning["count"], warning["action"]) == (1, "release")
    assert "fenced by a newer term" in warning["message"]
    assert reaper.counts() == {"confirmed": 0, "released": 0, "refused": 1, "failed": 0}
    assert s.catalog.ledger()["reservations"]["held"] == 1
    term[0] = 9  # this replica leads again, in the term that raised the fence
    _round(s, reaper)
    assert s.catalog.ledger()["reservations"] == {"held": 0, "confirmed": 0, "released": 2}
    assert reaper.released == 1


@dataclass
class LimitedCatalog:
    """Held reservations that the reaper settles, with the catalog's limits: a listing page
    of at most ``limit``, settle calls of at most ``limit`` ids (400 beyond, as the catalog
    answers), and the calls listed in ``failing`` (by count) lost on the way."""

    limit: int
    state: dict[str, str]
    failing: set[int]
    transitions: dict[str, list[str]] = field(default_factory=dict)
    calls: int = 0

    def _call(self) -> None:
        self.calls += 1
        if self.calls in self.failing:
            raise ApiError(503, "catalog down")

    async def held_reservations(self, older_than: float, *, limit: int, after: str | None = None) -> HeldPage:
        assert limit <= self.limit
        self._call()
        held = [rid for rid in sorted(self.state) if self.state[rid] == "held" and (after is None or rid > after)]
        page = held[:limit]
        return HeldPage([Reservation(rid, "Tux", 1, 5.0) for rid in page], page[-1] if len(page) == limit else None)

    async def settle_each(self, action: str, request_ids: list[str], term: int) -> list[int]:
        if len(request_ids) > self.limit:
            return [400] * len(request_ids)
        self._call()
        statuses = []
        for rid in request_ids:
            final = "confirmed" if action == "confirm" else "released"
            if self.state[rid] == "held":
                self.state[rid] = final
                self.transitions.setdefault(rid, []).append(final)
            statuses.append(200 if self.state[rid] == final else 409)
        return statuses


@settings(max_examples=60, deadline=None)
@given(backlog=st.integers(0, 400), limit=st.integers(1, 64), pages_per_round=st.integers(1, 5),
       data=st.data())
def test_any_backlog_ends_settled_exactly_once_each_in_the_right_way(backlog: int, limit: int,
                                                                     pages_per_round: int, data: Any) -> None:
    ids = [f"r{n:04d}" for n in range(backlog)]
    committed = set(data.draw(st.lists(st.sampled_from(ids), unique=True)) if ids else [])
    in_flight = set(data.draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []) - committed
    failing = set(data.draw(st.lists(st.integers(1, 40), unique=True)))
    catalog = LimitedCatalog(limit, dict.fromkeys(ids, "held"), failing)
    view = LeaderView(can_judge=lambda: True, term=lambda: 3, committed=committed.__contains__,
                      in_flight=in_flight.__contains__)
    reaper = ReservationReaper(catalog, view, clock=Clock(), page_size=limit, pages_per_round=pages_per_round)  # type: ignore[arg-type]
    # Full rounds settle limit * pages_per_round each; the first three may be slowed by
    # the requests still in flight, and each lost call costs at most one round.
    bound = 3 + -(-backlog // (limit * pages_per_round)) + len(failing)
    rounds_needed = 0
    while "held" in catalog.state.values():
        calls_before = catalog.calls
        defer.ensureDeferred(reaper.run_once()).addErrback(lambda f: f.trap(ApiError))  # the listing was lost
        # A round reads at most pages_per_round pages and settles each in two calls.
        assert catalog.calls - calls_before <= 3 * pages_per_round
        rounds_needed += 1
        assert rounds_needed <= bound, "settlement is slower than its pages allow"
        if rounds_needed == 3:
            in_flight.clear()  # their proposals committed or failed by now
    assert {rid: moves for rid, moves in catalog.transitions.items()} == {
        rid: ["confirmed" if rid in committed else "released"] for rid in ids}
    assert reaper.confirmed == len(committed)
    assert reaper.released == backlog - len(committed)
