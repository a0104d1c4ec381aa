"""Raft messages over HTTP: one-way POSTs, one endpoint per kind of RPC (DESIGN.md).

A message that cannot be delivered is dropped: Raft retransmits what matters (appends
after a reject or a heartbeat, votes on the next election). The number of POSTs in
flight to one peer is bounded, so a dead peer cannot pile up requests.
"""

from __future__ import annotations

from typing import Mapping

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from toystore.http import fetch_json
from toystore.raft.messages import Message, MessageType

log = Logger()

ENDPOINTS: Mapping[MessageType, str] = {
    MessageType.APPEND: "/append_entries",
    MessageType.APPEND_RESP: "/append_entries",
    MessageType.VOTE: "/request_vote",
    MessageType.VOTE_RESP: "/request_vote",
    MessageType.PRE_VOTE: "/request_vote",
    MessageType.PRE_VOTE_RESP: "/request_vote",
    MessageType.HEARTBEAT: "/commit_entries",
    MessageType.HEARTBEAT_RESP: "/commit_entries",
    MessageType.TRUNCATE: "/truncate_log",
    MessageType.TIMEOUT_NOW: "/timeout_now",
}


class HttpTransport:
    """Sends each message to its peer's endpoint.

    :param peers: ``{id: base URL}`` of the other replicas.
    :param timeout: per POST; longer than a heartbeat, shorter than an election.
    :param max_in_flight: POSTs outstanding per peer before new messages are dropped.
    """

    def __init__(self, client: HTTPClient, peers: Mapping[int, str], *, clock: IReactorTime,
                 token: str | None, timeout: float = 0.5, max_in_flight: int = 128) -> None:
        self._client = client
        self._peers = dict(peers)
        self._clock = clock
        self._token = token
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._in_flight = {peer: 0 for peer in self._peers}
        self.dropped = 0

    def send(self, message: Message) -> None:
        peer = message.to
        url = self._peers.get(peer)
        if url is None or self._in_flight[peer] >= self._max_in_flight:
            self.dropped += 1
            return
        self._in_flight[peer] += 1
        d = defer.ensureDeferred(self._post(url + ENDPOINTS[message.type], message))
        d.addBoth(self._done, peer)

    async def _post(self, url: str, message: Message) -> None:
        status, body = await fetch_json(self._client, "POST", url, reactor=self._clock, timeout=self._timeout,
                                        token=self._token, body=message.to_json())
        if status != 200:
            log.warn("Peer refused a Raft {type} at {url}: {status} {body}",
                     type=message.type.value, url=url, status=status, body=body)

    def _done(self, result: object, peer: int) -> None:
        self._in_flight[peer] -= 1
        if isinstance(result, Failure):
            self.dropped += 1
            log.debug("Raft message to {peer} lost: {error}", peer=peer, error=result.getErrorMessage())
