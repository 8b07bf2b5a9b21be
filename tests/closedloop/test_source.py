"""A file's rows as the contract names them: headers, null tokens, codes, missing codes, formulas, time and keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from one_table import flat_loans, loans_column

from closedloop.contract import Contract, parse_contract
from closedloop.landing import UnusableBatch
from closedloop.source import KeyState, derive_values, request_values, to_internal

NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)


def _doc() -> dict[str, Any]:
    """flat_loans with more for the source to apply.

    A second data-set token, an ignored pattern, a column's own token, a category's missing code and two file codes
    for one category, a formula over a nullable operand.
    """
    doc = flat_loans(null_tokens=["NA", "NULL"])
    doc["tables"]["loans"]["file"]["ignore"] = ["", "PAY_*"]
    loans_column(doc, "monthly_income")["null_tokens"] = ["-"]
    loans_column(doc, "region").update(
        categories=["north", "east", "south", "west", "unknown"],
        nullable=True,
        codes={"N": "north", "E": "east", "S": "south", "W": "west", "X": "unknown", "0": "unknown"},
        missing_codes=["?"],
    )
    doc["columns"].append(
        {"name": "per_late", "type": "float", "formula": "monthly_income / late_30_59", "nullable": True}
    )
    return doc


@pytest.fixture
def contract() -> Contract:
    return parse_contract(_doc())


def _file(**overrides: list[Any]) -> pd.DataFrame:
    """Four rows as a CSV reader gives them (text cells, NaN for an empty cell); rows 0 and 3 are identical."""
    cells: dict[str, list[Any]] = {
        "Unnamed: 0": ["0", "1", "2", "3"],
        "SeriousDlqin2yrs": ["0", "1", np.nan, "0"],
        "RevolvingUtilizationOfUnsecuredLines": ["0.5", "0.25", "1.1", "0.5"],
        "age": ["30", "20", "40", "30"],
        "NumberOfTime30-59DaysPastDueNotWorse": ["1", "96", "98.0", "1"],
        "MonthlyIncome": ["1200.5", np.nan, "-", "1200.5"],
        "NumberOfDependents": ["0", "2", "1", "0"],
        "DAYS_BIRTH": ["-10957", "-7305", "-14610", "-10957"],
        "DAYS_EMPLOYED": ["-400", "-30", "-9000", "-400"],
        "CODE_GENDER": ["F", "M", "F", "F"],
        "MaritalStatus": ["single", "married", "widowed", "single"],
        "Region.Code": ["N", "X", "?", "N"],
        "PAY_0": ["1", "2", "3", "1"],
    }
    cells.update(overrides)
    return pd.DataFrame(cells, dtype=object)


def _internal(contract: Contract, frame: pd.DataFrame, keys: KeyState | None = None, rows: Any = None) -> Any:
    positions = np.arange(len(frame)) if rows is None else rows
    return to_internal(frame, contract, "loans", batch_id="b1", rows=positions, now=NOW, keys=keys)


def test_a_file_becomes_the_contracts_columns_in_the_contracts_order(contract: Contract) -> None:
    out = _internal(contract, _file()).frame
    assert list(out.columns) == contract.required_columns("loans")
    assert "PAY_0" not in out and "Unnamed: 0" not in out  # ignored, never stored
    assert out["sex"].tolist() == ["female", "male", "female", "female"]  # codes
    assert out["sex_code"].tolist() == ["F", "M", "F", "F"]  # the same header, as read
    assert out["region"].tolist()[:2] == ["north", "unknown"]
    assert out["defaulted"].isna().tolist() == [False, False, True, False]  # a row still waiting for its label


def test_null_tokens_and_missing_codes_become_missing_and_are_counted(contract: Contract) -> None:
    sourced = _internal(contract, _file())
    out = sourced.frame
    assert out["late_30_59"].isna().tolist() == [False, True, True, False]  # 96, and 98 written 98.0
    assert out["monthly_income"].isna().tolist() == [False, True, True, False]  # empty, and "-" (its own token)
    assert out["region"].isna().tolist() == [False, False, True, False]  # "?" is a missing code of a category
    assert sourced.made_missing == {
        "missing_codes(late_30_59)": 2,
        "null_tokens(monthly_income)": 1,
        "missing_codes(region)": 1,
    }
    # the column's own list replaces the data set's: "NULL" is missing elsewhere, not in monthly_income
    kept = _internal(contract, _file(MonthlyIncome=["NULL", "1", "2", "3"])).frame
    assert kept["monthly_income"].tolist()[0] == "NULL"


def test_formulas_are_computed_from_the_cleaned_values(contract: Contract) -> None:
    out = _internal(contract, _file()).frame
    assert out["age_years"].tolist() == pytest.approx([10957 / 365.25, 20.0, 40.0, 10957 / 365.25])
    per_late = out["per_late"].tolist()
    assert per_late[0] == pytest.approx(1200.5) and all(np.isnan(v) for v in per_late[1:3])  # missing operand
    zero = _internal(contract, _file(**{"NumberOfTime30-59DaysPastDueNotWorse": ["0", "0", "0", "0"]})).frame
    assert zero["per_late"].isna().all()  # divided by zero: missing, never inf


def test_the_as_of_time_is_the_ingest_or_the_contracts_instant(contract: Contract) -> None:
    out = _internal(contract, _file()).frame
    assert str(out["event_time"].dtype) == "datetime64[us, UTC]"
    assert (out["event_time"] == pd.Timestamp(NOW)).all()
    doc = _doc()
    doc["tables"]["loans"]["as_of"] = "2021-06-30T00:00:00+02:00"
    fixed = _internal(parse_contract(doc), _file()).frame
    assert (fixed["event_time"] == pd.Timestamp("2021-06-29T22:00:00Z")).all()


def test_generated_keys_follow_the_rows_values_not_their_file(contract: Contract) -> None:
    keys = _internal(contract, _file()).frame["loan_id"]
    assert keys.dtype == np.int64 and (keys >= 0).all()
    assert keys.is_unique  # rows 0 and 3 are identical: two rows, two keys
    again = _internal(contract, _file()).frame["loan_id"]
    assert again.tolist() == keys.tolist()  # the same rows sent again: the same keys (duplicates, not new rows)
    reindexed = _internal(contract, _file(**{"Unnamed: 0": ["10", "11", "12", "13"]})).frame["loan_id"]
    assert reindexed.tolist() == keys.tolist()  # an ignored index column is not part of a row
    changed = _internal(contract, _file(MonthlyIncome=["1200.5", "7", "-", "1200.5"])).frame["loan_id"].tolist()
    assert changed[1] != keys.tolist()[1] and [changed[i] for i in (0, 2, 3)] == [keys.tolist()[i] for i in (0, 2, 3)]


def test_generated_keys_continue_across_the_chunks_of_a_batch(contract: Contract) -> None:
    whole = _internal(contract, _file()).frame["loan_id"].tolist()
    state = KeyState()
    first = _internal(contract, _file().iloc[:2].reset_index(drop=True), state, np.arange(2))
    second = _internal(contract, _file().iloc[2:].reset_index(drop=True), state, np.arange(2, 4))
    assert first.frame["loan_id"].tolist() + second.frame["loan_id"].tolist() == whole
    alone = _internal(contract, _file().iloc[2:].reset_index(drop=True), None, np.arange(2, 4))
    assert alone.frame["loan_id"].tolist()[1] != whole[3]  # without the state, row 3 would take row 0's key


def test_a_text_key_type_gives_the_same_keys_as_text(contract: Contract) -> None:
    doc = _doc()
    doc["key_type"] = "string"
    out = _internal(parse_contract(doc), _file()).frame["loan_id"]
    assert out.tolist() == [str(k) for k in _internal(contract, _file()).frame["loan_id"]]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            _file().drop(columns=["NumberOfTime30-59DaysPastDueNotWorse"]),
            "missing column(s) ['late_30_59'] required by contract 'flat_loans' for table 'loans': missing header(s) "
            "'NumberOfTime30-59DaysPastDueNotWorse' (contract column late_30_59); add them to the file or fix "
            "tables.loans.file.headers",
        ),
        (
            _file().drop(columns=["SeriousDlqin2yrs"]),
            "the label column 'defaulted' is missing from this loans batch (file header 'SeriousDlqin2yrs')",
        ),
        (
            _file(nickname=["a", "b", "c", "d"]),
            "unexpected column(s) ['nickname'] not in contract 'flat_loans' for table 'loans' (add them to the "
            "contract, list them in tables.loans.file.ignore, or drop them upstream)",
        ),
    ],
)
def test_a_header_the_contract_does_not_expect_names_the_header_the_column_and_the_fix(
    contract: Contract, frame: pd.DataFrame, message: str
) -> None:
    with pytest.raises(UnusableBatch) as exc:
        _internal(contract, frame)
    assert str(exc.value) == message


def test_a_default_contract_changes_nothing(contract: Contract) -> None:
    doc = _doc()
    doc["tables"]["loans"] = {"event_time": "at", "primary_key": ["loan_id"]}
    doc["null_tokens"] = []
    doc["columns"] = [{"name": "income", "type": "float", "nullable": True}]
    plain = parse_contract(doc)
    frame = pd.DataFrame({"loan_id": ["1"], "at": ["2024-01-01T00:00:00Z"], "defaulted": ["0"], "income": ["NA"]})
    sourced = _internal(plain, frame)
    assert sourced.frame.equals(frame) and sourced.made_missing == {}


def test_a_served_row_gets_the_values_ingest_stores(contract: Contract) -> None:
    frame = _file()
    stored = _internal(contract, frame).frame
    for i in range(len(frame)):
        sent = {
            "late_30_59": frame["NumberOfTime30-59DaysPastDueNotWorse"][i],
            "monthly_income": frame["MonthlyIncome"][i],
            "days_birth": frame["DAYS_BIRTH"][i],
            "sex": frame["CODE_GENDER"][i],
            "region": frame["Region.Code"][i],
        }
        served = request_values(contract, {k: None if pd.isna(v) else v for k, v in sent.items()})
        for name in ("late_30_59", "monthly_income", "sex", "region"):
            expected = stored[name][i]
            assert (served[name] is None) if pd.isna(expected) else served[name] == expected, name
        for name in ("age_years", "per_late"):
            expected = stored[name][i]
            assert (served[name] is None) if np.isnan(expected) else served[name] == pytest.approx(expected), name
    assert request_values(contract, {"sex": "female", "region": "south"}) == {"sex": "female", "region": "south"}


def test_derive_values_is_plain_arithmetic() -> None:
    got = derive_values("(a + b) * 2 - -a / b", {"a": np.array([1.0, 2.0, np.nan]), "b": np.array([1.0, 0.0, 1.0])})
    assert got[0] == pytest.approx(5.0) and np.isnan(got[1]) and np.isnan(got[2])
    assert derive_values("3 * 2", {}).tolist() == [6.0]


def test_generated_keys_read_numbers_by_value_missing_cells_alike_and_columns_by_name(contract: Contract) -> None:
    keys = _internal(contract, _file()).frame["loan_id"].tolist()
    respelled = _file(
        MonthlyIncome=["1200.50", "-", np.nan, " 1200.5 "], DAYS_BIRTH=["-10957.0", "-7305", "-14610", "-1.0957e4"]
    )
    assert _internal(contract, respelled).frame["loan_id"].tolist() == keys  # the same rows, exported another way
    reordered = _file()[list(reversed(_file().columns))]
    assert _internal(contract, reordered).frame["loan_id"].tolist() == keys
    typed = _file()
    typed["DAYS_BIRTH"] = pd.Series([-10957, -7305, -14610, -10957], dtype="int64")  # a parquet integer column
    assert _internal(contract, typed).frame["loan_id"].tolist() == keys
    coded = _file(CODE_GENDER=["F", "F", "F", "F"])  # a category compares as text: row 1 is another row
    assert _internal(contract, coded).frame["loan_id"].tolist()[1] != keys[1]


def test_a_numeric_missing_code_matches_its_text_in_a_category_column() -> None:
    """YAML's unquoted ``0`` arrives as 0.0; the file writes it ``0`` (as UCI's MARRIAGE does for unknown)."""
    from closedloop.contract import Column
    from closedloop.source import _missing_code_mask

    column = Column(
        name="marital_status", type="category", source="t", nullable=True, categories=["1", "2"], missing_codes=[0]
    )
    cells = pd.Series(["1", "0", "2", "0.0", None], dtype=object)
    assert _missing_code_mask(cells, column).tolist() == [False, True, False, True, False]
