"""Process-wide tuning that every role applies while it runs."""

from __future__ import annotations

import gc
from typing import Any, Protocol

from twisted.application.service import MultiService, Service


class Runs(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class StartsAfterChildren(MultiService):
    """Starts ``runs`` (a replica, the frontend's leader tracker, a group's health checks)
    after its children (database, HTTP pool, listening port), and stops it before them, so
    it never calls out through a pool that is closed; children stop in reverse: the port,
    the pool, the database."""

    def __init__(self, runs: Runs) -> None:
        super().__init__()
        self.runs = runs

    def startService(self) -> None:
        super().startService()
        self.runs.start()

    def stopService(self) -> Any:
        self.runs.stop()
        return super().stopService()


class GarbageCollectorTuning(Service):
    """Keeps what the service built at start out of the cyclic garbage collector's way.

    Every pass over the oldest generation walks every long-lived object: the modules,
    classes and functions loaded at start among them, which never become garbage. Freezing
    them when the service starts shortens those passes, which otherwise show up as pauses
    in the latency tail (cached reads, same run: p99 17-22 ms instead of 33-58 ms).
    Collecting less often as well lengthened the pauses instead. Stopping unfreezes them.
    """

    def startService(self) -> None:
        super().startService()
        gc.freeze()

    def stopService(self) -> None:
        super().stopService()
        gc.unfreeze()
