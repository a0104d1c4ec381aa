"""InstallSnapshot over HTTP: a leader's snapshot goes to a follower in bounded chunks.

The core decides when a follower needs the snapshot (its next entry is compacted away)
and sends a SNAPSHOT message naming the snapshot's last entry; the transport hands it to
:class:`SnapshotSender`, which streams the snapshot's items to the follower's
``POST /install_snapshot``, a chunk per request, each carrying the message::

    {"message": {...the SNAPSHOT...}, "size": N, "header": {...}, "offset": K, "items": [...]}

:class:`SnapshotReceiver` stages each chunk durably and answers how many items it holds
(``"received"``). A chunk that does not start there is refused with 409 and that count,
and the sender goes on from it: a transfer cut by a timeout, a crash of either side or a
new leader with the same snapshot resumes instead of starting over. Only once the last
item is staged is the SNAPSHOT stepped into the follower's core, which has its host
install the snapshot (one transaction) and answers as an append would; that answer
comes back on the last chunk's response. A chunk of a term older than the follower's is
refused (409); chunks are handled one at a time, and wait while a snapshot installs.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from toystore.http import ApiError, JsonClient, fetch_json
from toystore.raft.messages import Message, MessageType, SnapshotMeta
from toystore.raft.node import RaftNode
from toystore.raft.statemachine import Snapshot, SnapshotSink, SnapshotSource
from toystore.raft.transport import answers_in

log = Logger()

ENDPOINT = "install_snapshot"
CHUNK_ITEMS = 4096         # items per chunk that a sender sends at most
MAX_CHUNK_ITEMS = 8192     # and that a receiver takes
MAX_CHUNK_BYTES = 4 << 20  # a chunk's body at most
CHUNK_ITEM_BYTES = MAX_CHUNK_BYTES // 2  # a sender's items per chunk, encoded: the rest is room to spare
CHUNK_TIMEOUT = 10.0       # seconds for one chunk to be staged
INSTALL_TIMEOUT = 300.0    # and for the last one, which installs the whole snapshot
RETRY_DELAY = 1.0          # seconds between a failed transfer to a follower and the next one


class SnapshotSender:
    """Streams a leader's snapshot to the followers its core names, one transfer per follower.

    The core asks for a follower's snapshot again each time a heartbeat finds it still
    waiting. A request for a follower whose transfer is under way is kept (the newest
    only) and started after it; after a failed one, not before :data:`RETRY_DELAY`.

    :param on_answer: takes the follower's answers to the SNAPSHOT (the node's ``receive``).
    :param on_done: told ``(peer, index, failed)`` when a transfer of the snapshot at
        ``index`` ends, or is not even started (the node's ``report_snapshot``).
    """

    def __init__(self, client: JsonClient, peers: Mapping[int, str], *, source: SnapshotSource,
                 clock: IReactorTime, token: str | None, on_answer: Callable[[Message], None],
                 on_done: Callable[[int, int, bool], None], chunk_items: int = CHUNK_ITEMS) -> None:
        self._client = client
        self._peers = dict(peers)
        self._source = source
        self._clock = clock
        self._token = token
        self._on_answer = on_answer
        self._on_done = on_done
        self._chunk_items = chunk_items
        self._sending: set[int] = set()
        self._next: dict[int, Message] = {}  # per peer, the SNAPSHOT to send once it may
        self._holding: set[int] = set()  # peers whose next transfer waits for its retry time
        self._retry_at: dict[int, float] = {}
        self.chunks_sent = 0
        self.items_sent = 0
        self.bytes_sent = 0  # of the items, encoded

    def set_peers(self, peers: Mapping[int, str]) -> None:
        """Send to ``peers`` from now on (membership changed)."""
        self._peers = dict(peers)

    def send(self, message: Message) -> None:
        if message.to not in self._peers:
            self._on_done(message.to, message.index, True)
            return
        self._next[message.to] = message
        self._start_next(message.to)

    def _start_next(self, peer: int) -> None:
        if peer in self._sending or peer in self._holding or peer not in self._next:
            return
        wait = self._retry_at.get(peer, 0.0) - self._clock.seconds()
        if wait > 0:
            self._holding.add(peer)
            self._clock.callLater(wait, self._hold_over, peer)
            return
        self._sending.add(peer)
        defer.ensureDeferred(self._transfer(self._next.pop(peer)))

    def _hold_over(self, peer: int) -> None:
        self._holding.discard(peer)
        self._start_next(peer)

    async def _transfer(self, message: Message) -> None:
        peer = message.to
        installed = False
        try:
            installed = await self._stream(message)
        except Exception as e:
            log.warn("Sending the snapshot at {index} to replica {peer} failed: {error}", index=message.index,
                     peer=peer, error=repr(e))
        finally:
            self._sending.discard(peer)
            if not installed:
                self._retry_at[peer] = self._clock.seconds() + RETRY_DELAY
            self._on_done(peer, message.index, not installed)
            self._start_next(peer)

    async def _stream(self, message: Message) -> bool:
        snapshot = self._source.latest_snapshot()
        if snapshot is None or (snapshot.meta.index, snapshot.meta.term) != (message.index, message.log_term):
            return False  # a newer snapshot replaced it: the core asks again with that one
        if message.to not in self._peers:
            return False  # no longer a member
        url = f"{self._peers[message.to]}/{ENDPOINT}"
        log.info("Sending the snapshot at {index} ({size} items) to replica {peer}", index=snapshot.meta.index,
                 size=snapshot.size, peer=message.to)
        offset = 0
        while True:
            items, encoded = _within_bytes(await self._source.read_items(snapshot, offset, self._chunk_items))
            if offset < snapshot.size and not items:
                log.error("Item {offset} of the snapshot at {index} is too large for any chunk; replica {peer} "
                          "cannot get it", offset=offset, index=snapshot.meta.index, peer=message.to)
                return False
            last = offset + len(items) >= snapshot.size
            status, body = await fetch_json(
                self._client, "POST", url, reactor=self._clock, token=self._token,
                timeout=INSTALL_TIMEOUT if last else CHUNK_TIMEOUT,
                body={"message": message.to_json(), "size": snapshot.size, "header": dict(snapshot.header),
                      "offset": offset, "items": items})
            self.chunks_sent += 1
            self.items_sent += len(items)
            self.bytes_sent += encoded
            received = _received(body)
            if status == 409 and received is not None and received != offset and received <= snapshot.size:
                offset = received  # resume where the follower is
                continue
            if status != 200 or received != offset + len(items):
                log.warn("Replica {peer} refused a snapshot chunk: {status} {body}", peer=message.to,
                         status=status, body=body)
                return False
            if last:
                for answer in answers_in(body, message.to, url):
                    self._on_answer(answer)
                return True
            offset = received


def _within_bytes(items: list[Any]) -> tuple[list[Any], int]:
    """The first of ``items`` whose encoding fits in :data:`CHUNK_ITEM_BYTES`, and its
    length: a chunk stays under the receiver's limit whatever its items hold (an escaped
    key may take twelve bytes a character)."""
    total = 0
    for count, item in enumerate(items):
        size = len(json.dumps(item)) + 2
        if total + size > CHUNK_ITEM_BYTES:
            return items[:count], total
        total += size
    return items, total


def _received(body: Mapping[str, Any]) -> int | None:
    part = body.get("data") if "data" in body else body.get("error")
    value = part.get("received") if isinstance(part, dict) else None
    return value if type(value) is int and value >= 0 else None


class SnapshotReceiver:
    """A follower's ``POST /install_snapshot``: checks a chunk, stages it, installs at the end.

    A chunk may come from a leader that is not a member here yet: a server that waits to
    be added knows no member, and a new leader may be one that this replica's log does
    not list yet. The core takes the SNAPSHOT only from the leader of the term it is at.
    """

    def __init__(self, node_id: int, sink: SnapshotSink, node: RaftNode) -> None:
        self._id = node_id
        self._sink = sink
        self._node = node
        self._lock = defer.DeferredLock()  # one chunk at a time, and none while one installs
        self._highest_term = 0  # the highest term a chunk came with: older ones are stale

    async def receive(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """One chunk; answers ``{"received": N, "messages": [...]}``, the messages once the
        snapshot is installed. :raises ApiError: 400 malformed, 409 stale or out of order, 413 too large."""
        message, snapshot, offset, items = self._parse(body)
        async with self._lock:
            fence = max(self._node.core.term, self._highest_term)
            if message.term < fence:
                raise ApiError(409, f"The chunk's term {message.term} is older than this replica's ({fence}).",
                               details={"term": fence})
            self._highest_term = max(self._highest_term, message.term)
            received = self._sink.received(snapshot)
            if offset != received:
                raise ApiError(409, f"This replica holds {received} items of that snapshot; send from there.",
                               details={"received": received})
            if items or offset == 0:
                try:
                    parsed = self._sink.parse_items(snapshot, items, offset)
                except ValueError as e:
                    raise ApiError(400, f"Not a chunk of a snapshot: {e}") from None
                await self._sink.stage(snapshot, offset, parsed)
            received = offset + len(items)
            if received < snapshot.size:
                return {"received": received, "messages": []}
            log.info("Installing the snapshot at {index} ({size} items) from replica {leader}",
                     index=snapshot.meta.index, size=snapshot.size, leader=message.sender)
            answers = await self._node.install_snapshot(message)
            # Installed, or not needed after all (the log already held it): either way the
            # staged copy is of no more use.
            await self._sink.discard()
            return {"received": received, "messages": [answer.to_json() for answer in answers]}

    def _parse(self, body: Mapping[str, Any]) -> tuple[Message, Snapshot, int, list[Any]]:
        try:
            message = Message.from_json(body.get("message"))
        except (ValueError, KeyError, TypeError) as e:
            raise ApiError(400, f"'message' is not a Raft message: {e}") from None
        if message.type is not MessageType.SNAPSHOT:
            raise ApiError(400, f"A {message.type.value} message does not belong on /{ENDPOINT}.")
        if message.to != self._id:
            raise ApiError(400, f"This is replica {self._id}, not {message.to}.")
        if message.sender == self._id:
            raise ApiError(400, f"A snapshot does not come from this replica ({self._id}) itself.")
        if not (1 <= message.index and 1 <= message.log_term <= message.term):
            raise ApiError(400, "A snapshot ends at an entry (index and term from 1, the term at most the message's).")
        size, offset, items, header = body.get("size"), body.get("offset"), body.get("items"), body.get("header")
        if type(size) is not int or size < 0:
            raise ApiError(400, "'size' must be a whole number from 0.")
        if type(offset) is not int or offset < 0:
            raise ApiError(400, "'offset' must be a whole number from 0.")
        if not isinstance(items, list):
            raise ApiError(400, "'items' must be a list.")
        if not isinstance(header, dict):
            raise ApiError(400, "'header' must be a JSON object.")
        if len(items) > MAX_CHUNK_ITEMS:
            raise ApiError(413, f"A chunk holds at most {MAX_CHUNK_ITEMS} items.")
        if offset + len(items) > size:
            raise ApiError(400, f"The chunk's items pass the snapshot's size ({size}).")
        meta = SnapshotMeta(message.index, message.log_term, message.config)
        return message, Snapshot(meta, size, header), offset, items
