"""The bench's restart fault points, each in one run under load.

- Primary-backup: orders/s before a kill -9 of the leader, while it is down, while it
  restarts and rejoins, and after (issue 23: the old leader's return once cut the rate from
  hundreds of orders/s to a handful).
- Raft: orders/s in the window before a kill -9 of the whole order group and in the window
  after it is back, and the catalog's held backlog in both (issue 22: after such a restart
  the reaper once stopped settling for good, and the rate fell with the growing backlog).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

from toystore.bench.loadgen import Job, LoadResult, run_python_load
from toystore.cluster import LocalCluster, http_json

CONCURRENCY = 64
MAX_DROP = 0.2  # after the restart, at most this fraction below the rate before the kill
GROUP_MAX_DROP = 0.1  # the same, for the restart of the whole Raft group
GROUP_WINDOW = 12.0  # seconds of each window of the group restart, at least


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


def _held(cluster: LocalCluster) -> dict[str, Any]:
    """The catalog's held backlog: ``{"held", "oldest_held_age"}``."""
    status, body = cluster.get("catalog", "/ledger", timeout=10)
    if status != 200:
        raise RuntimeError(f"the catalog's ledger answered {status}")
    return {"held": body["data"]["reservations"]["held"], "oldest_held_age": body["data"]["oldest_held_age"]}


def _acknowledged(job: Job) -> bool:
    try:
        status, _ = http_json(job.method, job.url, body=json.loads(job.body or b"null"), timeout=5)
    except OSError:
        return False
    return status == 200


def _load_then_held(cluster: LocalCluster, job: Job, seconds: float) -> tuple[LoadResult, dict[str, Any]]:
    """A load window, and the held backlog as it ends: the reservations of its last couple of
    seconds, which the reaper may not judge yet (its steady size at that rate)."""
    result = run_python_load(job, concurrency=CONCURRENCY, seconds=seconds)
    return result, _held(cluster)


def group_restart_under_load(cluster: LocalCluster, job: Job, seconds: float,
                             say: Callable[[str], None]) -> dict[str, Any]:
    """A window of load, a kill -9 of every order replica, their restart, and a second window
    once the store answers orders again; each window lasts ``seconds`` (at least
    :data:`GROUP_WINDOW`, unless shorter is asked for a smoke run).

    :return: ``figures``, ``check`` (after within :data:`GROUP_MAX_DROP` of before, and the held
        backlog no more than its steady size again) and ``details``."""
    cluster.wait_for(cluster.leader, 30, "an order leader")
    before, held_before = _load_then_held(cluster, job, seconds)
    for replica_id in cluster.replica_ids:
        cluster.kill(f"order-{replica_id}")
    held_at_kill = _held(cluster)["held"]
    restarted = time.monotonic()
    for replica_id in cluster.replica_ids:
        cluster.start_process(f"order-{replica_id}")
    cluster.wait_for(lambda: _acknowledged(job), 60, "an order acknowledged after the restart", interval=0.05)
    back = time.monotonic() - restarted
    after, held_after = _load_then_held(cluster, job, seconds)
    ratio = after.ok_per_second / before.ok_per_second if before.ok_per_second else 0.0
    # Steady: what a couple of seconds of orders hold until the reaper may judge them, give or take.
    backlog_steady = held_after["held"] <= 1.5 * held_before["held"] + 100
    say(f"restart of the whole order group under load: {before.ok_per_second:,.0f} orders/s before, "
        f"{after.ok_per_second:,.0f} after ({ratio:.2f} of before); back {back:.1f} s after the restart; "
        f"held reservations {held_before['held']:,} before, {held_at_kill:,} at the kill, {held_after['held']:,} after")
    return {
        "figures": {"group_restart_before_per_s": round(before.ok_per_second, 1),
                    "group_restart_after_per_s": round(after.ok_per_second, 1),
                    "group_restart_after_over_before": round(ratio, 3), "group_restart_back_s": round(back, 2),
                    "group_restart_held_before": held_before["held"], "group_restart_held_at_kill": held_at_kill,
                    "group_restart_held_after": held_after["held"]},
        "check": {"passed": ratio >= 1 - GROUP_MAX_DROP and backlog_steady, "after_over_before": round(ratio, 3),
                  "max_drop": GROUP_MAX_DROP, "backlog_steady": backlog_steady,
                  "failed": {"before": before.errors, "after": after.errors}},
        "details": {name: {"ok_per_second": result.ok_per_second, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                           "errors": result.errors, **backlog}
                    for name, result, backlog in (("before", before, held_before), ("after", after, held_after))},
    }
