"""The Twisted driver of a :class:`~toystore.raft.core.RaftCore`: it moves bytes and time.

The core is touched only between two cycles. A cycle steps everything that arrived
since the last one (peer messages, proposals, ticks, read requests) into the core,
takes its Ready, applies newly committed entries in memory, makes the Ready's hard
state, entries and applied results durable in one write, then sends the Ready's
messages (never before they are durable), answers waiting proposals and reads, and
advances the core. Whatever arrives while a cycle's fsync is on disk joins the next
cycle, so many proposals share one fsync (group commit) and one append per follower.

Messages that a peer sent in one request (:meth:`RaftNode.exchange`) get their answers
back on that request, once durable: an append and its acknowledgement share one HTTP
exchange instead of costing one each. The peer sends nothing more until then, so the
answers are waited for only when the messages start a cycle at once, and at most
``answer_wait``; otherwise (a write already on disk, a slow disk) the request is answered
empty and the answers go through the transport, as requests do.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet import task
from twisted.logger import Logger
from twisted.python.failure import Failure

from toystore.deferreds import fire
from toystore.raft.core import ChangeInProgress, LearnerBehind, NotLeader, RaftCore, TermChanged
from toystore.raft.membership import Configuration, MembershipError
from toystore.raft.messages import ANSWERS, Entry, EntryKind, Message, MessageType, Ready, Role
from toystore.raft.statemachine import StateMachine, Storage

log = Logger()


class ProposalDropped(Exception):
    """The entry of a proposal was overwritten or this node stopped leading before it
    committed here; it may still commit through another leader, so the outcome is unknown."""


class ProposalTimedOut(ProposalDropped):
    """The entry of a proposal did not commit here within the node's proposal timeout; it
    may still commit later, so the outcome is unknown."""


class CatchUpTimedOut(Exception):
    """A learner did not catch up with the leader's log in time; it was removed again."""


class Transport(Protocol):
    def send(self, message: Message) -> None: ...


_LEADER_BROADCASTS = frozenset({MessageType.APPEND, MessageType.HEARTBEAT})

# What :meth:`RaftNode.propose_each` tells a proposal's ``progress``, in this order: its
# entries are in the leader's log (the cycle that steps it has begun), durable on the
# leader's disk, and committed (on a majority) and applied here.
APPENDED, DURABLE, COMMITTED = "appended", "durable", "committed"


@dataclass
class _Proposal:
    """Entries proposed together: ``done`` fires with one outcome per entry, in sequence, once
    each has applied here (its apply result) or failed (a Failure in its place)."""

    data: Sequence[str]
    done: defer.Deferred
    proposed_at: float
    term: int | None  # the term the entries were prepared in, if they depend on it
    progress: Callable[[str], None] | None = None
    outcomes: list[Any] = field(init=False)
    unsettled: int = field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = [None] * len(self.data)
        self.unsettled = len(self.data)

    def settle(self, position: int, outcome: Any) -> None:
        self.outcomes[position] = outcome
        self.unsettled -= 1
        if not self.unsettled:
            fire(self.done, self.outcomes)

    def fail(self, failure: Failure) -> None:
        """Every entry, none of which has a place in the log yet."""
        for position in range(len(self.data)):
            self.settle(position, failure)


@dataclass
class _AnswerSlot:
    """Collects a cycle's answers to one peer's request; ``done`` fires with them, or with
    none once ``deadline`` passes (the answers then go through the transport)."""

    peer: int
    done: defer.Deferred
    deadline: IDelayedCall | None
    answers: list[Message] = field(default_factory=list)


@dataclass(frozen=True)
class Timing:
    """Raft's clock: ``tick_seconds`` per tick; an election after ``election_ticks`` to
    twice that without a leader, heartbeats every ``heartbeat_ticks`` (defaults: 0.5 to
    1 s, and 100 ms). Fine ticks give the randomized timeout 50 distinct values, so two
    followers rarely time out together and split the vote (each costs a whole timeout).
    Periodic heartbeats only keep followers from campaigning (a ReadIndex sends its own
    at once, a commit no append carries its own after ``commit_ticks``), and each is an
    HTTP round trip: five to ten per election timeout are enough."""

    tick_seconds: float = 0.01
    election_ticks: int = 50
    heartbeat_ticks: int = 10
    # A commit that no append carries reaches the followers this late (50 ms): they
    # serve no reads, so only their apply lags; a lone proposal is not followed by a
    # round of messages on both cores while its answer leaves.
    commit_ticks: int = 5


class RaftNode:
    """Drives one core on an injected clock.

    :param core: the consensus core, restored from durable state.
    :param clock: every timer runs on it.
    :param transport: sends a message to a peer (one-way; losses are Raft's business).
    :param state_machine: what the log replicates; committed entries are applied to it.
    :param storage: durable write of one cycle.
    :param answer_wait: how long a peer's request (:meth:`exchange`) waits for its answers
        to be durable before it is answered without them.
    :param proposal_timeout: seconds after which a proposal not yet committed here fails
        with :class:`ProposalTimedOut` (checked on every tick, so no timer per proposal).
    :param snapshot_every: once this many entries were applied since the last snapshot,
        storage records one at the applied index and the log is compacted (0: never).
    :param snapshot_keep: entries kept before a snapshot, so that a follower that far
        behind still catches up by appends rather than by the whole snapshot.

    Membership changes (:meth:`add_member`, :meth:`remove_member`) run one at a time;
    :attr:`membership_listeners` hear of each configuration put in force (before any
    message to a new member leaves), with which the host routes messages.
    """

    def __init__(self, core: RaftCore, *, clock: IReactorTime, transport: Transport,
                 state_machine: StateMachine, storage: Storage, timing: Timing = Timing(),
                 proposal_timeout: float = 5.0, answer_wait: float = 0.02, snapshot_every: int = 0,
                 snapshot_keep: int = 0) -> None:
        self.core = core
        self._clock = clock
        self._transport = transport
        self._state_machine = state_machine
        self._storage = storage
        self._timing = timing
        self._proposal_timeout = proposal_timeout
        self._answer_wait = answer_wait
        self._snapshot_every = snapshot_every
        self._snapshot_keep = snapshot_keep
        self._inbox_messages: list[Message] = []
        self._inbox_proposals: list[_Proposal] = []
        self._inbox_reads: list[defer.Deferred] = []
        self._inbox_transfer: int | None = None
        self._inbox_changes: list[tuple[Callable[[Configuration], Configuration], defer.Deferred]] = []
        self._changing = False  # a membership change runs (add_member's catch-up included)
        self._announced: Configuration | None = None
        self._inbox_snapshot_reports: list[tuple[int, int, bool]] = []
        self._inbox_slots: list[_AnswerSlot] = []
        self._answering: dict[int, _AnswerSlot] = {}  # in the running cycle, by peer
        self._pending_ticks = 0
        self._persisted_term = core.term
        self._cycling = False
        self._persisting = False
        self._stopped = False
        # index -> (term, proposal, position in it); by ascending index, so also oldest first.
        self._proposals: dict[int, tuple[int, _Proposal, int]] = {}
        self._reads: dict[str, list[defer.Deferred]] = {}
        self._reads_waiting_apply: list[tuple[int, defer.Deferred]] = []
        self._read_ids = itertools.count()
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = clock
        self.role_listeners: list[Callable[[Role, int], None]] = []
        # Told the seconds from each successful proposal to its commit (metrics).
        self.commit_listeners: list[Callable[[float], None]] = []
        self.membership_listeners: list[Callable[[Configuration], None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._announce_configuration()
        self._ticker.start(self._timing.tick_seconds, now=False)
        self._kick()

    def stop(self) -> None:
        self._stopped = True
        if self._ticker.running:
            self._ticker.stop()
        stopping = ProposalDropped("the replica is stopping")
        self._fail_waiters(stopping)
        changes, self._inbox_changes = self._inbox_changes, []
        for _, done in changes:
            fire(done, [Failure(stopping)])
        proposals, self._inbox_proposals = self._inbox_proposals, []
        for proposal in proposals:
            proposal.fail(Failure(stopping))
        slots, self._inbox_slots = self._inbox_slots, []
        self._answer(slots)

    # -- inputs ------------------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """A message from a peer."""
        self._inbox_messages.append(message)
        self._kick()

    def exchange(self, sender: int, messages: Sequence[Message]) -> defer.Deferred:
        """Messages from peer ``sender`` that wait for their answers: fires with what the
        cycle that steps them answers ``sender`` (:data:`ANSWERS` only), once that is
        durable. Those answers do not go through the transport."""
        done: defer.Deferred = defer.Deferred()
        if self._stopped:
            done.callback([])
            return done
        self._inbox_messages.extend(messages)
        self._kick()
        # A peer sends its next request only once this one is answered, so the answers are
        # waited for only while that costs little: not behind a write already on disk (these
        # messages join the next cycle), and not beyond a deadline. The peer's next messages
        # would otherwise arrive after the next cycle has started, and wait a whole write more.
        if self._persisting:
            done.callback([])
        else:
            deadline = self._clock.callLater(self._answer_wait, fire, done, [])
            self._inbox_slots.append(_AnswerSlot(sender, done, deadline))
        return done

    def install_snapshot(self, message: Message) -> defer.Deferred:
        """A leader's SNAPSHOT whose data the host has staged whole: fires with this node's
        answers once the cycle that steps it is over, the snapshot installed if it was
        needed (as :meth:`exchange`, but never answered before then)."""
        done: defer.Deferred = defer.Deferred()
        if self._stopped:
            done.callback([])
            return done
        self._inbox_messages.append(message)
        self._inbox_slots.append(_AnswerSlot(message.sender, done, None))
        self._kick()
        return done

    def report_snapshot(self, peer: int, index: int, failed: bool) -> None:
        """The transfer to ``peer`` of this leader's snapshot at ``index`` ended."""
        self._inbox_snapshot_reports.append((peer, index, failed))
        self._kick()

    def propose_each(self, data: Sequence[str], *, term: int | None = None,
                     progress: Callable[[str], None] | None = None) -> defer.Deferred:
        """Appends an entry for each of ``data``; fires with one outcome per entry, in
        sequence: the apply result once it is committed and applied here, or a Failure:
        :class:`NotLeader` on a non-leader, :class:`TermChanged` when ``term`` is given and
        is no longer the current term when the entries would be appended (none is),
        :class:`ProposalDropped` when leadership is lost before the entry applies,
        :class:`ProposalTimedOut` when it has not applied within the proposal timeout.
        Entries proposed together cost one waiter, not one each. ``progress``, if given, is
        told :data:`APPENDED`, :data:`DURABLE` and :data:`COMMITTED` as the entries reach
        each (where they are used to time a request's stages).
        """
        done: defer.Deferred = defer.Deferred()
        if not data:
            done.callback([])
            return done
        self._inbox_proposals.append(_Proposal(data, done, self._clock.seconds(), term, progress))
        self._kick()
        return done

    def read_barrier(self) -> defer.Deferred:
        """Fires once this node, still leader, has applied everything committed before the
        call (ReadIndex): a read served after it is not stale. NotLeader otherwise."""
        done: defer.Deferred = defer.Deferred()
        self._inbox_reads.append(done)
        self._kick()
        return done

    def transfer_leadership(self, target: int) -> None:
        self._inbox_transfer = target
        self._kick()

    # -- membership --------------------------------------------------------------------

    async def add_member(self, node_id: int, address: str, *, catch_up_timeout: float) -> Configuration:
        """Add a server: as a learner first, promoted to voter once it holds the log (a
        learner with this address already is promoted: an add cut short is resumed).

        :return: the committed configuration that has it as a voter.
        :raises NotLeader: off the leader, or when leadership is lost meanwhile.
        :raises ChangeInProgress: while another change runs.
        :raises MembershipError: when ``node_id`` is a member (other than that learner).
        :raises CatchUpTimedOut: when it did not catch up within ``catch_up_timeout``
            seconds; it is removed again, and membership is as before.
        :raises ProposalDropped: when a change's outcome is unknown (leadership lost).
        """
        async with self._one_change():
            member = self.core.configuration.member(node_id)
            if member is None or member.voter or member.address != address:
                await self._change(lambda config: config.with_learner(node_id, address))
            deadline = self._clock.seconds() + catch_up_timeout
            while True:
                try:
                    return await self._change(lambda config: config.with_voter(node_id))
                except LearnerBehind:
                    if self._clock.seconds() >= deadline:
                        break
                await task.deferLater(self._clock, self._timing.tick_seconds * self._timing.heartbeat_ticks, lambda: None)
            await self._change(lambda config: config.without(node_id))
            raise CatchUpTimedOut(f"server {node_id} did not catch up with the log within "
                                  f"{catch_up_timeout:g} s; it was removed again")

    async def remove_member(self, node_id: int) -> Configuration:
        """Remove a server (this one included: it leads until the removal commits, then
        hands over). :return: the committed configuration without it. :raises: as
        :meth:`add_member`, but no catch-up."""
        async with self._one_change():
            return await self._change(lambda config: config.without(node_id))

    @contextlib.asynccontextmanager
    async def _one_change(self) -> AsyncIterator[None]:
        if self._changing:
            raise ChangeInProgress("another membership change is under way")
        self._changing = True
        try:
            yield
        finally:
            self._changing = False

    async def _change(self, change: Callable[[Configuration], Configuration]) -> Configuration:
        """Propose ``change`` of the configuration in force; returns once it committed and applied here."""
        done: defer.Deferred = defer.Deferred()
        self._inbox_changes.append((change, done))
        self._kick()
        (outcome,) = await done
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return self.core.committed_configuration

    def _tick(self) -> None:
        self._expire_proposals()
        if self._cycling:
            self._pending_ticks += 1  # stepped with the rest of the inbox
            return
        # Between cycles the core may be ticked at once. Most ticks change nothing to
        # send or persist, and skipping a cycle for them saves a tenth of an idle
        # replica's CPU.
        self.core.tick()
        if self.core.has_ready():
            self._kick()

    def _expire_proposals(self) -> None:
        # Both queues are oldest first, and every proposal has the same timeout.
        oldest_kept = self._clock.seconds() - self._proposal_timeout
        expired: list[_Proposal] = []
        while self._inbox_proposals and self._inbox_proposals[0].proposed_at <= oldest_kept:
            expired.append(self._inbox_proposals.pop(0))
        expired_entries: list[tuple[_Proposal, int]] = []
        while self._proposals:
            index, (_, proposal, position) = next(iter(self._proposals.items()))
            if proposal.proposed_at > oldest_kept:
                break
            del self._proposals[index]
            expired_entries.append((proposal, position))
        if expired or expired_entries:
            failure = Failure(ProposalTimedOut(f"not committed within {self._proposal_timeout:g} s"))
            for proposal in expired:
                proposal.fail(failure)
            for proposal, position in expired_entries:
                proposal.settle(position, failure)

    # -- the cycle ---------------------------------------------------------------------

    def _kick(self) -> None:
        if self._cycling or self._stopped:
            return
        # The cycle starts on the next reactor turn, so that everything arriving in this
        # one (a burst of proposals, reads or messages) is stepped into a single Ready.
        self._cycling = True
        self._clock.callLater(0, self._start_cycles)

    def _start_cycles(self) -> None:
        d = defer.ensureDeferred(self._run_cycles())
        d.addErrback(self._cycle_failed)

    def _cycle_failed(self, failure: Any) -> None:
        # A failed durable write leaves memory ahead of disk: stop serving rather than
        # acknowledge what might be lost (fail-stop; a restart recovers from disk).
        log.failure("Raft cycle failed; this replica stops taking part", failure)
        self.stop()
        self._cycling = False

    async def _run_cycles(self) -> None:
        try:
            while not self._stopped:
                slots, self._inbox_slots = self._inbox_slots, []
                for slot in reversed(slots):  # two requests from one peer: the first collects
                    self._answering[slot.peer] = slot
                self._step_inbox()
                try:
                    if not self.core.has_ready():
                        return
                    await self._run_one(self.core.ready())
                finally:
                    self._answering = {}
                    self._answer(slots)
        finally:
            self._cycling = False

    @staticmethod
    def _answer(slots: list[_AnswerSlot]) -> None:
        for slot in slots:
            if slot.deadline is not None and slot.deadline.active():
                slot.deadline.cancel()
            fire(slot.done, slot.answers)

    def _step_inbox(self) -> None:
        core = self.core
        messages, self._inbox_messages = self._inbox_messages, []
        for message in messages:
            core.step(message)
        ticks, self._pending_ticks = self._pending_ticks, 0
        for _ in range(ticks):
            core.tick()
        proposals, self._inbox_proposals = self._inbox_proposals, []
        by_term: dict[int | None, list[_Proposal]] = {}
        for proposal in proposals:
            by_term.setdefault(proposal.term, []).append(proposal)
        for term, group in by_term.items():  # in the common case, one group
            self._propose_group(term, group)
        reads, self._inbox_reads = self._inbox_reads, []
        if reads:
            # Reads that arrived together share one read point and one heartbeat round:
            # the commit index it takes is at least what each of them requires.
            context = f"read-{next(self._read_ids)}"
            try:
                core.read_index(context)
            except NotLeader as e:
                for read in reads:
                    fire(read, Failure(e))
            else:
                self._reads[context] = reads
        if self._inbox_transfer is not None:
            core.transfer_leadership(self._inbox_transfer)
            self._inbox_transfer = None
        reports, self._inbox_snapshot_reports = self._inbox_snapshot_reports, []
        for peer, index, failed in reports:
            core.report_snapshot(peer, index, failed=failed)
        changes, self._inbox_changes = self._inbox_changes, []
        for change, done in changes:
            try:
                index, term = core.propose_configuration(change(core.configuration))
            except (NotLeader, ChangeInProgress, MembershipError) as e:
                fire(done, [Failure(e)])
            else:
                self._proposals[index] = (term, _Proposal([""], done, self._clock.seconds(), term), 0)

    def _propose_group(self, term: int | None, proposals: list[_Proposal]) -> None:
        """Appends the entries of ``proposals``, all prepared in ``term``, as one batch."""
        try:
            placed = iter(self.core.propose_batch([data for proposal in proposals for data in proposal.data],
                                                  term=term))
        except (NotLeader, TermChanged) as e:
            refused = Failure(e)
            for proposal in proposals:
                proposal.fail(refused)
            return
        for proposal in proposals:
            for position in range(len(proposal.data)):
                index, entry_term = next(placed)
                self._proposals[index] = (entry_term, proposal, position)
            if proposal.progress is not None:
                proposal.progress(APPENDED)

    async def _run_one(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            # The log was replaced by the snapshot: the state machine must be too, before
            # any entry after it applies or anyone hears of it.
            await self._storage.install_snapshot(ready.snapshot)
        # Before any message leaves: the host routes to members that this Ready added.
        self._announce_configuration()
        results = [self._state_machine.apply(entry) if entry.kind is EntryKind.NORMAL else None
                   for entry in ready.committed_entries]
        early, after_persist = self._split_messages(ready)
        for message in early:
            self._send(message)
        writing = self._progress_of(ready.entries)
        self._persisting = True
        try:
            written = defer.ensureDeferred(self._storage.persist(ready, results))
            # Committed entries are durable on a majority already: their proposers hear while
            # this node's own write (new entries, what applying them produced) is on disk, and their work
            # overlaps it. Proposals that committed in this cycle succeed even if the node
            # steps down in it.
            for entry, result in zip(ready.committed_entries, results):
                self._resolve_proposal(entry, result)
            await written
        finally:
            self._persisting = False
        for progress in writing:
            progress(DURABLE)
        if ready.hard_state is not None:
            self._persisted_term = ready.hard_state.term
        for message in after_persist:
            self._send(message)
        if ready.soft_state is not None:
            self._role_changed(ready.soft_state.role, ready.soft_state.leader_id)
        for read_state in ready.read_states:
            for waiter in self._reads.pop(read_state.context, []):
                self._reads_waiting_apply.append((read_state.index, waiter))
        self.core.advance(ready)
        self._release_reads()
        if self._snapshot_every and self.core.applied_index - self.core.snapshot_index >= self._snapshot_every:
            await self._take_snapshot()

    async def _take_snapshot(self) -> None:
        core = self.core
        index = core.applied_index
        point = core.compaction_point(index, keep=self._snapshot_keep)
        # Durable before the core forgets anything: it may send the snapshot at once.
        await self._storage.save_snapshot(core.snapshot_meta_at(index), compact_before=point)
        core.compact(index, keep=self._snapshot_keep)

    def _announce_configuration(self) -> None:
        config = self.core.configuration
        if config != self._announced:
            self._announced = config
            for listener in self.membership_listeners:
                listener(config)

    def _send(self, message: Message) -> None:
        slot = self._answering.get(message.to) if message.type in ANSWERS else None
        if slot is None or slot.done.called:
            self._transport.send(message)
        else:
            slot.answers.append(message)

    def _split_messages(self, ready: Ready) -> tuple[list[Message], list[Message]]:
        """Which messages may leave before this cycle's write is durable.

        A leader's appends and heartbeats may (etcd does the same): the core counts the
        leader towards a quorum only for entries it reported persisted, so a follower
        never commits on the strength of the leader's unwritten log. Everything else —
        votes and every answer to a leader — waits for the write, as Raft requires.
        The term they carry must be durable already.
        """
        if ready.hard_state is not None and ready.hard_state.term != self._persisted_term:
            return [], list(ready.messages)
        early = [m for m in ready.messages if m.type in _LEADER_BROADCASTS]
        later = [m for m in ready.messages if m.type not in _LEADER_BROADCASTS]
        return early, later

    def _progress_of(self, entries: Sequence[Entry]) -> list[Callable[[str], None]]:
        """The ``progress`` of each proposal that begins among ``entries``."""
        told: list[Callable[[str], None]] = []
        if not self._proposals:  # a follower's appends
            return told
        for entry in entries:
            waiting = self._proposals.get(entry.index)
            if waiting is not None and waiting[2] == 0 and waiting[1].progress is not None:
                told.append(waiting[1].progress)
        return told

    def _resolve_proposal(self, entry: Entry, result: Any) -> None:
        waiting = self._proposals.pop(entry.index, None)
        if waiting is None:
            return
        term, proposal, position = waiting
        if term == entry.term:
            for listener in self.commit_listeners:
                listener(self._clock.seconds() - proposal.proposed_at)
            if position == 0 and proposal.progress is not None:
                proposal.progress(COMMITTED)
            proposal.settle(position, result)
        else:
            proposal.settle(position, Failure(ProposalDropped(f"entry {entry.index} was replaced by one of term {entry.term}")))

    def _release_reads(self) -> None:
        applied = self.core.applied_index
        ready = [(i, d) for i, d in self._reads_waiting_apply if i <= applied]
        self._reads_waiting_apply = [(i, d) for i, d in self._reads_waiting_apply if i > applied]
        for _, done in ready:
            fire(done, None)

    def _role_changed(self, role: Role, leader_id: int) -> None:
        log.info("Raft node {id} is now {role} in term {term} (leader {leader})",
                 id=self.core.id, role=role.value, term=self.core.term, leader=leader_id)
        if role is not Role.LEADER:
            self._fail_waiters(ProposalDropped("this replica stopped leading"), NotLeader(leader_id))
        for listener in self.role_listeners:
            listener(role, leader_id)

    def _fail_waiters(self, dropped: Exception, not_leader: Exception | None = None) -> None:
        proposals, self._proposals = self._proposals, {}
        failure = Failure(dropped)
        for _, proposal, position in proposals.values():
            proposal.settle(position, failure)
        reads = [d for batch in self._reads.values() for d in batch] + [d for _, d in self._reads_waiting_apply]
        self._reads, self._reads_waiting_apply = {}, []
        for done in reads:
            fire(done, Failure(not_leader or dropped))

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        core = self.core
        return {
            "id": core.id,
            "role": "candidate" if core.role in (Role.CANDIDATE, Role.PRE_CANDIDATE) else core.role.value,
            "term": core.term,
            "leader_id": core.leader_id or None,
            "commit_index": core.commit_index,
            "last_index": core.last_index,
            "snapshot_index": core.snapshot_index,
            "log_entries": core.log_entries,
        }

