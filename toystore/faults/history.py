"""The client-side history of a fault-injection run: what was asked, when, and what came back.

The checkers judge the cluster only by this record and a final snapshot, so the record keeps
exactly what a client can observe: invocation and completion times on one monotonic clock,
the request, and the answer. An answer the client never got (timeout, connection lost after
sending, 5xx) is ``unknown``: the operation may or may not have taken effect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

OperationKind = Literal["order", "read_order", "read_product"]
Outcome = Literal["ok", "fail", "unknown"]

OPERATION_KINDS: frozenset[str] = frozenset({"order", "read_order", "read_product"})
OUTCOMES: frozenset[str] = frozenset({"ok", "fail", "unknown"})


@dataclass(frozen=True)
class Operation:
    """One client operation.

    :param op_id: unique within a history, in invocation order.
    :param process: the client (session) id that issued it; a process has one operation in
        flight at a time.
    :param kind: ``order`` (request ``{"name", "quantity", "key"}``), ``read_order``
        (``{"number"}``) or ``read_product`` (``{"name"}``).
    :param invoke: monotonic seconds when the request was sent.
    :param complete: monotonic seconds when the answer arrived or the client gave up;
        ``None`` when the run ended first.
    :param outcome: ``ok`` (2xx), ``fail`` (a definite refusal: 4xx) or ``unknown``.
    :param request: the request fields.
    :param response: ``{"order_number"}``, ``{"number", "name", "quantity"}`` or
        ``{"name", "price", "quantity"}`` when ok; ``{"status", "message"}`` when failed;
        ``None`` when unknown or never answered.
    """

    op_id: int
    process: int
    kind: OperationKind
    invoke: float
    complete: float | None
    outcome: Outcome
    request: dict[str, Any]
    response: dict[str, Any] | None

    def __post_init__(self) -> None:
        if self.kind not in OPERATION_KINDS:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.complete is not None and self.complete < self.invoke:
            raise ValueError(f"operation {self.op_id} completes before it is invoked")

    @property
    def status(self) -> int | None:
        """The HTTP status of a definite answer: 200 when ok, the error's status when failed."""
        if self.outcome == "ok":
            return 200
        if self.outcome == "fail" and self.response is not None:
            status = self.response.get("status")
            return status if isinstance(status, int) else None
        return None


def outcome_for_status(status: int) -> Outcome:
    """Classify an HTTP answer: 2xx took effect, 4xx did not, 5xx may have.

    :param status: the HTTP status the client received.
    """
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500:
        return "fail"
    return "unknown"


class HistoryRecorder:
    """Collects operations as a load generator issues them; pure, the caller supplies times."""

    def __init__(self) -> None:
        self._operations: list[Operation] = []
        self._completed: set[int] = set()

    def invoke(self, process: int, kind: OperationKind, request: dict[str, Any], now: float) -> int:
        """Record that ``process`` sent a request; returns the id to complete it with.

        :param process: the client id.
        :param kind: the operation kind.
        :param request: the request fields (copied).
        :param now: monotonic seconds.
        """
        op_id = len(self._operations)
        self._operations.append(
            Operation(op_id, process, kind, now, None, "unknown", dict(request), None)
        )
        return op_id

    def complete(
        self, op_id: int, outcome: Outcome, response: dict[str, Any] | None, now: float
    ) -> None:
        """Record the answer (or the client giving up) for an invoked operation.

        :param op_id: what :meth:`invoke` returned.
        :param outcome: ``ok``, ``fail`` or ``unknown``.
        :param response: the answer's fields, ``None`` when there was none.
        :param now: monotonic seconds.
        :raises KeyError: ``op_id`` was never invoked.
        :raises ValueError: the operation was already completed.
        """
        if not 0 <= op_id < len(self._operations):
            raise KeyError(op_id)
        if op_id in self._completed:
            raise ValueError(f"operation {op_id} completed twice")
        invoked = self._operations[op_id]
        self._operations[op_id] = Operation(
            op_id,
            invoked.process,
            invoked.kind,
            invoked.invoke,
            now,
            outcome,
            invoked.request,
            None if response is None else dict(response),
        )
        self._completed.add(op_id)

    def history(self) -> list[Operation]:
        """The operations so far, in invocation order; those not yet completed are unknown."""
        return list(self._operations)


def write_jsonl(path: str | Path, history: Sequence[Operation]) -> None:
    """Write one JSON object per operation, one per line.

    :param path: the file to (over)write.
    :param history: the operations.
    """
    with open(path, "w", encoding="utf-8") as out:
        for operation in history:
            out.write(json.dumps(asdict(operation), sort_keys=True) + "\n")


def read_jsonl(path: str | Path) -> list[Operation]:
    """Read a history written by :func:`write_jsonl`.

    :param path: the file to read.
    """
    with open(path, encoding="utf-8") as source:
        return [Operation(**json.loads(line)) for line in source if line.strip()]
