"""A flat file as its owners export it is ingested by its contract alone, in one piece or in chunks alike."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flat_table import write_flat_table
from one_table import GERMAN_CREDIT, flat_loans, german_credit

from closedloop import storage
from closedloop.contract import Contract, parse_contract
from closedloop.lake import CREATED, Lake
from closedloop.landing import identify
from tasks.ingest.tasks import BatchOutcome, ingest_batch, replay_quarantined

NOW = datetime(2026, 1, 15, tzinfo=UTC)
IN_ONE_PIECE = 10**9
ROWS = 1200


@pytest.fixture(scope="module")
def flat_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_flat_table(tmp_path_factory.mktemp("flat") / "cs-training.csv", rows=ROWS).read_bytes()


def _contract(**changes: Any) -> Contract:
    return parse_contract(flat_loans(**changes))


def _ingest(
    lake: Lake, contract: Contract, name: str, data: bytes, chunk_rows: int, now: datetime = NOW
) -> BatchOutcome:
    uri = storage.write_bytes(storage.join(lake.landing, name), data)
    outcome: BatchOutcome = ingest_batch.fn(identify(uri, lake.landing, contract), contract, lake, now, chunk_rows)
    assert outcome.rows_in == outcome.rows_accepted + outcome.rows_quarantined + outcome.rows_duplicate
    return outcome


def _stored(lake: Lake, table: str) -> pd.DataFrame:
    frame = lake.read_offline(table)
    kept = [c for c in frame.columns if not c.startswith("_") and c != CREATED]
    return frame[kept].sort_values(kept[0]).reset_index(drop=True)


@pytest.mark.parametrize("chunk_rows", [IN_ONE_PIECE, 500], ids=["one piece", "chunks"])
def test_a_flat_export_is_ingested_by_its_contract_alone(flat_file: bytes, chunk_rows: int, tmp_path: Path) -> None:
    contract = _contract()
    lake = Lake.of(tmp_path.as_uri(), contract.name)
    outcome = _ingest(lake, contract, "cs-training.csv", flat_file, chunk_rows)
    assert outcome.status == "accepted" and outcome.rows_accepted == ROWS, outcome.reason
    read = pd.read_csv(pd.io.common.BytesIO(flat_file), dtype=str, keep_default_na=False)
    late = read["NumberOfTime30-59DaysPastDueNotWorse"]
    assert outcome.made_missing == {
        "missing_codes(late_30_59)": int(late.isin(["96", "98"]).sum()),
        "null_tokens(monthly_income)": int((read["MonthlyIncome"] == "NA").sum()),
        "null_tokens(dependents)": int((read["NumberOfDependents"] == "NA").sum()),
        "missing_codes(days_employed)": int((read["DAYS_EMPLOYED"] == "365243").sum()),
    }
    assert all(outcome.made_missing.values())
    stored = _stored(lake, "loans")
    assert set(stored.columns) == set(contract.required_columns("loans"))
    assert stored["loan_id"].is_unique and (stored["event_time"] == pd.Timestamp(NOW)).all()
    assert set(stored["sex"]) == {"female", "male"} and set(stored["region"]) == {"north", "east", "south", "west"}
    assert stored["late_30_59"].max() <= 5  # the codes 96 and 98 are missing, not counts
    assert stored["years_employed"].isna().sum() == outcome.made_missing["missing_codes(days_employed)"]
    by_age = stored.set_index("days_birth")["age_years"]
    assert np.allclose(by_age.to_numpy(), -by_age.index.to_numpy() / 365.25)


def test_in_chunks_and_in_one_piece_the_same_rows_get_the_same_keys(flat_file: bytes, tmp_path: Path) -> None:
    contract = _contract()
    stored = []
    for chunk_rows in (IN_ONE_PIECE, 500):
        lake = Lake.of((tmp_path / str(chunk_rows)).as_uri(), contract.name)
        _ingest(lake, contract, "cs-training.csv", flat_file, chunk_rows)
        stored.append(_stored(lake, "loans").sort_values("loan_id").reset_index(drop=True))
    pd.testing.assert_frame_equal(stored[0], stored[1])


@pytest.mark.parametrize("chunk_rows", [IN_ONE_PIECE, 500], ids=["one piece", "chunks"])
def test_a_re_exported_file_sent_later_is_counted_as_duplicates(
    flat_file: bytes, chunk_rows: int, tmp_path: Path
) -> None:
    contract = _contract()
    lake = Lake.of(tmp_path.as_uri(), contract.name)
    _ingest(lake, contract, "cs-training.csv", flat_file, chunk_rows)
    again = _ingest(
        lake, contract, "export-2.csv", flat_file.replace(b"\n", b"\r\n"), chunk_rows, datetime(2026, 2, 1, tzinfo=UTC)
    )
    assert again.status == "duplicate" and again.rows_duplicate == ROWS, again.reason
    assert len(lake.read_offline("loans")) == ROWS


def test_two_identical_rows_of_one_file_stay_two_rows(tmp_path: Path, flat_file: bytes) -> None:
    contract = _contract()
    header, first, *_ = flat_file.split(b"\n")
    data = b"\n".join([header, first, first, first]) + b"\n"
    outcome = _ingest(Lake.of(tmp_path.as_uri(), contract.name), contract, "three.csv", data, IN_ONE_PIECE)
    assert outcome.status == "accepted" and outcome.rows_accepted == 3


def test_rows_without_their_label_yet_are_kept_in_a_flat_table(tmp_path: Path, flat_file: bytes) -> None:
    contract = _contract()
    lines = flat_file.split(b"\n")
    lines[1] = b",".join([lines[1].split(b",")[0], b"", *lines[1].split(b",")[2:]])  # an empty label cell
    lake = Lake.of(tmp_path.as_uri(), contract.name)
    outcome = _ingest(lake, contract, "cs.csv", b"\n".join(lines[:50]) + b"\n", IN_ONE_PIECE)
    assert outcome.status == "accepted" and outcome.rows_accepted == 49
    assert _stored(lake, "loans")["defaulted"].isna().sum() == 1


@pytest.mark.parametrize("chunk_rows", [IN_ONE_PIECE, 500], ids=["one piece", "chunks"])
def test_a_header_the_contract_expects_missing_from_the_file_is_named_with_the_fix(
    flat_file: bytes, chunk_rows: int, tmp_path: Path
) -> None:
    contract = _contract()
    lake = Lake.of(tmp_path.as_uri(), contract.name)
    data = flat_file.replace(b"MonthlyIncome", b"Monthly_Income", 1)
    outcome = _ingest(lake, contract, "cs.csv", data, chunk_rows)
    assert outcome.status == "quarantined" and outcome.rows_quarantined == ROWS
    assert outcome.reason == (
        "missing column(s) ['monthly_income'] required by contract 'flat_loans' for table 'loans': missing "
        "header(s) 'MonthlyIncome' (contract column monthly_income); add them to the file or fix "
        "tables.loans.file.headers"
    )
    assert lake.read_offline("loans").empty
    record = lake.read_reason(outcome.batch_id)
    assert storage.read_bytes(lake.quarantine(outcome.batch_id, "original.csv")) == data
    # the contract fixed, the quarantined batch is replayed: its rows get the keys a first ingest gives them
    doc = flat_loans(version=2)
    doc["tables"]["loans"]["file"]["headers"]["monthly_income"] = "Monthly_Income"
    fixed = parse_contract(doc)
    replayed = replay_quarantined.fn(record["batch_id"], fixed, lake, NOW, chunk_rows)
    assert replayed.status == "accepted" and replayed.rows_accepted == ROWS, replayed.reason
    assert replayed.made_missing["null_tokens(monthly_income)"] > 0
    direct = Lake.of((tmp_path / "direct").as_uri(), contract.name)
    _ingest(direct, fixed, "cs.csv", data, chunk_rows)
    assert sorted(_stored(lake, "loans")["loan_id"]) == sorted(_stored(direct, "loans")["loan_id"])


@pytest.mark.parametrize("chunk_rows", [IN_ONE_PIECE, 300], ids=["one piece", "chunks"])
def test_the_raw_german_credit_file_is_ingested_with_its_codebook(chunk_rows: int, tmp_path: Path) -> None:
    doc = german_credit()
    used = {"checking_status", "sex", "foreign_worker", "duration_months", "credit_amount", "age"}
    file = doc["tables"]["applications"]["file"]
    file["ignore"] = [f for f in file["columns"] if f not in used | {"personal_status_sex", "bad_credit"}]
    doc["columns"] = [c for c in doc["columns"] if c["name"] in used]  # the other fields read and dropped
    doc["key_type"] = "string"
    contract = parse_contract(doc)
    lake = Lake.of(tmp_path.as_uri(), contract.name)
    outcome = _ingest(lake, contract, "german.data", (GERMAN_CREDIT / "german.data").read_bytes(), chunk_rows)
    assert outcome.status == "accepted" and outcome.rows_accepted == 1000, outcome.reason
    stored = _stored(lake, "applications")
    assert stored["bad_credit"].value_counts().to_dict() == {1: 700, 2: 300}
    assert stored["foreign_worker"].value_counts().to_dict() == {"yes": 963, "no": 37}
    assert stored["application_id"].is_unique and set(stored["sex"]) == {"female", "male"}
    assert (stored["event_time"] == pd.Timestamp("1994-11-17T00:00:00Z")).all()
