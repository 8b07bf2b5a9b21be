"""A file's rows as the contract names them: headers, null tokens, codes, missing codes, formulas, time and keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from closedloop.contract import Contract, parse_contract
from closedloop.landing import UnusableBatch
from closedloop.source import KeyState, derive_values, request_values, to_internal

NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)

FLAT = """\
name: flat_loans
version: 1
start: 2020-01-01T00:00:00Z
time_ordered: false
null_tokens: ["NA", "NULL"]
entity: {name: loan, join_key: loan_id}
tables:
  loans:
    as_of: ingest
    generated_key: loan_id
    primary_key: [loan_id]
    file:
      ignore: ["", "PAY_*"]
      headers: {defaulted: SeriousDlqin2yrs, late_30_59: "NumberOfTime30-59DaysPastDueNotWorse",
                days_birth: DAYS_BIRTH, sex: CODE_GENDER, gender_code: CODE_GENDER, region: Region.Code}
label: {column: defaulted, positive: 1, negative: 0, delay_days: 0}
decision: {cost_false_negative: 5, cost_false_positive: 1}
columns:
  - {name: late_30_59, type: int, min: 0, max: 20, nullable: true, missing_codes: [96, 98]}
  - {name: income, type: float, min: 0, nullable: true, null_tokens: ["-"]}
  - {name: days_birth, type: int, min: -40000, max: 0, exclude: "age_years is used"}
  - {name: age_years, type: float, formula: "-days_birth / 365.25", min: 0, max: 120, sensitive: true}
  - {name: per_late, type: float, formula: "income / late_30_59", nullable: true}
  - {name: sex, type: category, categories: [female, male], codes: {F: female, M: male}, sensitive: true}
  - {name: gender_code, type: category, categories: [F, M], exclude: "sex is used"}
  - {name: region, type: category, categories: [north, south, unknown], nullable: true,
     codes: {N: north, S: south, X: unknown, "0": unknown}, missing_codes: ["?"]}
"""


@pytest.fixture
def contract() -> Contract:
    return parse_contract(yaml.safe_load(FLAT))


def _file(**overrides: list[Any]) -> pd.DataFrame:
    """Four rows as a CSV reader gives them (text cells, NaN for an empty cell); rows 0 and 3 are identical."""
    cells: dict[str, list[Any]] = {
        "Unnamed: 0": ["0", "1", "2", "3"],
        "SeriousDlqin2yrs": ["0", "1", np.nan, "0"],
        "NumberOfTime30-59DaysPastDueNotWorse": ["1", "96", "98.0", "1"],
        "income": ["1200.5", np.nan, "-", "1200.5"],
        "DAYS_BIRTH": ["-10957", "-7305", "-14610", "-10957"],
        "CODE_GENDER": ["F", "M", "F", "F"],
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
    assert out["gender_code"].tolist() == ["F", "M", "F", "F"]  # the same header, as read
    assert out["region"].tolist()[:2] == ["north", "unknown"]
    assert out["defaulted"].isna().tolist() == [False, False, True, False]  # a row still waiting for its label


def test_null_tokens_and_missing_codes_become_missing_and_are_counted(contract: Contract) -> None:
    sourced = _internal(contract, _file())
    out = sourced.frame
    assert out["late_30_59"].isna().tolist() == [False, True, True, False]  # 96, and 98 written 98.0
    assert out["income"].isna().tolist() == [False, True, True, False]  # empty, and "-" (its own token)
    assert out["region"].isna().tolist() == [False, False, True, False]  # "?" is a missing code of a category
    assert sourced.made_missing == {
        "missing_codes(late_30_59)": 2,
        "null_tokens(income)": 1,
        "missing_codes(region)": 1,
    }
    # the column's own list replaces the data set's: "NULL" is missing elsewhere, not in income
    kept = _internal(contract, _file(income=["NULL", "1", "2", "3"])).frame
    assert kept["income"].tolist()[0] == "NULL"


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
    doc = yaml.safe_load(FLAT)
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
    changed = _internal(contract, _file(income=["1200.5", "7", "-", "1200.5"])).frame["loan_id"].tolist()
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
    doc = yaml.safe_load(FLAT)
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
    doc = yaml.safe_load(FLAT)
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
            "income": frame["income"][i],
            "days_birth": frame["DAYS_BIRTH"][i],
            "sex": frame["CODE_GENDER"][i],
            "region": frame["Region.Code"][i],
        }
        served = request_values(contract, {k: None if pd.isna(v) else v for k, v in sent.items()})
        for name in ("late_30_59", "income", "sex", "region"):
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
