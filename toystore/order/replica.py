"""What the order service's HTTP routes need of a replication mode.

Both modes (Raft and primary-backup) implement :class:`OrderReplica`; the routes,
the storage and the order state machine are shared.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from toystore.http import ApiError
from toystore.order.state import Order, OrderCommand, OrderStateMachine
from toystore.raft.host import not_leader_error, unavailable

__all__ = ["InstallsSnapshots", "MovesAside", "OrderReplica", "not_leader", "place_one_by_one", "unavailable"]


class OrderReplica(Protocol):
    orders: OrderStateMachine  # committed orders held by this replica

    async def place_order(self, request_id: str, name: str, quantity: int) -> Order:
        """The committed order for this request (the same one on a retry).

        Raises :class:`ApiError`: 421 not the leader, 404/409 from the catalog, 503
        when the outcome cannot be known now (the caller retries with the same id).
        """

    async def place_orders(self, commands: Sequence[OrderCommand]) -> list[Order | Failure]:
        """:meth:`place_order` for each, in order: its order, or a Failure with the
        :class:`ApiError` it would have raised (or any other error)."""

    async def read_order(self, number: int) -> Order | None:
        """On the leader, a read that reflects every order acknowledged before it."""

    def status(self) -> dict[str, Any]:
        """The ``/health_check`` body."""

    def set_leader(self, replica_id: int) -> None:
        """The frontend's preference for the leader."""

    def members(self) -> dict[str, Any]:
        """The ``GET /members`` body: the committed configuration."""

    async def change_members(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /members``: one membership change, answered once committed (ApiError otherwise)."""

    async def receive_peer(self, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A replication RPC from another replica (raises ApiError(400) on bad input); the
        sender's answer waits for it, so a mode can answer only once durable. Returns what
        the answer carries besides ``accepted``."""


@runtime_checkable
class MovesAside(Protocol):
    """A mode that can move orders aside from a forked history (primary-backup)."""

    async def moved_aside(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Those moved aside, as JSON, with a sequence number above ``after``, at most ``limit``."""


@runtime_checkable
class InstallsSnapshots(Protocol):
    """A mode whose followers install a leader's snapshot, chunk by chunk (Raft)."""

    async def receive_snapshot_chunk(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """One chunk of ``POST /install_snapshot``; its answer, or ApiError."""


def not_leader(leader_id: int | None, replicas: Mapping[int, str]) -> ApiError:
    """421 with the leader's id and URL, so the frontend can go there at once."""
    return not_leader_error(leader_id, replicas, "send orders to the leader")


async def place_one_by_one(replica: OrderReplica, commands: Sequence[OrderCommand]) -> list[Order | Failure]:
    """:meth:`OrderReplica.place_orders` as one :meth:`~OrderReplica.place_order` per order,
    side by side, for a mode whose orders are placed one at a time."""
    placed = await DeferredList([Deferred.fromCoroutine(replica.place_order(c.request_id, c.name, c.quantity))
                                 for c in commands], consumeErrors=True)
    return [outcome for _, outcome in placed]
