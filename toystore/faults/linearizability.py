"""A Wing–Gong–Lowe linearizability checker with per-key partitioning, after Porcupine.

The search (Lowe's refinement of Wing & Gong, as anishathalye/porcupine ``checker.go`` does
it) walks a doubly linked list of call and return events in time order. At a call it tries to
linearize that operation now: the model must accept it, and the pair (set of linearized
operations, model state) must be new, else that branch was already explored. At a return
whose operation is not linearized yet, the last choice is undone. The history is
linearizable when the list empties.

An operation whose outcome is unknown gets a return time of +infinity and an unconstrained
output, as Porcupine and Knossos model them: it may take effect at any point after its call,
or never. So the search succeeds once every operation with a finite return is linearized,
and a model may refuse an unknown operation where it could not have taken effect (that
branch is covered by it never taking effect), which keeps the search small.

Histories are split per key (order number, toy name) first: linearizability is compositional,
so each part is checked alone, which keeps the search small.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Protocol, Sequence, TypeVar

from toystore.faults.history import Operation

State = TypeVar("State", bound=Hashable)


@dataclass(frozen=True)
class LinOp:
    """One operation as the search sees it.

    :param op_id: the history's id, for reports.
    :param call: invocation time.
    :param ret: completion time, ``math.inf`` when the outcome is unknown.
    :param input: what the model's ``step`` receives as input.
    :param output: what the model's ``step`` receives as output (``None`` when unknown).
    """

    op_id: int
    call: float
    ret: float
    input: Any
    output: Any


class Model(Protocol[State]):
    """A sequential specification: states must be hashable and compare by value."""

    def partition(self, history: Sequence[Operation]) -> dict[Hashable, list[LinOp]]:
        """Split a history into independent parts, each checked alone."""

    def init(self, key: Hashable) -> State:
        """The state a part starts from."""

    def step(self, state: State, input: Any, output: Any) -> tuple[bool, State]:
        """Whether the operation may apply to ``state`` with this output, and the next state.

        Operations pending forever (unknown outcome) are optional: refusing one only means it
        did not take effect at that point."""


class Verdict(enum.Enum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


@dataclass
class PartitionResult:
    """The verdict on one part.

    :param stuck_at: when illegal, the operation whose return the deepest search attempt could
        not get past (no order of the operations before it explains its answer).
    """

    key: Hashable
    verdict: Verdict
    operations: int
    steps: int
    stuck_at: LinOp | None = None


@dataclass
class LinearizabilityResult:
    verdict: Verdict
    partitions: list[PartitionResult] = field(default_factory=list)

    @property
    def illegal(self) -> list[PartitionResult]:
        return [part for part in self.partitions if part.verdict is Verdict.ILLEGAL]


class SearchBudget:
    """Stops a search after a number of steps or at a deadline on an injected clock.

    :param max_steps: ``None`` for no bound on steps.
    :param deadline: a time on ``clock`` (read every 1024 steps, as reading it costs).
    """

    def __init__(self, max_steps: int | None, deadline: float, clock: Callable[[], float]) -> None:
        self.max_steps = max_steps
        self.deadline = deadline
        self.clock = clock
        self.steps = 0

    def spend(self) -> bool:
        """Count one step; ``False`` once the budget is gone."""
        self.steps += 1
        if self.max_steps is not None and self.steps > self.max_steps:
            return False
        return self.steps % 1024 != 0 or self.clock() < self.deadline


class _Node:
    __slots__ = ("op", "index", "match", "twins", "prev", "next")

    def __init__(self, op: LinOp | None, index: int, match: _Node | None) -> None:
        self.op = op
        self.index = index
        self.match = match  # set on a call node: its return node
        self.twins: list[int] | None = None  # see _mark_twins
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _event_list(ops: Sequence[LinOp]) -> _Node:
    """The sentinel head of call/return events by time; a call sorts before a return at a tie,
    so operations touching in time count as concurrent."""
    events: list[tuple[float, int, int]] = []
    for index, op in enumerate(ops):
        events.append((op.call, 0, index))
        events.append((op.ret, 1, index))
    events.sort()
    head = _Node(None, -1, None)
    returns = {index: _Node(ops[index], index, None) for index in range(len(ops))}
    last = head
    for _, kind, index in events:
        node = returns[index] if kind else _Node(ops[index], index, returns[index])
        node.prev, last.next = last, node
        last = node
    return head


def _mark_twins(head: _Node) -> None:
    """Group unknown-outcome operations that are interchangeable: same input and output, and
    both may linearize anywhere after their call. Of a group, linearizing the earliest-called
    one not yet linearized explores everything the others would (any linearization using a
    later twin here can swap it with the earlier one), so the search tries only that one.
    Without this, k pending unknown orders cost 2**k linearized sets instead of k + 1."""
    groups: dict[tuple[Any, Any], list[int]] = {}
    nodes: list[_Node] = []
    node = head.next
    while node is not None:
        if node.match is not None and node.op is not None and math.isinf(node.op.ret):
            groups.setdefault((node.op.input, node.op.output), []).append(node.index)
            nodes.append(node)
        node = node.next
    for node in nodes:
        assert node.op is not None
        node.twins = groups[(node.op.input, node.op.output)]


def _has_earlier_twin(entry: _Node, linearized: int) -> bool:
    assert entry.twins is not None
    for index in entry.twins:  # in call order
        if not linearized >> index & 1:
            return index != entry.index
    return False


def _lift(call: _Node) -> None:
    for node in (call, call.match):
        assert node is not None and node.prev is not None
        node.prev.next = node.next
        if node.next is not None:
            node.next.prev = node.prev


def _unlift(call: _Node) -> None:
    for node in (call.match, call):
        assert node is not None and node.prev is not None
        node.prev.next = node
        if node.next is not None:
            node.next.prev = node


def check_operations(
    model: Model[State], key: Hashable, ops: Sequence[LinOp], budget: SearchBudget
) -> PartitionResult:
    """Search for a linearization of one part.

    :param model: the sequential specification.
    :param key: the part's key, passed to ``model.init``.
    :param ops: the part's operations.
    :param budget: shared across parts.
    """
    start_steps = budget.steps
    head = _event_list(ops)
    _mark_twins(head)
    unfinished = sum(1 for op in ops if not math.isinf(op.ret))
    state = model.init(key)
    linearized = 0
    seen: set[tuple[int, Hashable]] = set()
    calls: list[tuple[_Node, State]] = []
    deepest, stuck_at = -1, None
    entry = head.next
    while unfinished:
        if not budget.spend():
            return PartitionResult(key, Verdict.UNKNOWN, len(ops), budget.steps - start_steps)
        assert entry is not None and entry.op is not None
        if entry.match is not None:
            if entry.twins is not None and _has_earlier_twin(entry, linearized):
                entry = entry.next
                continue
            legal, new_state = model.step(state, entry.op.input, entry.op.output)
            if legal:
                new_linearized = linearized | (1 << entry.index)
                memo = (new_linearized, new_state)
                if memo not in seen:
                    seen.add(memo)
                    calls.append((entry, state))
                    state, linearized = new_state, new_linearized
                    unfinished -= not math.isinf(entry.op.ret)
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if len(calls) > deepest:
                deepest, stuck_at = len(calls), entry.op
            if not calls:
                return PartitionResult(
                    key, Verdict.ILLEGAL, len(ops), budget.steps - start_steps, stuck_at
                )
            top, state = calls.pop()
            assert top.op is not None
            unfinished += not math.isinf(top.op.ret)
            linearized &= ~(1 << top.index)
            _unlift(top)
            entry = top.next
    return PartitionResult(key, Verdict.OK, len(ops), budget.steps - start_steps)


def check_history(
    model: Model[State],
    history: Sequence[Operation],
    time_budget: float = 10.0,
    max_steps: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LinearizabilityResult:
    """Check every part of a history against a model.

    :param time_budget: seconds for the whole check; parts not finished are ``unknown``.
    :param max_steps: an optional bound on search steps over all parts.
    :param clock: the clock the time budget is measured on.
    """
    return check_partitions(model, model.partition(history), time_budget, max_steps, clock)


def check_partitions(
    model: Model[State],
    parts: Mapping[Hashable, Sequence[LinOp]],
    time_budget: float = 10.0,
    max_steps: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LinearizabilityResult:
    """Like :func:`check_history` on parts already split (and for tests, built by hand)."""
    budget = SearchBudget(max_steps, clock() + time_budget, clock)
    results = [check_operations(model, key, ops, budget) for key, ops in parts.items()]
    verdicts = {result.verdict for result in results}
    if Verdict.ILLEGAL in verdicts:
        verdict = Verdict.ILLEGAL
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.OK
    return LinearizabilityResult(verdict, results)


def _ret(operation: Operation) -> float:
    """+infinity for an operation that may still take effect."""
    if operation.outcome == "unknown" or operation.complete is None:
        return math.inf
    return operation.complete


# --- The order register: one register per order number ---------------------------------

OrderValue = tuple[str, int, Hashable]  # name, quantity, identity of the request that made it


@dataclass(frozen=True)
class OrderRegisterModel:
    """Each order number is a write-once register holding (name, quantity).

    Inputs: ``("order", name, quantity, identity, definite)`` and ``("read",)``; a read's
    output is ``None`` for a 404 or ``(name, quantity)``. An acknowledged order creates its
    number once; a retry with the same idempotency key (same identity) finds it already there;
    any other request finding the number taken is a reused number. A read must see what exists
    at its linearization point, so a 404 is legal only if the read linearizes before the
    creation.

    An order with an unknown outcome does not know its number. It belongs to part ``n`` only
    where it could explain something: with an acknowledged order for ``n``, the earliest
    unknown attempt with the same key (it may have created ``n`` before the retry was sent);
    without one, for each value that reads of ``n`` returned, the earliest-invoked unknown order
    of that name and quantity (an earlier call admits every linearization point a later one
    does, so it dominates). It may only linearize in part ``n`` while ``n`` is free, and then
    creates it; otherwise it got another number or none, which is it staying out. This is
    an over-approximation (one unknown order could explain two numbers); the phantom-order
    checker bounds the counts.
    """

    def partition(self, history: Sequence[Operation]) -> dict[Hashable, list[LinOp]]:
        acknowledged: dict[int, list[Operation]] = {}
        reads: dict[int, list[Operation]] = {}
        unknown_orders: list[Operation] = []
        for op in history:
            if op.kind == "order" and op.outcome == "ok" and op.response is not None:
                acknowledged.setdefault(int(op.response["order_number"]), []).append(op)
            elif op.kind == "order" and op.outcome == "unknown":
                unknown_orders.append(op)
            elif op.kind == "read_order" and (op.outcome == "ok" or op.status == 404):
                reads.setdefault(int(op.request["number"]), []).append(op)
        earliest_by_key: dict[Hashable, Operation] = {}
        earliest_by_value: dict[tuple[str, int], Operation] = {}
        for op in unknown_orders:  # the history is in invocation order
            if op.request.get("key") is not None:
                earliest_by_key.setdefault(op.request["key"], op)
            earliest_by_value.setdefault(_order_fields(op.request), op)

        parts: dict[Hashable, list[LinOp]] = {}
        for number in sorted(set(acknowledged) | set(reads)):
            ops: list[LinOp] = []
            for op in acknowledged.get(number, []):
                ops.append(LinOp(op.op_id, op.invoke, _ret(op), _order_input(op, True), number))
                attempt = earliest_by_key.get(op.request.get("key"))
                if attempt is not None and attempt.invoke < op.invoke:
                    ops.append(_unknown_order(attempt, _identity(op)))
            read_values = set()
            for op in reads.get(number, []):
                value = None if op.outcome != "ok" else _order_fields(op.response or {})
                read_values.add(value)
                ops.append(LinOp(op.op_id, op.invoke, _ret(op), ("read",), value))
            if number not in acknowledged:
                for value in sorted(v for v in read_values if v is not None):
                    creator = earliest_by_value.get(value)
                    if creator is not None:
                        ops.append(_unknown_order(creator, None))
            parts[number] = _unique(ops)
        return parts

    def init(self, key: Hashable) -> OrderValue | None:
        return None

    def step(
        self, state: OrderValue | None, input: Any, output: Any
    ) -> tuple[bool, OrderValue | None]:
        if input[0] == "read":
            if output is None:
                return state is None, state
            return state is not None and state[:2] == output, state
        _, name, quantity, identity, definite = input
        if state is None:
            return True, (name, quantity, identity)
        return definite and state == (name, quantity, identity), state


def _order_fields(fields: Mapping[str, Any]) -> tuple[str, int]:
    return str(fields["name"]), int(fields["quantity"])


def _identity(op: Operation) -> Hashable:
    """Requests with one idempotency key are one order; without a key each op is its own."""
    key = op.request.get("key")
    return ("key", key) if key is not None else ("op", op.op_id)


def _order_input(op: Operation, definite: bool) -> tuple[Any, ...]:
    name, quantity = _order_fields(op.request)
    return ("order", name, quantity, _identity(op), definite)


def _unknown_order(op: Operation, identity: Hashable) -> LinOp:
    name, quantity = _order_fields(op.request)
    return LinOp(op.op_id, op.invoke, math.inf, ("order", name, quantity, identity, False), None)


def _unique(ops: Iterable[LinOp]) -> list[LinOp]:
    by_id: dict[int, LinOp] = {}
    for op in ops:
        by_id.setdefault(op.op_id, op)
    return list(by_id.values())


# --- The stock counter: one counter per toy, when nothing restocks ----------------------


StockState = tuple[int, tuple[tuple[int, int], ...]]  # stock, releasable (quantity, count) pairs


@dataclass(frozen=True)
class StockCounterModel:
    """Each toy's stock is a counter that only orders lower, when nothing restocks.

    Inputs: ``("order", quantity)`` with output ``"ok"``, ``"refused"`` (a 409) or ``None``
    (unknown), ``("release", quantity)`` and ``("read",)`` with the quantity read as output.
    An acknowledged order needs ``stock >= quantity`` and lowers it; a 409 needs
    ``stock < quantity`` at its point; an unknown order, if it takes effect, needs and lowers
    stock like an acknowledged one. Other refusals (400, 404) and unanswered reads constrain
    nothing and are left out.

    The catalog reserves stock before an order commits and gives back the reservation of an
    order that can never commit (DESIGN.md, the order saga), so a read may see stock dip and
    come back. Only an order with an unknown outcome can end that way, so each one brings a
    ``release`` pseudo-operation, also pending forever from its call and optional: it
    returns one outstanding unknown reservation of that quantity. The state counts outstanding
    unknown reservations per quantity rather than naming them, as same-quantity ones are
    interchangeable; acknowledged orders' reservations are never released.

    :param initial: each toy's stock at the start; toys not listed are not checked.
    """

    initial: Mapping[str, int]

    def partition(self, history: Sequence[Operation]) -> dict[Hashable, list[LinOp]]:
        parts: dict[Hashable, list[LinOp]] = {name: [] for name in sorted(self.initial)}
        for op in history:
            name = op.request.get("name")
            if name not in self.initial:
                continue
            if op.kind == "order":
                quantity = int(op.request["quantity"])
                if op.outcome == "fail" and op.status != 409:
                    continue
                output = {"ok": "ok", "fail": "refused"}.get(op.outcome)
                parts[name].append(LinOp(op.op_id, op.invoke, _ret(op), ("order", quantity), output))
                if output is None:
                    parts[name].append(LinOp(op.op_id, op.invoke, math.inf, ("release", quantity), None))
            elif op.kind == "read_product" and op.outcome == "ok" and op.response is not None:
                parts[name].append(
                    LinOp(op.op_id, op.invoke, _ret(op), ("read",), int(op.response["quantity"]))
                )
        return parts

    def init(self, key: Hashable) -> StockState:
        return int(self.initial[str(key)]), ()

    def step(self, state: StockState, input: Any, output: Any) -> tuple[bool, StockState]:
        stock, releasable = state
        if input[0] == "read":
            return stock == output, state
        quantity = input[1]
        if input[0] == "release":
            held = dict(releasable)
            if not held.get(quantity):
                return False, state
            held[quantity] -= 1
            return True, (stock + quantity, _counts(held))
        if output == "ok":
            return stock >= quantity, (stock - quantity, releasable)
        if output == "refused":
            return stock < quantity, state
        if stock < quantity:
            return False, state
        held = dict(releasable)
        held[quantity] = held.get(quantity, 0) + 1
        return True, (stock - quantity, _counts(held))


def _counts(held: Mapping[int, int]) -> tuple[tuple[int, int], ...]:
    return tuple(sorted((quantity, count) for quantity, count in held.items() if count))


def describe(op: LinOp) -> str:
    """A short line for reports."""
    ret = "never" if math.isinf(op.ret) else f"{op.ret:.3f}"
    return f"op {op.op_id} {op.input!r} -> {op.output!r} [{op.call:.3f}, {ret}]"


__all__ = [
    "LinOp",
    "Model",
    "Verdict",
    "PartitionResult",
    "SearchBudget",
    "LinearizabilityResult",
    "check_history",
    "check_partitions",
    "check_operations",
    "OrderRegisterModel",
    "StockCounterModel",
    "describe",
]
