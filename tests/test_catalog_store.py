"""The catalog store: atomic buys, idempotent retries, the reservation saga, fencing, restock,
and stock conservation. Runs inline on SQLite files, no reactor."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, Coroutine

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from toystore.catalog.store import INITIAL_TOYS, Bought, CatalogError, CatalogStore, Conflict, NotFound, open_database

_case = SynchronousTestCase()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return _case.successResultOf(defer.ensureDeferred(coro))


def refused(coro: Coroutine[Any, Any, Any], kind: type[CatalogError]) -> CatalogError:
    return _case.failureResultOf(defer.ensureDeferred(coro), kind).value


def make_store(path: Path, initial_stock: int = 100, clock: Clock | None = None) -> CatalogStore:
    clock = clock or Clock()
    return CatalogStore(open_database(path, clock, initial_stock), clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> CatalogStore:
    return make_store(tmp_path / "catalog.sqlite3", clock=clock)


def quantity(store: CatalogStore, name: str) -> int:
    return run(store.query(name)).quantity


def test_new_catalog_has_ten_toys_with_distinct_prices(store: CatalogStore) -> None:
    toys = run(store.ledger())["toys"]
    assert sorted(toys) == sorted(name for name, _ in INITIAL_TOYS)
    assert len({toy["price"] for toy in toys.values()}) == 10
    assert run(store.query("Tux")).price == 15.99
    assert all(toy["quantity"] == toy["initial"] == 100 for toy in toys.values())


def test_query_unknown_toy(store: CatalogStore) -> None:
    refused(store.query("Unicorn"), NotFound)


def test_buy_takes_stock_and_holds_a_reservation(store: CatalogStore) -> None:
    assert run(store.buy("r1", "Tux", 3, term=2)) == Bought("r1", "Tux", 3, 97)
    assert quantity(store, "Tux") == 97
    [held] = run(store.reservations("held")).reservations
    assert (held.request_id, held.name, held.quantity, held.state, held.term) == ("r1", "Tux", 3, "held", 2)
    assert run(store.ledger())["highest_term"] == 2


def test_short_stock_changes_nothing_and_records_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path / "c.sqlite3", initial_stock=2)
    error = refused(store.buy("r1", "Tux", 3, term=5), Conflict)
    assert "Not enough Tux" in error.message
    assert quantity(store, "Tux") == 2
    assert run(store.reservations()).reservations == []
    assert run(store.ledger())["highest_term"] == 0


def test_buy_unknown_toy(store: CatalogStore) -> None:
    refused(store.buy("r1", "Unicorn", 1), NotFound)
    assert run(store.reservations()).reservations == []


def test_retry_answers_the_same_and_takes_stock_once(store: CatalogStore) -> None:
    first = run(store.buy("r1", "Tux", 3))
    run(store.buy("r2", "Tux", 1))
    assert run(store.buy("r1", "Tux", 3)) == first  # the remaining figure as first recorded
    assert quantity(store, "Tux") == 96
    run(store.confirm("r1", 0))
    assert run(store.buy("r1", "Tux", 3)) == first
    assert quantity(store, "Tux") == 96


def test_reused_request_id_for_another_toy_is_refused(store: CatalogStore) -> None:
    run(store.buy("r1", "Tux", 3))
    refused(store.buy("r1", "Fox", 3), Conflict)
    refused(store.buy("r1", "Tux", 4), Conflict)
    assert quantity(store, "Fox") == 100


def test_release_restores_stock_and_is_idempotent(store: CatalogStore) -> None:
    run(store.buy("r1", "Tux", 3))
    assert run(store.release("r1", 0)) == "Tux"
    assert quantity(store, "Tux") == 100
    assert run(store.release("r1", 0)) == "Tux"
    assert quantity(store, "Tux") == 100
    [released] = run(store.reservations("released")).reservations
    assert released.request_id == "r1"


def test_release_unknown(store: CatalogStore) -> None:
    refused(store.release("nope", 0), NotFound)


def test_release_fenced_by_a_lower_term(store: CatalogStore) -> None:
    run(store.buy("r1", "Tux", 3, term=1))
    run(store.buy("r2", "Fox", 1, term=4))  # a newer leader has been seen
    error = refused(store.release("r1", 3), Conflict)
    assert "fenced" in error.message
    assert quantity(store, "Tux") == 97
    assert [r.state for r in run(store.reservations()).reservations] == ["held", "held"]
    run(store.release("r1", 4))
    assert quantity(store, "Tux") == 100


def test_confirm(store: CatalogStore) -> None:
    run(store.buy("r1", "Tux", 3))
    run(store.confirm("r1", 7))
    run(store.confirm("r1", 7))
    assert [r.state for r in run(store.reservations()).reservations] == ["confirmed"]
    assert run(store.ledger())["highest_term"] == 7
    refused(store.release("r1", 7), Conflict)
    assert quantity(store, "Tux") == 97
    refused(store.confirm("nope", 7), NotFound)


def test_confirm_after_release_is_refused(store: CatalogStore) -> None:
    run(store.buy("r1", "Tux", 3))
    run(store.release("r1", 0))
    refused(store.confirm("r1", 0), Conflict)
    assert [r.state for r in run(store.reservations()).reservations] == ["released"]


def test_rehold_after_release(store: CatalogStore, clock: Clock) -> None:
    run(store.buy("r1", "Tux", 3, term=1))
    run(store.release("r1", 2))
    clock.advance(5)
    assert run(store.buy("r1", "Tux", 3, term=2)) == Bought("r1", "Tux", 3, 97)
    [held] = run(store.reservations("held")).reservations
    assert (held.term, held.age) == (2, 0.0)


def test_rehold_from_an_older_term_is_fenced(store: CatalogStore) -> None:
    run(store.buy("r1", "Tux", 3, term=1))
    run(store.release("r1", 2))
    error = refused(store.buy("r1", "Tux", 3, term=1), Conflict)
    assert "fenced by a newer term" in error.message
    assert quantity(store, "Tux") == 100


def test_rehold_needs_stock(tmp_path: Path) -> None:
    store = make_store(tmp_path / "c.sqlite3", initial_stock=3)
    run(store.buy("r1", "Tux", 3))
    run(store.release("r1", 0))
    run(store.buy("r2", "Tux", 2))
    refused(store.buy("r1", "Tux", 3), Conflict)
    assert quantity(store, "Tux") == 1
    assert {r.request_id: r.state for r in run(store.reservations()).reservations} == {"r1": "released", "r2": "held"}


def test_reservations_filter_by_state_and_age(store: CatalogStore, clock: Clock) -> None:
    run(store.buy("old", "Tux", 1))
    clock.advance(30)
    run(store.buy("new", "Tux", 1))
    clock.advance(1)
    assert [(r.request_id, r.age) for r in run(store.reservations("held", older_than=10)).reservations] == [("old", 31.0)]
    assert [r.request_id for r in run(store.reservations("held")).reservations] == ["old", "new"]
    assert run(store.reservations("confirmed")).reservations == []


def test_restock_only_sold_out_toys_and_ledger_totals(tmp_path: Path) -> None:
    store = make_store(tmp_path / "c.sqlite3", initial_stock=5)
    run(store.buy("r1", "Tux", 5))
    run(store.buy("r2", "Fox", 5))
    run(store.buy("r3", "Lego", 4))
    assert run(store.restock(100, name="Tux")) == {"Tux": 100}
    assert run(store.restock(100)) == {"Fox": 100}
    assert run(store.restock(100)) == {}
    ledger = run(store.ledger())
    assert ledger["toys"]["Tux"] == {"price": 15.99, "quantity": 100, "initial": 5, "restocked": 100}
    assert ledger["toys"]["Lego"]["quantity"] == 1
    assert ledger["toys"]["Lego"]["restocked"] == 0
    assert ledger["reservations"] == {"held": 3, "confirmed": 0, "released": 0}
    refused(store.restock(100, name="Unicorn"), NotFound)


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "catalog" / "catalog.sqlite3"
    store = make_store(path)
    run(store.buy("r1", "Tux", 3, term=4))
    reopened = make_store(path, initial_stock=50)  # a second start does not reset stock
    assert quantity(reopened, "Tux") == 97
    assert quantity(reopened, "Fox") == 100
    assert run(reopened.buy("r1", "Tux", 3)).remaining == 97
    assert run(reopened.ledger())["highest_term"] == 4


operations = st.lists(
    st.one_of(
        st.tuples(st.just("buy"), st.integers(0, 4), st.sampled_from(["Tux", "Fox"]), st.integers(1, 6), st.integers(0, 3)),
        st.tuples(st.just("release"), st.integers(0, 4), st.integers(0, 3)),
        st.tuples(st.just("confirm"), st.integers(0, 4), st.integers(0, 3)),
        st.tuples(st.just("restock"), st.sampled_from([None, "Tux", "Fox"])),
    ),
    max_size=40,
)


def _apply(store: CatalogStore, op: tuple[Any, ...]) -> None:
    """One of :data:`operations`; a refusal is an outcome like any other."""
    kind, args = op[0], op[1:]
    if kind == "buy":
        coro = store.buy(f"r{args[0]}", args[1], args[2], term=args[3])
    elif kind == "release":
        coro = store.release(f"r{args[0]}", args[1])
    elif kind == "confirm":
        coro = store.confirm(f"r{args[0]}", args[1])
    else:
        coro = store.restock(10, name=args[0])
    d = defer.ensureDeferred(coro)
    d.addErrback(lambda f: f.trap(CatalogError))
    _case.successResultOf(d)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_stock_is_conserved_over_any_sequence(ops: list[tuple[Any, ...]]) -> None:
    store = make_store(Path(":memory:"), initial_stock=8)
    for op in ops:
        _apply(store, op)

        ledger = run(store.ledger())
        kept: dict[str, int] = {}
        counts = dict.fromkeys(["held", "confirmed", "released"], 0)
        for r in run(store.reservations()).reservations:
            counts[r.state] += 1
            if r.state != "released":
                kept[r.name] = kept.get(r.name, 0) + r.quantity
        assert ledger["reservations"] == counts  # the counts the triggers keep
        for name, toy in ledger["toys"].items():
            assert toy["quantity"] >= 0
            assert toy["quantity"] + kept.get(name, 0) == toy["initial"] + toy["restocked"]


def test_a_catalog_from_before_the_counts_counts_its_reservations_at_start(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = make_store(path, initial_stock=8)
    for i in range(3):
        run(store.buy(f"r{i}", "Tux", 1))
    run(store.confirm("r0", 1))
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER reservation_added; DROP TRIGGER reservation_moved;"
                       " DROP TRIGGER reservation_removed; DROP TABLE reservation_counts;")
    conn.close()
    reopened = make_store(path, initial_stock=8)
    assert run(reopened.ledger())["reservations"] == {"held": 2, "confirmed": 1, "released": 0}
    run(reopened.release("r1", 1))
    assert run(reopened.ledger())["reservations"] == {"held": 1, "confirmed": 1, "released": 1}


def _outcome(result: Any) -> Any:
    return (type(result).__name__, result.message) if isinstance(result, CatalogError) else result


def _state(store: CatalogStore) -> tuple[Any, ...]:
    return run(store.ledger()), sorted((r.request_id, r.name, r.quantity, r.state, r.term) for r in run(store.reservations()).reservations)


buys = st.tuples(st.integers(0, 5).map(lambda n: f"r{n}"), st.sampled_from(["Tux", "Fox", "Unicorn"]),
                 st.integers(1, 6), st.integers(0, 3))


def _assert_a_batch_is_its_calls_one_by_one(before: list[tuple[Any, ...]],
                                            batch: Callable[[CatalogStore], Coroutine[Any, Any, list[Any]]],
                                            calls: Callable[[CatalogStore], list[Coroutine[Any, Any, Any]]]) -> None:
    together, alone = (make_store(Path(":memory:"), initial_stock=8) for _ in range(2))
    for store in (together, alone):
        for op in before:
            _apply(store, op)
    batch_outcomes = [_outcome(o) for o in run(batch(together))]
    single_outcomes = []
    for call in calls(alone):
        d = defer.ensureDeferred(call)
        d.addErrback(lambda f: f.trap(CatalogError) and f.value)
        single_outcomes.append(_outcome(_case.successResultOf(d)))
    assert batch_outcomes == single_outcomes
    assert _state(together) == _state(alone)


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(buys, min_size=1, max_size=12))
def test_a_batch_of_buys_answers_and_changes_as_its_buys_one_by_one(before: list[tuple[Any, ...]],
                                                                     batch: list[tuple[str, str, int, int]]) -> None:
    _assert_a_batch_is_its_calls_one_by_one(
        before, lambda store: store.buy_each(batch),
        lambda store: [store.buy(request_id, name, quantity, term) for request_id, name, quantity, term in batch])


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(st.integers(0, 5).map(lambda n: f"r{n}"), min_size=1, max_size=8), st.integers(0, 3))
def test_a_batch_of_confirms_answers_and_changes_as_its_confirms_one_by_one(before: list[tuple[Any, ...]],
                                                                           request_ids: list[str], term: int) -> None:
    _assert_a_batch_is_its_calls_one_by_one(
        before, lambda store: store.confirm_each(request_ids, term),
        lambda store: [store.confirm(request_id, term) for request_id in request_ids])
