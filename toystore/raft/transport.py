"""Raft messages over HTTP: one sequential stream of POSTs per peer (DESIGN.md endpoints).

Raft tolerates messages that overtake each other, but pays for it: an append that overtakes its predecessor
is rejected, and the leader falls back to probing that follower until the next
heartbeat. Independent POSTs over a connection pool overtake each other all the time
under load, so each peer gets one POST in flight at a time, carrying every message
queued for it meanwhile (consecutive messages for the same endpoint go together as
``{"messages": [...]}``). Under load that batches; idle, it costs one round trip.

The peer answers in the body of the POST's response, once its answers are durable
(``{"accepted": true, "messages": [...]}``, see :meth:`RaftNode.exchange`): an append
and its acknowledgement cost one HTTP exchange, not two. When waiting for them would
hold the stream back, the peer answers ``"messages": []`` and sends them in a POST of
its own.

A POST that fails drops its messages and everything queued behind it: they are stale
by the time the peer answers again, and Raft resends what matters (appends after a
reject or a heartbeat, votes on the next election).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from toystore.http import JsonClient, fetch_json
from toystore.raft.messages import ANSWERS, Message, MessageType

log = Logger()

ENDPOINTS: Mapping[MessageType, str] = {
    MessageType.APPEND: "append_entries",
    MessageType.APPEND_RESP: "append_entries",
    MessageType.VOTE: "request_vote",
    MessageType.VOTE_RESP: "request_vote",
    MessageType.PRE_VOTE: "request_vote",
    MessageType.PRE_VOTE_RESP: "request_vote",
    MessageType.HEARTBEAT: "commit_entries",
    MessageType.HEARTBEAT_RESP: "commit_entries",
    MessageType.TRUNCATE: "truncate_log",
    MessageType.TIMEOUT_NOW: "timeout_now",
}
# Which message kinds each endpoint accepts (the receiving side checks).
ACCEPTED: Mapping[str, frozenset[MessageType]] = {
    endpoint: frozenset(kind for kind, e in ENDPOINTS.items() if e == endpoint) for endpoint in set(ENDPOINTS.values())
}


class HttpTransport:
    """Sends each message to its peer's endpoint, one after another per peer.

    :param peers: ``{id: base URL}`` of the other replicas.
    :param on_answer: takes each answer a peer sent back (the node's ``receive``).
    :param timeout: per POST; longer than a heartbeat, shorter than an election.
    :param max_batch: messages per POST.
    :param max_entry_bytes: entry data per POST (a message with more still goes, alone): a
        follower far behind is sent tens of appends of 512 entries at once, and one POST of
        them all took longer to work than ``timeout``, failed and was sent again.
    :param max_queued: messages waiting per peer before new ones are dropped (a peer
        that stopped answering).
    :param snapshots: takes each SNAPSHOT, whose data travels apart
        (:class:`~toystore.raft.snapshots.SnapshotSender`); None: they are dropped.
    """

    def __init__(self, client: JsonClient, peers: Mapping[int, str], *, clock: IReactorTime,
                 token: str | None, on_answer: Callable[[Message], None], timeout: float = 0.5,
                 max_batch: int = 256, max_entry_bytes: int = 1 << 20, max_queued: int = 4096,
                 snapshots: Callable[[Message], None] | None = None) -> None:
        self._client = client
        self._on_answer = on_answer
        self._peers = dict(peers)
        self._clock = clock
        self._token = token
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_entry_bytes = max_entry_bytes
        self._max_queued = max_queued
        self._snapshots = snapshots
        self._queues: dict[int, deque[Message]] = {peer: deque() for peer in self._peers}
        self._sending: set[int] = set()
        self._overflowing: set[int] = set()  # peers whose full queue is dropping messages
        self.dropped = 0
        self.posts = 0

    def set_peers(self, peers: Mapping[int, str]) -> None:
        """Route to ``peers`` from now on (membership changed); messages queued for a peer
        no longer among them are dropped."""
        self._peers = dict(peers)
        for peer in self._peers:
            self._queues.setdefault(peer, deque())
        for peer in [peer for peer in self._queues if peer not in self._peers]:
            self.dropped += len(self._queues.pop(peer))

    def send(self, message: Message) -> None:
        if message.type is MessageType.SNAPSHOT and self._snapshots is not None:
            self._snapshots(message)
            return
        queue = self._queues.get(message.to)
        if queue is None or message.type is MessageType.SNAPSHOT:
            self.dropped += 1
            return
        if len(queue) >= self._max_queued:
            self.dropped += 1
            if message.to not in self._overflowing:
                self._overflowing.add(message.to)
                log.warn("Raft messages to {peer} are dropped: {queued} wait for a POST to it", peer=message.to,
                         queued=len(queue))
            return
        self._overflowing.discard(message.to)
        queue.append(message)
        if message.to not in self._sending:
            self._sending.add(message.to)
            defer.ensureDeferred(self._drain(message.to))

    async def _drain(self, peer: int) -> None:
        queue = self._queues[peer]
        try:
            while queue and peer in self._peers:
                endpoint = ENDPOINTS[queue[0].type]
                batch = [queue.popleft()]
                entry_bytes = _entry_bytes(batch[0])
                while queue and len(batch) < self._max_batch and ENDPOINTS[queue[0].type] == endpoint:
                    entry_bytes += _entry_bytes(queue[0])
                    if entry_bytes > self._max_entry_bytes:
                        break
                    batch.append(queue.popleft())
                try:
                    await self._post(peer, f"{self._peers[peer]}/{endpoint}", batch)
                except Exception as e:
                    self.dropped += len(batch) + len(queue)
                    queue.clear()
                    log.debug("Raft messages to {peer} lost: {error}", peer=peer, error=repr(e))
        finally:
            self._sending.discard(peer)

    async def _post(self, peer: int, url: str, batch: list[Message]) -> None:
        self.posts += 1
        status, body = await fetch_json(self._client, "POST", url, reactor=self._clock, timeout=self._timeout,
                                        token=self._token, body={"messages": [m.to_json() for m in batch]})
        if status != 200:
            log.warn("Peer refused Raft messages at {url}: {status} {body}", url=url, status=status, body=body)
            return
        for answer in answers_in(body, peer, url):
            self._on_answer(answer)


def _entry_bytes(message: Message) -> int:
    return sum(len(entry.data) for entry in message.entries)


def answers_in(body: Mapping[str, Any], peer: int, url: str) -> list[Message]:
    """The answers in a peer's response; a malformed one is dropped (Raft copes with a lost message)."""
    data = body.get("data")
    items = data.get("messages", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        log.warn("Peer at {url} answered Raft messages without a message list", url=url)
        return []
    answers = []
    for item in items:
        try:
            answer = Message.from_json(item)
        except (ValueError, KeyError, TypeError) as e:
            log.warn("Peer at {url} answered with a malformed Raft message: {error}", url=url, error=e)
            continue
        if answer.type not in ANSWERS or answer.sender != peer:
            log.warn("Peer at {url} answered with a {type} message from {sender}", url=url, type=answer.type.value,
                     sender=answer.sender)
            continue
        answers.append(answer)
    return answers
