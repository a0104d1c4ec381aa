"""The ordered per-peer stream of Raft messages over HTTP."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from toystore.raft.messages import Entry, Message, MessageType
from toystore.raft.transport import HttpTransport


class FakeResponse:
    def __init__(self, code: int = 200, data: Any = None) -> None:
        self.code = code
        self.headers = None
        self._data = {"accepted": True, "messages": []} if data is None else data

    def content(self) -> defer.Deferred:
        return defer.succeed(json.dumps({"data": self._data}).encode())


class HeldClient:
    """A treq-like client that holds every POST until the test answers it."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, list[dict[str, Any]], defer.Deferred]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.posts.append((url, json.loads(kwargs["data"])["messages"], d))
        return d

    def answer(self, index: int = 0, fail: bool = False, data: Any = None) -> None:
        _, _, d = self.posts.pop(index)
        if fail:
            d.errback(ConnectionRefusedError())
        else:
            d.callback(FakeResponse(data=data))


def _append(index: int, to: int = 2) -> Message:
    return Message(MessageType.APPEND, 1, to, 3, log_term=3, index=index - 1,
                   entries=(Entry(index, 3, "x"),), commit=0)


def _heartbeat(to: int = 2) -> Message:
    return Message(MessageType.HEARTBEAT, 1, to, 3)


def _transport(client: HeldClient, answers: list[Message] | None = None) -> HttpTransport:
    return HttpTransport(client, {2: "http://r2", 3: "http://r3"}, clock=Clock(), token="t",  # type: ignore[arg-type]
                         on_answer=(answers if answers is not None else []).append)


def test_one_post_in_flight_per_peer_and_later_messages_ride_together_in_order() -> None:
    client = HeldClient()
    transport = _transport(client)
    transport.send(_append(1))
    transport.send(_append(2))
    transport.send(_append(3))
    transport.send(_heartbeat())
    transport.send(_append(1, to=3))
    assert [(url, [m["index"] for m in batch]) for url, batch, _ in client.posts] == \
        [("http://r2/append_entries", [0]), ("http://r3/append_entries", [0])]
    client.answer(0)
    # Queued appends go together, then the heartbeat on its own endpoint, never overtaking.
    assert [(url, [m["index"] for m in batch]) for url, batch, _ in client.posts][-1] == \
        ("http://r2/append_entries", [1, 2])
    client.answer(-1)
    assert client.posts[-1][0] == "http://r2/commit_entries"
    client.answer(-1)
    assert transport.posts == 4 and transport.dropped == 0


def test_a_failed_post_drops_what_was_queued_behind_it() -> None:
    client = HeldClient()
    transport = _transport(client)
    transport.send(_append(1))
    transport.send(_append(2))
    transport.send(_heartbeat())
    client.answer(0, fail=True)
    assert client.posts == [] and transport.dropped == 3
    transport.send(_append(3))
    assert [m["index"] for m in client.posts[0][1]] == [2]


def test_messages_for_unknown_peers_or_past_the_queue_bound_are_dropped() -> None:
    client = HeldClient()
    transport = HttpTransport(client, {2: "http://r2"}, clock=Clock(), token=None, max_queued=2,  # type: ignore[arg-type]
                              on_answer=lambda _: None)
    transport.send(_append(1, to=9))
    with capturedLogs() as events:
        for index in range(1, 6):
            transport.send(_append(index))
    assert transport.dropped == 3  # one unknown peer; two past the bound (one was already sent)
    # Said once while the queue stays full, not once per message.
    assert [e["peer"] for e in events if e["log_level"] == LogLevel.warn] == [2]


def test_a_post_carries_at_most_its_budget_of_entry_data_and_the_rest_follows_in_order() -> None:
    client = HeldClient()
    transport = HttpTransport(client, {2: "http://r2"}, clock=Clock(), token="t",  # type: ignore[arg-type]
                              on_answer=[].append, max_entry_bytes=10)
    transport.send(_heartbeat())  # holds the stream, so that the appends queue behind it
    big = [Message(MessageType.APPEND, 1, 2, 3, log_term=3, index=i, entries=(Entry(i + 1, 3, "abcd"),))
           for i in range(5)]
    for message in big:
        transport.send(message)
    sizes = []
    while client.posts:
        client.answer(0)
        sizes += [[m["index"] for m in batch] for _, batch, _ in client.posts]
    assert sizes == [[0, 1], [2, 3], [4]]


def test_answers_in_a_response_reach_the_node_and_nothing_else_does() -> None:
    client = HeldClient()
    answers: list[Message] = []
    transport = _transport(client, answers)
    transport.send(_append(1))
    ack = Message(MessageType.APPEND_RESP, 2, 1, 3, index=1)
    forged = Message(MessageType.APPEND_RESP, 3, 1, 3, index=1)  # not from the peer we asked
    request = Message(MessageType.VOTE, 2, 1, 4)  # not an answer
    client.answer(0, data={"accepted": True, "messages": [ack.to_json(), forged.to_json(), request.to_json(),
                                                          {"type": "append_resp"}]})
    assert answers == [ack]
    transport.send(_append(2))
    client.answer(0, data={"accepted": True})  # a peer with nothing to say
    assert answers == [ack] and transport.dropped == 0
