"""The pure Raft state machine, in the manner of etcd-io/raft.

:class:`RaftCore` does no I/O and reads no clock: the caller feeds it ticks, peer
messages and client requests, then collects a :class:`~toystore.raft.messages.Ready`
(what to persist, send and apply) and reports it done with :meth:`RaftCore.advance`.
Everything is deterministic given the injected ``random.Random``.

Implemented: leader election with randomized timeouts, pre-vote and check-quorum
leases (Ongaro's dissertation 9.6), log replication with probe/replicate flow control
and fast backup, commit of current-term entries only (Figure 8), ReadIndex, leadership
transfer (3.10), TRUNCATE of an outdated follower suffix, learners (members that receive
the log but vote in nothing, as etcd's learners), membership changes one server at a
time (4.1: the configuration in force is the latest in the log, committed or not; a
leader changes it only once an entry of its term committed; a removed leader hands
over once its removal commits), and log compaction: the host
reports the snapshots it made durable (:meth:`RaftCore.compact`), a follower that needs
entries compacted away is sent a SNAPSHOT, and a follower that receives one hands it to
its host in ``Ready.snapshot`` (chapter 5; what the snapshot holds, and how its bytes
travel, is the hosts' business).
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from toystore.raft.membership import Configuration, MembershipError
from toystore.raft.messages import (
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    Ready,
    ReadState,
    Role,
    SnapshotMeta,
    SoftState,
)
from toystore.raft.progress import Inflights, Progress, ProgressState
from toystore.raft.raftlog import RaftLog
from toystore.raft.readindex import PendingReads

#: The context of a VOTE sent after TIMEOUT_NOW: voters must not ignore it for their lease.
TRANSFER_CONTEXT = "transfer"
#: Unacknowledged appends allowed per follower in replicate state.
MAX_INFLIGHT_APPENDS = 64

_RESPONSE_TO_VOTE = {MessageType.VOTE: MessageType.VOTE_RESP, MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESP}
# Only a leader sends these, so they name the sender as leader of their term.
_FROM_LEADER = frozenset({MessageType.APPEND, MessageType.HEARTBEAT, MessageType.TRUNCATE, MessageType.SNAPSHOT})


class NotLeader(Exception):
    """The request needs the leader.

    :param leader_id: the leader this node knows of, 0 when unknown.
    """

    def __init__(self, leader_id: int) -> None:
        super().__init__(f"not the leader (leader: {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ChangeInProgress(Exception):
    """A membership change waits: an earlier one has not committed yet, or this leader has
    not yet committed an entry of its term (the fix Ongaro posted to raft-dev in 2015: a
    new leader's change could otherwise overlap an uncommitted one of a deposed leader)."""


class LearnerBehind(ChangeInProgress):
    """A learner is not promoted before it holds the log (to within a bound): a voter that
    lags behind could leave the group without a quorum that holds new entries."""


class TermChanged(Exception):
    """A proposal was made for a term that is no longer this leader's current one.

    Work done for the proposal in that term (a reservation elsewhere, fenced by it) may
    have been undone by a leader of a later term; the proposer must redo it in this one.
    """

    def __init__(self, proposed_in: int, current: int) -> None:
        super().__init__(f"proposed for term {proposed_in}, but the term is now {current}")
        self.proposed_in = proposed_in
        self.current = current


class RaftCore:
    """One Raft participant.

    :param node_id: this node's id (>= 1).
    :param peers: every voting node id of the cluster (this one included, unless it is a learner).
    :param learners: the ids of non-voting members (etcd's learners, hashicorp's non-voters):
        they receive the log, but are counted in no quorum and never campaign.
    :param configuration: in place of ``peers`` and ``learners``: the configuration before
        any in ``snapshot`` or ``entries`` (the one a group was started with). Empty for a
        node that waits to be added: it never campaigns, and takes a leader's messages.
    :param hard_state: the persisted term, vote and commit index.
    :param snapshot: the latest durable snapshot of the state machine, if any.
    :param entries: the persisted log, contiguous: from index 1 without a snapshot;
        otherwise from the compaction point that :meth:`compact` returned (that entry
        included: its term is what log matching needs there), or from just after the
        snapshot when the log starts at it (an installed snapshot).
    :param applied: entries up to here were applied before a restart (at least up to
        ``snapshot``).
    :param rng: the only source of randomness (election timeouts).
    :param election_ticks: the base election timeout; each wait is drawn from
        ``[election_ticks, 2 * election_ticks)``.
    :param heartbeat_ticks: a leader's heartbeat period.
    :param commit_ticks: a commit that no append carries is told to the followers by
        heartbeat this many ticks after it (0: at once). Under load the next append carries
        it sooner; a lone proposal does not pay for a round of messages that no proposer
        waits for (hashicorp/raft's CommitTimeout).
    :param pre_vote: run a pre-vote round before bumping the term.
    :param check_quorum: a leader steps down without a quorum's answers within an
        election timeout, and nodes that heard from a leader within it ignore votes.
    :param max_entries_per_append: the largest batch per APPEND.
    :raises ValueError: on an impossible configuration or persisted state.
    """

    def __init__(
        self,
        node_id: int,
        peers: Sequence[int] = (),
        *,
        learners: Sequence[int] = (),
        configuration: Configuration | None = None,
        hard_state: HardState = HardState(),
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        applied: int = 0,
        rng: random.Random,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        commit_ticks: int = 0,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_entries_per_append: int = 512,
    ) -> None:
        if configuration is None:
            members = [*peers, *learners]
            if node_id not in members or len(set(members)) != len(members) or min(members) < 1 or not peers:
                raise ValueError(f"peers {list(peers)} and learners {list(learners)} must be distinct ids >= 1, "
                                 f"at least one peer, {node_id} among them")
            if hard_state.vote and hard_state.vote not in peers:
                raise ValueError(f"persisted vote for unknown node {hard_state.vote}")
            configuration = Configuration.of(peers, learners)
        elif peers or learners:
            raise ValueError("give the peers and learners, or the configuration, not both")
        if node_id < 1:
            raise ValueError(f"a node id is at least 1, not {node_id}")
        if not 1 <= heartbeat_ticks < election_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if not 0 <= commit_ticks < election_ticks:
            raise ValueError("need 0 <= commit_ticks < election_ticks")
        if max_entries_per_append < 1:
            raise ValueError("max_entries_per_append must be at least 1")
        if snapshot is not None and not 1 <= snapshot.index <= applied:
            raise ValueError(f"a snapshot at {snapshot.index} must be in the state machine (applied: {applied})")
        self._id = node_id
        self._rng = rng
        self._election_ticks = election_ticks
        self._heartbeat_ticks = heartbeat_ticks
        self._commit_ticks = commit_ticks
        self._pre_vote = pre_vote
        self._check_quorum = check_quorum
        self._max_entries = max_entries_per_append

        self._term = hard_state.term
        self._vote = hard_state.vote
        boundary, tail = _compaction_point(snapshot, entries)
        # An applied entry was committed, even if the commit index on disk lags behind.
        self._log = RaftLog(tail, compacted_index=boundary.index, compacted_term=boundary.term,
                            commit=max(hard_state.commit, applied), applied=applied)
        if snapshot is not None and snapshot.config is None:
            snapshot = SnapshotMeta(snapshot.index, snapshot.term, configuration)
        # The snapshot to send a follower that needs entries compacted away.
        self._snapshot = snapshot
        # A leader's snapshot that replaced the log, for the host to install.
        self._snapshot_to_install: SnapshotMeta | None = None
        self._role = Role.FOLLOWER
        self._leader_id = 0
        self._prev_hard_state = hard_state
        self._prev_soft_state = SoftState(Role.FOLLOWER, 0)
        self._messages: list[Message] = []
        self._read_states: list[ReadState] = []

        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._untold_commit_elapsed: int | None = None  # ticks since a commit some follower was not told
        self._timeout = self._draw_timeout()
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, Progress] = {}
        self._transferee = 0
        self._reads = PendingReads()
        # (index, configuration) from the one in force at the snapshot (or before the log),
        # then each configuration entry of the log: the last is in force.
        self._configurations: list[tuple[int, Configuration]] = [
            (snapshot.index, snapshot.config) if snapshot is not None and snapshot.config is not None
            else (0, configuration)]
        # Entries up to the snapshot that the log keeps are in its configuration already.
        self._note_configurations([entry for entry in tail if entry.index > self._configurations[0][0]])
        self._config = Configuration()
        self._voters: frozenset[int] = frozenset()
        self._others: tuple[int, ...] = ()
        self._other_voters: tuple[int, ...] = ()
        self._quorum = 1
        self._configuration_changed()
        # ReadIndex requests that wait for the first commit of the leader's own term.
        self._early_reads: list[str] = []
        self._handlers: dict[Role, Callable[[Message], None]] = {
            Role.FOLLOWER: self._step_follower,
            Role.PRE_CANDIDATE: self._step_candidate,
            Role.CANDIDATE: self._step_candidate,
            Role.LEADER: self._step_leader,
        }

    # -- read-only state ---------------------------------------------------------------

    @property
    def id(self) -> int:
        """This node's id."""
        return self._id

    @property
    def term(self) -> int:
        """The current term."""
        return self._term

    @property
    def role(self) -> Role:
        """The current role."""
        return self._role

    @property
    def leader_id(self) -> int:
        """The leader of the current term, 0 when unknown."""
        return self._leader_id

    @property
    def commit_index(self) -> int:
        """The highest index known to be committed."""
        return self._log.commit

    @property
    def last_index(self) -> int:
        """The index of the last log entry."""
        return self._log.last_index

    @property
    def applied_index(self) -> int:
        """The highest index the node reported applied."""
        return self._log.applied

    @property
    def log(self) -> Sequence[Entry]:
        """The entries held (``log[i - first_index]`` has index ``i``); a live view, not a copy."""
        return self._log.entries

    @property
    def first_index(self) -> int:
        """The index of the first entry held: those before it are compacted away."""
        return self._log.first_index

    @property
    def log_entries(self) -> int:
        """How many entries the log holds."""
        return len(self._log.entries)

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when it is compacted away or not held yet."""
        return self._log.term_at(index)

    @property
    def snapshot_index(self) -> int:
        """The last index of the latest snapshot (made here or installed), 0 when none."""
        return self._snapshot.index if self._snapshot is not None else 0

    @property
    def configuration(self) -> Configuration:
        """The configuration in force: the latest in the log, committed or not."""
        return self._config

    @property
    def committed_configuration(self) -> Configuration:
        """The latest configuration whose entry is committed (or in the snapshot)."""
        return self.configuration_at(self._log.commit)

    def configuration_at(self, index: int) -> Configuration:
        """The configuration in force at ``index`` (no earlier than the snapshot)."""
        for at, config in reversed(self._configurations):
            if at <= index:
                return config
        return self._configurations[0][1]

    @property
    def configuration_pending(self) -> bool:
        """Is the configuration in force not committed yet?"""
        return self._configurations[-1][0] > self._log.commit

    # -- inputs ------------------------------------------------------------------------

    def tick(self) -> None:
        """Let one unit of logical time pass."""
        if self._role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._timeout:
            self._election_elapsed = 0
            if self._may_campaign():
                self._campaign(pre_vote=self._pre_vote)

    def campaign(self) -> None:
        """Start an election now (through pre-vote when enabled); no-op on a leader or a learner."""
        if self._role is not Role.LEADER and self._may_campaign():
            self._campaign(pre_vote=self._pre_vote)

    def propose(self, data: str) -> tuple[int, int]:
        """Append ``data`` to the log and start replicating it.

        :return: the new entry's (index, term); it is committed once it comes out in
            ``committed_entries`` with that term.
        :raises NotLeader: on a follower or candidate, or during a leadership transfer.
        """
        return self.propose_batch([data])[0]

    def propose_batch(self, batch: Sequence[str], *, term: int | None = None) -> list[tuple[int, int]]:
        """:meth:`propose` for several entries at once: one append per follower carries them all.

        :param term: the term the entries were prepared in, if they depend on it: they are
            appended only while that term is current.
        :raises NotLeader: as :meth:`propose`; then none of them is appended.
        :raises TermChanged: when ``term`` is not the current term; none is appended.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        if self._transferee:
            raise NotLeader(0)
        if term is not None and term != self._term:
            raise TermChanged(term, self._term)
        entries = [self._append(data) for data in batch]
        self._broadcast_append()
        return [(entry.index, entry.term) for entry in entries]

    def propose_configuration(self, config: Configuration) -> tuple[int, int]:
        """Append a configuration entry that puts ``config`` in force at once.

        :return: the entry's (index, term), as :meth:`propose`.
        :raises NotLeader: as :meth:`propose`.
        :raises ChangeInProgress: while the configuration in force is not committed, or
            before an entry of this leader's term committed.
        :raises LearnerBehind: when ``config`` promotes a learner that has not answered an
            append yet, or whose log ends more than ``max_entries_per_append`` entries
            before this leader's.
        :raises MembershipError: unless ``config`` is one server added as a learner,
            promoted, or removed, from the configuration in force.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        if self._transferee:
            raise NotLeader(0)
        if self.configuration_pending:
            raise ChangeInProgress(f"the change at {self._configurations[-1][0]} has not committed yet")
        if self._log.term_at(self._log.commit) != self._term:
            raise ChangeInProgress("this leader has not committed an entry of its term yet")
        if not config.is_single_change_from(self._config):
            raise MembershipError("a change adds one learner, promotes one, or removes one member")
        for promoted in config.voters & self._config.learners:
            progress = self._progress[promoted]
            # Replicating, it has answered and takes appends (not waiting for a probe or a snapshot).
            if progress.state is not ProgressState.REPLICATE or progress.match + self._max_entries < self._log.last_index:
                raise LearnerBehind(f"learner {promoted} holds the log to {progress.match} of {self._log.last_index}")
        entry = self._append(config.encode(), EntryKind.CONFIG)
        self._broadcast_append()
        return entry.index, entry.term

    def read_index(self, context: str) -> None:
        """Ask for a linearizable read point; a ``ReadState(context, index)`` comes out in
        a later Ready once a quorum confirmed this node still leads.

        :param context: a unique, non-empty request id.
        :raises NotLeader: on a non-leader (pending requests die on losing leadership).
        """
        if not context:
            raise ValueError("a ReadIndex context must not be empty")
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        # Until an entry of its term commits, the leader's commit index may lag behind
        # what an earlier leader committed (dissertation 6.4).
        if self._log.term_at(self._log.commit) != self._term:
            self._early_reads.append(context)
        else:
            self._start_read(context)

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to ``target``: bring it up to date, then send TIMEOUT_NOW.

        Proposals are refused meanwhile; the transfer is abandoned after an election
        timeout. No-op unless leader and ``target`` is another voter.
        """
        if (self._role is not Role.LEADER or target not in self._progress or target not in self._voters
                or target in (self._id, self._transferee)):
            return
        self._transferee = target
        # The transfer gets one election timeout from now.
        self._election_elapsed = 0
        if self._progress[target].match == self._log.last_index:
            self._send(MessageType.TIMEOUT_NOW, target)
        else:
            self._send_append(target)

    def compact(self, snapshot_index: int, *, keep: int = 0) -> int:
        """The host made a snapshot of its state machine at ``snapshot_index`` durable.

        It becomes the snapshot sent to followers that need entries before it, and the
        log is dropped up to ``snapshot_index - keep`` (no further than is durable, never
        back from where it was), so that a follower at most ``keep`` entries behind the
        snapshot still catches up by entries. A snapshot older than the latest changes
        nothing.

        :return: the compaction point: storage may delete the entries before it (the one
            at it must stay, see the constructor's ``entries``).
        :raises ValueError: when ``snapshot_index`` is not in ``[1, applied index]``, or
            ``keep`` is negative.
        """
        if keep < 0:
            raise ValueError(f"keep must not be negative, got {keep}")
        if not 1 <= snapshot_index <= self._log.applied:
            raise ValueError(f"a snapshot at {snapshot_index} is not within the applied log (1 to {self._log.applied})")
        if snapshot_index < self.snapshot_index:
            return self._log.compacted_index
        self._snapshot = self.snapshot_meta_at(snapshot_index)
        self._configurations = [(snapshot_index, self._snapshot.config), *(
            (at, config) for at, config in self._configurations if at > snapshot_index)]
        return self._log.compact(self.compaction_point(snapshot_index, keep=keep))

    def snapshot_meta_at(self, index: int) -> SnapshotMeta:
        """What a snapshot of the state machine at ``index`` (held, or the compaction boundary) records."""
        term = self._log.term_at(index)
        assert term is not None, f"snapshot at {index}, compacted up to {self._log.compacted_index}"
        return SnapshotMeta(index, term, self.configuration_at(index))

    def compaction_point(self, snapshot_index: int, *, keep: int = 0) -> int:
        """Where :meth:`compact` would leave the log's boundary; changes nothing, so that
        storage can delete the entries before it in the write that records the snapshot.

        A leader keeps the entries after any snapshot it is sending: once a follower
        holds that snapshot it catches up by them. Without them, a follower whose
        transfer outlasts ``keep`` new entries would be sent a snapshot again, and again.
        """
        point = snapshot_index - keep
        if self._role is Role.LEADER:
            point = min([point] + [progress.pending_snapshot for progress in self._progress.values()
                                   if progress.state is ProgressState.SNAPSHOT])
        return self._log.compaction_point(point)

    def report_snapshot(self, peer: int, index: int, *, failed: bool) -> None:
        """The host's transfer to ``peer`` of this leader's SNAPSHOT at ``index`` ended:
        ``failed`` or not, ``peer`` is probed again once a heartbeat answers, which sends
        the snapshot again if it still needs it. Ignored unless ``peer`` waits for that
        snapshot (a report of an older transfer says nothing of the one under way)."""
        progress = self._progress.get(peer)  # only a leader tracks its peers
        if progress is not None and progress.state is ProgressState.SNAPSHOT and progress.pending_snapshot == index:
            progress.snapshot_ended(failed=failed)

    def step(self, message: Message) -> None:
        """Handle a message from a peer; wrong-addressed or malformed ones are ignored.

        Votes are asked and granted across configurations (dissertation 4.1): a voter
        whose log lags a change must still elect a new member. A removed node that
        campaigns disrupts nothing all the same: its pre-votes lose to longer logs, and
        to the lease of a live leader."""
        if message.to != self._id or message.sender == self._id or message.sender < 1:
            return
        if message.term > self._term:
            if not self._accept_higher_term(message):
                return
        elif message.term < self._term:
            self._answer_stale(message)
            return
        if message.type in _RESPONSE_TO_VOTE:
            self._handle_vote_request(message)
        else:
            self._handlers[self._role](message)

    # -- Ready -------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Is there anything to persist, send, apply or report?"""
        previous = self._prev_hard_state
        return bool(
            self._messages
            or self._read_states
            or self._log.has_unpersisted()
            or self._log.has_to_apply()
            or self._snapshot_to_install is not None
            or (self._term, self._vote, self._log.commit) != (previous.term, previous.vote, previous.commit)
            or self._soft_state() != self._prev_soft_state
        )

    def ready(self) -> Ready:
        """Collect the pending work; hand it back to :meth:`advance` once done."""
        hard_state = HardState(self._term, self._vote, self._log.commit)
        soft_state = self._soft_state()
        return Ready(
            hard_state=None if hard_state == self._prev_hard_state else hard_state,
            entries=self._log.unpersisted(),
            committed_entries=self._log.to_apply(),
            messages=tuple(self._messages),
            read_states=tuple(self._read_states),
            soft_state=None if soft_state == self._prev_soft_state else soft_state,
            snapshot=self._snapshot_to_install,
        )

    def advance(self, ready: Ready) -> None:
        """The node persisted, sent and applied what ``ready`` held."""
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        if ready.soft_state is not None:
            self._prev_soft_state = ready.soft_state
        if ready.snapshot is not None:
            self._snapshot_to_install = None
        del self._messages[: len(ready.messages)]
        del self._read_states[: len(ready.read_states)]
        if ready.committed_entries:
            self._log.applied_to(ready.committed_entries[-1].index)
        if ready.entries:
            last = ready.entries[-1]
            self._log.persisted_to(last.index, last.term)
            # A leader counts itself towards a quorum only for what it persisted.
            if self._role is Role.LEADER and self._progress[self._id].maybe_update(self._log.persisted):
                self._maybe_commit()

    # -- roles -------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        """Start afresh in ``term``: forget the vote (if the term changed), timers and role state."""
        if term != self._term:
            self._term = term
            self._vote = 0
        self._leader_id = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._untold_commit_elapsed = None
        self._timeout = self._draw_timeout()
        self._votes = {}
        self._progress = {}
        self._transferee = 0
        self._reads.clear()
        self._early_reads = []

    def _become_follower(self, term: int, leader_id: int) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._leader_id = leader_id

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._role = Role.LEADER
        self._leader_id = self._id
        next_index = self._log.last_index + 1
        for peer in (self._id, *self._others):
            self._progress[peer] = Progress(match=0, next=next_index, inflights=Inflights(MAX_INFLIGHT_APPENDS))
        own = self._progress[self._id]
        own.match = self._log.persisted
        own.become_replicate()
        own.recent_active = True
        # The no-op lets the leader commit, hence learn the commit index, in its term.
        self._append("")
        self._broadcast_append()

    def _campaign(self, *, pre_vote: bool, transfer: bool = False) -> None:
        """Ask every peer for a (pre-)vote, counting our own at once."""
        if pre_vote:
            self._reset(self._term)
            self._role = Role.PRE_CANDIDATE
            kind, term = MessageType.PRE_VOTE, self._term + 1
        else:
            self._reset(self._term + 1)
            self._role = Role.CANDIDATE
            self._vote = self._id
            kind, term = MessageType.VOTE, self._term
        # A node that is removing itself campaigns for the others' sake, without a vote of its own.
        self._votes = {self._id: True} if self._id in self._voters else {}
        if self._quorum == 1 and self._id in self._voters:
            self._won_election()
            return
        for peer in self._other_voters:
            self._messages.append(
                Message(
                    kind,
                    self._id,
                    peer,
                    term,
                    log_term=self._log.last_term,
                    index=self._log.last_index,
                    context=TRANSFER_CONTEXT if transfer else "",
                )
            )

    def _may_campaign(self) -> bool:
        """A voter may; so may a node whose removal has not committed (dissertation 4.2.2):
        if it holds the removal alone, the group needs it to lead and commit it."""
        return self._id in self._voters or (self.configuration_pending
                                            and self._id in self.committed_configuration.voters)

    def _won_election(self) -> None:
        if self._role is Role.PRE_CANDIDATE:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    # -- term handling and votes -------------------------------------------------------

    def _accept_higher_term(self, message: Message) -> bool:
        """Handle the term of a message from a later term. :return: whether to go on with it."""
        if message.type in _RESPONSE_TO_VOTE and message.context != TRANSFER_CONTEXT and self._in_lease():
            # A leader was heard from recently: this candidate would only disrupt it.
            return False
        if message.type is MessageType.PRE_VOTE:
            # A pre-vote asks about a term nobody holds yet: ours must not move.
            return True
        if message.type is MessageType.PRE_VOTE_RESP and not message.reject:
            # Granted for our future term; we move there only after winning.
            return True
        leader = message.sender if message.type in _FROM_LEADER else 0
        self._become_follower(message.term, leader)
        return True

    def _in_lease(self) -> bool:
        """Has this node heard from a leader within the (minimum) election timeout?"""
        return self._check_quorum and self._leader_id != 0 and self._election_elapsed < self._election_ticks

    def _answer_stale(self, message: Message) -> None:
        """Tell a sender from a past term about ours when that unblocks it."""
        if message.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT) and (
            self._check_quorum or self._pre_vote
        ):
            # A deposed leader whose followers all ignore it might never learn the new
            # term otherwise: pre-vote keeps the new term from reaching it through votes.
            self._send(MessageType.APPEND_RESP, message.sender)
        elif message.type is MessageType.PRE_VOTE:
            # The pre-candidate adopts our term from the rejection and can then win.
            self._send(MessageType.PRE_VOTE_RESP, message.sender, reject=True)

    def _handle_vote_request(self, message: Message) -> None:
        can_vote = (
            self._vote == message.sender
            or (self._vote == 0 and self._leader_id == 0)
            or (message.type is MessageType.PRE_VOTE and message.term > self._term)
        )
        response = _RESPONSE_TO_VOTE[message.type]
        if can_vote and self._log.is_up_to_date(message.index, message.log_term):
            self._messages.append(Message(response, self._id, message.sender, message.term))
            if message.type is MessageType.VOTE:
                self._election_elapsed = 0
                self._vote = message.sender
        else:
            self._send(response, message.sender, reject=True)

    # -- followers and candidates ------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        if message.type in _FROM_LEADER:
            self._election_elapsed = 0
            self._leader_id = message.sender
            self._handle_from_leader(message)
        elif message.type is MessageType.TIMEOUT_NOW and self._may_campaign():
            self._campaign(pre_vote=False, transfer=True)

    def _step_candidate(self, message: Message) -> None:
        if message.type in _FROM_LEADER:
            # Someone won this term.
            self._become_follower(message.term, message.sender)
            self._handle_from_leader(message)
            return
        expected = MessageType.PRE_VOTE_RESP if self._role is Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        if message.type is not expected or message.sender not in self._voters:
            return
        self._votes.setdefault(message.sender, not message.reject)
        granted = sum(self._votes.values())
        if granted >= self._quorum:
            self._won_election()
        elif len(self._votes) - granted >= self._quorum:
            self._become_follower(self._term, 0)

    def _handle_from_leader(self, message: Message) -> None:
        if message.type is MessageType.APPEND:
            self._handle_append(message)
        elif message.type is MessageType.HEARTBEAT:
            # commit <= the match index this leader saw us acknowledge in its term, and a
            # leader's entries stay in our log: it is in our log, unless our disk was lost
            # (wiped, or replaced) since. Then say so, or the leader would wait forever
            # for us to acknowledge entries past a match we no longer hold.
            lost = message.commit > self._log.last_index
            self._log.commit_to(min(message.commit, self._log.last_index))
            self._send(MessageType.HEARTBEAT_RESP, message.sender, context=message.context,
                       reject=lost, reject_hint=self._log.last_index if lost else 0)
        elif message.type is MessageType.SNAPSHOT:
            self._handle_snapshot(message)
        else:
            self._handle_truncate(message)

    def _handle_append(self, message: Message) -> None:
        log = self._log
        if message.index < log.commit:
            # Everything up to our commit index matches any leader's log.
            self._send_append_response(message.sender, index=log.commit)
            return
        if not _well_formed_entries(message):
            return
        if not log.matches(message.index, message.log_term):
            hint = log.find_conflict_by_term(min(message.index, log.last_index), message.log_term)
            self._send_append_response(
                message.sender,
                index=message.index,
                reject=True,
                reject_hint=hint,
                conflict_term=log.term_at(hint) or 0,
            )
            return
        # Entries start past our commit index (checked above), so no committed entry is
        # cut here; RaftLog.append asserts it.
        conflict = log.find_conflict(message.entries)
        if conflict:
            new = message.entries[conflict - message.index - 1 :]
            log.append(new)
            self._log_replaced_from(conflict, new)
        last_new = message.index + len(message.entries)
        log.commit_to(min(message.commit, last_new))
        self._send_append_response(message.sender, index=last_new)

    def _handle_snapshot(self, message: Message) -> None:
        """Catch up with the leader's snapshot, which ends at (``index``, ``log_term``),
        and say so as an append would: the leader then sends the entries after it."""
        log = self._log
        if message.index <= log.commit:
            # We hold all that already (and committed entries match any leader's).
            self._send_append_response(message.sender, index=log.commit)
            return
        if not 1 <= message.log_term <= message.term:
            return
        if log.restore(message.index, message.log_term):
            config = message.config or self.configuration_at(message.index)
            self._snapshot = self._snapshot_to_install = SnapshotMeta(message.index, message.log_term, config)
            self._configurations = [(message.index, config)]
            self._configuration_changed()
        self._send_append_response(message.sender, index=message.index)

    def _handle_truncate(self, message: Message) -> None:
        """Drop older-term entries past the leader's last index.

        They are not committed (a leader holds every committed entry), this node never
        acknowledged them to the current leader, and the leader's next append past its
        last index would cut them anyway; dropping them now keeps them out of any later
        election, where they would only make this log look more up to date than it is.
        """
        log = self._log
        keep = max(message.index, log.commit)
        # Terms only grow along the log, so if the last entry is older than the leader's
        # term, so is every entry past ``keep``. The entry at ``keep`` carries the
        # deletion to storage, so it must be one we hold.
        if log.first_index <= keep < log.last_index and log.last_term < self._term:
            log.truncate_after(keep)
            self._log_replaced_from(keep + 1, ())

    def _send_append_response(self, to: int, *, index: int, **fields: int | bool) -> None:
        self._send(
            MessageType.APPEND_RESP,
            to,
            index=index,
            log_term=self._log.last_term,
            commit=self._log.last_index,
            **fields,
        )

    # -- leader ------------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_ticks:
            self._election_elapsed = 0
            if self._check_quorum and not self._quorum_active():
                self._become_follower(self._term, 0)
                return
            # A transfer that did not finish within an election timeout is abandoned.
            self._transferee = 0
        if self._heartbeat_elapsed >= self._heartbeat_ticks:
            self._heartbeat_elapsed = 0
            context = self._reads.last_context
            for peer in self._others:
                progress = self._progress[peer]
                if context or not self._replicating_smoothly(progress):
                    self._send_heartbeat(peer, context)
                progress.answered_lately = False
        if self._untold_commit_elapsed is not None:
            self._untold_commit_elapsed += 1
            if self._untold_commit_elapsed >= self._commit_ticks:
                self._untold_commit_elapsed = None
                for peer in self._others:
                    self._send_commit(peer)

    @staticmethod
    def _replicating_smoothly(progress: Progress) -> bool:
        """Is a periodic heartbeat to this follower redundant? Under load appends reach it
        many times per heartbeat period, each resetting its election timer and carrying
        the commit, and a heartbeat would cost an HTTP round trip for nothing. It is sent
        all the same to a follower that has not answered an append lately (an idle one),
        or whose appends are stuck (its answer frees them), and whenever a read waits for
        confirmation."""
        return (progress.answered_lately and progress.state is ProgressState.REPLICATE
                and not progress.inflights.full)

    def _quorum_active(self) -> bool:
        """Did a quorum answer during the last election timeout? Starts the next period."""
        active = (self._id in self._voters) + sum(self._progress[peer].recent_active for peer in self._other_voters)
        for peer in self._others:
            self._progress[peer].recent_active = False
        return active >= self._quorum

    def _step_leader(self, message: Message) -> None:
        progress = self._progress.get(message.sender)
        if progress is None:
            return  # not a member (any more)
        if message.type is MessageType.APPEND_RESP:
            progress.recent_active = progress.answered_lately = True
            if message.index <= self._log.last_index:
                self._handle_append_response(message, progress)
            self._maybe_send_truncate(message)
        elif message.type is MessageType.HEARTBEAT_RESP:
            progress.recent_active = True
            if message.reject:
                progress.lost_entries(message.reject_hint)
            progress.probe_sent = False
            if progress.state is ProgressState.REPLICATE and progress.inflights.full:
                progress.inflights.free_first()
            if progress.match < self._log.last_index or progress.state is ProgressState.PROBE:
                self._send_append(message.sender)
            if message.context and message.sender in self._voters:
                self._read_states.extend(self._reads.acknowledge(message.context, message.sender))

    def _handle_append_response(self, message: Message, progress: Progress) -> None:
        peer = message.sender
        if message.reject:
            match_hint = min(message.reject_hint, self._log.last_index)
            if message.conflict_term:
                # Skip every entry of ours whose term the follower cannot hold there.
                match_hint = self._log.find_conflict_by_term(match_hint, message.conflict_term)
            if progress.maybe_decrease(message.index, match_hint):
                if progress.state is ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(peer)
            return
        if progress.maybe_update(message.index) or (
            progress.match == message.index and progress.state is ProgressState.PROBE
        ):
            if progress.state is ProgressState.REPLICATE:
                progress.inflights.free_up_to(message.index)
            elif progress.match >= progress.pending_snapshot:
                # A probe matched (no snapshot is pending then), or the follower has the
                # snapshot it was sent: the entries after it go by appends.
                progress.become_replicate()
            if not self._maybe_commit():
                self._tell_commit(peer)
            elif self._role is not Role.LEADER:
                return  # its own removal committed
            while self._send_append(peer, allow_empty=False):
                pass
            if peer == self._transferee and progress.match == self._log.last_index:
                self._send(MessageType.TIMEOUT_NOW, peer)

    def _maybe_send_truncate(self, message: Message) -> None:
        """Answer a follower reporting older-term entries past our log with a TRUNCATE."""
        if message.commit > self._log.last_index and message.log_term < self._term:
            self._send(MessageType.TRUNCATE, message.sender, index=self._log.last_index)

    def _maybe_commit(self) -> bool:
        """Commit what a quorum persisted, if it is of our term (Figure 8). :return: whether commit moved."""
        matches = sorted((progress.match for peer, progress in self._progress.items() if peer in self._voters),
                         reverse=True)
        if len(matches) < self._quorum:
            return False
        candidate = matches[self._quorum - 1]
        if self._log.term_at(candidate) != self._term or not self._log.commit_to(candidate):
            return False
        if self._id not in self.committed_configuration.voters:
            self._hand_over_after_removal()
            return True
        if self._early_reads:
            early, self._early_reads = self._early_reads, []
            for context in early:
                self._start_read(context)
        for peer in self._others:
            # Followers with nothing new to receive learn the commit by heartbeat.
            if not self._send_append(peer, allow_empty=False):
                self._tell_commit(peer)
        return True

    def _append(self, data: str, kind: EntryKind = EntryKind.NORMAL) -> Entry:
        entry = Entry(self._log.last_index + 1, self._term, data, kind)
        self._log.append((entry,))
        if kind is EntryKind.CONFIG:
            self._note_configurations((entry,))
            self._configuration_changed()
        return entry

    def _broadcast_append(self) -> None:
        for peer in self._others:
            self._send_append(peer, allow_empty=False)

    def _send_append(self, peer: int, *, allow_empty: bool = True) -> bool:
        """Send the entries ``peer`` lacks (the snapshot if they are compacted away), unless
        its flow control says wait. :return: whether sent."""
        progress = self._progress[peer]
        if progress.paused:
            return False
        log = self._log
        previous = progress.next - 1
        previous_term = log.term_at(previous)
        if previous_term is None:
            return self._send_snapshot(peer, progress)
        entries = log.slice(progress.next, progress.next + self._max_entries)
        if not entries and not allow_empty:
            return False
        self._send(
            MessageType.APPEND,
            peer,
            index=previous,
            log_term=previous_term,
            entries=entries,
            commit=log.commit,
        )
        last = previous + len(entries)
        # The follower commits no further than the entries it has just been sent.
        progress.sent_commit = max(progress.sent_commit, min(log.commit, last))
        progress.sent(len(entries), last)
        return True

    def _send_snapshot(self, peer: int, progress: Progress) -> bool:
        """Send the latest snapshot to ``peer``, then nothing more until it has it or its
        transfer ended. :return: True (sent)."""
        # Entries are compacted only once a snapshot covers them.
        assert self._snapshot is not None
        self._send(MessageType.SNAPSHOT, peer, index=self._snapshot.index, log_term=self._snapshot.term,
                   config=self._snapshot.config)
        progress.become_snapshot(self._snapshot.index)
        return True

    def _tell_commit(self, peer: int) -> None:
        """Tell ``peer`` the commit index by heartbeat: at once, or ``commit_ticks`` from
        the first commit untold (an append sent meanwhile carries it instead)."""
        if not self._commit_ticks:
            self._send_commit(peer)
        elif self._untold_commit_elapsed is None and self._commit_untold(peer):
            self._untold_commit_elapsed = 0

    def _commit_untold(self, peer: int) -> bool:
        progress = self._progress[peer]
        return min(progress.match, self._log.commit) > progress.sent_commit

    def _send_commit(self, peer: int) -> None:
        """Tell ``peer`` a commit index it has not been told, if any."""
        if self._commit_untold(peer):
            self._send_heartbeat(peer, "")

    def _send_heartbeat(self, peer: int, context: str) -> None:
        progress = self._progress[peer]
        commit = min(progress.match, self._log.commit)
        progress.sent_commit = max(progress.sent_commit, commit)
        self._send(MessageType.HEARTBEAT, peer, commit=commit, context=context)

    def _broadcast_heartbeat(self, context: str) -> None:
        for peer in self._others:
            self._send_heartbeat(peer, context)

    def _start_read(self, context: str) -> None:
        if self._quorum == 1 and self._id in self._voters:
            self._read_states.append(ReadState(context, self._log.commit))
        elif self._reads.add(context, self._log.commit, self._id):
            self._broadcast_heartbeat(context)

    def _hand_over_after_removal(self) -> None:
        """This leader's removal committed: tell the followers, have the voter that holds
        the most of the log campaign at once (no election timeout without a leader), and
        step down. Not a voter any more, it never campaigns again."""
        for peer in self._others:
            if not self._send_append(peer, allow_empty=False):
                self._send_commit(peer)
        voters = [peer for peer in self._other_voters if peer in self._progress]
        if voters:
            # A transfer under way keeps its target: a second TimeoutNow would split the vote.
            successor = self._transferee or max(voters, key=lambda peer: (self._progress[peer].match, -peer))
            self._send(MessageType.TIMEOUT_NOW, successor)
        self._become_follower(self._term, 0)

    # -- membership --------------------------------------------------------------------

    def _note_configurations(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            config = entry.configuration
            if config is not None:
                self._configurations.append((entry.index, config))

    def _log_replaced_from(self, index: int, entries: Sequence[Entry]) -> None:
        """The log from ``index`` on was cut and ``entries`` appended there: a configuration
        that was cut is no longer in force; the one before it is again."""
        kept = [(at, config) for at, config in self._configurations[1:] if at < index]
        before = len(self._configurations)
        self._configurations[1:] = kept
        self._note_configurations(entries)
        if len(kept) + 1 != before or len(self._configurations) != before:
            self._configuration_changed()

    def _configuration_changed(self) -> None:
        """Put the last configuration in force: quorums, peers, and a leader's progress."""
        config = self._configurations[-1][1]
        if config == self._config:
            return
        self._config = config
        self._voters = config.voters
        # Everyone this node exchanges messages with: a leader replicates to learners too.
        self._others = tuple(sorted(config.ids - {self._id}))
        self._other_voters = tuple(peer for peer in self._others if peer in self._voters)
        self._quorum = len(self._voters) // 2 + 1
        self._read_states.extend(self._reads.set_voters(self._voters))
        if self._role is Role.LEADER:
            for peer in self._others:
                if peer not in self._progress:
                    # Probed from our last entry: an append finds where its log ends.
                    self._progress[peer] = Progress(match=0, next=self._log.last_index + 1,
                                                    inflights=Inflights(MAX_INFLIGHT_APPENDS))
                    self._send_append(peer)
            for peer in [peer for peer in self._progress if peer != self._id and peer not in config.ids]:
                del self._progress[peer]
            if self._transferee and self._transferee not in self._voters:
                self._transferee = 0

    # -- helpers -----------------------------------------------------------------------

    def _send(self, kind: MessageType, to: int, **fields: object) -> None:
        self._messages.append(Message(kind, self._id, to, self._term, **fields))  # type: ignore[arg-type]

    def _soft_state(self) -> SoftState:
        return SoftState(self._role, self._leader_id)

    def _draw_timeout(self) -> int:
        return self._rng.randrange(self._election_ticks, 2 * self._election_ticks)


def _compaction_point(snapshot: SnapshotMeta | None, entries: Sequence[Entry]) -> tuple[SnapshotMeta, Sequence[Entry]]:
    """Split a stored log into its compaction point and the entries after it (see the
    constructor's ``entries``).

    :raises ValueError: when the entries do not reach the snapshot, or hold another term at it.
    """
    if snapshot is None:
        return SnapshotMeta(0, 0), entries
    if not entries or entries[0].index > snapshot.index:
        return snapshot, entries
    first = entries[0]
    position = snapshot.index - first.index
    held = entries[position] if position < len(entries) else None
    if held is None or (held.index, held.term) != (snapshot.index, snapshot.term):
        raise ValueError(f"the stored log from {first.index} does not hold the snapshot's last entry "
                         f"(index {snapshot.index}, term {snapshot.term})")
    return SnapshotMeta(first.index, first.term), entries[1:]


def _well_formed_entries(message: Message) -> bool:
    """Are the entries contiguous after ``message.index``, with terms that never decrease
    nor pass the message's term? (Peers are trusted to be correct, not to be bug-free.)"""
    previous_term = message.log_term
    for offset, entry in enumerate(message.entries, start=1):
        if entry.index != message.index + offset or not previous_term <= entry.term <= message.term:
            return False
        previous_term = entry.term
    return True
