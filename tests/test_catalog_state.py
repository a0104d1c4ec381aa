"""The catalog's replicated state machine, pure: the same rules as the single catalog's
store (the same sequence of operations gives the same answers and the same state), buys
idempotent per request id, releases fenced by term, restocks counted; and, over any
sequence of commands, stock never negative and conserved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from toystore.catalog.rules import CONFIRMED, HELD, RELEASED, Bought, CatalogError, Conflict, NotFound
from toystore.catalog.state import BUY, CONFIRM, PRICE, RELEASE, RESTOCK, CatalogCommand, CatalogStateMachine, ToyState
from toystore.catalog.store import CatalogStore, open_database

TOYS = [ToyState("Tux", 15.99, 3, 3), ToyState("Whale", 24.99, 1, 1)]


def machine() -> CatalogStateMachine:
    return CatalogStateMachine(TOYS)


def buy(*items: tuple[str, str, int, int], at: float = 1.0) -> CatalogCommand:
    return CatalogCommand(BUY, items, at=at)


def test_commands_round_trip_and_bad_ones_are_refused() -> None:
    for command in (buy(("r1", "Tux", 1, 2)), CatalogCommand(CONFIRM, ("r1",), term=2),
                    CatalogCommand(RELEASE, ("r1", "r2"), term=3), CatalogCommand(RESTOCK, to=100, name="Tux"),
                    CatalogCommand(PRICE, (9.5,), name="Tux")):
        assert CatalogCommand.decode(command.encode()) == command
    for bad in ("[]", "{}", '{"op": "steal", "items": [], "term": 0, "at": 0, "to": 0, "name": null}',
                '{"op": "buy", "items": [["r", "Tux", 0, 1]], "term": 0, "at": 0, "to": 0, "name": null}',
                '{"op": "confirm", "items": [1], "term": 0, "at": 0, "to": 0, "name": null}',
                '{"op": "price", "items": [-1], "term": 0, "at": 0, "to": 0, "name": "Tux"}',
                '{"op": "price", "items": [1.0], "term": 0, "at": 0, "to": 0, "name": null}', "nope"):
        with pytest.raises(ValueError):
            CatalogCommand.decode(bad)


def test_a_price_change_applies_to_its_toy_only_and_an_unknown_toy_is_refused() -> None:
    state = machine()
    assert state.apply(CatalogCommand(PRICE, (9.5,), name="Tux")) == [9.5]
    assert (state.toy("Tux").price, state.toy("Whale").price) == (9.5, 24.99)
    assert state.take_changes().toys == {"Tux": ToyState("Tux", 9.5, 3, 3)}
    (refused,) = state.apply(CatalogCommand(PRICE, (1.0,), name="Robot"))
    assert isinstance(refused, NotFound)


def test_a_buy_holds_stock_once_per_request_id() -> None:
    state = machine()
    first = state.apply(buy(("r1", "Tux", 2, 1)))
    again = state.apply(buy(("r1", "Tux", 2, 1), at=9.0))
    assert first == again == [Bought("r1", "Tux", 2, 1)]
    assert state.toy("Tux").quantity == 1 and state.reservation("r1").state == HELD
    assert state.reservation("r1").created == 1.0  # the first hold's time, from the command
    (refused,) = state.apply(buy(("r1", "Whale", 1, 1)))
    assert isinstance(refused, Conflict) and "already used" in refused.message


def test_a_batch_of_buys_answers_each_as_if_alone() -> None:
    state = machine()
    outcomes = state.apply(buy(("a", "Whale", 1, 1), ("b", "Whale", 1, 1), ("c", "Lego", 1, 1), ("d", "Tux", 3, 1)))
    assert outcomes[0] == Bought("a", "Whale", 1, 0)
    assert isinstance(outcomes[1], Conflict) and isinstance(outcomes[2], NotFound)
    assert outcomes[3] == Bought("d", "Tux", 3, 0)
    assert state.counts() == {HELD: 2, CONFIRMED: 0, RELEASED: 0}


def test_releases_are_fenced_by_the_highest_term_seen() -> None:
    state = machine()
    state.apply(buy(("r1", "Tux", 1, 5), ("r2", "Tux", 1, 5)))
    (fenced,) = state.apply(CatalogCommand(RELEASE, ("r1",), term=4))
    assert isinstance(fenced, Conflict) and state.toy("Tux").quantity == 1
    assert state.apply(CatalogCommand(RELEASE, ("r1", "r1"), term=6)) == ["Tux", "Tux"]  # twice is harmless
    assert state.toy("Tux").quantity == 2 and state.highest_term == 6
    # A request released in term 6 is not held again by a buy of an older term.
    (old,) = state.apply(buy(("r1", "Tux", 1, 5)))
    assert isinstance(old, Conflict) and "fenced" in old.message
    assert state.apply(buy(("r1", "Tux", 1, 6))) == [Bought("r1", "Tux", 1, 1)]


def test_confirmed_stays_confirmed_and_released_cannot_be_confirmed() -> None:
    state = machine()
    state.apply(buy(("r1", "Tux", 1, 1), ("r2", "Tux", 1, 1)))
    assert state.apply(CatalogCommand(CONFIRM, ("r1", "r1"), term=1)) == [None, None]
    (refused,) = state.apply(CatalogCommand(RELEASE, ("r1",), term=1))
    assert isinstance(refused, Conflict) and "confirmed" in refused.message
    state.apply(CatalogCommand(RELEASE, ("r2",), term=1))
    (late,) = state.apply(CatalogCommand(CONFIRM, ("r2",), term=1))
    assert isinstance(late, Conflict) and "released" in late.message
    (absent,) = state.apply(CatalogCommand(CONFIRM, ("nobody",), term=1))
    assert isinstance(absent, NotFound)
    assert state.counts() == {HELD: 0, CONFIRMED: 1, RELEASED: 1}


def test_a_restock_fills_sold_out_toys_and_is_counted() -> None:
    state = machine()
    state.apply(buy(("r1", "Whale", 1, 1)))
    assert state.apply(CatalogCommand(RESTOCK, to=10)) == [{"Whale": 10}]
    assert state.toy("Whale") == ToyState("Whale", 24.99, 10, 1, 10)
    (refused,) = state.apply(CatalogCommand(RESTOCK, to=10, name="Lego"))
    assert isinstance(refused, NotFound)


def test_changes_are_handed_over_once_and_reservations_then_come_from_the_table() -> None:
    table: dict[str, Any] = {}

    class Table:
        def rows(self, request_ids: Any) -> dict[str, Any]:
            return {rid: table[rid] for rid in request_ids if rid in table}

    state = CatalogStateMachine(TOYS, table=Table())
    state.apply(buy(("r1", "Tux", 1, 1)))
    changes = state.take_changes()
    assert set(changes.reservations) == {"r1"} and set(changes.toys) == {"Tux"} and changes.highest_term == 1
    assert state.take_changes().reservations == {}
    table.update(changes.reservations)
    state.made_durable(changes)
    assert state.reservation("r1") == table["r1"]  # read from the table now
    state.apply(CatalogCommand(CONFIRM, ("r1",), term=1))
    assert state.take_changes().reservations["r1"].state == CONFIRMED


# -- the same answers as the single catalog's store ----------------------------------------

OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just(BUY), st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["Tux", "Whale", "Robot"]),
                                                st.integers(1, 3), st.integers(0, 3)), min_size=1, max_size=4)),
    st.tuples(st.just(CONFIRM), st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=3),
              st.integers(0, 3)),
    st.tuples(st.just(RELEASE), st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=3),
              st.integers(0, 3)),
    st.tuples(st.just(RESTOCK), st.integers(0, 5), st.sampled_from([None, "Tux", "Robot"])),
), max_size=25)


def _comparable(outcomes: list[Any]) -> list[Any]:
    return [(type(o).__name__, o.message) if isinstance(o, CatalogError) else o for o in outcomes]


def _store_apply(store: CatalogStore, operation: tuple[Any, ...], now: float) -> list[Any]:
    kind = operation[0]

    async def run() -> list[Any]:
        if kind == BUY:
            return await store.buy_each(operation[1])
        if kind == CONFIRM:
            return await store.confirm_each(operation[1], operation[2])
        if kind == RELEASE:
            return await store.release_each(operation[1], operation[2])
        try:
            return [await store.restock(operation[1], operation[2])]
        except CatalogError as refused:
            return [refused]

    done = defer.ensureDeferred(run())
    results: list[Any] = []
    done.addBoth(results.append)
    assert results, "the inline database answers at once"
    return results[0]


@settings(max_examples=60, deadline=None)
@given(operations=OPERATIONS)
def test_the_state_machine_answers_and_ends_as_the_store_does(tmp_path_factory: Any, operations: Any) -> None:
    path: Path = tmp_path_factory.mktemp("catalog") / "catalog.sqlite3"
    clock = Clock()
    store = CatalogStore(open_database(path, clock, initial_stock=2), clock)
    state = CatalogStateMachine([ToyState(t.name, t.price, 2, 2) for t in _store_toys(store)])
    for step, operation in enumerate(operations):
        clock.advance(1.0)
        kind = operation[0]
        command = (CatalogCommand(BUY, tuple(operation[1]), at=clock.seconds()) if kind == BUY else
                   CatalogCommand(kind, tuple(operation[1]), term=operation[2]) if kind in (CONFIRM, RELEASE) else
                   CatalogCommand(RESTOCK, to=operation[1], name=operation[2]))
        assert _comparable(state.apply(command)) == _comparable(_store_apply(store, operation, clock.seconds())), step
    ledger = _result(store.ledger())
    assert {toy.name: toy.quantity for toy in state.toys} == {n: t["quantity"] for n, t in ledger["toys"].items()}
    assert {toy.name: toy.restocked for toy in state.toys} == {n: t["restocked"] for n, t in ledger["toys"].items()}
    assert state.counts() == ledger["reservations"] and state.highest_term == ledger["highest_term"]
    # Stock conservation: what is in stock and what is held or confirmed is what there was.
    for toy in state.toys:
        taken = sum(row.quantity for rid in "abcd" if (row := state.reservation(rid)) is not None
                    and row.name == toy.name and row.state != RELEASED)
        assert toy.quantity >= 0 and toy.quantity + taken == toy.initial + toy.restocked


def _result(d: Any) -> Any:
    results: list[Any] = []
    defer.ensureDeferred(d).addBoth(results.append)
    return results[0]


def _store_toys(store: CatalogStore) -> list[Any]:
    ledger = _result(store.ledger())
    return [ToyState(name, toy["price"], toy["quantity"], toy["initial"]) for name, toy in sorted(ledger["toys"].items())]

