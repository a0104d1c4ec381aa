"""Membership changes in the core, one server at a time (Ongaro's dissertation, 4.1):
configuration entries in the log, in force as soon as they are appended, reverted when
cut; a leader changes membership only once its term committed an entry, one change at a
time; a removed leader hands over, then steps down; a removed node cannot disrupt."""

from __future__ import annotations

import random

import pytest

from toystore.raft.core import ChangeInProgress, LearnerBehind, NotLeader, RaftCore
from toystore.raft.membership import Configuration, Member, MembershipError, check_address
from toystore.raft.messages import Entry, EntryKind, HardState, Message, MessageType, Role, SnapshotMeta

from tests.raft.cores import make, msg, sent, take

T = MessageType
THREE = Configuration.of((1, 2, 3))


def config_entry(index: int, term: int, config: Configuration) -> Entry:
    return Entry(index, term, config.encode(), EntryKind.CONFIG)


def leader(core: RaftCore | None = None) -> RaftCore:
    """Node 1 leads 1-3 in term 1, its no-op committed (so it may change membership)."""
    core = core or make(pre_vote=False)
    core.campaign()
    sent(core)
    core.step(msg(T.VOTE_RESP, 2, 1, 1))
    sent(core)
    core.step(msg(T.APPEND_RESP, 2, 1, 1, index=1))
    sent(core)
    assert core.role is Role.LEADER and core.commit_index == 1
    return core


def acknowledge(core: RaftCore, *peers: int) -> list[Message]:
    for peer in peers:
        core.step(msg(T.APPEND_RESP, peer, 1, core.term, index=core.last_index))
    return sent(core)


# -- configurations ---------------------------------------------------------------------

def test_single_changes_are_one_learner_added_promoted_or_one_member_removed() -> None:
    with_learner = THREE.with_learner(4, "http://h4:1")
    assert with_learner.learners == {4} and with_learner.is_single_change_from(THREE)
    assert with_learner.with_voter(4).is_single_change_from(with_learner)
    assert THREE.without(2).is_single_change_from(THREE)
    assert not Configuration.of((1, 2, 3, 4)).is_single_change_from(THREE)  # a voter straight in
    assert not Configuration.of((1,)).is_single_change_from(THREE)  # two gone
    assert not Configuration.of((1, 2, 4)).is_single_change_from(THREE)  # one for another


@pytest.mark.parametrize("change", [
    lambda c: c.with_learner(2, "http://h:1"),  # present
    lambda c: c.with_voter(2),  # a voter already
    lambda c: c.without(7),  # absent
    lambda c: Configuration.of((1,)).without(1),  # the last voter
    lambda c: c.with_learner(0, "http://h:1"),
])
def test_a_change_the_configuration_does_not_allow_is_refused(change) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MembershipError):
        change(THREE)


def test_a_configuration_round_trips_and_bad_ones_are_refused() -> None:
    config = Configuration((Member(1, "http://a:1"), Member(4, "http://b:2", voter=False)))
    assert Configuration.decode(config.encode()) == config
    assert config.to_json() == [{"id": 1, "url": "http://a:1", "voter": True},
                                {"id": 4, "url": "http://b:2", "voter": False}]
    for bad in ('{"id": 1}', '[{"id": 1, "url": "x", "voter": 1}]', '[{"id": 1, "url": "x", "voter": true},'
                ' {"id": 1, "url": "y", "voter": true}]', '[{"id": 0, "url": "", "voter": true}]', "nope"):
        with pytest.raises(ValueError):
            Configuration.decode(bad)
    with pytest.raises(ValueError):
        Entry.from_json({"index": 1, "term": 1, "data": "[1]", "kind": "config"})


@pytest.mark.parametrize("url", ["ftp://h:1", "http://h:x", "h:80", "http://:80", "http://h:80/x", "http://h:1?a", 8])
def test_a_member_url_must_be_http_host_and_port(url: object) -> None:
    with pytest.raises(MembershipError):
        check_address(url)
    assert check_address("http://10.0.0.4:7004/") == "http://10.0.0.4:7004"


# -- the leader -------------------------------------------------------------------------

def test_a_learner_added_gets_the_log_at_once_and_counts_in_no_quorum() -> None:
    core = leader()
    index, _ = core.propose_configuration(THREE.with_learner(4, "http://h4:1"))
    assert core.configuration.learners == {4} and core.configuration_pending
    out = sent(core)
    assert any(m.type is T.APPEND and m.to == 4 for m in out)
    acknowledge(core, 4)
    assert core.commit_index == 1  # the leader and a learner are one voter of three
    acknowledge(core, 2)
    assert core.commit_index == index and not core.configuration_pending
    assert core.committed_configuration.learners == {4}


def test_one_change_at_a_time() -> None:
    core = leader()
    core.propose_configuration(THREE.with_learner(4, ""))
    sent(core)
    with pytest.raises(ChangeInProgress):
        core.propose_configuration(core.configuration.without(3))
    acknowledge(core, 2)
    core.propose_configuration(core.configuration.without(3))  # once committed


def test_a_new_leader_changes_nothing_before_an_entry_of_its_term_commits() -> None:
    core = make(pre_vote=False)
    core.campaign()
    sent(core)
    core.step(msg(T.VOTE_RESP, 2, 1, 1))
    sent(core)
    with pytest.raises(ChangeInProgress, match="its term"):
        core.propose_configuration(THREE.without(3))
    with pytest.raises(NotLeader):
        make(2).propose_configuration(THREE.without(3))


def test_a_change_of_two_servers_is_refused() -> None:
    core = leader()
    with pytest.raises(MembershipError):
        core.propose_configuration(Configuration.of((1, 2, 3, 4)))
    assert core.configuration == THREE and not core.configuration_pending


def test_a_leader_that_removes_itself_commits_without_itself_then_hands_over() -> None:
    core = make(peers=(1, 2, 3, 4), pre_vote=False)
    core.campaign()
    sent(core)
    core.step(msg(T.VOTE_RESP, 2, 1, 1))
    core.step(msg(T.VOTE_RESP, 3, 1, 1))
    sent(core)
    acknowledge(core, 2, 3)
    index, _ = core.propose_configuration(Configuration.of((1, 2, 3, 4)).without(1))
    sent(core)
    acknowledge(core, 4)
    assert core.commit_index < index  # its own copy does not count: one of voters 2 to 4
    out = acknowledge(core, 3)
    assert core.commit_index == index and core.role is Role.FOLLOWER and core.leader_id == 0
    assert [m.to for m in out if m.type is T.TIMEOUT_NOW] == [3]  # of the two that hold it all, the first
    for _ in range(200):
        core.tick()
    assert not [m for m in sent(core) if m.type in (T.VOTE, T.PRE_VOTE)]


def test_a_removed_follower_is_dropped_from_replication_and_its_answers_ignored() -> None:
    core = leader()
    core.propose_configuration(THREE.without(3))
    sent(core)
    acknowledge(core, 2)
    for _ in range(3):
        core.tick()
    assert {m.to for m in sent(core)} <= {2}
    core.step(msg(T.APPEND_RESP, 3, 1, 1, index=core.last_index))
    core.step(msg(T.VOTE, 3, 1, 9, index=99, log_term=9))
    assert core.role is Role.LEADER and core.term == 1


# -- followers --------------------------------------------------------------------------

def test_a_configuration_is_in_force_when_appended_and_reverts_when_cut() -> None:
    core = make(2)
    without_three = THREE.without(3)
    core.step(msg(T.APPEND, 1, 2, 1, index=0, entries=(Entry(1, 1, ""), config_entry(2, 1, without_three))))
    sent(core)
    assert core.configuration == without_three and core.committed_configuration == THREE
    # A leader of term 2 never had the entry: its own cuts it.
    core.step(msg(T.APPEND, 3, 2, 2, index=1, log_term=1, entries=(Entry(2, 2, "x"),)))
    sent(core)
    assert core.configuration == THREE and core.last_index == 2


def test_a_node_that_waits_to_be_added_never_campaigns_and_follows_a_leader() -> None:
    joining = RaftCore(4, configuration=Configuration(), rng=random.Random(1))
    for _ in range(500):
        joining.tick()
    joining.campaign()
    assert not sent(joining) and joining.role is Role.FOLLOWER
    added = THREE.with_learner(4, "")
    joining.step(msg(T.APPEND, 1, 4, 1, index=0, entries=(Entry(1, 1, ""), config_entry(2, 1, added)), commit=2))
    answers = sent(joining)
    assert [(m.type, m.index) for m in answers] == [(T.APPEND_RESP, 2)]
    assert joining.configuration == added and joining.leader_id == 1
    promoted = added.with_voter(4)
    joining.step(msg(T.APPEND, 1, 4, 1, index=2, log_term=1, entries=(config_entry(3, 1, promoted),), commit=3))
    sent(joining)
    assert joining.configuration.voters == {1, 2, 3, 4}


def test_a_snapshot_carries_the_configuration_to_a_node_that_has_none() -> None:
    joining = RaftCore(4, configuration=Configuration(), rng=random.Random(1))
    added = THREE.with_learner(4, "http://h4:1")
    joining.step(msg(T.SNAPSHOT, 1, 4, 2, index=40, log_term=2, config=added))
    ready = take(joining)
    assert ready.snapshot == SnapshotMeta(40, 2, added) and joining.configuration == added


def test_a_restarted_node_finds_its_configuration_in_its_snapshot_and_log() -> None:
    added = THREE.with_learner(4, "")
    promoted = added.with_voter(4)
    log = [Entry(6, 1, "e6"), config_entry(7, 1, promoted), Entry(8, 1, "e8")]
    core = make(2, snapshot=SnapshotMeta(6, 1, added), entries=log, applied=6,
                hard_state=HardState(term=1, commit=7))
    assert core.configuration == promoted and core.committed_configuration == promoted
    assert core.configuration_at(6) == added
    # After compacting past the configuration entry, the snapshot records it.
    for _ in range(2):
        take(core) if core.has_ready() else None
    core.compact(7)
    assert core.snapshot_meta_at(7).config == promoted and core.configuration == promoted


def test_compacting_keeps_the_configuration_of_the_snapshot() -> None:
    core = leader()
    core.propose_configuration(THREE.without(3))
    sent(core)
    acknowledge(core, 2)
    core.propose("x")
    acknowledge(core, 2)
    index = core.commit_index
    core.compact(index)
    assert core.snapshot_index == index
    core.step(msg(T.HEARTBEAT_RESP, 2, 1, 1, reject=True, reject_hint=0))  # 2 lost its disk
    snapshots = [m for m in sent(core) if m.type is T.SNAPSHOT]
    assert snapshots and snapshots[0].config == THREE.without(3)


def test_a_snapshot_message_carries_its_configuration_on_the_wire() -> None:
    message = msg(T.SNAPSHOT, 1, 4, 2, index=40, log_term=2, config=THREE.with_learner(4, "http://h:1"))
    assert Message.from_json(message.to_json()) == message
    with pytest.raises(ValueError):
        Message.from_json({**msg(T.APPEND, 1, 2, 1).to_json(), "config": THREE.to_json()})


def test_a_learner_is_promoted_only_once_it_holds_the_log() -> None:
    core = leader(make(pre_vote=False, max_entries_per_append=4))
    added = THREE.with_learner(4, "")
    core.propose_configuration(added)
    sent(core)
    acknowledge(core, 2)
    for n in range(10):
        core.propose(f"x{n}")
    acknowledge(core, 2)
    with pytest.raises(LearnerBehind, match="learner 4 holds the log to 0 of 12"):
        core.propose_configuration(added.with_voter(4))
    core.step(msg(T.APPEND_RESP, 4, 1, 1, index=8))  # within 4 of the end
    sent(core)
    core.propose_configuration(added.with_voter(4))


def test_a_learner_that_never_answered_is_not_promoted_however_short_the_log() -> None:
    core = leader()
    added = THREE.with_learner(4, "")
    core.propose_configuration(added)
    sent(core)
    acknowledge(core, 2)
    with pytest.raises(LearnerBehind):
        core.propose_configuration(added.with_voter(4))  # 3 entries: within any bound, but 4 is silent
    acknowledge(core, 4)
    core.propose_configuration(added.with_voter(4))


# -- found in review: each of these failed before its fix --------------------------------

class Net:
    """Cores on a hand-driven network: every message is delivered, unless ``allow`` says no."""

    def __init__(self, ids: tuple[int, ...]) -> None:
        self.cores = {i: RaftCore(i, configuration=Configuration.of(ids), rng=random.Random(i)) for i in ids}
        self.box: list[Message] = []
        self.reads: dict[int, list[str]] = {i: [] for i in ids}

    def add(self, node_id: int) -> None:
        self.cores[node_id] = RaftCore(node_id, configuration=Configuration(), rng=random.Random(node_id))
        self.reads[node_id] = []

    def deliver(self, allow=lambda message: True) -> None:  # type: ignore[no-untyped-def]
        for _ in range(50):
            for node_id, core in self.cores.items():
                while core.has_ready():
                    ready = core.ready()
                    self.box.extend(ready.messages)
                    self.reads[node_id] += [state.context for state in ready.read_states]
                    core.advance(ready)
            box, self.box = self.box, []
            for message in box:
                if allow(message) and message.to in self.cores:
                    self.cores[message.to].step(message)
            if not box:
                return

    def tick(self, times: int, allow=lambda message: True) -> None:  # type: ignore[no-untyped-def]
        for _ in range(times):
            for core in self.cores.values():
                core.tick()
            self.deliver(allow)

    def elect(self, node_id: int) -> RaftCore:
        core = self.cores[node_id]
        core.campaign()
        self.deliver()
        core.propose("x")
        self.deliver()
        assert core.role is Role.LEADER
        return core


def test_a_leader_that_removed_itself_confirms_no_read_by_its_own_answer() -> None:
    net = Net((1, 2, 3, 4))
    old = net.elect(1)
    old.propose_configuration(old.configuration.without(1))
    net.deliver(lambda m: m.to != 1)  # 2 to 4 hold the removal; 1 hears nothing back
    old.read_index("r")
    net.deliver(lambda m: m.sender in (1, 2) and m.to in (1, 2))  # only 2 answers: one of three voters
    assert net.reads[1] == []


def test_a_read_waiting_when_the_group_shrinks_to_its_leader_is_answered() -> None:
    net = Net((1, 2))
    leader = net.elect(1)
    leader.read_index("r")
    net.deliver(lambda m: False)  # its heartbeat is lost
    leader.propose_configuration(leader.configuration.without(2))
    net.deliver(lambda m: m.type is not T.HEARTBEAT_RESP)
    assert leader.configuration.voters == {1} and net.reads[1] == ["r"]


def test_a_leader_deposed_before_its_removal_committed_campaigns_to_commit_it() -> None:
    net = Net((1, 2))
    one, two = net.cores[1], net.elect(1) and net.cores[2]
    one.propose_configuration(one.configuration.without(1))
    net.tick(30, allow=lambda m: False)  # the removal never reaches 2; 1 loses its quorum
    assert one.role is not Role.LEADER
    net.tick(300)  # 2's votes lose to 1's longer log: 1 must lead, commit its removal, hand over
    assert two.role is Role.LEADER and two.committed_configuration.voters == {2}
    assert one.role is Role.FOLLOWER


def test_a_voter_that_lags_a_change_still_votes_for_a_new_member() -> None:
    net = Net((1, 2, 3))
    leader = net.elect(1)
    net.add(4)
    apart = lambda m: 3 not in (m.sender, m.to)  # noqa: E731 - 3 is cut off through the changes
    for change in (lambda c: c.with_learner(4, ""), lambda c: c.with_voter(4), lambda c: c.without(2)):
        leader.propose_configuration(change(leader.configuration))
        net.deliver(apart)
    assert leader.committed_configuration.voters == {1, 3, 4} and net.cores[3].configuration.voters == {1, 2, 3}
    del net.cores[1]  # 1 crashes; 3 is back: 3 and 4 are two of the three voters
    net.tick(300)
    assert {core.role for core in (net.cores[3], net.cores[4])} >= {Role.LEADER}
