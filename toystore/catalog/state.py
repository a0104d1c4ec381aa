"""The catalog as a replicated state machine: what applying a committed catalog command means.

Pure and deterministic: every member that applies the same commands holds the same stock,
reservations and fence. A command carries whatever it depends on besides the state (the
leader's clock for a buy's ``created``), so that applying it anywhere, at any time, gives
the same result. The rules are :mod:`toystore.catalog.rules`, shared with the single
catalog's store.

Toys are few and stay in memory; reservations are one per order ever placed, so only the
ones not yet durable stay in memory, and the others are read from a table when a command
touches them (as the order state machine reads its orders). :meth:`CatalogStateMachine.take_changes`
hands what applying changed to whoever makes it durable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol, Sequence

from toystore.catalog.rules import (
    STATES,
    Bought,
    CatalogError,
    NotFound,
    ReservationRow,
    buy_batch,
    check_price,
    confirm_batch,
    release_one,
    restocked,
)

BUY, CONFIRM, RELEASE, RESTOCK, PRICE = "buy", "confirm", "release", "restock", "price"


@dataclass(frozen=True)
class ToyState:
    name: str
    price: float
    quantity: int
    initial: int
    restocked: int = 0


@dataclass(frozen=True)
class CatalogCommand:
    """One proposal of the catalog leader; a batch of buys (or confirms, or releases) that
    reached it together is one command.

    - ``buy``: ``items`` of ``(request_id, name, quantity, term)``, held at ``at`` (the leader's clock);
    - ``confirm`` / ``release``: ``items`` of request ids, in ``term``;
    - ``restock``: sold-out toys (or ``name`` only) back to ``to``;
    - ``price``: toy ``name`` at the price ``items[0]``.
    """

    op: str
    items: tuple[Any, ...] = ()
    term: int = 0
    at: float = 0.0
    to: int = 0
    name: str | None = None

    def encode(self) -> str:
        return json.dumps({"op": self.op, "items": list(self.items), "term": self.term, "at": self.at, "to": self.to,
                           "name": self.name}, separators=(",", ":"))

    @classmethod
    def decode(cls, data: str) -> CatalogCommand:
        """:raises ValueError: when ``data`` is not an encoded catalog command."""
        fields = json.loads(data)  # a JSONDecodeError is a ValueError
        if not isinstance(fields, dict) or set(fields) != {"op", "items", "term", "at", "to", "name"}:
            raise ValueError(f"not a catalog command: {data[:200]!r}")
        op, items, term, at, to, name = (fields[k] for k in ("op", "items", "term", "at", "to", "name"))
        if op not in (BUY, CONFIRM, RELEASE, RESTOCK, PRICE) or not isinstance(items, list):
            raise ValueError(f"not a catalog command: {data[:200]!r}")
        if type(term) is not int or type(to) is not int or not isinstance(at, (int, float)) or not (
                name is None or isinstance(name, str)):
            raise ValueError(f"a catalog command's term, at, to or name is ill-typed: {data[:200]!r}")
        if op == BUY:
            if not all(isinstance(i, list) and len(i) == 4 and isinstance(i[0], str) and isinstance(i[1], str)
                       and type(i[2]) is int and i[2] >= 1 and type(i[3]) is int for i in items):
                raise ValueError("a buy's items are [request_id, name, quantity >= 1, term]")
            return cls(op, tuple(tuple(i) for i in items), term, float(at), to, name)
        if op == PRICE:
            if len(items) != 1 or name is None:
                raise ValueError("a price's items are [price], for the toy 'name'")
            return cls(op, (check_price(items[0]),), term, float(at), to, name)
        if not all(isinstance(i, str) for i in items):
            raise ValueError(f"a {op}'s items are request ids")
        return cls(op, tuple(items), term, float(at), to, name)


class ReservationTable(Protocol):
    """Durable reservations, read at once on the caller's thread."""

    def rows(self, request_ids: Sequence[str]) -> dict[str, ReservationRow]: ...


@dataclass
class CatalogChanges:
    """What applying commands changed since the last :meth:`CatalogStateMachine.take_changes`."""

    toys: dict[str, ToyState] = field(default_factory=dict)
    reservations: dict[str, ReservationRow] = field(default_factory=dict)
    highest_term: int | None = None


class CatalogStateMachine:
    """Stock, prices, reservations and the fence.

    :param toys: every toy, as durable now.
    :param highest_term: the fence, as durable now.
    :param table: the durable reservations; None keeps them all in memory (tests).
    :param counts: reservations per state, as durable now.
    """

    def __init__(self, toys: Sequence[ToyState], highest_term: int = 0, table: ReservationTable | None = None,
                 counts: Mapping[str, int] | None = None) -> None:
        self._toys = {toy.name: toy for toy in toys}
        self._highest_term = highest_term
        self._table = table
        self._counts = {state: (counts or {}).get(state, 0) for state in STATES}
        # Reservations changed by commands and not yet durable (all of them without a table).
        self._reservations: dict[str, ReservationRow] = {}
        self._changes = CatalogChanges()

    # -- applying ---------------------------------------------------------------------

    def apply(self, command: CatalogCommand) -> list[Any]:
        """One outcome per item (a restock: one, the toys it restocked); a refused item is
        its CatalogError, and changed nothing."""
        if command.op == BUY:
            return self._buy(command)
        if command.op == CONFIRM:
            return self._confirm(command)
        if command.op == RELEASE:
            return self._release(command)
        if command.op == PRICE:
            return [self._price(command)]
        return [self._restock(command)]

    def _buy(self, command: CatalogCommand) -> list[Bought | CatalogError]:
        stock = {name: toy.quantity for name, toy in self._toys.items()}
        batch = buy_batch(command.items, command.at, self._rows([item[0] for item in command.items]), stock)
        for name in {row.name for row in batch.held.values()}:
            self._set_toy(replace(self._toys[name], quantity=stock[name]))
        for row in batch.held.values():
            self._set_row(row)
        if batch.highest_term is not None:
            self._see_term(batch.highest_term)
        return batch.outcomes

    def _confirm(self, command: CatalogCommand) -> list[None | CatalogError]:
        outcomes, confirmed = confirm_batch(command.items, self._rows(command.items))
        for row in confirmed.values():
            self._set_row(row)
        if None in outcomes:
            self._see_term(command.term)
        return outcomes

    def _release(self, command: CatalogCommand) -> list[str | CatalogError]:
        rows = self._rows(command.items)
        outcomes: list[str | CatalogError] = []
        for request_id in command.items:
            row = rows.get(request_id)
            try:
                released = release_one(request_id, command.term, row, self._highest_term)
            except CatalogError as refused:
                outcomes.append(refused)
                continue
            assert row is not None
            self._see_term(command.term)
            if released != row:
                toy = self._toys[row.name]
                self._set_toy(replace(toy, quantity=toy.quantity + row.quantity))
                rows[request_id] = released
                self._set_row(released)
            outcomes.append(row.name)
        return outcomes

    def _price(self, command: CatalogCommand) -> float | CatalogError:
        toy = self._toys.get(command.name or "")
        if toy is None:
            return NotFound(f"There is no toy named {command.name!r}.")
        self._set_toy(replace(toy, price=command.items[0]))
        return command.items[0]

    def _restock(self, command: CatalogCommand) -> dict[str, int] | CatalogError:
        try:
            added = restocked({name: toy.quantity for name, toy in self._toys.items()}, command.to, command.name)
        except CatalogError as refused:
            return refused
        for name, amount in added.items():
            toy = self._toys[name]
            self._set_toy(replace(toy, quantity=amount, restocked=toy.restocked + amount))
        return added

    # -- state ------------------------------------------------------------------------

    def _rows(self, request_ids: Sequence[str]) -> dict[str, ReservationRow]:
        found = {rid: self._reservations[rid] for rid in request_ids if rid in self._reservations}
        missing = [rid for rid in set(request_ids) if rid not in found]
        if missing and self._table is not None:
            found.update(self._table.rows(missing))
        return found

    def _set_row(self, row: ReservationRow) -> None:
        before = self._rows([row.request_id]).get(row.request_id)
        if before == row:
            return
        if before is not None:
            self._counts[before.state] -= 1
        self._counts[row.state] += 1
        self._reservations[row.request_id] = self._changes.reservations[row.request_id] = row

    def _set_toy(self, toy: ToyState) -> None:
        self._toys[toy.name] = self._changes.toys[toy.name] = toy

    def _see_term(self, term: int) -> None:
        if term > self._highest_term:
            self._highest_term = self._changes.highest_term = term

    def take_changes(self) -> CatalogChanges:
        """What changed since the last call, to make durable; with a table, the reservations
        handed over are read from it from then on, once :meth:`made_durable` says so."""
        changes, self._changes = self._changes, CatalogChanges()
        return changes

    def made_durable(self, changes: CatalogChanges) -> None:
        """``changes`` are in the table now: memory lets go of the reservations that no
        command changed again since."""
        if self._table is None:
            return
        for request_id, row in changes.reservations.items():
            if self._reservations.get(request_id) == row:
                del self._reservations[request_id]

    # -- reads ------------------------------------------------------------------------

    def toy(self, name: str) -> ToyState | None:
        return self._toys.get(name)

    @property
    def toys(self) -> list[ToyState]:
        return [self._toys[name] for name in sorted(self._toys)]

    @property
    def highest_term(self) -> int:
        return self._highest_term

    def reservation(self, request_id: str) -> ReservationRow | None:
        return self._rows([request_id]).get(request_id)

    def counts(self) -> dict[str, int]:
        """Reservations per state."""
        return dict(self._counts)
