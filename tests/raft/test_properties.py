"""Random fault schedules against the simulated cluster (hypothesis).

Safety is checked after every step by :class:`~toystore.raft.sim.InvariantChecker`
(state machine safety, one leader per term, leader completeness, growing applied
indexes, linearizable ReadIndex), with and without log compaction. Liveness: once every fault heals, a leader emerges
and what it is given commits on every node within a bound.

``derandomize=True`` makes the examples a function of the code alone, so CI runs the
same schedules every time; a failure prints the schedule and the cluster seed.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toystore.raft.sim import TICKS_PER_SECOND, Cluster

MAX_SIZE = 6  # five voters and a learner

Action = tuple[Any, ...]

actions: st.SearchStrategy[Action] = st.one_of(
    st.tuples(st.just("tick"), st.integers(1, 3 * TICKS_PER_SECOND // 2)),
    st.tuples(st.just("propose"), st.integers(1, 8)),
    st.tuples(st.just("crash"), st.integers(1, MAX_SIZE)),
    st.tuples(st.just("restart"), st.integers(1, MAX_SIZE)),
    st.tuples(st.just("partition"), st.frozensets(st.integers(1, MAX_SIZE))),
    st.tuples(st.just("heal")),
    st.tuples(st.just("drop"), st.sampled_from([0.0, 0.05, 0.2, 0.5])),
    st.tuples(st.just("delay"), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("transfer"), st.integers(1, MAX_SIZE)),
    st.tuples(st.just("read")),
)


def run_action(cluster: Cluster, action: Action, serial: itertools.count[int]) -> None:
    """Apply one step of a fault schedule; ids beyond the cluster's size wrap around."""
    kind, *args = action
    size = len(cluster.ids)
    if kind == "tick":
        cluster.tick(args[0])
    elif kind == "propose":
        leader = cluster.leader()
        for _ in range(args[0]):
            target = leader if leader is not None else cluster.rng.choice(cluster.ids)
            cluster.propose(target, f"v{next(serial)}")
    elif kind == "crash":
        cluster.crash((args[0] - 1) % size + 1)
    elif kind == "restart":
        cluster.restart((args[0] - 1) % size + 1)
    elif kind == "partition":
        side = {(node - 1) % size + 1 for node in args[0]}
        cluster.network.partition(side, set(cluster.ids) - side)
    elif kind == "heal":
        cluster.network.heal()
    elif kind == "drop":
        cluster.network.drop_rate = args[0]
    elif kind == "delay":
        cluster.network.delay = (0, args[0])
        cluster.network.shuffle = args[1]
    elif kind == "transfer":
        leader = cluster.leader()
        if leader is not None:
            cluster.transfer_leadership(leader, (args[0] - 1) % size + 1)
    elif kind == "read":
        leader = cluster.leader()
        if leader is not None:
            cluster.read_index(leader, f"r{next(serial)}")


def heal_everything(cluster: Cluster) -> None:
    """End every fault: a reliable network, no partition, every node up."""
    cluster.network.heal()
    cluster.network.drop_rate = 0.0
    cluster.network.delay = (0, 0)
    cluster.network.shuffle = False
    cluster.network.long_delay_rate = 0.0
    for node_id in cluster.ids:
        if not cluster.is_up(node_id):
            cluster.restart(node_id)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    size=st.sampled_from([3, 5]),
    learners=st.sampled_from([0, 0, 1]),
    seed=st.integers(0, 2**32 - 1),
    pre_vote=st.booleans(),
    check_quorum=st.booleans(),
    batch=st.sampled_from([1, 3, 512]),
    compaction=st.sampled_from([(0, 0), (4, 0), (10, 3)]),  # (snapshot every, entries kept before it)
    schedule=st.lists(actions, min_size=15, max_size=60),
)
def test_random_fault_schedules_are_safe_then_live(
    size: int, learners: int, seed: int, pre_vote: bool, check_quorum: bool, batch: int, compaction: tuple[int, int],
    schedule: list[Action],
) -> None:
    cluster = Cluster(
        size, learners=learners, seed=seed, pre_vote=pre_vote, check_quorum=check_quorum, max_entries_per_append=batch,
        snapshot_every=compaction[0], snapshot_keep=compaction[1],
    )
    serial = itertools.count()
    for action in schedule:
        run_action(cluster, action, serial)
    heal_everything(cluster)
    # Liveness: a leader within a bound, then each proposal committed on every node
    # within a bound (one() retries on another leader, as a client would).
    cluster.check_one_leader(max_ticks=30 * TICKS_PER_SECOND)
    for n in range(3):
        index = cluster.one(f"final{n}", size + learners, max_ticks=10 * TICKS_PER_SECOND)
        assert cluster.n_committed(index) == (size + learners, f"final{n}")
    # Nodes converge on one history (per index the checker already forbids divergence).
    applied = [cluster.nodes[node_id].applied for node_id in cluster.ids]
    shortest = min(len(log) for log in applied)
    assert all(log[:shortest] == applied[0][:shortest] for log in applied), f"seed={seed}"
    cluster.check_logs_match()
