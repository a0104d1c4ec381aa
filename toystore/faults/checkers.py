"""Invariant checkers: a client history and a final cluster snapshot in, verdicts out.

Pure functions, no I/O: the fault suite gathers the snapshot (``GET /orders_since``,
``/health_check``, ``/latest_order_no`` on every replica and the catalog's ``GET /ledger``)
and hands it here. Invariant numbers refer to DESIGN.md.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from toystore.faults.history import Operation
from toystore.faults.linearizability import (
    LinearizabilityResult,
    OrderRegisterModel,
    StockCounterModel,
    Verdict,
    check_history,
    describe,
)

MAX_DETAILS = 5


@dataclass
class CheckResult:
    """One checker's verdict; ``details`` names the offending order numbers or toys."""

    name: str
    ok: bool
    details: list[str] = field(default_factory=list)


@dataclass
class ReplicaState:
    """One order replica at the end of a run.

    :param orders: committed orders ``{"number", "name", "quantity", "request_id"}``
        (``GET /orders_since``; ``request_id`` may be absent).
    :param commit_index: from ``GET /health_check``.
    :param latest_order_no: from ``GET /latest_order_no`` (-1 when there is none).
    """

    orders: list[dict[str, Any]]
    commit_index: int
    latest_order_no: int


@dataclass
class ClusterState:
    """The cluster at the end of a run.

    :param replicas: by replica id.
    :param catalog: the catalog's ledger, ``{"toys": {name: {"quantity", "initial",
        "restocked", "price"}}, "reservations": {"held", "confirmed", "released"}}``
        (each reservation entry a count).
    """

    replicas: dict[int, ReplicaState]
    catalog: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form, to keep the snapshot beside the history and check again later."""
        return {
            "replicas": {str(rid): asdict(replica) for rid, replica in sorted(self.replicas.items())},
            "catalog": self.catalog,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterState:
        """The inverse of :meth:`to_json` (JSON object keys are strings; replica ids are ints)."""
        return cls(
            {int(rid): ReplicaState(**replica) for rid, replica in data["replicas"].items()},
            dict(data["catalog"]),
        )

    def committed_orders(self) -> list[dict[str, Any]]:
        """The longest committed list among replicas: committed orders only ever grow."""
        return max((replica.orders for replica in self.replicas.values()), key=len, default=[])


OrderFields = tuple[int, str, int]


def _fields(order: Mapping[str, Any]) -> OrderFields:
    return int(order["number"]), str(order["name"]), int(order["quantity"])


def _result(name: str, problems: list[str], passed: str) -> CheckResult:
    """Keep the report short: the first few problems and a count of the rest."""
    if not problems:
        return CheckResult(name, True, [passed])
    details = problems[:MAX_DETAILS]
    if len(problems) > MAX_DETAILS:
        details.append(f"... and {len(problems) - MAX_DETAILS} more")
    return CheckResult(name, False, details)


def _acknowledged_orders(history: Iterable[Operation]) -> list[Operation]:
    return [
        op
        for op in history
        if op.kind == "order" and op.outcome == "ok" and op.response is not None
    ]


def _order_number(op: Operation) -> int:
    assert op.response is not None
    return int(op.response["order_number"])


def _by_number(replica: ReplicaState) -> dict[int, OrderFields]:
    return {int(order["number"]): _fields(order) for order in replica.orders}


def check_lost_orders(history: Sequence[Operation], state: ClusterState) -> CheckResult:
    """Invariant 1: every acknowledged order is on every replica with its number, name, quantity."""
    problems = []
    replicas = {rid: _by_number(replica) for rid, replica in sorted(state.replicas.items())}
    for op in _acknowledged_orders(history):
        number = _order_number(op)
        expected = (number, str(op.request["name"]), int(op.request["quantity"]))
        for rid, orders in replicas.items():
            found = orders.get(number)
            if found is None:
                problems.append(
                    f"order {number} ({expected[1]} x{expected[2]}, op {op.op_id}) missing on replica {rid}"
                )
            elif found != expected:
                problems.append(
                    f"order {number} is {found[1]} x{found[2]} on replica {rid}, "
                    f"acknowledged as {expected[1]} x{expected[2]}"
                )
    return _result("lost acknowledged orders", problems, "every acknowledged order is on every replica")


def check_phantom_orders(history: Sequence[Operation], state: ClusterState) -> CheckResult:
    """Invariant 2: no committed order that no client asked for.

    As a multiset: per (name, quantity), a replica cannot hold more orders than clients
    requested with an outcome that allows it (ok or unknown; requests sharing a key count
    once). Exactly, where replicas report request ids (``/orders_since`` does) and every
    such request carried an idempotency key: each committed order's request id is one of
    those keys, with that request's name and quantity. And the number an acknowledged order
    got must hold that order's name and quantity.
    """
    requested: Counter[tuple[str, int]] = Counter()
    seen_keys: set[Any] = set()
    for op in history:
        if op.kind != "order" or op.outcome == "fail":
            continue
        key = op.request.get("key")
        if key is not None:
            if key in seen_keys:
                continue
            seen_keys.add(key)
        requested[(str(op.request["name"]), int(op.request["quantity"]))] += 1
    keyed = {op.request.get("key"): (str(op.request["name"]), int(op.request["quantity"]))
             for op in history if op.kind == "order" and op.outcome != "fail"}
    check_keys = None not in keyed
    problems = []
    for rid, replica in sorted(state.replicas.items()):
        for order in replica.orders:
            request_id = order.get("request_id")
            if not check_keys or request_id is None:
                continue
            if request_id not in keyed:
                problems.append(f"replica {rid} order {order['number']} has request id {request_id!r}, "
                                f"which no client sent in an order that could have taken effect")
            elif keyed[request_id] != (str(order["name"]), int(order["quantity"])):
                name, quantity = keyed[request_id]
                problems.append(f"replica {rid} order {order['number']} is {order['name']} x{order['quantity']}, "
                                f"but request {request_id!r} asked for {name} x{quantity}")
        committed = Counter((str(o["name"]), int(o["quantity"])) for o in replica.orders)
        for (name, quantity), count in sorted(committed.items()):
            if count > requested[(name, quantity)]:
                problems.append(
                    f"replica {rid} holds {count} orders of {name} x{quantity}, "
                    f"clients asked for {requested[(name, quantity)]}"
                )
        orders = _by_number(replica)
        for op in _acknowledged_orders(history):
            found = orders.get(_order_number(op))
            wanted = (str(op.request["name"]), int(op.request["quantity"]))
            if found is not None and found[1:] != wanted:
                problems.append(
                    f"replica {rid} order {found[0]} is {found[1]} x{found[2]}, nobody was told that number for it"
                )
    return _result("phantom orders", problems, "every committed order was requested")


def check_order_numbers(history: Sequence[Operation], state: ClusterState) -> CheckResult:
    """Invariant 2: numbers are unique and dense from 0 on every replica, ``latest_order_no``
    is the last of them, and no two acknowledged requests got one number (retries with one
    idempotency key must get the same number)."""
    problems = []
    for rid, replica in sorted(state.replicas.items()):
        numbers = [int(order["number"]) for order in replica.orders]
        duplicates = sorted(n for n, count in Counter(numbers).items() if count > 1)
        if duplicates:
            problems.append(f"replica {rid} repeats order numbers {duplicates[:10]}")
        gaps = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
        if gaps:
            problems.append(f"replica {rid} is missing order numbers {gaps[:10]}")
        if replica.latest_order_no != max(numbers, default=-1):
            problems.append(
                f"replica {rid} says latest_order_no {replica.latest_order_no} "
                f"but holds up to {max(numbers, default=-1)}"
            )
    holders: dict[int, dict[Any, int]] = {}
    numbers_by_key: dict[Any, set[int]] = {}
    for op in _acknowledged_orders(history):
        number = _order_number(op)
        key = op.request.get("key")
        identity = ("key", key) if key is not None else ("op", op.op_id)
        holders.setdefault(number, {}).setdefault(identity, op.op_id)
        if key is not None:
            numbers_by_key.setdefault(key, set()).add(number)
    for number, owners in sorted(holders.items()):
        if len(owners) > 1:
            problems.append(f"order number {number} acknowledged to ops {sorted(owners.values())}")
    for key, numbers in numbers_by_key.items():
        if len(numbers) > 1:
            problems.append(f"idempotency key {key!r} acknowledged with numbers {sorted(numbers)}")
    return _result("unique dense order numbers", problems, "numbers unique and dense on every replica")


def _count(entry: Any) -> int:
    return len(entry) if isinstance(entry, (list, dict)) else int(entry or 0)


def check_stock_conservation(history: Sequence[Operation], state: ClusterState) -> CheckResult:
    """Invariant 3: per toy, ``quantity + sum(committed quantities) == initial + restocked``.

    Only meaningful once no reservation is held (a held one is stock taken for an order that
    may still commit or be released), so held reservations fail the check themselves.
    """
    toys: dict[str, Mapping[str, Any]] = state.catalog.get("toys", {})
    held = _count(state.catalog.get("reservations", {}).get("held", 0))
    problems = []
    if held:
        problems.append(f"{held} reservations still held: neither committed nor released")
    ordered: Counter[str] = Counter()
    for order in state.committed_orders():
        ordered[str(order["name"])] += int(order["quantity"])
    for name in sorted(set(ordered) - set(toys)):
        problems.append(f"committed orders of {name}, which the catalog does not know")
    for name, toy in sorted(toys.items()):
        left = int(toy["quantity"]) + ordered[name]
        supplied = int(toy["initial"]) + int(toy.get("restocked", 0))
        if left != supplied:
            problems.append(
                f"{name}: stock {toy['quantity']} + ordered {ordered[name]} = {left}, "
                f"but initial {toy['initial']} + restocked {toy.get('restocked', 0)} = {supplied}"
            )
    return _result("stock conservation", problems, "stock plus orders equals supply for every toy")


def check_stock_non_negative(history: Sequence[Operation], state: ClusterState) -> CheckResult:
    """Invariant 4: no toy's stock is negative, in the final ledger or in any read."""
    problems = [
        f"{name}: ledger stock {toy['quantity']}"
        for name, toy in sorted(state.catalog.get("toys", {}).items())
        if int(toy["quantity"]) < 0
    ]
    for op in history:
        if op.kind == "read_product" and op.outcome == "ok" and op.response is not None:
            if int(op.response["quantity"]) < 0:
                problems.append(f"{op.request['name']}: op {op.op_id} read stock {op.response['quantity']}")
    return _result("stock never negative", problems, "no negative stock seen")


def check_stale_reads(
    history: Sequence[Operation], state: ClusterState, restocks_possible: bool
) -> CheckResult:
    """Invariant 4: a read that starts after an acknowledged order completed reflects it.

    Orders: a read of number ``n`` invoked after an acknowledged order ``n`` completed must
    answer 200 with that order's name and quantity (a 404 or other fields is stale).

    Products: without restocks a toy's stock is ``initial`` minus the reservations taken and
    not released. An acknowledged order's reservation was taken before it completed and is
    never released (it committed; only reservations of orders that can never commit are
    released), and other orders only ever lower stock further. So from the moment a read
    starts, the stock is at most ``initial - sum(acknowledged orders of that toy that completed
    before the read started)``, and whatever point the read takes its value at is later. A
    read showing more is stale. With restocks stock can legitimately rise, the bound fails,
    and the product half is skipped (also per toy when the ledger shows a restock).
    """
    problems = []
    acknowledged = _acknowledged_orders(history)
    first_ack: dict[int, Operation] = {}
    for op in acknowledged:
        number = _order_number(op)
        if op.complete is not None and (
            number not in first_ack or op.complete < (first_ack[number].complete or 0.0)
        ):
            first_ack[number] = op
    for op in history:
        if op.kind != "read_order" or not (op.outcome == "ok" or op.status == 404):
            continue
        number = int(op.request["number"])
        order = first_ack.get(number)
        if order is None or order.complete is None or order.complete >= op.invoke:
            continue
        expected = (number, str(order.request["name"]), int(order.request["quantity"]))
        if op.outcome != "ok":
            problems.append(f"read of order {number} (op {op.op_id}) got 404 after it was acknowledged")
        elif op.response is None or _fields(op.response) != expected:
            problems.append(
                f"read of order {number} (op {op.op_id}) got {op.response}, "
                f"acknowledged as {expected[1]} x{expected[2]}"
            )

    skipped = []
    if restocks_possible:
        skipped.append("product reads not checked: restocks were possible")
    else:
        toys = state.catalog.get("toys", {})
        restocked = {name for name, toy in toys.items() if int(toy.get("restocked", 0))}
        skipped.extend(f"{name}: product reads not checked, the ledger shows a restock" for name in sorted(restocked))
        problems.extend(_stale_product_reads(history, toys, restocked))
    result = _result("stale reads", problems, "no read missed an earlier acknowledged order")
    result.details.extend(skipped)
    return result


def _stale_product_reads(
    history: Sequence[Operation], toys: Mapping[str, Mapping[str, Any]], excluded: set[str]
) -> list[str]:
    completions: dict[str, list[tuple[float, int]]] = {}
    for op in _acknowledged_orders(history):
        if op.complete is not None:
            completions.setdefault(str(op.request["name"]), []).append((op.complete, int(op.request["quantity"])))
    prefix: dict[str, tuple[list[float], list[int]]] = {}
    for name, items in completions.items():
        items.sort()
        sums, total = [], 0
        for _, quantity in items:
            total += quantity
            sums.append(total)
        prefix[name] = ([time for time, _ in items], sums)
    problems = []
    for op in history:
        if op.kind != "read_product" or op.outcome != "ok" or op.response is None:
            continue
        name = str(op.request["name"])
        if name in excluded or name not in toys or name not in prefix:
            continue
        times, sums = prefix[name]
        before = bisect.bisect_left(times, op.invoke)  # completed strictly before the read began
        if before == 0:
            continue
        bound = int(toys[name]["initial"]) - sums[before - 1]
        if int(op.response["quantity"]) > bound:
            problems.append(
                f"{name}: op {op.op_id} read stock {op.response['quantity']}, "
                f"at most {bound} after {before} acknowledged orders"
            )
    return problems


def check_convergence(history: Sequence[Operation], state: ClusterState) -> CheckResult:
    """Invariant 5: every replica holds the same committed orders and commit index."""
    problems = []
    replicas = sorted(state.replicas.items())
    if replicas:
        base_id, base = replicas[0]
        base_orders = [_fields(order) for order in base.orders]
        for rid, replica in replicas[1:]:
            orders = [_fields(order) for order in replica.orders]
            if orders != base_orders:
                differ = next(
                    (i for i, (a, b) in enumerate(zip(orders, base_orders)) if a != b),
                    min(len(orders), len(base_orders)),
                )
                problems.append(
                    f"replica {rid} has {len(orders)} orders, replica {base_id} {len(base_orders)}; "
                    f"first difference at position {differ}"
                )
            if replica.commit_index != base.commit_index:
                problems.append(
                    f"replica {rid} commit_index {replica.commit_index}, replica {base_id} {base.commit_index}"
                )
    return _result("replica convergence", problems, f"{len(replicas)} replicas agree")


def check_order_linearizability(
    history: Sequence[Operation], time_budget: float = 10.0
) -> CheckResult:
    """Orders and reads of orders, per order number, against a write-once register."""
    result = check_history(OrderRegisterModel(), history, time_budget)
    return _linearizability_result("linearizable orders", result, "order")


def check_stock_linearizability(
    history: Sequence[Operation],
    state: ClusterState,
    restocks_possible: bool,
    time_budget: float = 10.0,
) -> CheckResult:
    """Orders and product reads, per toy, against a counter; skipped when restocks are possible."""
    if restocks_possible:
        return CheckResult("linearizable stock", True, ["skipped: restocks were possible"])
    initial = {
        name: int(toy["initial"])
        for name, toy in state.catalog.get("toys", {}).items()
        if not int(toy.get("restocked", 0))
    }
    result = check_history(StockCounterModel(initial), history, time_budget)
    return _linearizability_result("linearizable stock", result, "toy")


def _linearizability_result(name: str, result: LinearizabilityResult, unit: str) -> CheckResult:
    """Illegal parts fail; a search that ran out of budget passes but says it is inconclusive."""
    problems = [
        f"{unit} {part.key}: no linearization of {part.operations} ops; stuck at "
        + (describe(part.stuck_at) if part.stuck_at is not None else "the start")
        for part in result.illegal
    ]
    if problems:
        return _result(name, problems, "")
    unknown = [part.key for part in result.partitions if part.verdict is Verdict.UNKNOWN]
    if unknown:
        return CheckResult(name, True, [f"INCONCLUSIVE: search budget ran out for {unit}s {unknown[:10]}"])
    return CheckResult(name, True, [f"{len(result.partitions)} {unit}s linearizable"])


def check_all(
    history: Sequence[Operation],
    state: ClusterState,
    restocks_possible: bool,
    linearizability_budget: float = 10.0,
) -> list[CheckResult]:
    """Every checker, in the order of the invariants they check.

    :param restocks_possible: whether stock could rise during the run (restock timer or
        ``POST /restock``); product-read checks need it not to.
    :param linearizability_budget: seconds for each linearizability search.
    """
    simple: list[Callable[[Sequence[Operation], ClusterState], CheckResult]] = [
        check_lost_orders,
        check_phantom_orders,
        check_order_numbers,
        check_stock_conservation,
        check_stock_non_negative,
    ]
    results = [checker(history, state) for checker in simple]
    results.append(check_stale_reads(history, state, restocks_possible))
    results.append(check_convergence(history, state))
    results.append(check_order_linearizability(history, linearizability_budget))
    results.append(
        check_stock_linearizability(history, state, restocks_possible, linearizability_budget)
    )
    return results


def verdict_table(results: Sequence[CheckResult]) -> str:
    """A markdown table: checker, verdict, first detail."""
    lines = ["| checker | ok | detail |", "| --- | --- | --- |"]
    for result in results:
        detail = result.details[0] if result.details else ""
        lines.append(f"| {result.name} | {'yes' if result.ok else 'NO'} | {detail.replace('|', '/')} |")
    return "\n".join(lines)
