"""Runs the experiment's clusters and loads: a supervisor like :mod:`toystore.cluster`, so
plain synchronous Python (processes, threads, short HTTP calls), not a reactor.

For each setting (replication mode, db-delay, cache on or off) it starts one local
cluster and runs ``python -m client`` once per p on it; for each mode it starts another
cluster and runs a timed loop of its own around a ``kill -9`` of the order leader, since
the client reports percentiles only, not each request's timing.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from client.session import TOYS
from toystore.cluster import ClusterConfig, LocalCluster, http_json

PS = (0.0, 0.2, 0.4, 0.6, 0.8)
QUICK_PS = (0.0, 0.8)
CACHE_SIZE = 8


@dataclass(frozen=True)
class Plan:
    """What to run.

    :param kill_before: seconds of load before the leader kill; ``kill_after`` after it.
    """

    modes: tuple[str, ...]
    db_delays: tuple[float, ...]
    ps: tuple[float, ...] = PS
    caches: tuple[bool, ...] = (True, False)
    clients: int = 5
    iterations: int = 20
    seed: int = 7
    kill_before: float = 3.0
    kill_after: float = 5.0

    def settings(self) -> list[tuple[str, float, bool]]:
        return [(mode, delay, cache) for mode in self.modes for delay in self.db_delays for cache in self.caches]


@dataclass
class Results:
    """Everything measured; ``results.json`` is :meth:`as_dict`."""

    load_runs: list[dict[str, Any]] = field(default_factory=list)
    kill_runs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"load_runs": self.load_runs, "kill_runs": self.kill_runs}


def run_name(mode: str, db_delay: float, cache: bool, p: float | None = None) -> str:
    name = f"{mode}-delay{db_delay:g}-cache-{'on' if cache else 'off'}"
    return name if p is None else f"{name}-p{p:.1f}"


class Runner:
    """Runs a :class:`Plan`, writing the client's JSON of every run into ``raw_dir``.

    :param say: progress lines (stderr by default).
    """

    def __init__(self, plan: Plan, raw_dir: Path, say: Callable[[str], None]) -> None:
        self.plan = plan
        self.raw_dir = raw_dir
        self.say = say

    def run(self) -> Results:
        results = Results()
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        for mode, db_delay, cache in self.plan.settings():
            config = dict(replication=mode, db_delay=db_delay, cache_size=CACHE_SIZE if cache else 0)
            with self._cluster(run_name(mode, db_delay, cache), config) as cluster:
                for p in self.plan.ps:
                    self.say(f"load: {run_name(mode, db_delay, cache, p)}")
                    summary = self._load(cluster, run_name(mode, db_delay, cache, p), p)
                    results.load_runs.append({"mode": mode, "db_delay": db_delay, "cache": cache, "p": p,
                                              "summary": summary})
        for mode in self.plan.modes:
            self.say(f"leader kill: {mode}")
            with self._cluster(f"{mode}-kill", dict(replication=mode, cache_size=CACHE_SIZE)) as cluster:
                kill = leader_kill_run(cluster, self.plan.clients, self.plan.kill_before, self.plan.kill_after,
                                       random.Random(self.plan.seed))
            results.kill_runs.append({"mode": mode, **kill})
            (self.raw_dir / f"{mode}-kill.json").write_text(json.dumps(results.kill_runs[-1], indent=1) + "\n")
        return results

    def _cluster(self, name: str, overrides: dict[str, Any]) -> "_ClusterRun":
        return _ClusterRun(name, overrides, self.say)

    def _load(self, cluster: LocalCluster, name: str, p: float) -> dict[str, Any]:
        """One client run; its JSON (also kept in ``raw/``) is the result, even when the
        client exits 1 on an integrity failure (the report shows the count)."""
        json_path = self.raw_dir / f"{name}.json"
        argv = [sys.executable, "-m", "client", "--frontend", cluster.frontend_url,
                "--clients", str(self.plan.clients), "--iterations", str(self.plan.iterations),
                "-p", str(p), "--seed", str(self.plan.seed), "--json", str(json_path), "--no-progress"]
        done = subprocess.run(argv, env=cluster.environment(), capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[2])
        if not json_path.exists():
            raise RuntimeError(f"the load client wrote no JSON (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        summary: dict[str, Any] = json.loads(json_path.read_text())
        return summary


class _ClusterRun:
    """A local cluster in a temporary folder for the length of a ``with``; the folder (with
    its logs) is kept and named when something fails."""

    def __init__(self, name: str, overrides: dict[str, Any], say: Callable[[str], None]) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"toystore-experiment-{name}-"))
        self.cluster = LocalCluster(ClusterConfig(data_dir=self.data_dir, **overrides))
        self.say = say

    def __enter__(self) -> LocalCluster:
        try:
            self.cluster.start()
        except BaseException:
            self.cluster.stop()
            self.say(f"the cluster did not start; its logs are in {self.cluster.log_dir}")
            raise
        return self.cluster

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.cluster.stop()
        if kind is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        else:
            self.say(f"kept the cluster's logs in {self.cluster.log_dir}")


def timed_session(frontend: str, rng: random.Random, stop: threading.Event, started: float,
                  samples: list[dict[str, Any]], order_probability: float = 0.5, timeout: float = 10.0) -> None:
    """Query a random toy and order one with ``order_probability`` until ``stop``; every
    request appended to ``samples`` with its start time (since ``started``), latency and
    status (None: no answer). One attempt each, with an idempotency key as a client would."""

    def timed(operation: str, method: str, path: str, **kwargs: Any) -> int | None:
        begin = time.monotonic()
        try:
            status: int | None = http_json(method, frontend + path, timeout=timeout, **kwargs)[0]
        except OSError:
            status = None
        samples.append({"t": round(begin - started, 4), "operation": operation,
                        "latency_s": round(time.monotonic() - begin, 5), "status": status})
        return status

    while not stop.is_set():
        name = rng.choice(TOYS)
        if timed("query", "GET", f"/products/{name}") == 200 and rng.random() < order_probability:
            timed("order", "POST", "/orders", body={"name": name, "quantity": 1},
                  headers={"Idempotency-Key": uuid.uuid4().hex})


def leader_kill_run(cluster: LocalCluster, clients: int, before: float, after: float,
                    rng: random.Random) -> dict[str, Any]:
    """``clients`` timed sessions; after ``before`` seconds the leader gets ``kill -9``; they
    go on ``after`` seconds more. Returns ``{"kill_at", "killed", "new_leader", "samples"}``."""
    stop = threading.Event()
    sample_lists: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    started = time.monotonic()
    threads = [threading.Thread(target=timed_session,
                                args=(cluster.frontend_url, random.Random(rng.random()), stop, started, samples),
                                daemon=True)
               for samples in sample_lists]
    for thread in threads:
        thread.start()
    try:
        time.sleep(before)
        killed = cluster.leader()
        if killed is None:
            raise RuntimeError("no order leader to kill")
        kill_at = time.monotonic() - started
        cluster.kill(f"order-{killed}")
        time.sleep(after)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    new_leader = cluster.leader()
    samples = sorted((s for samples in sample_lists for s in samples), key=lambda s: s["t"])
    return {"kill_at": round(kill_at, 4), "killed": killed, "new_leader": new_leader, "samples": samples}
