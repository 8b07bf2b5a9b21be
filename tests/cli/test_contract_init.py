from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
from flat_table import write_flat_table
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_init_writes_a_draft_that_contract_check_accepts(tmp_path: Path) -> None:
    data = write_flat_table(tmp_path / "cs-training.csv", rows=2000)
    out = tmp_path / "contract.yaml"
    result = runner.invoke(
        app,
        [
            "contract",
            "init",
            str(data),
            "--label",
            "SeriousDlqin2yrs",
            "--sensitive",
            "age,CODE_GENDER",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "drafted contract cs_training" in result.stdout and f"-> {out}" in result.stdout
    assert "96 (" in result.stdout and "check (" in result.stdout  # what a person must review is printed
    drafted = yaml.safe_load(out.read_text())
    assert drafted["tables"]["applications"]["file"]["ignore"] == [""]
    checked = runner.invoke(app, ["contract", "check", str(out), "--json"])
    assert checked.exit_code == 0, checked.output
    assert set(json.loads(checked.stdout)["sensitive"]) == {"age", "code_gender"}

    again = runner.invoke(app, ["contract", "init", str(data), "--label", "SeriousDlqin2yrs", "--out", str(out)])
    assert again.exit_code == 2
    assert f"closedloop: error: {out} exists: give another --out or remove it" in again.stderr
    assert yaml.safe_load(out.read_text()) == drafted  # the reviewed file is never overwritten


def test_init_json_prints_only_json_with_the_draft(tmp_path: Path) -> None:
    data = write_flat_table(tmp_path / "flat.csv", rows=300)
    result = runner.invoke(app, ["contract", "init", str(data), "--label", "SeriousDlqin2yrs", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["rows"] == payload["rows_profiled"] == 300 and payload["out"] is None
    assert yaml.safe_load(payload["yaml"])["label"]["column"] == "serious_dlqin2yrs"
    assert payload["contract"]["tables"]["applications"]["as_of"] == "ingest"
    assert any(c["field"] == "columns.code_gender" and "protected" in c["check"] for c in payload["checks"])


def test_init_without_out_prints_the_yaml_and_reports_on_stderr(tmp_path: Path) -> None:
    data = write_flat_table(tmp_path / "flat.csv", rows=300)
    result = runner.invoke(app, ["contract", "init", str(data), "--label", "SeriousDlqin2yrs"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["name"] == "flat"
    assert "inferred:" in result.stderr and "inferred:" not in result.stdout


def test_init_errors_are_one_line_naming_file_and_column(tmp_path: Path) -> None:
    data = write_flat_table(tmp_path / "flat.csv", rows=50)
    result = runner.invoke(app, ["contract", "init", str(data), "--label", "Default", "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{data}: label column 'Default' is not in the file" in lines[0]
    missing = runner.invoke(app, ["contract", "init", str(tmp_path / "nope.csv"), "--label", "y"])
    assert missing.exit_code == 2 and f"{tmp_path / 'nope.csv'}: no such file" in missing.stderr


def test_init_drafts_a_parquet_export_that_contract_check_accepts(tmp_path: Path) -> None:
    data = tmp_path / "flat.parquet"
    pd.read_csv(write_flat_table(tmp_path / "flat.csv", rows=300), index_col=0).to_parquet(data)
    out = tmp_path / "contract.yaml"
    result = runner.invoke(app, ["contract", "init", str(data), "--label", "SeriousDlqin2yrs", "--out", str(out)])
    assert result.exit_code == 0, result.output
    drafted = yaml.safe_load(out.read_text())
    assert drafted["tables"]["applications"]["file"]["format"] == "parquet"
    assert next(c for c in drafted["columns"] if c["name"] == "monthly_income")["nullable"] is True  # NaN: missing
    checked = runner.invoke(app, ["contract", "check", str(out), "--json"])
    assert checked.exit_code == 0, checked.output
