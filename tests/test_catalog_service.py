"""The catalog's services and twistd options: the restock loop on a task.Clock, option parsing,
the refusal to start without a token, and one real start and stop on the reactor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from toystore.catalog import tap
from toystore.catalog.service import RestockService
from toystore.catalog.store import CatalogStore, open_database

_case = SynchronousTestCase()


class RecordingInvalidator:
    def __init__(self) -> None:
        self.pushed: list[list[str]] = []

    async def invalidate(self, names: Iterable[str]) -> None:
        self.pushed.append(sorted(names))


def run(coro: Any) -> Any:
    return _case.successResultOf(defer.ensureDeferred(coro))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> CatalogStore:
    store = CatalogStore(open_database(tmp_path / "c.sqlite3", clock, 2), clock)
    run(store.buy("r1", "Tux", 2))
    run(store.buy("r2", "Fox", 2))
    return store


def stock(store: CatalogStore, name: str) -> int:
    return run(store.query(name)).quantity


def test_restock_loop_runs_every_interval(store: CatalogStore, clock: Clock) -> None:
    invalidator = RecordingInvalidator()
    service = RestockService(store, invalidator, clock, interval=10, restock_to=50)
    service.startService()
    clock.pump([1] * 9)
    assert stock(store, "Tux") == 0
    clock.pump([1])
    assert (stock(store, "Tux"), stock(store, "Fox"), stock(store, "Lego")) == (50, 50, 2)
    assert invalidator.pushed == [["Fox", "Tux"]]
    run(store.buy("r3", "Lego", 2))
    clock.pump([1] * 10)
    assert stock(store, "Lego") == 50
    assert invalidator.pushed[-1] == ["Lego"]
    assert run(store.ledger())["toys"]["Tux"]["restocked"] == 50
    service.stopService()
    assert clock.getDelayedCalls() == []


def test_failed_restock_does_not_stop_the_loop(store: CatalogStore, clock: Clock,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_restock = store.restock
    calls: list[int] = []

    async def flaky_restock(restock_to: int, name: str | None = None) -> dict[str, int]:
        calls.append(restock_to)
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return await real_restock(restock_to, name)

    monkeypatch.setattr(store, "restock", flaky_restock)
    service = RestockService(store, RecordingInvalidator(), clock, interval=10, restock_to=50)
    service.startService()
    with capturedLogs() as events:
        clock.pump([10])
    assert stock(store, "Tux") == 0
    assert [e for e in events if e["log_level"] == LogLevel.critical and "restock failed" in e["log_format"]]
    clock.pump([10])
    assert stock(store, "Tux") == 50
    assert len(calls) == 2
    service.stopService()


def test_interval_zero_disables_the_loop(store: CatalogStore, clock: Clock) -> None:
    service = RestockService(store, RecordingInvalidator(), clock, interval=0, restock_to=50)
    service.startService()
    assert clock.getDelayedCalls() == []
    clock.pump([10] * 10)
    assert stock(store, "Tux") == 0
    service.stopService()


def parse(args: list[str], env: dict[str, str] | None = None) -> tap.Options:
    options = tap.Options()
    options.env = env or {}
    options.parseOptions(args)
    return options


def test_options_defaults() -> None:
    options = parse([])
    assert (options["port"], options["data-dir"], options["interface"]) == (8001, "./data", "127.0.0.1")
    assert (options["restock-interval"], options["restock-to"], options["initial-stock"]) == (10.0, 100, 100)
    assert (options["db-delay"], options["insecure"]) == (0.0, 0)
    assert options["frontend-urls"] == ["http://127.0.0.1:8000"]


def test_options_parse_every_option() -> None:
    options = parse(["--port", "9001", "--data-dir", "/tmp/x", "--restock-interval", "0.5", "--restock-to", "7",
                     "--initial-stock", "3", "--interface", "0.0.0.0", "--db-delay", "0.2", "--insecure",
                     "--frontend-url", "http://a:8000, http://b:8000/"],
                    env={"TOYSTORE_FRONTEND_URL": "http://env:1"})
    assert (options["port"], options["data-dir"], options["interface"]) == (9001, "/tmp/x", "0.0.0.0")
    assert (options["restock-interval"], options["restock-to"], options["initial-stock"]) == (0.5, 7, 3)
    assert (options["db-delay"], options["insecure"]) == (0.2, 1)
    assert options["frontend-urls"] == ["http://a:8000", "http://b:8000"]


def test_frontends_from_the_environment() -> None:
    assert parse([], env={"TOYSTORE_FRONTEND_URL": "http://f1:8000,http://f2:8000"})["frontend-urls"] == [
        "http://f1:8000", "http://f2:8000"]


@pytest.mark.parametrize("args", [["--restock-interval", "-1"], ["--restock-to", "-5"], ["--initial-stock", "x"],
                                  ["--port", "70000"], ["--frontend-url", "nonsense"], ["--frontend-url", ","]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(args)


def test_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    options = parse(["--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        tap.makeService(options)
    message = str(exited.value.code)
    assert "TOYSTORE_CLUSTER_TOKEN" in message and "\n" not in message
    assert not (tmp_path / "catalog").exists()


async def get_json(url: str, token: str | None) -> tuple[int, Any]:
    from twisted.internet import reactor

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await treq.get(url, headers=headers, timeout=5, reactor=reactor, persistent=False)
    return response.code, await treq.json_content(response)


async def start_and_query(data_dir: Path, args: list[str]) -> int:
    """Start a real catalog on a free port, read Tux's stock, stop it; returns the stock."""
    options = parse(["--data-dir", str(data_dir), "--port", "0", "--restock-interval", "0", *args],
                    env={"TOYSTORE_CLUSTER_TOKEN": "tok"})
    service = tap.makeService(options)
    service.startService()
    try:
        port = service.getServiceNamed("api")._port.getHost().port
        assert await get_json(f"http://127.0.0.1:{port}/health", None) == (200, {"data": {"status": "ok"}})
        assert (await get_json(f"http://127.0.0.1:{port}/ledger", None))[0] == 401
        code, body = await get_json(f"http://127.0.0.1:{port}/query/Tux", "tok")
        assert code == 200
        return body["data"]["quantity"]
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_real_start_creates_the_catalog_and_a_restart_keeps_it(tmp_path: Path) -> None:
    assert await start_and_query(tmp_path, ["--initial-stock", "7"]) == 7
    assert (tmp_path / "catalog" / "catalog.sqlite3").exists()
    assert await start_and_query(tmp_path, ["--initial-stock", "50"]) == 7
