"""Durable state of one order replica: the Raft log, term and vote, and the applied orders.

They share one SQLite file so that one cycle of the node (new log entries, a changed
term or vote, orders applied from newly committed entries) is one transaction and one
fsync, and concurrent cycles' writes join the same group commit (see :mod:`toystore.db`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Sequence

from toystore.db import Database
from toystore.order.state import Order
from toystore.raft.messages import Entry, HardState

SCHEMA = """
CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raft_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    number INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    quantity INTEGER NOT NULL
);
"""


@dataclass
class ReplicaState:
    """What a replica reads back at start."""

    hard_state: HardState
    entries: list[Entry]
    applied: int
    orders: list[Order]


@dataclass
class Changes:
    """What one cycle makes durable; empty parts write nothing. Entries overwrite the log
    from their first index on (Raft's truncation of a conflicting suffix)."""

    hard_state: HardState | None = None
    entries: Sequence[Entry] = ()
    orders: Sequence[Order] = ()
    applied: int | None = None


def _load(conn: sqlite3.Connection) -> ReplicaState:
    values = dict(conn.execute("SELECT key, value FROM raft_state"))
    hard_state = HardState(term=values.get("term", 0), vote=values.get("vote", 0), commit=values.get("commit", 0))
    entries = [Entry(index=i, term=t, data=d) for i, t, d in conn.execute("SELECT idx, term, data FROM raft_log ORDER BY idx")]
    orders = [Order(n, r, name, q) for n, r, name, q in
              conn.execute("SELECT number, request_id, name, quantity FROM orders ORDER BY number")]
    return ReplicaState(hard_state, entries, values.get("applied", 0), orders)


def _save(conn: sqlite3.Connection, changes: Changes) -> None:
    values: dict[str, int] = {}
    if changes.hard_state is not None:
        values.update(term=changes.hard_state.term, vote=changes.hard_state.vote, commit=changes.hard_state.commit)
    if changes.applied is not None:
        values["applied"] = changes.applied
    conn.executemany("INSERT OR REPLACE INTO raft_state (key, value) VALUES (?, ?)", values.items())
    if changes.entries:
        conn.execute("DELETE FROM raft_log WHERE idx >= ?", (changes.entries[0].index,))
        conn.executemany("INSERT INTO raft_log (idx, term, data) VALUES (?, ?, ?)",
                         [(e.index, e.term, e.data) for e in changes.entries])
    conn.executemany("INSERT INTO orders (number, request_id, name, quantity) VALUES (?, ?, ?, ?)",
                     [(o.number, o.request_id, o.name, o.quantity) for o in changes.orders])


class ReplicaStore:
    """Loads and saves a replica's durable state through a group-committing database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def load_at_start(self) -> ReplicaState:
        return self._db.read_at_start(_load)

    async def save(self, changes: Changes) -> None:
        """Returns once every part of ``changes`` is durable (fsync)."""
        await self._db.write(lambda conn: _save(conn, changes))
