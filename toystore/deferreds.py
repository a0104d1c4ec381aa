"""Sharing work among several waiting callers, on Deferreds: one outcome for concurrent
callers of the same key (:class:`SingleFlight`), and one batch request for calls that
arrive together (:class:`Coalescer`)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Coroutine, Generic, Hashable, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Item = TypeVar("Item")


def fire(waiter: Deferred, result: Any) -> None:
    """Fire ``waiter`` with a result or a Failure, unless its caller gave up on it already
    (a cancelled or timed-out request)."""
    if waiter.called:
        return
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(result)


def after_next_io(clock: IReactorTime, f: Callable[..., object], *args: object) -> None:
    """Call ``f(*args)`` once the reactor has made one more pass over its sockets, so that
    what was written just before goes out first. Each pass runs the calls that are due when
    it starts, then serves the sockets; a call scheduled by one of those waits for the next
    pass. (A ``task.Clock`` runs both at once.)"""
    clock.callLater(0, clock.callLater, 0, f, *args)


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


class Coalescer(Generic[K, Item, V]):
    """Calls for the same key leave as one batch: those that arrive in one reactor turn,
    and those that arrive while a batch to that key is out.

    Under load, many requests are parsed in one turn of the reactor; sending their calls
    to a peer one HTTP request each would cost a request's CPU on both sides per call.
    A batch leaves at the start of the next turn, so a lone call waits for nothing; while
    it is out, the calls for its key gather and leave together when it is answered, as a
    group commit gathers writes behind an fsync. The batches that reach a peer are then as
    large as the traffic allows, and its stages (catalog write, Raft round) run once per
    batch: at 64 clients this cut the CPU per order by an eighth.

    :param send: sends one batch for a key; fires with one result per item, in order.
        When it fails, every call in the batch fails with its error, and so do the calls
        waiting behind it: they were bound for the same peer, and fail over with it.
    :param max_batch: a larger group leaves as several batches, side by side.
    """

    def __init__(self, send: Callable[[K, list[Item]], Awaitable[Sequence[V]]], clock: IReactorTime,
                 max_batch: int = 256) -> None:
        self._send = send
        self._clock = clock
        self._max_batch = max_batch
        self._pending: dict[K, list[tuple[Item, Deferred[V]]]] = {}
        self._out: dict[K, int] = {}  # batches out per key

    def submit(self, key: K, item: Item) -> Deferred[V]:
        """Queue ``item`` for the next batch to ``key``; fires with its own result.

        Cancelling the returned Deferred abandons only this call's answer."""
        waiter: Deferred[V] = Deferred()
        group = self._pending.get(key)
        if group is None:
            group = self._pending[key] = []
            if key not in self._out:
                self._clock.callLater(0, self._flush, key)
        group.append((item, waiter))
        return waiter

    def _flush(self, key: K) -> None:
        group = self._pending.pop(key)
        starts = range(0, len(group), self._max_batch)
        self._out[key] = len(starts)
        for start in starts:
            Deferred.fromCoroutine(self._send_batch(key, group[start:start + self._max_batch]))

    async def _send_batch(self, key: K, batch: list[tuple[Item, Deferred[V]]]) -> None:
        try:
            results = list(await self._send(key, [item for item, _ in batch]))
            if len(results) != len(batch):
                raise ValueError(f"a batch of {len(batch)} calls got {len(results)} results")
        except Exception:
            failure = Failure()
            waiting = self._pending.pop(key, [])
            self._batch_back(key)
            for _, waiter in batch + waiting:
                fire(waiter, failure)
            return
        self._batch_back(key)
        # The batch that waited is on its way, and goes out on the reactor's next pass over
        # its sockets; the answers are worked after that, so that the peer works on the new
        # batch while this side works on the answers (at 64 clients, +8% orders/s).
        after_next_io(self._clock, self._answer, batch, results)

    def _batch_back(self, key: K) -> None:
        self._out[key] -= 1
        if not self._out[key]:
            del self._out[key]
            if key in self._pending:
                self._flush(key)

    @staticmethod
    def _answer(batch: list[tuple[Item, Deferred[V]]], results: list[V]) -> None:
        for (_, waiter), result in zip(batch, results):
            fire(waiter, result)
