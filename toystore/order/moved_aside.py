"""Orders a primary-backup replica moved aside from its history, kept for the operator.

When a replica's history forked from the current leader's (a leader died holding orders
it had made durable but never pushed), the orders past the fork were never replicated. The
replica removes them from its ``orders`` table and keeps them here, in the same
transaction, with what became of their stock reservation at the catalog.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from toystore.db import Database
from toystore.order.state import Order

SCHEMA = """
CREATE TABLE IF NOT EXISTS moved_aside (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    number INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    name TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    moved_at REAL NOT NULL,
    reservation TEXT NOT NULL
);
"""
PENDING = "pending"  # the reservation's fate is not settled yet


@dataclass(frozen=True)
class MovedAside:
    """One order moved aside; ``reservation`` says what became of its stock: ``pending``,
    ``released``, ``kept for order N`` (the leader holds the request under N), or why the
    catalog refused to release it."""

    seq: int
    order: Order
    moved_at: float
    reservation: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, **self.order.replicated(), "moved_at": self.moved_at,
                "reservation": self.reservation}


def _rows(conn: sqlite3.Connection, where: str, args: Sequence[Any], limit: int) -> list[MovedAside]:
    rows = conn.execute("SELECT seq, number, request_id, name, quantity, moved_at, reservation FROM moved_aside "
                        f"WHERE {where} ORDER BY seq LIMIT ?", (*args, limit))
    return [MovedAside(seq, Order(n, r, name, q), at, state) for seq, n, r, name, q, at, state in rows]


def _move(conn: sqlite3.Connection, orders: Sequence[Order], now: float) -> None:
    conn.execute("DELETE FROM orders WHERE number >= ?", (orders[0].number,))
    conn.executemany("INSERT INTO moved_aside (number, request_id, name, quantity, moved_at, reservation) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     [(o.number, o.request_id, o.name, o.quantity, now, PENDING) for o in orders])


class MovedAsideStore:
    """The ``moved_aside`` table next to the replica's orders.

    :param db: the database the replica's :class:`~toystore.order.store.ReplicaStore` uses,
        so that moving orders aside and removing them from the history are one transaction.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        db.read_at_start(lambda conn: conn.executescript(SCHEMA))

    async def pending(self, limit: int) -> list[MovedAside]:
        """The oldest whose reservation is not settled yet (also from a previous run)."""
        return await self._db.read(lambda conn: _rows(conn, "reservation = ?", (PENDING,), limit))

    async def move(self, orders: Sequence[Order], now: float) -> None:
        """Removes ``orders`` (a tail: numbers from the first on) from the replica's orders
        and keeps them here; durable when it returns."""
        await self._db.write(lambda conn: _move(conn, orders, now))

    async def record(self, outcomes: dict[str, str]) -> None:
        """What became of the reservations of these pending request ids."""
        await self._db.write(lambda conn: conn.executemany(
            "UPDATE moved_aside SET reservation = ? WHERE request_id = ? AND reservation = ?",
            [(outcome, request_id, PENDING) for request_id, outcome in outcomes.items()]))

    async def listing(self, after: int, limit: int) -> list[MovedAside]:
        """At most ``limit`` of them with ``seq`` above ``after``, oldest first."""
        return await self._db.read(lambda conn: _rows(conn, "seq > ?", (after,), limit))
