"""The frontend's LRU cache and request coalescing, without any I/O."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from toystore.deferreds import SingleFlight
from toystore.frontend.cache import CacheStats, LruCache


def test_evicts_least_recently_used() -> None:
    cache: LruCache[int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert cache.get("a") is None
    assert cache.names() == ["c", "b"]


def test_hit_moves_to_front_and_saves_it_from_eviction() -> None:
    cache: LruCache[int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.names() == ["c", "a"]
    assert cache.get("b") is None


def test_put_of_existing_name_replaces_and_refreshes() -> None:
    cache: LruCache[int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert cache.get("a") == 10
    assert cache.get("b") is None


def test_invalidate_drops_entry_and_counts() -> None:
    cache: LruCache[int] = LruCache(4)
    cache.put("a", 1)
    cache.invalidate("a")
    cache.invalidate("never-cached")
    assert cache.get("a") is None
    assert cache.stats().invalidations == 2


def test_size_zero_stores_nothing() -> None:
    cache: LruCache[int] = LruCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None
    assert len(cache) == 0
    generation = cache.begin_fill("a")
    assert cache.end_fill("a", generation, 1) is False
    assert cache.get("a") is None


def test_counters() -> None:
    cache: LruCache[int] = LruCache(1)
    cache.get("a")
    cache.put("a", 1)
    cache.get("a")
    cache.get("a")
    cache.invalidate("a")
    assert cache.stats() == CacheStats(size=0, capacity=1, hits=2, misses=1, invalidations=1)


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError):
        LruCache(-1)


def test_fill_is_stored_when_nothing_invalidated_it() -> None:
    cache: LruCache[int] = LruCache(2)
    generation = cache.begin_fill("a")
    assert cache.end_fill("a", generation, 1) is True
    assert cache.get("a") == 1


def test_invalidation_during_fill_prevents_stale_value() -> None:
    cache: LruCache[int] = LruCache(2)
    generation = cache.begin_fill("a")
    cache.invalidate("a")
    assert cache.end_fill("a", generation, 100) is False
    assert cache.get("a") is None
    # The next fill, started after the invalidation, is stored.
    generation = cache.begin_fill("a")
    assert cache.end_fill("a", generation, 99) is True
    assert cache.get("a") == 99


def test_overlapping_fills_only_the_one_started_after_invalidation_is_stored() -> None:
    cache: LruCache[int] = LruCache(2)
    early = cache.begin_fill("a")
    cache.invalidate("a")
    late = cache.begin_fill("a")
    assert cache.end_fill("a", early, 1) is False
    assert cache.end_fill("a", late, 2) is True
    assert cache.get("a") == 2


def test_invalidating_all_drops_every_entry_and_fences_every_fill_in_flight() -> None:
    cache: LruCache[int] = LruCache(4)
    cache.put("a", 1)
    cache.put("b", 2)
    generation = cache.begin_fill("c")
    cache.invalidate_all()
    assert (cache.get("a"), cache.get("b"), len(cache)) == (None, None, 0)
    assert cache.end_fill("c", generation, 3) is False
    assert cache.get("c") is None


def test_invalidation_of_other_name_does_not_fence_fill() -> None:
    cache: LruCache[int] = LruCache(2)
    generation = cache.begin_fill("a")
    cache.invalidate("b")
    assert cache.end_fill("a", generation, 1) is True


def test_failed_fill_stores_nothing() -> None:
    cache: LruCache[int] = LruCache(2)
    generation = cache.begin_fill("a")
    assert cache.end_fill("a", generation, None) is False
    assert cache.get("a") is None


def test_single_flight_shares_one_run() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate: Deferred[int] = Deferred()
    runs = []

    async def work() -> int:
        runs.append(1)
        return await gate

    first = flight.run("a", work)
    second = flight.run("a", work)
    gate.callback(7)
    assert (first.result, second.result) == (7, 7)  # type: ignore[attr-defined]
    assert runs == [1]
    # Once finished, the next call runs the work again.
    gate = Deferred()
    again = flight.run("a", work)
    gate.callback(8)
    assert again.result == 8  # type: ignore[attr-defined]
    assert runs == [1, 1]


def test_single_flight_failure_reaches_every_caller() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate: Deferred[int] = Deferred()

    async def work() -> int:
        return await gate

    first = flight.run("a", work)
    second = flight.run("a", work)
    gate.errback(ValueError("boom"))
    for waiter in (first, second):
        failures: list = []
        waiter.addErrback(failures.append)
        assert failures[0].check(ValueError)


def test_single_flight_cancelled_caller_leaves_others_alone() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate: Deferred[int] = Deferred()

    async def work() -> int:
        return await gate

    first = flight.run("a", work)
    second = flight.run("a", work)
    first.cancel()
    failures: list = []
    first.addErrback(failures.append)
    assert failures[0].check(CancelledError)
    gate.callback(5)
    assert second.result == 5  # type: ignore[attr-defined]


def test_single_flight_runs_new_keys_together_and_joins_keys_in_flight() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gates: list[Deferred[list[Any]]] = []
    runs: list[list[str]] = []

    async def work(items: list[str]) -> list[Any]:
        runs.append(items)
        gates.append(Deferred())
        return await gates[-1]

    first = flight.run_each([("a", "A")], work)
    # "a" is in flight, and "b" comes twice: one run, of "B" and "C", for this call.
    second = flight.run_each([("b", "B"), ("a", "X"), ("c", "C"), ("b", "Y")], work)
    assert runs == [["A"], ["B", "C"]]
    gates[1].callback([2, Failure(ValueError("no c"))])
    assert not second.called  # "a" is not answered yet
    gates[0].callback([1])
    assert first.result == [1]  # type: ignore[attr-defined]
    b, a, c, b_again = second.result  # type: ignore[attr-defined]
    assert (b, a, b_again) == (2, 1, 2)
    assert c.check(ValueError)
    assert "a" not in flight and "b" not in flight


def test_single_flight_work_that_fails_whole_fails_each_of_its_items() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def work(items: list[str]) -> list[Any]:
        raise ConnectionRefusedError("down")

    outcomes = flight.run_each([("a", "A"), ("b", "B")], work).result  # type: ignore[attr-defined]
    assert all(outcome.check(ConnectionRefusedError) for outcome in outcomes)


def test_hits_and_misses_are_logged_only_when_debug_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.logger import LogLevel, capturedLogs

    from toystore import logs

    cache: LruCache[int] = LruCache(2)
    cache.put("Tux", 1)
    with capturedLogs() as quiet:
        cache.get("Tux")
        cache.get("Fox")
    monkeypatch.setitem(logs._chosen, "level", LogLevel.debug)
    with capturedLogs() as verbose:
        cache.get("Tux")
        cache.get("Fox")
    assert quiet == []
    assert [e["log_format"] for e in verbose] == ["Cache hit for {name}", "Cache miss for {name}"]
