from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from closedloop.contract import ContractError, load_contract, parse_contract

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(REPO.glob("datasets/*/contract.yaml"))


@pytest.fixture
def doc() -> dict[str, Any]:
    """The synthetic contract as a plain document, to break one field at a time."""
    return yaml.safe_load((REPO / "datasets/credit_synthetic/contract.yaml").read_text())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_contracts_load(path: Path) -> None:
    contract = load_contract(path)
    assert contract.model_inputs
    assert contract.label.source in contract.tables


def test_sensitive_and_excluded_columns_are_never_model_inputs() -> None:
    contract = load_contract(REPO / "datasets/credit_synthetic/contract.yaml")
    inputs = {c.name for c in contract.model_inputs}
    assert {"age", "sex", "marital_status"} == {c.name for c in contract.sensitive}
    assert not inputs & {"age", "sex", "marital_status", "postcode"}
    assert "income" in inputs and "loan_purpose" in inputs


def test_a_sensitive_column_becomes_an_input_only_when_the_contract_says_so(doc: dict[str, Any]) -> None:
    for col in doc["columns"]:
        if col["name"] == "age":
            col["model_input"] = True
    contract = parse_contract(doc)
    assert "age" in {c.name for c in contract.model_inputs}
    assert "sex" not in {c.name for c in contract.model_inputs}


def test_required_columns_per_table(doc: dict[str, Any]) -> None:
    contract = parse_contract(doc)
    assert contract.required_columns("outcomes") == ["customer_id", "application_id", "observed_at", "defaulted"]
    apps = contract.required_columns("applications")
    assert apps[:3] == ["customer_id", "application_id", "applied_at"]
    assert "loan_purpose" in apps and "defaulted" not in apps


def test_fingerprint_changes_with_content_not_with_description(doc: dict[str, Any]) -> None:
    base = parse_contract(doc).fingerprint
    doc["description"] = "reworded"
    assert parse_contract(doc).fingerprint == base
    doc["label"]["delay_days"] = 120
    assert parse_contract(doc).fingerprint != base


def _break(doc: dict[str, Any], column: str, **changes: Any) -> dict[str, Any]:
    for col in doc["columns"]:
        if col["name"] == column:
            col.update(changes)
    return doc


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("label"), r"label: Field required"),
        (lambda d: d.update(colour="blue"), r"colour: unknown field"),
        (lambda d: _break(d, "income", source="profile"), r"columns\[6\] \(income\).source: unknown table 'profile'"),
        (
            lambda d: _break(d, "income", min=10, max=5),
            r"columns\[6\] \(income\): 'min' \(10.0\) is greater than 'max'",
        ),
        (lambda d: _break(d, "region", categories=[]), r"columns\[4\] \(region\): a category column needs"),
        (lambda d: _break(d, "income", categories=["a"]), r"'categories' only applies to category columns"),
        (lambda d: _break(d, "income", type="decimal"), r"columns\[6\] \(income\).type: Input should be 'int'"),
        (lambda d: _break(d, "income", sourse="profiles"), r"columns\[6\] \(income\).sourse: unknown field"),
        (lambda d: d["label"].update(delay_days=-1), r"label.delay_days: Input should be greater than or equal to 0"),
        (lambda d: d.update(prediction="loans"), r"'prediction' names unknown table 'loans'"),
        (lambda d: d.update(start="2024-01-01T00:00:00"), r"'start' needs a timezone"),
        (lambda d: _break(d, "age", bands=[65, 18]), r"'bands' must be at least two strictly increasing edges"),
        (lambda d: d["columns"].append(dict(d["columns"][0])), r"column 'age' is declared twice"),
        (lambda d: d["tables"]["profiles"].pop("event_time"), r"tables.profiles.event_time: Field required"),
        (
            lambda d: d["columns"].append({"name": "defaulted", "type": "int", "source": "outcomes"}),
            r"'defaulted' is a key, time or label column",
        ),
    ],
)
def test_malformed_contract_names_the_field(doc: dict[str, Any], mutate: Any, message: str) -> None:
    mutate(doc)
    with pytest.raises(ContractError, match=message) as info:
        parse_contract(doc, origin="my.yaml")
    assert str(info.value).startswith("my.yaml: invalid contract")


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    bad = tmp_path / "contract.yaml"
    bad.write_text("name: x\nversion: 1\ncolumns: [\n  {name: a\n")
    with pytest.raises(ContractError, match=r"contract.yaml: not valid YAML at line \d+"):
        load_contract(bad)


def test_missing_file_and_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="cannot read contract"):
        load_contract(tmp_path / "absent.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ContractError, match="a contract is a mapping of fields, got list"):
        load_contract(listed)


def test_risk_direction_only_for_numbers(doc: dict[str, Any]) -> None:
    with pytest.raises(ContractError, match=r"columns\[4\] \(region\): 'risk_direction' applies only to numeric"):
        parse_contract(_break(doc, "region", risk_direction="increasing"))
