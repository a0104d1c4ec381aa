"""Fault-injection suite: the client history, invariant checkers and a linearizability checker.

The modules here are pure (no reactor, no sockets); the suite that drives real processes
records a history with :class:`HistoryRecorder`, snapshots the cluster into a
:class:`ClusterState` and calls :func:`check_all`.
"""

from toystore.faults.checkers import CheckResult, ClusterState, ReplicaState, check_all, verdict_table
from toystore.faults.history import HistoryRecorder, Operation, outcome_for_status, read_jsonl, write_jsonl

__all__ = [
    "CheckResult",
    "ClusterState",
    "HistoryRecorder",
    "Operation",
    "ReplicaState",
    "check_all",
    "outcome_for_status",
    "read_jsonl",
    "verdict_table",
    "write_jsonl",
]
