"""The bench's restart fault point: orders/s before a kill -9 of the leader, while it is
down, while it restarts and rejoins, and after, in one run (issue 23: in primary-backup
mode the old leader's return once cut the rate from hundreds of orders/s to a handful)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from toystore.bench.loadgen import Job, LoadResult, run_python_load
from toystore.cluster import LocalCluster

CONCURRENCY = 64
MAX_DROP = 0.2  # after the restart, at most this fraction below the rate before the kill


def _caught_up(cluster: LocalCluster, replica_id: int) -> bool:
    """Answering, and (primary-backup) saying it is caught up; a Raft replica does not say."""
    health = cluster.health(replica_id)
    return health is not None and health.get("caught_up", True) is True


def restart_under_load(cluster: LocalCluster, job: Job, seconds: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Runs the four windows of ``seconds`` each at :data:`CONCURRENCY` connections sending ``job``; the leader
    is killed before the second and restarted as the third begins (under its load).

    :return: ``figures``, ``check`` (after within :data:`MAX_DROP` of before) and ``details``."""
    leader = cluster.wait_for(cluster.leader, 30, "an order leader")
    windows: dict[str, LoadResult] = {"before": run_python_load(job, concurrency=CONCURRENCY, seconds=seconds)}
    cluster.kill(f"order-{leader}")
    windows["down"] = run_python_load(job, concurrency=CONCURRENCY, seconds=seconds)
    restarted = time.monotonic()
    cluster.start_process(f"order-{leader}")
    caught_up: list[float] = []  # when the restarted replica first said so, watched while the load runs
    watcher = threading.Thread(target=lambda: caught_up.append(cluster.wait_for(
        lambda: _caught_up(cluster, leader) and time.monotonic(), 60,
        "the restarted leader caught up", interval=0.05)), daemon=True)
    watcher.start()
    windows["rejoin"] = run_python_load(job, concurrency=CONCURRENCY, seconds=seconds)
    watcher.join(60)
    if not caught_up:
        raise TimeoutError(f"replica {leader} did not catch up within 60 s of its restart")
    rejoined = caught_up[0] - restarted
    windows["after"] = run_python_load(job, concurrency=CONCURRENCY, seconds=seconds)
    rates = {name: round(result.ok_per_second, 1) for name, result in windows.items()}
    ratio = rates["after"] / rates["before"] if rates["before"] else 0.0
    say(f"restart of leader {leader} under load: {rates['before']:,.0f} orders/s before, {rates['down']:,.0f} "
        f"while down, {rates['rejoin']:,.0f} while it rejoins, {rates['after']:,.0f} after ({ratio:.2f} of before)")
    return {
        "figures": {**{f"restart_{name}_per_s": rate for name, rate in rates.items()},
                    "restart_after_over_before": round(ratio, 3), "restart_caught_up_s": round(rejoined, 2)},
        "check": {"passed": ratio >= 1 - MAX_DROP, "after_over_before": round(ratio, 3), "max_drop": MAX_DROP,
                  "failed": {name: result.errors for name, result in windows.items()}},
        "details": {name: {"ok_per_second": result.ok_per_second, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                           "errors": result.errors} for name, result in windows.items()},
    }
