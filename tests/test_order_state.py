"""The order state machine and the replica's durable store."""

from pathlib import Path

import pytest

from toystore.db import Database, connect
from toystore.order.state import Order, OrderCommand, OrderStateMachine
from toystore.order.store import SCHEMA, Changes, ReplicaStore
from toystore.raft.messages import Entry, HardState
from twisted.internet import defer
from twisted.internet.task import Clock


def test_numbers_are_dense_in_apply_order() -> None:
    machine = OrderStateMachine()
    numbers = [machine.apply(OrderCommand(f"r{i}", "Tux", 1)).order.number for i in range(5)]
    assert numbers == [0, 1, 2, 3, 4]
    assert machine.latest_number == 4


def test_a_request_applied_twice_keeps_its_number_and_consumes_none() -> None:
    machine = OrderStateMachine()
    first = machine.apply(OrderCommand("key", "Tux", 2))
    again = machine.apply(OrderCommand("key", "Tux", 2))
    later = machine.apply(OrderCommand("other", "Fox", 1))
    assert (first.created, again.created) == (True, False)
    assert again.order.number == first.order.number == 0
    assert later.order.number == 1


def test_lookups_and_since() -> None:
    machine = OrderStateMachine([Order(1, "b", "Fox", 1), Order(0, "a", "Tux", 2)])
    assert machine.get(0) == Order(0, "a", "Tux", 2)
    assert machine.get(2) is None and machine.get(-1) is None
    assert machine.for_request("b") == Order(1, "b", "Fox", 1)
    assert [o.number for o in machine.since(-1)] == [0, 1]
    assert [o.number for o in machine.since(0)] == [1]
    assert machine.since(5) == []
    assert OrderStateMachine().latest_number == -1


def test_restoring_a_gap_is_refused() -> None:
    with pytest.raises(ValueError):
        OrderStateMachine([Order(0, "a", "Tux", 1), Order(2, "c", "Tux", 1)])


def test_command_round_trips() -> None:
    command = OrderCommand("k", "Tüx", 3)
    assert OrderCommand.decode(command.encode()) == command


def test_a_command_is_written_as_existing_logs_hold_it() -> None:
    # Replicas compare nothing byte for byte, but a log written before must read the same.
    assert OrderCommand("k", "Tux", 3).encode() == '{"name":"Tux","quantity":3,"request_id":"k"}'


def _store(path: Path) -> ReplicaStore:
    return ReplicaStore(Database(connect(path, SCHEMA), Clock()))


def test_store_survives_reopen_with_log_state_and_orders(tmp_path: Path) -> None:
    path = tmp_path / "order.sqlite3"
    store = _store(path)
    entries = [Entry(1, 1, ""), Entry(2, 1, OrderCommand("a", "Tux", 2).encode())]
    d = store.save(Changes(HardState(term=1, vote=1, commit=2), entries, [Order(0, "a", "Tux", 2)], applied=2))
    defer.ensureDeferred(d)
    reopened = _store(path).load_at_start()
    assert reopened.hard_state == HardState(term=1, vote=1, commit=2)
    assert reopened.entries == entries
    assert reopened.applied == 2
    assert reopened.orders == [Order(0, "a", "Tux", 2)]


def test_entries_overwrite_a_conflicting_suffix(tmp_path: Path) -> None:
    store = _store(tmp_path / "o.sqlite3")
    defer.ensureDeferred(store.save(Changes(entries=[Entry(1, 1, ""), Entry(2, 1, "x"), Entry(3, 1, "y")])))
    defer.ensureDeferred(store.save(Changes(entries=[Entry(2, 2, "z")])))
    assert store.load_at_start().entries == [Entry(1, 1, ""), Entry(2, 2, "z")]
