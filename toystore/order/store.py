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

import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from toystore.db import Database
from toystore.order.state import Order, OrderStateMachine
from toystore.raft import sqlite_log as raft_sqlite
from toystore.raft.membership import Configuration
from toystore.raft.messages import Entry, HardState
from toystore.raft.sqlite_log import RaftState, StagedSnapshots
from toystore.raft.statemachine import Snapshot

SCHEMA = raft_sqlite.SCHEMA + """
CREATE TABLE IF NOT EXISTS orders (
    number INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    quantity INTEGER NOT NULL
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


def _insert_orders(conn: sqlite3.Connection, orders: Sequence[Order], table: str = "orders") -> None:
    conn.executemany(f"INSERT INTO {table} ({_ORDER_COLUMNS}) VALUES (?, ?, ?, ?)",
                     [(o.number, o.request_id, o.name, o.quantity) for o in orders])


def _save(conn: sqlite3.Connection, changes: Changes) -> None:
    raft_sqlite.save(conn, changes.hard_state, changes.entries, changes.applied)
    _insert_orders(conn, changes.orders)


def _stage(conn: sqlite3.Connection, snapshot: Snapshot, offset: int, orders: Sequence[Order]) -> None:
    if offset == 0:
        conn.execute("DELETE FROM snapshot_incoming_orders")
    _insert_orders(conn, orders, "snapshot_incoming_orders")
    raft_sqlite.record_staged(conn, snapshot, offset + len(orders))


def _discard_staged(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM snapshot_incoming_orders")
    raft_sqlite.discard_staged(conn)


def _install(conn: sqlite3.Connection, snapshot: Snapshot) -> None:
    raft_sqlite.check_staged_whole(conn, snapshot)
    conn.execute("DELETE FROM orders")
    conn.execute(f"INSERT INTO orders ({_ORDER_COLUMNS}) SELECT {_ORDER_COLUMNS} FROM snapshot_incoming_orders")
    conn.execute("DELETE FROM snapshot_incoming_orders")
    raft_sqlite.installed(conn, snapshot)


class ReplicaStore:
    """Loads and saves a replica's durable state through a group-committing database.

    :attr:`orders` is the state machine over the orders table, built at once; the order
    replica applies to it and :meth:`save` tells it what became durable.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self.orders = OrderStateMachine(SqliteOrderTable(db))
        self.snapshots = StagedSnapshots()

    def load_at_start(self, first_configuration: Configuration = Configuration()) -> RaftState:
        """The durable state; at the first start, ``first_configuration`` is recorded as
        the one the replica starts with (later starts find it, and ignore the argument)."""
        state = raft_sqlite.load_at_start(self._db, first_configuration)
        self.snapshots = StagedSnapshots(state.snapshot, state.staged)
        return state

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest durable snapshot."""
        return self.snapshots.latest

    async def save(self, changes: Changes) -> None:
        """Returns once every part of ``changes`` is durable (fsync)."""
        await self._db.write(lambda conn: _save(conn, changes))
        if changes.orders:
            self.orders.made_durable(changes.orders[-1].number)

    async def flushed(self) -> None:
        """Returns once every save begun before this call is durable (an empty write, in the
        group after them: it changes nothing, so it costs no fsync of its own)."""
        await self._db.write(lambda conn: None)

    async def save_snapshot(self, snapshot: Snapshot, compact_before: int) -> None:
        """Records ``snapshot`` (of orders durable already) and deletes the log before
        ``compact_before``, in one transaction."""
        await self._db.write(lambda conn: raft_sqlite.save_snapshot(conn, snapshot, compact_before))
        self.snapshots.latest = snapshot

    async def snapshot_orders(self, snapshot: Snapshot, offset: int, limit: int) -> list[Order]:
        """Orders ``offset`` to ``offset + limit`` of ``snapshot`` (fewer at its end)."""
        limit = max(0, min(limit, snapshot.size - offset))
        return await self._db.read(lambda conn: _orders(conn, offset, limit)) if limit else []

    async def discard_staged(self) -> None:
        """Drops the snapshot being received, if any."""
        if self.snapshots.staged is not None:
            await self._db.write(_discard_staged)
            self.snapshots.staged = None

    async def stage(self, snapshot: Snapshot, offset: int, orders: Sequence[Order]) -> None:
        """Stages ``orders``, ``snapshot``'s from ``offset`` on (0 starts it afresh)."""
        await self._db.write(lambda conn: _stage(conn, snapshot, offset, orders))
        self.snapshots.staged = (snapshot, offset + len(orders))

    async def install(self, snapshot: Snapshot) -> None:
        """The staged ``snapshot`` replaces the orders and the whole log, in one transaction."""
        await self._db.write(lambda conn: _install(conn, snapshot))
        self.snapshots.staged = None
        self.snapshots.latest = snapshot
        self.orders.reload()
