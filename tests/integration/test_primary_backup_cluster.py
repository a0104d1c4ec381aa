"""Primary-backup mode on real processes: leader kill -9, failover, the old leader's
catch-up, and a load run across a failover."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from tests.integration.test_store_end_to_end import run_load_client
from toystore.cluster import LocalCluster, http_json


def _order(cluster: LocalCluster, name: str, quantity: int) -> tuple[int, dict[str, Any]]:
    return http_json("POST", cluster.frontend_url + "/orders", body={"name": name, "quantity": quantity}, timeout=15)


def _orders_on(cluster: LocalCluster, replica_id: int) -> list[dict[str, Any]]:
    status, body = cluster.get(f"order-{replica_id}", "/orders_since?after=-1")
    assert status == 200, body
    return body["data"]["orders"]


def _start(start_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    cluster = start_cluster(replication="primary-backup")
    cluster.wait_for(lambda: cluster.leader() == 3, 10, "replica 3 leading")
    return cluster


def test_leader_kill_fails_over_and_the_old_leader_catches_up(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = _start(start_cluster)
    before = [_order(cluster, "Lego", 1) for _ in range(5)]
    assert [b["data"]["order_number"] for s, b in before] == [0, 1, 2, 3, 4]
    cluster.kill("order-3")
    after = [_order(cluster, "Lego", 2) for _ in range(5)]
    assert [(s, b["data"]["order_number"]) for s, b in after] == [(200, n) for n in range(5, 10)]
    assert cluster.leader() == 2
    cluster.start_process("order-3")
    cluster.wait_for(lambda: cluster.health(3) is not None and cluster.health(3)["commit_index"] == 10, 15,
                     "replica 3 caught up")
    assert _orders_on(cluster, 3) == _orders_on(cluster, 2) == _orders_on(cluster, 1)
    assert len(_orders_on(cluster, 1)) == 10
    # The frontend prefers the highest id again; numbering goes on from the caught-up history.
    cluster.wait_for(lambda: cluster.leader() == 3, 10, "replica 3 leading again")
    assert _order(cluster, "Lego", 1)[1] == {"data": {"order_number": 10}}
    for number in (0, 9, 10):
        status, body = http_json("GET", cluster.frontend_url + f"/orders/{number}", timeout=10)
        assert status == 200 and body["data"]["number"] == number


def test_a_load_run_across_a_leader_kill_finds_every_order_intact(start_cluster: Callable[..., LocalCluster],
                                                                  tmp_path: Path) -> None:
    cluster = _start(start_cluster)
    reports: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    def load() -> None:
        try:
            reports.append(run_load_client(cluster, tmp_path, "--clients", "5", "--iterations", "40", "-p", "0.8"))
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    runner = threading.Thread(target=load)
    runner.start()
    time.sleep(2.0)
    cluster.kill("order-3")
    runner.join(120)
    assert not failures, failures
    report = reports[0]
    assert report["integrity"]["failures"] == 0
    assert report["integrity"]["checked"] == report["orders"]["placed"] > 0
    held = [_orders_on(cluster, i) for i in (1, 2)]
    assert held[0] == held[1]
