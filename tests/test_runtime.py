"""Process-wide tuning a role applies while it runs."""

from __future__ import annotations

import gc

from toystore.runtime import THRESHOLDS, GarbageCollectorTuning


def test_the_collector_is_tuned_while_the_service_runs_and_restored_after() -> None:
    before = gc.get_threshold()
    tuning = GarbageCollectorTuning()
    tuning.startService()
    try:
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's way
    finally:
        tuning.stopService()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
