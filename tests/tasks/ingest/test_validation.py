"""Row-level validation, called directly: what a batch keeps, what it rejects and the reason each row carries."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import Contract, contract_at, parse_contract
from closedloop.landing import UnusableBatch
from closedloop.settings import PROJECT_ROOT
from samples.synthetic import SyntheticConfig, generate_block
from tasks.ingest.validation import (
    _masks_from,
    build_suite,
    check_schema,
    coerce,
    describe,
    run_suite,
    unexpected_masks,
    validate,
)

NOW = datetime(2026, 1, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
def contract() -> Contract:
    """One table of events (an amount, a count, a kind, a flag) and a table of outcomes."""
    return parse_contract(
        {
            "name": "tiny",
            "version": 1,
            "start": "2024-01-01T00:00:00Z",
            "entity": {"name": "customer", "join_key": "customer_id"},
            "tables": {
                "events": {"event_time": "event_at", "primary_key": ["event_id"]},
                "outcomes": {"event_time": "observed_at", "primary_key": ["event_id"]},
            },
            "prediction": "events",
            "label": {"column": "y", "source": "outcomes", "delay_days": 1},
            "decision": {"cost_false_negative": 1, "cost_false_positive": 1},
            "max_bad_row_share": 0.5,
            "columns": [
                {"name": "amount", "type": "float", "source": "events", "min": 0, "max": 100},
                {"name": "count", "type": "int", "source": "events", "min": 0, "max": 10},
                {"name": "kind", "type": "category", "source": "events", "categories": ["a", "b"]},
                {"name": "flag", "type": "bool", "source": "events", "nullable": True},
            ],
        }
    )


def _events(rows: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, rows + 1),
            "event_id": np.arange(100, 100 + rows),
            "event_at": pd.date_range("2025-03-01", periods=rows, freq="D", tz="UTC"),
            "amount": np.linspace(1.0, 99.0, rows),
            "count": np.arange(rows) % 10,
            "kind": ["a", "b"] * (rows // 2) + ["a"] * (rows % 2),
            "flag": [True, False] * (rows // 2) + [None] * (rows % 2),
        }
    )


def _reasons(result: Any) -> dict[int, str]:
    return dict(zip(result.rejected["_source_row"].tolist(), result.rejected["_reasons"].tolist(), strict=True))


def test_a_clean_batch_is_accepted_whole_with_utc_microsecond_times(contract: Contract) -> None:
    result = validate(_events(), contract, "events", NOW)
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (6, 6, 0)
    assert result.batch_error is None and result.rejected.empty and result.failing == {}
    assert str(result.accepted["event_at"].dtype) == "datetime64[us, UTC]"
    assert result.accepted["amount"].tolist() == _events()["amount"].tolist()


def test_each_bad_row_is_rejected_with_the_rule_it_broke_and_the_rest_kept(contract: Contract) -> None:
    frame = _events()
    frame.loc[1, "amount"] = 150.0
    frame.loc[3, "kind"] = "z"
    result = validate(frame, contract, "events", NOW)
    assert (result.rows_accepted, result.rows_quarantined) == (4, 2)
    assert _reasons(result) == {
        1: "expect_column_values_to_be_between(amount)",
        3: "expect_column_values_to_be_in_set(kind)",
    }
    assert result.failing == {
        "expect_column_values_to_be_between(amount)": 1,
        "expect_column_values_to_be_in_set(kind)": 1,
    }
    assert sorted(result.accepted["event_id"]) == [100, 102, 104, 105]
    assert result.rejected.loc[result.rejected["_source_row"] == 1, "amount"].item() == 150.0  # as read


def test_a_cell_of_the_wrong_type_names_its_value_once(contract: Contract) -> None:
    frame = _events().astype({"count": object, "flag": object})
    frame.loc[2, "count"] = "many"
    frame.loc[4, "flag"] = "maybe"
    result = validate(frame, contract, "events", NOW)
    # the cell that failed its type is not reported a second time as a null
    assert _reasons(result) == {
        2: "type(count): expected an integer, got 'many'",
        4: "type(flag): expected true or false, got 'maybe'",
    }
    assert result.failing == {"type(count)": 1, "type(flag)": 1}


def test_duplicate_keys_reject_every_copy(contract: Contract) -> None:
    frame = _events()
    frame.loc[5, "event_id"] = frame.loc[4, "event_id"]
    result = validate(frame, contract, "events", NOW)
    assert _reasons(result) == {
        4: "expect_column_values_to_be_unique(event_id)",
        5: "expect_column_values_to_be_unique(event_id)",
    }


def test_event_times_outside_the_contract_window_are_rejected(contract: Contract) -> None:
    frame = _events()
    frame.loc[0, "event_at"] = pd.Timestamp("2023-12-31", tz="UTC")  # before the contract's start
    frame.loc[1, "event_at"] = pd.Timestamp("2026-02-01", tz="UTC")  # after now
    assert set(_reasons(validate(frame, contract, "events", NOW))) == {0, 1}


def test_over_the_bad_row_limit_the_batch_is_held_whole_and_each_row_says_why(contract: Contract) -> None:
    frame = _events()
    frame.loc[:3, "kind"] = "z"  # 4 of 6 rows: over the contract's 50%
    result = validate(frame, contract, "events", NOW)
    assert result.batch_error is not None
    assert "67% of rows are bad, over the contract's limit of 50%" in result.batch_error
    assert (result.rows_accepted, result.rows_quarantined) == (0, 6)
    reasons = _reasons(result)
    assert [reasons[i] for i in range(6)] == ["expect_column_values_to_be_in_set(kind)"] * 4 + [
        "batch over the bad-row limit"
    ] * 2


def test_a_batch_without_the_label_is_unusable_and_kept_whole(contract: Contract) -> None:
    outcomes = pd.DataFrame(
        {"customer_id": [1], "event_id": [1], "observed_at": pd.to_datetime(["2025-01-01"], utc=True)}
    )
    result = validate(outcomes, contract, "outcomes", NOW)
    assert result.batch_error == "the label column 'y' is missing from this outcomes batch"
    assert result.rows_quarantined == 1 and result.rejected["_reasons"].tolist() == [result.batch_error]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["amount"]), "missing column(s) ['amount'] required by contract 'tiny'"),
        (lambda f: f.assign(colour="red"), "unexpected column(s) ['colour'] not in contract 'tiny'"),
        (lambda f: f.iloc[0:0], "empty batch: a header but no rows"),
        (lambda f: f.assign(event_at=f["event_at"].dt.tz_localize(None)), "event time 'event_at' has no timezone"),
        (
            lambda f: pd.concat([f, f[["amount"]]], axis=1),
            "column(s) ['amount'] appear more than once",
        ),
    ],
    ids=["missing", "extra", "empty", "naive times", "duplicated column"],
)
def test_check_schema_refuses_a_batch_that_is_not_the_contracts(contract: Contract, change: Any, message: str) -> None:
    with pytest.raises(UnusableBatch, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_schema(change(_events()), contract, "events")


def test_coerce_types_text_cells_and_keeps_every_row(contract: Contract) -> None:
    text = pd.DataFrame(
        {
            "customer_id": ["1", "2", "3"],
            "event_id": ["10", "11", "12"],
            "event_at": ["2025-03-01T10:00:00Z", "2025-03-01 10:00:00", "soon+01:00"],
            "amount": ["1.5", "abc", ""],
            "count": ["3", "2.5", "4"],
            "kind": ["a", "b", "a"],
            "flag": ["TRUE", "0", "yes"],
        }
    )
    typed, failures = coerce(text.replace("", None), contract, "events")
    assert len(typed) == 3 and list(typed.columns) == contract.required_columns("events")
    assert typed["amount"].iloc[0] == 1.5 and np.isnan(typed["amount"].iloc[2])  # empty is a null, not an error
    assert typed["flag"].iloc[:2].tolist() == [True, False]
    assert typed["event_at"].iloc[0] == pd.Timestamp("2025-03-01T10:00:00Z")
    assert failures == {
        1: [
            "type(event_at): timestamp without timezone '2025-03-01 10:00:00'",
            "type(amount): expected a number, got 'abc'",
            "type(count): expected an integer, got '2.5'",
        ],
        2: ["type(event_at): not a timestamp 'soon+01:00'", "type(flag): expected true or false, got 'yes'"],
    }


def test_describe_names_an_expectation_by_type_and_column() -> None:
    assert describe({"type": "expect_column_values_to_be_between", "kwargs": {"column": "income"}}) == (
        "expect_column_values_to_be_between(income)"
    )
    assert describe({"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["a", "b"]}}) == (
        "expect_compound_columns_to_be_unique(a,b)"
    )
    assert describe({"type": "expect_table_row_count_to_be_between", "kwargs": {}}) == (
        "expect_table_row_count_to_be_between"
    )


def test_an_expectation_only_gx_knows_is_judged_by_gx_on_every_row(contract: Contract) -> None:
    import great_expectations.expectations as gxe

    suite = build_suite(contract, "events", NOW)
    suite.add_expectation(gxe.ExpectColumnValueLengthsToEqual(column="kind", value=1))
    typed, _ = coerce(_events(), contract, "events")
    assert unexpected_masks(typed, suite) is None  # the fast pass declines rather than guess


# the row cases of the ingest tests, on the credit contract: the fast pass must agree with GX row by row
CREDIT = contract_at(str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"))


def _set(row: int, column: str, value: object) -> Any:
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object}) if not isinstance(value, type(frame[column].iloc[0])) else frame
        frame.loc[row, column] = value
        return frame

    return mutate


AGREEMENT_CASES = [
    ("clean", lambda f: f),
    ("null in a required field", _set(5, "loan_amount", None)),
    ("value out of range", _set(6, "loan_amount", -10.0)),
    ("unseen category", _set(7, "loan_purpose", "yacht")),
    ("null key", _set(8, "application_id", None)),
    ("future timestamp", _set(9, "applied_at", pd.Timestamp("2027-01-01", tz="UTC"))),
    ("before the start", _set(10, "applied_at", pd.Timestamp("2019-05-01", tz="UTC"))),
    ("text in a number (csv)", _set(3, "loan_amount", "abc")),
]


@pytest.fixture(scope="module")
def applications() -> pd.DataFrame:
    return generate_block(SyntheticConfig(customers=40, start="2025-01", months=12), 0)["applications"].to_pandas()


@pytest.mark.parametrize(("case", "mutate"), AGREEMENT_CASES, ids=[c[0] for c in AGREEMENT_CASES])
def test_the_fast_pass_and_gx_agree_row_by_row(applications: pd.DataFrame, case: str, mutate: Any) -> None:
    """The vectorised pass over the suite flags exactly the rows GX's own engine flags, rule by rule."""
    frame = mutate(applications.copy())
    if "csv" in case:
        frame = pd.read_csv(io.BytesIO(frame.to_csv(index=False).encode()), dtype=str, keep_default_na=False)
    typed, _ = coerce(frame, CREDIT, "applications")
    suite = build_suite(CREDIT, "applications", NOW)
    fast = {k: v.nonzero()[0].tolist() for k, v in (unexpected_masks(typed, suite) or {}).items() if v.any()}
    slow = {k: v.nonzero()[0].tolist() for k, v in _masks_from(run_suite(typed, suite), len(typed)).items()}
    assert fast == slow
    assert bool(fast) == (case != "clean")
