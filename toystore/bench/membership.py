"""``python -m toystore.bench.membership``: what replacing an order replica online costs.

On one local cluster with snapshots on (``--snapshot-every 10000``):

1. a history of ``--orders`` orders (default 100,000), posted as the snapshot benchmark does;
2. the time to add a member to the group holding it: a replica started empty with
   ``--join``, then ``python -m toystore.admin add``'s request, until it answers (the new
   member caught up by snapshot, then promoted to voter, committed);
3. a replacement under load: ``--connections`` keyed clients (default 16) order through the
   frontend while a follower's disk dies (``kill -9``, data folder deleted), a new replica
   is added and the dead one removed; the frontend then moves leadership to the new member
   (its highest id). Reported: the longest pause between two acknowledged orders from the
   failure until the new member leads, orders failed (must be 0), and the order rate
   during the replacement against the rate just before it, measured in the same run.

Every process is stopped on the way out; the cluster's logs are scanned for errors.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from toystore import admin
from toystore.bench.orderload import OrderLoad, orders_on
from toystore.bench.snapshots import SNAPSHOT_EVERY, Settings, SnapshotBench, log_findings, publish, text_table
from toystore.cluster import LocalCluster, http_json

DEFAULT_ORDERS = 100_000
DEFAULT_CONNECTIONS = 16
BASELINE_SECONDS = 4.0  # of load before the replacement, for the rate it is compared with
SETTLE_SECONDS = 2.0  # of load after the new member leads


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m toystore.bench.membership",
                                     description="Time adding an order replica to a group holding a history, and "
                                                 "the pause in orders while a dead replica is replaced under load.")
    parser.add_argument("--orders", type=int, default=DEFAULT_ORDERS, help="orders in the history (default 100000)")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                        help="keyed clients ordering during the replacement (default 16)")
    parser.add_argument("--time-limit", type=float, default=1200.0, help="seconds for the whole run (default 1200)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the cluster keeps state and logs (default: a temporary folder, removed after a "
                             "clean run)")
    args = parser.parse_args(argv)
    if args.orders < 0 or args.connections < 1 or args.time_limit <= 0:
        parser.error("--orders must not be negative, --connections at least 1, --time-limit positive")
    return args


class MembershipBench:
    def __init__(self, settings: Settings, connections: int, say: Callable[[str], None]) -> None:
        self.snapshots = SnapshotBench(settings, say)
        self.connections = connections
        self.say = say
        self.run: dict[str, Any] = {"orders": settings.sizes[0], "snapshot_every": settings.snapshot_every,
                                    "connections": connections, "checks": {}}
        self.error: str | None = None

    def measure(self) -> dict[str, Any]:
        began = time.monotonic()
        try:
            with self.snapshots.cluster("membership", self.run["snapshot_every"]) as cluster:
                try:
                    self.snapshots.post_history(cluster, self.run, "membership")
                    self._add_member(cluster)
                    self._replace_under_load(cluster)
                finally:
                    self.run["log_findings"] = log_findings(cluster.log_dir)
        except (RuntimeError, TimeoutError, OSError, admin.AdminError) as error:
            self.error = str(error)
        self.run["total_s"] = round(time.monotonic() - began, 1)
        passed = all(check["passed"] for check in self.run["checks"].values())
        return {"run": self.run, "error": self.error, "all_checks_passed": passed and self.error is None,
                "log_errors": self.run.get("log_findings", {}).get("count", 0)}

    def _admin(self, cluster: LocalCluster, body: dict[str, Any]) -> list[dict[str, Any]]:
        replicas = {i: cluster.replica_url(i) for i in cluster.replica_ids}
        return admin.change(replicas, cluster.config.token, body)

    def _add_member(self, cluster: LocalCluster) -> None:
        new = cluster.add_replica()
        cluster.wait_for(lambda: cluster.health(new), 30, f"replica {new} (--join) answering")
        began = time.monotonic()
        members = self._admin(cluster, {"add": {"id": new, "url": cluster.replica_url(new)}})
        self.run["add_member_s"] = round(time.monotonic() - began, 3)
        health = cluster.health(new) or {}
        voter = any(m["id"] == new and m["voter"] for m in members)
        # Past the first snapshot, the log before it is gone: the new member must have got the snapshot.
        by_snapshot = health.get("snapshot_index", 0) > 0 or self.run["orders"] < self.run["snapshot_every"]
        self.run["checks"]["added_as_voter"] = {"passed": voter and by_snapshot,
                                                "snapshot_index": health.get("snapshot_index")}
        self.say(f"  added replica {new} to a group holding {self.run['orders']:,} orders in "
                 f"{self.run['add_member_s']:.2f} s (snapshot_index {health.get('snapshot_index')})")

    def _replace_under_load(self, cluster: LocalCluster) -> None:
        leader = cluster.wait_for(cluster.leader, 10, "an order leader")
        dead = min(i for i in cluster.replica_ids if i != leader)
        with OrderLoad(cluster.frontend_url, self.connections) as load:
            time.sleep(BASELINE_SECONDS)
            failed_at = time.monotonic()
            cluster.wipe(dead)
            new = cluster.add_replica()
            cluster.wait_for(lambda: cluster.health(new), 30, f"replica {new} (--join) answering")
            self._admin(cluster, {"add": {"id": new, "url": cluster.replica_url(new)}})
            self._admin(cluster, {"remove": dead})
            replaced = time.monotonic()
            cluster.wait_for(lambda: http_json("GET", cluster.frontend_url + "/health")[1]["data"].get("leader_id")
                             == new, 30, "the frontend sending to the new member")
            led = time.monotonic()
            time.sleep(SETTLE_SECONDS)
        before = load.rate(failed_at - BASELINE_SECONDS, failed_at)
        during = load.rate(failed_at, led)
        self.run.update(replaced=dead, replaced_by=new, replace_s=round(replaced - failed_at, 3),
                        new_leader_after_s=round(led - failed_at, 3),
                        longest_pause_s=round(load.longest_pause(failed_at, led), 3),
                        orders_per_s_before=round(before, 1), orders_per_s_during=round(during, 1),
                        during_to_before=round(during / before, 3) if before else None,
                        orders_failed=len(load.failed), orders_acknowledged=len(load.acknowledged))
        history = {order["number"]: order["request_id"] for order in orders_on(cluster, new)}
        lost = [key for _, key, number in load.acknowledged if history.get(number) != key]
        self.run["checks"]["none_failed_or_lost"] = {"passed": not load.failed and not lost,
                                                     "failed": len(load.failed), "lost": len(lost)}
        self.say(f"  replaced {dead} by {new} in {replaced - failed_at:.2f} s; longest pause "
                 f"{self.run['longest_pause_s']:.3f} s; {len(load.failed)} failed, {len(lost)} lost")


def render(report: dict[str, Any]) -> str:
    run = report["run"]

    def figure(key: str, unit: str = "") -> str:
        value = run.get(key)
        return "-" if value is None else f"{value:,}{unit}" if isinstance(value, int) else f"{value:.3f}{unit}"

    rows = [
        ("history", f"{run['orders']:,} orders, --snapshot-every {run['snapshot_every']:,}"),
        ("add a member (to voter, committed)", figure("add_member_s", " s")),
        (f"replace a dead replica under {run['connections']} connections", figure("replace_s", " s")),
        ("  until the new member leads", figure("new_leader_after_s", " s")),
        ("  longest pause in acknowledged orders", figure("longest_pause_s", " s")),
        ("  orders/s during ÷ before", figure("during_to_before")),
        ("  orders failed", figure("orders_failed")),
    ]
    checks = [(name, "passed" if check["passed"] else f"FAILED {json.dumps(check)}")
              for name, check in run["checks"].items()]
    return text_table(("Membership", ""), rows + checks)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="toystore-bench-membership-"))).resolve()
    settings = Settings(data_dir=data_dir, sizes=(args.orders,), snapshot_every=SNAPSHOT_EVERY,
                        time_limit=args.time_limit)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"Membership benchmark: {args.orders:,} orders, {args.connections} connections; state and logs in "
          f"{data_dir}", flush=True)
    try:
        report = MembershipBench(settings, args.connections, say=lambda line: print(line, flush=True)).measure()
    except KeyboardInterrupt:
        print(f"interrupted; every process was stopped (state and logs kept in {data_dir})", file=sys.stderr)
        return 130
    return publish(report, render(report), args.json, data_dir, keep_data=args.data_dir is not None)


if __name__ == "__main__":
    sys.exit(main())
