"""Coalescer: calls that arrive in one reactor turn, or while a batch to their key is out,
leave as one batch; on a task.Clock."""

from __future__ import annotations

import select
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

from toystore.deferreds import Coalescer, after_next_io


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
    clock.advance(0)
    assert got == ["one", "two", "three"]


def test_keys_never_mix_and_a_call_for_an_idle_key_leaves_at_the_next_turn() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock)
    coalescer.submit("a", 1)
    clock.advance(0)
    coalescer.submit("b", 2)
    clock.advance(0)
    assert peer.batches == [("a", [1]), ("b", [2])]


def test_calls_that_arrive_while_their_keys_batch_is_out_leave_together_when_it_is_answered() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock)
    first = coalescer.submit("k", 1)
    clock.advance(0)
    waited: list[Any] = []
    coalescer.submit("k", 2).addBoth(waited.append)
    clock.advance(0)
    coalescer.submit("k", 3).addBoth(waited.append)
    clock.advance(1)
    assert peer.batches == [("k", [1])]
    # The waiting calls leave before the answer reaches its caller, so the peer has them
    # while this side works on the answer; a call made on hearing it waits for the next.
    batches_out_when_first_heard: list[int] = []
    first.addCallback(lambda _: batches_out_when_first_heard.append(len(peer.batches)))
    first.addCallback(lambda _: coalescer.submit("k", 4).addBoth(waited.append))
    peer.answers[0].callback(["one"])
    assert peer.batches == [("k", [1]), ("k", [2, 3])]
    clock.advance(0)
    assert batches_out_when_first_heard == [2]
    peer.answers[1].callback(["two", "three"])
    assert peer.batches[2:] == [("k", [4])]
    clock.advance(0)
    assert waited == ["two", "three"]


def test_a_failed_batch_fails_the_calls_waiting_behind_it() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock)
    coalescer.submit("k", 1).addErrback(lambda _: None)
    clock.advance(0)
    waited = results([coalescer.submit("k", 2)])
    peer.answers[0].errback(ConnectionRefusedError("down"))
    assert waited[0].check(ConnectionRefusedError)
    assert len(peer.batches) == 1
    coalescer.submit("k", 3)
    clock.advance(0)
    assert peer.batches[1:] == [("k", [3])]  # the key is idle again


def test_a_group_larger_than_max_batch_leaves_as_several_batches_and_the_next_waits_for_all() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock, max_batch=2)
    for n in range(5):
        coalescer.submit("k", n)
    clock.advance(0)
    assert [items for _, items in peer.batches] == [[0, 1], [2, 3], [4]]
    coalescer.submit("k", 5)
    peer.answers[0].callback(["a", "b"])
    peer.answers[2].callback(["e"])
    clock.advance(0)
    assert len(peer.batches) == 3
    peer.answers[1].callback(["c", "d"])
    assert [items for _, items in peer.batches[3:]] == [[5]]


def test_calls_submitted_together_stay_in_one_batch_and_share_one_waiter() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock, max_batch=3)
    single = results([coalescer.submit("k", 0)])
    together = results([coalescer.submit_each("k", [1, 2, 3])])
    clock.advance(0)
    assert [items for _, items in peer.batches] == [[0], [1, 2, 3]]
    peer.answers[1].callback(["b", "c", "d"])
    peer.answers[0].callback(["a"])
    clock.advance(0)
    assert (single, together) == (["a"], [["b", "c", "d"]])


def test_calls_submitted_together_beyond_max_batch_are_cut_to_what_the_receiver_takes() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock, max_batch=2)
    together = results([coalescer.submit_each("k", [1, 2, 3, 4, 5])])
    clock.advance(0)
    assert [items for _, items in peer.batches] == [[1, 2], [3, 4], [5]]
    for answer, items in zip(peer.answers, ([["a", "b"], ["c", "d"], ["e"]])):
        answer.callback(items)
    clock.advance(0)
    assert together == [["a", "b", "c", "d", "e"]]


def test_a_failed_piece_of_calls_submitted_together_fails_their_waiter_with_its_error() -> None:
    clock, peer = Clock(), RecordingPeer()
    coalescer = Coalescer(peer.send, clock, max_batch=2)
    together = results([coalescer.submit_each("k", [1, 2, 3])])
    clock.advance(0)
    peer.answers[0].callback(["a", "b"])
    peer.answers[1].errback(ConnectionRefusedError("down"))
    clock.advance(0)
    (outcome,) = together
    assert outcome.check(ConnectionRefusedError)


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
    clock.advance(0)
    assert got[0].check(CancelledError)
    assert got[1] == "b"


@pytest_twisted.ensureDeferred
async def test_after_next_io_runs_once_what_was_written_before_it_is_on_the_wire() -> None:
    from twisted.internet import reactor

    connected: Deferred = Deferred()
    on_the_wire_when_called: Deferred = Deferred()

    class Server(protocol.Protocol):
        def connectionMade(self) -> None:
            connected.callback(self)

    class Client(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            # As when a batch's answer arrives: the next batch is written, the answer worked later.
            self.transport.write(b"next batch")
            after_next_io(reactor, lambda: on_the_wire_when_called.callback(readable(server)))

    def readable(side: protocol.Protocol) -> bool:
        return bool(select.select([side.transport.getHandle()], [], [], 0)[0])

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    try:
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Client())
        server = await connected
        server.transport.write(b"answer")
        assert await on_the_wire_when_called
        client.transport.loseConnection()
        server.transport.loseConnection()
    finally:
        await port.stopListening()
