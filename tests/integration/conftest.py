"""Real processes on 127.0.0.1 with free ports; each test's cluster is stopped (and its
processes reaped) when the test ends, whatever happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from toystore.cluster import ClusterConfig, LocalCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """``start_cluster(replicas=3, cache_size=8, ...)`` starts a cluster and waits until it takes orders."""
    started: list[LocalCluster] = []

    def start(**overrides: Any) -> LocalCluster:
        config = ClusterConfig(data_dir=tmp_path / f"cluster-{len(started)}", **overrides)
        cluster = LocalCluster(config)
        started.append(cluster)
        cluster.start()
        return cluster

    yield start
    for cluster in started:
        cluster.stop()
