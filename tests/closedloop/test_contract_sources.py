"""The contract fields that describe a table's files as their owners write them, and the rules that guard them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from one_table import flat_loans, german_credit, loans_column

from closedloop.contract import ContractError, formula_names, load_contract, parse_contract

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [
    REPO / "datasets" / name / "contract.yaml" for name in ("credit_synthetic", "taiwan_credit_default")
]  # before the new fields


@pytest.fixture
def flat() -> dict[str, Any]:
    return flat_loans()


def _error(doc: dict[str, Any]) -> str:
    with pytest.raises(ContractError) as exc:
        parse_contract(doc, origin="c.yaml")
    return str(exc.value)


def test_a_one_table_contract_needs_no_prediction_label_source_or_column_source(flat: dict[str, Any]) -> None:
    contract = parse_contract(flat)
    assert contract.prediction == contract.label.source == "loans"
    assert {c.source for c in contract.columns} == {"loans"}
    assert contract.is_flat
    assert contract.tables["loans"].event_time == "event_time"  # the column as_of adds
    assert contract.fairness.min_group_rows == 30 and contract.fairness.mitigation == "none"
    assert contract.fairness.max_demographic_parity_difference is None  # left to the training gates' default


def test_file_columns_are_what_the_file_holds_and_added_columns_what_closedloop_adds(flat: dict[str, Any]) -> None:
    contract = parse_contract(flat)
    assert contract.added_columns("loans") == ["event_time", "loan_id", "age_years", "years_employed"]
    assert contract.file_columns("loans") == {
        "defaulted": "SeriousDlqin2yrs",
        "utilisation": "RevolvingUtilizationOfUnsecuredLines",
        "age": "age",  # a header that is already the name
        "late_30_59": "NumberOfTime30-59DaysPastDueNotWorse",
        "monthly_income": "MonthlyIncome",
        "dependents": "NumberOfDependents",
        "days_birth": "DAYS_BIRTH",
        "days_employed": "DAYS_EMPLOYED",
        "sex": "CODE_GENDER",
        "sex_code": "CODE_GENDER",  # one header feeds two columns
        "marital_status": "MaritalStatus",
        "region": "Region.Code",
    }
    assert contract.tables["loans"].file.ignored("") and contract.tables["loans"].file.ignored("Unnamed: 0")
    assert not contract.tables["loans"].file.ignored("Unnamed")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_contracts_keep_the_fingerprint_their_data_and_models_were_recorded_with(path: Path) -> None:
    contract = load_contract(path)
    before = contract.model_dump_json(
        exclude={
            "description": True,
            "null_tokens": True,
            "fairness": True,
            "monitoring": True,
            "label": {"codes"},
            "tables": {"__all__": {"as_of", "generated_key", "file"}},
            "columns": {"__all__": {"null_tokens", "missing_codes", "codes", "formula", "fairness_waiver"}},
        }
    )
    assert contract.fingerprint == hashlib.sha256(before.encode()).hexdigest()[:16]
    assert not contract.is_flat


def test_the_new_fields_are_part_of_the_fingerprint(flat: dict[str, Any]) -> None:
    base = parse_contract(flat).fingerprint
    for change in (
        lambda d: d.update(null_tokens=["NA", "NULL"]),
        lambda d: d["fairness"].update(min_group_rows=50),
        lambda d: loans_column(d, "late_30_59").update(missing_codes=[96]),
        lambda d: loans_column(d, "sex").update(codes={"F": "female", "M": "male", "X": "female"}),
        lambda d: d["tables"]["loans"]["file"].update(ignore=["", "idx"]),
        lambda d: d["tables"]["loans"].update(as_of="2021-01-01T00:00:00Z"),
    ):
        doc = flat_loans()
        change(doc)
        assert parse_contract(doc).fingerprint != base


def test_formula_names_reads_arithmetic_only() -> None:
    assert formula_names("-(a + b) / 365.25 * c") == {"a", "b", "c"}
    for bad, why in (
        ("a ** 2", "is not allowed"),
        ("__import__('os')", "is not allowed"),
        ("a.b", "is not allowed"),
        ("a +", "is not an arithmetic expression"),
    ):
        with pytest.raises(ValueError, match=why):
            formula_names(bad)


def _set(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = loans_column(node, part[1:]) if part.startswith("@") else node[part]
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set("@late_30_59.nullable", False),
            "(late_30_59): missing_codes make values missing: set nullable",
        ),
        (_set("@days_birth.null_tokens", ["?"]), "null_tokens make values missing: set nullable: true"),
        (_set("@sex.codes", {"F": "female", "M": "man"}), "codes map to ['man'], which are not in 'categories'"),
        (_set("@late_30_59.codes", {"1": "one"}), "'codes' map file values to categories: set type: category"),
        (_set("@age_years.formula", "-nickname / 365"), "'nickname' is not a numeric column of table 'loans'"),
        (_set("@age_years.formula", "-sex / 365"), "'sex' is not a numeric column of table 'loans'"),
        (_set("@age_years.formula", "days_birth ** 2"), "is not allowed; use numbers, column names"),
        (_set("@sex.formula", "days_birth"), "a formula column is numeric: set type: float"),
        (_set("tables.loans.file.headers.age_years", "AGE"), "a formula column is computed, not read"),
        (_set("tables.loans.file.headers.loan_id", "ID"), "file.headers.loan_id: closedloop adds 'loan_id'"),
        (_set("tables.loans.file.headers.nickname", "N"), "tables.loans.file.headers.nickname: table 'loans' has no"),
        (_set("tables.loans.generated_key", "row_id"), "generated_key 'row_id' is not in primary_key ['loan_id']"),
        (_set("tables.loans.as_of", "2021-01-01T00:00:00"), "'as_of' needs a timezone"),
        (
            _set("tables.loans.as_of", "2019-01-01T00:00:00Z"),
            "tables.loans.as_of (2019-01-01T00:00:00+00:00) is befor",
        ),
        (_set("label.delay_days", 30), "label.delay_days: table 'loans' holds both the decisions and their label"),
        (_set("tables.loans.file.delimiter", ";;"), "give one character (for example ';' or '\\t') or 'whitespace'"),
        (_set("tables.loans.file.header", False), "header: false needs 'columns': the field names of the file"),
        (_set("tables.loans.file.columns", ["a"]), "'columns' names the fields of a header-less file"),
        (_set("fairness.min_group_rows", 0), "fairness.min_group_rows: Input should be greater than or equal to 1"),
        (_set("fairness.mitigation", "reweighing"), "fairness.mitigation: Input should be 'threshold_optimizer'"),
        (_set("@late_30_59.fairness_waiver", "small"), "'fairness_waiver' is a reason, on a sensitive column"),
        (_set("@sex.fairness_waiver", " "), "'fairness_waiver' is a reason, on a sensitive column"),
        (_set("@age.name", "Age"), "columns[1] (Age).name: 'Age' is not a name closedloop can use: lower-case"),
        (_set("@sex.categories", ["female", "male", "male"]), "'categories' lists ['male'] more than once"),
        (
            _set("@dependents.name", "event_time"),
            "'event_time' is a key, time or label column and cannot be a feature (the time as_of adds to table "
            "'loans'): set tables.loans.event_time to another name",
        ),
        (
            _set("@dependents.name", "defaulted"),
            "(the label): give the column another name (its file header mapped in file.headers)",
        ),
    ],
)
def test_a_misused_field_is_named_with_its_fix(flat: dict[str, Any], change: Any, message: str) -> None:
    change(flat)
    assert message in _error(flat)


def test_a_fixed_as_of_in_the_prediction_table_needs_random_splits(flat: dict[str, Any]) -> None:
    flat["tables"]["loans"]["as_of"] = "2021-01-01T00:00:00Z"
    flat["time_ordered"] = True
    assert "tables.loans.as_of: every row of the prediction table has the same time" in _error(flat)
    assert "set time_ordered: false" in _error(flat)


def test_a_header_less_file_must_name_every_field_the_table_reads(flat: dict[str, Any]) -> None:
    file = flat["tables"]["loans"]["file"]
    read = [h for h in parse_contract(flat).file_columns("loans").values() if not h.startswith("NumberOfTime30")]
    file.update(header=False, columns=list(dict.fromkeys(read)), delimiter="whitespace")
    message = _error(flat)
    assert (
        "tables.loans.file.columns: no field for late_30_59 (header 'NumberOfTime30-59DaysPastDueNotWorse')" in message
    )
    assert "add the field to file.columns or map the column to a listed field in file.headers" in message
    file["columns"].append("NumberOfTime30-59DaysPastDueNotWorse")
    assert parse_contract(flat).tables["loans"].file.delimiter == "whitespace"
    file["columns"].append("loan_id")
    assert "'loan_id' is added by closedloop" in _error(flat)


def test_a_model_input_in_a_label_only_table_is_an_error(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "datasets/credit_synthetic/contract.yaml").read_text())
    doc["columns"].append({"name": "recovered", "type": "float", "source": "outcomes"})
    message = _error(doc)
    assert "(recovered): table 'outcomes' holds the label; inputs come from the prediction table" in message


def test_no_model_input_names_the_columns_it_looked_at(flat: dict[str, Any]) -> None:
    flat["columns"] = [c for c in flat["columns"] if c.get("exclude") or c.get("sensitive")]
    loans_column(flat, "sex_code")["exclude"] = "not used"
    message = _error(flat)
    assert "no column is a model input" in message
    assert (
        "loans: age (sensitive), days_birth (excluded), age_years (sensitive), sex (sensitive), sex_code (excluded)"
        in message
    )
    assert "set model_input: true on a sensitive one" in message


def test_german_credit_contract_of_the_design_parses() -> None:
    doc = german_credit()
    contract = parse_contract(doc)
    read = contract.file_columns("applications")
    assert {name: field for name, field in read.items() if name != field} == {"sex": "personal_status_sex"}
    assert set(read.values()) <= set(contract.tables["applications"].file.columns or [])  # fields of the file
    doc["tables"]["applications"]["file"]["format"] = "parquet"
    assert "'delimiter' and 'header' apply to csv files, not parquet" in _error(doc)
