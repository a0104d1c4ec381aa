"""The order state machine and the replica's durable store."""

from pathlib import Path


from toystore.db import Database, connect
from toystore.order.state import Order, OrderCommand, OrderStateMachine
from toystore.order.store import SCHEMA, Changes, ReplicaStore, SqliteOrderTable
from toystore.raft.sqlite_log import snapshot_header
from toystore.raft.membership import Configuration
from toystore.raft.messages import Entry, HardState, SnapshotMeta
from toystore.raft.statemachine import Snapshot
from twisted.python.failure import Failure
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


def test_lookups_and_pages_in_memory() -> None:
    machine = OrderStateMachine()
    for key in "ab":
        machine.apply(OrderCommand(key, "Tux", 1))
    assert machine.get(0) == Order(0, "a", "Tux", 1)
    assert machine.get(2) is None and machine.get(-1) is None
    assert machine.for_request("b") == Order(1, "b", "Tux", 1)
    assert [o.number for o in machine.page(-1, 10)] == [0, 1]
    assert [o.number for o in machine.page(0, 10)] == [1]
    assert machine.page(5, 10) == [] and machine.page(-1, 1) == [Order(0, "a", "Tux", 1)]
    assert OrderStateMachine().latest_number == -1


def test_command_round_trips() -> None:
    command = OrderCommand("k", "Tüx", 3)
    assert OrderCommand.decode(command.encode()) == command


def test_a_command_is_written_as_existing_logs_hold_it() -> None:
    # Replicas compare nothing byte for byte, but a log written before must read the same.
    assert OrderCommand("k", "Tux", 3).encode() == '{"name":"Tux","quantity":3,"request_id":"k"}'


def _store(path: Path) -> ReplicaStore:
    return ReplicaStore(Database(connect(path, SCHEMA), Clock()))


def _save(store: ReplicaStore, changes: Changes) -> None:
    done = defer.ensureDeferred(store.save(changes))
    assert done.called  # the test database writes inline


def _place(store: ReplicaStore, *keys: str) -> None:
    """Applies an order for each key and makes them durable, as a replica's cycle would."""
    applied = [store.orders.apply(OrderCommand(key, "Tux", 1)) for key in keys]
    _save(store, Changes(orders=[a.order for a in applied if a.created]))


def test_store_survives_reopen_with_log_state_and_orders(tmp_path: Path) -> None:
    path = tmp_path / "order.sqlite3"
    store = _store(path)
    entries = [Entry(1, 1, ""), Entry(2, 1, OrderCommand("a", "Tux", 2).encode())]
    _save(store, Changes(HardState(term=1, vote=1, commit=2), entries, [Order(0, "a", "Tux", 2)], applied=2))
    reopened = _store(path)
    state = reopened.load_at_start()
    assert state.hard_state == HardState(term=1, vote=1, commit=2)
    assert state.entries == entries
    assert state.applied == 2 and state.snapshot is None
    assert reopened.orders.latest_number == 0 and reopened.orders.get(0) == Order(0, "a", "Tux", 2)


def test_entries_overwrite_a_conflicting_suffix(tmp_path: Path) -> None:
    store = _store(tmp_path / "o.sqlite3")
    _save(store, Changes(entries=[Entry(1, 1, ""), Entry(2, 1, "x"), Entry(3, 1, "y")]))
    _save(store, Changes(entries=[Entry(2, 2, "z")]))
    assert store.load_at_start().entries == [Entry(1, 1, ""), Entry(2, 2, "z")]


def test_memory_keeps_only_the_newest_orders_and_reads_the_rest_from_disk(tmp_path: Path) -> None:
    store = ReplicaStore(Database(connect(tmp_path / "o.sqlite3", SCHEMA), Clock()))
    store.orders = OrderStateMachine(SqliteOrderTable(store._db), cache_size=3)
    _place(store, *[f"k{i}" for i in range(10)])
    assert len(store.orders._recent) == 3
    assert store.orders.get(0) == Order(0, "k0", "Tux", 1)
    # A retry of an order long out of memory keeps its number and buys nothing.
    again = store.orders.apply(OrderCommand("k0", "Tux", 1))
    assert (again.order.number, again.created, store.orders.latest_number) == (0, False, 9)
    assert [o.request_id for o in store.orders.page(5, 100)] == ["k6", "k7", "k8", "k9"]
    assert [o.number for o in store.orders.page(-1, 100)] == list(range(10))


def test_orders_not_yet_durable_stay_in_memory(tmp_path: Path) -> None:
    store = _store(tmp_path / "o.sqlite3")
    store.orders = OrderStateMachine(SqliteOrderTable(store._db), cache_size=0)
    _place(store, "a")
    pending = store.orders.apply(OrderCommand("b", "Tux", 1)).order
    store.orders.made_durable(0)
    assert store.orders.get(1) == pending and store.orders.for_request("b") == pending
    assert store.orders.page(-1, 5) == [Order(0, "a", "Tux", 1), pending]


def test_a_truncated_tail_is_forgotten(tmp_path: Path) -> None:
    store = _store(tmp_path / "o.sqlite3")
    _place(store, "a", "b", "c")
    store._db.read_at_start(lambda conn: conn.execute("DELETE FROM orders WHERE number >= 1"))
    store.orders.truncate_from(1)
    assert store.orders.latest_number == 0 and store.orders.for_request("b") is None
    assert store.orders.apply(OrderCommand("d", "Tux", 1)).order.number == 1


def _snapshot(index: int, size: int, term: int = 1) -> Snapshot:
    meta = SnapshotMeta(index, term, Configuration.of((1,), addresses={1: "http://a"}))
    return Snapshot(meta, size, snapshot_header(meta))


def test_a_snapshot_drops_the_log_before_it_and_restarts_from_its_tail(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    store = _store(path)
    entries = [Entry(i, 1, OrderCommand(f"k{i}", "Tux", 1).encode()) for i in range(1, 11)]
    _save(store, Changes(HardState(1, 1, 10), entries, applied=10))
    _place(store, *[f"k{i}" for i in range(1, 11)])
    done = defer.ensureDeferred(store.save_snapshot(_snapshot(10, 10), compact_before=8))
    assert done.called
    reopened = _store(path)
    state = reopened.load_at_start()
    assert state.snapshot == _snapshot(10, 10)
    assert [e.index for e in state.entries] == [8, 9, 10]
    assert reopened.orders.latest_number == 9


def _stage(store: ReplicaStore, snapshot: Snapshot, offset: int, orders: list[Order]) -> None:
    done = defer.ensureDeferred(store.stage(snapshot, offset, orders))
    assert done.called


def _orders(first: int, last: int, prefix: str = "s") -> list[Order]:
    return [Order(n, f"{prefix}{n}", "Fox", 2) for n in range(first, last)]


def test_a_staged_snapshot_survives_a_crash_and_installs_whole(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    store = _store(path)
    _save(store, Changes(HardState(1, 0, 3), [Entry(i, 1, "") for i in (1, 2, 3)], applied=3))
    _place(store, "old")
    snapshot = _snapshot(50, 5, term=2)
    _stage(store, snapshot, 0, _orders(0, 3))
    # A crash between two chunks: the replica comes back with its old state and 3 staged.
    reopened = _store(path)
    state = reopened.load_at_start()
    assert state.applied == 3 and state.snapshot is None and len(state.entries) == 3
    assert reopened.orders.latest_number == 0 and reopened.orders.get(0) == Order(0, "old", "Tux", 1)
    assert reopened.snapshots.received(snapshot) == 3 and reopened.snapshots.received(_snapshot(50, 5, term=3)) == 0
    assert reopened.snapshots.received_whole() is None
    _stage(reopened, snapshot, 3, _orders(3, 5))
    assert reopened.snapshots.received_whole() == snapshot
    assert defer.ensureDeferred(reopened.install(snapshot)).called
    assert reopened.orders.page(-1, 10) == _orders(0, 5)
    state = _store(path).load_at_start()
    assert (state.snapshot, state.entries, state.applied, state.hard_state.commit) == (snapshot, [], 50, 50)


def _store_holding_one_order(path: Path) -> ReplicaStore:
    store = _store(path)
    _save(store, Changes(HardState(1, 0, 1), [Entry(1, 1, "")], applied=1))
    _place(store, "old")
    return store


def _assert_holds_its_one_order(path: Path) -> ReplicaStore:
    """The store at ``path``, reopened: as :func:`_store_holding_one_order` left it."""
    reopened = _store(path)
    state = reopened.load_at_start()
    assert (state.snapshot, state.applied, len(state.entries)) == (None, 1, 1)
    assert reopened.orders.page(-1, 10) == [Order(0, "old", "Tux", 1)]
    return reopened


def test_installing_a_snapshot_not_staged_whole_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    store = _store_holding_one_order(path)
    snapshot = _snapshot(50, 5)
    _stage(store, snapshot, 0, _orders(0, 2))
    failed = defer.ensureDeferred(store.install(snapshot))
    assert isinstance(failed.result, Failure) and failed.result.check(RuntimeError)
    failed.addErrback(lambda _: None)
    _assert_holds_its_one_order(path)
    assert store.orders.page(-1, 10) == [Order(0, "old", "Tux", 1)]  # and memory was not reloaded


def test_a_new_snapshot_restarts_the_staging(tmp_path: Path) -> None:
    store = _store(tmp_path / "o.sqlite3")
    _stage(store, _snapshot(50, 5), 0, _orders(0, 4))
    newer = _snapshot(80, 2, term=3)
    _stage(store, newer, 0, _orders(0, 2, prefix="n"))
    assert store.snapshots.received(_snapshot(50, 5)) == 0 and store.snapshots.received_whole() == newer
    assert defer.ensureDeferred(store.install(newer)).called
    assert store.orders.page(-1, 10) == _orders(0, 2, prefix="n")


def test_an_install_that_fails_midway_leaves_the_old_state_whole(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    store = _store_holding_one_order(path)
    snapshot = _snapshot(50, 3)
    _stage(store, snapshot, 0, _orders(0, 3))
    # The disk fails after the old orders were deleted, while the new ones are copied in.
    store._db.read_at_start(lambda conn: conn.execute(
        "CREATE TRIGGER failing BEFORE INSERT ON orders WHEN NEW.number = 2 BEGIN SELECT RAISE(ABORT, 'disk'); END"))
    failed = defer.ensureDeferred(store.install(snapshot))
    assert isinstance(failed.result, Failure)
    failed.addErrback(lambda _: None)
    reopened = _assert_holds_its_one_order(path)
    assert reopened.snapshots.received_whole() == snapshot  # still staged whole: the next try installs it


def test_a_snapshot_whose_write_fails_leaves_the_whole_log(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    store = _store(path)
    entries = [Entry(i, 1, "") for i in range(1, 6)]
    _save(store, Changes(HardState(1, 1, 5), entries, applied=5))
    store._db.read_at_start(lambda conn: conn.execute(
        # After the snapshot's row is written and entries 1 and 2 are deleted.
        "CREATE TRIGGER failing BEFORE DELETE ON raft_log WHEN OLD.idx = 3 BEGIN SELECT RAISE(ABORT, 'disk'); END"))
    failed = defer.ensureDeferred(store.save_snapshot(_snapshot(5, 0), compact_before=4))
    assert isinstance(failed.result, Failure)
    failed.addErrback(lambda _: None)
    state = _store(path).load_at_start()
    assert state.snapshot is None and state.entries == entries and store.snapshot is None
