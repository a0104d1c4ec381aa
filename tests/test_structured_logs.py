"""The events that matter are logged once each, with the ids that tie them across services
as structured fields (not only in the text): failovers, restocks, releases, invalidation rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from test_catalog_api import FakeFrontend, Harness
from toystore.frontend.leader import OrderLeaderTracker


def events_with(events: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    return [event for event in events if field in event]


def test_a_failover_names_both_leaders_and_why() -> None:
    tracker = OrderLeaderTracker({1: "http://r1", 2: "http://r2"}, client=None,  # type: ignore[arg-type]
                                 clock=Clock(), token=None)
    with capturedLogs() as events:
        tracker.note_leader_hint(2, None)
        tracker.mark_failed(2)
        tracker.note_leader_hint(1, None)
    failovers = events_with(events, "previous_leader_id")
    assert [(e["previous_leader_id"], e["leader_id"], e["why"]) for e in failovers] == [(2, 1, "a replica named it")]
    assert failovers[0]["log_level"] is LogLevel.info


def test_restock_and_release_are_logged_with_toys_and_request_ids(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeFrontend(), initial_stock=2)
    with capturedLogs() as events:
        assert h.call("POST", "/buy_qty", {"name": "Tux", "quantity": 2, "request_id": "r-7", "term": 3})[0] == 200
        assert h.call("POST", "/restock", {"name": "Tux"})[0] == 200
        assert h.call("POST", "/release", {"request_id": "r-7", "term": 3})[0] == 200
    restocks = events_with(events, "restocked")
    assert [(e["restocked"], e["trigger"]) for e in restocks] == [({"Tux": 100}, "requested")]
    releases = [e for e in events_with(events, "request_id") if "Released" in e["log_format"]]
    assert [(e["request_id"], e["name"], e["term"]) for e in releases] == [("r-7", "Tux", 3)]


def test_each_invalidation_round_is_one_event_per_frontend(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeFrontend(code=503))
    with capturedLogs() as events:
        assert h.call("POST", "/buy_qty", {"name": "Fox", "quantity": 1, "request_id": "r-1"})[0] == 200
    rounds = events_with(events, "delivered")
    assert sorted((e["frontend"], e["toys"], e["delivered"]) for e in rounds) == [
        ("http://front-a:8000", ["Fox"], 0), ("http://front-b:8000", ["Fox"], 0)]
    assert len([e for e in events if e["log_level"] is LogLevel.warn]) == 2
