"""Keyed order load for integration tests and benchmarks: many keep-alive connections placing
orders, and a replica's whole history read a bounded page at a time."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from toystore.cluster import LocalCluster


def orders_on(cluster: LocalCluster, replica_id: int) -> list[dict[str, Any]]:
    """Every order the replica holds, read a bounded page at a time."""
    orders: list[dict[str, Any]] = []
    while True:
        status, body = cluster.get(f"order-{replica_id}", f"/orders_since?after={len(orders) - 1}&limit=5000",
                                   timeout=10)
        assert status == 200, body
        orders += body["data"]["orders"]
        if not body["data"]["more"]:
            return orders


@dataclass
class OrderLoad:
    """``connections`` threads placing orders through the frontend, each with its own key, on
    keep-alive connections; it records when each order was acknowledged and its number, and
    each answer that was not a success (an order the store failed)."""

    frontend_url: str
    connections: int
    acknowledged: list[tuple[float, str, int]] = field(default_factory=list)  # (when, key, number)
    failed: list[tuple[float, str, int]] = field(default_factory=list)  # (when, key, HTTP status)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _keys: Any = field(default_factory=itertools.count)

    def __enter__(self) -> "OrderLoad":
        for _ in range(self.connections):
            self._threads.append(threading.Thread(target=self._run, daemon=True))
            self._threads[-1].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        address = urlsplit(self.frontend_url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=15)
        body = json.dumps({"name": "Tux", "quantity": 1})
        while not self._stop.is_set():
            key = f"load-{next(self._keys)}"
            try:
                connection.request("POST", "/orders", body, {"Content-Type": "application/json",
                                                             "Idempotency-Key": key})
                response = connection.getresponse()
                answer = json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError):
                connection.close()
                continue
            if response.status == 200:
                self.acknowledged.append((time.monotonic(), key, answer["data"]["order_number"]))
            else:
                self.failed.append((time.monotonic(), key, response.status))

    def rate(self, start: float, end: float) -> float:
        """Orders acknowledged per second between two moments."""
        return sum(start <= when < end for when, _, _ in self.acknowledged) / (end - start)

    def longest_pause(self, start: float, end: float) -> float:
        """The longest time between two acknowledgements (or either end) within ``[start, end]``."""
        moments = sorted([start, end] + [when for when, _, _ in self.acknowledged if start <= when <= end])
        return max(b - a for a, b in zip(moments, moments[1:]))

    def per_second(self, start: float, end: float) -> list[float]:
        """Orders acknowledged in each whole second from ``start`` (a part second at the end is left out)."""
        return [self.rate(start + i, start + i + 1.0) for i in range(int(end - start))]
