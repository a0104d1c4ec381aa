"""Durable state of one order replica: the Raft log, term and vote, the applied orders,
and the snapshot that lets the log forget its past.

They share one SQLite file so that one cycle of the node (new log entries, a changed
term or vote, orders applied from newly committed entries) is one transaction and one
fsync, and concurrent cycles' writes join the same group commit (see :mod:`toystore.db`).

The orders table is the state machine, durable as it is applied, so a snapshot needs no
copy of it: orders are numbered densely and never change, and a snapshot at a log index
is the orders up to the number applied by then (its ``size``). Recording one is a row
and deleting the log before it, in one transaction. A snapshot received from a leader is
staged in tables of its own, chunk by chunk (each durable, so a transfer resumes after a
crash), and installed in one transaction that replaces the orders and the whole log.

Membership lives in the log (configuration entries) and in the snapshot's header; the
configuration a replica was first started with (from the environment, or none for one
that joins) is recorded once, so that later starts ignore the environment.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from toystore.db import Database
from toystore.order.state import Order, OrderStateMachine
from toystore.raft.membership import Configuration
from toystore.raft.messages import Entry, EntryKind, HardState, SnapshotMeta
from toystore.raft.statemachine import Snapshot

SCHEMA = """
CREATE TABLE IF NOT EXISTS raft_log (
    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, data TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'normal'
);
CREATE TABLE IF NOT EXISTS raft_bootstrap (one INTEGER PRIMARY KEY CHECK (one = 1), members TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raft_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    number INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    quantity INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS raft_snapshot (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    idx INTEGER NOT NULL, term INTEGER NOT NULL, size INTEGER NOT NULL, header TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_incoming (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    idx INTEGER NOT NULL, term INTEGER NOT NULL, size INTEGER NOT NULL, header TEXT NOT NULL,
    received INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_incoming_orders (
    number INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    quantity INTEGER NOT NULL
);
"""

_ORDER_COLUMNS = "number, request_id, name, quantity"


@dataclass
class ReplicaState:
    """What a replica reads back at start: never the orders, only the log after its snapshot."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]
    applied: int
    bootstrap: Configuration | None  # None before the first start


@dataclass
class Changes:
    """What one cycle makes durable; empty parts write nothing. Entries overwrite the log
    from their first index on (Raft's truncation of a conflicting suffix)."""

    hard_state: HardState | None = None
    entries: Sequence[Entry] = ()
    orders: Sequence[Order] = ()
    applied: int | None = None


class SqliteOrderTable:
    """The orders table, read by index at once on the calling thread (:meth:`Database.look_up`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def by_number(self, number: int) -> Order | None:
        return self._one(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE number = ?", number)

    def by_request(self, request_id: str) -> Order | None:
        return self._one(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE request_id = ?", request_id)

    def numbered(self, first: int, last: int) -> list[Order]:
        return self._db.look_up(lambda conn: _orders(conn, first, last - first + 1))

    def latest_number(self) -> int:
        return self._db.look_up(lambda conn: conn.execute("SELECT coalesce(max(number), -1) FROM orders").fetchone()[0])

    def _one(self, query: str, key: Any) -> Order | None:
        row = self._db.look_up(lambda conn: conn.execute(query, (key,)).fetchone())
        return Order(*row) if row is not None else None


def _orders(conn: sqlite3.Connection, first: int, limit: int) -> list[Order]:
    rows = conn.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE number >= ? ORDER BY number LIMIT ?",
                        (first, limit))
    return [Order(*row) for row in rows]


def snapshot_header(meta: SnapshotMeta) -> dict[str, Any]:
    """The header a snapshot is stored and sent with: the members in force at it."""
    return {"members": meta.config.to_json()} if meta.config is not None else {}


def _snapshot_of(row: tuple[int, int, int, str] | None) -> Snapshot | None:
    if row is None:
        return None
    index, term, size, header = row
    members = json.loads(header).get("members")
    return Snapshot(SnapshotMeta(index, term, Configuration.from_json(members) if members is not None else None),
                    size, json.loads(header))


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database of an earlier version up to the schema (columns added since)."""
    if "kind" not in {row[1] for row in conn.execute("PRAGMA table_info(raft_log)")}:
        conn.execute("ALTER TABLE raft_log ADD COLUMN kind TEXT NOT NULL DEFAULT 'normal'")


def _load(conn: sqlite3.Connection) -> tuple[ReplicaState, tuple[Snapshot, int] | None]:
    _migrate(conn)
    values = dict(conn.execute("SELECT key, value FROM raft_state"))
    hard_state = HardState(term=values.get("term", 0), vote=values.get("vote", 0), commit=values.get("commit", 0))
    entries = [Entry(index=i, term=t, data=d, kind=EntryKind(k))
               for i, t, d, k in conn.execute("SELECT idx, term, data, kind FROM raft_log ORDER BY idx")]
    snapshot = _snapshot_of(conn.execute("SELECT idx, term, size, header FROM raft_snapshot").fetchone())
    incoming = conn.execute("SELECT idx, term, size, header, received FROM snapshot_incoming").fetchone()
    staged = (_snapshot_of(incoming[:4]), incoming[4]) if incoming is not None else None
    bootstrap = conn.execute("SELECT members FROM raft_bootstrap").fetchone()
    state = ReplicaState(hard_state, snapshot, entries, values.get("applied", 0),  # type: ignore[arg-type]
                         Configuration.decode(bootstrap[0]) if bootstrap is not None else None)
    return state, staged  # type: ignore[return-value]


def _record_bootstrap(conn: sqlite3.Connection, config: Configuration) -> None:
    conn.execute("INSERT INTO raft_bootstrap (one, members) VALUES (1, ?)", (config.encode(),))


def _insert_orders(conn: sqlite3.Connection, orders: Sequence[Order], table: str = "orders") -> None:
    conn.executemany(f"INSERT INTO {table} ({_ORDER_COLUMNS}) VALUES (?, ?, ?, ?)",
                     [(o.number, o.request_id, o.name, o.quantity) for o in orders])


def _save(conn: sqlite3.Connection, changes: Changes) -> None:
    values: dict[str, int] = {}
    if changes.hard_state is not None:
        values.update(term=changes.hard_state.term, vote=changes.hard_state.vote, commit=changes.hard_state.commit)
    if changes.applied is not None:
        values["applied"] = changes.applied
    conn.executemany("INSERT OR REPLACE INTO raft_state (key, value) VALUES (?, ?)", values.items())
    if changes.entries:
        conn.execute("DELETE FROM raft_log WHERE idx >= ?", (changes.entries[0].index,))
        conn.executemany("INSERT INTO raft_log (idx, term, data, kind) VALUES (?, ?, ?, ?)",
                         [(e.index, e.term, e.data, e.kind.value) for e in changes.entries])
    _insert_orders(conn, changes.orders)


def _record_snapshot(conn: sqlite3.Connection, table: str, snapshot: Snapshot, *extra: int) -> None:
    meta = snapshot.meta
    marks = ", ?" * len(extra)
    conn.execute(f"INSERT OR REPLACE INTO {table} VALUES (1, ?, ?, ?, ?{marks})",
                 (meta.index, meta.term, snapshot.size, json.dumps(snapshot.header, sort_keys=True), *extra))


def _save_snapshot(conn: sqlite3.Connection, snapshot: Snapshot, compact_before: int) -> None:
    _record_snapshot(conn, "raft_snapshot", snapshot)
    conn.execute("DELETE FROM raft_log WHERE idx < ?", (compact_before,))


def _stage(conn: sqlite3.Connection, snapshot: Snapshot, offset: int, orders: Sequence[Order]) -> None:
    if offset == 0:
        conn.execute("DELETE FROM snapshot_incoming_orders")
    _insert_orders(conn, orders, "snapshot_incoming_orders")
    _record_snapshot(conn, "snapshot_incoming", snapshot, offset + len(orders))


def _discard_staged(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM snapshot_incoming_orders")
    conn.execute("DELETE FROM snapshot_incoming")


def _install(conn: sqlite3.Connection, snapshot: Snapshot) -> None:
    row = conn.execute("SELECT idx, term, size, header, received FROM snapshot_incoming").fetchone()
    if row is None or _snapshot_of(row[:4]) != snapshot or row[4] != snapshot.size:
        raise RuntimeError(f"the snapshot at {snapshot.meta} is not staged whole")
    conn.execute("DELETE FROM orders")
    conn.execute(f"INSERT INTO orders ({_ORDER_COLUMNS}) SELECT {_ORDER_COLUMNS} FROM snapshot_incoming_orders")
    _discard_staged(conn)
    conn.execute("DELETE FROM raft_log")
    _record_snapshot(conn, "raft_snapshot", snapshot)
    index = snapshot.meta.index
    conn.executemany("INSERT OR REPLACE INTO raft_state (key, value) VALUES (?, ?)",
                     [("applied", index), ("commit", index)])


class ReplicaStore:
    """Loads and saves a replica's durable state through a group-committing database.

    :attr:`orders` is the state machine over the orders table, built at once; the order
    replica applies to it and :meth:`save` tells it what became durable.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self.orders = OrderStateMachine(SqliteOrderTable(db))
        self.snapshot: Snapshot | None = None  # the latest durable one
        self._staged: tuple[Snapshot, int] | None = None  # the snapshot being received, and its items staged

    def load_at_start(self, first_configuration: Configuration = Configuration()) -> ReplicaState:
        """The durable state; at the first start, ``first_configuration`` is recorded as
        the one the replica starts with (later starts find it, and ignore the argument)."""
        state, self._staged = self._db.read_at_start(_load)
        if state.bootstrap is None:
            self._db.write_at_start(lambda conn: _record_bootstrap(conn, first_configuration))
            state.bootstrap = first_configuration
        self.snapshot = state.snapshot
        return state

    async def save(self, changes: Changes) -> None:
        """Returns once every part of ``changes`` is durable (fsync)."""
        await self._db.write(lambda conn: _save(conn, changes))
        if changes.orders:
            self.orders.made_durable(changes.orders[-1].number)

    async def save_snapshot(self, snapshot: Snapshot, compact_before: int) -> None:
        """Records ``snapshot`` (of orders durable already) and deletes the log before
        ``compact_before``, in one transaction."""
        await self._db.write(lambda conn: _save_snapshot(conn, snapshot, compact_before))
        self.snapshot = snapshot

    async def snapshot_orders(self, snapshot: Snapshot, offset: int, limit: int) -> list[Order]:
        """Orders ``offset`` to ``offset + limit`` of ``snapshot`` (fewer at its end)."""
        limit = max(0, min(limit, snapshot.size - offset))
        return await self._db.read(lambda conn: _orders(conn, offset, limit)) if limit else []

    def received_snapshot(self) -> Snapshot | None:
        """The snapshot staged whole, if one is."""
        return self._staged[0] if self._staged is not None and self._staged[1] == self._staged[0].size else None

    def received(self, snapshot: Snapshot) -> int:
        """Orders of ``snapshot`` staged so far; 0 when another one is staged, all when it is
        the latest snapshot here (installed: a leader that missed the answer asks again)."""
        if snapshot == self.snapshot:
            return snapshot.size
        return self._staged[1] if self._staged is not None and self._staged[0] == snapshot else 0

    async def discard_staged(self) -> None:
        """Drops the snapshot being received, if any."""
        if self._staged is not None:
            await self._db.write(_discard_staged)
            self._staged = None

    async def stage(self, snapshot: Snapshot, offset: int, orders: Sequence[Order]) -> None:
        """Stages ``orders``, ``snapshot``'s from ``offset`` on (0 starts it afresh)."""
        await self._db.write(lambda conn: _stage(conn, snapshot, offset, orders))
        self._staged = (snapshot, offset + len(orders))

    async def install(self, snapshot: Snapshot) -> None:
        """The staged ``snapshot`` replaces the orders and the whole log, in one transaction."""
        await self._db.write(lambda conn: _install(conn, snapshot))
        self._staged = None
        self.snapshot = snapshot
        self.orders.reload()
