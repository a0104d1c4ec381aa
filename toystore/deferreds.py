"""Sharing one outcome among several waiting callers, on Deferreds."""

from __future__ import annotations

from typing import Any, Callable, Coroutine, Generic, Hashable, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def fire(waiter: Deferred, result: Any) -> None:
    """Fire ``waiter`` with a result or a Failure, unless its caller gave up on it already
    (a cancelled or timed-out request)."""
    if waiter.called:
        return
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(result)


class SingleFlight(Generic[K, V]):
    """Concurrent callers asking for the same key share one run of the work.

    Each caller gets its own Deferred, so a caller that gives up (its client went away and
    Klein cancelled it) neither cancels the shared work nor disturbs the other callers.
    """

    def __init__(self) -> None:
        self._waiters: dict[K, list[Deferred[V]]] = {}

    def __contains__(self, key: K) -> bool:
        """Is a run for ``key`` in flight?"""
        return key in self._waiters

    def run(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> Deferred[V]:
        """Join the run for ``key`` in flight, or start ``work()`` as that run."""
        waiter: Deferred[V] = Deferred()
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._waiters[key] = [waiter]
        Deferred.fromCoroutine(work()).addBoth(self._finish, key)
        return waiter

    def _finish(self, result: V | Failure, key: K) -> None:
        for waiter in self._waiters.pop(key):
            fire(waiter, result)
