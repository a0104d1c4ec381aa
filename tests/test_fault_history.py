"""The history recorder: what a fault run remembers of each client operation."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toystore.faults.history import HistoryRecorder, Operation, outcome_for_status, read_jsonl, write_jsonl


def test_recorder_keeps_invocation_and_completion() -> None:
    recorder = HistoryRecorder()
    first = recorder.invoke(1, "order", {"name": "Tux", "quantity": 2, "key": "k1"}, now=1.0)
    second = recorder.invoke(2, "read_product", {"name": "Tux"}, now=1.5)
    recorder.complete(first, "ok", {"order_number": 0}, now=2.0)
    recorder.complete(second, "fail", {"status": 404, "message": "no such toy"}, now=2.5)

    assert recorder.history() == [
        Operation(0, 1, "order", 1.0, 2.0, "ok", {"name": "Tux", "quantity": 2, "key": "k1"}, {"order_number": 0}),
        Operation(1, 2, "read_product", 1.5, 2.5, "fail", {"name": "Tux"}, {"status": 404, "message": "no such toy"}),
    ]


def test_operation_never_completed_is_unknown() -> None:
    recorder = HistoryRecorder()
    recorder.invoke(1, "order", {"name": "Tux", "quantity": 1}, now=1.0)

    [operation] = recorder.history()
    assert (operation.outcome, operation.complete, operation.response) == ("unknown", None, None)


def test_completing_twice_or_unknown_id_is_refused() -> None:
    recorder = HistoryRecorder()
    op_id = recorder.invoke(1, "read_order", {"number": 3}, now=1.0)
    recorder.complete(op_id, "unknown", None, now=2.0)

    with pytest.raises(ValueError):
        recorder.complete(op_id, "ok", {"number": 3, "name": "Tux", "quantity": 1}, now=3.0)
    with pytest.raises(KeyError):
        recorder.complete(7, "ok", None, now=3.0)


def test_completion_before_invocation_is_refused() -> None:
    recorder = HistoryRecorder()
    op_id = recorder.invoke(1, "read_order", {"number": 3}, now=5.0)

    with pytest.raises(ValueError):
        recorder.complete(op_id, "ok", None, now=4.0)


def test_recorder_copies_request_so_caller_mutation_does_not_leak() -> None:
    recorder = HistoryRecorder()
    request = {"name": "Tux", "quantity": 1}
    recorder.invoke(1, "order", request, now=0.0)
    request["quantity"] = 99

    assert recorder.history()[0].request["quantity"] == 1


@pytest.mark.parametrize(
    ("status", "outcome"), [(200, "ok"), (404, "fail"), (409, "fail"), (500, "unknown"), (503, "unknown")]
)
def test_outcome_for_status(status: int, outcome: str) -> None:
    assert outcome_for_status(status) == outcome


def test_status_of_failed_operation_comes_from_response() -> None:
    failed = Operation(0, 1, "order", 0.0, 1.0, "fail", {"name": "Tux", "quantity": 5}, {"status": 409, "message": "x"})
    unknown = Operation(1, 1, "order", 0.0, 1.0, "unknown", {"name": "Tux", "quantity": 5}, None)

    assert (failed.status, unknown.status) == (409, None)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 50),
            st.sampled_from(["order", "read_order", "read_product"]),
            st.floats(0, 1e6, allow_nan=False),
            st.one_of(st.none(), st.floats(0, 1e3, allow_nan=False)),
            st.sampled_from(["ok", "fail", "unknown"]),
            st.dictionaries(st.text(max_size=6), json_scalars, max_size=3),
            st.one_of(st.none(), st.dictionaries(st.text(max_size=6), json_scalars, max_size=3)),
        ),
        max_size=20,
    )
)
def test_jsonl_round_trips_exactly(tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:
    history = [
        Operation(i, process, kind, invoke, None if took is None else invoke + took, outcome, request, response)
        for i, (process, kind, invoke, took, outcome, request, response) in enumerate(rows)
    ]
    path: Path = tmp_path_factory.mktemp("history") / "history.jsonl"
    write_jsonl(path, history)

    assert read_jsonl(path) == history
    assert len(path.read_text().splitlines()) == len(history)
