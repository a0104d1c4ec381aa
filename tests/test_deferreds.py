"""Coalescer: calls that arrive in one reactor turn leave as one batch, on a task.Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from toystore.deferreds import Coalescer


class RecordingPeer:
    """Answers each batch it is sent when the test says so."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Any]]] = []
        self.answers: list[Deferred] = []

    def send(self, key: str, items: list[Any]) -> Deferred:
        self.batches.append((key, items))
        answer: Deferred = Deferred()
        self.answers.append(answer)
        return answer


def results(waiters: list[Deferred]) -> list[Any]:
    out: list[Any] = []
    for waiter in waiters:
        waiter.addBoth(out.append)
    return out


def test_calls_of_one_turn_leave_together_at_the_next_turn_and_get_their_own_results() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock)
    got = results([coalescer.submit("leader", n) for n in (1, 2, 3)])
    assert peer.batches == []
    clock.advance(0)
    assert peer.batches == [("leader", [1, 2, 3])]
    peer.answers[0].callback(["one", "two", "three"])
    assert got == ["one", "two", "three"]


def test_a_later_turn_starts_a_new_batch_and_keys_never_mix() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock)
    coalescer.submit("a", 1)
    coalescer.submit("b", 2)
    clock.advance(0)
    coalescer.submit("a", 3)
    clock.advance(0)
    assert peer.batches == [("a", [1]), ("b", [2]), ("a", [3])]


def test_a_group_larger_than_max_batch_leaves_as_several_batches() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock, max_batch=2)
    for n in range(5):
        coalescer.submit("k", n)
    clock.advance(0)
    assert [items for _, items in peer.batches] == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("answer", [ConnectionRefusedError("down"), ["only one"]])
def test_a_failed_batch_or_a_wrong_count_of_results_fails_every_call(answer: Any) -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock)
    got = results([coalescer.submit("k", n) for n in (1, 2)])
    clock.advance(0)
    if isinstance(answer, Exception):
        peer.answers[0].errback(answer)
    else:
        peer.answers[0].callback(answer)
    assert len(got) == 2
    expected = ConnectionRefusedError if isinstance(answer, Exception) else ValueError
    assert all(f.check(expected) for f in got)


def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock)
    first, second = coalescer.submit("k", 1), coalescer.submit("k", 2)
    got = results([first, second])
    first.cancel()
    clock.advance(0)
    peer.answers[0].callback(["a", "b"])
    assert got[0].check(CancelledError)
    assert got[1] == "b"
