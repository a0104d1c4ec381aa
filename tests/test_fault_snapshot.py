"""The final snapshot of a fault run reads the replicas one after another; a leader change
in between must not pass for a divergence while the settle time lasts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from toystore.faults import workload

LEDGER = {"toys": {}, "reservations": {"held": 0}}


class FakeCluster:
    """Three replicas that agree, except that replica 1 reads one commit behind the others
    in the health checks numbered in ``lagging`` (a new leader's no-op not heard yet)."""

    replica_ids = [1, 2, 3]
    catalog_url = "http://catalog"
    config = SimpleNamespace(token=None)

    def __init__(self, lagging: range) -> None:
        self.lagging = lagging
        self.checks = 0

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
        return 200, {"data": {"orders": []}}


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
