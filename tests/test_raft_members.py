"""Membership changes of Raft order replicas through ``GET/POST /members``: real nodes,
SQLite stores and routes on a task.Clock (Raft messages in memory, snapshot chunks and
the routes over StubTreq). A replica added joins empty, catches up by snapshot, and
votes; bad requests change nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import treq

from twisted.internet import defer

from tests.test_primary_backup import AUTH, result_of
from tests.test_raft_replica import CATCH_UP_TIMEOUT
from tests.test_raft_snapshots import SnapshotCluster, _held
from toystore.order.raft_replica import RaftReplica
from toystore.raft.messages import Role


class MembersCluster(SnapshotCluster):
    def call(self, i: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        request = self.http.stub.request(method, f"http://r{i}{path}", headers={**AUTH, b"Content-Type": [b"application/json"]},
                                         data=json.dumps(body).encode() if body is not None else None)
        response = self.wait_long(request)
        return response.code, self.wait_long(treq.json_content(response))

    def wait_long(self, d: Any, seconds: float = 2 * CATCH_UP_TIMEOUT + 5) -> Any:
        """Runs the cluster until ``d`` has a result (an add waits for a catch-up)."""
        results: list[Any] = []
        d.addBoth(results.append)
        for _ in range(int(seconds / 0.01)):
            if results:
                break
            self.run(0.01)
        assert results, "no answer"
        return result_of(defer.succeed(None).addCallback(lambda _: results[0]))

    def members(self, i: int) -> list[dict[str, Any]]:
        status, body = self.call(i, "GET", "/members")
        assert status == 200, body
        return body["data"]["members"]


@pytest.fixture
def cluster(tmp_path: Path) -> MembersCluster:
    return MembersCluster.started(tmp_path)


def ids(members: list[dict[str, Any]]) -> list[tuple[int, bool]]:
    return [(m["id"], m["voter"]) for m in members]


def test_every_replica_answers_the_committed_members(cluster: MembersCluster) -> None:
    for i in (1, 2, 3):
        assert cluster.members(i) == [{"id": n, "url": f"http://r{n}", "voter": True} for n in (1, 2, 3)]


def test_a_replica_added_catches_up_by_snapshot_votes_and_takes_over_a_dead_ones_place(cluster: MembersCluster) -> None:
    cluster.place([f"k{i}" for i in range(45)])  # compacted: the new one needs the snapshot
    joining = cluster.boot(4, join=True)
    cluster.run(2.0)
    assert joining.node is not None and joining.node.core.role is Role.FOLLOWER  # it never campaigned
    leader = cluster.leader().id
    status, body = cluster.call(leader, "POST", "/members", {"add": {"id": 4, "url": "http://r4"}})
    assert status == 200, body
    assert ids(body["data"]["members"]) == [(1, True), (2, True), (3, True), (4, True)]
    assert cluster.chunks[4], "caught up by snapshot"
    assert _held(joining) == _held(cluster.leader())
    # The old replica's disk dies; it is removed, and the group of 1, 2 and 4 goes on without it.
    gone = next(i for i in (1, 2, 3) if i != leader)
    cluster.crash(gone)
    status, body = cluster.call(leader, "POST", "/members", {"remove": gone})
    assert status == 200 and gone not in [m["id"] for m in body["data"]["members"]]
    other = next(i for i in (1, 2, 3) if i not in (leader, gone))
    cluster.crash(other)  # with 2 of {leader, other, 4} still up, orders commit only with 4's vote
    outcome = cluster.place(["with-the-new-one"])
    assert outcome[0][0].number == 45
    assert _held(joining)[-1] == (45, "with-the-new-one")


def test_a_restart_takes_its_members_from_disk_not_from_the_environment(cluster: MembersCluster) -> None:
    leader = cluster.leader().id
    removed = next(i for i in (1, 2, 3) if i != leader)
    assert cluster.call(leader, "POST", "/members", {"remove": removed})[0] == 200
    cluster.run(0.5)
    survivor = next(i for i in (1, 2, 3) if i not in (leader, removed))
    cluster.crash(survivor)
    restarted = cluster.boot(survivor)  # REPLICAS still names all three
    assert restarted.node is not None
    assert restarted.node.core.configuration.ids == {leader, survivor}


def test_a_follower_answers_421_with_the_leader(cluster: MembersCluster) -> None:
    leader = cluster.leader().id
    follower = cluster.follower()
    status, body = cluster.call(follower, "POST", "/members", {"remove": 3})
    assert status == 421 and body["error"]["leader_id"] == leader
    assert body["error"]["leader_url"] == f"http://r{leader}"
    assert len(cluster.members(leader)) == 3


@pytest.mark.parametrize("body, message", [
    ({}, "The body is"),
    ({"add": {"id": 4}}, '"add" is'),
    ({"add": {"id": "4", "url": "http://r4"}}, "A member id"),
    ({"add": {"id": 4, "url": "r4:80"}}, "http://host:port"),
    ({"add": {"id": 1, "url": "http://r1"}, "remove": 2}, "The body is"),
    ({"add": {"id": 2, "url": "http://elsewhere:1"}}, "Server 2 is a member already."),
    ({"remove": 9}, "Server 9 is not a member of the group."),
    ({"remove": 0}, "A member id"),
    ({"remove": True}, "A member id"),
])
def test_a_bad_change_is_refused_with_400_and_changes_nothing(cluster: MembersCluster, body: Any,
                                                              message: str) -> None:
    leader = cluster.leader().id
    before = cluster.members(leader)
    status, answer = cluster.call(leader, "POST", "/members", body)
    assert status == 400 and message in answer["error"]["message"]
    assert cluster.members(leader) == before and cluster.leader().node.core.configuration_pending is False


def test_a_learner_that_cannot_catch_up_is_removed_again_and_the_add_answers_504(cluster: MembersCluster) -> None:
    cluster.place([f"k{i}" for i in range(45)])
    leader = cluster.leader().id
    before = cluster.members(leader)
    # 4 never started: it is a learner that never answers.
    adding = cluster.http.stub.post(f"http://r{leader}/members", headers={**AUTH, b"Content-Type": [b"application/json"]},
                                    data=json.dumps({"add": {"id": 4, "url": "http://r4"}}).encode())
    cluster.run(0.2)
    assert [m["id"] for m in cluster.members(leader)] == [1, 2, 3, 4]  # a learner meanwhile
    status, answer = cluster.call(leader, "POST", "/members", {"remove": 3})
    assert status == 409 and "under way" in answer["error"]["message"]
    response = cluster.wait_long(adding)
    answer = cluster.wait_long(treq.json_content(response))
    assert response.code == 504 and "membership is unchanged" in answer["error"]["message"], answer
    assert cluster.members(leader) == before


def test_removing_the_leader_hands_over_and_the_old_leader_stays_out(cluster: MembersCluster) -> None:
    old = cluster.leader().id
    status, body = cluster.call(old, "POST", "/members", {"remove": old})
    assert status == 200 and old not in [m["id"] for m in body["data"]["members"]]
    cluster.run(1.0)
    new = cluster.leader()
    assert new.id != old
    assert cluster.place(["after"])[0][0].number == 0
    cluster.run(5.0)
    removed: RaftReplica = cluster.replicas[old]
    assert removed.node is not None and removed.node.core.role is Role.FOLLOWER
    assert cluster.leader().id == new.id
