"""The ingest tasks: every kind of bad input is rejected with a message naming the problem, and no row is lost."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from closedloop import storage
from closedloop.contract import Contract, contract_at, parse_contract
from closedloop.lake import Lake
from closedloop.landing import identify
from closedloop.settings import PROJECT_ROOT, load_settings
from samples.synthetic import SyntheticConfig, generate_block
from tasks.ingest.tasks import BatchOutcome, ingest_batch, replay_quarantined

CONTRACT = contract_at(str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"))
NOW = datetime(2026, 1, 15, tzinfo=UTC)
ROWS = 40


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    block = generate_block(SyntheticConfig(customers=ROWS, start="2025-01", months=12), 0)
    return {name: table.to_pandas() for name, table in block.items()}


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.of(tmp_path.as_uri(), "credit_synthetic")


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _csv(frame: pd.DataFrame, **kwargs: object) -> bytes:
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = out[column].dt.strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    return out.to_csv(index=False, **kwargs).encode()  # type: ignore[call-overload]


def _ingest(lake: Lake, name: str, data: bytes, contract: Contract = CONTRACT) -> BatchOutcome:
    table = name.split("-", 1)[0]
    uri = storage.write_bytes(storage.join(lake.landing, table, name), data)
    ref = identify(uri, lake.landing, contract)
    outcome: BatchOutcome = ingest_batch.fn(ref, contract, lake, NOW)
    assert outcome.rows_in == outcome.rows_accepted + outcome.rows_quarantined + outcome.rows_duplicate
    assert lake.read_ledger(outcome.batch_id) is not None or outcome.status == "duplicate"
    return outcome


def _assert_whole(lake: Lake, outcome: BatchOutcome, message: str, data: bytes, rows_in: int | None = None) -> None:
    assert outcome.status == "quarantined"
    assert outcome.reason is not None and message in outcome.reason, outcome.reason
    assert outcome.rows_accepted == 0
    if rows_in is not None:
        assert outcome.rows_in == outcome.rows_quarantined == rows_in
    record = lake.read_reason(outcome.batch_id)
    assert message in record["reason"]
    suffix = record["source_name"].rsplit(".", 1)[-1]
    assert storage.read_bytes(lake.quarantine(outcome.batch_id, f"original.{suffix}")) == data
    assert lake.read_offline("applications").empty


def _assert_rows(lake: Lake, outcome: BatchOutcome, bad_rows: list[int], reason: str) -> None:
    assert outcome.status == "partial", outcome.reason
    assert outcome.rows_quarantined == len(bad_rows) and outcome.rows_accepted == ROWS - len(bad_rows)
    rejected = lake.read_rejected(outcome.batch_id)
    assert sorted(rejected["_source_row"]) == sorted(bad_rows)
    assert all(reason in r for r in rejected["_reasons"]), rejected["_reasons"].tolist()
    table = outcome.table or ""
    assert len(lake.read_offline(table)) == ROWS - len(bad_rows)


Mutation = Callable[[pd.DataFrame], pd.DataFrame]


def _set(row: int, column: str, value: object) -> Mutation:
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object}) if not isinstance(value, type(frame[column].iloc[0])) else frame
        frame.loc[row, column] = value
        return frame

    return mutate


ROW_CASES: list[tuple[str, str, Mutation, list[int], str]] = [
    (
        "text in a numeric column (csv)",
        "csv",
        _set(3, "loan_amount", "abc"),
        [3],
        "type(loan_amount): expected a number, got 'abc'",
    ),
    (
        "fractional value in an int column",
        "parquet",
        _set(4, "loan_term_months", 12.5),
        [4],
        "type(loan_term_months): expected an integer, got 12.5",
    ),
    (
        "null in a required field",
        "parquet",
        _set(5, "loan_amount", None),
        [5],
        "expect_column_values_to_not_be_null(loan_amount)",
    ),
    (
        "value out of range",
        "parquet",
        _set(6, "loan_amount", -10.0),
        [6],
        "expect_column_values_to_be_between(loan_amount)",
    ),
    (
        "unseen category",
        "parquet",
        _set(7, "loan_purpose", "yacht"),
        [7],
        "expect_column_values_to_be_in_set(loan_purpose)",
    ),
    (
        "null key",
        "parquet",
        _set(8, "application_id", None),
        [8],
        "expect_column_values_to_not_be_null(application_id)",
    ),
    (
        "future timestamp",
        "parquet",
        _set(9, "applied_at", pd.Timestamp("2027-01-01", tz="UTC")),
        [9],
        "expect_column_values_to_be_between(applied_at)",
    ),
    (
        "timestamp before the contract's start",
        "parquet",
        _set(10, "applied_at", pd.Timestamp("2019-05-01", tz="UTC")),
        [10],
        "expect_column_values_to_be_between(applied_at)",
    ),
    (
        "timestamp without timezone (csv cell)",
        "csv",
        _set(11, "applied_at", "2025-03-01 10:00:00"),
        [11],
        "type(applied_at): timestamp without timezone '2025-03-01 10:00:00'",
    ),
    (
        "timestamp that is not a date (csv cell)",
        "csv",
        _set(12, "applied_at", "yesterday+01:00"),
        [12],
        "type(applied_at): not a timestamp",
    ),
]


@pytest.mark.parametrize(("case", "fmt", "mutate", "bad", "reason"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_bad_rows_are_quarantined_with_the_rule_they_broke(
    lake: Lake, tables: dict[str, pd.DataFrame], case: str, fmt: str, mutate: Mutation, bad: list[int], reason: str
) -> None:
    frame = mutate(tables["applications"].copy())
    data = _parquet(frame) if fmt == "parquet" else _csv(frame)
    _assert_rows(lake, _ingest(lake, f"applications-x.{fmt}", data), bad, reason)


def test_duplicate_keys_quarantine_every_copy(lake: Lake, tables: dict[str, pd.DataFrame]) -> None:
    frame = tables["applications"].copy()
    frame.loc[14, "application_id"] = frame.loc[13, "application_id"]
    _assert_rows(
        lake,
        _ingest(lake, "applications-dup.parquet", _parquet(frame)),
        [13, 14],
        "expect_column_values_to_be_unique(application_id)",
    )


def test_label_outside_its_domain(lake: Lake, tables: dict[str, pd.DataFrame]) -> None:
    frame = tables["outcomes"].copy().reset_index(drop=True)
    frame.loc[0, "defaulted"] = 2
    outcome = _ingest(lake, "outcomes-x.parquet", _parquet(frame))
    assert outcome.rows_quarantined == 1 and outcome.rows_accepted == len(frame) - 1
    assert lake.read_rejected(outcome.batch_id)["_reasons"].tolist() == ["expect_column_values_to_be_in_set(defaulted)"]


def test_nullable_column_accepts_nulls(lake: Lake, tables: dict[str, pd.DataFrame]) -> None:
    frame = tables["applications"].copy()
    frame["channel"] = None
    outcome = _ingest(lake, "applications-legacy.parquet", _parquet(frame))
    assert outcome.status == "accepted" and outcome.rows_accepted == ROWS


def test_a_clean_csv_batch_lands_with_utc_microsecond_timestamps(lake: Lake, tables: dict[str, pd.DataFrame]) -> None:
    outcome = _ingest(lake, "applications-clean.csv", _csv(tables["applications"]))
    assert outcome.status == "accepted"
    stored = lake.read_offline("applications")
    assert str(stored["applied_at"].dtype) == "datetime64[us, UTC]"
    assert str(stored["created_at"].dtype) == "datetime64[us, UTC]"
    pd.testing.assert_series_equal(
        stored.sort_values("application_id")["loan_amount"].reset_index(drop=True),
        tables["applications"].sort_values("application_id")["loan_amount"].reset_index(drop=True),
    )


def _wide(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(nickname="x")


WHOLE_CASES: list[tuple[str, str, Callable[[dict[str, pd.DataFrame]], bytes], str]] = [
    (
        "missing column",
        "applications-a.parquet",
        lambda t: _parquet(t["applications"].drop(columns=["loan_amount"])),
        "missing column(s) ['loan_amount'] required by contract 'credit_synthetic' for table 'applications'",
    ),
    (
        "extra column",
        "applications-b.parquet",
        lambda t: _parquet(_wide(t["applications"])),
        "unexpected column(s) ['nickname'] not in contract",
    ),
    (
        "label column missing",
        "outcomes-c.parquet",
        lambda t: _parquet(t["outcomes"].drop(columns=["defaulted"])),
        "the label column 'defaulted' is missing from this outcomes batch",
    ),
    (
        "timestamps without timezone",
        "applications-d.parquet",
        lambda t: _parquet(t["applications"].assign(applied_at=t["applications"]["applied_at"].dt.tz_localize(None))),
        "event time 'applied_at' has no timezone",
    ),
    ("empty file", "applications-e.parquet", lambda t: b"", "empty file (0 bytes)"),
    (
        "truncated parquet",
        "applications-f.parquet",
        lambda t: _parquet(t["applications"])[:-200],
        "not a readable parquet file",
    ),
    (
        "wrong CSV delimiter",
        "applications-g.csv",
        lambda t: _csv(t["applications"], sep=";"),
        "the file is delimited by ';'",
    ),
    (
        "non-UTF-8 CSV",
        "applications-h.csv",
        lambda t: "application_id,région\n1,Genève\n".encode("latin-1"),
        "CSV is not UTF-8: byte 0xe9",
    ),
    (
        "header-only CSV",
        "applications-i.csv",
        lambda t: _csv(t["applications"].iloc[0:0]),
        "empty batch: a header but no rows",
    ),
    (
        "not data at all",
        "applications-j.parquet",
        lambda t: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "not a readable parquet file",
    ),
    (
        "binary data named .csv",
        "applications-k.csv",
        lambda t: b"PK\x03\x04\x00\x00" + b"\x00" * 64,
        "not a CSV file: it holds binary data",
    ),
    ("unsupported file type", "applications-l.xlsx", lambda t: b"spreadsheet", "unsupported file type"),
    ("file of no known table", "loans-m.parquet", lambda t: _parquet(t["applications"]), "cannot tell which table"),
    (
        "too many bad rows",
        "applications-n.parquet",
        lambda t: _parquet(t["applications"].assign(loan_purpose="yacht")),
        "100% of rows are bad, over the contract's limit of 20%",
    ),
]


@pytest.mark.parametrize(("case", "name", "make", "message"), WHOLE_CASES, ids=[c[0] for c in WHOLE_CASES])
def test_unusable_batches_are_quarantined_whole(
    lake: Lake, tables: dict[str, pd.DataFrame], case: str, name: str, make: Callable[..., bytes], message: str
) -> None:
    data = make(tables)
    outcome = _ingest(lake, name, data)
    _assert_whole(lake, outcome, message, data)


def test_too_many_bad_rows_keeps_every_row_and_its_reason(lake: Lake, tables: dict[str, pd.DataFrame]) -> None:
    frame = tables["applications"].copy()
    frame.loc[:20, "loan_purpose"] = "yacht"
    outcome = _ingest(lake, "applications-o.parquet", _parquet(frame))
    assert outcome.status == "quarantined" and outcome.rows_quarantined == ROWS
    rejected = lake.read_rejected(outcome.batch_id)
    assert len(rejected) == ROWS
    assert (rejected["_reasons"] == "expect_column_values_to_be_in_set(loan_purpose)").sum() == 21
    assert (rejected["_reasons"] == "batch over the bad-row limit").sum() == ROWS - 21


def test_the_same_batch_twice_is_a_no_op_that_says_so(lake: Lake, tables: dict[str, pd.DataFrame]) -> None:
    data = _parquet(tables["applications"])
    first = _ingest(lake, "applications-p.parquet", data)
    again = _ingest(lake, "applications-copy.parquet", data)
    assert first.status == "accepted" and again.status == "duplicate"
    assert again.reason is not None and f"same content as batch {first.batch_id}" in again.reason
    assert again.rows_in == 0 and len(lake.read_offline("applications")) == ROWS


def test_a_replay_after_the_contract_is_fixed_accepts_the_rows_and_keeps_the_history(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    frame = tables["applications"].copy()
    frame.loc[[2, 7], "loan_purpose"] = "yacht"
    first = _ingest(lake, "applications-q.parquet", _parquet(frame))
    assert first.status == "partial" and first.rows_quarantined == 2
    again = replay_quarantined.fn(first.batch_id, CONTRACT, lake, NOW)  # the same contract rejects them again
    assert (again.batch_id, again.status, again.rows_quarantined) == (f"{first.batch_id}-r1", "quarantined", 2)
    fixed = _admit_yacht()
    replay = replay_quarantined.fn(first.batch_id, fixed, lake, NOW)
    assert (replay.batch_id, replay.replay_of) == (f"{first.batch_id}-r2", first.batch_id)
    assert (replay.status, replay.rows_in, replay.rows_accepted) == ("accepted", 2, 2)
    assert len(lake.read_offline("applications")) == ROWS
    history = lake.read_reason(first.batch_id)["replays"]
    assert [(h["batch_id"], h["status"], h["contract_fingerprint"]) for h in history] == [
        (again.batch_id, "quarantined", CONTRACT.fingerprint),
        (replay.batch_id, "accepted", fixed.fingerprint),
    ]


def _stored_types(lake: Lake, table: str) -> set[tuple[str, str]]:
    files = [u for u in storage.list_objects(lake.offline(table)) if u.endswith(".parquet")]
    assert files
    return {(f.name, str(f.type)) for u in files for f in pq.read_schema(io.BytesIO(storage.read_bytes(u)))}


def test_a_column_empty_in_every_row_is_stored_with_the_contracts_type(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    _ingest(lake, "applications-full.parquet", _parquet(tables["applications"].head(20)))
    _ingest(lake, "applications-empty.parquet", _parquet(tables["applications"].iloc[20:].assign(channel=None)))
    types = _stored_types(lake, "applications")
    assert ("channel", "string") in types and ("channel", "null") not in types
    assert len(lake.read_offline("applications")) == ROWS


def test_one_null_key_leaves_the_other_keys_exact_64_bit_integers(lake: Lake, tables: dict[str, pd.DataFrame]) -> None:
    frame = tables["applications"].copy()
    frame["application_id"] = frame["application_id"].astype("Int64")
    frame.loc[0, "application_id"] = None
    frame.loc[1, "application_id"] = 2**60 + 1  # not a float64: a float would store 2**60
    for fmt, data in (("parquet", _parquet(frame)), ("csv", _csv(frame))):
        batch_lake = Lake.of(storage.join(lake.root, fmt), "credit_synthetic")
        _assert_rows(batch_lake, _ingest(batch_lake, f"applications-gap.{fmt}", data), [0], "not_be_null")
        assert ("application_id", "int64") in _stored_types(batch_lake, "applications")
        assert 2**60 + 1 in batch_lake.read_offline("applications")["application_id"].tolist()


@pytest.mark.parametrize(
    ("fmt", "value"), [("parquet", 2**64 - 1), ("csv", "99999999999999999999"), ("csv", "-9223372036854775809")]
)
def test_an_integer_beyond_64_bits_is_rejected_with_its_value_never_wrapped(
    lake: Lake, tables: dict[str, pd.DataFrame], fmt: str, value: object
) -> None:
    frame = tables["applications"].copy()
    if fmt == "parquet":
        frame["application_id"] = frame["application_id"].astype("uint64")
        frame.loc[2, "application_id"] = value
        data = _parquet(frame)
    else:
        frame = frame.astype({"application_id": object})
        frame.loc[2, "application_id"] = value
        data = _csv(frame)
    expected = f"type(application_id): expected an integer within the 64-bit range, got {value!r}"
    _assert_rows(lake, _ingest(lake, f"applications-big.{fmt}", data), [2], expected)
    assert ("application_id", "int64") in _stored_types(lake, "applications")


def _admit_yacht() -> Contract:
    data = CONTRACT.model_dump(mode="json", exclude_defaults=True)
    for column in data["columns"]:
        if column["name"] == "loan_purpose":
            column["categories"].append("yacht")
    return parse_contract(data)


def test_a_quarantined_csv_row_replays_with_its_missing_cells_still_missing(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    frame = tables["applications"].copy()
    frame.loc[[2, 7], "loan_purpose"] = "yacht"
    frame.loc[[2, 7], "channel"] = None  # an empty cell of a nullable column
    first = _ingest(lake, "applications-gaps.csv", _csv(frame))
    assert (first.status, first.rows_quarantined) == ("partial", 2)
    assert lake.read_rejected(first.batch_id)["channel"].isna().all()
    replay = replay_quarantined.fn(first.batch_id, _admit_yacht(), lake, NOW)
    assert (replay.status, replay.rows_in, replay.rows_accepted) == ("accepted", 2, 2), replay.reason
    stored = lake.read_offline("applications")
    assert len(stored) == ROWS and stored.loc[stored["loan_purpose"] == "yacht", "channel"].isna().all()


def test_a_file_refused_only_for_its_place_does_not_block_its_bytes(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    data = _parquet(tables["applications"])
    misplaced = _ingest(lake, "loans-r.parquet", data)
    assert misplaced.status == "quarantined" and "cannot tell which table" in (misplaced.reason or "")
    assert _ingest(lake, "loans-r.parquet", data).status == "duplicate"  # the same misplaced file: seen already
    placed = _ingest(lake, "applications-r.parquet", data)
    assert (placed.status, placed.rows_accepted) == ("accepted", ROWS)
    replay = replay_quarantined.fn(misplaced.batch_id, CONTRACT, lake, NOW)
    assert replay.status == "duplicate" and f"same content as batch {placed.batch_id}" in (replay.reason or "")
    assert len(lake.read_offline("applications")) == ROWS
    assert lake.read_reason(misplaced.batch_id)["replays"][0]["status"] == "duplicate"


def test_a_ragged_csv_keeps_its_readable_lines_and_quarantines_each_bad_one_by_line(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    lines = _csv(tables["applications"]).decode().splitlines()
    lines[4] += ",surplus"  # row 3 (line 5 of the file): one field too many
    lines[10] = lines[10].rsplit(",", 2)[0]  # row 9 (line 11): two fields too few
    outcome = _ingest(lake, "applications-ragged.csv", ("\n".join(lines) + "\n").encode())
    assert (outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined) == (ROWS, ROWS - 2, 2)
    assert outcome.failing == {"unreadable_line": 2}
    _assert_rows(lake, outcome, [3, 9], "field(s) where the header has 7")
    assert lake.read_rejected(outcome.batch_id)["_reasons"].tolist() == [
        "line 5: 8 field(s) where the header has 7",
        "line 11: 5 field(s) where the header has 7",
    ]


def test_a_partial_batch_replayed_again_stores_each_row_once(lake: Lake, tables: dict[str, pd.DataFrame]) -> None:
    frame = tables["applications"].copy()
    frame.loc[2:7, "loan_purpose"] = "yacht"
    frame.loc[7, "loan_amount"] = -1.0  # still wrong once yachts are admitted
    first = _ingest(lake, "applications-twice.parquet", _parquet(frame))
    fixed = _admit_yacht()
    replay = replay_quarantined.fn(first.batch_id, fixed, lake, NOW)
    assert (replay.status, replay.rows_in, replay.rows_accepted, replay.rows_quarantined) == ("partial", 6, 5, 1)
    assert lake.read_rejected(replay.batch_id)["_source_row"].tolist() == [7]  # the row of the batch, as sent
    again = replay_quarantined.fn(first.batch_id, fixed, lake, NOW)  # rows 2-6 are stored: only row 7 is judged
    assert (again.status, again.rows_in, again.rows_accepted, again.rows_quarantined) == ("quarantined", 1, 0, 1)
    assert len(lake.read_offline("applications")) == ROWS - 1
    assert lake.read_reason(first.batch_id)["accepted_rows"] == [2, 3, 4, 5, 6]


def test_a_batch_replayed_after_it_was_accepted_stores_nothing_again(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    whole = _ingest(lake, "applications-all.parquet", _parquet(tables["applications"].assign(loan_purpose="yacht")))
    partial_frame = tables["outcomes"].copy().reset_index(drop=True)
    partial_frame.loc[0, "defaulted"] = 2
    partial = _ingest(lake, "outcomes-twice.parquet", _parquet(partial_frame))
    assert (whole.status, partial.status) == ("quarantined", "partial")
    fixed = _admit_yacht()
    for outcome, contract in ((whole, fixed), (partial, CONTRACT)):
        if outcome is partial:  # the label is right now: the row is resent as 0 through its rejected cell
            rejected = lake.read_rejected(partial.batch_id).assign(defaulted=0)
            storage.write_bytes(lake.quarantine(partial.batch_id, "rejected.parquet"), _parquet(rejected))
        stored = replay_quarantined.fn(outcome.batch_id, contract, lake, NOW)
        assert stored.status == "accepted"
        for n in (2, 3):
            again = replay_quarantined.fn(outcome.batch_id, contract, lake, NOW)
            assert (again.batch_id, again.status, again.rows_in, again.rows_accepted) == (
                f"{outcome.batch_id}-r{n}",
                "duplicate",
                0,
                0,
            )
            assert again.reason is not None and "accepted by an earlier replay: nothing to replay" in again.reason
            assert lake.read_ledger(again.batch_id) is not None
    assert len(lake.read_offline("applications")) == ROWS
    assert len(lake.read_offline("outcomes")) == len(partial_frame)


def test_the_same_rows_in_another_file_are_counted_as_duplicates_and_stored_once(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    first = _ingest(lake, "applications-day1.parquet", _parquet(tables["applications"]))
    resent = _ingest(lake, "applications-export.csv", _csv(tables["applications"]))  # a CSV re-export
    assert (resent.status, resent.rows_in, resent.rows_accepted, resent.rows_quarantined) == ("duplicate", ROWS, 0, 0)
    assert resent.rows_duplicate == ROWS and first.rows_duplicate == 0
    assert lake.read_ledger(resent.batch_id)["rows_duplicate"] == ROWS  # type: ignore[index]
    mixed = pd.concat([tables["applications"].head(10), _new_applications(tables, 5)], ignore_index=True)
    outcome = _ingest(lake, "applications-mixed.parquet", _parquet(mixed))
    assert (outcome.status, outcome.rows_accepted, outcome.rows_duplicate) == ("accepted", 5, 10)
    assert len(lake.read_offline("applications")) == ROWS + 5


def _new_applications(tables: dict[str, pd.DataFrame], n: int) -> pd.DataFrame:
    fresh = tables["applications"].head(n).copy()
    fresh["application_id"] += 10**9
    return fresh


def test_a_restated_value_is_quarantined_with_the_key_and_the_column_that_differs(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    _ingest(lake, "outcomes-first.parquet", _parquet(tables["outcomes"]))
    restated = tables["outcomes"].copy().reset_index(drop=True)
    restated.loc[3, "defaulted"] = 1 - restated.loc[3, "defaulted"]
    outcome = _ingest(lake, "outcomes-again.csv", _csv(restated))
    rows = len(restated)
    assert (outcome.status, outcome.rows_accepted, outcome.rows_quarantined) == ("partial", 0, 1)
    assert outcome.rows_duplicate == rows - 1 and outcome.failing == {"restated_key(application_id)": 1}
    rejected = lake.read_rejected(outcome.batch_id)
    key, was = restated.loc[3, "application_id"], tables["outcomes"].reset_index(drop=True).loc[3, "defaulted"]
    assert rejected["_source_row"].tolist() == [3]
    assert rejected["_reasons"].tolist() == [
        f"restatement of stored key application_id={key}: defaulted (stored {was}, sent {1 - was})"
    ]
    stored = lake.read_offline("outcomes")
    assert len(stored) == rows and stored.loc[stored["application_id"] == key, "defaulted"].tolist() == [was]
    data = CONTRACT.model_dump(mode="json", exclude_defaults=True)
    data["tables"]["outcomes"]["restatement"] = "store"  # the operator accepts the correction, and replays it
    storing = parse_contract(data)
    replay = replay_quarantined.fn(outcome.batch_id, storing, lake, NOW)
    assert (replay.status, replay.rows_accepted, replay.rows_quarantined) == ("accepted", 1, 0), replay.reason
    current = lake.read_current_arrow(storing, "outcomes", ["application_id", "observed_at", "defaulted"])
    assert current is not None and current.num_rows == rows
    labels = dict(zip(current["application_id"].to_pylist(), current["defaulted"].to_pylist(), strict=True))
    assert labels[key] == 1 - was


def test_training_reads_one_row_per_decision_after_files_are_sent_again(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    from tasks.train.dataset import entity_frame

    _ingest(lake, "applications-a.parquet", _parquet(tables["applications"]))
    _ingest(lake, "outcomes-a.parquet", _parquet(tables["outcomes"]))
    before = entity_frame(lake, CONTRACT, NOW)
    restated = tables["outcomes"].copy().reset_index(drop=True)
    restated.loc[0, "defaulted"] = 1 - restated.loc[0, "defaulted"]
    _ingest(lake, "applications-b.csv", _csv(tables["applications"]))
    _ingest(lake, "outcomes-b.csv", _csv(restated))
    after = entity_frame(lake, CONTRACT, NOW)  # raised "appear in more than one applications row" before
    pd.testing.assert_frame_equal(after, before)


def _renamed(contract: Contract, table: str, new: str) -> Contract:
    data = contract.model_dump(mode="json", exclude_defaults=True)
    data["tables"][new] = data["tables"].pop(table)
    data["prediction"] = new if data["prediction"] == table else data["prediction"]
    for column in data["columns"]:
        column["source"] = new if column["source"] == table else column["source"]
    return parse_contract(data)


def test_a_misplaced_file_replayed_then_sent_under_its_name_is_stored_once(
    lake: Lake, tables: dict[str, pd.DataFrame]
) -> None:
    data = _parquet(tables["applications"])
    misplaced = _ingest(lake, "loans-m.parquet", data)
    assert misplaced.status == "quarantined"
    with_loans = _renamed(CONTRACT, "applications", "loans")  # a contract that adds the file's table
    replay = replay_quarantined.fn(misplaced.batch_id, with_loans, lake, NOW)
    assert (replay.status, replay.rows_accepted) == ("accepted", ROWS)
    placed = _ingest(lake, "loans-n.parquet", data, with_loans)  # the same bytes under the right name
    assert (placed.status, placed.rows_accepted, placed.rows_duplicate) == ("duplicate", 0, ROWS)
    assert len(lake.read_offline("loans")) == ROWS


def _profiles_restated_in_place() -> Contract:
    """Profiles keyed by customer alone, whose restatements are stored as newer versions."""
    data = CONTRACT.model_dump(mode="json", exclude_defaults=True)
    data["tables"]["profiles"].update(primary_key=["customer_id"], restatement="store")
    return parse_contract(data)


def test_a_stored_restatement_is_what_training_sees_from_its_time_and_the_older_version_before(
    tmp_path: Path, tables: dict[str, pd.DataFrame]
) -> None:
    from feature_repo.definitions import build_repo
    from feature_repo.store import offline_root, open_store
    from tasks.shared.features import EVENT_TIMESTAMP

    contract = _profiles_restated_in_place()
    settings = load_settings(state_dir=tmp_path)
    lake = Lake.of(settings.lake_uri, contract.name)
    day = pd.Timestamp("2025-01-01", tz="UTC")
    first = tables["profiles"].head(2).reset_index(drop=True).assign(profile_at=day, income=[1000.0, 500.0])
    assert _ingest(lake, "profiles-1.parquet", _parquet(first), contract).rows_accepted == 2
    moved = first.copy()
    moved.loc[0, ["profile_at", "income"]] = [pd.Timestamp("2025-03-01", tz="UTC"), 2000.0]  # a later event time
    moved.loc[1, "income"] = 700.0  # the same event time: the row replaced in place
    second = _ingest(lake, "profiles-2.parquet", _parquet(moved), contract)  # the same run (the same NOW)
    assert (second.status, second.rows_accepted, second.rows_duplicate) == ("accepted", 2, 0)
    assert len(lake.read_offline("profiles")) == 4  # both versions are kept
    store = open_store(settings, contract)
    store.apply(build_repo(contract, offline_root(settings, contract)).objects)
    customers = first["customer_id"].tolist()
    times = pd.to_datetime(["2024-12-31", "2025-02-01", "2025-04-01"], utc=True)
    entities = pd.DataFrame([(c, t) for c in customers for t in times], columns=["customer_id", EVENT_TIMESTAMP])
    seen = store.get_historical_features(entity_df=entities, features=["profiles:income"]).to_df()
    income = {(r.customer_id, r.event_timestamp.strftime("%m-%d")): r.income for r in seen.itertuples()}
    assert income[(customers[0], "02-01")] == 1000.0 and income[(customers[0], "04-01")] == 2000.0
    assert income[(customers[1], "02-01")] == 700.0 and income[(customers[1], "04-01")] == 700.0
    assert pd.isna(income[(customers[0], "12-31")]) and pd.isna(income[(customers[1], "12-31")])
