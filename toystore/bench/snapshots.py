"""``python -m toystore.bench.snapshots``: what Raft snapshots buy, on real local processes.

For each history size N (``--sizes``, default 10000,100000) two clusters are measured in
the same run, one with ``--snapshot-every 10000`` (snapshots on) and one with
``--snapshot-every 0`` (off: the baseline, whose log holds every order ever taken):

1. a history of N orders, posted in batches straight to the Raft leader's ``POST /order``
   by several keep-alive ``http.client`` threads (its rate is reported, not the point);
2. the leader's resident memory once the history is committed (``VmRSS``);
3. every replica's ``snapshot_index`` and ``log_entries`` (``GET /health_check``);
4. a restart of the whole order group (SIGTERM, then a fresh start): seconds until one
   order posted to the leader is answered 200;
5. the catch-up of a follower whose data folder was wiped: seconds from its start until its
   commit index is the leader's, it holds the leader's orders, and (snapshots on) it got
   the snapshot through ``POST /install_snapshot``.

Each figure comes with its conditions, and the on/off ratios are taken within one run: the
machine is shared, so absolute numbers alone mean little. Every wait is bounded, and every
process started here is stopped on the way out, whatever happened. The clusters' logs are
scanned for errors and tracebacks, which are reported with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from toystore.bench import whole_numbers
from toystore.bench.loadgen import run_python_load
from toystore.bench.runner import latest_order_number, machine_basics, order_job, replica_latest, wait_converged
from toystore.bench.stages import exposition
from toystore.catalog.store import INITIAL_TOYS
from toystore.cluster import ClusterConfig, LocalCluster
from toystore.http import MAX_BATCH_ITEMS

DEFAULT_SIZES = (10_000, 100_000)
SNAPSHOT_EVERY = 10_000  # "on"; "off" is 0
INITIAL_STOCK = 10_000_000  # never runs out, so every order is a committed order
PRODUCTS = tuple(name for name, _ in INITIAL_TOYS)
REQUEST_TIMEOUT = 30.0  # one batch: the leader answers within its order timeout (5 s), plus the catalog
STOP_TIMEOUT = 20.0  # for a replica to exit after SIGTERM before it is killed
READY_TIMEOUT = 60.0  # for a fresh cluster to elect a leader
CONVERGE_TIMEOUT = 120.0  # for the replicas to agree after the history
MAX_LOG_FINDINGS = 8  # lines kept per cluster
THROUGHPUT_CONNECTIONS = 64  # orders through the frontend, after the history
THROUGHPUT_SECONDS = 15.0  # long enough for a snapshot or two at --snapshot-every 10000


@dataclass
class Settings:
    """What to measure.

    :param sizes: history sizes (orders), each measured with snapshots on and off.
    :param connections: threads posting the history, each on its own keep-alive connection.
    :param batch: orders per ``POST /order``.
    :param time_limit: seconds for the whole run; every wait is capped by what is left.
    """

    data_dir: Path
    sizes: tuple[int, ...] = DEFAULT_SIZES
    snapshot_every: int = SNAPSHOT_EVERY
    connections: int = 16
    batch: int = 256
    db_delay: float = 0.0
    time_limit: float = 1800.0


class Budget:
    """The run's time limit: each wait asks for its own bound and gets at most what is left."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._deadline = clock() + seconds
        self.seconds = seconds

    def cap(self, seconds: float, what: str) -> float:
        left = self._deadline - self._clock()
        if left <= 0:
            raise TimeoutError(f"the run's time limit of {self.seconds:.0f} s was reached before {what} "
                               "(--time-limit raises it)")
        return min(seconds, left)


# -- pure parts ---------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m toystore.bench.snapshots",
        description="Benchmark Raft snapshots on a local cluster: for each history size, leader memory, "
                    "restart of the order group to its first committed order, and the catch-up of a wiped "
                    "follower, with --snapshot-every 10000 and with snapshots off (the baseline), in one run.")
    parser.add_argument("--sizes", type=whole_numbers, default=DEFAULT_SIZES,
                        help="history sizes in orders, comma-separated (default 10000,100000; 1000000 works "
                             "but takes a while)")
    parser.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY,
                        help="the replicas' --snapshot-every when snapshots are on (default 10000)")
    parser.add_argument("--connections", type=int, default=None,
                        help="threads posting the history (default: 8 per core, at most 32)")
    parser.add_argument("--batch", type=int, default=256,
                        help=f"orders per POST /order (1 to {MAX_BATCH_ITEMS}; default 256)")
    parser.add_argument("--db-delay", type=float, default=0.0, help="simulated seconds per database read or write")
    parser.add_argument("--time-limit", type=float, default=1800.0,
                        help="seconds for the whole run; every wait is capped by what is left (default 1800)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where clusters keep state and logs (default: a temporary folder, removed after a "
                             "clean run)")
    args = parser.parse_args(argv)
    if args.connections is None:
        args.connections = min(32, 8 * (os.cpu_count() or 1))
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if not 1 <= args.batch <= MAX_BATCH_ITEMS:
        parser.error(f"--batch must be from 1 to {MAX_BATCH_ITEMS}")
    if args.snapshot_every < 1:
        parser.error("--snapshot-every must be at least 1 (the baseline, 0, is always measured as well)")
    if args.time_limit <= 0 or args.db_delay < 0:
        parser.error("--time-limit must be positive and --db-delay not negative")
    return args


def order_batches(prefix: str, count: int, size: int) -> list[list[dict[str, Any]]]:
    """``count`` distinct orders of one toy each (the toys in turn), in batches of ``size``."""
    orders = [{"name": PRODUCTS[i % len(PRODUCTS)], "quantity": 1, "request_id": f"{prefix}-{i}"}
              for i in range(count)]
    return [orders[i:i + size] for i in range(0, count, size)]


def parse_vmrss_kib(status_text: str) -> int:
    """``VmRSS`` of a ``/proc/<pid>/status``, in KiB."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected VmRSS unit {unit!r}")
            return int(value)
    raise ValueError("no VmRSS line (is the process gone?)")


def ratio(on: float | None, off: float | None) -> float | None:
    """``on / off``, or None when either is missing or ``off`` is 0."""
    if on is None or off is None or off == 0:
        return None
    return on / off


def scan_log(lines: Sequence[str]) -> list[str]:
    """A twistd log's trouble, one finding per event: each error or critical event's first line
    (with its traceback's last line, the exception, when one follows), and each traceback
    under another event. twistd writes a traceback on tab-indented continuation lines."""
    found: list[str] = []
    in_traceback = False
    error_before = False  # the last event was an error, so a traceback after it is its own
    last = ""

    def end_traceback() -> None:
        if error_before and found:
            found[-1] += f" -> {last}"
        else:
            found.append(f"traceback: {last}")

    for line in lines:
        if in_traceback:
            if line.startswith(("\t", " ")) and line.strip():
                last = line.strip()
                continue
            end_traceback()
            in_traceback = False
        if "Traceback (most recent call last)" in line:
            in_traceback, last = True, ""
            continue
        if line.startswith(("\t", " ")):
            continue  # a continuation line of the event before
        error_before = "#error]" in line or "#critical]" in line
        if error_before:
            found.append(line.strip())
    if in_traceback:
        end_traceback()
    return found


def size_ratios(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each size measured both ways, the on/off ratios of restart, RSS and catch-up."""
    by_size: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_size.setdefault(run["orders"], {})["on" if run["snapshot_every"] else "off"] = run
    out = []
    for size, pair in by_size.items():
        if "on" not in pair or "off" not in pair:
            continue
        on, off = pair["on"], pair["off"]
        row: dict[str, Any] = {"orders": size}
        for key, figure in (("restart", "restart_first_order_s"), ("leader_rss", "leader_rss_mib"),
                            ("restarted_leader_rss", "restarted_leader_rss_mib"), ("catchup", "catchup_s"),
                            ("throughput", "orders_c64_per_s")):
            value = ratio(on.get(figure), off.get(figure))
            row[key] = round(value, 3) if value is not None else None
        out.append(row)
    return out


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table: columns padded to their widest cell, numbers right-aligned."""
    columns = list(zip(headers, *rows))
    widths = [max(len(str(cell)) for cell in column) for column in columns]
    numeric = [bool(rows) and all(str(cell)[:1].isdigit() or str(cell) == "-" for cell in column[1:])
               for column in columns]

    def line(cells: Sequence[str]) -> str:
        parts = [str(cell).rjust(width) if right else str(cell).ljust(width)
                 for cell, width, right in zip(cells, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(report: dict[str, Any]) -> str:
    """The conditions, one row per (size, snapshots) run, the ratios, the checks and what the logs said."""
    m, s = report["machine"], report["settings"]
    lines = [
        f"Machine: {m['cores']} cores, Python {m['python']}, {m['platform']}; load average at start "
        f"{', '.join(str(x) for x in m['load_average'])}.",
        f"3 Raft replicas, --db-delay {s['db_delay']}; history posted straight to the leader by {s['connections']} "
        f"keep-alive http.client threads in batches of {s['batch']} orders; snapshots on: --snapshot-every "
        f"{s['snapshot_every']}, off: 0. Then {THROUGHPUT_CONNECTIONS} connections of orders through the frontend "
        f"for {THROUGHPUT_SECONDS:.0f} s. Restart: SIGTERM to all three replicas, start again, until one order "
        f"is answered 200. Catch-up: kill -9 of a follower, its data folder deleted, started again.",
        f"Whole run {report['durations_s'].get('total', 0):.0f} s. The machine is shared: compare figures "
        "within one run (the ratios), not across runs.",
        "",
    ]
    headers = ["orders", "snapshots", "history", "orders/s", "leader RSS", "c64 orders/s", "restart→order",
               "(answering)", "RSS after restart", "wiped catch-up", "(sent)",
               "snapshot_index / log_entries (replicas 1, 2, 3)"]
    rows = []
    for run in report["runs"]:
        health = run.get("health_after_history", {})
        held = ", ".join(f"{h['snapshot_index']}/{h['log_entries']}" if h else "?"
                         for _, h in sorted(health.items(), key=lambda item: int(item[0])))
        rss = run.get("leader_rss_mib")
        restarted_rss = run.get("restarted_leader_rss_mib")
        rows.append([
            f"{run['orders']:,}",
            f"every {run['snapshot_every']}" if run["snapshot_every"] else "off",
            _seconds(run.get("history_s")),
            f"{run['history_orders_per_s']:,.0f}" if run.get("history_orders_per_s") else "-",
            f"{rss:.1f} MiB" if rss is not None else "-",
            f"{run['orders_c64_per_s']:,.0f}" if run.get("orders_c64_per_s") else "-",
            _seconds(run.get("restart_first_order_s")),
            _seconds(run.get("restart_first_answer_s")),
            f"{restarted_rss:.1f} MiB" if restarted_rss is not None else "-",
            _seconds(run.get("catchup_s")),
            f"{run['catchup_snapshot_mib']:.1f} MiB" if run.get("catchup_snapshot_mib") else "-",
            held or "-",
        ])
    lines.append(text_table(headers, rows))
    ratios = report.get("ratios", [])
    if ratios:
        lines += ["", "Snapshots on / off (below 1: on is smaller or faster):"]
        lines.append(text_table(
            ["orders", "restart→order", "leader RSS", "RSS after restart", "wiped catch-up", "c64 orders/s"],
            [[f"{r['orders']:,}", _times(r["restart"]), _times(r["leader_rss"]), _times(r["restarted_leader_rss"]),
              _times(r["catchup"]), _times(r.get("throughput"))] for r in ratios]))
    failed = [f"{run['orders']:,} orders, snapshots {'on' if run['snapshot_every'] else 'off'}: {name}: {check}"
              for run in report["runs"] for name, check in run.get("checks", {}).items() if not check.get("passed")]
    lines += ["", "Checks: all passed." if not failed and not report.get("error") else "Checks FAILED:"]
    lines += [f"  {line}" for line in failed]
    if report.get("error"):
        lines.append(f"  run stopped: {report['error']}")
    findings = [(run, run.get("log_findings", {})) for run in report["runs"]]
    if any(f.get("count") for _, f in findings):
        lines += ["", "Errors and tracebacks in the cluster logs:"]
        for run, f in findings:
            if f.get("count"):
                lines.append(f"  {run['orders']:,} orders, snapshots {'on' if run['snapshot_every'] else 'off'}: "
                             f"{f['count']} ({', '.join(f'{k} {v}' for k, v in f['by_file'].items())})")
                lines += [f"    {line[:240]}" for line in f["first"]]
    else:
        lines += ["", "Cluster logs: no errors or tracebacks."]
    return "\n".join(lines)


# -- talking to replicas ------------------------------------------------------------------


class ReplicaClient:
    """Keep-alive JSON requests to the order replicas of one cluster, with its token; one per thread."""

    def __init__(self, cluster: LocalCluster, timeout: float = REQUEST_TIMEOUT) -> None:
        self._cluster = cluster
        self._timeout = timeout
        self._connections: dict[int, http.client.HTTPConnection] = {}
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {cluster.config.token}"}

    def post(self, replica_id: int, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        """(status, body); connection failures raise OSError (the connection is dropped)."""
        connection = self._connections.get(replica_id)
        if connection is None:
            port = self._cluster.ports[f"order-{replica_id}"]
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self._timeout)
            self._connections[replica_id] = connection
        try:
            connection.request("POST", path, body=json.dumps(body).encode(), headers=self._headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as e:
            self.drop(replica_id)
            raise OSError(f"POST {path} to replica {replica_id}: {e!r}") from e
        try:
            return response.status, json.loads(payload or b"{}")
        except ValueError:
            return response.status, {"raw": payload.decode("utf-8", "replace")}

    def drop(self, replica_id: int) -> None:
        connection = self._connections.pop(replica_id, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for replica_id in list(self._connections):
            self.drop(replica_id)


def leader_hint(payload: dict[str, Any]) -> int | None:
    """The leader id a 421 names (0 or absent: it does not know)."""
    hint = payload.get("error", {}).get("leader_id") if isinstance(payload.get("error"), dict) else None
    return hint if isinstance(hint, int) and hint > 0 else None


def process_rss_mib(cluster: LocalCluster, name: str) -> float:
    """The resident memory of process ``name`` (twistd runs the service in the process it starts)."""
    popen = cluster.processes[name].popen
    if popen is None or popen.poll() is not None:
        raise RuntimeError(f"{name} is not running, so its memory cannot be read")
    return parse_vmrss_kib(Path(f"/proc/{popen.pid}/status").read_text()) / 1024


def log_findings(log_dir: Path) -> dict[str, Any]:
    by_file: dict[str, int] = {}
    first: list[str] = []
    for path in sorted(log_dir.glob("*.log")):
        found = scan_log(path.read_text(errors="replace").splitlines())
        if found:
            by_file[path.stem] = len(found)
            first += [f"{path.stem}: {line}" for line in found[:max(0, MAX_LOG_FINDINGS - len(first))]]
    return {"count": sum(by_file.values()), "by_file": by_file, "first": first}


# -- the measurements ---------------------------------------------------------------------


class SnapshotBench:
    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        self.budget = Budget(settings.time_limit)
        self.runs: list[dict[str, Any]] = []
        self.durations: dict[str, float] = {}
        self.error: str | None = None
        self._machine = machine_basics()

    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        try:
            for size in self.settings.sizes:
                for every in (self.settings.snapshot_every, 0):
                    self._measure(size, every)
        except (RuntimeError, TimeoutError, OSError) as error:
            self.error = str(error)
        finally:
            self.durations["total"] = round(time.monotonic() - began, 2)
        return self.report()

    def report(self) -> dict[str, Any]:
        s = self.settings
        checks_passed = all(check.get("passed", False) for run in self.runs for check in run["checks"].values())
        return {
            "machine": self._machine,
            "settings": {"sizes": list(s.sizes), "snapshot_every": s.snapshot_every, "connections": s.connections,
                         "batch": s.batch, "db_delay": s.db_delay, "time_limit_s": s.time_limit,
                         "initial_stock": INITIAL_STOCK},
            "runs": self.runs,
            "ratios": size_ratios(self.runs),
            "durations_s": self.durations,
            "error": self.error,
            "all_checks_passed": checks_passed and self.error is None,
            "log_errors": sum(run.get("log_findings", {}).get("count", 0) for run in self.runs),
        }

    @contextmanager
    def cluster(self, name: str, snapshot_every: int) -> Iterator[LocalCluster]:
        config = ClusterConfig(data_dir=self.settings.data_dir / name, replicas=3, db_delay=self.settings.db_delay,
                               initial_stock=INITIAL_STOCK, restock_interval=0.0, snapshot_every=snapshot_every)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(config)
        try:
            began = time.monotonic()
            try:
                cluster.start(timeout=self.budget.cap(READY_TIMEOUT, f"cluster '{name}' was ready"))
            except TimeoutError as e:
                raise TimeoutError(f"cluster '{name}' did not come up: {e}\n{_log_tails(cluster)}") from None
            self.say(f"cluster '{name}' (--snapshot-every {snapshot_every}) ready in {time.monotonic() - began:.1f} s")
            yield cluster
        finally:
            cluster.stop()

    def _measure(self, size: int, snapshot_every: int) -> None:
        label = f"n{size}-{'on' if snapshot_every else 'off'}"
        run: dict[str, Any] = {"orders": size, "snapshot_every": snapshot_every, "checks": {}}
        self.runs.append(run)
        began = time.monotonic()
        cluster: LocalCluster | None = None
        try:
            with self.cluster(label, snapshot_every) as cluster:
                self.post_history(cluster, run, label)
                self._after_history(cluster, run)
                self._throughput(cluster, run, label)
                self._restart(cluster, run, label)
                self._wiped_catchup(cluster, run)
        finally:
            self.durations[label] = round(time.monotonic() - began, 2)
            if cluster is not None and cluster.log_dir.exists():
                run["log_findings"] = log_findings(cluster.log_dir)
                if run["log_findings"]["count"]:
                    self.say(f"{label}: {run['log_findings']['count']} errors or tracebacks in the logs "
                             f"({cluster.log_dir})")

    # 1. the history -----------------------------------------------------------------

    def post_history(self, cluster: LocalCluster, run: dict[str, Any], label: str) -> None:
        s = self.settings
        # The frontend moves leadership to the highest id once it sees it; let that happen first.
        wait_converged(cluster, timeout=self.budget.cap(CONVERGE_TIMEOUT, "the fresh cluster converged"))
        leader = cluster.wait_for(cluster.leader, self.budget.cap(30, "a leader was found"), "an order leader")
        before = latest_order_number(cluster)
        size = run["orders"]
        pending: queue.Queue[list[dict[str, Any]]] = queue.Queue()
        for batch in order_batches(label, size, s.batch):
            pending.put(batch)
        timeout = self.budget.cap(60 + size / 200, f"the history of {size:,} orders was posted")
        state = {"leader": leader, "acknowledged": 0, "retried": 0, "requests": 0, "failure": None}
        lock = threading.Lock()
        began = time.monotonic()
        deadline = began + timeout

        def worker() -> None:
            client = ReplicaClient(cluster)
            try:
                while time.monotonic() < deadline and state["failure"] is None:
                    with lock:
                        if state["acknowledged"] >= size:
                            return
                    try:
                        batch = pending.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    left = self._post_batch(cluster, client, batch, state, lock, deadline)
                    if left:
                        with lock:
                            state["retried"] += len(left)
                        pending.put(left)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                state["failure"] = f"{type(e).__name__}: {e}"
            finally:
                client.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(s.connections)]
        for thread in threads:
            thread.start()
        last_report = began
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.5)
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                self.say(f"  {state['acknowledged']:,} of {size:,} orders acknowledged "
                         f"({last_report - began:.0f} s)")
        elapsed = time.monotonic() - began
        if state["failure"]:
            raise RuntimeError(f"posting the history failed: {state['failure']}")
        if state["acknowledged"] < size:
            raise TimeoutError(f"only {state['acknowledged']:,} of {size:,} orders were acknowledged within "
                               f"{timeout:.0f} s; logs in {cluster.log_dir}")
        committed = latest_order_number(cluster) - before
        run["history_s"] = round(elapsed, 3)
        run["history_orders_per_s"] = round(size / elapsed, 1)
        run["history_requests"] = state["requests"]
        run["history_orders_retried"] = state["retried"]
        run["checks"]["history_committed"] = {"passed": committed == size, "asked": size, "committed": committed}
        self.say(f"{label}: history of {size:,} orders in {elapsed:.1f} s ({size / elapsed:,.0f} orders/s, "
                 f"{state['retried']} retried); {committed:,} committed")

    def _post_batch(self, cluster: LocalCluster, client: ReplicaClient, batch: list[dict[str, Any]],
                    state: dict[str, Any], lock: threading.Lock, deadline: float) -> list[dict[str, Any]]:
        """Posts ``batch`` to the leader until every order in it is answered 200 or the deadline
        passes; returns the orders still not acknowledged (retried later, with the same keys)."""
        while batch and time.monotonic() < deadline:
            leader = state["leader"]
            try:
                status, payload = client.post(leader, "/order", {"orders": batch})
            except OSError:
                time.sleep(0.2)
                found = cluster.leader()
                with lock:
                    state["leader"] = found or state["leader"]
                continue
            with lock:
                state["requests"] += 1
            if status == 421:
                hint = leader_hint(payload)
                with lock:
                    if hint is not None and hint in cluster.replica_ids:
                        state["leader"] = hint
                time.sleep(0.05 if hint else 0.2)
                continue
            if status == 503:
                time.sleep(0.2)
                continue
            if status != 200:
                raise RuntimeError(f"replica {leader} answered a batch with {status}: {json.dumps(payload)[:300]}")
            results = payload.get("data", {}).get("results")
            if not isinstance(results, list) or len(results) != len(batch):
                raise RuntimeError(f"replica {leader} answered a batch of {len(batch)} with {json.dumps(payload)[:300]}")
            left = []
            for order, result in zip(batch, results):
                code = result.get("status")
                if code == 200:
                    continue
                if code not in (421, 503):
                    raise RuntimeError(f"order {order['request_id']} was refused: {json.dumps(result)[:300]}")
                left.append(order)
            with lock:
                state["acknowledged"] += len(batch) - len(left)
            if not left:
                return []
            batch = left
            time.sleep(0.1)
        return batch

    # 2 and 4. memory and what the replicas hold -------------------------------------

    def _after_history(self, cluster: LocalCluster, run: dict[str, Any]) -> None:
        wait_converged(cluster, timeout=self.budget.cap(CONVERGE_TIMEOUT, "the replicas agreed after the history"),
                       preference_wait=0.0)
        leader = cluster.wait_for(cluster.leader, self.budget.cap(30, "a leader was found"), "an order leader")
        run["leader_after_history"] = leader
        run["leader_rss_mib"] = round(process_rss_mib(cluster, f"order-{leader}"), 1)
        run["rss_after_history_mib"] = {str(i): round(process_rss_mib(cluster, f"order-{i}"), 1)
                                        for i in cluster.replica_ids}
        health = {}
        for i in cluster.replica_ids:
            h = cluster.health(i, 2.0)
            health[str(i)] = ({k: h[k] for k in ("role", "commit_index", "last_index", "snapshot_index", "log_entries")}
                              if h else None)
        run["health_after_history"] = health
        size, every = run["orders"], run["snapshot_every"]
        known = [h for h in health.values() if h]
        if every:
            # Compacted: a snapshot, and no more entries than since it plus the tail kept behind it,
            # with room for what one apply cycle takes in.
            bound = 2 * every + every // 10
            passed = len(known) == 3 and all(h["snapshot_index"] > 0 and h["log_entries"] <= bound for h in known)
            if size < every:
                passed = len(known) == 3
            run["checks"]["compacted"] = {"passed": passed, "max_log_entries": bound}
        else:
            passed = len(known) == 3 and all(h["snapshot_index"] == 0 and h["log_entries"] >= size for h in known)
            run["checks"]["not_compacted"] = {"passed": passed, "min_log_entries": size}
        self.say("  after the history: leader " + str(leader) + f" RSS {run['leader_rss_mib']:.1f} MiB; "
                 + "; ".join(f"replica {i}: snapshot_index {h['snapshot_index']}, log_entries {h['log_entries']}"
                             if h else f"replica {i}: no answer" for i, h in health.items()))

    # 2b. throughput with snapshots being taken --------------------------------------

    def _throughput(self, cluster: LocalCluster, run: dict[str, Any], label: str) -> None:
        leader = run["leader_after_history"]
        before = cluster.health(leader, 2.0) or {}
        result = run_python_load(order_job(cluster, PRODUCTS[0]), concurrency=THROUGHPUT_CONNECTIONS,
                                 seconds=self.budget.cap(THROUGHPUT_SECONDS, "the throughput window ended"))
        after = cluster.health(leader, 2.0) or {}
        run["orders_c64_per_s"] = round(result.ok_per_second, 1)
        run["orders_c64_p99_ms"] = round(result.p99_ms, 1)
        run["snapshots_during_throughput"] = (
            (after.get("snapshot_index", 0) > before.get("snapshot_index", 0)) if run["snapshot_every"] else None)
        self.say(f"{label}: {result.ok_per_second:,.0f} orders/s at {THROUGHPUT_CONNECTIONS} connections through "
                 f"the frontend; snapshot index {before.get('snapshot_index')} -> {after.get('snapshot_index')}")

    # 3. restart of the whole group --------------------------------------------------

    def _restart(self, cluster: LocalCluster, run: dict[str, Any], label: str) -> None:
        names = [f"order-{i}" for i in cluster.replica_ids]
        stopping = time.monotonic()
        for name in names:
            cluster.signal(name, signal.SIGTERM)
        killed = []
        for name in names:
            popen = cluster.processes[name].popen
            assert popen is not None
            try:
                popen.wait(max(0.1, stopping + STOP_TIMEOUT - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(name)
                cluster.kill(name)
        run["restart_stop_s"] = round(time.monotonic() - stopping, 3)
        run["checks"]["stopped_on_sigterm"] = {"passed": not killed, "killed_after_s": STOP_TIMEOUT,
                                               "killed": killed}
        timeout = self.budget.cap(120, "the restarted group took an order")
        started = time.monotonic()
        for name in names:
            cluster.start_process(name)
        client = ReplicaClient(cluster, timeout=10.0)
        order = {"name": PRODUCTS[0], "quantity": 1, "request_id": f"{label}-after-restart"}
        first_answer: float | None = None
        acknowledged: float | None = None
        guess = run.get("leader_after_history") or cluster.replica_ids[0]
        last: str = "no answer"
        try:
            while acknowledged is None and time.monotonic() - started < timeout:
                for replica_id in [guess] + [i for i in cluster.replica_ids if i != guess]:
                    try:
                        status, payload = client.post(replica_id, "/order", order)
                    except OSError as e:
                        last = str(e)
                        continue
                    first_answer = first_answer or time.monotonic()
                    last = f"replica {replica_id} answered {status}"
                    if status == 200:
                        acknowledged = time.monotonic()
                        guess = replica_id
                        break
                    hint = leader_hint(payload) if status == 421 else None
                    if hint in cluster.replica_ids:
                        guess = hint
                        break
                    if status not in (421, 503):
                        raise RuntimeError(f"the order after the restart was refused: {status} "
                                           f"{json.dumps(payload)[:300]}")
                if acknowledged is None:
                    time.sleep(0.02)
        finally:
            client.close()
        if acknowledged is None:
            raise TimeoutError(f"no order was acknowledged within {timeout:.0f} s of restarting the order group "
                               f"(last: {last}); logs in {cluster.log_dir}")
        run["restart_first_order_s"] = round(acknowledged - started, 3)
        run["restart_first_answer_s"] = round((first_answer or acknowledged) - started, 3)
        run["restarted_leader"] = guess
        run["restarted_leader_rss_mib"] = round(process_rss_mib(cluster, f"order-{guess}"), 1)
        self.say(f"{label}: group stopped in {run['restart_stop_s']:.2f} s; first order acknowledged "
                 f"{run['restart_first_order_s']:.2f} s after the restart (a replica answered after "
                 f"{run['restart_first_answer_s']:.2f} s); leader {guess} RSS {run['restarted_leader_rss_mib']:.1f} MiB")

    # 5. catch-up of a wiped follower ------------------------------------------------

    def _wiped_catchup(self, cluster: LocalCluster, run: dict[str, Any]) -> None:
        wait_converged(cluster, timeout=self.budget.cap(CONVERGE_TIMEOUT, "the replicas agreed after the restart"))
        leader = cluster.wait_for(cluster.leader, self.budget.cap(30, "a leader was found"), "an order leader")
        follower = min(i for i in cluster.replica_ids if i != leader)
        name = f"order-{follower}"
        cluster.kill(name)
        folder = cluster.data_dir / name
        shutil.rmtree(folder)
        latest = replica_latest(cluster, leader)
        sent_before = snapshot_bytes_sent(cluster, leader)
        timeout = self.budget.cap(60 + run["orders"] / 500, f"{name} caught up")
        started = time.monotonic()
        cluster.start_process(name)
        answered: list[float] = []  # when it first answered its health check
        seen: dict[str, Any] = {}

        def caught_up() -> float | None:
            health = cluster.health(follower, 0.5)
            if health is None:
                return None
            if not answered:
                answered.append(time.monotonic())
            seen.update(health)
            target = cluster.health(leader, 0.5)
            if target is None or health["commit_index"] < target["commit_index"]:
                return None
            if run["snapshot_every"] and run["orders"] >= run["snapshot_every"] and health["snapshot_index"] <= 0:
                return None
            return time.monotonic() if replica_latest(cluster, follower) == latest else None

        try:
            done = cluster.wait_for(caught_up, timeout, f"{name} (wiped) catching up", interval=0.02)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; it last said {json.dumps({k: seen.get(k) for k in ('commit_index', 'snapshot_index', 'log_entries')})}") from None
        final = cluster.health(follower, 2.0) or seen
        run["catchup_follower"] = follower
        run["catchup_s"] = round(done - started, 3)
        run["catchup_snapshot_mib"] = round((snapshot_bytes_sent(cluster, leader) - sent_before) / 2**20, 2)
        run["catchup_after_answering_s"] = round(done - answered[0], 3) if answered else None
        run["catchup_follower_health"] = {k: final.get(k) for k in ("commit_index", "snapshot_index", "log_entries")}
        run["catchup_follower_rss_mib"] = round(process_rss_mib(cluster, name), 1)
        if run["snapshot_every"] and run["orders"] >= run["snapshot_every"]:
            run["checks"]["catchup_by_snapshot"] = {"passed": final.get("snapshot_index", 0) > 0,
                                                    "snapshot_index": final.get("snapshot_index")}
        self.say(f"  wiped follower {follower} caught up in {run['catchup_s']:.2f} s "
                 f"(snapshot_index {final.get('snapshot_index')}, log_entries {final.get('log_entries')})")


def snapshot_bytes_sent(cluster: LocalCluster, replica_id: int) -> int:
    """The replica's ``toystore_raft_snapshot_bytes_sent_total`` (0 before it sent any)."""
    return metric_value(exposition(cluster.replica_url(replica_id)), "toystore_raft_snapshot_bytes_sent_total")


def metric_value(exposition: str, name: str) -> int:
    """An unlabelled sample of ``name`` in a Prometheus text exposition; 0 when absent."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


def _log_tails(cluster: LocalCluster, lines: int = 6) -> str:
    parts = []
    for process in cluster.processes.values():
        if process.log_path.exists():
            tail = process.log_path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {process.name}:\n" + "\n".join(tail))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="toystore-bench-snapshots-"))).resolve()
    settings = Settings(data_dir=data_dir, sizes=args.sizes, snapshot_every=args.snapshot_every,
                        connections=args.connections, batch=args.batch, db_delay=args.db_delay,
                        time_limit=args.time_limit)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"Snapshot benchmark: sizes {', '.join(f'{n:,}' for n in args.sizes)}; state and logs in {data_dir}",
          flush=True)
    bench = SnapshotBench(settings, say=lambda line: print(line, flush=True))
    try:
        report = bench.run()
    except KeyboardInterrupt:
        print(f"interrupted; every process was stopped (state and logs kept in {data_dir})", file=sys.stderr)
        return 130
    return publish(report, render(report), args.json, data_dir, keep_data=args.data_dir is not None)


def publish(report: dict[str, Any], text: str, json_path: Path | None, data_dir: Path, *, keep_data: bool) -> int:
    """Print a benchmark's report (and write its JSON), remove its data folder after a clean
    run unless asked to keep it, and return the exit status: 0 when every check passed."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(text)
    if json_path is not None:
        print(f"\nJSON: {json_path}")
    clean = report["all_checks_passed"] and not report["log_errors"]
    if report["error"]:
        print(f"\nerror: {report['error']}\n(state and logs kept in {data_dir})", file=sys.stderr)
    elif not keep_data and clean:
        shutil.rmtree(data_dir, ignore_errors=True)
    else:
        print(f"\nState and logs kept in {data_dir}")
    return 0 if report["all_checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
