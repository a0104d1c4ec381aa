"""Membership changes of a real order group (issue 16): a replica whose disk died is
replaced online under load, through ``python -m toystore.admin``, and the frontend
follows; bad requests to ``/members`` and the command line change nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Callable

from toystore.bench.orderload import OrderLoad, orders_on
from toystore.cluster import LocalCluster, http_json


def admin(cluster: LocalCluster, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = cluster.environment()
    if token is not None:
        env["TOYSTORE_CLUSTER_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "toystore.admin", *args], env=env, capture_output=True, text=True,
                          timeout=180)


def members(cluster: LocalCluster, replica_id: int) -> list[dict[str, Any]]:
    status, body = cluster.get(f"order-{replica_id}", "/members")
    assert status == 200, body
    return body["data"]["members"]


def frontend_leader(cluster: LocalCluster) -> int | None:
    return http_json("GET", cluster.frontend_url + "/health")[1]["data"].get("leader_id")


def test_a_replica_whose_disk_died_is_replaced_under_load_and_the_frontend_follows(
        start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster(initial_stock=10**6, snapshot_every=300)
    leader = cluster.wait_for(cluster.leader, 10, "a leader")
    gone = next(i for i in cluster.replica_ids if i != leader)
    with OrderLoad(cluster.frontend_url, connections=16) as load:
        time.sleep(1.5)
        began = time.monotonic()
        cluster.wipe(gone)
        new = cluster.add_replica()
        added = admin(cluster, "add", str(new), cluster.replica_url(new))
        assert added.returncode == 0, added.stderr
        removed = admin(cluster, "remove", str(gone))
        assert removed.returncode == 0, removed.stderr
        replaced = time.monotonic()
        # The frontend prefers the highest id: it has leadership moved to the new member.
        cluster.wait_for(lambda: frontend_leader(cluster) == new, 15, "the frontend sending to the new member")
        led_by_new = time.monotonic()
        time.sleep(1.5)
        assert load.rate(led_by_new, led_by_new + 1.5) > 0, "no order committed through the new leader"
    pause = load.longest_pause(began, led_by_new)
    assert [m["id"] for m in members(cluster, new)] == sorted({*cluster.replica_ids} - {gone})
    assert "voter" in removed.stdout and str(gone) not in [line.split()[0] for line in removed.stdout.splitlines()]
    assert not load.failed, load.failed[:10]
    survivors = [i for i in cluster.replica_ids if i != gone]
    cluster.wait_for(lambda: len({len(orders_on(cluster, i)) for i in survivors}) == 1, 20, "replicas converged",
                     interval=0.5)
    history = {order["number"]: order["request_id"] for order in orders_on(cluster, new)}
    lost = [(key, number) for _, key, number in load.acknowledged if history.get(number) != key]
    assert load.acknowledged and not lost, lost[:10]
    print(f"replaced {gone} by {new} in {replaced - began:.1f} s under 16 connections; longest pause in "
          f"acknowledged orders {pause:.2f} s; {len(load.acknowledged)} orders, none failed")


def test_bad_membership_requests_and_commands_change_nothing(start_cluster: Callable[..., LocalCluster]) -> None:
    cluster = start_cluster()
    # The frontend soon has leadership moved to the highest id: ask that one, once it leads.
    leader = max(cluster.replica_ids)
    cluster.wait_for(lambda: cluster.leader() == leader, 15, "the highest id leading")
    before = members(cluster, leader)
    url = cluster.replica_url(leader) + "/members"
    token = cluster.config.token
    for body, status in [({"add": {"id": 2, "url": "http://127.0.0.1:9"}}, 400), ({"remove": 7}, 400),
                         ({"add": {"id": 4, "url": "not a url"}}, 400), ({"drop": 1}, 400), ([1], 400)]:
        answer = http_json("POST", url, token=token, body=body)
        assert answer[0] == status and answer[1]["error"]["message"], (body, answer)
    follower = next(i for i in cluster.replica_ids if i != leader)
    answer = http_json("POST", cluster.replica_url(follower) + "/members", token=token, body={"remove": 1})
    assert answer[0] == 421 and answer[1]["error"]["leader_url"] == cluster.replica_url(leader)
    assert http_json("POST", url, body={"remove": 1})[0] == 401
    for args, says in [(("remove", "7"), "not a member"), (("add", "2", "http://127.0.0.1:9"), "member already"),
                       (("add", "x", "http://127.0.0.1:9"), "whole number"), (("drop", "1"), "invalid choice")]:
        done = admin(cluster, *args)
        assert done.returncode == 1 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done
    refused = admin(cluster, "remove", "1", token="wrong")
    assert refused.returncode == 1 and "token" in refused.stderr, refused
    nowhere = admin(cluster, "--replicas", "1=http://127.0.0.1:9", "members")
    assert nowhere.returncode == 1 and "no order replica of 1=http://127.0.0.1:9" in nowhere.stderr, nowhere
    listing = admin(cluster, "members")
    assert listing.returncode == 0 and listing.stdout.split()[:3] == ["ID", "URL", "ROLE"]
    assert all(members(cluster, i) == before for i in cluster.replica_ids)
