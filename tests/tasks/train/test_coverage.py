"""Feature coverage: applications without a feature table's row at their time are left out and counted per table."""

from __future__ import annotations

import pyarrow as pa
import pytest

from closedloop.contract import load_contract, parse_contract
from closedloop.settings import PROJECT_ROOT
from tasks.train.coverage import CoverageCounter, presence_columns

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")


def test_a_tables_row_is_marked_by_its_retrieved_columns_that_cannot_be_null() -> None:
    markers = presence_columns(CONTRACT)
    assert list(markers) == ["profiles", "credit_history"]  # not the scored applications, not the outcomes
    # the sensitive attributes are retrieved (fairness analysis); postcode is excluded, so never retrieved
    assert markers["profiles"] == [
        "age",
        "sex",
        "marital_status",
        "education",
        "region",
        "home_ownership",
        "income",
        "employment_years",
    ]
    assert markers["credit_history"] == [
        "credit_limit",
        "balance",
        "utilisation",
        "months_delinquent",
        "payment_ratio",
        "open_accounts",
    ]


def test_a_table_whose_columns_are_all_nullable_is_marked_by_all_of_them() -> None:
    data = CONTRACT.model_dump(mode="json")
    for column in data["columns"]:
        if column["source"] == "credit_history" or column["name"] == "income":
            column["nullable"] = True
    markers = presence_columns(parse_contract(data))
    assert "income" not in markers["profiles"] and "age" in markers["profiles"]  # an optional value marks nothing
    assert markers["credit_history"] == [
        "credit_limit",
        "balance",
        "utilisation",
        "months_delinquent",
        "payment_ratio",
        "open_accounts",
    ]


def _batch(ids: list[int], income: list[float | None], sex: list[str | None], balance: list[float | None]) -> pa.Table:
    return pa.table(
        {
            "application_id": ids,
            "income": pa.array(income, pa.float64()),
            "sex": pa.array(sex, pa.string()),
            "balance": pa.array(balance, pa.float64()),
            "channel": pa.array([None] * len(ids), pa.string()),  # an optional input, empty in every row
        }
    )


def test_rows_without_a_tables_row_are_left_out_and_counted_batch_by_batch() -> None:
    counter = CoverageCounter({"profiles": ["income", "sex"], "credit_history": ["balance"]})
    first = counter.keep(
        _batch(
            [1, 2, 3, 4],
            [50_000.0, None, 40_000.0, None],
            ["female", None, None, "male"],  # row 3: a profile without sex is still a profile
            [100.0, 200.0, None, 300.0],
        )
    )
    # row 2: no profile (every profile column empty); row 3: no statement within its ttl
    assert first.column("application_id").to_pylist() == [1, 4]
    assert first.column_names == ["application_id", "income", "sex", "balance", "channel"]
    second = counter.keep(_batch([5, 6], [float("nan"), 30_000.0], [None, "male"], [10.0, 20.0]))
    assert second.column("application_id").to_pylist() == [6]  # a NaN is no value either
    assert counter.keep(_batch([], [], [], [])).num_rows == 0
    coverage = counter.result()
    assert coverage.rows == 6 and coverage.left_out == 3
    assert coverage.missing == {"profiles": 2, "credit_history": 1}
    assert coverage.coverage == {"profiles": pytest.approx(4 / 6), "credit_history": pytest.approx(5 / 6)}


def test_a_row_missing_from_two_tables_is_left_out_once() -> None:
    counter = CoverageCounter({"profiles": ["income"], "credit_history": ["balance"]})
    assert counter.keep(_batch([1, 2], [None, 1.0], ["male", "male"], [None, 2.0])).num_rows == 1
    coverage = counter.result()
    assert coverage.left_out == 1 and coverage.missing == {"profiles": 1, "credit_history": 1}


def test_a_retrieval_without_a_marker_column_is_refused() -> None:
    counter = CoverageCounter({"profiles": ["income", "age"]})
    with pytest.raises(ValueError, match=r"no column\(s\) \['age'\] of table 'profiles'"):
        counter.keep(_batch([1], [1.0], ["male"], [1.0]))


def test_without_feature_tables_every_row_is_kept() -> None:
    counter = CoverageCounter({})
    assert counter.keep(_batch([1, 2], [None, None], [None, None], [None, None])).num_rows == 2
    assert counter.result().model_dump() == {"rows": 2, "left_out": 0, "missing": {}, "coverage": {}}
