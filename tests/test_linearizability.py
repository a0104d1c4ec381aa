"""The Wing–Gong–Lowe checker and the toystore models, on hand-made and generated histories."""

import itertools
import math
import random
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from toystore.faults.history import HistoryRecorder, Operation
from toystore.faults.linearizability import (
    LinOp,
    OrderRegisterModel,
    StockCounterModel,
    Verdict,
    check_history,
    check_partitions,
)


class History:
    """Builds a history op by op, each with explicit times."""

    def __init__(self) -> None:
        self.recorder = HistoryRecorder()

    def add(
        self, kind: str, request: dict[str, Any], start: float, end: float | None,
        outcome: str = "ok", response: dict[str, Any] | None = None, process: int = 0,
    ) -> "History":
        op_id = self.recorder.invoke(process, kind, request, now=start)  # type: ignore[arg-type]
        if end is not None:
            self.recorder.complete(op_id, outcome, response, now=end)  # type: ignore[arg-type]
        return self

    def order(self, name: str, quantity: int, start: float, end: float | None, number: int | None = None,
              outcome: str = "ok", key: str | None = None, status: int | None = None) -> "History":
        response: dict[str, Any] | None = None
        if outcome == "ok":
            response = {"order_number": number}
        elif outcome == "fail":
            response = {"status": status, "message": "refused"}
        return self.add("order", {"name": name, "quantity": quantity, "key": key}, start, end, outcome, response)

    def read_order(self, number: int, start: float, end: float, found: tuple[str, int] | None) -> "History":
        if found is None:
            return self.add("read_order", {"number": number}, start, end, "fail", {"status": 404, "message": "no"})
        name, quantity = found
        return self.add("read_order", {"number": number}, start, end, "ok",
                        {"number": number, "name": name, "quantity": quantity})

    def read_product(self, name: str, start: float, end: float, quantity: int) -> "History":
        return self.add("read_product", {"name": name}, start, end, "ok",
                        {"name": name, "price": 1.0, "quantity": quantity})

    @property
    def ops(self) -> list[Operation]:
        return self.recorder.history()


def orders_verdict(history: History) -> Verdict:
    return check_history(OrderRegisterModel(), history.ops).verdict


def stock_verdict(history: History, initial: int = 5) -> Verdict:
    return check_history(StockCounterModel({"Tux": initial}), history.ops).verdict


# --- order register -------------------------------------------------------------------


def test_read_after_acknowledged_order_sees_it() -> None:
    history = History().order("Tux", 2, 0, 1, number=0).read_order(0, 2, 3, ("Tux", 2))
    assert orders_verdict(history) is Verdict.OK


def test_read_concurrent_with_order_may_see_it_or_not() -> None:
    seen = History().order("Tux", 2, 0, 5, number=0).read_order(0, 1, 2, ("Tux", 2))
    unseen = History().order("Tux", 2, 0, 5, number=0).read_order(0, 1, 2, None)
    assert (orders_verdict(seen), orders_verdict(unseen)) == (Verdict.OK, Verdict.OK)


def test_read_seeing_order_before_it_was_invoked_is_illegal() -> None:
    history = History().read_order(0, 0, 1, ("Tux", 2)).order("Tux", 2, 2, 3, number=0)
    result = check_history(OrderRegisterModel(), history.ops)
    assert result.verdict is Verdict.ILLEGAL
    assert [part.key for part in result.illegal] == [0]


def test_read_missing_order_acknowledged_before_it_started_is_illegal() -> None:
    history = History().order("Tux", 2, 0, 1, number=0).read_order(0, 2, 3, None)
    assert orders_verdict(history) is Verdict.ILLEGAL


def test_read_with_other_fields_is_illegal() -> None:
    history = History().order("Tux", 2, 0, 1, number=0).read_order(0, 2, 3, ("Tux", 3))
    assert orders_verdict(history) is Verdict.ILLEGAL


def test_order_seen_then_gone_is_illegal() -> None:
    history = (History().order("Tux", 2, 0, 10, number=0)
               .read_order(0, 1, 2, ("Tux", 2)).read_order(0, 3, 4, None))
    assert orders_verdict(history) is Verdict.ILLEGAL


def test_two_requests_acknowledged_with_one_number_is_illegal() -> None:
    history = History().order("Tux", 2, 0, 1, number=0, key="a").order("Tux", 2, 2, 3, number=0, key="b")
    assert orders_verdict(history) is Verdict.ILLEGAL


def test_retry_with_same_key_gets_same_number() -> None:
    history = History().order("Tux", 2, 0, 1, number=0, key="a").order("Tux", 2, 2, 3, number=0, key="a")
    assert orders_verdict(history) is Verdict.OK


def test_unknown_order_explains_an_order_nobody_was_acknowledged() -> None:
    explained = History().order("Tux", 2, 0, None, outcome="unknown").read_order(0, 2, 3, ("Tux", 2))
    phantom = History().order("Lego", 1, 0, None, outcome="unknown").read_order(0, 2, 3, ("Tux", 2))
    assert (orders_verdict(explained), orders_verdict(phantom)) == (Verdict.OK, Verdict.ILLEGAL)


def test_unknown_first_attempt_may_create_the_order_before_its_retry() -> None:
    history = (History().order("Tux", 2, 0, 1, outcome="unknown", key="a")
               .read_order(0, 2, 3, ("Tux", 2))
               .order("Tux", 2, 4, 5, number=0, key="a"))
    assert orders_verdict(history) is Verdict.OK


def test_unknown_order_with_another_key_cannot_explain_early_read() -> None:
    history = (History().order("Tux", 2, 0, 1, outcome="unknown", key="b")
               .read_order(0, 2, 3, ("Tux", 2))
               .order("Tux", 2, 4, 5, number=0, key="a"))
    assert orders_verdict(history) is Verdict.ILLEGAL


# --- stock counter --------------------------------------------------------------------


def test_read_after_acknowledged_order_shows_lower_stock() -> None:
    good = History().order("Tux", 2, 0, 1, number=0).read_product("Tux", 2, 3, 3)
    stale = History().order("Tux", 2, 0, 1, number=0).read_product("Tux", 2, 3, 5)
    assert (stock_verdict(good), stock_verdict(stale)) == (Verdict.OK, Verdict.ILLEGAL)


def test_concurrent_orders_linearizable_only_in_one_order() -> None:
    # B was invoked first, but only A-then-B explains A succeeding and B being refused.
    history = (History().order("Tux", 1, 1, 10, number=0, key="A")
               .order("Tux", 1, 0, 10, outcome="fail", status=409, key="B"))
    assert stock_verdict(history, initial=1) is Verdict.OK
    both_refused = (History().order("Tux", 1, 0, 1, outcome="fail", status=409)
                    .order("Tux", 1, 2, 3, number=0))
    assert stock_verdict(both_refused, initial=1) is Verdict.ILLEGAL


def test_refusal_with_enough_stock_is_illegal() -> None:
    history = History().order("Tux", 2, 0, 1, outcome="fail", status=409)
    assert stock_verdict(history, initial=5) is Verdict.ILLEGAL


def test_other_refusals_constrain_nothing() -> None:
    history = History().order("Tux", 2, 0, 1, outcome="fail", status=400).read_product("Tux", 2, 3, 5)
    assert stock_verdict(history) is Verdict.OK


def test_unknown_order_must_be_assumed_to_have_taken_effect() -> None:
    effect = History().order("Tux", 2, 0, None, outcome="unknown").read_product("Tux", 5, 6, 3)
    assert stock_verdict(effect) is Verdict.OK
    without_order = History().read_product("Tux", 5, 6, 3)
    assert stock_verdict(without_order) is Verdict.ILLEGAL
    not_yet = History().order("Tux", 2, 0, None, outcome="unknown").read_product("Tux", 5, 6, 5)
    assert stock_verdict(not_yet) is Verdict.OK


def test_reservation_of_unknown_order_may_be_released_but_acknowledged_one_not() -> None:
    released = (History().order("Tux", 2, 0, 1, outcome="unknown")
                .read_product("Tux", 5, 6, 3).read_product("Tux", 7, 8, 5))
    assert stock_verdict(released) is Verdict.OK
    undone = (History().order("Tux", 2, 0, 1, number=0)
              .read_product("Tux", 5, 6, 3).read_product("Tux", 7, 8, 5))
    assert stock_verdict(undone) is Verdict.ILLEGAL
    released_twice = (History().order("Tux", 2, 0, 1, outcome="unknown")
                      .read_product("Tux", 5, 6, 3).read_product("Tux", 7, 8, 7))
    assert stock_verdict(released_twice) is Verdict.ILLEGAL


def test_search_out_of_budget_is_unknown_not_illegal() -> None:
    history = History()
    for i in range(12):  # distinct quantities: no two are interchangeable
        history.order("Tux", i + 1, 0, None, outcome="unknown")
    history.read_product("Tux", 1, 2, 1)  # impossible: forces the whole tree to be searched
    result = check_history(StockCounterModel({"Tux": 1000}), history.ops, max_steps=50)
    assert result.verdict is Verdict.UNKNOWN


def test_deadline_on_injected_clock() -> None:
    ticks = itertools.count()
    history = History()
    for i in range(14):
        history.order("Tux", i + 1, 0, None, outcome="unknown")
    history.read_product("Tux", 1, 2, 1)
    result = check_history(StockCounterModel({"Tux": 1000}), history.ops, time_budget=1.5,
                           clock=lambda: float(next(ticks)))
    assert result.verdict is Verdict.UNKNOWN
    assert result.partitions[0].steps == 2048  # the clock reads 1 at step 1024, 2 at step 2048


def test_many_pending_unknown_orders_stay_cheap() -> None:
    history = History()
    for i in range(60):
        history.order("Tux", 1, 0, None, outcome="unknown")
    history.read_product("Tux", 1, 2, 1000 - 30).read_product("Tux", 3, 4, 1)  # 1 is impossible
    result = check_history(StockCounterModel({"Tux": 1000}), history.ops, max_steps=500_000)
    assert result.verdict is Verdict.ILLEGAL


def test_five_thousand_operations_in_a_few_seconds() -> None:
    rng = random.Random(7)
    toys = {f"toy{i}": 10_000 for i in range(5)}
    stock = dict(toys)
    history = History()
    names: list[str] = []
    clock = 0.0
    # Ten clients at a time: each batch overlaps, linearized in a random order inside it;
    # one order in twenty times out.
    for _ in range(500):
        batch = []
        for process in range(10):
            name = rng.choice(sorted(toys))
            kind = rng.choice(["order", "read_order", "read_product"])
            batch.append((process, name, kind))
        rng.shuffle(batch)
        settled = len(names)  # orders acknowledged in earlier batches
        start = clock
        for process, name, kind in batch:
            begin, end = start + rng.random() * 0.1, start + 1 + rng.random() * 0.1
            if kind == "order" and rng.random() < 0.05:  # a timeout: took effect or not
                stock[name] -= rng.choice([0, 1])
                history.order(name, 1, begin, end, outcome="unknown")
            elif kind == "order":
                stock[name] -= 1
                history.order(name, 1, begin, end, number=len(names))
                names.append(name)
            elif kind == "read_product":
                history.read_product(name, begin, end, stock[name])
            else:
                number = rng.randrange(len(names) + 1)  # an order of this batch, or none yet
                found = (names[number], 1) if number < settled else None
                history.read_order(number, begin, end, found)
        clock += 2
    ops = history.ops
    assert len(ops) == 5000
    started = time.monotonic()
    orders = check_history(OrderRegisterModel(), ops, time_budget=30)
    stocks = check_history(StockCounterModel(toys), ops, time_budget=30)
    elapsed = time.monotonic() - started
    assert (orders.verdict, stocks.verdict) == (Verdict.OK, Verdict.OK)
    assert elapsed < 5, elapsed


# --- generated histories --------------------------------------------------------------

STOCK = StockCounterModel({"Tux": 3})


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 3)), max_size=40))
def test_sequential_stock_histories_are_linearizable(steps: list[tuple[bool, int]]) -> None:
    stock, ops = 3, []
    for i, (is_order, quantity) in enumerate(steps):
        if is_order:
            output = "ok" if stock >= quantity else "refused"
            stock -= quantity if output == "ok" else 0
            ops.append(LinOp(i, 2 * i, 2 * i + 1, ("order", quantity), output))
        else:
            ops.append(LinOp(i, 2 * i, 2 * i + 1, ("read",), stock))
    assert check_partitions(STOCK, {"Tux": ops}).verdict is Verdict.OK


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=40))
def test_sequential_order_histories_are_linearizable(steps: list[tuple[int, bool]]) -> None:
    history, created = History(), 0
    for i, (number, is_order) in enumerate(steps):
        if is_order:
            history.order("Tux", 1, 2 * i, 2 * i + 1, number=created)
            created += 1
        else:
            history.read_order(number, 2 * i, 2 * i + 1, ("Tux", 1) if number < created else None)
    assert orders_verdict(history) is Verdict.OK


def brute_force_linearizable(model: Any, key: Any, ops: list[LinOp]) -> bool:
    """Every order of every op with a return and any subset of those pending forever (they
    may never take effect), keeping real-time precedence, stepped through the model."""
    definite = [op for op in ops if op.ret != math.inf]
    optional = [op for op in ops if op.ret == math.inf]
    return any(
        _some_order_legal(model, key, definite + list(chosen))
        for size in range(len(optional) + 1)
        for chosen in itertools.combinations(optional, size)
    )


def _some_order_legal(model: Any, key: Any, ops: list[LinOp]) -> bool:
    """Depth-first over orders: place next any op none of whose real-time predecessors waits."""

    def extend(state: Any, left: list[LinOp]) -> bool:
        if not left:
            return True
        for op in left:
            if any(other.ret < op.call for other in left):
                continue
            legal, after = model.step(state, op.input, op.output)
            if legal and extend(after, [other for other in left if other is not op]):
                return True
        return False

    return extend(model.init(key), ops)


@st.composite
def concurrent_stock_history(draw: st.DrawFn) -> list[LinOp]:
    """Ops whose outputs come from a linearization at random points, sometimes corrupted."""
    count = draw(st.integers(1, 6))
    shapes = []
    for i in range(count):
        call = draw(st.integers(0, 8))
        unknown = draw(st.integers(0, 4)) == 0
        ret = math.inf if unknown else call + draw(st.integers(0, 4))
        point = call + draw(st.floats(0, 1 if unknown else (ret - call))) if not unknown or draw(st.booleans()) else math.inf
        is_order = draw(st.booleans())
        quantity = draw(st.integers(1, 2))
        shapes.append((point, i, call, ret, is_order, quantity, unknown))
    stock, ops = 3, []
    for point, i, call, ret, is_order, quantity, unknown in sorted(shapes):
        if is_order:
            output = "ok" if stock >= quantity else "refused"
            if point != math.inf and output == "ok":
                stock -= quantity
            ops.append(LinOp(i, call, ret, ("order", quantity), None if unknown else output))
            if unknown:
                ops.append(LinOp(i + 100, call, ret, ("release", quantity), None))
        elif not unknown:
            ops.append(LinOp(i, call, ret, ("read",), stock))
    if ops and draw(st.booleans()):
        victim = draw(st.sampled_from(ops))
        wrong = draw(st.integers(0, 4)) if victim.input[0] == "read" else draw(st.sampled_from(["ok", "refused"]))
        ops[ops.index(victim)] = LinOp(victim.op_id, victim.call, victim.ret, victim.input, wrong)
    return sorted(ops, key=lambda op: op.op_id)


@settings(max_examples=300)
@given(concurrent_stock_history())
def test_stock_verdict_matches_brute_force(ops: list[LinOp]) -> None:
    verdict = check_partitions(STOCK, {"Tux": ops}).verdict
    assert verdict is (Verdict.OK if brute_force_linearizable(STOCK, "Tux", ops) else Verdict.ILLEGAL)


@st.composite
def concurrent_register_history(draw: st.DrawFn) -> list[LinOp]:
    ops = []
    for i in range(draw(st.integers(1, 6))):
        call = draw(st.integers(0, 8))
        ret = math.inf if draw(st.integers(0, 5)) == 0 else call + draw(st.integers(0, 4))
        if draw(st.booleans()):
            identity = draw(st.sampled_from(["a", "b"]))
            ops.append(LinOp(i, call, ret, ("order", "Tux", 1, identity, ret != math.inf), 0))
        elif ret != math.inf:
            ops.append(LinOp(i, call, ret, ("read",), draw(st.sampled_from([None, ("Tux", 1), ("Tux", 2)]))))
    return ops


@settings(max_examples=300)
@given(concurrent_register_history())
def test_register_verdict_matches_brute_force(ops: list[LinOp]) -> None:
    model = OrderRegisterModel()
    verdict = check_partitions(model, {0: ops}).verdict
    assert verdict is (Verdict.OK if brute_force_linearizable(model, 0, ops) else Verdict.ILLEGAL)
