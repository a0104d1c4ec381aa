"""``GET /metrics`` on every process of a real cluster, public and in the Prometheus text format."""

from __future__ import annotations

import urllib.request
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from toystore.cluster import LocalCluster, http_json


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value)]}`` of one scrape, without the cluster token."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(value for found, value in samples.get(name, []) if labels.items() <= found.items())


def test_metrics_on_all_five_processes(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(replicas=3, initial_stock=50)
    # Once the frontend's preferred replica leads, no leadership transfer can make the
    # order retry elsewhere (which would reserve twice, idempotently, and count two buys).
    cluster.wait_for(lambda: cluster.leader() == max(cluster.replica_ids) or None, 20, "replica 3 to lead")
    status, _ = http_json("POST", cluster.frontend_url + "/orders", body={"name": "Fox", "quantity": 3}, timeout=15)
    assert status == 200
    assert http_json("GET", cluster.frontend_url + "/products/Fox")[0] == 200

    frontend = _scrape(cluster.frontend_url)
    assert _value(frontend, "toystore_http_requests_total", route="/orders", method="POST", status="200") == 1
    assert _value(frontend, "toystore_cache_misses_total") >= 1
    assert _value(frontend, "toystore_frontend_order_leader_id") == cluster.leader()

    catalog = _scrape(cluster.catalog_url)
    assert _value(catalog, "toystore_catalog_stock", toy="Fox") == 47
    assert _value(catalog, "toystore_catalog_stock", toy="Tux") == 50
    assert _value(catalog, "toystore_http_requests_total", route="/buy_qty", status="200") == 1
    assert _value(catalog, "toystore_db_commit_seconds_count") >= 1

    leader = cluster.leader()
    for replica_id in cluster.replica_ids:
        replica = _scrape(cluster.replica_url(replica_id))
        assert _value(replica, "toystore_replica_commit_index") >= 1
        assert _value(replica, "toystore_replica_term") >= 1
        assert _value(replica, "toystore_replica_role", role="leader") == (1 if replica_id == leader else 0)
        assert _value(replica, "toystore_db_commit_seconds_count") >= 1
    leading = _scrape(cluster.replica_url(leader))
    assert _value(leading, "toystore_raft_append_seconds_count") >= 1
    assert _value(leading, "toystore_raft_elections_total", outcome="won") >= 1
