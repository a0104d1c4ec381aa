"""The whole store as a user meets it: real twistd processes on loopback, one order replica."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from toystore.cluster import LocalCluster, http_json


def _order(cluster: LocalCluster, name: str, quantity: int, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": key} if key else None
    return http_json("POST", cluster.frontend_url + "/orders", body={"name": name, "quantity": quantity},
                     headers=headers, timeout=15)


def _product(cluster: LocalCluster, name: str) -> tuple[int, dict[str, Any]]:
    return http_json("GET", cluster.frontend_url + f"/products/{name}")


def test_query_order_lookup_and_errors(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(replicas=1, initial_stock=10)
    assert _product(cluster, "Tux") == (200, {"data": {"name": "Tux", "price": 15.99, "quantity": 10}})
    status, body = _order(cluster, "Tux", 2)
    assert (status, body) == (200, {"data": {"order_number": 0}})
    assert http_json("GET", cluster.frontend_url + "/orders/0") == \
        (200, {"data": {"number": 0, "name": "Tux", "quantity": 2}})
    # The cached quantity was invalidated by the buy: the next query shows it.
    assert _product(cluster, "Tux")[1]["data"]["quantity"] == 8
    assert _product(cluster, "Tux")[1]["data"]["quantity"] == 8

    assert _product(cluster, "Unicorn")[0] == 404
    assert _order(cluster, "Unicorn", 1)[0] == 404
    status, body = _order(cluster, "Tux", 9)
    assert status == 409 and body["error"]["code"] == 409
    assert _order(cluster, "Tux", 0)[0] == 400
    assert http_json("GET", cluster.frontend_url + "/orders/1")[0] == 404
    assert http_json("GET", cluster.frontend_url + "/orders/x")[0] == 400
    assert _product(cluster, "Tux")[1]["data"]["quantity"] == 8  # refused orders changed nothing


def test_an_idempotent_retry_buys_once(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(replicas=1, initial_stock=10)
    first = _order(cluster, "Fox", 3, key="client-key-1")
    again = _order(cluster, "Fox", 3, key="client-key-1")
    assert first == again == (200, {"data": {"order_number": 0}})
    assert _product(cluster, "Fox")[1]["data"]["quantity"] == 7


def test_kill_9_of_the_order_replica_loses_no_acknowledged_order(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(replicas=1)
    acknowledged = {}
    for i in range(10):
        status, body = _order(cluster, "Lego", 1 + i % 3)
        assert status == 200
        acknowledged[body["data"]["order_number"]] = 1 + i % 3
    cluster.kill("order-1")
    cluster.start_process("order-1")
    cluster.wait_ready()
    for number, quantity in acknowledged.items():
        status, body = http_json("GET", cluster.frontend_url + f"/orders/{number}", timeout=10)
        assert (status, body) == (200, {"data": {"number": number, "name": "Lego", "quantity": quantity}})
    # Numbers continue densely after the restart.
    assert _order(cluster, "Lego", 1)[1] == {"data": {"order_number": 10}}


def run_load_client(cluster: LocalCluster, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Runs ``python -m client`` against the cluster and returns its --json report."""
    report = tmp_path / f"client-{len(list(tmp_path.glob('client-*.json')))}.json"
    completed = subprocess.run(
        [sys.executable, "-m", "client", "--frontend", cluster.frontend_url, "--no-progress",
         "--json", str(report), "--seed", "7", *args],
        env=cluster.environment(), capture_output=True, text=True, timeout=300)
    assert report.exists(), completed.stderr
    result = json.loads(report.read_text())
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return result


def test_the_load_client_finds_every_order_intact(start_cluster: Callable[..., LocalCluster], tmp_path: Path) -> None:
    cluster = start_cluster(replicas=1)
    report = run_load_client(cluster, tmp_path, "--clients", "5", "--iterations", "20", "-p", "0.5")
    assert report["integrity"]["failures"] == 0
    assert report["integrity"]["checked"] == report["orders"]["placed"] > 0
    assert report["operations"]["query"]["successes"] == 100
