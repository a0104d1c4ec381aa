"""Settling held reservations: confirm committed orders, release those that can never commit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from test_order_catalog_client import Setup
from toystore.http import ApiError
from toystore.order.catalog_client import Reservation
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

    async def held_reservations(self, older_than: float) -> list[Reservation]:
        if self.listing_gate is not None:
            await self.listing_gate
        if self.fail_listing:
            raise ApiError(503, "catalog down")
        return list(self.held)

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
