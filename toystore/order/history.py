"""Comparing two primary-backup histories one bounded page at a time (pure, no I/O).

A replica that catches up reads the source's orders in pages of ``/orders_since``. When its
own history forked from the source's (a leader died holding orders it never pushed), it
must find the first number where they differ, without asking for an answer the size of
its history: :class:`ForkSearch` walks back a page at a time from the replica's latest
order until it finds an order both hold alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from toystore.http import ApiError, require_positive_int, require_string
from toystore.order.state import Order, OrderStateMachine

MAX_ORDER_NUMBER = 2**62


def parse_replicated_orders(items: Any) -> list[Order]:
    """Orders between replicas (``/replicate_order``, ``/orders_since``), with consecutive
    numbers; ApiError(400) on any bad one. An empty list is allowed (an empty page)."""
    if not isinstance(items, list):
        raise ApiError(400, "'orders' must be a list of orders.")
    orders = []
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(400, "Every order must be an object with number, request_id, name and quantity.")
        number = item.get("number")
        if type(number) is not int or not 0 <= number <= MAX_ORDER_NUMBER:
            raise ApiError(400, "'number' must be a whole number from 0.")
        orders.append(Order(number, require_string(item, "request_id"), require_string(item, "name"),
                            require_positive_int(item, "quantity")))
    numbers = [o.number for o in orders]
    if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ApiError(400, "The orders of one push must have consecutive numbers.")
    return orders


@dataclass(frozen=True)
class Page:
    """One ``/orders_since`` answer: the orders after ``after``, whether more follow them,
    and the source's latest number when it answered."""

    orders: list[Order]
    more: bool
    latest: int

    @classmethod
    def from_payload(cls, data: Mapping[str, Any], after: int) -> "Page":
        """:raises ApiError: when the answer is not a page of the orders after ``after``."""
        orders = parse_replicated_orders(data.get("orders"))
        more, latest = data.get("more", False), data.get("latest")
        if type(latest) is not int:
            # An answer of a replica without pages: everything it holds.
            latest = orders[-1].number if orders else after
        if not isinstance(more, bool) or (orders and orders[0].number != after + 1):
            raise ApiError(400, f"Not a page of the orders after {after}.")
        return cls(orders, more, latest)


def first_difference(mine: OrderStateMachine, theirs: Sequence[Order]) -> int | None:
    """The first number in ``theirs`` that this replica holds with a different order."""
    for order in theirs:
        held = mine.get(order.number)
        if held is None:
            return None
        if held != order:
            return order.number
    return None


class ForkSearch:
    """Where this replica's history leaves the source's: feed it the page after
    :attr:`next_after` until :attr:`done`; then :attr:`fork` is the first number to move
    aside (None: the source's history extends this one).

    The first look is at this replica's latest order. If that one differs, it walks back a
    page at a time until a page's first order matches, so a forked tail of any length is
    found with bounded answers.
    """

    def __init__(self, mine: OrderStateMachine, page_size: int) -> None:
        self._mine = mine
        self._page_size = page_size
        self._known_different: int | None = None  # the lowest number seen to differ so far
        self.done = mine.latest_number < 0
        self.fork: int | None = None
        self.next_after = mine.latest_number - 1

    def feed(self, page: Page) -> None:
        first = self.next_after + 1
        compared = [o for o in page.orders if o.number <= self._mine.latest_number]
        differs = first_difference(self._mine, compared)
        if not compared and self._known_different is None:
            if page.latest < 0:
                self._finish(0)  # the source holds nothing: everything here is beyond its history
            elif page.latest < first:
                self.next_after = page.latest - 1  # it holds less: compare at its latest order
            else:
                self._finish(None)
            return
        if differs is None:
            end = compared[-1].number + 1 if compared else first
            if self._known_different is not None:
                self._finish(self._known_different if end >= self._known_different else end)
            else:
                self._finish(end if end <= self._mine.latest_number and page.latest < end else None)
            return
        if differs > first or differs == 0:
            self._finish(differs)
            return
        self._known_different = differs
        self.next_after = max(first - 1 - self._page_size, -1)

    def _finish(self, fork: int | None) -> None:
        self.fork, self.done = fork, True
