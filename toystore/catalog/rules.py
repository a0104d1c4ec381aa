"""The catalog's rules, as pure functions of the rows they touch.

The order saga of DESIGN.md lives here: a buy holds stock for a request id, a confirm
keeps it for good, a release gives it back, and the highest order term seen fences
releases from deposed leaders. The single catalog's SQLite store reads the rows an
operation touches, applies these rules, and writes what they changed; the replicated
catalog's state machine applies the same rules to the same rows, so both mean the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

HELD = "held"
CONFIRMED = "confirmed"
RELEASED = "released"
STATES = (HELD, CONFIRMED, RELEASED)


class CatalogError(Exception):
    """A refused operation; nothing changed. ``message`` is one sentence for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(CatalogError):
    """No such toy or reservation."""


class Conflict(CatalogError):
    """The operation contradicts the current state (stock short, fenced, wrong state)."""


@dataclass(frozen=True)
class Bought:
    """The answer to a buy; a retry of the same request id gets the same one."""

    request_id: str
    name: str
    quantity: int
    remaining: int


@dataclass(frozen=True)
class ReservationRow:
    """One reservation as stored: ``created`` is when it was (last) held, ``remaining``
    the stock its buy answered with, ``released_term`` the term that released it."""

    request_id: str
    name: str
    quantity: int
    state: str
    term: int
    created: float
    remaining: int
    released_term: int | None = None


@dataclass
class BuyBatch:
    """What a batch of buys did: an outcome per buy, and the rows and stock it changed."""

    outcomes: list[Bought | CatalogError]
    held: dict[str, ReservationRow]  # reservations (re)held, by request id
    highest_term: int | None  # of the buys that went through


def buy_batch(buys: Sequence[tuple[str, str, int, int]], now: float, rows: Mapping[str, ReservationRow],
              stock: dict[str, int]) -> BuyBatch:
    """Each buy of ``(request_id, name, quantity, term)``, in order, as if it ran alone: a
    refused one changes nothing. ``rows`` are the stored reservations of these request ids;
    ``stock`` (of these toys) is taken from."""
    rows = dict(rows)
    held: dict[str, ReservationRow] = {}
    highest_term: int | None = None
    outcomes: list[Bought | CatalogError] = []
    for request_id, name, quantity, term in buys:
        row = rows.get(request_id)
        try:
            outcome = _buy_one(request_id, name, quantity, term, row, stock)
        except CatalogError as refused:
            outcomes.append(refused)
            continue
        if row is None or row.state == RELEASED:
            rows[request_id] = held[request_id] = ReservationRow(request_id, name, quantity, HELD, term, now,
                                                                 outcome.remaining)
        highest_term = term if highest_term is None else max(highest_term, term)
        outcomes.append(outcome)
    return BuyBatch(outcomes, held, highest_term)


def _buy_one(request_id: str, name: str, quantity: int, term: int, row: ReservationRow | None,
             stock: dict[str, int]) -> Bought:
    if row is not None:
        if (row.name, row.quantity) != (name, quantity):
            raise Conflict(f"Request {request_id!r} was already used for {row.quantity} {row.name}.")
        if row.state != RELEASED:
            return Bought(request_id, name, quantity, row.remaining)
        if row.released_term is not None and term < row.released_term:
            raise Conflict(
                f"Request {request_id!r} was fenced by a newer term: released in term {row.released_term}, "
                f"asked again in term {term}."
            )
    if name not in stock:
        raise NotFound(f"There is no toy named {name!r}.")
    if stock[name] < quantity:
        raise Conflict(f"Not enough {name} in stock: {stock[name]} left, {quantity} asked.")
    stock[name] -= quantity
    return Bought(request_id, name, quantity, stock[name])


def release_one(request_id: str, term: int, row: ReservationRow | None, highest_term: int) -> ReservationRow:
    """The reservation once released in ``term`` (unchanged if it was released already); the
    caller gives its quantity back to stock when its state moves from held.

    :raises Conflict: fenced by a newer term, or confirmed already.
    :raises NotFound: no such reservation.
    """
    if term < highest_term:
        raise Conflict(f"Release of {request_id!r} was fenced by a newer term: {term} < {highest_term}.")
    if row is None:
        raise NotFound(f"There is no reservation {request_id!r}.")
    if row.state == CONFIRMED:
        raise Conflict(f"Reservation {request_id!r} is confirmed and cannot be released.")
    if row.state == HELD:
        return replace(row, state=RELEASED, released_term=term)
    return row


def confirm_batch(request_ids: Sequence[str], rows: Mapping[str, ReservationRow]
                  ) -> tuple[list[None | CatalogError], dict[str, ReservationRow]]:
    """Each confirm, in order, as if it ran alone: an outcome per request id (None once
    confirmed), and the rows that moved from held to confirmed."""
    rows = dict(rows)
    outcomes: list[None | CatalogError] = []
    confirmed: dict[str, ReservationRow] = {}
    for request_id in request_ids:
        try:
            row = confirm_one(request_id, rows.get(request_id))
        except CatalogError as refused:
            outcomes.append(refused)
            continue
        outcomes.append(None)
        if row != rows[request_id]:
            rows[request_id] = confirmed[request_id] = row
    return outcomes, confirmed


def confirm_one(request_id: str, row: ReservationRow | None) -> ReservationRow:
    """The reservation once confirmed (unchanged if it was confirmed already).

    :raises NotFound: no such reservation. :raises Conflict: it was released.
    """
    if row is None:
        raise NotFound(f"There is no reservation {request_id!r}.")
    if row.state == RELEASED:
        raise Conflict(f"Reservation {request_id!r} was released and cannot be confirmed.")
    return replace(row, state=CONFIRMED) if row.state == HELD else row


def restocked(stock: Mapping[str, int], restock_to: int, name: str | None) -> dict[str, int]:
    """How much each sold-out toy (or only ``name``) gets: back to ``restock_to``.

    :raises NotFound: ``name`` is no toy.
    """
    if name is not None and name not in stock:
        raise NotFound(f"There is no toy named {name!r}.")
    if restock_to <= 0:
        return {}
    return {toy: restock_to for toy in sorted(stock) if stock[toy] == 0 and name in (None, toy)}


MAX_PRICE = 1_000_000.0


def check_price(price: object) -> float:
    """A toy's price: a number from 0 to :data:`MAX_PRICE`. :raises ValueError: otherwise."""
    if type(price) not in (int, float) or not 0 <= price <= MAX_PRICE:  # also refuses NaN and infinities
        raise ValueError(f"a price is a number from 0 to {MAX_PRICE:,.0f}")
    return float(price)  # type: ignore[arg-type]
