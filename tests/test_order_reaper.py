"""Settling held reservations: confirm committed orders, release those that can never commit."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.task import Clock

from toystore.http import ApiError
from toystore.order.catalog_client import Reservation
from toystore.order.reaper import LeaderView, ReservationReaper, Verdict, judge


@dataclass
class FakeCatalog:
    held: list[Reservation]
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    release_gate: defer.Deferred | None = None
    fail_listing: bool = False

    async def held_reservations(self, older_than: float) -> list[Reservation]:
        if self.fail_listing:
            raise ApiError(503, "catalog down")
        return list(self.held)

    async def settle(self, action: str, request_id: str, term: int) -> int:
        self.calls.append((action, request_id, term))
        if action == "release" and self.release_gate is not None:
            await self.release_gate
        return 200


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


def test_an_order_for_a_request_being_released_waits_for_the_release() -> None:
    gate: defer.Deferred = defer.Deferred()
    catalog = FakeCatalog([_reservation("lost")], release_gate=gate)
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
