"""Invariant checkers on one known-good run and on runs broken in one way each."""

import copy
import json
from typing import Any

import pytest

from toystore.faults.checkers import (
    ClusterState,
    ReplicaState,
    check_all,
    check_convergence,
    check_lost_orders,
    check_order_numbers,
    check_phantom_orders,
    check_stale_reads,
    check_stock_conservation,
    check_stock_linearizability,
    check_order_linearizability,
    check_stock_non_negative,
    verdict_table,
)
from toystore.faults.history import HistoryRecorder, Operation


def record(recorder: HistoryRecorder, process: int, kind: str, request: dict[str, Any],
           start: float, end: float, outcome: str, response: dict[str, Any] | None) -> None:
    op_id = recorder.invoke(process, kind, request, now=start)  # type: ignore[arg-type]
    recorder.complete(op_id, outcome, response, now=end)  # type: ignore[arg-type]


def good_history() -> list[Operation]:
    """Tux starts at 10, Lego at 5. An unknown order (op 2) committed as #2; another (op 6)
    never committed and its reservation was released."""
    r = HistoryRecorder()
    record(r, 1, "order", {"name": "Tux", "quantity": 2, "key": "a"}, 0, 1, "ok", {"order_number": 0})
    record(r, 2, "order", {"name": "Lego", "quantity": 1, "key": "b"}, 0.5, 1.5, "ok", {"order_number": 1})
    record(r, 3, "order", {"name": "Tux", "quantity": 3, "key": "c"}, 2, 3, "unknown", None)
    record(r, 1, "read_order", {"number": 0}, 4, 5, "ok", {"number": 0, "name": "Tux", "quantity": 2})
    record(r, 2, "read_product", {"name": "Tux"}, 4, 5, "ok", {"name": "Tux", "price": 9.5, "quantity": 5})
    record(r, 3, "order", {"name": "Lego", "quantity": 10, "key": "e"}, 6, 7, "fail", {"status": 409, "message": "out of stock"})
    record(r, 1, "order", {"name": "Tux", "quantity": 1, "key": "d"}, 6, 7, "unknown", None)
    record(r, 2, "read_product", {"name": "Lego"}, 8, 9, "ok", {"name": "Lego", "price": 3.0, "quantity": 4})
    record(r, 3, "read_order", {"number": 1}, 8, 9, "ok", {"number": 1, "name": "Lego", "quantity": 1})
    return r.history()


GOOD_ORDERS = [
    {"number": 0, "name": "Tux", "quantity": 2},
    {"number": 1, "name": "Lego", "quantity": 1},
    {"number": 2, "name": "Tux", "quantity": 3},
]


def good_state() -> ClusterState:
    return ClusterState(
        replicas={rid: ReplicaState(copy.deepcopy(GOOD_ORDERS), commit_index=3, latest_order_no=2) for rid in (1, 2, 3)},
        catalog={
            "toys": {
                "Tux": {"quantity": 5, "initial": 10, "restocked": 0, "price": 9.5},
                "Lego": {"quantity": 4, "initial": 5, "restocked": 0, "price": 3.0},
            },
            "reservations": {"held": 0, "confirmed": 3, "released": 1},
        },
    )


def history_plus(*extra: tuple[Any, ...]) -> list[Operation]:
    r = HistoryRecorder()
    for op in good_history():
        record(r, op.process, op.kind, op.request, op.invoke, op.complete or op.invoke, op.outcome, op.response)
    for row in extra:
        record(r, *row)
    return r.history()


def with_replica_orders(rid: int, orders: list[dict[str, Any]]) -> ClusterState:
    state = good_state()
    state.replicas[rid] = ReplicaState(orders, commit_index=len(orders), latest_order_no=len(orders) - 1)
    return state


def test_cluster_state_survives_json() -> None:
    state = good_state()
    assert ClusterState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_good_run_passes_every_checker() -> None:
    results = check_all(good_history(), good_state(), restocks_possible=False)

    assert [r.name for r in results if not r.ok] == []
    assert len(results) == 9
    assert not any("INCONCLUSIVE" in r.details[0] for r in results)


def test_verdict_table_lists_each_checker_with_first_detail() -> None:
    state = with_replica_orders(3, GOOD_ORDERS[:1])
    table = verdict_table(check_all(good_history(), state, restocks_possible=False))
    lines = table.splitlines()

    assert lines[0] == "| checker | ok | detail |"
    assert len(lines) == 2 + 9
    assert "| lost acknowledged orders | NO | order 1 (Lego x1, op 1) missing on replica 3 |" in lines
    assert any(line.startswith("| stock never negative | yes |") for line in lines)


# --- invariant 1 ----------------------------------------------------------------------


def test_lost_order_is_reported_with_number_and_replica() -> None:
    result = check_lost_orders(good_history(), with_replica_orders(3, GOOD_ORDERS[:1]))
    assert not result.ok
    assert result.details == ["order 1 (Lego x1, op 1) missing on replica 3"]


def test_order_with_changed_fields_is_lost() -> None:
    orders = copy.deepcopy(GOOD_ORDERS)
    orders[0]["quantity"] = 7
    result = check_lost_orders(good_history(), with_replica_orders(2, orders))
    assert not result.ok
    assert "order 0 is Tux x7 on replica 2" in result.details[0]


def test_unacknowledged_order_missing_is_not_lost() -> None:
    # #2 came from an order whose outcome was unknown: it may legitimately be absent.
    assert check_lost_orders(good_history(), with_replica_orders(1, GOOD_ORDERS[:2])).ok


# --- invariant 2 ----------------------------------------------------------------------


def test_phantom_order_nobody_asked_for() -> None:
    orders = GOOD_ORDERS + [{"number": 3, "name": "Lego", "quantity": 7}]
    result = check_phantom_orders(good_history(), with_replica_orders(1, orders))
    assert not result.ok
    assert result.details == ["replica 1 holds 1 orders of Lego x7, clients asked for 0"]


def test_committed_orders_are_matched_to_their_requests_by_key() -> None:
    keyed = [{**order, "request_id": key} for order, key in zip(GOOD_ORDERS, "abc")]
    assert check_phantom_orders(good_history(), with_replica_orders(1, keyed)).ok
    # Tux x1 matches the unknown request d as a multiset, but nobody sent key "z".
    stranger = keyed + [{"number": 3, "name": "Tux", "quantity": 1, "request_id": "z"}]
    result = check_phantom_orders(good_history(), with_replica_orders(1, stranger))
    assert result.details == ["replica 1 order 3 has request id 'z', which no client sent in an order "
                              "that could have taken effect"]
    swapped = keyed + [{"number": 3, "name": "Tux", "quantity": 1, "request_id": "b"}]
    assert "but request 'b' asked for Lego x1" in check_phantom_orders(
        good_history(), with_replica_orders(1, swapped)).details[0]


def test_failed_order_committed_is_a_phantom() -> None:
    orders = GOOD_ORDERS + [{"number": 3, "name": "Lego", "quantity": 10}]
    assert not check_phantom_orders(good_history(), with_replica_orders(1, orders)).ok


def test_retry_with_one_key_may_commit_only_once() -> None:
    history = history_plus((1, "order", {"name": "Tux", "quantity": 2, "key": "a"}, 10, 11, "ok", {"order_number": 0}))
    twice = GOOD_ORDERS + [{"number": 3, "name": "Tux", "quantity": 2}]

    assert check_phantom_orders(history, good_state()).ok
    assert not check_phantom_orders(history, with_replica_orders(2, twice)).ok


def test_acknowledged_number_holding_another_order_is_a_phantom() -> None:
    orders = copy.deepcopy(GOOD_ORDERS)
    orders[0], orders[2] = {"number": 0, "name": "Tux", "quantity": 3}, {"number": 2, "name": "Tux", "quantity": 2}
    result = check_phantom_orders(good_history(), with_replica_orders(2, orders))
    assert not result.ok
    assert result.details == ["replica 2 order 0 is Tux x3, nobody was told that number for it"]


def test_duplicate_number_on_a_replica() -> None:
    orders = GOOD_ORDERS + [{"number": 2, "name": "Tux", "quantity": 1}]
    state = with_replica_orders(1, orders)
    state.replicas[1].latest_order_no = 2
    result = check_order_numbers(good_history(), state)
    assert not result.ok
    assert result.details == ["replica 1 repeats order numbers [2]"]


def test_gap_in_numbers() -> None:
    state = with_replica_orders(2, [GOOD_ORDERS[0], GOOD_ORDERS[2]])
    state.replicas[2].latest_order_no = 2
    result = check_order_numbers(good_history(), state)
    assert not result.ok
    assert result.details == ["replica 2 is missing order numbers [1]"]


def test_latest_order_no_must_match_orders() -> None:
    state = good_state()
    state.replicas[3].latest_order_no = 1
    assert not check_order_numbers(good_history(), state).ok


def test_one_number_acknowledged_to_two_requests() -> None:
    r = HistoryRecorder()
    record(r, 1, "order", {"name": "Tux", "quantity": 2, "key": "a"}, 0, 1, "ok", {"order_number": 0})
    record(r, 2, "order", {"name": "Tux", "quantity": 2, "key": "b"}, 0, 1, "ok", {"order_number": 0})
    state = with_replica_orders(1, GOOD_ORDERS[:1])
    result = check_order_numbers(r.history(), ClusterState({1: state.replicas[1]}, state.catalog))
    assert not result.ok
    assert result.details == ["order number 0 acknowledged to ops [0, 1]"]


def test_one_key_acknowledged_with_two_numbers() -> None:
    r = HistoryRecorder()
    record(r, 1, "order", {"name": "Tux", "quantity": 2, "key": "a"}, 0, 1, "ok", {"order_number": 0})
    record(r, 1, "order", {"name": "Tux", "quantity": 2, "key": "a"}, 2, 3, "ok", {"order_number": 1})
    result = check_order_numbers(r.history(), good_state())
    assert not result.ok
    assert result.details == ["idempotency key 'a' acknowledged with numbers [0, 1]"]


# --- invariant 3 ----------------------------------------------------------------------


def test_conservation_break_names_the_toy() -> None:
    state = good_state()
    state.catalog["toys"]["Tux"]["quantity"] = 6  # a released reservation counted twice
    result = check_stock_conservation(good_history(), state)
    assert not result.ok
    assert result.details == ["Tux: stock 6 + ordered 5 = 11, but initial 10 + restocked 0 = 10"]


def test_restock_counts_as_supply() -> None:
    state = good_state()
    state.catalog["toys"]["Tux"].update(quantity=105, restocked=100)
    assert check_stock_conservation(good_history(), state).ok


def test_held_reservations_fail_conservation() -> None:
    state = good_state()
    state.catalog["reservations"]["held"] = 2
    state.catalog["toys"]["Tux"]["quantity"] = 4
    result = check_stock_conservation(good_history(), state)
    assert not result.ok
    assert result.details[0] == "2 reservations still held: neither committed nor released"


def test_orders_of_unknown_toy_break_conservation() -> None:
    state = good_state()
    del state.catalog["toys"]["Lego"]
    assert not check_stock_conservation(good_history(), state).ok


# --- invariant 4 ----------------------------------------------------------------------


def test_negative_stock_in_ledger() -> None:
    state = good_state()
    state.catalog["toys"]["Lego"]["quantity"] = -1
    result = check_stock_non_negative(good_history(), state)
    assert (result.ok, result.details) == (False, ["Lego: ledger stock -1"])


def test_negative_stock_in_a_read() -> None:
    r = HistoryRecorder()
    record(r, 1, "read_product", {"name": "Tux"}, 0, 1, "ok", {"name": "Tux", "price": 1.0, "quantity": -2})
    result = check_stock_non_negative(r.history(), good_state())
    assert (result.ok, result.details) == (False, ["Tux: op 0 read stock -2"])


def test_stale_read_of_order_after_failover_404() -> None:
    history = history_plus((4, "read_order", {"number": 1}, 10, 11, "fail", {"status": 404, "message": "no order 1"}))
    result = check_stale_reads(history, good_state(), restocks_possible=False)
    assert not result.ok
    assert result.details[0] == "read of order 1 (op 9) got 404 after it was acknowledged"


def test_read_of_order_concurrent_with_it_may_miss_it() -> None:
    history = history_plus((4, "read_order", {"number": 0}, 0.5, 0.9, "fail", {"status": 404, "message": "no"}))
    assert check_stale_reads(history, good_state(), restocks_possible=False).ok


def test_stale_read_of_order_with_wrong_fields() -> None:
    history = history_plus((4, "read_order", {"number": 0}, 10, 11, "ok", {"number": 0, "name": "Tux", "quantity": 9}))
    assert not check_stale_reads(history, good_state(), restocks_possible=False).ok


def test_stale_read_of_product_from_cache() -> None:
    # Tux 10 - 2 (op 0, acknowledged at t=1): a read from t=2 cannot show more than 8.
    history = history_plus((4, "read_product", {"name": "Tux"}, 2, 2.5, "ok", {"name": "Tux", "price": 9.5, "quantity": 10}))
    result = check_stale_reads(history, good_state(), restocks_possible=False)
    assert not result.ok
    assert result.details == ["Tux: op 9 read stock 10, at most 8 after 1 acknowledged orders"]


def test_product_read_concurrent_with_order_may_show_old_stock() -> None:
    history = history_plus((4, "read_product", {"name": "Tux"}, 0.5, 2.5, "ok", {"name": "Tux", "price": 9.5, "quantity": 10}))
    assert check_stale_reads(history, good_state(), restocks_possible=False).ok


def test_product_reads_skipped_when_restocks_possible() -> None:
    history = history_plus((4, "read_product", {"name": "Tux"}, 2, 2.5, "ok", {"name": "Tux", "price": 9.5, "quantity": 10}))
    result = check_stale_reads(history, good_state(), restocks_possible=True)
    assert result.ok
    assert "product reads not checked: restocks were possible" in result.details


def test_product_reads_skipped_for_toy_the_ledger_shows_restocked() -> None:
    history = history_plus((4, "read_product", {"name": "Tux"}, 2, 2.5, "ok", {"name": "Tux", "price": 9.5, "quantity": 10}))
    state = good_state()
    state.catalog["toys"]["Tux"].update(quantity=105, restocked=100)
    result = check_stale_reads(history, state, restocks_possible=False)
    assert result.ok
    assert "Tux: product reads not checked, the ledger shows a restock" in result.details


# --- invariant 5 ----------------------------------------------------------------------


def test_divergent_replicas() -> None:
    orders = copy.deepcopy(GOOD_ORDERS)
    orders[2]["quantity"] = 1
    state = good_state()
    state.replicas[2].orders = orders
    result = check_convergence(good_history(), state)
    assert not result.ok
    assert result.details == ["replica 2 has 3 orders, replica 1 3; first difference at position 2"]


def test_replica_behind_in_commit_index() -> None:
    state = with_replica_orders(3, GOOD_ORDERS[:2])
    result = check_convergence(good_history(), state)
    assert not result.ok
    assert result.details == [
        "replica 3 has 2 orders, replica 1 3; first difference at position 2",
        "replica 3 commit_index 2, replica 1 3",
    ]


# --- linearizability through the checkers ---------------------------------------------


def test_read_seeing_order_before_it_was_invoked_fails_linearizability() -> None:
    history = history_plus(
        (4, "read_order", {"number": 3}, 10, 11, "ok", {"number": 3, "name": "Lego", "quantity": 2}),
        (5, "order", {"name": "Lego", "quantity": 2, "key": "z"}, 12, 13, "ok", {"order_number": 3}),
    )
    result = check_order_linearizability(history)
    assert not result.ok
    assert result.details[0].startswith("order 3: no linearization of 2 ops; stuck at op 9")


def test_stock_linearizability_finds_undone_order() -> None:
    history = history_plus(
        (4, "read_product", {"name": "Lego"}, 10, 11, "ok", {"name": "Lego", "price": 3.0, "quantity": 5}),
    )
    result = check_stock_linearizability(history, good_state(), restocks_possible=False)
    assert not result.ok
    assert result.details[0].startswith("toy Lego: no linearization")
    assert check_stock_linearizability(history, good_state(), restocks_possible=True).ok


@pytest.mark.parametrize("restocks_possible", [False, True])
def test_check_all_fails_exactly_the_broken_invariant(restocks_possible: bool) -> None:
    state = good_state()
    state.catalog["toys"]["Lego"]["quantity"] = 3
    results = check_all(good_history(), state, restocks_possible)
    failed = [r.name for r in results if not r.ok]
    assert failed == ["stock conservation"]
