"""The group-committing database: several writes, one transaction, each undone alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from toystore.db import Database, DatabaseClosed, connect

SCHEMA = "CREATE TABLE IF NOT EXISTS items (name TEXT PRIMARY KEY);"


def _insert(name: str) -> object:
    def work(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO items (name) VALUES (?)", (name,))  # a duplicate raises
        return name
    return work


def _names(db: Database) -> list[str]:
    return [row[0] for row in db.read_at_start(lambda conn: conn.execute("SELECT name FROM items ORDER BY name").fetchall())]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(connect(tmp_path / "t.sqlite3", SCHEMA), Clock())


def test_write_each_undoes_only_the_work_that_failed(db: Database) -> None:
    results: list[object] = []
    Deferred.fromCoroutine(db.write_each([_insert("a"), _insert("b"), _insert("a"), _insert("c")])).addCallback(results.extend)
    assert results[:2] == ["a", "b"] and results[3] == "c"
    assert results[2].check(sqlite3.IntegrityError)  # type: ignore[attr-defined]
    assert _names(db) == ["a", "b", "c"]
    assert db.commits == 1


def test_a_failed_work_in_a_group_changes_nothing_of_its_own(db: Database) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (name) VALUES ('half')")
        raise ValueError("refused")

    results: list[object] = []
    Deferred.fromCoroutine(db.write_each([half_then_fail, _insert("kept")])).addCallback(results.extend)
    assert results[0].check(ValueError) and results[1] == "kept"  # type: ignore[attr-defined]
    assert _names(db) == ["kept"]


def test_a_groups_callers_hear_once_the_group_waiting_behind_it_is_on_its_way(tmp_path: Path) -> None:
    held: list[tuple[object, Deferred]] = []

    def held_runner(blocking: object) -> Deferred:  # a disk thread that the test lets finish
        done: Deferred = Deferred()
        held.append((blocking, done))
        return done

    db = Database(connect(tmp_path / "t.sqlite3", SCHEMA), Clock(), runner=held_runner)
    groups_started_when_first_heard: list[int] = []
    Deferred.fromCoroutine(db.write(_insert("first"))).addCallback(
        lambda _: groups_started_when_first_heard.append(len(held)))
    Deferred.fromCoroutine(db.write(_insert("second")))
    assert len(held) == 1  # the second waits for the first group
    blocking, done = held[0]
    done.callback(blocking())  # type: ignore[operator]
    assert groups_started_when_first_heard == [2]


def test_a_shut_down_lets_queued_writes_commit_and_refuses_later_ones(tmp_path: Path) -> None:
    held: list[tuple[object, Deferred]] = []

    def held_runner(blocking: object) -> Deferred:
        done: Deferred = Deferred()
        held.append((blocking, done))
        return done

    db = Database(connect(tmp_path / "t.sqlite3", SCHEMA), Clock(), runner=held_runner)
    written: list[object] = []
    Deferred.fromCoroutine(db.write(_insert("on disk"))).addCallback(written.append)
    Deferred.fromCoroutine(db.write(_insert("queued"))).addCallback(written.append)
    stopped = Deferred.fromCoroutine(db.shut_down())
    while held:  # the disk thread finishes what it was given, in order
        blocking, done = held.pop(0)
        done.callback(blocking())  # type: ignore[operator]
    assert written == ["on disk", "queued"] and stopped.called
    late = Deferred.fromCoroutine(db.write(_insert("late")))
    assert late.called and late.result.check(DatabaseClosed)  # type: ignore[attr-defined]
    late.addErrback(lambda _: None)
    reopened = Database(connect(tmp_path / "t.sqlite3", SCHEMA), Clock())
    assert _names(reopened) == ["on disk", "queued"]
