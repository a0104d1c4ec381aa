"""``twistd toystore-frontend`` options and service wiring (no socket is opened)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.application.internet import TCPServer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure

from toystore.config import CommonOptions
from toystore.frontend import tap
from toystore.frontend.leader import OrderLeaderTracker
from toystore.http import HTTPPoolService
from toystore.runtime import StartsAfterChildren

from test_frontend_leader import FakeNetwork


def parse(args: list[str], env: dict[str, str] | None = None) -> tap.Options:
    options = tap.Options()
    options.env = env or {}
    options.parseOptions(args)
    return options


def test_defaults() -> None:
    options = parse([])
    assert isinstance(options, CommonOptions)
    assert options["port"] == 8000
    assert options["cache-size"] == 8
    assert options["interface"] == "127.0.0.1"
    assert options["catalog-url"] == "http://127.0.0.1:8001"
    assert options["order-replicas"] == {1: "http://127.0.0.1:8101", 2: "http://127.0.0.1:8102",
                                         3: "http://127.0.0.1:8103"}


def test_environment_gives_addresses() -> None:
    options = parse([], {"TOYSTORE_CATALOG_URL": "http://10.0.0.5:9001/",
                         "TOYSTORE_ORDER_REPLICAS": "1=http://10.0.0.6:8101,2=http://10.0.0.7:8102"})
    assert options["catalog-url"] == "http://10.0.0.5:9001"
    assert options["order-replicas"] == {1: "http://10.0.0.6:8101", 2: "http://10.0.0.7:8102"}


def test_options_override_environment() -> None:
    options = parse(["--catalog-url", "http://cat:1", "--order-replicas", "4=http://o:4", "--port", "9000",
                     "--cache-size", "0", "--interface", "0.0.0.0"],
                    {"TOYSTORE_CATALOG_URL": "http://ignored:2", "TOYSTORE_ORDER_REPLICAS": "1=http://ignored:3"})
    assert (options["catalog-url"], options["order-replicas"]) == ("http://cat:1", {4: "http://o:4"})
    assert (options["port"], options["cache-size"], options["interface"]) == (9000, 0, "0.0.0.0")


@pytest.mark.parametrize("args", [["--cache-size", "-1"], ["--cache-size", "many"], ["--port", "70000"],
                                  ["--order-replicas", "one=http://x:1"], ["--catalog-url", "ftp://x"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(args)


def test_missing_token_refuses_to_start() -> None:
    options = parse([])
    with pytest.raises(SystemExit) as exit_info:
        tap.makeService(options)
    assert "TOYSTORE_CLUSTER_TOKEN" in str(exit_info.value.code)


def test_make_service_listens_where_told() -> None:
    options = parse(["--port", "9123", "--interface", "127.0.0.2"], {"TOYSTORE_CLUSTER_TOKEN": "t"})
    service = tap.makeService(options)
    assert isinstance(service, StartsAfterChildren) and isinstance(service.runs, OrderLeaderTracker)
    [listener] = [child for child in service if isinstance(child, TCPServer)]
    assert listener.args[0] == 9123
    assert listener.kwargs["interface"] == "127.0.0.2"
    assert service.runs.replicas == {1: "http://127.0.0.1:8101", 2: "http://127.0.0.1:8102",
                                        3: "http://127.0.0.1:8103"}


def test_insecure_starts_without_token() -> None:
    options = parse(["--insecure"])
    assert isinstance(tap.makeService(options), StartsAfterChildren)


class FakePool:
    def __init__(self) -> None:
        self.closed = False

    def closeCachedConnections(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


def test_service_runs_health_checks_only_while_started() -> None:
    clock = Clock()
    network = FakeNetwork()
    network.add_replicas(2)
    network.replicas[2].lead(1)
    tracker = OrderLeaderTracker({1: network.url_of(1), 2: network.url_of(2)}, network, clock, "t")  # type: ignore[arg-type]
    pool = FakePool()
    service = StartsAfterChildren(tracker)
    HTTPPoolService(pool).setServiceParent(service)  # type: ignore[arg-type]
    clock.advance(5)
    assert network.replicas[2].requests == []
    service.startService()
    network.flush()
    assert tracker.leader_id == 2
    stopped: list[Any] = []
    service.stopService().addBoth(stopped.append)
    assert len(stopped) == 1 and not isinstance(stopped[0], Failure) and pool.closed
    checks = len(network.replicas[2].requests)
    clock.pump([0.5] * 10)
    assert len(network.replicas[2].requests) == checks
