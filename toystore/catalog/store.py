"""The catalog's durable state: toys (stock, price) and stock reservations keyed by request id.

Every operation is one function of a SQLite connection run by :class:`toystore.db.Database`,
so each is one transaction: an operation that raises :class:`CatalogError` changes nothing.
Each reads the rows it touches, applies the saga's rules (:mod:`toystore.catalog.rules`:
``buy`` holds stock for a request id, ``confirm`` keeps it for good, ``release`` gives it
back, and the highest Raft term seen fences releases from deposed leaders) and writes what
they changed.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from toystore.catalog.rules import (
    CONFIRMED,
    HELD,
    RELEASED,
    STATES,
    Bought,
    CatalogError,
    Conflict,
    NotFound,
    ReservationRow,
    buy_batch,
    confirm_batch,
    release_one,
    restocked,
)
from toystore.db import Database, connect

__all__ = ["CONFIRMED", "HELD", "RELEASED", "STATES", "Bought", "CatalogError", "CatalogStore", "Conflict",
           "Cursor", "NotFound", "Page", "Reservation", "Toy", "as_json", "open_database", "schema"]

# Name and price of the toys a new catalog starts with.
INITIAL_TOYS: tuple[tuple[str, float], ...] = (
    ("Tux", 15.99),
    ("Whale", 24.99),
    ("Elephant", 29.99),
    ("Dolphin", 19.99),
    ("Fox", 17.49),
    ("Python", 21.99),
    ("Lego", 49.99),
    ("Monopoly", 34.99),
    ("Frisbee", 9.99),
    ("Marbles", 5.49),
)

DATABASE_FILE = Path("catalog") / "catalog.sqlite3"

T = TypeVar("T")


def schema(initial_stock: int) -> str:
    """The tables, and the ten toys with ``initial_stock`` each when the catalog is new.

    An existing catalog is kept as it is: the toys go in only while the table is empty.
    """
    toys = ", ".join(f"('{name}', {price}, {int(initial_stock)}, {int(initial_stock)})" for name, price in INITIAL_TOYS)
    return f"""
    BEGIN IMMEDIATE;
    CREATE TABLE IF NOT EXISTS toys (
        name TEXT PRIMARY KEY,
        price REAL NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity >= 0),
        initial INTEGER NOT NULL,
        restocked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS reservations (
        request_id TEXT PRIMARY KEY,
        name TEXT NOT NULL REFERENCES toys(name),
        quantity INTEGER NOT NULL,
        state TEXT NOT NULL,
        term INTEGER NOT NULL,
        created REAL NOT NULL,
        remaining INTEGER NOT NULL,
        released_term INTEGER
    );
    CREATE INDEX IF NOT EXISTS reservations_by_state ON reservations (state, created);
    -- Reservations per state, kept by triggers: counting the table grows with every order ever.
    CREATE TABLE IF NOT EXISTS reservation_counts (state TEXT PRIMARY KEY, count INTEGER NOT NULL);
    INSERT OR IGNORE INTO reservation_counts (state, count)
        SELECT column1, (SELECT COUNT(*) FROM reservations WHERE state = column1)
        FROM (VALUES ('held'), ('confirmed'), ('released'));
    CREATE TRIGGER IF NOT EXISTS reservation_added AFTER INSERT ON reservations BEGIN
        UPDATE reservation_counts SET count = count + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER IF NOT EXISTS reservation_moved AFTER UPDATE OF state ON reservations
        WHEN OLD.state != NEW.state BEGIN
        UPDATE reservation_counts SET count = count - 1 WHERE state = OLD.state;
        UPDATE reservation_counts SET count = count + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER IF NOT EXISTS reservation_removed AFTER DELETE ON reservations BEGIN
        UPDATE reservation_counts SET count = count - 1 WHERE state = OLD.state;
    END;
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT OR IGNORE INTO meta (key, value) VALUES ('highest_term', 0);
    INSERT INTO toys (name, price, quantity, initial)
        SELECT * FROM (VALUES {toys}) WHERE (SELECT COUNT(*) FROM toys) = 0;
    COMMIT;
    """


def open_database(path: Path, clock: IReactorTime, initial_stock: int) -> Database:
    """A catalog database on ``path`` whose work runs inline (unit tests); services use
    :meth:`Database.open_threaded` with :func:`schema`."""
    return Database(connect(path, schema(initial_stock)), clock)


@dataclass(frozen=True)
class Toy:
    name: str
    price: float
    quantity: int


@dataclass(frozen=True)
class Reservation:
    request_id: str
    name: str
    quantity: int
    state: str
    term: int
    age: float


@dataclass(frozen=True)
class Cursor:
    """Where a listing of reservations goes on: just past this one (they are in this order)."""

    created: float
    request_id: str

    def encode(self) -> str:
        return f"{self.created!r},{self.request_id}"

    @staticmethod
    def decode(text: str) -> Cursor:
        """:raises ValueError: not a cursor that :meth:`encode` wrote."""
        created, comma, request_id = text.partition(",")
        value = float(created)
        if not comma or not math.isfinite(value):
            raise ValueError(f"not a reservation cursor: {text!r}")
        return Cursor(value, request_id)


@dataclass(frozen=True)
class Page:
    """One page of a listing of reservations."""

    reservations: list[Reservation]
    next: Cursor | None


def highest_term(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT value FROM meta WHERE key = 'highest_term'").fetchone()[0]


def see_term(conn: sqlite3.Connection, term: int) -> None:
    conn.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'highest_term'", (term,))


RESERVATION_COLUMNS = "request_id, name, quantity, state, term, created, remaining, released_term"


def read_reservations(conn: sqlite3.Connection, request_ids: Sequence[str]) -> dict[str, ReservationRow]:
    unique = list(set(request_ids))
    return {row[0]: ReservationRow(*row) for row in conn.execute(
        f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE request_id IN ({_marks(unique)})", unique)}


def write_reservations(conn: sqlite3.Connection, rows: Sequence[ReservationRow]) -> None:
    # An upsert, not INSERT OR REPLACE: a replaced row would not fire the counting triggers.
    conn.executemany(f"INSERT INTO reservations ({RESERVATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                     " ON CONFLICT (request_id) DO UPDATE SET name = excluded.name, quantity = excluded.quantity,"
                     " state = excluded.state, term = excluded.term, created = excluded.created,"
                     " remaining = excluded.remaining, released_term = excluded.released_term",
                     [(r.request_id, r.name, r.quantity, r.state, r.term, r.created, r.remaining, r.released_term)
                      for r in rows])


def _buy_each(reservations: Sequence[tuple[str, str, int, int]], now: float,
              conn: sqlite3.Connection) -> list[Bought | CatalogError]:
    """Each buy of ``(request_id, name, quantity, term)``, in order, as if it ran alone: a
    refused one changes nothing. The rows they touch are read, and the changes written, a few
    statements for the whole batch: seven statements per buy, each giving up the interpreter
    lock and waiting to take it back from a busy reactor, made a batch's write 3 to 5 ms longer."""
    names = list({name for _, name, _, _ in reservations})
    stock: dict[str, int] = dict(conn.execute(f"SELECT name, quantity FROM toys WHERE name IN ({_marks(names)})", names))
    batch = buy_batch(reservations, now, read_reservations(conn, [r[0] for r in reservations]), stock)
    if batch.held:
        conn.executemany("UPDATE toys SET quantity = ? WHERE name = ?",
                         [(stock[name], name) for name in {row.name for row in batch.held.values()}])
        write_reservations(conn, list(batch.held.values()))
    if batch.highest_term is not None:
        see_term(conn, batch.highest_term)
    return batch.outcomes


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _release(request_id: str, term: int, conn: sqlite3.Connection) -> str:
    row = read_reservations(conn, [request_id]).get(request_id)
    released = release_one(request_id, term, row, highest_term(conn))
    assert row is not None  # release_one refuses an absent one
    see_term(conn, term)
    if released != row:
        conn.execute("UPDATE toys SET quantity = quantity + ? WHERE name = ?", (row.quantity, row.name))
        write_reservations(conn, [released])
    return row.name


def _confirm_each(request_ids: Sequence[str], term: int, conn: sqlite3.Connection) -> list[None | CatalogError]:
    """Each confirm, in order, as if it ran alone, in a few statements for the batch (as
    :func:`_buy_each`): the reaper confirms a quarter second's orders at a time."""
    outcomes, confirmed = confirm_batch(request_ids, read_reservations(conn, request_ids))
    conn.executemany("UPDATE reservations SET state = ? WHERE request_id = ?",
                     [(CONFIRMED, request_id) for request_id in confirmed])
    if None in outcomes:
        see_term(conn, term)
    return outcomes


def _outcomes(results: list[Any]) -> list[Any]:
    """Each work's result, or the CatalogError that refused it; any other failure is raised."""
    outcomes = []
    for result in results:
        if isinstance(result, Failure):
            result.trap(CatalogError)
            result = result.value
        outcomes.append(result)
    return outcomes


def _the_one(outcomes: list[T | CatalogError]) -> T:
    (outcome,) = outcomes
    if isinstance(outcome, CatalogError):
        raise outcome
    return outcome


def list_reservations(now: float, state: str | None, older_than: float, limit: int | None, after: Cursor | None,
                      conn: sqlite3.Connection) -> Page:
    """A page of :meth:`CatalogStore.reservations`, at the time ``now``."""
    where = ["created <= ?"]
    arguments: list[Any] = [now - older_than]
    if state is not None:
        where.append("state = ?")
        arguments.append(state)
    if after is not None:
        where.append("(created, request_id) > (?, ?)")
        arguments += [after.created, after.request_id]
    arguments.append(-1 if limit is None else limit)
    rows = conn.execute(
        "SELECT request_id, name, quantity, state, term, created FROM reservations"
        f" WHERE {' AND '.join(where)} ORDER BY created, request_id LIMIT ?", arguments).fetchall()
    found = [Reservation(r[0], r[1], r[2], r[3], r[4], max(0.0, now - r[5])) for r in rows]
    full = limit is not None and len(rows) == limit
    return Page(found, Cursor(rows[-1][5], rows[-1][0]) if full else None)


class CatalogStore:
    """Stock, prices and reservations.

    :param db: a database opened with :func:`schema`.
    :param clock: stamps reservations, so that their age can be asked for.
    """

    def __init__(self, db: Database, clock: IReactorTime) -> None:
        self._db = db
        self._clock = clock

    async def query(self, name: str) -> Toy:
        def work(conn: sqlite3.Connection) -> Toy:
            row = conn.execute("SELECT name, price, quantity FROM toys WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"There is no toy named {name!r}.")
            return Toy(*row)

        return await self._db.read(work)

    async def buy(self, request_id: str, name: str, quantity: int, term: int = 0) -> Bought:
        """Hold ``quantity`` of ``name`` for ``request_id`` and take it from stock.

        A request id that holds or has confirmed its reservation changes nothing and gets the
        first answer again. One that was released is held again, unless a newer term released it.
        """
        return _the_one(await self.buy_each([(request_id, name, quantity, term)]))

    async def buy_each(self, reservations: Sequence[tuple[str, str, int, int]]) -> list[Bought | CatalogError]:
        """:meth:`buy` for each ``(request_id, name, quantity, term)``, in one write: each
        bought, or the error it was refused with (and then changed nothing)."""
        return await self._db.write(partial(_buy_each, reservations, self._clock.seconds()))

    async def release(self, request_id: str, term: int) -> str:
        """Give a held reservation's stock back; returns the toy's name. Fenced below the
        highest term seen; releasing twice is harmless; a confirmed one cannot be released."""
        return _the_one(await self.release_each([request_id], term))

    async def release_each(self, request_ids: Sequence[str], term: int) -> list[str | CatalogError]:
        """:meth:`release` for each request id, in one write."""
        return _outcomes(await self._db.write_each([partial(_release, request_id, term) for request_id in request_ids]))

    async def confirm(self, request_id: str, term: int) -> None:
        """Keep a held reservation for good (its order committed). Confirming twice is harmless;
        confirming a released one is refused (Conflict)."""
        _the_one(await self.confirm_each([request_id], term))

    async def confirm_each(self, request_ids: Sequence[str], term: int) -> list[None | CatalogError]:
        """:meth:`confirm` for each request id, in one write."""
        return await self._db.write(partial(_confirm_each, request_ids, term))

    async def reservations(self, state: str | None = None, older_than: float = 0.0, limit: int | None = None,
                           after: Cursor | None = None) -> Page:
        """Reservations (in one state, if given) at least ``older_than`` seconds old, oldest
        first: at most ``limit`` of them, from just past ``after``. The page's ``next`` is where
        the next page starts, None once this one is the last."""
        return await self._db.read(partial(list_reservations, self._clock.seconds(), state, older_than, limit, after))

    async def set_price(self, name: str, price: float) -> float:
        """Change the price of ``name``; returns it. :raises NotFound: no such toy."""

        def work(conn: sqlite3.Connection) -> float:
            if conn.execute("UPDATE toys SET price = ? WHERE name = ?", (price, name)).rowcount == 0:
                raise NotFound(f"There is no toy named {name!r}.")
            return price

        return await self._db.write(work)

    async def restock(self, restock_to: int, name: str | None = None) -> dict[str, int]:
        """Bring every toy (or the named one) that is sold out back to ``restock_to``;
        returns how much each restocked toy got."""

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            added = restocked(dict(conn.execute("SELECT name, quantity FROM toys")), restock_to, name)
            conn.executemany(
                "UPDATE toys SET quantity = ?, restocked = restocked + ? WHERE name = ?",
                [(restock_to, restock_to, toy) for toy in added],
            )
            return added

        return await self._db.write(work)

    def status(self) -> dict[str, Any]:
        """``GET /health_check`` in the order replica's shape: a catalog alone is a group of
        one that always leads, with no log."""
        return {"id": 1, "role": "leader", "term": 0, "leader_id": 1, "commit_index": 0, "last_index": 0,
                "snapshot_index": 0, "log_entries": 0, "replication": "none"}

    async def ledger(self) -> dict[str, Any]:
        """Everything an invariant checker needs (the ``GET /ledger`` shape), and the age of
        the oldest held reservation (the saga's backlog). Its cost does not grow with history."""
        now = self._clock.seconds()

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            counts = dict(conn.execute("SELECT state, count FROM reservation_counts").fetchall())
            toys = conn.execute("SELECT name, price, quantity, initial, restocked FROM toys ORDER BY name")
            return ledger_answer(toys, counts, oldest_held(conn), now, highest_term(conn))

        return await self._db.read(work)


def oldest_held(conn: sqlite3.Connection) -> float | None:
    """When the oldest reservation still held was made; None when none is."""
    return conn.execute("SELECT MIN(created) FROM reservations WHERE state = ?", (HELD,)).fetchone()[0]


def ledger_answer(toys: Iterable[Sequence[Any]], counts: Mapping[str, int], oldest_held_created: float | None,
                  now: float, fence: int) -> dict[str, Any]:
    """The ``GET /ledger`` body, from ``(name, price, quantity, initial, restocked)`` per toy."""
    return {
        "toys": {name: {"price": price, "quantity": quantity, "initial": initial, "restocked": restocked}
                 for name, price, quantity, initial, restocked in toys},
        "reservations": {state: counts.get(state, 0) for state in STATES},
        "oldest_held_age": round(0.0 if oldest_held_created is None else max(0.0, now - oldest_held_created), 3),
        "highest_term": fence,
    }


def as_json(record: Toy | Bought | Reservation) -> dict[str, Any]:
    # Their fields are plain values: a shallow copy is what asdict's deep one would give,
    # at a fraction of its cost (it ran for every reservation of every batch).
    return dict(vars(record))
