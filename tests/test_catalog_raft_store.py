"""A catalog member's durable state: what applying commands changed is written with the
cycle; a restart reads back the same state; a snapshot is the state at its index even as
commands go on, and installed on another member it gives the same state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings

from tests.test_catalog_state import OPERATIONS, _result
from toystore.catalog.raft_store import CatalogRaftStore, member_schema, parse_reservation
from toystore.catalog.state import BUY, CONFIRM, RELEASE, RESTOCK, CatalogCommand
from toystore.db import Database, connect
from toystore.raft.membership import Configuration
from toystore.raft.messages import Entry, HardState, SnapshotMeta
from twisted.internet.task import Clock

MEMBERS = Configuration.of([1, 2, 3], addresses={1: "http://c1", 2: "http://c2", 3: "http://c3"})


def _open(path: Path) -> CatalogRaftStore:
    store = CatalogRaftStore(Database(connect(path, member_schema(2)), Clock()))
    store.load_at_start(MEMBERS)
    return store


def _command(operation: tuple[Any, ...], at: float) -> CatalogCommand:
    kind = operation[0]
    if kind == BUY:
        return CatalogCommand(BUY, tuple(operation[1]), at=at)
    if kind in (CONFIRM, RELEASE):
        return CatalogCommand(kind, tuple(operation[1]), term=operation[2])
    return CatalogCommand(RESTOCK, to=operation[1], name=operation[2])


def _apply_and_save(store: CatalogRaftStore, commands: list[CatalogCommand], first_index: int) -> None:
    entries = [Entry(index=first_index + k, term=1, data=c.encode()) for k, c in enumerate(commands)]
    for command in commands:
        store.machine.apply(command)
    if entries:
        _result(store.save(HardState(term=1, vote=1, commit=entries[-1].index), entries, entries[-1].index))


def _state(store: CatalogRaftStore) -> tuple[Any, ...]:
    machine = store.machine
    rows = {rid: machine.reservation(rid) for rid in "abcde"}
    return machine.toys, rows, machine.highest_term, machine.counts()


@settings(max_examples=40, deadline=None)
@given(before=OPERATIONS, after=OPERATIONS)
def test_a_snapshot_restores_the_state_at_its_index_and_a_restart_the_state_on_disk(
        tmp_path_factory: Any, before: Any, after: Any) -> None:
    folder = tmp_path_factory.mktemp("members")
    leader = _open(folder / "leader.sqlite3")
    _apply_and_save(leader, [_command(op, float(k)) for k, op in enumerate(before)], 1)
    at_snapshot = _state(leader)
    meta = SnapshotMeta(len(before), 1, MEMBERS)
    snapshot = _result(leader.save_snapshot(meta, compact_before=len(before) + 1))
    # Commands go on after the snapshot: it must not see them.
    _apply_and_save(leader, [_command(op, 100.0 + k) for k, op in enumerate(after)], len(before) + 1)

    follower = _open(folder / "follower.sqlite3")
    for offset in range(0, max(snapshot.size, 1), 3):
        items = _result(leader.snapshot_items(snapshot, offset, 3))
        _result(follower.stage(snapshot, offset, [parse_reservation(item) for item in items]))
    assert follower.snapshots.received_whole() == snapshot
    _result(follower.install(snapshot))
    assert _state(follower) == at_snapshot

    reopened = _open(folder / "leader.sqlite3")
    assert _state(reopened) == _state(leader)
    assert reopened.snapshots.latest == snapshot
