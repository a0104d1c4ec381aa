"""The Raft half of a host's SQLite file: the log, term and vote, the applied index, the
configuration of the first start, and the snapshot records.

A host keeps its state machine's tables in the same file, so that one cycle of the node
(new entries, a changed term or vote, and what applying the committed ones changed) is one
transaction and one fsync. These functions each take the connection of a transaction the
host runs (:class:`toystore.db.Database`) and add the Raft part of it; what a snapshot
holds besides its record (``size`` items, a JSON ``header``) is the host's business.

``snapshot_incoming`` records the snapshot a follower is receiving from a leader and how
many of its items are staged; the host stages the items in tables of its own.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from toystore.db import Database
from toystore.raft.membership import Configuration
from toystore.raft.messages import Entry, EntryKind, HardState, SnapshotMeta
from toystore.raft.statemachine import Snapshot

SCHEMA = """
CREATE TABLE IF NOT EXISTS raft_log (
    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, data TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'normal'
);
CREATE TABLE IF NOT EXISTS raft_bootstrap (one INTEGER PRIMARY KEY CHECK (one = 1), members TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raft_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS raft_snapshot (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    idx INTEGER NOT NULL, term INTEGER NOT NULL, size INTEGER NOT NULL, header TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_incoming (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    idx INTEGER NOT NULL, term INTEGER NOT NULL, size INTEGER NOT NULL, header TEXT NOT NULL,
    received INTEGER NOT NULL
);
"""


@dataclass
class RaftState:
    """What a host reads back at start: never its state machine, only the log after its snapshot."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]
    applied: int
    bootstrap: Configuration | None  # None before the first start
    staged: tuple[Snapshot, int] | None  # a snapshot being received, and how many of its items are staged


def snapshot_header(meta: SnapshotMeta, **extra: Any) -> dict[str, Any]:
    """The header a snapshot is stored and sent with: the members in force at it, and what
    the host keeps there besides."""
    return {**extra, **({"members": meta.config.to_json()} if meta.config is not None else {})}


def _snapshot_of(row: tuple[int, int, int, str] | None) -> Snapshot | None:
    if row is None:
        return None
    index, term, size, header = row
    fields = json.loads(header)
    members = fields.get("members")
    return Snapshot(SnapshotMeta(index, term, Configuration.from_json(members) if members is not None else None),
                    size, fields)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database of an earlier version up to the schema (columns added since)."""
    if "kind" not in {row[1] for row in conn.execute("PRAGMA table_info(raft_log)")}:
        conn.execute("ALTER TABLE raft_log ADD COLUMN kind TEXT NOT NULL DEFAULT 'normal'")


def load(conn: sqlite3.Connection) -> RaftState:
    _migrate(conn)
    values = dict(conn.execute("SELECT key, value FROM raft_state"))
    hard_state = HardState(term=values.get("term", 0), vote=values.get("vote", 0), commit=values.get("commit", 0))
    entries = [Entry(index=i, term=t, data=d, kind=EntryKind(k))
               for i, t, d, k in conn.execute("SELECT idx, term, data, kind FROM raft_log ORDER BY idx")]
    snapshot = _snapshot_of(conn.execute("SELECT idx, term, size, header FROM raft_snapshot").fetchone())
    incoming = conn.execute("SELECT idx, term, size, header, received FROM snapshot_incoming").fetchone()
    staged = (_snapshot_of(incoming[:4]), incoming[4]) if incoming is not None else None
    bootstrap = conn.execute("SELECT members FROM raft_bootstrap").fetchone()
    return RaftState(hard_state, snapshot, entries, values.get("applied", 0),
                     Configuration.decode(bootstrap[0]) if bootstrap is not None else None,
                     staged)  # type: ignore[arg-type]


def load_at_start(db: Database, first_configuration: Configuration) -> RaftState:
    """The durable Raft state; at the first start, ``first_configuration`` is recorded as the
    one the host starts with (later starts find it, and ignore the argument)."""
    state = db.read_at_start(load)
    if state.bootstrap is None:
        db.write_at_start(lambda conn: conn.execute("INSERT INTO raft_bootstrap (one, members) VALUES (1, ?)",
                                                    (first_configuration.encode(),)))
        state.bootstrap = first_configuration
    return state


def save(conn: sqlite3.Connection, hard_state: HardState | None, entries: Sequence[Entry],
         applied: int | None) -> None:
    """A cycle's Raft part; entries overwrite the log from their first index on (Raft's
    truncation of a conflicting suffix)."""
    values: dict[str, int] = {}
    if hard_state is not None:
        values.update(term=hard_state.term, vote=hard_state.vote, commit=hard_state.commit)
    if applied is not None:
        values["applied"] = applied
    conn.executemany("INSERT OR REPLACE INTO raft_state (key, value) VALUES (?, ?)", values.items())
    if entries:
        conn.execute("DELETE FROM raft_log WHERE idx >= ?", (entries[0].index,))
        conn.executemany("INSERT INTO raft_log (idx, term, data, kind) VALUES (?, ?, ?, ?)",
                         [(e.index, e.term, e.data, e.kind.value) for e in entries])


def _record(conn: sqlite3.Connection, table: str, snapshot: Snapshot, *extra: int) -> None:
    meta = snapshot.meta
    marks = ", ?" * len(extra)
    conn.execute(f"INSERT OR REPLACE INTO {table} VALUES (1, ?, ?, ?, ?{marks})",
                 (meta.index, meta.term, snapshot.size, json.dumps(snapshot.header, sort_keys=True), *extra))


def save_snapshot(conn: sqlite3.Connection, snapshot: Snapshot, compact_before: int) -> None:
    """Records ``snapshot`` as the latest and deletes the log before ``compact_before``."""
    _record(conn, "raft_snapshot", snapshot)
    conn.execute("DELETE FROM raft_log WHERE idx < ?", (compact_before,))


def record_staged(conn: sqlite3.Connection, snapshot: Snapshot, received: int) -> None:
    """``received`` of the items of ``snapshot``, the one being received, are staged."""
    _record(conn, "snapshot_incoming", snapshot, received)


def discard_staged(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM snapshot_incoming")


def check_staged_whole(conn: sqlite3.Connection, snapshot: Snapshot) -> None:
    """:raises RuntimeError: unless every item of ``snapshot`` is staged."""
    row = conn.execute("SELECT idx, term, size, header, received FROM snapshot_incoming").fetchone()
    if row is None or _snapshot_of(row[:4]) != snapshot or row[4] != snapshot.size:
        raise RuntimeError(f"the snapshot at {snapshot.meta} is not staged whole")


def installed(conn: sqlite3.Connection, snapshot: Snapshot) -> None:
    """The host has put the staged ``snapshot`` in place of its state machine: it replaces
    the whole log, and counts as applied and committed."""
    discard_staged(conn)
    conn.execute("DELETE FROM raft_log")
    _record(conn, "raft_snapshot", snapshot)
    index = snapshot.meta.index
    conn.executemany("INSERT OR REPLACE INTO raft_state (key, value) VALUES (?, ?)",
                     [("applied", index), ("commit", index)])


@dataclass
class StagedSnapshots:
    """A host's view of its snapshots: the latest durable one and the one being received.

    Kept in memory beside the tables so that a follower answers a leader's "how much do
    you hold?" without a read; the host updates it after each write commits."""

    latest: Snapshot | None = None
    staged: tuple[Snapshot, int] | None = None

    def received_whole(self) -> Snapshot | None:
        """The snapshot staged whole, if one is."""
        return self.staged[0] if self.staged is not None and self.staged[1] == self.staged[0].size else None

    def received(self, snapshot: Snapshot) -> int:
        """Items of ``snapshot`` staged so far; 0 when another one is staged, all when it is
        the latest snapshot here (installed: a leader that missed the answer asks again)."""
        if snapshot == self.latest:
            return snapshot.size
        return self.staged[1] if self.staged is not None and self.staged[0] == snapshot else 0
