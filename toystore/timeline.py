"""Stages of one request, timed from its arrival: what ``toystore_order_stage_seconds`` shows.

A service starts a timeline per request it wants to follow (the order leader, one per batch
of orders it receives; the frontend, one per order); each stage the request reaches tells
the listeners how many seconds after its arrival it got there. With no listener (no metrics
wired, as in most tests) nothing is timed.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime

Reached = Callable[[str], None]


class StageTimer:
    """:param clock: stages are timed on it (a ``task.Clock`` in tests)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.listeners: list[Callable[[str, float], None]] = []  # told (stage, seconds since arrival)

    def start(self) -> Reached | None:
        """A request arrives now: what to call with each stage it reaches, or None when no
        one listens."""
        if not self.listeners:
            return None
        clock, listeners = self._clock, self.listeners
        arrived = clock.seconds()

        def reached(stage: str) -> None:
            elapsed = clock.seconds() - arrived
            for listener in listeners:
                listener(stage, elapsed)

        return reached
