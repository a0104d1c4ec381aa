"""Process-wide tuning a role applies while it runs."""

from __future__ import annotations

import gc

from toystore.runtime import GarbageCollectorTuning


def test_start_up_objects_are_frozen_while_the_service_runs_and_released_after() -> None:
    tuning = GarbageCollectorTuning()
    tuning.startService()
    try:
        assert gc.get_freeze_count() > 0
    finally:
        tuning.stopService()
    assert gc.get_freeze_count() == 0
