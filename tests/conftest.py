"""Shared fixtures. Unit tests need no reactor; integration tests (marked) start real processes."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from twisted.logger import ILogObserver, globalLogPublisher


@pytest.fixture
def logged_failures() -> Iterator[list[dict[str, Any]]]:
    """Every logged event that carries a failure, while the test runs."""
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    observer: ILogObserver = observe
    globalLogPublisher.addObserver(observer)
    yield failures
    globalLogPublisher.removeObserver(observer)

