"""A generated one-table contract: inputs, sensitive attributes and the label in one table, some labels still empty.

Shared by the training, batch scoring and serving tests of a flat contract; the rows are written to the offline
store as an accepted batch would be.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

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
