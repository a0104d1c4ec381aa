"""Process-wide tuning that every role applies while it runs."""

from __future__ import annotations

import gc

from twisted.application.service import Service

# The youngest generation is collected every 50,000 net allocations instead of 700; the
# older ones after 20 and 100 collections of the one below instead of 10 and 10.
THRESHOLDS = (50_000, 20, 100)


class GarbageCollectorTuning(Service):
    """Makes Python's cyclic garbage collector cheaper while the service runs.

    A busy service allocates Deferreds, coroutines and requests by the thousand per
    second, so the collector runs often, and each of its older-generation passes walks
    every long-lived object the service made at start. Freezing those at start and
    collecting every generation less often cut about a tenth of the CPU per order
    in the benchmark. Reference counting still frees everything that is not a cycle at
    once; cycles wait a little longer. Stopping restores the collector as it was.
    """

    _saved_thresholds: tuple[int, int, int] | None = None

    def startService(self) -> None:
        super().startService()
        self._saved_thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(*THRESHOLDS)

    def stopService(self) -> None:
        super().stopService()
        if self._saved_thresholds is not None:
            gc.set_threshold(*self._saved_thresholds)
            gc.unfreeze()
            self._saved_thresholds = None
