"""SQLite with group commit, off the reactor thread.

Each store owns one :class:`Database`: one connection in WAL mode with
``synchronous=FULL``, used from one worker thread. Work is a function of the
connection. Every function submitted while a commit is on disk joins the next
transaction, each inside its own savepoint (a function that raises changes nothing),
and one COMMIT (one fsync) makes them all durable together. Callers hear their result
only after that commit.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
# Runs a blocking callable somewhere and fires with its result.
Runner = Callable[[Callable[[], Any]], defer.Deferred]


class DatabaseClosed(Exception):
    """A read or write came after the database was shut down."""


def run_inline(blocking: Callable[[], Any]) -> defer.Deferred:
    """A :data:`Runner` for unit tests: runs the work at once, on the calling thread."""
    return defer.maybeDeferred(blocking)


def _in_savepoint(conn: sqlite3.Connection, work: Work) -> Any:
    """``work``'s result, or its Failure with its changes undone."""
    conn.execute("SAVEPOINT work")
    try:
        result = work(conn)
    except Exception:
        conn.execute("ROLLBACK TO work")
        result = Failure()
    conn.execute("RELEASE work")
    return result


def connect(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating) the database with the durability settings DESIGN.md requires."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(schema)
    return conn


class Database:
    """Group-committing access to one SQLite file.

    :param conn: from :func:`connect`; every write runs on it.
    :param clock: for the simulated ``--db-delay``.
    :param runner: where blocking work runs (a one-thread pool in services, inline in tests).
    :param db_delay: simulated processing time per read or write, in seconds.
    :param reader: a second connection and its runner for reads, so that a read does not
        wait behind a commit's fsync (WAL readers see the last commit); None: reads use
        the write connection.
    :param looker: a connection for :meth:`look_up` on the caller's thread; None: the
        write connection (tests, where everything runs on one thread).
    """

    def __init__(self, conn: sqlite3.Connection, clock: IReactorTime, runner: Runner = run_inline,
                 db_delay: float = 0.0, reader: tuple[sqlite3.Connection, Runner] | None = None,
                 looker: sqlite3.Connection | None = None) -> None:
        self._conn = conn
        self._clock = clock
        self._runner = runner
        self._db_delay = db_delay
        self._read_conn, self._read_runner = reader or (conn, runner)
        self._look_conn = looker or conn
        self._pending: list[tuple[Work, defer.Deferred]] = []
        self._committing = False
        self._closed = False
        self._idle: list[defer.Deferred] = []  # fired once no write is queued or on disk
        self._thread_pools: list[ThreadPool] = []
        self.commits = 0  # transactions made durable; tests and metrics read it
        # Called on the reactor thread after each durable group commit with the seconds its
        # COMMIT (the fsync) took and the number of writes it carried; metrics listen here.
        self.commit_listeners: list[Callable[[float, int], None]] = []
        self._last_commit_seconds = 0.0

    @classmethod
    def open_threaded(cls, path: Path, schema: str, reactor: Any, db_delay: float = 0.0) -> "Database":
        """A database whose writes and reads each run on a thread of their own; stop it with
        :meth:`shut_down` (or :class:`DatabaseService`)."""
        conn = connect(path, schema)
        read_conn, look_conn = (sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
                                for _ in range(2))
        for reading in (read_conn, look_conn):
            reading.execute("PRAGMA query_only=ON")
        pools = [ThreadPool(minthreads=1, maxthreads=1, name=f"sqlite-{role}:{path.name}") for role in ("write", "read")]
        for pool in pools:
            pool.start()

        def runner(pool: ThreadPool) -> Runner:
            return lambda blocking: threads.deferToThreadPool(reactor, pool, blocking)

        db = cls(conn, reactor, runner(pools[0]), db_delay, reader=(read_conn, runner(pools[1])), looker=look_conn)
        db._thread_pools = pools
        return db

    def read_at_start(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the calling thread; only before the reactor runs (service start-up)."""
        return work(self._conn)

    def write_at_start(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a write on the calling thread, durable when it returns; only before the reactor runs."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._conn)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return result

    def look_up(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a short read (an indexed lookup) at once, on the calling thread; it sees every
        write committed before it. For lookups that must answer synchronously, such as a
        state machine's while it applies an entry: a point read costs microseconds."""
        return work(self._look_conn)

    async def _simulated_delay(self) -> None:
        if self._db_delay > 0:
            await deferLater(self._clock, self._db_delay)

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosed("the database is shut down: the service is stopping")

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only function; it sees every write committed before it.

        :raises DatabaseClosed: once :meth:`shut_down` has begun."""
        await self._simulated_delay()
        self._check_open()
        return await self._read_runner(lambda: work(self._read_conn))

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in the next group transaction; returns once it is durable.

        :raises DatabaseClosed: once :meth:`shut_down` has closed the database (writes
            queued before still go to disk)."""
        await self._simulated_delay()
        self._check_open()
        done: defer.Deferred = defer.Deferred()
        self._pending.append((work, done))
        if not self._committing:
            self._commit_pending()
        return await done

    async def write_each(self, works: Sequence[Callable[[sqlite3.Connection], T]]) -> list[T | Failure]:
        """Run each of ``works`` as :meth:`write` would, in one wait for them all: the
        results in order, a work that raised changing nothing and giving its Failure.
        A batch of calls costs one Deferred instead of one per call."""
        return await self.write(lambda conn: [_in_savepoint(conn, work) for work in works])

    def _commit_pending(self) -> None:
        batch, self._pending = self._pending, []
        self._committing = True
        d = self._runner(lambda: self._run_batch([work for work, _ in batch]))
        d.addBoth(self._batch_done, batch)

    def _run_batch(self, works: list[Work]) -> list[Any]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [_in_savepoint(conn, work) for work in works]
            started = time.perf_counter()
            conn.execute("COMMIT")
            # Read by _batch_done, which runs only after this batch has returned.
            self._last_commit_seconds = time.perf_counter() - started
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _batch_done(self, outcome: list[Any] | Failure, batch: list[tuple[Work, defer.Deferred]]) -> None:
        self._committing = False
        if not isinstance(outcome, Failure):
            self.commits += 1
            for listener in self.commit_listeners:
                listener(self._last_commit_seconds, len(batch))
        # The next group goes to disk before this one's callers run, so their work overlaps
        # its fsync; what they write in turn joins the group after it.
        if self._pending:
            self._commit_pending()
        else:
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)
        for index, (_, done) in enumerate(batch):
            # A failed COMMIT fails every caller of the batch: none of them is durable.
            result = outcome if isinstance(outcome, Failure) else outcome[index]
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(result)

    def close(self) -> None:
        """Close the connections at once (unit tests; services use :meth:`shut_down`)."""
        for conn in {id(c): c for c in (self._conn, self._read_conn, self._look_conn)}.values():
            conn.close()

    async def shut_down(self) -> None:
        """Let every write queued or on disk commit, then close each connection on its own
        thread, after the work queued there, and stop the threads."""
        # Requests still under way when the port closed get their writes made durable; what
        # their callers write in turn joins a later group, which is waited for too.
        while self._committing or self._pending:
            waiter: defer.Deferred = defer.Deferred()
            self._idle.append(waiter)
            await waiter
        self._closed = True
        try:
            if self._look_conn is not self._conn:
                self._look_conn.close()
            await self._runner(self._conn.close)
            if self._read_conn is not self._conn:
                await self._read_runner(self._read_conn.close)
        finally:
            for pool in self._thread_pools:
                pool.stop()


class DatabaseService(Service):
    """Shuts the database down when the service stops."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self._db.shut_down())
