"""The replicated catalog on real processes: three members, kill -9 of the leader under
load, a wiped member caught up by snapshot."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from typing import Callable

from toystore.bench.orderload import OrderLoad, orders_on
from toystore.cluster import LocalCluster

CONNECTIONS = 64


def _ledger(cluster: LocalCluster) -> dict:
    status, body = cluster.get("catalog", "/ledger", timeout=10)
    assert status == 200, body
    return body["data"]


def _metrics(cluster: LocalCluster, name: str) -> str:
    with urllib.request.urlopen(cluster.url(name) + "/metrics", timeout=5) as response:
        return response.read().decode()


def _stock_seen_by(cluster: LocalCluster, name: str) -> dict[str, float]:
    """Stock per toy as member ``name`` has applied it (its /metrics, leader or not)."""
    text = _metrics(cluster, name)
    return {toy: float(value) for toy, value in re.findall(r'toystore_catalog_stock\{toy="(\w+)"\} (\S+)', text)}


def _settled(cluster: LocalCluster) -> bool:
    try:
        return _ledger(cluster)["reservations"]["held"] == 0
    except (OSError, AssertionError, TimeoutError):
        return False


def _check_stock_conserved(cluster: LocalCluster, load: OrderLoad) -> int:
    """Every acknowledged order is in the history; each order took its toy once; returns the orders."""
    history = {o["number"]: o for o in orders_on(cluster, cluster.leader() or 1)}
    assert sorted(history) == list(range(len(history)))
    lost = [(key, number) for _, key, number in load.acknowledged if history.get(number, {}).get("request_id") != key]
    assert not lost, lost[:10]
    cluster.wait_for(lambda: _settled(cluster), 20, "every reservation settled", interval=0.5)
    ledger = _ledger(cluster)
    for name, toy in ledger["toys"].items():
        bought = sum(o["quantity"] for o in history.values() if o["name"] == name)
        assert toy["quantity"] + bought == toy["initial"] + toy["restocked"], (name, toy, bought)
    assert ledger["reservations"]["confirmed"] == len(history)
    return len(history)


def test_kill_9_of_the_catalog_leader_under_load_fails_no_order_and_loses_no_stock(
        start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(catalog_members=3, initial_stock=10**6)
    with OrderLoad(cluster.frontend_url, connections=CONNECTIONS) as load:
        time.sleep(2.0)
        leader = cluster.catalog_leader()
        assert leader is not None
        killed = time.monotonic()
        cluster.kill(f"catalog-{leader}")
        cluster.wait_for(lambda: any(when > killed + 0.05 for when, _, _ in load.acknowledged[-200:]), 10,
                         "an order committed after the catalog leader's kill", interval=0.02)
        resumed = min(when for when, _, _ in load.acknowledged if when > killed + 0.05)
        time.sleep(2.0)
        cluster.start_process(f"catalog-{leader}")
        time.sleep(1.0)
    new_leader = cluster.catalog_leader()
    print(f"catalog leader {leader} killed; orders went on {resumed - killed:.2f} s later at leader {new_leader}; "
          f"{len(load.acknowledged)} orders acknowledged, {len(load.failed)} failed")
    assert not load.failed, load.failed[:10]
    assert new_leader is not None and new_leader != leader
    assert resumed - killed < 5.0
    orders = _check_stock_conserved(cluster, load)
    # The member killed and restarted catches up and holds the same stock as the leader.
    cluster.wait_for(lambda: _stock_seen_by(cluster, f"catalog-{leader}") == _stock_seen_by(
        cluster, f"catalog-{new_leader}"), 10, "the restarted member caught up", interval=0.5)
    assert orders > 1000
    # /metrics shows the catalog group as the order group: role, term, commit index.
    text = _metrics(cluster, f"catalog-{new_leader}")
    assert 'toystore_replica_role{role="leader"} 1.0' in text
    assert re.search(r"^toystore_replica_commit_index [1-9]", text, re.MULTILINE), text[:2000]


def test_a_wiped_catalog_member_catches_up_by_snapshot_under_load(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(catalog_members=3, initial_stock=10**6, snapshot_every=100)
    leader = cluster.wait_for(cluster.catalog_leader, 10, "a catalog leader")
    wiped = next(i for i in cluster.catalog_ids if i != leader)
    with OrderLoad(cluster.frontend_url, connections=16) as load:
        cluster.kill(f"catalog-{wiped}")
        cluster.wait_for(lambda: (cluster.health_of(f"catalog-{leader}") or {}).get("snapshot_index", 0) > 300, 30,
                         "the catalog leader compacted past the wiped member's log")
        shutil.rmtree(cluster.data_dir / f"catalog-{wiped}")
        cluster.start_process(f"catalog-{wiped}")
        cluster.wait_for(lambda: (cluster.health_of(f"catalog-{wiped}") or {}).get("snapshot_index", 0) > 0, 20,
                         "the wiped member installed a snapshot")
        time.sleep(1.0)
    assert not load.failed, load.failed[:10]
    cluster.wait_for(lambda: _stock_seen_by(cluster, f"catalog-{wiped}") == _stock_seen_by(
        cluster, f"catalog-{leader}"), 10, "the wiped member holds the leader's stock", interval=0.5)
    health = cluster.health_of(f"catalog-{wiped}")
    assert health is not None and health["log_entries"] < 2 * 100 + 30, health
    _check_stock_conserved(cluster, load)
