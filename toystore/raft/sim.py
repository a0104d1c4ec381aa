"""A deterministic simulated cluster of :class:`~toystore.raft.core.RaftCore` instances.

Time is a tick counter; the network drops, delays, shuffles and partitions messages;
nodes crash (keeping only what their Ready persisted, their snapshot, and what they
applied) and restart. Each node is driven the way the real node drives its core:
install the Ready's snapshot if it has one, persist its hard state and entries, then
send its messages, then apply its committed entries, then advance. With compaction on,
a node snapshots its state machine every so many applied entries and tells its core;
a SNAPSHOT message carries the sender's snapshot beside it, as the real hosts' transfer
does, and the sender learns whether it got through. An :class:`InvariantChecker` looks
at the cluster after every step and raises :class:`InvariantViolation`, naming the
seed, at the first breach.

Everything random comes from one ``random.Random(seed)``, so a seed replays a run.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from toystore.raft.core import ChangeInProgress, NotLeader, RaftCore
from toystore.raft.membership import Configuration, MembershipError
from toystore.raft.messages import Entry, HardState, Message, MessageType, Ready, ReadState, Role, SnapshotMeta

#: Ticks per simulated second: with the default 10-tick election timeout, an election
#: takes 0.5 to 1 s and heartbeats go every 50 ms, as in the MIT 6.824 labs.
TICKS_PER_SECOND = 20


class InvariantViolation(AssertionError):
    """A Raft safety property failed."""


#: A snapshot of the simulated state machine: every entry applied up to its index.
SnapshotData = tuple[Entry, ...]


@dataclass
class SimStorage:
    """What a node's disk holds: exactly what its Readies persisted, and its snapshot.

    :param entries: the stored log, from the compaction point on.
    :param snapshot_data: the state machine at ``snapshot``.
    """

    hard_state: HardState = HardState()
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    snapshot_data: SnapshotData = ()

    def persist(self, ready: Ready) -> None:
        """Write a Ready's hard state and entries, as the contract asks of storage."""
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state
        if ready.entries:
            first = ready.entries[0].index
            start = self.entries[0].index if self.entries else self._next_index()
            if not start <= first <= start + len(self.entries):
                raise InvariantViolation(f"Ready entries start at {first}, the stored log holds "
                                         f"{len(self.entries)} from {start}")
            del self.entries[first - start :]
            self.entries.extend(ready.entries)

    def keep_snapshot(self, snapshot: SnapshotMeta, data: SnapshotData, compaction_point: int) -> None:
        """Store the node's own snapshot, then delete the entries before the compaction point."""
        self.snapshot, self.snapshot_data = snapshot, data
        if self.entries:
            del self.entries[: max(0, compaction_point - self.entries[0].index)]

    def install(self, snapshot: SnapshotMeta, data: SnapshotData) -> None:
        """Store a leader's snapshot in place of the whole log."""
        self.snapshot, self.snapshot_data = snapshot, data
        self.entries.clear()

    def _next_index(self) -> int:
        if self.entries:
            return self.entries[-1].index + 1
        return self.snapshot.index + 1 if self.snapshot is not None else 1


@dataclass
class SimNode:
    """One simulated server: its disk, its state machine's history, and its core when up.

    :param applied: every entry applied, in log sequence (the state machine survives
        crashes, as a real host's durable state does); an installed snapshot replaces it.
    :param received_snapshot: the last snapshot that came with a SNAPSHOT message, kept
        until the core says to install it.
    :param bootstrap: the configuration it was first started with (empty: it waits to be added).
    """

    id: int
    bootstrap: Configuration = Configuration()
    storage: SimStorage = field(default_factory=SimStorage)
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    core: RaftCore | None = None
    received_snapshot: tuple[SnapshotMeta, SnapshotData] | None = None
    # The last term in which the checker saw this node lead.
    led_term: int = 0


class SimNetwork:
    """Delivers messages after a delay, maybe shuffled, dropped or cut by a partition.

    Nodes carry a group label and only nodes with the same label reach each other;
    label 0 is the "connected" majority side that tests watch. A message may carry an
    attachment (a SNAPSHOT, its snapshot); the SNAPSHOT messages that are lost wait in
    :attr:`lost_snapshots` for their senders to hear of it, as a failed transfer's would.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        #: Probability that a message is lost.
        self.drop_rate = 0.0
        #: Delivery delay in ticks, drawn uniformly from this inclusive range.
        self.delay = (0, 0)
        #: Shuffle messages due at the same tick instead of keeping the sending sequence.
        self.shuffle = False
        #: Probability that a message is held back much longer (6.824's long delays).
        self.long_delay_rate = 0.0
        self.long_delay = (4, 2 * TICKS_PER_SECOND)
        self._labels: dict[int, int] = {}
        self._isolated = itertools.count(-1, -1)
        # (due tick, rank within the tick, unique sequence number, message, attachment): a heap.
        self._queue: list[tuple[int, float, int, Message, object]] = []
        self._sequence = itertools.count()
        #: How many messages of each type nodes sent (lost ones included).
        self.sent: Counter[MessageType] = Counter()
        self.lost_snapshots: list[Message] = []

    def connected(self, a: int, b: int) -> bool:
        """Can ``a`` and ``b`` reach each other?"""
        return self._labels.get(a, 0) == self._labels.get(b, 0)

    def in_main_group(self, node: int) -> bool:
        """Is ``node`` on the side tests call connected?"""
        return self._labels.get(node, 0) == 0

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the network: each group talks only within itself; the first is the main group."""
        self._labels = {}
        for label, group in enumerate(groups):
            for node in group:
                self._labels[node] = label

    def disconnect(self, node: int) -> None:
        """Cut ``node`` off from everyone."""
        self._labels[node] = next(self._isolated)

    def connect(self, node: int) -> None:
        """Put ``node`` back in the main group."""
        self._labels.pop(node, None)

    def heal(self) -> None:
        """Remove every partition."""
        self._labels = {}

    def set_unreliable(self, unreliable: bool) -> None:
        """Lose 10% of messages and delay and shuffle the rest a little (6.824's unreliable net)."""
        self.drop_rate = 0.1 if unreliable else 0.0
        self.delay = (0, 2) if unreliable else (0, 0)
        self.shuffle = unreliable

    def send(self, message: Message, now: int, attachment: object = None) -> None:
        """Queue ``message``, unless it is lost or its receiver is unreachable."""
        self.sent[message.type] += 1
        if not self.connected(message.sender, message.to) or self._rng.random() < self.drop_rate:
            self.lose(message)
            return
        late = self.long_delay_rate and self._rng.random() < self.long_delay_rate
        due = now + self._rng.randint(*(self.long_delay if late else self.delay))
        sequence = next(self._sequence)
        rank = self._rng.random() if self.shuffle else sequence
        heapq.heappush(self._queue, (due, rank, sequence, message, attachment))

    def lose(self, message: Message) -> None:
        """``message`` did not get through."""
        if message.type is MessageType.SNAPSHOT:
            self.lost_snapshots.append(message)

    def drop_from(self, node: int) -> None:
        """Lose every message ``node`` sent that is still in flight (it crashed mid-send)."""
        self._queue = [item for item in self._queue if item[3].sender != node]
        heapq.heapify(self._queue)

    def pop_due(self, now: int) -> tuple[Message, object] | None:
        """:return: the next message to deliver at ``now`` that can still get through, if
        any, with its attachment."""
        while self._queue and self._queue[0][0] <= now:
            *_, message, attachment = heapq.heappop(self._queue)
            if self.connected(message.sender, message.to):
                return message, attachment
            self.lose(message)
        return None


class InvariantChecker:
    """Raft's safety properties, checked as the cluster runs.

    - State machine safety: no two nodes apply different entries at one index, and a
      snapshot holds exactly the entries applied up to its index.
    - Applied indexes only grow, one entry at a time (or to an installed snapshot's
      index), across restarts too.
    - Election safety: at most one leader per term.
    - Leader completeness: an entry applied anywhere is in the log of every leader of a
      later term than the one that committed it.
    - Linearizable reads: a ReadIndex answer covers every entry applied anywhere before
      the request.
    - Membership: each committed configuration differs from the one before by a single
      server (so majorities of the two overlap and no two can elect leaders apart).
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        # index -> (entry, an upper bound on the term in which it was committed)
        self.committed: dict[int, tuple[Entry, int]] = {}
        self._leaders: dict[int, int] = {}
        # ReadIndex context -> the highest index applied anywhere when the read began.
        self._read_floors: dict[str, int] = {}
        self.configuration: Configuration | None = None  # the latest committed

    def fail(self, now: int, problem: str) -> None:
        """Raise a violation that names how to replay it."""
        raise InvariantViolation(f"seed={self._seed} tick={now}: {problem}")

    def on_apply(self, now: int, node: SimNode, entry: Entry, max_term: int) -> None:
        """``node`` applies ``entry`` while no node's term is above ``max_term``."""
        if entry.index != len(node.applied) + 1:
            self.fail(now, f"node {node.id} applies index {entry.index} after {len(node.applied)}")
        known = self.committed.get(entry.index)
        if known is None:
            # The committing leader's term is at most every term now in the cluster.
            self.committed[entry.index] = (entry, max_term)
            config = entry.configuration
            if config is not None:
                # Entries are committed in sequence: the first node to apply this one
                # applied every earlier one, so this follows the latest committed one.
                if self.configuration is not None and not config.is_single_change_from(self.configuration):
                    self.fail(now, f"committed {config} does not follow {self.configuration} by one server")
                self.configuration = config
        elif known[0] != entry:
            self.fail(now, f"node {node.id} applies {entry} where another node applied {known[0]}")

    def on_install(self, now: int, node: SimNode, snapshot: SnapshotMeta, data: SnapshotData) -> None:
        """``node`` replaces its state machine with the snapshot ``data`` at ``snapshot``."""
        if snapshot.index <= len(node.applied):
            self.fail(now, f"node {node.id} installs a snapshot at {snapshot.index} after applying {len(node.applied)}")
        if len(data) != snapshot.index or data[-1].term != snapshot.term:
            self.fail(now, f"node {node.id} installs a snapshot that does not end at {snapshot}")
        for index, entry in enumerate(data, start=1):
            known = self.committed.get(index)
            if known is None or known[0] != entry:
                self.fail(now, f"node {node.id} installs a snapshot holding {entry}, applied elsewhere: {known}")

    def on_read_request(self, context: str) -> None:
        """A ReadIndex request starts: its answer must cover every write applied so far."""
        self._read_floors[context] = max(self.committed, default=0)

    def on_read_state(self, now: int, node: SimNode, state: ReadState) -> None:
        """Linearizable reads: a read point never predates a write applied before the read."""
        floor = self._read_floors.get(state.context, 0)
        if state.index < floor:
            self.fail(now, f"node {node.id} answers read {state.context!r} at {state.index} below {floor}")

    def on_leader(self, now: int, node: SimNode, core: RaftCore) -> None:
        """``node`` is leader of ``core.term`` (checked once per term it leads)."""
        other = self._leaders.setdefault(core.term, node.id)
        if other != node.id:
            self.fail(now, f"nodes {other} and {node.id} both lead term {core.term}")
        log, first = core.log, core.first_index
        for index, (entry, commit_term) in self.committed.items():
            if commit_term >= core.term:
                continue
            # Compacted entries live on in the state machine, which holds at least them.
            held = node.applied[index - 1] if index < first else log[index - first] if index <= core.last_index else None
            if held != entry:
                self.fail(now, f"leader {node.id} of term {core.term} lacks committed {entry}")


class Cluster:
    """N simulated nodes, ids 1..N, on one network and one clock.

    :param size: the number of voting nodes (ids 1 to ``size``).
    :param learners: the number of non-voting nodes after them.
    :param seed: seeds every random choice of the run (network, timeouts, tests).
    :param snapshot_every: a node snapshots its state machine once it applied this many
        entries since its last snapshot (0: never, and logs keep every entry).
    :param snapshot_keep: the entries before a snapshot that its node's log keeps.

    Members join with :meth:`add_node` and change with :meth:`change_membership`.
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        learners: int = 0,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_entries_per_append: int = 512,
        snapshot_every: int = 0,
        snapshot_keep: int = 0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0
        self.ids = tuple(range(1, size + learners + 1))
        self.voters = self.ids[:size]
        self.election_ticks = election_ticks
        self.network = SimNetwork(random.Random(self.rng.getrandbits(64)))
        self.checker = InvariantChecker(seed)
        initial = Configuration.of(self.voters, self.ids[size:])
        self.checker.configuration = initial
        self.nodes = {node_id: SimNode(node_id, bootstrap=initial) for node_id in self.ids}
        self.snapshot_every = snapshot_every
        self.snapshot_keep = snapshot_keep
        self._options = dict(
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            max_entries_per_append=max_entries_per_append,
        )
        for node_id in self.ids:
            self.restart(node_id)

    # -- faults ------------------------------------------------------------------------

    def crash(self, node_id: int) -> None:
        """Stop a node, losing everything its Readies did not persist and the
        messages it has not finished sending."""
        self.nodes[node_id].core = None
        self.network.drop_from(node_id)

    def restart(self, node_id: int) -> None:
        """Start a node (crashing it first if up) from its persisted state."""
        if self.is_up(node_id):
            self.crash(node_id)
        node = self.nodes[node_id]
        node.led_term = 0
        node.core = RaftCore(
            node_id,
            configuration=node.bootstrap,
            hard_state=node.storage.hard_state,
            snapshot=node.storage.snapshot,
            entries=node.storage.entries,
            applied=len(node.applied),
            rng=random.Random(self.rng.getrandbits(64)),
            **self._options,  # type: ignore[arg-type]
        )
        self._flush(node)

    def add_node(self, node_id: int) -> None:
        """Start a new, empty node that waits to be added (``--join``): it never campaigns."""
        assert node_id not in self.nodes, f"node {node_id} exists"
        self.ids = (*self.ids, node_id)
        self.nodes[node_id] = SimNode(node_id)
        self.restart(node_id)

    def wipe(self, node_id: int) -> None:
        """Crash a node and lose its disk; it comes back empty, waiting to be added again."""
        self.crash(node_id)
        self.nodes[node_id] = SimNode(node_id)

    def change_membership(self, node_id: int, change: Callable[[Configuration], Configuration]) -> tuple[int, int] | None:
        """Propose ``change(configuration in force)`` on a node. :return: (index, term), or
        None if it is down, not leader, a change is under way, or the change is not allowed."""
        node = self.nodes[node_id]
        if node.core is None:
            return None
        try:
            placed = node.core.propose_configuration(change(node.core.configuration))
        except (NotLeader, ChangeInProgress, MembershipError):
            return None
        self._flush(node)
        return placed

    def is_up(self, node_id: int) -> bool:
        """Is the node running?"""
        return self.nodes[node_id].core is not None

    def core(self, node_id: int) -> RaftCore:
        """The running core of a node (which must be up)."""
        core = self.nodes[node_id].core
        assert core is not None, f"node {node_id} is down"
        return core

    # -- time --------------------------------------------------------------------------

    def tick(self, count: int = 1) -> None:
        """Let ``count`` ticks pass: deliver due messages and tick every running node."""
        for _ in range(count):
            self.deliver()
            up = [node for node in self.nodes.values() if node.core is not None]
            self.rng.shuffle(up)
            for node in up:
                if node.core is not None:
                    node.core.tick()
                    self._flush(node)
            self.deliver()
            self.now += 1

    def deliver(self) -> None:
        """Deliver every message due by now, including those it causes without delay.

        The sender of a SNAPSHOT hears how it went once it has been delivered or lost,
        as a real host does when its transfer ends."""
        while True:
            due = self.network.pop_due(self.now)
            lost, self.network.lost_snapshots = self.network.lost_snapshots, []
            for message in lost:
                self._report_snapshot(message, failed=True)
            if due is None:
                if lost:
                    continue  # the reports may have sent messages due now
                return
            message, attachment = due
            node = self.nodes[message.to]
            if node.core is None:
                self.network.lose(message)
                continue
            if message.type is MessageType.SNAPSHOT:
                snapshot = SnapshotMeta(message.index, message.log_term, message.config)
                node.received_snapshot = (snapshot, attachment)  # type: ignore[assignment]
            node.core.step(message)
            self._flush(node)
            if message.type is MessageType.SNAPSHOT:
                self._report_snapshot(message, failed=False)

    def run_until(self, predicate: Callable[[], bool], max_ticks: int) -> bool:
        """Tick until ``predicate()`` holds. :return: whether it did within ``max_ticks``."""
        for _ in range(max_ticks):
            if predicate():
                return True
            self.tick()
        return predicate()

    # -- client requests ---------------------------------------------------------------

    def propose(self, node_id: int, data: str) -> tuple[int, int] | None:
        """Propose on a node. :return: (index, term), or None if it is down or not leader."""
        node = self.nodes[node_id]
        if node.core is None:
            return None
        try:
            placed = node.core.propose(data)
        except NotLeader:
            return None
        self._flush(node)
        return placed

    def read_index(self, node_id: int, context: str) -> bool:
        """Ask a node for a ReadIndex. :return: False if it is down or not leader."""
        node = self.nodes[node_id]
        if node.core is None:
            return False
        self.checker.on_read_request(context)
        try:
            node.core.read_index(context)
        except NotLeader:
            return False
        self._flush(node)
        return True

    def transfer_leadership(self, node_id: int, target: int) -> None:
        """Ask a (leader) node to hand leadership to ``target``."""
        core = self.core(node_id)
        core.transfer_leadership(target)
        self._flush(self.nodes[node_id])

    # -- observation -------------------------------------------------------------------

    def leaders(self, among: Iterable[int] | None = None) -> dict[int, int]:
        """:return: term -> id of the running nodes that believe they lead."""
        found: dict[int, int] = {}
        for node_id in self.ids if among is None else among:
            core = self.nodes[node_id].core
            if core is not None and core.role is Role.LEADER:
                found[core.term] = node_id
        return found

    def leader(self) -> int | None:
        """The running leader of the highest term, if any."""
        found = self.leaders()
        return found[max(found)] if found else None

    def connected(self) -> list[int]:
        """The running nodes in the network's main group."""
        return [node_id for node_id in self.ids if self.is_up(node_id) and self.network.in_main_group(node_id)]

    def n_committed(self, index: int) -> tuple[int, str | None]:
        """:return: how many nodes applied ``index``, and its data."""
        count, data = 0, None
        for node in self.nodes.values():
            if len(node.applied) >= index:
                count += 1
                data = node.applied[index - 1].data
        return count, data

    def check_one_leader(self, max_ticks: int = 10 * TICKS_PER_SECOND) -> int:
        """Wait for exactly one leader among the connected nodes (6.824's checkOneLeader).

        :raises AssertionError: if none appears, or two lead the same term.
        """
        deadline = self.now + max_ticks
        while self.now < deadline:
            self.tick(self.rng.randint(9, 11))
            found = self.leaders(self.connected())
            if found:
                return found[max(found)]
        raise AssertionError(f"seed={self.seed}: expected one leader, got none")

    def check_no_leader(self) -> None:
        """Assert that no connected node believes it leads."""
        found = self.leaders(self.connected())
        assert not found, f"seed={self.seed}: expected no leader among connected, got {found}"

    def check_terms(self) -> int:
        """Assert that the connected nodes agree on the term. :return: that term."""
        terms = {self.core(node_id).term for node_id in self.connected()}
        assert len(terms) == 1, f"seed={self.seed}: connected nodes disagree on the term: {terms}"
        return terms.pop()

    def check_logs_match(self) -> None:
        """Log matching, over what the running nodes' logs still hold: where two logs have
        an entry of the same index and term, they are the same up to it.

        :raises InvariantViolation: at the first pair of logs that breaks it.
        """
        up = [self.core(node_id) for node_id in self.ids if self.is_up(node_id)]
        for a, b in itertools.combinations(up, 2):
            matched = False
            for index in range(min(a.last_index, b.last_index), max(a.first_index, b.first_index) - 1, -1):
                ours, theirs = a.log[index - a.first_index], b.log[index - b.first_index]
                matched = matched or ours.term == theirs.term
                if matched and ours != theirs:
                    self.checker.fail(self.now, f"nodes {a.id} and {b.id} hold a same entry past {index}, "
                                                f"but {ours} and {theirs} at it")

    def one(self, data: str, expected: int, *, retry: bool = True, max_ticks: int = 10 * TICKS_PER_SECOND) -> int:
        """Get ``data`` committed by at least ``expected`` nodes (6.824's ``one``).

        Proposes to whichever connected node accepts, waits up to 2 s for the commit,
        and tries again (if ``retry``) until ``max_ticks`` have passed.

        :return: the index where ``data`` was committed.
        """
        deadline = self.now + max_ticks
        start = 0
        while self.now < deadline:
            index = None
            for offset in range(len(self.ids)):
                node_id = self.ids[(start + offset) % len(self.ids)]
                if node_id in self.connected() and (placed := self.propose(node_id, data)) is not None:
                    index = placed[0]
                    start = offset + 1
                    break
            if index is None:
                self.tick()
                continue
            waited_until = self.now + 2 * TICKS_PER_SECOND
            while self.now < waited_until:
                count, value = self.n_committed(index)
                if count >= expected and value == data:
                    return index
                self.tick()
            if not retry:
                break
        raise AssertionError(f"seed={self.seed}: {data!r} not committed by {expected} nodes")

    # -- driving a node ----------------------------------------------------------------

    def _flush(self, node: SimNode) -> None:
        """Do a node's Readies as the real node does: install, persist, send, apply,
        advance; then take a snapshot if one is due."""
        core = node.core
        assert core is not None
        while core.has_ready():
            ready = core.ready()
            if ready.snapshot is not None:
                self._install(node, ready.snapshot)
            node.storage.persist(ready)
            for message in ready.messages:
                attachment = None
                if message.type is MessageType.SNAPSHOT:
                    assert node.storage.snapshot == SnapshotMeta(message.index, message.log_term, message.config)
                    attachment = node.storage.snapshot_data
                self.network.send(message, self.now, attachment)
            if ready.committed_entries:
                max_term = self._max_term()
                for entry in ready.committed_entries:
                    self.checker.on_apply(self.now, node, entry, max_term)
                    node.applied.append(entry)
            for state in ready.read_states:
                self.checker.on_read_state(self.now, node, state)
                node.read_states.append(state)
            core.advance(ready)
            self._maybe_snapshot(node, core)
        if core.role is Role.LEADER and node.led_term != core.term:
            node.led_term = core.term
            self.checker.on_leader(self.now, node, core)

    def _install(self, node: SimNode, snapshot: SnapshotMeta) -> None:
        """Replace the state machine and the stored log with the snapshot received."""
        received = node.received_snapshot
        if received is None or received[0] != snapshot:
            raise InvariantViolation(f"node {node.id} is to install {snapshot}, but received {received}")
        data = received[1]
        self.checker.on_install(self.now, node, snapshot, data)
        node.applied = list(data)
        node.storage.install(snapshot, data)

    def _maybe_snapshot(self, node: SimNode, core: RaftCore) -> None:
        """Snapshot the state machine once ``snapshot_every`` entries were applied since
        the last snapshot, make it durable, then let the core compact its log."""
        if not self.snapshot_every or core.applied_index - core.snapshot_index < self.snapshot_every:
            return
        snapshot = core.snapshot_meta_at(core.applied_index)
        compaction_point = core.compact(snapshot.index, keep=self.snapshot_keep)
        node.storage.keep_snapshot(snapshot, tuple(node.applied), compaction_point)

    def _report_snapshot(self, message: Message, *, failed: bool) -> None:
        """Tell the sender of a SNAPSHOT how its transfer went, if it still runs the term
        it sent it in (a restarted node knows nothing of transfers it started before)."""
        sender = self.nodes[message.sender]
        if sender.core is not None and sender.core.term == message.term:
            sender.core.report_snapshot(message.to, message.index, failed=failed)
            self._flush(sender)

    def _max_term(self) -> int:
        return max(
            node.core.term if node.core is not None else node.storage.hard_state.term for node in self.nodes.values()
        )
