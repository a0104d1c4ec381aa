"""``python -m toystore.bench.catalog``: what replicating the catalog costs, and its failover.

In one run, on this machine:

1. a cluster with a catalog alone, then one with three catalog members (both with three
   Raft order replicas): orders/s through the frontend at ``--connections`` (default 64)
   and the order latency at one connection, each for ``--seconds``; reported as the
   replicated catalog's figures against the lone catalog's, measured in the same run;
2. on the replicated catalog, ``--kills`` times: ``kill -9`` of the catalog leader while a
   prober orders every 10 ms; the time from the kill to the next acknowledged order (the
   target: a median of at most 1.5 s). The member comes back before the next kill.

Where the time goes: the CPU each role's processes used per acknowledged order during the
throughput point, read from ``/proc/<pid>/stat`` (on a machine of few cores, every process
of the cluster and the load generator share them).

Every process is stopped on the way out; the clusters' logs are scanned for errors.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from toystore.bench.loadgen import LoadResult, find_wrk, median, run_python_load, run_wrk
from toystore.bench.runner import OrderProber, order_job, wait_converged
from toystore.bench.snapshots import log_findings, publish, text_table
from toystore.cluster import ClusterConfig, LocalCluster

MAX_THROUGHPUT_COST = 0.25  # the replicated catalog may cost at most this share of orders/s
MAX_FAILOVER_MEDIAN_S = 1.5
PRODUCT = "Lego"


def cpu_seconds(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds (user and system) each running process of ``cluster`` has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, process in cluster.processes.items():
        if process.running and process.popen is not None:
            fields = Path(f"/proc/{process.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m toystore.bench.catalog",
                                     description="Orders/s and one order's latency with three catalog members "
                                                 "against a catalog alone, and the catalog leader's failover.")
    parser.add_argument("--connections", type=int, default=64, help="connections for the throughput (default 64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per load point (default 10)")
    parser.add_argument("--kills", type=int, default=5, help="catalog-leader kills to time (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the clusters keep state and logs (default: a temporary folder, removed after "
                             "a clean run)")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.seconds <= 0 or args.kills < 1:
        parser.error("--connections and --kills must be at least 1, --seconds positive")
    return args


class CatalogBench:
    def __init__(self, data_dir: Path, connections: int, seconds: float, kills: int,
                 say: Callable[[str], None]) -> None:
        self.data_dir = data_dir
        self.connections = connections
        self.seconds = seconds
        self.kills = kills
        self.say = say
        self.wrk = find_wrk()
        self.run: dict[str, Any] = {"connections": connections, "seconds": seconds,
                                    "load_generator": "wrk" if self.wrk else "python", "checks": {}, "log_errors": 0}
        self.error: str | None = None

    def measure(self) -> dict[str, Any]:
        began = time.monotonic()
        try:
            for members in (1, 3):
                self._with_cluster(members)
        except (RuntimeError, TimeoutError, OSError, AssertionError) as error:
            self.error = str(error)
        self.run["total_s"] = round(time.monotonic() - began, 1)
        self._compare()
        passed = all(check["passed"] for check in self.run["checks"].values())
        return {"run": self.run, "error": self.error, "all_checks_passed": passed and self.error is None,
                "log_errors": self.run["log_errors"]}

    def _with_cluster(self, members: int) -> None:
        config = ClusterConfig(data_dir=self.data_dir / f"catalog-members-{members}", catalog_members=members,
                               initial_stock=10**7, restock_interval=0)
        cluster = LocalCluster(config)
        try:
            cluster.start()
            wait_converged(cluster)
            self._load_points(cluster, members)
            if members > 1:
                self._failovers(cluster)
        finally:
            cluster.stop()
            findings = log_findings(cluster.log_dir)
            self.run["log_errors"] += findings["count"]
            self.run[f"log_findings_{members}"] = findings

    def _drive(self, cluster: LocalCluster, connections: int) -> LoadResult:
        job = order_job(cluster, PRODUCT)
        if self.wrk:
            return run_wrk(self.wrk, job.url, seconds=self.seconds, concurrency=connections, method=job.method,
                           body=job.body)
        return run_python_load(job, concurrency=connections, seconds=self.seconds)

    def _load_points(self, cluster: LocalCluster, members: int) -> None:
        self._drive(cluster, self.connections)  # warm-up: connections and caches
        before = cpu_seconds(cluster)
        many = self._drive(cluster, self.connections)
        used = {name: seconds - before[name] for name, seconds in cpu_seconds(cluster).items()}
        one = self._drive(cluster, 1)
        # Where the time goes: each role's CPU per acknowledged order at the throughput point.
        per_order = {role: round(sum(seconds for name, seconds in used.items() if name.split("-")[0] == role)
                                 / max(1, many.ok_total) * 1e6) for role in ("catalog", "order", "frontend")}
        self.run[f"cpu_us_per_order_{members}"] = per_order
        self.run[f"orders_per_s_{members}"] = round(many.ok_per_second, 1)
        self.run[f"orders_c1_p50_ms_{members}"] = round(one.p50_ms, 2)
        self.run[f"orders_failed_{members}"] = many.errors + one.errors
        self.say(f"  {members} catalog member{'s' if members > 1 else ''}: {many.ok_per_second:,.0f} orders/s at "
                 f"{self.connections} connections; one connection: p50 {one.p50_ms:.2f} ms; CPU per order "
                 + ", ".join(f"{role} {us} us" for role, us in per_order.items()))

    def _failovers(self, cluster: LocalCluster) -> None:
        samples: list[float] = []
        for kill in range(1, self.kills + 1):
            leader = cluster.wait_for(cluster.catalog_leader, 10, "a catalog leader")
            with OrderProber(order_job(cluster, PRODUCT)) as prober:
                prober.wait_for_ack_after(time.monotonic(), timeout=30)
                killed_at = time.monotonic()
                cluster.kill(f"catalog-{leader}")
                acked_at = prober.wait_for_ack_after(killed_at, timeout=60)
            samples.append(acked_at - killed_at)
            self.say(f"  catalog failover {kill}/{self.kills}: member {leader} killed, next order acknowledged "
                     f"after {samples[-1]:.3f} s")
            cluster.start_process(f"catalog-{leader}")
            cluster.wait_for(lambda: len({(cluster.health_of(name) or {}).get("commit_index")
                                          for name in cluster.catalog_names} - {None}) == 1
                             and all(cluster.health_of(name) for name in cluster.catalog_names), 30,
                             "the catalog members to agree again", interval=0.1)
        self.run["catalog_failover_s"] = [round(x, 3) for x in samples]
        self.run["catalog_failover_median_s"] = round(median(samples), 3)

    def _compare(self) -> None:
        alone, replicated = self.run.get("orders_per_s_1"), self.run.get("orders_per_s_3")
        if alone and replicated:
            self.run["orders_per_s_3_to_1"] = round(replicated / alone, 3)
            self.run["checks"]["throughput_cost_at_most_25_percent"] = {
                "passed": replicated / alone >= 1 - MAX_THROUGHPUT_COST, "ratio": self.run["orders_per_s_3_to_1"]}
        p50_alone, p50_replicated = self.run.get("orders_c1_p50_ms_1"), self.run.get("orders_c1_p50_ms_3")
        if p50_alone and p50_replicated:
            self.run["orders_c1_p50_3_to_1"] = round(p50_replicated / p50_alone, 3)
        if "catalog_failover_median_s" in self.run:
            median_s = self.run["catalog_failover_median_s"]
            self.run["checks"]["catalog_failover_median_at_most_1_5_s"] = {
                "passed": median_s <= MAX_FAILOVER_MEDIAN_S, "median_s": median_s}
        failed = sum(self.run.get(f"orders_failed_{members}", 0) for members in (1, 3))
        self.run["checks"]["no_order_failed"] = {"passed": failed == 0, "failed": failed}


def render(report: dict[str, Any]) -> str:
    run = report["run"]

    def figure(key: str, unit: str = "") -> str:
        value = run.get(key)
        return "-" if value is None else f"{value:,.3f}{unit}" if isinstance(value, float) else f"{value:,}{unit}"

    rows = [
        (f"orders/s at {run['connections']} connections", figure("orders_per_s_1"), figure("orders_per_s_3"),
         figure("orders_per_s_3_to_1")),
        ("one order at 1 connection, p50", figure("orders_c1_p50_ms_1", " ms"), figure("orders_c1_p50_ms_3", " ms"),
         figure("orders_c1_p50_3_to_1")),
        ("catalog-leader kill to the next order, median", "-", figure("catalog_failover_median_s", " s"), ""),
    ]
    for role in ("catalog", "order", "frontend"):
        alone, replicated = (run.get(f"cpu_us_per_order_{members}", {}).get(role) for members in (1, 3))
        rows.append((f"CPU per order at {run['connections']} connections: {role}",
                     "-" if alone is None else f"{alone} us", "-" if replicated is None else f"{replicated} us",
                     f"{replicated / alone:.3f}" if alone and replicated else "-"))
    checks = [(name, "passed" if check["passed"] else "FAILED", "", str({k: v for k, v in check.items()
                                                                          if k != "passed"}))
              for name, check in run["checks"].items()]
    return text_table(("Replicated catalog", "catalog alone", "3 members", "3 ÷ 1"), rows + checks)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="toystore-bench-catalog-"))).resolve()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"Catalog benchmark: {args.connections} connections, {args.seconds:g} s per point, {args.kills} kills; "
          f"state and logs in {data_dir}", flush=True)
    try:
        report = CatalogBench(data_dir, args.connections, args.seconds, args.kills,
                              say=lambda line: print(line, flush=True)).measure()
    except KeyboardInterrupt:
        print(f"interrupted; every process was stopped (state and logs kept in {data_dir})", file=sys.stderr)
        return 130
    return publish(report, render(report), args.json, data_dir, keep_data=args.data_dir is not None)


if __name__ == "__main__":
    sys.exit(main())
