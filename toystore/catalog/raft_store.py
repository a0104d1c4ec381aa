"""Durable state of one member of the replicated catalog: the Raft log (:mod:`toystore.raft.sqlite_log`)
and the catalog's tables, which are its state machine, in one SQLite file.

One cycle of the node (new entries, a changed term or vote, and the toys, reservations and
fence that applying its committed entries changed) is one transaction and one fsync. The
tables are those of the single catalog (:func:`toystore.catalog.store.schema`), so that a
member's state reads like a single catalog's.

Unlike orders, reservations change after they are written, so a snapshot is a copy: when
the node records one (between two cycles, everything applied durable), the reservations
are copied, in the same transaction, into ``snapshot_reservations``, numbered from 0 in
request-id order; the toys and the fence, a few rows, go in the snapshot's header. Those
copied rows are the snapshot's items, read by number when a follower needs them. A
snapshot received from a leader is staged in ``snapshot_incoming_reservations``, chunk by
chunk, and installed in one transaction that replaces the toys, the reservations, the
fence and the whole log.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import Any, Sequence

from toystore.catalog.rules import STATES, ReservationRow
from toystore.catalog.state import CatalogChanges, CatalogStateMachine, ToyState
from toystore.catalog.store import (
    RESERVATION_COLUMNS,
    Cursor,
    Page,
    highest_term,
    list_reservations,
    oldest_held,
    read_reservations,
    schema,
    see_term,
    write_reservations,
)
from toystore.db import Database
from toystore.raft import sqlite_log as raft_sqlite
from toystore.raft.membership import Configuration
from toystore.raft.messages import Entry, HardState, SnapshotMeta
from toystore.raft.sqlite_log import RaftState, StagedSnapshots, snapshot_header
from toystore.raft.statemachine import Snapshot

_COPY_COLUMNS = f"position, {RESERVATION_COLUMNS}"
_SNAPSHOT_TABLES = """
CREATE TABLE IF NOT EXISTS snapshot_reservations (
    position INTEGER PRIMARY KEY, request_id TEXT NOT NULL, name TEXT NOT NULL, quantity INTEGER NOT NULL,
    state TEXT NOT NULL, term INTEGER NOT NULL, created REAL NOT NULL, remaining INTEGER NOT NULL,
    released_term INTEGER
);
CREATE TABLE IF NOT EXISTS snapshot_incoming_reservations (
    position INTEGER PRIMARY KEY, request_id TEXT NOT NULL, name TEXT NOT NULL, quantity INTEGER NOT NULL,
    state TEXT NOT NULL, term INTEGER NOT NULL, created REAL NOT NULL, remaining INTEGER NOT NULL,
    released_term INTEGER
);
"""


def member_schema(initial_stock: int) -> str:
    """A member's tables: the Raft log's, the catalog's (with the ten toys when new), the snapshots'."""
    return raft_sqlite.SCHEMA + _SNAPSHOT_TABLES + schema(initial_stock)


class SqliteReservationTable:
    """The durable reservations, read at once on the calling thread (:meth:`Database.look_up`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def rows(self, request_ids: Sequence[str]) -> dict[str, ReservationRow]:
        return self._db.look_up(lambda conn: read_reservations(conn, request_ids))


def _toys(conn: sqlite3.Connection) -> list[ToyState]:
    return [ToyState(*row) for row in conn.execute(
        "SELECT name, price, quantity, initial, restocked FROM toys ORDER BY name")]


def _machine(db: Database) -> CatalogStateMachine:
    def read(conn: sqlite3.Connection) -> tuple[list[ToyState], int, dict[str, int]]:
        return _toys(conn), highest_term(conn), dict(conn.execute("SELECT state, count FROM reservation_counts"))

    toys, fence, counts = db.look_up(read)
    return CatalogStateMachine(toys, fence, SqliteReservationTable(db), counts)


def _write_changes(conn: sqlite3.Connection, changes: CatalogChanges) -> None:
    conn.executemany("UPDATE toys SET price = ?, quantity = ?, initial = ?, restocked = ? WHERE name = ?",
                     [(t.price, t.quantity, t.initial, t.restocked, t.name) for t in changes.toys.values()])
    write_reservations(conn, list(changes.reservations.values()))
    if changes.highest_term is not None:
        see_term(conn, changes.highest_term)


def _save(conn: sqlite3.Connection, hard_state: HardState | None, entries: Sequence[Entry], applied: int | None,
          changes: CatalogChanges) -> None:
    raft_sqlite.save(conn, hard_state, entries, applied)
    _write_changes(conn, changes)


def _copy_for_snapshot(conn: sqlite3.Connection, meta: SnapshotMeta, compact_before: int) -> Snapshot:
    conn.execute("DELETE FROM snapshot_reservations")
    conn.execute(f"INSERT INTO snapshot_reservations ({_COPY_COLUMNS}) SELECT"
                 f" row_number() OVER (ORDER BY request_id) - 1, {RESERVATION_COLUMNS} FROM reservations")
    (size,) = conn.execute("SELECT count(*) FROM snapshot_reservations").fetchone()
    toys = [[t.name, t.price, t.quantity, t.initial, t.restocked] for t in _toys(conn)]
    snapshot = Snapshot(meta, size, snapshot_header(meta, toys=toys, highest_term=highest_term(conn)))
    raft_sqlite.save_snapshot(conn, snapshot, compact_before)
    return snapshot


def _read_copy(conn: sqlite3.Connection, offset: int, limit: int) -> list[ReservationRow]:
    return [ReservationRow(*row) for row in conn.execute(
        f"SELECT {RESERVATION_COLUMNS} FROM snapshot_reservations WHERE position >= ? ORDER BY position LIMIT ?",
        (offset, limit))]


def _stage(conn: sqlite3.Connection, snapshot: Snapshot, offset: int, rows: Sequence[ReservationRow]) -> None:
    if offset == 0:
        conn.execute("DELETE FROM snapshot_incoming_reservations")
    conn.executemany(f"INSERT INTO snapshot_incoming_reservations ({_COPY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [(offset + i, r.request_id, r.name, r.quantity, r.state, r.term, r.created, r.remaining,
                       r.released_term) for i, r in enumerate(rows)])
    raft_sqlite.record_staged(conn, snapshot, offset + len(rows))


def _discard_staged(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM snapshot_incoming_reservations")
    raft_sqlite.discard_staged(conn)


def _install(conn: sqlite3.Connection, snapshot: Snapshot) -> None:
    raft_sqlite.check_staged_whole(conn, snapshot)
    header = snapshot.header
    conn.execute("DELETE FROM reservations")
    conn.execute(f"INSERT INTO reservations ({RESERVATION_COLUMNS}) SELECT {RESERVATION_COLUMNS}"
                 " FROM snapshot_incoming_reservations ORDER BY position")
    conn.execute("DELETE FROM snapshot_incoming_reservations")
    conn.execute("DELETE FROM toys")
    conn.executemany("INSERT INTO toys (name, price, quantity, initial, restocked) VALUES (?, ?, ?, ?, ?)",
                     [tuple(toy) for toy in header["toys"]])
    conn.execute("UPDATE meta SET value = ? WHERE key = 'highest_term'", (header["highest_term"],))
    # The counting triggers kept reservation_counts right through the delete and the insert.
    raft_sqlite.installed(conn, snapshot)


def parse_snapshot_header(header: dict[str, Any]) -> None:
    """:raises ValueError: unless ``header`` holds the toys and the fence a catalog snapshot carries."""
    toys, fence = header.get("toys"), header.get("highest_term")
    if type(fence) is not int or fence < 0 or not isinstance(toys, list):
        raise ValueError("a catalog snapshot's header holds 'toys' and 'highest_term'")
    for toy in toys:
        if not (isinstance(toy, list) and len(toy) == 5 and isinstance(toy[0], str)
                and isinstance(toy[1], (int, float)) and all(type(v) is int and v >= 0 for v in toy[2:])):
            raise ValueError("a toy of a catalog snapshot is [name, price, quantity, initial, restocked]")


def parse_reservation(item: Any) -> ReservationRow:
    """:raises ValueError: unless ``item`` is a reservation as :meth:`CatalogRaftStore.snapshot_items` sends it."""
    if not (isinstance(item, list) and len(item) == 8 and isinstance(item[0], str) and isinstance(item[1], str)
            and type(item[2]) is int and item[2] >= 1 and item[3] in STATES and type(item[4]) is int
            and isinstance(item[5], (int, float)) and type(item[6]) is int
            and (item[7] is None or type(item[7]) is int)):
        raise ValueError("a reservation of a catalog snapshot is "
                         "[request_id, name, quantity, state, term, created, remaining, released_term]")
    return ReservationRow(item[0], item[1], item[2], item[3], item[4], float(item[5]), item[6], item[7])


class CatalogRaftStore:
    """Loads and saves a catalog member's durable state through a group-committing database.

    :attr:`machine` is the state machine over the tables; the member applies to it and
    :meth:`save` writes what applying changed. Installing a snapshot replaces it.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self.machine = _machine(db)
        self.snapshots = StagedSnapshots()

    def load_at_start(self, first_configuration: Configuration) -> RaftState:
        """The durable Raft state; at the first start, ``first_configuration`` is recorded as
        the one the member starts with (later starts find it, and ignore the argument)."""
        state = raft_sqlite.load_at_start(self._db, first_configuration)
        self.snapshots = StagedSnapshots(state.snapshot, state.staged)
        return state

    async def save(self, hard_state: HardState | None, entries: Sequence[Entry], applied: int | None) -> None:
        """Makes the cycle's Raft part durable with every change applied since the last save."""
        changes = self.machine.take_changes()
        await self._db.write(lambda conn: _save(conn, hard_state, entries, applied, changes))
        self.machine.made_durable(changes)

    async def save_snapshot(self, meta: SnapshotMeta, compact_before: int) -> Snapshot:
        """Copies the state (all of it durable, applied through ``meta.index``) as the snapshot
        at ``meta`` and deletes the log before ``compact_before``, in one transaction."""
        snapshot = await self._db.write(lambda conn: _copy_for_snapshot(conn, meta, compact_before))
        self.snapshots.latest = snapshot
        return snapshot

    async def snapshot_items(self, snapshot: Snapshot, offset: int, limit: int) -> list[list[Any]]:
        """Reservations ``offset`` to ``offset + limit`` of ``snapshot`` (fewer at its end), as JSON."""
        limit = max(0, min(limit, snapshot.size - offset))
        rows = await self._db.read(lambda conn: _read_copy(conn, offset, limit)) if limit else []
        return [[r.request_id, r.name, r.quantity, r.state, r.term, r.created, r.remaining, r.released_term]
                for r in rows]

    async def stage(self, snapshot: Snapshot, offset: int, rows: Sequence[ReservationRow]) -> None:
        """Stages ``rows``, ``snapshot``'s from ``offset`` on (0 starts it afresh)."""
        await self._db.write(lambda conn: _stage(conn, snapshot, offset, rows))
        self.snapshots.staged = (snapshot, offset + len(rows))

    async def discard_staged(self) -> None:
        """Drops the snapshot being received, if any."""
        if self.snapshots.staged is not None:
            await self._db.write(_discard_staged)
            self.snapshots.staged = None

    async def install(self, snapshot: Snapshot) -> None:
        """The staged ``snapshot`` replaces the catalog's state and the whole log, in one transaction."""
        await self._db.write(lambda conn: _install(conn, snapshot))
        self.snapshots.staged = None
        self.snapshots.latest = snapshot
        self.machine = _machine(self._db)

    async def reservations(self, now: float, state: str | None, older_than: float, limit: int | None,
                           after: Cursor | None) -> Page:
        """A page of the durable reservations, as :meth:`CatalogStore.reservations` lists them."""
        return await self._db.read(partial(list_reservations, now, state, older_than, limit, after))

    async def oldest_held_created(self) -> float | None:
        """When the oldest reservation still held was made (durable ones)."""
        return await self._db.read(oldest_held)
