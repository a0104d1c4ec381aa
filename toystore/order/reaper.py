"""Settling reservations that the catalog still holds (DESIGN.md, the order saga, steps 3-4).

A reservation is held from ``buy_qty`` until the leader decides it: confirmed when its
order committed, released (stock returned) when its order can never commit. The
leader may judge "never" only after it has committed an entry of its own term: then
no entry absent from its log can commit any more (an older leader cannot gather a
majority, and every later leader's log extends this one's committed prefix with
entries of newer terms). A request that is pending here, or whose entry sits in this
leader's log uncommitted, is left alone; the catalog fences a release by term, so a
deposed leader cannot release what a newer one is about to commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from toystore.http import MAX_BATCH_ITEMS
from toystore.order.catalog_client import CatalogClient, Reservation

log = Logger()


class Verdict:
    CONFIRM = "confirm"
    RELEASE = "release"
    WAIT = "wait"


def judge(reservation: Reservation, *, committed: Callable[[str], bool],
          in_flight: Callable[[str], bool]) -> str:
    """What to do with one held reservation, given this leader's view."""
    if committed(reservation.request_id):
        return Verdict.CONFIRM
    if in_flight(reservation.request_id):
        return Verdict.WAIT
    return Verdict.RELEASE


@dataclass
class LeaderView:
    """What the reaper needs to know of the replica it runs on."""

    can_judge: Callable[[], bool]        # leader, with an entry of its own term committed
    term: Callable[[], int]
    committed: Callable[[str], bool]     # request id applied as an order
    in_flight: Callable[[str], bool]     # pending here or in the log uncommitted


class ReservationReaper:
    """Every ``interval`` seconds, settles held reservations older than ``min_age``.

    Each round settles what came of age since the last one. Under load, a round every
    second carried a second's worth of orders in one burst of catalog writes, which showed
    in the orders' latency tail; four smaller rounds a second cost about the same in all.

    A round reads the backlog oldest first, a page of ``page_size`` at a time (what the
    catalog takes in one settle call), and settles each page before it reads the next; it
    stops after ``pages_per_round``. Its work is bounded whatever the backlog (after a
    restart under load tens of thousands are held), and it still drains far faster than
    orders arrive: 4 pages of 1024 four times a second.

    ``releasing`` holds the request ids being released right now: an order that arrives
    for one of them waits (:meth:`wait_released`) so that its new reservation is not
    undone by the release already on its way.
    """

    def __init__(self, catalog: CatalogClient, view: LeaderView, *, clock: IReactorTime,
                 interval: float = 0.25, min_age: float = 2.0, page_size: int = MAX_BATCH_ITEMS,
                 pages_per_round: int = 4) -> None:
        self._catalog = catalog
        self._view = view
        self._min_age = min_age
        self._page_size = page_size
        self._pages_per_round = pages_per_round
        self._releasing: dict[str, list[defer.Deferred]] = {}
        self._loop = LoopingCall(self._run_once_logged)
        self._loop.clock = clock
        self._interval = interval
        self.released = 0
        self.confirmed = 0
        self.refused = 0   # the catalog answered other than 200 (logged by the client)
        self.failed = 0    # the call failed: unreachable, or a strange answer

    def start(self) -> None:
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def wait_released(self, request_id: str) -> None:
        while request_id in self._releasing:
            waiter: defer.Deferred = defer.Deferred()
            self._releasing[request_id].append(waiter)
            await waiter

    def _run_once_logged(self) -> defer.Deferred:
        d = defer.ensureDeferred(self.run_once())
        d.addErrback(lambda f: log.warn("Settling reservations failed: {error}", error=f.getErrorMessage()))
        return d

    def counts(self) -> dict[str, int]:
        """Reservations this replica settled, or tried to, since it started."""
        return {"confirmed": self.confirmed, "released": self.released, "refused": self.refused,
                "failed": self.failed}

    async def run_once(self) -> None:
        after: str | None = None
        for _ in range(self._pages_per_round):
            if not self._view.can_judge():
                return
            page = await self._catalog.held_reservations(self._min_age, limit=self._page_size, after=after)
            await self._settle(page.reservations)
            if page.next is None:
                return
            after = page.next

    async def _settle(self, held: Iterable[Reservation]) -> None:
        # The view may have changed while we awaited the listing, but not during this turn:
        # every verdict is reached and both settle calls submitted in it.
        if not self._view.can_judge():
            return
        term = self._view.term()
        confirms: list[Reservation] = []
        releases: list[Reservation] = []
        for reservation in held:
            verdict = judge(reservation, committed=self._view.committed, in_flight=self._view.in_flight)
            if verdict == Verdict.CONFIRM:
                confirms.append(reservation)
            elif verdict == Verdict.RELEASE:
                # Marked in the same turn as the verdict, so an order for it waits from now on.
                self._releasing[reservation.request_id] = []
                releases.append(reservation)
        # Each action runs to its end, whatever the other does; the next round retries failures.
        outcomes = await defer.DeferredList([defer.ensureDeferred(self._confirm(confirms, term)),
                                             defer.ensureDeferred(self._release(releases, term))], consumeErrors=True)
        failed = [(group, outcome) for group, (succeeded, outcome) in zip((confirms, releases), outcomes)
                  if not succeeded]
        if failed:
            self.failed += sum(len(group) for group, _ in failed)
            log.warn("Settling {failed} of {count} reservations failed: {error}",
                     failed=sum(len(group) for group, _ in failed), count=len(confirms) + len(releases),
                     error=failed[0][1].getErrorMessage())

    async def _confirm(self, reservations: list[Reservation], term: int) -> None:
        if reservations:
            statuses = await self._catalog.settle_each("confirm", [r.request_id for r in reservations], term)
            self.confirmed += statuses.count(200)
            self.refused += len(statuses) - statuses.count(200)

    async def _release(self, reservations: list[Reservation], term: int) -> None:
        try:
            if reservations:
                statuses = await self._catalog.settle_each("release", [r.request_id for r in reservations], term)
                for reservation, status in zip(reservations, statuses):
                    if status == 200:
                        self.released += 1
                        log.info("Released reservation {request_id} ({quantity} x {name}): its order can never commit",
                                 request_id=reservation.request_id, quantity=reservation.quantity,
                                 name=reservation.name)
                    else:
                        self.refused += 1
        finally:
            for reservation in reservations:
                for waiter in self._releasing.pop(reservation.request_id):
                    waiter.callback(None)
