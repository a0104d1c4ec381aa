"""The measurements of ``./scripts/bench``, on real local processes.

Each figure comes with the conditions it was taken in (load generator, concurrency,
duration, machine) and, where a bare baseline makes sense, as a ratio to that baseline
taken in the same run: the machines this runs on are shared, so absolute numbers alone
mean little. Every process started here is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from toystore.bench.etcd import etcd_cluster, find_etcd, put_job
from toystore.bench.loadgen import Job, LoadResult, combine, find_wrk, median, run_python_load, run_wrk
from toystore.bench.restart import GROUP_WINDOW, group_restart_under_load, restart_under_load
from toystore.bench.stages import exposition, histograms, stage_figures
from toystore.cluster import ClusterConfig, LocalCluster, free_ports, http_json

CACHED_PRODUCT = "Tux"
ORDERED_PRODUCT = "Whale"
FAILOVER_PRODUCT = "Fox"
CATCHUP_PRODUCT = "Lego"
RESTART_PRODUCT = "Dolphin"
INITIAL_STOCK = 10_000_000  # never runs out, so every order is a committed order
READ_WINDOWS = 3  # cached windows, each between two baseline windows


@dataclass
class Settings:
    """What to measure and for how long.

    :param seconds: length of each load point.
    :param generator: ``wrk`` or ``python``, for reads and orders. The Python generator
        waits for every answer, so its 200s must equal the orders committed; wrk stops with
        up to one order per connection in flight, which may commit unheard
        (:func:`commit_check`).
    """

    data_dir: Path
    seconds: float = 10.0
    kills: int = 5
    catchup_orders: int = 10_000
    db_delay: float = 0.0
    get_concurrency: int = 16
    order_concurrency: tuple[int, ...] = (1, 16, 64)
    generator: str = "python"
    quick: bool = False
    replication: str = "raft"


class Bench:
    """Runs the measurements in order and collects one JSON-ready report."""

    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        self.figures: dict[str, float] = {}
        self.details: dict[str, Any] = {}
        self.checks: dict[str, Any] = {}
        self.durations: dict[str, float] = {}
        self._wrk = find_wrk() if settings.generator == "wrk" else None

    # -- the whole run ------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        with self._stage("uncached_get"), self._cluster("uncached", cache_size=0) as cluster:
            self._uncached_get(cluster)
        with self._cluster("main", cache_size=8) as cluster:
            with self._stage("cached_get_and_baseline"):
                self._cached_get_and_baseline(cluster)
            with self._stage("orders"):
                for clients in self.settings.order_concurrency:
                    self._orders(cluster, clients)
            with self._stage("failover"):
                self._failover(cluster)
            with self._stage("catchup"):
                self._catchup(cluster)
            if self.settings.replication == "primary-backup":
                with self._stage("restart_under_load"):
                    self._restart_under_load(cluster)
            else:
                with self._stage("group_restart_under_load"):
                    self._group_restart_under_load(cluster)
        with self._stage("etcd"):
            self._etcd()
        self.durations["total"] = round(time.monotonic() - began, 2)
        return self.report()

    def report(self) -> dict[str, Any]:
        s = self.settings
        return {
            "machine": machine_description(s.generator, self._wrk),
            "settings": {"seconds_per_point": s.seconds, "kills": s.kills, "catchup_orders": s.catchup_orders,
                         "db_delay": s.db_delay, "get_concurrency": s.get_concurrency,
                         "order_concurrency": list(s.order_concurrency), "quick": s.quick,
                         "read_generator": s.generator, "order_generator": s.generator,
                         "replication": s.replication},
            "figures": self.figures,
            "checks": self.checks,
            "details": self.details,
            "durations_s": self.durations,
            "all_checks_passed": all(check.get("passed", False) for check in self.checks.values()),
        }

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.durations[name] = round(time.monotonic() - began, 2)

    @contextmanager
    def _cluster(self, name: str, cache_size: int) -> Iterator[LocalCluster]:
        config = ClusterConfig(data_dir=self.settings.data_dir / name, replicas=3, cache_size=cache_size,
                               db_delay=self.settings.db_delay, initial_stock=INITIAL_STOCK,
                               restock_interval=0.0, replication=self.settings.replication)
        cluster = LocalCluster(config)
        try:
            began = time.monotonic()
            cluster.start(timeout=60)
            self.say(f"cluster '{name}' (cache size {cache_size}) ready in {time.monotonic() - began:.1f} s")
            yield cluster
        finally:
            cluster.stop()

    # -- reads --------------------------------------------------------------------------

    def _load_get(self, url: str, seconds: float | None = None) -> LoadResult:
        s = self.settings
        seconds = s.seconds if seconds is None else seconds
        if self._wrk:
            return run_wrk(self._wrk, url, seconds=seconds, concurrency=s.get_concurrency)
        return run_python_load(Job(url), concurrency=s.get_concurrency, seconds=seconds)

    def _record_get(self, name: str, result: LoadResult) -> None:
        if result.errors or result.ok == 0:
            self.checks[f"{name}_answers"] = {"passed": False, "errors": result.errors, "ok": result.ok}
        self.figures[f"{name}_rps"] = round(result.ok_per_second, 1)
        self.figures[f"{name}_p50_ms"] = round(result.p50_ms, 2)
        self.figures[f"{name}_p99_ms"] = round(result.p99_ms, 2)
        self.figures[f"{name}_generator_cores"] = round(result.generator_cores, 2)
        self.details[name] = {**asdict(result), "ok_per_second": result.ok_per_second}
        self.say(f"{name}: {result.ok_per_second:,.0f} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms "
                 f"(generator used {result.generator_cores:.2f} cores)")

    def _uncached_get(self, cluster: LocalCluster) -> None:
        url = f"{cluster.frontend_url}/products/{CACHED_PRODUCT}"
        self._record_get("uncached_get", self._load_get(url))

    def _cached_get_and_baseline(self, cluster: LocalCluster) -> None:
        """Baseline and cached in alternating windows, baseline first and last. Each cached
        window is set against the mean of the baseline windows either side of it, and the
        ratio reported is the median of those: a burst of load from elsewhere on the
        machine during one window moves one ratio, not the figure, and the spread of the
        ratios shows how noisy the machine was. The cluster idles beside the baseline so
        both see the same machine."""
        url = f"{cluster.frontend_url}/products/{CACHED_PRODUCT}"
        for _ in range(3):
            status, _ = http_json("GET", url)
            if status != 200:
                raise RuntimeError(f"warming the cache: GET {url} answered {status}")
        cached_runs, baseline_runs = self._alternate(url, bare=False)
        self._record_get("cached_get", combine(cached_runs))
        self._record_get("baseline_get", combine(baseline_runs))
        self._record_ratios("cached_get_to_baseline", window_ratios(cached_runs, baseline_runs))
        baseline = self.figures["baseline_get_rps"]
        if baseline > 0 and "uncached_get_rps" in self.figures:
            self.figures["uncached_get_to_baseline"] = round(self.figures["uncached_get_rps"] / baseline, 3)
        if self.figures["cached_get_rps"] > 0 and "uncached_get_rps" in self.figures:
            self.figures["uncached_get_to_cached"] = round(
                self.figures["uncached_get_rps"] / self.figures["cached_get_rps"], 3)
        if not self.settings.quick:  # the framework's floor: twisted.web alone
            cached_runs, bare_runs = self._alternate(url, bare=True)
            self._record_get("bare_resource_get", combine(bare_runs))
            self._record_ratios("cached_get_to_bare_resource", window_ratios(cached_runs, bare_runs))

    def _alternate(self, url: str, *, bare: bool) -> tuple[list[LoadResult], list[LoadResult]]:
        """Windows of ``url`` between windows of a baseline server, the baseline first and last."""
        window = self.settings.seconds / READ_WINDOWS
        with baseline_server(bare=bare) as baseline_url:
            baseline_url = f"{baseline_url}/products/{CACHED_PRODUCT}"
            baseline_runs = [self._load_get(baseline_url, window)]
            cached_runs = []
            for _ in range(READ_WINDOWS):
                cached_runs.append(self._load_get(url, window))
                baseline_runs.append(self._load_get(baseline_url, window))
        return cached_runs, baseline_runs

    def _record_ratios(self, name: str, ratios: list[float]) -> None:
        if ratios:
            self.figures[name] = round(median(ratios), 3)
            self.figures[f"{name}_min"] = round(min(ratios), 3)
            self.figures[f"{name}_max"] = round(max(ratios), 3)

    # -- orders -------------------------------------------------------------------------

    def _orders(self, cluster: LocalCluster, clients: int) -> None:
        before = latest_order_number(cluster)
        processes = self._stage_processes(cluster) if clients == 1 else {}
        histograms_before = {name: histograms(exposition(url)) for name, url in processes.items()}
        result = self._drive(order_job(cluster, ORDERED_PRODUCT), clients)
        self._check_committed(cluster, f"orders_c{clients}", before, result)
        self.figures[f"orders_c{clients}_per_s"] = round(result.ok_per_second, 1)
        self.figures[f"orders_c{clients}_p50_ms"] = round(result.p50_ms, 2)
        self.figures[f"orders_c{clients}_p99_ms"] = round(result.p99_ms, 2)
        self.figures[f"orders_c{clients}_generator_cores"] = round(result.generator_cores, 2)
        self.details[f"orders_c{clients}"] = {**asdict(result), "ok_per_second": result.ok_per_second}
        self.say(f"orders, {clients} clients: {result.ok_per_second:,.0f}/s, "
                 f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms")
        if processes:
            stages = stage_figures(histograms_before,
                                   {name: histograms(exposition(url)) for name, url in processes.items()})
            self.details["orders_c1_stages"] = stages
            self.say("  where a lone order's time goes (p50): " +
                     "; ".join(f"{stage} {figure['p50_ms']:.2f} ms" for stage, figure in stages.items()))

    def _drive(self, job: Job, clients: int) -> LoadResult:
        """One load point of ``job`` at ``clients`` connections, with wrk when it is there."""
        if self._wrk:
            return run_wrk(self._wrk, job.url, seconds=self.settings.seconds, concurrency=clients,
                           method=job.method, body=job.body)
        return run_python_load(job, concurrency=clients, seconds=self.settings.seconds)

    def _etcd(self) -> None:
        """etcd's puts at the order points' connections, and each order figure against them."""
        etcd = find_etcd()
        if etcd is None or self.settings.quick:
            # A quick run never runs etcd, whether or not this machine has it.
            self.details["etcd"] = "skipped: " + ("a quick run" if self.settings.quick
                                                  else "no etcd (apt-get install etcd-server)")
            self.say(f"etcd {self.details['etcd']}")
            return
        with etcd_cluster(etcd, self.settings.data_dir / "etcd") as urls:
            for clients in self.settings.order_concurrency:
                result = self._drive(put_job(urls[0]), clients)
                name = f"etcd_put_c{clients}"
                self.figures[f"{name}_per_s"] = round(result.ok_per_second, 1)
                self.figures[f"{name}_p50_ms"] = round(result.p50_ms, 2)
                self.figures[f"{name}_p99_ms"] = round(result.p99_ms, 2)
                self.details[name] = {**asdict(result), "ok_per_second": result.ok_per_second}
                orders = self.figures.get(f"orders_c{clients}_per_s")
                if orders and result.ok_per_second > 0 and result.p50_ms > 0:
                    self.figures[f"orders_c{clients}_per_s_to_etcd"] = round(orders / result.ok_per_second, 3)
                    self.figures[f"orders_c{clients}_p50_to_etcd"] = round(
                        self.figures[f"orders_c{clients}_p50_ms"] / result.p50_ms, 3)
                self.say(f"etcd puts, {clients} clients: {result.ok_per_second:,.0f}/s, p50 {result.p50_ms:.1f} ms, "
                         f"p99 {result.p99_ms:.1f} ms")

    @staticmethod
    def _stage_processes(cluster: LocalCluster) -> dict[str, str]:
        """The processes a lone order passes through, by the names :mod:`toystore.bench.stages` uses."""
        leader = cluster.wait_for(cluster.leader, 10, "an order leader")
        follower = min(i for i in cluster.replica_ids if i != leader)
        return {"frontend": cluster.frontend_url, "catalog": cluster.catalog_url,
                "leader": cluster.replica_url(leader), "follower": cluster.replica_url(follower)}

    def _check_committed(self, cluster: LocalCluster, name: str, before: int, result: LoadResult) -> None:
        """The leader committed the orders the load generator heard 200 for, and no others
        beyond those whose answer it cannot have heard."""
        acked = result.ok_total if result.ok_total is not None else result.ok
        # Orders still in flight when the generator stopped may commit for a few moments
        # more; counted here rather than in the next point's window, where they would look
        # like orders nobody sent.
        committed = settled_latest_order_number(cluster) - before
        self.checks[name] = commit_check(result, acked, committed)
        if not self.checks[name]["passed"]:
            self.say(f"CHECK FAILED {name}: {self.checks[name]}")

    # -- failover -----------------------------------------------------------------------

    def _failover(self, cluster: LocalCluster) -> None:
        samples: list[float] = []
        # A quick run does not wait for the frontend to move leadership back to the highest id.
        preference_wait = 0.0 if self.settings.quick else 12.0
        for kill in range(1, self.settings.kills + 1):
            wait_converged(cluster, preference_wait=preference_wait)
            leader = cluster.leader()
            assert leader is not None
            with OrderProber(order_job(cluster, FAILOVER_PRODUCT)) as prober:
                prober.wait_for_ack_after(time.monotonic(), timeout=30)
                killed_at = time.monotonic()
                cluster.kill(f"order-{leader}")
                acked_at = prober.wait_for_ack_after(killed_at, timeout=60)
            samples.append(acked_at - killed_at)
            self.say(f"failover {kill}/{self.settings.kills}: replica {leader} killed, "
                     f"next order acknowledged after {samples[-1]:.3f} s")
            cluster.start_process(f"order-{leader}")
        wait_converged(cluster, preference_wait=preference_wait)
        self.figures["failover_median_s"] = round(median(samples), 3)
        self.figures["failover_min_s"] = round(min(samples), 3)
        self.figures["failover_max_s"] = round(max(samples), 3)
        self.details["failover"] = {"samples_s": [round(x, 4) for x in samples],
                                    "probe_interval_s": OrderProber.interval}

    # -- catch-up -----------------------------------------------------------------------

    def _catchup(self, cluster: LocalCluster) -> None:
        """Kill a follower, commit orders without it, restart it: time until it has them all."""
        leader = cluster.leader()
        follower = next(i for i in cluster.replica_ids if i != leader)
        name = f"order-{follower}"
        cluster.kill(name)
        before = latest_order_number(cluster)
        count = self.settings.catchup_orders
        result = run_python_load(order_job(cluster, CATCHUP_PRODUCT), concurrency=64, total=count)
        self._check_committed(cluster, "catchup_orders", before, result)
        leader = cluster.leader()
        assert leader is not None
        target = cluster.health(leader)
        latest = latest_order_number(cluster)
        assert target is not None
        started_at = time.monotonic()
        cluster.start_process(name)
        answered_at = cluster.wait_for(lambda: cluster.health(follower, 0.5) and time.monotonic(),
                                       60, f"{name} answering", interval=0.01)

        def caught_up() -> float | None:
            health = cluster.health(follower, 0.5)
            if not health or health["commit_index"] < target["commit_index"]:
                return None
            return time.monotonic() if replica_latest(cluster, follower) == latest else None

        done_at = cluster.wait_for(caught_up, 120, f"{name} catching up", interval=0.01)
        self.figures["catchup_s"] = round(done_at - started_at, 3)
        self.figures["catchup_after_answering_s"] = round(done_at - answered_at, 3)
        self.figures["catchup_orders"] = result.ok_total or 0
        self.details["catchup"] = {"orders": result.ok_total, "commit_index": target["commit_index"],
                                   "startup_s": round(answered_at - started_at, 3),
                                   "orders_load": asdict(result)}
        self.say(f"catch-up of {result.ok_total} orders: {done_at - started_at:.2f} s from restart "
                 f"({done_at - answered_at:.2f} s after it first answered)")

    # -- restart under load -------------------------------------------------------------

    def _restart_under_load(self, cluster: LocalCluster) -> None:
        wait_converged(cluster, preference_wait=0.0 if self.settings.quick else 12.0)
        before = latest_order_number(cluster)
        point = restart_under_load(cluster, order_job(cluster, RESTART_PRODUCT), self.settings.seconds, self.say)
        wait_converged(cluster)
        self.figures.update(point["figures"])
        self.checks["restart_under_load"] = point["check"]
        self.details["restart_under_load"] = {**point["details"], "orders_committed":
                                              settled_latest_order_number(cluster) - before}


    def _group_restart_under_load(self, cluster: LocalCluster) -> None:
        wait_converged(cluster, preference_wait=0.0 if self.settings.quick else 12.0)
        before = latest_order_number(cluster)
        # A quick run's second-long windows are too short to judge a rate: its check is kept
        # with the details, and only a full run's counts among the checks.
        seconds = self.settings.seconds if self.settings.quick else max(GROUP_WINDOW, self.settings.seconds)
        point = group_restart_under_load(cluster, order_job(cluster, RESTART_PRODUCT), seconds, self.say)
        wait_converged(cluster)
        self.figures.update(point["figures"])
        details = {**point["details"], "orders_committed": settled_latest_order_number(cluster) - before}
        if self.settings.quick:
            details["check"] = point["check"]
        else:
            self.checks["group_restart_under_load"] = point["check"]
        self.details["group_restart_under_load"] = details


def window_ratios(cached_runs: list[LoadResult], baseline_runs: list[LoadResult]) -> list[float]:
    """Each cached window's throughput over the mean of the baseline windows either side of
    it (``baseline_runs`` has one more window, and comes first)."""
    return [cached.ok_per_second / ((before.ok_per_second + after.ok_per_second) / 2)
            for cached, before, after in zip(cached_runs, baseline_runs, baseline_runs[1:])
            if before.ok_per_second + after.ok_per_second > 0]


def commit_check(result: LoadResult, acknowledged: int, committed: int) -> dict[str, Any]:
    """Every acknowledged order committed, and at most the unheard ones besides: none for a
    generator that waits for every answer; for wrk, one per connection still in flight
    when it stopped, and any answered other than 200 (a 503 after a lost leader may still
    commit)."""
    unheard = result.unknown
    if result.ok_total is None:
        unheard += result.concurrency + result.errors
    passed = acknowledged <= committed <= acknowledged + unheard and (result.ok_total is None or result.unknown == 0)
    return {"passed": passed, "acknowledged": acknowledged, "committed": committed,
            "may_have_committed_unheard": unheard, "unknown_outcome": result.unknown, "failed": result.errors}


# -- helpers on a running cluster ----------------------------------------------------------


def order_job(cluster: LocalCluster, product: str) -> Job:
    body = json.dumps({"name": product, "quantity": 1}).encode()
    return Job(f"{cluster.frontend_url}/orders", method="POST", body=body, timeout=15.0)


def replica_latest(cluster: LocalCluster, replica_id: int) -> int | None:
    try:
        status, body = cluster.get(f"order-{replica_id}", "/latest_order_no", 1.0)
    except OSError:
        return None
    return body["data"]["latest_order_no"] if status == 200 else None


def latest_order_number(cluster: LocalCluster) -> int:
    """The leader's latest committed order number (-1 for none)."""
    def ask() -> tuple[int] | None:
        leader = cluster.leader()
        latest = replica_latest(cluster, leader) if leader is not None else None
        return (latest,) if latest is not None else None
    return cluster.wait_for(ask, 30, "the leader's latest order number")[0]


def settled_latest_order_number(cluster: LocalCluster, quiet: float = 1.0, timeout: float = 15.0) -> int:
    """The leader's latest order number once it has not moved for ``quiet`` seconds (or at
    ``timeout``): an order stops being in flight within the leader's order timeout."""
    deadline = time.monotonic() + timeout
    latest = latest_order_number(cluster)
    unchanged_since = time.monotonic()
    while time.monotonic() - unchanged_since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = latest_order_number(cluster)
        if now != latest:
            latest, unchanged_since = now, time.monotonic()
    return latest


def wait_converged(cluster: LocalCluster, timeout: float = 60.0, preference_wait: float = 12.0) -> None:
    """Every replica up with the leader's commit index and orders, and the frontend using
    that leader. The frontend moves leadership to the highest live id a few seconds after it
    returns; wait for that too (up to ``preference_wait``) so no transfer lands mid-measure."""
    highest = max(cluster.replica_ids)
    began = time.monotonic()

    def agreed() -> int | None:
        healths = {i: cluster.health(i, 0.5) for i in cluster.replica_ids}
        if not all(healths.values()):
            return None
        leaders = [i for i, h in healths.items() if h and h["role"] == "leader"]
        if len(leaders) != 1 or len({h["commit_index"] for h in healths.values() if h}) != 1:
            return None
        leader = leaders[0]
        if leader != highest and time.monotonic() - began < preference_wait:
            return None
        if len({replica_latest(cluster, i) for i in cluster.replica_ids}) != 1:
            return None
        status, body = http_json("GET", cluster.frontend_url + "/health")
        return leader if status == 200 and body["data"].get("leader_id") == leader else None

    cluster.wait_for(agreed, timeout, "the replicas to converge", interval=0.1)


class OrderProber:
    """A client placing one order every ``interval`` seconds on a keep-alive connection, in a
    thread, noting when each request went out and when its 200 came back."""

    interval = 0.01

    def __init__(self, job: Job) -> None:
        self._job = job
        self._acks: list[tuple[float, float]] = []  # (sent, acknowledged)
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "OrderProber":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self._thread.join(self._job.timeout + 5)

    def _loop(self) -> None:
        parts = urlsplit(self._job.url)
        connection: http.client.HTTPConnection | None = None
        while not self._stopping:
            if connection is None:
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self._job.timeout)
            sent = time.monotonic()
            try:
                connection.request("POST", parts.path, body=self._job.body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = None
            else:
                if response.status == 200:
                    with self._changed:
                        self._acks.append((sent, time.monotonic()))
                        self._changed.notify_all()
            time.sleep(self.interval)
        if connection is not None:
            connection.close()

    def wait_for_ack_after(self, moment: float, timeout: float) -> float:
        """When the first order sent at or after ``moment`` was acknowledged."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [acked for sent, acked in self._acks if sent >= moment]
                if found:
                    return min(found)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no order acknowledged within {timeout} s")
                self._changed.wait(remaining)


@contextmanager
def baseline_server(*, bare: bool = False) -> Iterator[str]:
    """The bare Klein app (``bare``: the plain twisted.web Resource) in its own process; its
    URL while the block runs."""
    port = free_ports(1)[0]
    process = subprocess.Popen([sys.executable, "-m", "toystore.bench.baseline", "--port", str(port)]
                               + (["--bare"] if bare else []),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": _source_root()})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_json("GET", f"{url}/products/{CACHED_PRODUCT}", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the baseline server did not start: "
                                   + (process.stderr.read().decode(errors="replace") if process.stderr else ""))
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _source_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


def machine_basics() -> dict[str, Any]:
    """The machine a bench ran on: cores, Python, platform and load average at the start."""
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def machine_description(generator: str, wrk: str | None) -> dict[str, Any]:
    wrk_version = None
    if wrk:
        done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        wrk_version = (done.stdout or done.stderr).split("\n")[0].split(" Copyright")[0].strip()
    return {
        **machine_basics(),
        "read_load_generator": wrk_version or "python (processes × keep-alive http.client threads)",
        "order_load_generator": wrk_version or "python (processes × keep-alive http.client threads)",
    }
