"""Load generators: wrk when the machine has it, else a Python one that is not itself the
bottleneck (several processes, each with threads on keep-alive ``http.client`` connections).

Both answer with a :class:`LoadResult`. The Python generator also waits for every request it
sent, so its count of 200 answers is exact; wrk stops with up to one request per connection
in flight, so the order benchmark allows for that many orders committed unheard.
"""

from __future__ import annotations

import http.client
import json
import math
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit

WRK_DONE_MARKER = "TOYSTORE-WRK-DONE "

# wrk calls done() once at the end; its percentiles are in microseconds.
WRK_SCRIPT = """
wrk.method = os.getenv("TOYSTORE_WRK_METHOD") or "GET"
wrk.body = os.getenv("TOYSTORE_WRK_BODY")
if wrk.body then wrk.headers["Content-Type"] = "application/json" end
function done(summary, latency, requests)
  io.write(string.format("%s{\\"requests\\": %d, \\"duration_us\\": %d, \\"status_errors\\": %d, "
    .. "\\"socket_errors\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d}\\n", "TOYSTORE-WRK-DONE ",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class LoadResult:
    """What one load point measured.

    :param completed: answers received inside the measuring window (any status).
    :param ok: 200 answers inside the window.
    :param seconds: the window's length.
    :param p50_ms: median latency of the answers in the window.
    :param ok_total: 200 answers to every request sent, when the generator waits for them
        all (the Python one); None for wrk, which stops with requests in flight.
    :param errors: failed requests (non-200 answers and transport failures).
    :param unknown: requests whose outcome was never heard (timeouts, broken connections).
    :param generator_cpu_s: CPU seconds the generator's own processes used.
    """

    generator: str
    concurrency: int
    seconds: float
    completed: int
    ok: int
    p50_ms: float
    p99_ms: float
    errors: int = 0
    unknown: int = 0
    ok_total: int | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    generator_cpu_s: float = 0.0

    @property
    def generator_cores(self) -> float:
        """How many cores the load generator itself kept busy: the share it took from the services."""
        return self.generator_cpu_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def combine(results: Sequence[LoadResult]) -> LoadResult:
    """Several runs of one load point as one: counts and time add up; the median latency
    is the mean of the medians and p99 the worst p99 (exact figures need the raw samples,
    which wrk does not give)."""
    first = results[0]
    return LoadResult(
        generator=first.generator, concurrency=first.concurrency,
        seconds=sum(r.seconds for r in results), completed=sum(r.completed for r in results),
        ok=sum(r.ok for r in results), p50_ms=sum(r.p50_ms for r in results) / len(results),
        p99_ms=max(r.p99_ms for r in results), errors=sum(r.errors for r in results),
        unknown=sum(r.unknown for r in results),
        ok_total=None if any(r.ok_total is None for r in results) else sum(r.ok_total or 0 for r in results),
        statuses=dict(sum((Counter(r.statuses) for r in results), Counter())),
        generator_cpu_s=sum(r.generator_cpu_s for r in results),
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``values``; 0.0 for none.

    Nearest rank never invents a latency nobody saw, and p100 is the maximum.
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    """The middle value (mean of the two middle ones for an even count)."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def children_cpu_seconds() -> float:
    """User and system CPU of every child process reaped so far (wrk, generator workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------- wrk


def find_wrk() -> str | None:
    return shutil.which("wrk")


def parse_wrk_output(text: str, concurrency: int) -> LoadResult:
    """The figures our done() hook printed; raises ValueError if wrk printed none."""
    for line in text.splitlines():
        if line.startswith(WRK_DONE_MARKER):
            figures = json.loads(line[len(WRK_DONE_MARKER):])
            seconds = figures["duration_us"] / 1e6
            completed = figures["requests"]
            status_errors = figures["status_errors"]
            return LoadResult(
                generator="wrk", concurrency=concurrency, seconds=seconds, completed=completed,
                ok=completed - status_errors, p50_ms=figures["p50_us"] / 1000, p99_ms=figures["p99_us"] / 1000,
                errors=status_errors + figures["socket_errors"],
            )
    raise ValueError("wrk printed no summary:\n" + text[-2000:])


def run_wrk(wrk: str, url: str, *, seconds: float, concurrency: int, threads: int = 1,
            method: str = "GET", body: bytes | None = None) -> LoadResult:
    """Run wrk against ``url``; its threads default to one since every service is one reactor."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    env = {**os.environ, "TOYSTORE_WRK_METHOD": method}
    if body is not None:
        env["TOYSTORE_WRK_BODY"] = body.decode("utf-8")
    try:
        cpu_before = children_cpu_seconds()
        argv = [wrk, f"-t{min(threads, concurrency)}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
                "--timeout", "5s", "-s", script.name, url]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 30, check=False)
    finally:
        os.unlink(script.name)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    result = parse_wrk_output(done.stdout, concurrency)
    result.generator_cpu_s = children_cpu_seconds() - cpu_before
    return result


# ------------------------------------------------------------------------- Python


@dataclass(frozen=True)
class Job:
    """What every connection of the Python generator sends, again and again."""

    url: str
    method: str = "GET"
    body: bytes | None = None
    timeout: float = 10.0


@dataclass
class WorkerReport:
    """What one generator process sends back: its latencies inside the window and its counts."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    unknown: int = 0
    elapsed: float = 0.0
    cpu_s: float = 0.0


def _connection_loop(job: Job, deadline: float, quota: int | None, report: WorkerReport,
                     lock: threading.Lock) -> None:
    """One keep-alive connection sending requests back to back until the deadline or quota.

    The last request is waited for and counted, and the window ends with it: for a closed
    loop that gives the true rate (connections / latency) even when one latency is a large
    part of the window, where counting only answers inside a fixed window would not.
    """
    parts = urlsplit(job.url)
    headers = {"Content-Type": "application/json"} if job.body is not None else {}
    connection: http.client.HTTPConnection | None = None
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    unknown = sent = 0
    while (quota is None and time.monotonic() < deadline) or (quota is not None and sent < quota):
        if connection is None:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=job.timeout)
        began = time.monotonic()
        sent += 1
        try:
            connection.request(job.method, parts.path or "/", body=job.body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = None
            unknown += 1
            statuses["transport"] += 1
            time.sleep(0.01)  # a refused connect fails at once; do not spin
            continue
        latencies.append(time.monotonic() - began)
        statuses[str(response.status)] += 1
    if connection is not None:
        connection.close()
    with lock:
        report.latencies.extend(latencies)
        report.statuses.update(statuses)
        report.unknown += unknown


def _worker_process(job: Job, connections: int, seconds: float, quotas: list[int] | None,
                    ready: "multiprocessing.Queue[object]", go: "multiprocessing.synchronize.Event",
                    results: "multiprocessing.Queue[object]") -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    ready.put(os.getpid())
    go.wait()
    cpu_start = time.process_time()
    start = time.monotonic()
    deadline = start + seconds
    report = WorkerReport()
    lock = threading.Lock()
    threads = [threading.Thread(target=_connection_loop,
                                args=(job, deadline, None if quotas is None else quotas[i], report, lock))
               for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.elapsed = time.monotonic() - start
    report.cpu_s = time.process_time() - cpu_start
    results.put(report)


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as whole numbers allow."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_python_load(job: Job, *, concurrency: int, seconds: float | None = None, total: int | None = None,
                    processes: int | None = None) -> LoadResult:
    """``concurrency`` connections spread over several processes, sending for ``seconds`` or
    until ``total`` requests were sent; the window lasts until the last answer.

    :param processes: default: one per core (at least two), never more than connections.
    """
    if (seconds is None) == (total is None):
        raise ValueError("give seconds or total, not both")
    count = min(concurrency, processes or max(2, os.cpu_count() or 2))
    per_process = [c for c in split(concurrency, count) if c]
    quota_per_connection = split(total, concurrency) if total is not None else None
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    workers = []
    offset = 0
    for connections in per_process:
        quotas = quota_per_connection[offset:offset + connections] if quota_per_connection else None
        offset += connections
        worker = context.Process(target=_worker_process, daemon=True,
                                 args=(job, connections, seconds if seconds is not None else 0.0, quotas,
                                       ready, go, results))
        worker.start()
        workers.append(worker)
    try:
        for _ in workers:
            ready.get(timeout=60)
        go.set()
        limit = (seconds or 0) + job.timeout + 60 if total is None else None
        gathered: list[WorkerReport] = [results.get(timeout=limit) for _ in workers]
    except BaseException:  # Ctrl-C or a timeout: stop the generators now, not after their load
        for worker in workers:
            worker.kill()
        raise
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join()
    latencies = [latency for report in gathered for latency in report.latencies]
    statuses: Counter[str] = sum((report.statuses for report in gathered), Counter())
    window = max(report.elapsed for report in gathered)
    completed = sum(n for status, n in statuses.items() if status != "transport")
    ok = statuses.get("200", 0)
    return LoadResult(
        generator="python", concurrency=concurrency, seconds=window, completed=completed, ok=ok,
        p50_ms=percentile(latencies, 0.50) * 1000, p99_ms=percentile(latencies, 0.99) * 1000,
        errors=sum(statuses.values()) - ok, unknown=sum(report.unknown for report in gathered),
        ok_total=ok, statuses=dict(statuses),
        generator_cpu_s=sum(report.cpu_s for report in gathered),
    )
