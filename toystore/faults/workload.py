"""Concurrent clients against the frontend, recording every operation, and the final snapshot.

A test harness, not a service: each client is a thread doing blocking ``urllib`` requests,
which keeps the recorded times honest (a request is invoked when it is sent, completed when
its answer is read). Each thread stops by itself at its operation count or deadline.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from toystore.cluster import LocalCluster, http_json
from toystore.faults.checkers import ClusterState, ReplicaState
from toystore.faults.history import HistoryRecorder, Operation, OperationKind, outcome_for_status

DEFAULT_TOYS = ("Tux", "Whale", "Fox", "Lego")
SNAPSHOT_PAGE = 5000  # orders per /orders_since answer the final snapshot asks for


@dataclass(frozen=True)
class WorkloadOptions:
    """What the clients do.

    :param clients: concurrent client threads.
    :param toys: the toys they order and read (few, so operations contend).
    :param order_probability: share of orders; the rest are reads, half of product reads and
        half of order reads: of a number this client was given, of one another client was
        given, or of one nobody has been given yet (just past the highest acknowledged), a
        third each, so that reads race the orders they might see, as Jepsen's would.
    :param timeout: seconds a client waits for an answer. Below the frontend's 8 s failover
        budget: under faults some operations end unknown (the frontend may still place the
        order), and the checkers must judge those hard cases.
    :param retries: times an order with an unknown outcome is sent again with its key.
    :param think_time: seconds between a client's operations.
    """

    clients: int = 4
    toys: Sequence[str] = DEFAULT_TOYS
    order_probability: float = 0.5
    max_quantity: int = 3
    timeout: float = 2.0
    retries: int = 2
    think_time: float = 0.01
    seed: int = 0


class Workload:
    """Clients against ``frontend_url``; start it, fault the cluster, then :meth:`join`.

    :param frontend_url: the frontend's base URL.
    """

    def __init__(self, frontend_url: str, options: WorkloadOptions = WorkloadOptions()) -> None:
        self.frontend_url = frontend_url
        self.options = options
        self.recorder = HistoryRecorder()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_process = 0
        self._acknowledged: list[int] = []  # every client's acknowledged order numbers

    def start(self, duration: float, max_ops_per_client: int = 10_000) -> None:
        """Start the clients; each stops after ``duration`` s or ``max_ops_per_client`` ops."""
        deadline = time.monotonic() + duration
        for _ in range(self.options.clients):
            process = self._next_process
            self._next_process += 1
            rng = random.Random(self.options.seed * 1000 + process)
            thread = threading.Thread(target=self._client, args=(process, rng, deadline, max_ops_per_client),
                                      name=f"client-{process}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Ask the clients to stop after their current operation."""
        self._stop.set()

    def join(self) -> None:
        """Wait for every client (each is bounded by its deadline plus one request timeout)."""
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self._stop.clear()

    def run(self, duration: float, max_ops_per_client: int = 10_000) -> list[Operation]:
        """Start, wait for the clients, and return the history."""
        self.start(duration, max_ops_per_client)
        self.join()
        return self.history()

    def history(self) -> list[Operation]:
        with self._lock:
            return self.recorder.history()

    # -- one client ------------------------------------------------------------------

    def _client(self, process: int, rng: random.Random, deadline: float, max_ops: int) -> None:
        acknowledged: list[int] = []
        options = self.options
        for _ in range(max_ops):
            if self._stop.is_set() or time.monotonic() >= deadline:
                return
            draw = rng.random()
            if draw < options.order_probability:
                self._order(process, rng, acknowledged)
            elif draw < options.order_probability + (1 - options.order_probability) / 2:
                self._operation(process, "read_order", {"number": self._number_to_read(rng, acknowledged)})
            else:
                self._operation(process, "read_product", {"name": rng.choice(list(options.toys))})
            if options.think_time:
                time.sleep(options.think_time)

    def _number_to_read(self, rng: random.Random, mine: list[int]) -> int:
        """One this client was given, one any client was given, or one past them all."""
        with self._lock:
            everyone = list(self._acknowledged)
        pick = rng.randrange(3)
        if pick == 0 and mine:
            return rng.choice(mine)
        if pick == 1 and everyone:
            return rng.choice(everyone)
        return max(everyone, default=-1) + rng.randint(1, 3)

    def _order(self, process: int, rng: random.Random, acknowledged: list[int]) -> None:
        request = {"name": rng.choice(list(self.options.toys)), "quantity": rng.randint(1, self.options.max_quantity),
                   "key": f"p{process}-{uuid.uuid4().hex[:12]}"}
        for _ in range(1 + self.options.retries):
            outcome, response = self._operation(process, "order", request)
            if outcome == "ok" and response is not None:
                acknowledged.append(int(response["order_number"]))
                with self._lock:
                    self._acknowledged.append(int(response["order_number"]))
            if outcome != "unknown" or self._stop.is_set():
                return

    def _operation(self, process: int, kind: OperationKind, request: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        with self._lock:
            op_id = self.recorder.invoke(process, kind, request, time.monotonic())
        outcome, response = self._send(kind, request)
        with self._lock:
            self.recorder.complete(op_id, outcome, response, time.monotonic())  # type: ignore[arg-type]
        return outcome, response

    def _send(self, kind: OperationKind, request: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        try:
            if kind == "order":
                status, body = http_json(
                    "POST", f"{self.frontend_url}/orders", timeout=self.options.timeout,
                    body={"name": request["name"], "quantity": request["quantity"]},
                    headers={"Idempotency-Key": request["key"]})
            elif kind == "read_order":
                status, body = http_json("GET", f"{self.frontend_url}/orders/{request['number']}",
                                         timeout=self.options.timeout)
            else:
                status, body = http_json("GET", f"{self.frontend_url}/products/{request['name']}",
                                         timeout=self.options.timeout)
        except (OSError, ValueError):  # refused, reset, timed out, or a body that is not JSON
            return "unknown", None
        outcome = outcome_for_status(status)
        if outcome == "ok":
            data = body.get("data", {})
            return outcome, {"order_number": data["order_number"]} if kind == "order" else dict(data)
        if outcome == "fail":
            error = body.get("error", {})
            return outcome, {"status": status, "message": error.get("message", "") if isinstance(error, dict) else ""}
        return outcome, None


def figures(history: Sequence[Operation]) -> dict[str, int]:
    """What a run did: operations, acknowledged orders, unknown and failed operations."""
    outcomes = Counter(op.outcome for op in history)
    return {
        "operations": len(history),
        "orders": sum(1 for op in history if op.kind == "order"),
        "acknowledged": sum(1 for op in history if op.kind == "order" and op.outcome == "ok"),
        "unknown": outcomes["unknown"],
        "failed": outcomes["fail"],
    }


# ---------------------------------------------------------------- the final state


def _replica_view(cluster: LocalCluster, replica_id: int) -> tuple[int, int] | None:
    """(commit_index, latest_order_no) as the replica says, or None when it does not answer."""
    health = cluster.health(replica_id)
    if health is None:
        return None
    try:
        status, body = cluster.get(f"order-{replica_id}", "/latest_order_no")
    except OSError:
        return None
    return (int(health["commit_index"]), int(body["data"]["latest_order_no"])) if status == 200 else None


def _held_reservations(cluster: LocalCluster) -> int | None:
    try:
        status, body = cluster.get("catalog", "/ledger")
    except OSError:
        return None
    return int(body["data"]["reservations"].get("held", 0)) if status == 200 else None


def _catalog_commit_indexes(cluster: LocalCluster) -> set[int | None]:
    """The commit index of each catalog member (none for a catalog alone); None for one that does not answer."""
    if not cluster.catalog_replicated:
        return set()
    return {(cluster.health_of(name) or {}).get("commit_index") for name in cluster.catalog_names}


def wait_converged(cluster: LocalCluster, timeout: float = 20.0, interval: float = 0.25) -> float | None:
    """Wait until every replica has the same commit index and latest order, twice in a row,
    every catalog member the same commit index, and the catalog holds no reservation (the
    leader settles those after faults heal).

    :returns: the seconds it took, or None if it did not happen within ``timeout``.
    """
    start = time.monotonic()
    previous: object = None
    while True:
        views = [_replica_view(cluster, i) for i in cluster.replica_ids]
        held = _held_reservations(cluster)
        catalog = _catalog_commit_indexes(cluster)
        settled = None not in views and len(set(views)) == 1 and held == 0 and None not in catalog and len(catalog) <= 1
        if settled and views == previous:
            return time.monotonic() - start
        if time.monotonic() - start >= timeout:
            return None
        previous = views if settled else None
        time.sleep(interval)


def snapshot(cluster: LocalCluster, settle_timeout: float = 20.0) -> ClusterState:
    """Every replica's committed orders and commit index and the catalog's ledger, once the
    cluster has converged (or ``settle_timeout`` passed: the checkers then say what is wrong;
    0 takes it as it is).

    The replicas are read one after another, so a leader change in between (the frontend
    moving leadership to the highest live id, and the new leader committing its no-op) can
    show them apart for a moment: until ``settle_timeout``, such a reading is taken again.

    A replica that does not answer is recorded with no orders and commit index -1, so the
    convergence and lost-order checkers fail rather than overlook it.
    """
    deadline = time.monotonic() + settle_timeout
    while True:
        if settle_timeout > 0:
            wait_converged(cluster, max(0.0, deadline - time.monotonic()))
        state = _read_state(cluster)
        views = {(replica.commit_index, replica.latest_order_no) for replica in state.replicas.values()}
        if len(views) == 1 or time.monotonic() >= deadline:
            return state


def _read_orders(cluster: LocalCluster, name: str) -> tuple[int, list[dict[str, Any]]]:
    """Every order the replica holds, a bounded page at a time until it says no ``more``
    follow, so that any history size can be read.

    :returns: 200 and the orders, or the status of the first page that was not answered.
    """
    orders: list[dict[str, Any]] = []
    while True:
        after = orders[-1]["number"] if orders else -1
        status, body = cluster.get(name, f"/orders_since?after={after}&limit={SNAPSHOT_PAGE}", timeout=10)
        if status != 200:
            return status, []
        page = body["data"]["orders"]
        orders += page
        if not page or not body["data"]["more"]:
            return status, orders


def _read_state(cluster: LocalCluster) -> ClusterState:
    replicas = {}
    for i in cluster.replica_ids:
        name = f"order-{i}"
        try:
            status, orders = _read_orders(cluster, name)
            health = cluster.health(i, timeout=5)
            latest_status, latest = cluster.get(name, "/latest_order_no")
        except OSError:
            status, health = 0, None
        if status == 200 and health is not None and latest_status == 200:
            replicas[i] = ReplicaState(orders, int(health["commit_index"]), int(latest["data"]["latest_order_no"]))
        else:
            replicas[i] = ReplicaState([], -1, -1)
    status, ledger = http_json("GET", cluster.catalog_url + "/ledger", token=cluster.config.token, timeout=10)
    if status != 200:
        raise RuntimeError(f"the catalog's ledger did not answer: {status} {ledger}")
    return ClusterState(replicas, ledger["data"])
