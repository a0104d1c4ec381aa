"""Primary-backup mode on real processes: leader kill -9, failover, the old leader's
catch-up, a load run across a failover, and the old leader's restart under load."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from toystore.bench.orderload import OrderLoad, orders_on
from tests.integration.test_store_end_to_end import run_load_client
from toystore.cluster import LocalCluster, http_json


def _order(cluster: LocalCluster, name: str, quantity: int) -> tuple[int, dict[str, Any]]:
    return http_json("POST", cluster.frontend_url + "/orders", body={"name": name, "quantity": quantity}, timeout=15)


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
    # Either survivor may lead. Replica 2, once named, answers 503 while it syncs; the frontend
    # may take that as a failure and name replica 1 (seen once in ten CI runs).
    assert cluster.leader() in (1, 2)
    cluster.start_process("order-3")
    cluster.wait_for(lambda: cluster.health(3) is not None and cluster.health(3)["commit_index"] == 10, 15,
                     "replica 3 caught up")
    assert orders_on(cluster, 3) == orders_on(cluster, 2) == orders_on(cluster, 1)
    assert len(orders_on(cluster, 1)) == 10
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
    held = [orders_on(cluster, i) for i in (1, 2)]
    assert held[0] == held[1]


BEFORE_S = 8.0   # load on the first leader, the rate to keep
DOWN_S = 6.0     # about 10,000 orders behind: a slow catch-up once stopped the store after 30 s (issue 23)
AFTER_S = 12.0   # load once the old leader leads again
CONNECTIONS = 64
# What this run guards against is the store stopping or crawling once the old leader is back
# (issue 23; 0.48 of before when each order was pushed on its own). The bench's finer bound,
# after within 20% of before, needs its longer windows: on this shared two-core machine the
# whole cluster slows by up to 30% for longer than a window here (measured: the catalog and
# the frontend, which the restart does not touch, spent 40% more CPU per order in such a
# window, at the same share of a core), so that bound here failed a run in ten.
MIN_AFTER_OVER_BEFORE = 0.6


def _kept_as(reservation: str) -> int | None:
    """The number in a moved-aside order's ``"kept for order N"``, None for any other outcome."""
    prefix = "kept for order "
    return int(reservation[len(prefix):]) if reservation.startswith(prefix) else None


def test_the_old_leader_restarted_under_load_rejoins_and_the_store_keeps_its_rate(
        start_cluster: Callable[..., LocalCluster]) -> None:
    """Issue 23's run, shortened for the suite's time: 64 connections of orders, kill -9 of
    the leader (replica 3), its restart after 6 s, some 10,000 orders later. It returns holding the
    orders it had made durable and not yet pushed (a forked tail, when the kill falls between
    the two) and far behind; it is not chosen before it has
    caught up, moves that tail aside, rejoins and leads again at the rate of before."""
    began = time.monotonic()
    cluster = start_cluster(replication="primary-backup", initial_stock=10**6)
    cluster.wait_for(lambda: cluster.leader() == 3, 10, "replica 3 leading")
    with OrderLoad(cluster.frontend_url, connections=CONNECTIONS) as load:
        time.sleep(1.0)  # connections warm up
        before = time.monotonic()
        time.sleep(BEFORE_S)
        killed = time.monotonic()
        cluster.kill("order-3")
        time.sleep(DOWN_S)
        restarted = time.monotonic()
        cluster.start_process("order-3")
        cluster.wait_for(lambda: (cluster.health(3) or {}).get("caught_up"), 20, "replica 3 caught up")
        caught_up = time.monotonic()
        cluster.wait_for(lambda: cluster.leader() == 3, 20, "replica 3 leading again")
        back = time.monotonic()
        time.sleep(AFTER_S)
        after = time.monotonic()
    stopped = time.monotonic()
    rates = {"before": load.rate(before, killed), "down": load.rate(killed + 2.0, restarted),
             "rejoin": load.rate(restarted, back), "after": load.rate(back, after)}
    seconds = {"before": load.per_second(before, killed), "after": load.per_second(back, after)}
    # The machine is shared: a second of someone else's work moves a mean of five, not the median.
    typical = {name: statistics.median(counts) for name, counts in seconds.items()}
    by_second = {name: [round(count) for count in counts] for name, counts in seconds.items()}
    print(f"orders/s {', '.join(f'{k} {v:.0f}' for k, v in rates.items())}; median of the seconds before "
          f"{typical['before']:.0f}, after {typical['after']:.0f} {by_second}; replica 3 caught up "
          f"{caught_up - restarted:.1f} s and leading {back - restarted:.1f} s after its restart")
    assert rates["down"] > 0, rates
    assert typical["after"] >= MIN_AFTER_OVER_BEFORE * typical["before"] > 0, (typical, seconds)

    cluster.wait_for(lambda: len({(cluster.health(i) or {}).get("commit_index") for i in (1, 2, 3)}) == 1
                     and len({json.dumps(orders_on(cluster, i)) for i in (1, 2, 3)}) == 1, 10,
                     "the replicas converged", interval=0.5)
    print(f"converged {time.monotonic() - stopped:.1f} s after the load stopped")
    history = {o["number"]: o["request_id"] for o in orders_on(cluster, 1)}
    assert sorted(history) == list(range(len(history)))
    # Replicas 1 and 2 were up throughout, so every order was acknowledged while a follower was
    # up; none may be lost.
    lost = [(key, number) for _, key, number in load.acknowledged if history.get(number) != key]
    assert not lost, lost[:10]

    # The moved-aside orders were never acknowledged (the leader died before its pushes were done).
    # Each request either is absent from the history (its reservation went back, or there was none)
    # or the frontend's retry placed it at the new leader, under the number the listing names.
    cluster.wait_for(lambda: all(m["reservation"] != "pending" for m in cluster.get("order-3", "/moved_aside")[1]
                                 ["data"]["orders"]), 10, "the moved-aside reservations settled", interval=0.5)
    status, listing = cluster.get("order-3", "/moved_aside")
    assert status == 200, listing
    moved = listing["data"]["orders"]
    numbers = {key: number for number, key in history.items()}
    acknowledged = {key: number for _, key, number in load.acknowledged}
    for m in moved:
        kept = _kept_as(m["reservation"])
        assert numbers.get(m["request_id"]) == kept, (m, numbers.get(m["request_id"]))
        assert acknowledged.get(m["request_id"], kept) == kept, (m, acknowledged[m["request_id"]])
    outcomes = Counter("kept" if _kept_as(m["reservation"]) is not None else m["reservation"] for m in moved)
    if moved:
        print(f"fork: {len(moved)} orders moved aside on replica 3 (numbers {moved[0]['number']}.."
              f"{moved[-1]['number']}), reservations {dict(outcomes)}")
    else:
        print("no fork in this run: a follower held every order replica 3 had made durable when it was killed")
    print(f"{len(history)} orders; the test took {time.monotonic() - began:.0f} s")
