"""What every process that hosts a Raft member does alike, whatever it replicates.

The order replicas and the catalog members are both hosts: each wires a
:class:`~toystore.raft.node.RaftNode` to HTTP (the transport, snapshot transfer and the
peer routes), knows where the other members are reached, and answers clients that did not
reach the leader with its hint. :class:`RaftHost` holds that part; the host adds its state
machine and its own routes.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from toystore.http import ApiError, JsonClient
from toystore.raft.core import NotLeader, RaftCore
from toystore.raft.members import CATCH_UP_TIMEOUT, change_members, members_answer
from toystore.raft.membership import Configuration
from toystore.raft.messages import Message, Role
from toystore.raft.node import ProposalDropped, RaftNode, Timing
from toystore.raft.snapshots import SnapshotReceiver, SnapshotSender
from toystore.raft.sqlite_log import RaftState
from toystore.raft.statemachine import SnapshotSink, SnapshotSource, StateMachine, Storage
from toystore.raft.transport import ACCEPTED, HttpTransport

MAX_MESSAGES_PER_POST = 1024


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, headers={"Retry-After": "1"})


def not_leader_error(leader_id: int | None, addresses: Mapping[int, str], what: str) -> ApiError:
    """421 with the leader's id and URL, so the client can go there at once.

    :param what: the sentence's tail, e.g. "send orders to the leader".
    """
    details: dict[str, Any] = {"leader_id": leader_id or 0}
    if leader_id in addresses:
        details["leader_url"] = addresses[leader_id]
    return ApiError(421, f"This replica is not the leader; {what}.", details=details)


class RaftHost:
    """The HTTP side of one Raft member.

    :param named_at_start: ``{id: URL}`` of the members named at start (the environment):
        where to reach them until the configuration in force says otherwise.
    :param redirect: the tail of a 421's sentence ("send orders to the leader").
    :param read_timeout: seconds a ReadIndex round may take before a read is 503.
    """

    def __init__(self, node_id: int, named_at_start: Mapping[int, str], *, clock: IReactorTime, redirect: str,
                 read_timeout: float, catch_up_timeout: float = CATCH_UP_TIMEOUT) -> None:
        self.id = node_id
        self._named_at_start = dict(named_at_start)
        self.addresses = dict(named_at_start)  # where each member is reached: for hints and routing
        self._clock = clock
        self._redirect = redirect
        self._read_timeout = read_timeout
        self._catch_up_timeout = catch_up_timeout
        self.node: RaftNode | None = None
        self._snapshots: SnapshotReceiver | None = None

    def attach(self, node: RaftNode, sink: SnapshotSink) -> None:
        self.node = node
        self._snapshots = SnapshotReceiver(self.id, sink, node)
        node.membership_listeners.insert(0, self._route_to)

    def _route_to(self, config: Configuration) -> None:
        """Members named at start are reached as named (the configuration holds the
        addresses as whichever leader wrote it saw them); members added since, where the
        configuration says."""
        self.addresses = {**{member.id: member.address for member in config.members if member.address},
                          **self._named_at_start}

    @property
    def peers(self) -> dict[int, str]:
        """``{id: URL}`` of every other member this one may have to reach."""
        return {i: url for i, url in self.addresses.items() if i != self.id}

    @property
    def core(self) -> RaftCore:
        assert self.node is not None
        return self.node.core

    @property
    def leads(self) -> bool:
        return self.core.role is Role.LEADER

    def not_leader(self, leader_id: int | None = None) -> ApiError:
        """The 421 naming ``leader_id`` (default: the leader this member knows of)."""
        return not_leader_error(self.core.leader_id if leader_id is None else leader_id, self.addresses,
                                self._redirect)

    async def read_barrier(self) -> None:
        """Returns once a read served here reflects everything committed before the call
        (ReadIndex). :raises ApiError: 421 off the leader, 503 when no majority confirms it in time."""
        assert self.node is not None
        if not self.leads:
            raise self.not_leader()
        try:
            await self.node.read_barrier().addTimeout(self._read_timeout, self._clock)
        except NotLeader as e:
            raise self.not_leader(e.leader_id) from None
        except (ProposalDropped, defer.TimeoutError):
            raise unavailable("This replica could not confirm it is still the leader.") from None

    def status(self) -> dict[str, Any]:
        """The Raft part of ``GET /health_check``."""
        assert self.node is not None
        return {**self.node.status(), **self.members()}

    def members(self) -> dict[str, Any]:
        return members_answer(self.core.committed_configuration)

    async def change_members(self, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self.node is not None
        return await change_members(self.node, body, self.not_leader, self._catch_up_timeout)

    async def receive_peer(self, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One Raft message, or ``{"messages": [...]}`` in order, all from one peer; all are
        checked before any is stepped. Returns our answers to them, once durable."""
        batch = body.get("messages")
        items = batch if isinstance(batch, list) else [body]
        if not items or len(items) > MAX_MESSAGES_PER_POST:
            raise ApiError(400, f"A batch holds 1 to {MAX_MESSAGES_PER_POST} Raft messages.")
        messages = []
        for item in items:
            try:
                message = Message.from_json(item)
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(400, f"Not a Raft message: {e}") from None
            if message.type not in ACCEPTED.get(endpoint, ()):
                raise ApiError(400, f"A {message.type.value} message does not belong on /{endpoint}.")
            if message.to != self.id:
                raise ApiError(400, f"This is replica {self.id}, not {message.to}.")
            if messages and message.sender != messages[0].sender:
                raise ApiError(400, "A batch holds the messages of one sender.")
            messages.append(message)
        assert self.node is not None
        answers = await self.node.exchange(messages[0].sender, messages)
        return {"messages": [answer.to_json() for answer in answers]}

    async def receive_snapshot_chunk(self, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self._snapshots is not None
        return await self._snapshots.receive(body)


def build_node(host: RaftHost, state: RaftState, *, machine: StateMachine, storage: Storage, source: SnapshotSource,
               attach: Callable[[RaftNode], None], http_client: JsonClient, reactor: Any, token: str | None, timing: Timing,
               proposal_timeout: float, snapshot_every: int) -> tuple[RaftNode, HttpTransport, SnapshotSender]:
    """A node restored from ``state``, talking HTTP to ``host``'s peers, handed to ``attach``
    (which attaches it to ``host`` with the snapshot sink) before anything else hears of it.

    :param snapshot_every: entries applied between two snapshots (0: none); the log keeps
        a tenth of that before each, for followers a little behind.
    """
    assert state.bootstrap is not None
    core = RaftCore(host.id, configuration=state.bootstrap, hard_state=state.hard_state,
                    snapshot=state.snapshot.meta if state.snapshot is not None else None, entries=state.entries,
                    applied=state.applied, rng=random.Random(), election_ticks=timing.election_ticks,
                    heartbeat_ticks=timing.heartbeat_ticks, commit_ticks=timing.commit_ticks)
    # Answers that peers send back go to the node, which is built over this transport.
    snapshots = SnapshotSender(http_client, {}, source=source, clock=reactor, token=token,
                               on_answer=lambda answer: node.receive(answer),
                               on_done=lambda peer, index, failed: node.report_snapshot(peer, index, failed))
    transport = HttpTransport(http_client, {}, clock=reactor, token=token,
                              on_answer=lambda answer: node.receive(answer), snapshots=snapshots.send)
    node = RaftNode(core, clock=reactor, transport=transport, state_machine=machine, storage=storage,
                    timing=timing, proposal_timeout=proposal_timeout, snapshot_every=snapshot_every,
                    snapshot_keep=snapshot_every // 10)
    attach(node)

    def route(_: Configuration) -> None:  # after the host's own listener
        transport.set_peers(host.peers)
        snapshots.set_peers(host.peers)

    node.membership_listeners.append(route)
    return node, transport, snapshots
