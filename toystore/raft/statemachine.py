"""What a Raft host needs from its user, so that the node knows nothing of what it replicates.

The shape of hashicorp/raft's ``FSM`` and ``SnapshotStore`` and of etcd-io/raft's
``Storage``: a log entry's data is opaque to the library; the user decides what applying
it means, makes each cycle durable, records snapshots of what it applied, and installs a
leader's. The order service is one user; the catalog is meant to be another.

A snapshot's data is a sequence of JSON items (the orders, for the order service), sent
to a follower in chunks of them (:mod:`toystore.raft.snapshots`) with a small header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from toystore.raft.messages import Entry, Ready, SnapshotMeta


@dataclass(frozen=True)
class Snapshot:
    """A snapshot of a state machine: the last entry whose effect it holds, how many items
    its data holds, and a small JSON header the host needs besides (the membership)."""

    meta: SnapshotMeta
    size: int
    header: Mapping[str, Any] = field(default_factory=dict)


class StateMachine(Protocol):
    """Applies committed entries, in log sequence, identically on every replica."""

    def apply(self, entry: Entry) -> Any:
        """Applies one committed entry in memory; returns what its proposer hears.

        An entry without data is a leader's no-op. Must be deterministic: every replica
        applies the same entries and must end in the same state."""
        ...


class Storage(Protocol):
    """Makes a cycle durable: the Raft log and term/vote together with what applying the
    cycle's committed entries produced, in one write (one fsync); and snapshots."""

    async def persist(self, ready: Ready, results: Sequence[Any]) -> None:
        """Returns once ``ready``'s hard state and entries, and ``results`` (one per
        committed entry, as :meth:`StateMachine.apply` returned them), are durable."""
        ...

    async def save_snapshot(self, meta: SnapshotMeta, compact_before: int) -> None:
        """Records a snapshot of the state machine as applied now (through ``meta.index``,
        all of it durable) and deletes the log entries before ``compact_before``, in one
        durable write: the snapshot is durable before any entry it covers goes."""
        ...

    async def install_snapshot(self, meta: SnapshotMeta) -> None:
        """The snapshot received for ``meta`` (staged whole through :class:`SnapshotSink`)
        replaces the state machine and the whole stored log, atomically and durably: a
        crash leaves the old state or the new, never a mix."""
        ...


class SnapshotSource(Protocol):
    """A leader's side of InstallSnapshot: the data of its latest snapshot."""

    def latest_snapshot(self) -> Snapshot | None: ...

    async def read_items(self, snapshot: Snapshot, offset: int, limit: int) -> list[Any]:
        """Items ``offset`` to ``offset + limit`` (fewer at the end) of ``snapshot``'s data, as JSON."""
        ...


class SnapshotSink(Protocol):
    """A follower's side of InstallSnapshot: stages a snapshot's items as they come, durably."""

    def received(self, snapshot: Snapshot) -> int:
        """How many of ``snapshot``'s items are staged: 0 when another snapshot is staged,
        all of them when ``snapshot`` is installed already."""
        ...

    def parse_items(self, snapshot: Snapshot, items: list[Any], offset: int) -> Any:
        """Items ``offset`` on of ``snapshot``, checked (with its header, at offset 0);
        :raises ValueError: on an item or a header that is not the host's."""
        ...

    async def stage(self, snapshot: Snapshot, offset: int, items: Any) -> None:
        """Stages parsed items from ``offset`` (which is :meth:`received`, or 0 to start
        ``snapshot`` afresh in place of whatever was staged); durable when it returns."""
        ...

    async def discard(self) -> None:
        """Drops whatever is staged (the SNAPSHOT it was for has been stepped)."""
        ...
