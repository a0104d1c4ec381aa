"""The final snapshot of a fault run reads the replicas one after another; a leader change
in between must not pass for a divergence while the settle time lasts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from toystore.faults import workload

LEDGER = {"toys": {}, "reservations": {"held": 0}}
HISTORY = [{"number": n, "request_id": f"k{n}", "name": "Tux", "quantity": 1} for n in range(5)]


class FakeCluster:
    """Three replicas that agree, except that replica 1 reads one commit behind the others
    in the health checks numbered in ``lagging`` (a new leader's no-op not heard yet)."""

    replica_ids = [1, 2, 3]
    catalog_url = "http://catalog"
    catalog_replicated = False
    config = SimpleNamespace(token=None)

    def __init__(self, lagging: range) -> None:
        self.lagging = lagging
        self.checks = 0
        self.paths: list[str] = []  # the /orders_since pages asked for

    def health(self, replica_id: int, timeout: float = 2.0) -> dict[str, Any]:
        if replica_id != 1:
            return {"commit_index": 10}
        self.checks += 1
        return {"commit_index": 9 if self.checks in self.lagging else 10}

    def get(self, name: str, path: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
        if name == "catalog":
            return 200, {"data": LEDGER}
        if path.startswith("/latest_order_no"):
            return 200, {"data": {"latest_order_no": 4}}
        self.paths.append(path)
        query = parse_qs(urlparse(path).query)
        after, limit = int(query["after"][0]), int(query["limit"][0])
        page = HISTORY[after + 1:after + 1 + limit]
        return 200, {"data": {"orders": page, "more": (page[-1]["number"] if page else after) < 4, "latest": 4}}


@pytest.fixture(autouse=True)
def ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workload, "http_json", lambda *args, **kwargs: (200, {"data": LEDGER}))
    monkeypatch.setattr(workload.time, "sleep", lambda seconds: None)


def test_a_reading_taken_across_a_leader_change_is_taken_again() -> None:
    # The cluster agrees twice in a row (checks 1 and 2), then the snapshot's own reading
    # (check 3) catches replica 1 behind for a moment.
    state = workload.snapshot(FakeCluster(lagging=range(3, 4)), settle_timeout=5.0)  # type: ignore[arg-type]
    assert {r.commit_index for r in state.replicas.values()} == {10}


def test_a_divergence_that_lasts_is_reported_once_the_settle_time_is_over() -> None:
    state = workload.snapshot(FakeCluster(lagging=range(1, 10**9)), settle_timeout=0.05)  # type: ignore[arg-type]
    assert state.replicas[1].commit_index == 9 and state.replicas[2].commit_index == 10


def test_no_settle_time_takes_the_first_reading() -> None:
    state = workload.snapshot(FakeCluster(lagging=range(1, 2)), settle_timeout=0)  # type: ignore[arg-type]
    assert state.replicas[1].commit_index == 9


def test_the_snapshot_reads_each_history_a_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workload, "SNAPSHOT_PAGE", 2)
    cluster = FakeCluster(lagging=range(0))
    state = workload.snapshot(cluster, settle_timeout=0)  # type: ignore[arg-type]
    assert all(replica.orders == HISTORY for replica in state.replicas.values())
    # Each page goes on after the last order of the one before, until no more follow.
    assert cluster.paths == [f"/orders_since?after={after}&limit=2" for after in (-1, 1, 3)] * 3
