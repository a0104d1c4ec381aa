"""What a Raft host needs from its user, so that the node knows nothing of what it replicates.

The shape of hashicorp/raft's ``FSM`` and etcd-io/raft's ``Storage``: a log entry's data
is opaque to the library; the user decides what applying it means and makes each cycle
durable. The order service is one user; the catalog is meant to be another.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from toystore.raft.messages import Entry, Ready


class StateMachine(Protocol):
    """Applies committed entries, in log sequence, identically on every replica."""

    def apply(self, entry: Entry) -> Any:
        """Applies one committed entry in memory; returns what its proposer hears.

        An entry without data is a leader's no-op. Must be deterministic: every replica
        applies the same entries and must end in the same state."""
        ...


class Storage(Protocol):
    """Makes a cycle durable: the Raft log and term/vote together with what applying the
    cycle's committed entries produced, in one write (one fsync)."""

    async def persist(self, ready: Ready, results: Sequence[Any]) -> None:
        """Returns once ``ready``'s hard state and entries, and ``results`` (one per
        committed entry, as :meth:`StateMachine.apply` returned them), are durable."""
        ...
