"""Fault scenarios: faults while clients run, then heal, converge, snapshot and check.

Each scenario is a function ``(cluster, nemesis, workload, duration) -> ScenarioResult``. The
workload's clients run for ``duration`` seconds; the faults happen inside that window and
leave the last part of it for recovery, so every run also shows that work resumes. The
history is the workload's whole history (a cluster's state holds every earlier round too),
and every checker of :mod:`toystore.faults.checkers` runs on it.

Timings assume the order replicas' defaults: elections after 0.5 to 1 s without a leader.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from toystore.cluster import LocalCluster
from toystore.faults.checkers import CheckResult, ClusterState, check_all
from toystore.faults.history import Operation
from toystore.faults.nemesis import Nemesis, NemesisEvent
from toystore.faults.workload import Workload, figures, snapshot, wait_converged

SETTLE_TIMEOUT = 20.0


@dataclass
class ScenarioResult:
    """What one scenario run did and found.

    :param measures: scenario-specific figures (when a fault happened, which replica...), for
        the tests' extra assertions and the chaos report; every run has ``healed_at`` and
        ``settle_seconds`` (from the clients' end, which is after the heal, until the replicas
        agreed and no reservation was held; under load neither holds still; None when that
        took over :data:`SETTLE_TIMEOUT`).
    """

    name: str
    checks: list[CheckResult]
    figures: dict[str, int]
    history: list[Operation]
    state: ClusterState
    events: list[NemesisEvent]
    measures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


Faults = Callable[[LocalCluster, Nemesis, float], dict[str, Any]]
Scenario = Callable[..., ScenarioResult]


def run_scenario(name: str, faults: Faults, cluster: LocalCluster, nemesis: Nemesis, workload: Workload,
                 duration: float, *, check: bool = True, restocks_possible: bool = False) -> ScenarioResult:
    """Run ``faults(cluster, nemesis, fault_deadline)`` while the workload runs, then heal all,
    let the clients finish, wait for convergence and check.

    :param check: run the checkers (chaos rounds may defer them to the end).
    """
    events_before = len(nemesis.events)
    start = time.monotonic()
    workload.start(duration)
    try:
        fault_deadline = start + duration * 0.7
        measures = faults(cluster, nemesis, fault_deadline)
    finally:
        nemesis.heal_all()
        healed_at = time.monotonic()
        workload.join()
    settle_seconds = wait_converged(cluster, SETTLE_TIMEOUT)
    measures = {**measures, "healed_at": healed_at, "settle_seconds": settle_seconds}
    history = workload.history()
    # Converged once is not enough: the frontend may move leadership to a restarted replica
    # just after, and a new leader's no-op can land between reading one replica and the next;
    # snapshot then reads again. A cluster that never converged is taken as it is.
    state = snapshot(cluster, settle_timeout=SETTLE_TIMEOUT if settle_seconds is not None else 0)
    checks = check_all(history, state, restocks_possible) if check else []
    return ScenarioResult(name, checks, figures(history), history, state, nemesis.events[events_before:], measures)


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _warmup(fault_deadline: float) -> None:
    """Let the clients run a little before the first fault."""
    time.sleep(min(1.0, max(0.0, fault_deadline - time.monotonic()) * 0.25))


def first_ack_after(history: list[Operation], moment: float) -> float | None:
    """When the first order acknowledged after ``moment`` completed (None if none was)."""
    times = [op.complete for op in history
             if op.kind == "order" and op.outcome == "ok" and op.complete is not None and op.complete > moment]
    return min(times, default=None)


def acks_between(history: list[Operation], begin: float, end: float) -> list[Operation]:
    """Orders invoked at or after ``begin`` and acknowledged before ``end``."""
    return [op for op in history if op.kind == "order" and op.outcome == "ok" and op.invoke >= begin
            and op.complete is not None and op.complete <= end]


# ---------------------------------------------------------------- the faults


@dataclass(frozen=True)
class _Group:
    """A Raft group as the faults see it; ``label`` names its leader in the measures
    (``killed_leader``, ``killed_catalog_leader``...)."""

    wait_leader: Callable[..., int]
    name: Callable[[int], str]
    isolate: Callable[[int], NemesisEvent]
    label: str


def _orders(nemesis: Nemesis) -> _Group:
    return _Group(nemesis.wait_leader, nemesis.replica, nemesis.isolate, "leader")


def _catalog(nemesis: Nemesis) -> _Group:
    return _Group(nemesis.wait_catalog_leader, nemesis.catalog_member, nemesis.isolate_catalog_member,
                  "catalog_leader")


def _kill_the_leader(group: _Group, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    _warmup(fault_deadline)
    leader = group.wait_leader()
    killed = nemesis.kill(group.name(leader))
    new_leader = group.wait_leader(excluding=leader)
    _sleep_until(fault_deadline)
    nemesis.restart(group.name(leader))
    return {f"killed_{group.label}": leader, "killed_at": killed.at, f"new_{group.label}": new_leader}


def _partition_the_leader(group: _Group, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    """The leader cut off from the rest of its group while its clients still reach it: it
    cannot commit, and must not answer as if it could."""
    _warmup(fault_deadline)
    leader = group.wait_leader()
    isolated = group.isolate(leader)
    new_leader = group.wait_leader(excluding=leader)
    _sleep_until(max(isolated.at + 3.0, fault_deadline))
    nemesis.heal_network()
    return {f"isolated_{group.label}": leader, "isolated_at": isolated.at, f"new_{group.label}": new_leader,
            "partition_healed_at": nemesis.events[-1].at}


def _leader_kill(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    return _kill_the_leader(_orders(nemesis), nemesis, fault_deadline)


def _follower_kill(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    _warmup(fault_deadline)
    leader = nemesis.wait_leader()
    follower = next(i for i in cluster.replica_ids if i != leader)
    nemesis.kill(nemesis.replica(follower))
    _sleep_until(fault_deadline)
    nemesis.restart(nemesis.replica(follower))
    return {"killed_follower": follower}


def _leader_pause(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    _warmup(fault_deadline)
    leader = nemesis.wait_leader()
    paused = nemesis.pause(nemesis.replica(leader))
    new_leader = nemesis.wait_leader(excluding=leader)  # the paused one cannot answer health checks
    _sleep_until(max(paused.at + 2.5, fault_deadline))
    resumed = nemesis.resume(nemesis.replica(leader))
    return {"paused_leader": leader, "paused_at": paused.at, "resumed_at": resumed.at, "new_leader": new_leader}


def _leader_partition(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    return _partition_the_leader(_orders(nemesis), nemesis, fault_deadline)


def _majority_down(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    _warmup(fault_deadline)
    leader = nemesis.wait_leader()
    followers = [i for i in cluster.replica_ids if i != leader]
    down = followers[: len(cluster.replica_ids) // 2 + 1]
    if len(down) <= len(cluster.replica_ids) // 2:  # fewer followers than a majority: the leader too
        down.append(leader)
    kills = [nemesis.kill(nemesis.replica(replica_id)) for replica_id in down]
    _sleep_until(max(kills[0].at + 3.0, fault_deadline))
    restarts = [nemesis.restart(nemesis.replica(replica_id)) for replica_id in down]
    return {"down": down, "down_at": kills[-1].at, "back_at": restarts[0].at}


def _all_killed(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    _warmup(fault_deadline)
    kills = [nemesis.kill(nemesis.replica(i)) for i in cluster.replica_ids]
    time.sleep(1.0)
    restarts = [nemesis.restart(nemesis.replica(i)) for i in cluster.replica_ids]
    return {"down_at": kills[-1].at, "back_at": restarts[0].at}


def _rapid_leader_kills(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    """Figure 8 of the Raft paper: leaders die right after taking entries, again and again."""
    _warmup(fault_deadline)
    kills = 0
    while time.monotonic() + 0.5 < fault_deadline:
        try:
            leader = nemesis.wait_leader(timeout=3.0)
        except TimeoutError:
            continue
        killed = nemesis.kill(nemesis.replica(leader))
        time.sleep(0.3)
        nemesis.restart(nemesis.replica(leader))
        kills += 1
        _sleep_until(killed.at + 1.0)
    return {"leader_kills": kills}


def _churn(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float, interval: float = 0.7) -> dict[str, Any]:
    """A new fault every ``interval`` s, each healed before the next: kills, pauses,
    partitions (both ways or one way), slow and lossy links, on a leader or any member of
    either group (chosen by ``nemesis.rng``; catalog members when the catalog is replicated)."""
    rng = nemesis.rng
    proxied = bool(cluster.links)
    kinds = ["kill", "pause", "none"] + (["isolate", "cut", "delay", "drop"] if proxied else [])
    applied: dict[str, int] = {}
    _warmup(fault_deadline)
    while time.monotonic() + interval < fault_deadline:
        tick = time.monotonic()
        nemesis.heal_all()
        kind = rng.choice(kinds)
        if cluster.catalog_replicated and rng.random() < 0.3:
            group, leader, named = cluster.catalog_ids, cluster.catalog_leader, nemesis.catalog_member
            isolate, sources = nemesis.isolate_catalog_member, [nemesis.replica(i) for i in cluster.replica_ids]
        else:
            group, leader, named, isolate = cluster.replica_ids, nemesis.leader, nemesis.replica, nemesis.isolate
            sources = ["frontend"]
        target = leader() if rng.random() < 0.5 else None
        target = target or rng.choice(group)
        name = named(target)
        if kind == "kill":
            nemesis.kill(name)
        elif kind == "pause":
            nemesis.pause(name)
        elif kind == "isolate":
            isolate(target)
        elif kind == "cut":  # one way only: the target still hears the others
            nemesis.cut(name, named(rng.choice([i for i in group if i != target])))
        elif kind in ("delay", "drop"):
            source = rng.choice(sources + [named(i) for i in group if i != target])
            if kind == "delay":
                nemesis.delay(source, name, rng.choice([50, 150, 400]))
            else:
                nemesis.drop(source, name, rng.choice([0.3, 0.7, 1.0]))
        applied[kind] = applied.get(kind, 0) + 1
        _sleep_until(tick + interval)
    return {"faults": applied}


def _slow_catalog_leader_pause(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    """The catalog's answers to the replicas take 2 to 4 s while the leader is paused and
    resumed: reservations made in one term are answered in a later one, perhaps after a
    newer leader released them, and perhaps when their sender leads again (the frontend
    hands leadership back to the highest id). No reservation may become an order then."""
    _warmup(fault_deadline)
    round_trip_ms = nemesis.rng.randint(2000, 4000)
    for replica_id in cluster.replica_ids:  # a link's delay applies each way
        for catalog in cluster.catalog_names:
            nemesis.delay(nemesis.replica(replica_id), catalog, round_trip_ms // 2)
    time.sleep(0.5)
    leader = nemesis.wait_leader()
    paused = nemesis.pause(nemesis.replica(leader))
    time.sleep(nemesis.rng.uniform(1.5, 3.0))
    resumed = nemesis.resume(nemesis.replica(leader))
    _sleep_until(max(resumed.at + round_trip_ms / 1000, fault_deadline))
    nemesis.heal_network()
    return {"paused_leader": leader, "paused_at": paused.at, "resumed_at": resumed.at,
            "catalog_round_trip_ms": round_trip_ms}


def _catalog_kill(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    """The whole catalog down for 1.5 s (the catalog alone, or every member)."""
    _warmup(fault_deadline)
    kills = [nemesis.kill(name) for name in cluster.catalog_names]
    time.sleep(1.5)
    restarts = [nemesis.restart(name) for name in cluster.catalog_names]
    return {"killed_at": kills[0].at, "back_at": restarts[-1].at}


def _catalog_leader_kill(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    return _kill_the_leader(_catalog(nemesis), nemesis, fault_deadline)


def _catalog_leader_partition(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    """The catalog leader cut off from the other members; the order replicas still reach it."""
    return _partition_the_leader(_catalog(nemesis), nemesis, fault_deadline)


def _catalog_and_order_leaders(cluster: LocalCluster, nemesis: Nemesis, fault_deadline: float) -> dict[str, Any]:
    """Both groups lose their leader at once: the catalog leader paused, the order leader killed."""
    _warmup(fault_deadline)
    catalog_leader, order_leader = nemesis.wait_catalog_leader(), nemesis.wait_leader()
    paused = nemesis.pause(nemesis.catalog_member(catalog_leader))
    nemesis.kill(nemesis.replica(order_leader))
    new_catalog_leader = nemesis.wait_catalog_leader(excluding=catalog_leader)
    new_order_leader = nemesis.wait_leader(excluding=order_leader)
    _sleep_until(max(paused.at + 2.5, fault_deadline))
    nemesis.resume(nemesis.catalog_member(catalog_leader))
    nemesis.restart(nemesis.replica(order_leader))
    return {"paused_catalog_leader": catalog_leader, "killed_order_leader": order_leader, "faulted_at": paused.at,
            "new_catalog_leader": new_catalog_leader, "new_order_leader": new_order_leader}


FAULTS: dict[str, Faults] = {
    "leader-kill": _leader_kill,
    "follower-kill": _follower_kill,
    "leader-pause": _leader_pause,
    "leader-partition": _leader_partition,
    "majority-down": _majority_down,
    "all-killed": _all_killed,
    "rapid-leader-kills": _rapid_leader_kills,
    "churn": _churn,
    "catalog-kill": _catalog_kill,
    "slow-catalog-leader-pause": _slow_catalog_leader_pause,
    "catalog-leader-kill": _catalog_leader_kill,
    "catalog-leader-partition": _catalog_leader_partition,
    "catalog-and-order-leaders": _catalog_and_order_leaders,
}
# Churn uses network faults only when proxied, and faults catalog members only when there are some.
NEEDS_PROXY = frozenset({"leader-partition", "slow-catalog-leader-pause", "catalog-leader-partition"})
NEEDS_CATALOG_GROUP = frozenset({"catalog-leader-kill", "catalog-leader-partition", "catalog-and-order-leaders"})


def scenario(name: str, cluster: LocalCluster, nemesis: Nemesis, workload: Workload, duration: float,
             **options: Any) -> ScenarioResult:
    """Run the scenario ``name`` (a key of :data:`FAULTS`)."""
    if name in NEEDS_PROXY and not cluster.links:
        raise ValueError(f"scenario {name} needs a cluster started with proxied=True")
    if name in NEEDS_CATALOG_GROUP and not cluster.catalog_replicated:
        raise ValueError(f"scenario {name} needs a cluster started with catalog_members=3")
    return run_scenario(name, FAULTS[name], cluster, nemesis, workload, duration, **options)


SCENARIOS: dict[str, Scenario] = {name: functools.partial(scenario, name) for name in FAULTS}
