"""One-table contracts: inputs, sensitive attributes and the label in one table.

``flat_credit`` (:data:`CONTRACT_YAML`) is a generated table with some labels still empty, shared by the training,
batch scoring and serving tests of a flat contract; its rows are written to the offline store as an accepted batch
would be. ``flat_loans`` (:data:`FLAT_LOANS_YAML`) reads the file ``flat_table.py`` writes as its owners export
it, by its contract alone; the contract, source and ingest tests share it. German Credit's is the shipped one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from closedloop.contract import Contract, load_contract
from closedloop.lake import Lake, arrow_types

CONTRACT_YAML = """\
name: flat_credit
version: 1
description: Loan applications with their inputs, applicant attributes and outcome in one table.
start: 2024-01-01T00:00:00Z
time_ordered: false
entity: {name: application, join_key: application_id}
tables:
  applications:
    event_time: applied_at
    primary_key: [application_id]
prediction: applications
label: {column: defaulted, source: applications, positive: 1, negative: 0, delay_days: 0}
decision: {cost_false_negative: 5.0, cost_false_positive: 1.0}
fairness: {min_group_rows: 40, min_group_outcomes: 15, mitigation: threshold_optimizer}
ratios:
  - {name: loan_to_income, numerator: loan_amount, denominator: income}
columns:
  - {name: income, type: float, source: applications, min: 0, max: 1000000}
  - {name: loan_amount, type: float, source: applications, min: 0, max: 1000000}
  - {name: term_months, type: int, source: applications, min: 1, max: 120}
  - {name: purpose, type: category, source: applications, categories: [car, home, other]}
  - {name: age, type: int, source: applications, min: 18, max: 100, sensitive: true, bands: [18, 40, 101],
     group_thresholds: true}
  - {name: sex, type: category, source: applications, categories: [female, male], sensitive: true}
"""
CREATED = datetime(2025, 12, 31, tzinfo=UTC)

FLAT_LOANS_YAML = """\
name: flat_loans
version: 1
start: 2020-01-01T00:00:00Z
time_ordered: false
null_tokens: ["NA"]
entity: {name: loan, join_key: loan_id}
tables:
  loans:
    as_of: ingest
    generated_key: loan_id
    primary_key: [loan_id]
    file:
      ignore: [""]
      headers: {defaulted: SeriousDlqin2yrs, utilisation: RevolvingUtilizationOfUnsecuredLines,
                late_30_59: "NumberOfTime30-59DaysPastDueNotWorse", monthly_income: MonthlyIncome,
                dependents: NumberOfDependents, days_birth: DAYS_BIRTH, days_employed: DAYS_EMPLOYED,
                sex: CODE_GENDER, sex_code: CODE_GENDER, marital_status: MaritalStatus, region: Region.Code}
label: {column: defaulted, positive: 1, negative: 0, delay_days: 0}
decision: {cost_false_negative: 5, cost_false_positive: 1}
fairness: {min_group_rows: 30, mitigation: none}
columns:
  - {name: utilisation, type: float, min: 0, max: 2}
  - {name: age, type: int, min: 18, max: 100, sensitive: true, bands: [18, 40, 101]}
  - {name: late_30_59, type: int, min: 0, max: 20, nullable: true, missing_codes: [96, 98]}
  - {name: monthly_income, type: float, min: 0, max: 100000, nullable: true}
  - {name: dependents, type: int, min: 0, max: 20, nullable: true}
  - {name: days_birth, type: int, min: -40000, max: 0, exclude: "age_years is used"}
  - {name: days_employed, type: int, min: -20000, max: 0, nullable: true, missing_codes: [365243]}
  - {name: age_years, type: float, formula: "-days_birth / 365.25", min: 0, max: 120, sensitive: true}
  - {name: years_employed, type: float, formula: "-days_employed / 365.25", nullable: true, min: 0, max: 60}
  - {name: sex, type: category, categories: [female, male], codes: {F: female, M: male}, sensitive: true}
  - {name: sex_code, type: category, categories: [F, M], exclude: "sex is used"}
  - {name: marital_status, type: category, categories: [married, single, divorced, widowed]}
  - {name: region, type: category, categories: [north, east, south, west],
     codes: {N: north, E: east, S: south, W: west}}
"""
GERMAN_CREDIT = Path(__file__).resolve().parents[1] / "datasets/german_credit"  # german.data, contract.yaml


def flat_loans(**changes: Any) -> dict[str, Any]:
    """A fresh copy of the flat_loans contract document, with top-level fields replaced by ``changes``."""
    doc: dict[str, Any] = yaml.safe_load(FLAT_LOANS_YAML)
    doc.update(changes)
    return doc


def german_credit() -> dict[str, Any]:
    """A fresh copy of the shipped German Credit contract document: one header-less, blank-separated file."""
    doc: dict[str, Any] = yaml.safe_load((GERMAN_CREDIT / "contract.yaml").read_text())
    return doc


def loans_column(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The column ``name`` of a contract document (to change it in place)."""
    return next(c for c in doc["columns"] if c["name"] == name)


def flat_contract(folder: Path) -> tuple[Path, Contract]:
    """The contract file written to ``folder``, and the contract."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flat_credit.yaml"
    path.write_text(CONTRACT_YAML)
    return path, load_contract(path)


def flat_rows(rows: int, unlabelled: int, seed: int = 3) -> pd.DataFrame:
    """``rows`` applications of 2025, the last ``unlabelled`` (in key order) without their label yet.

    Default depends on the loan's size against income and on its term; age and sex do not drive it.
    """
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10.5, 0.4, rows).round(0)
    loan = (income * rng.uniform(0.05, 1.2, rows)).round(0)
    term = rng.choice([12, 24, 36, 60], rows)
    risk = -3.4 + 3.2 * loan / income + 0.02 * term
    defaulted = (rng.uniform(size=rows) < 1 / (1 + np.exp(-risk))).astype("int64")
    frame = pd.DataFrame(
        {
            "application_id": np.arange(1, rows + 1, dtype="int64"),
            "applied_at": pd.Timestamp("2025-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 360 * 24, rows), unit="h"),
            "income": income,
            "loan_amount": loan,
            "term_months": term,
            "purpose": rng.choice(["car", "home", "other"], rows),
            "age": rng.integers(18, 80, rows),
            "sex": rng.choice(["female", "male"], rows),
            "defaulted": pd.array(defaulted, dtype="Int64"),
        }
    )
    frame.loc[frame.index[rows - unlabelled :], "defaulted"] = pd.NA
    return frame


def write_flat(lake_uri: str, contract: Contract, frame: pd.DataFrame) -> Lake:
    """The rows as the offline store holds an accepted batch of the table."""
    lake = Lake.of(lake_uri, contract.name)
    table = contract.prediction
    lake.write_offline(table, frame, contract.tables[table].event_time, "b1", CREATED, arrow_types(contract, table))
    return lake
