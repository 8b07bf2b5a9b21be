"""The lake of one dataset: accepted rows by event day, the ledger, and quarantine that loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pytest

from closedloop import storage
from closedloop.contract import load_contract, parse_contract
from closedloop.lake import CREATED, TIMESTAMP, Lake, arrow_types
from closedloop.settings import PROJECT_ROOT

NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)
TYPES = {"id": pa.int64(), "at": TIMESTAMP, "amount": pa.float64()}


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.of(tmp_path.as_uri(), "credit")


def _rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3],
            "at": pd.to_datetime(
                ["2025-03-01T23:59:59.5Z", "2025-03-02T00:00:00Z", "2025-03-02T08:00:00Z"], format="ISO8601"
            ),
            "amount": [1.5, 2.5, 3.5],
        }
    )


def test_accepted_rows_land_one_file_per_event_day_with_the_time_they_were_accepted(lake: Lake, tmp_path: Path) -> None:
    written = lake.write_offline("applications", _rows(), "at", "b1", NOW, TYPES)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == [
        "credit/offline/applications/event_date=2025-03-01/b1.parquet",
        "credit/offline/applications/event_date=2025-03-02/b1.parquet",
    ]
    assert len(written) == 2
    stored = lake.read_offline("applications").sort_values("id")
    assert stored["amount"].tolist() == [1.5, 2.5, 3.5]
    assert str(stored["at"].dtype) == str(stored[CREATED].dtype) == "datetime64[us, UTC]"
    assert set(stored[CREATED]) == {pd.Timestamp(NOW)}


def test_reading_a_table_with_no_rows_gives_an_empty_frame(lake: Lake) -> None:
    assert lake.write_offline("applications", _rows().iloc[0:0], "at", "b0", NOW, TYPES) == []
    assert lake.read_offline("applications", columns=["id"]).empty
    assert lake.read_offline_arrow("applications") is None


def test_filters_and_columns_are_applied_when_reading(lake: Lake) -> None:
    lake.write_offline("applications", _rows(), "at", "b1", NOW, TYPES)
    picked = lake.read_offline("applications", columns=["id", "amount"], filters=[("id", "in", [2, 3])])
    assert list(picked.columns) == ["id", "amount"] and sorted(picked["id"]) == [2, 3]


def test_the_ledger_keeps_one_record_per_batch(lake: Lake) -> None:
    assert lake.read_ledger("b1") is None
    lake.write_ledger({"batch_id": "b1", "status": "accepted", "ingested_at": NOW})
    assert lake.read_ledger("b1") == {"batch_id": "b1", "status": "accepted", "ingested_at": NOW.isoformat(sep=" ")}
    assert [r["batch_id"] for r in lake.ledger_records()] == ["b1"]


def test_quarantine_keeps_the_bytes_the_rows_as_read_and_the_reason(lake: Lake) -> None:
    rejected = pd.DataFrame({"amount": [12, "abc", None], "_source_row": [0, 4, 9], "_reasons": ["x", "y", "z"]})
    where = lake.write_quarantine(
        "b2", b"original bytes", "applications-2025.csv", rejected, {"batch_id": "b2", "replays": []}, {"ok": False}
    )
    assert where == lake.quarantine("b2")
    assert storage.read_bytes(lake.quarantine("b2", "original.csv")) == b"original bytes"
    back = lake.read_rejected("b2")
    assert back["amount"].tolist() == ["12", "abc", None]  # mixed cells kept as text, nothing lost
    assert back["_source_row"].tolist() == [0, 4, 9]
    assert lake.read_reason("b2") == {"batch_id": "b2", "replays": []}
    assert [r["batch_id"] for r in lake.quarantined()] == ["b2"]
    assert storage.exists(lake.quarantine("b2", "validation.json"))


def test_an_unknown_quarantined_batch_is_named_in_the_error(lake: Lake) -> None:
    with pytest.raises(storage.StorageError, match="no quarantined batch 'nope'"):
        lake.read_reason("nope")


@pytest.mark.parametrize("hostile", ["../../etc", "a/b", "..", "", "x" * 200, "b1.json", "-r1", "b 1"])
def test_a_batch_id_never_names_a_path_outside_its_place(lake: Lake, hostile: str) -> None:
    for where in (lake.ledger, lake.quarantine, lake.archive, lake.staging, lake.discard, lake.read_reason):
        with pytest.raises(storage.StorageError, match="is not a batch id: ids are letters, digits"):
            where(hostile)
    assert lake.quarantine("0123456789abcdef0123-r2").endswith("/quarantine/0123456789abcdef0123-r2")


def test_the_key_index_covers_batches_written_before_it_existed(lake: Lake) -> None:
    lake.write_offline("applications", _rows(), "at", "b1", NOW, TYPES)  # no index file: written outside ingestion
    index = lake.read_keys("applications", ["id"])
    assert index is not None
    assert sorted(zip(*index.to_pydict().values(), strict=True)) == [
        (1, "2025-03-01", "b1"),
        (2, "2025-03-02", "b1"),
        (3, "2025-03-02", "b1"),
    ]
    assert storage.exists(storage.join(lake.root, "keys", "applications", "b1.parquet"))  # indexed once
    assert lake.read_keys("outcomes", ["id"]) is None


def test_a_table_that_stores_restatements_reads_the_latest_version_of_each_key(lake: Lake) -> None:
    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    data = contract.model_dump(mode="json", exclude_defaults=True)
    data["tables"]["applications"]["restatement"] = "store"
    storing = parse_contract(data)
    types = arrow_types(storing, "applications")
    first = pd.DataFrame(
        {
            "customer_id": [1, 2],
            "application_id": [11, 12],
            "applied_at": pd.to_datetime(["2025-03-01", "2025-03-01"], utc=True),
            "loan_amount": [1000.0, 2000.0],
            "loan_term_months": 12,
            "loan_purpose": "car",
            "channel": "online",
        }
    )
    lake.write_offline("applications", first, "applied_at", "b1", NOW, types)
    restated = first.head(1).assign(loan_amount=1500.0)
    lake.write_offline("applications", restated, "applied_at", "b2", NOW + timedelta(seconds=1), types)
    columns = ["application_id", "loan_amount"]
    read = lake.read_current_arrow(storing, "applications", columns)
    assert read is not None and sorted(zip(*read.to_pydict().values(), strict=True)) == [(11, 1500.0), (12, 2000.0)]
    every = lake.read_current_arrow(contract, "applications", columns)  # quarantining tables: what is stored
    assert every is not None and every.num_rows == 3


@pytest.fixture(params=["file", "s3"])
def any_lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """A lake on disk, and one on a real S3 endpoint (where a move is a copy then a delete)."""
    if request.param == "file":
        return Lake.of(tmp_path.as_uri(), "credit")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lake-{tmp_path.name.replace('_', '-').lower()[-40:]}"
    storage.ensure_bucket(bucket, endpoint)
    return Lake.of(f"s3://{bucket}/lake", "credit", endpoint)


def _stage(lake: Lake, batch_id: str) -> None:
    staged = lake.staging(batch_id)
    staged.write_offline("applications", _rows(), "at", batch_id, NOW, TYPES)
    staged.write_quarantine(batch_id, b"bytes", "applications-1.csv", pd.DataFrame({"id": ["x"]}), {"why": 1}, None)


def test_a_staged_batch_is_invisible_until_its_ledger_record_commits_it(any_lake: Lake) -> None:
    _stage(any_lake, "b1")
    assert any_lake.read_offline("applications").empty and any_lake.quarantined() == []
    any_lake.commit({"batch_id": "b1", "status": "partial", "ingested_at": NOW})
    assert any_lake.read_offline("applications")["id"].tolist() == [1, 2, 3]
    assert any_lake.quarantined() == [{"why": 1}]
    assert storage.list_objects(storage.join(any_lake.root, "staging"), any_lake.endpoint_url) == []


def test_the_sweep_publishes_committed_batches_and_removes_uncommitted_ones(any_lake: Lake) -> None:
    _stage(any_lake, "b1")
    _stage(any_lake, "b2")
    any_lake.write_ledger({"batch_id": "b1", "status": "accepted", "ingested_at": NOW})  # committed, then a crash
    assert any_lake.sweep() == {"published": ["b1"], "removed": ["b2"]}
    stored = storage.list_objects(any_lake.offline("applications"), any_lake.endpoint_url)
    assert sorted(uri.rsplit("/", 1)[-1] for uri in stored) == ["b1.parquet", "b1.parquet"]  # two event days
    assert storage.list_objects(storage.join(any_lake.root, "staging"), any_lake.endpoint_url) == []
    assert any_lake.sweep() == {"published": [], "removed": []}


def test_a_publish_interrupted_halfway_is_finished_by_the_sweep(any_lake: Lake) -> None:
    _stage(any_lake, "b1")
    staged = storage.list_objects(storage.join(any_lake.root, "staging", "b1"), any_lake.endpoint_url)
    any_lake.write_ledger({"batch_id": "b1", "status": "partial", "ingested_at": NOW})
    first = staged[0]
    storage.move(first, storage.join(any_lake.root, first.split("/staging/b1/", 1)[1]), any_lake.endpoint_url)
    assert any_lake.sweep()["published"] == ["b1"]
    assert len(any_lake.read_offline("applications")) == 3 and len(any_lake.quarantined()) == 1


def test_the_sweep_removes_the_temporary_files_of_interrupted_writes(lake: Lake, tmp_path: Path) -> None:
    lake.write_offline("applications", _rows(), "at", "b1", NOW, TYPES)
    leftover = tmp_path / "credit" / "offline" / "applications" / "event_date=2025-03-02" / ".b2.parquet.x1.tmp"
    leftover.write_bytes(b"half a file")
    lake.sweep()
    assert not leftover.exists() and len(lake.read_offline("applications")) == 3


def test_a_crash_point_kills_the_process_that_reaches_it() -> None:
    code = "from closedloop import failpoints\nfailpoints.reach('other')\nprint('passed', flush=True)\n"
    code += "failpoints.reach('batch-staged')\nprint('survived')"
    env = {**os.environ, "CLOSEDLOOP_CRASH_AT": "batch-staged"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL and done.stdout.split() == ["passed"]


# --- retraction ------------------------------------------------------------------------------------
def _ingested(lake: Lake, batch_id: str, rows: pd.DataFrame | None = None, **record: object) -> None:
    """A committed batch as ingestion leaves it: offline rows, an aggregate history table, its key index."""
    rows = _rows() if rows is None else rows
    staged = lake.staging(batch_id)
    staged.write_offline("applications", rows, "at", batch_id, NOW, TYPES)
    history = rows[["id", "at"]].assign(amount_mean_3=rows["amount"])
    types = {"id": pa.int64(), "at": TIMESTAMP, "amount_mean_3": pa.float64()}
    staged.write_offline("applications_history", history, "at", batch_id, NOW, types)
    days = rows["at"].dt.strftime("%Y-%m-%d")
    staged.write_keys("applications", batch_id, pa.table({"id": rows["id"], "event_date": days}))
    count = len(rows)
    fields = {"table": "applications", "status": "accepted", "rows_in": count, "rows_accepted": count, **record}
    lake.commit({"batch_id": batch_id, **fields, "ingested_at": NOW})


def _objects(lake: Lake, area: str) -> list[str]:
    folder = storage.join(lake.root, area)
    return [unquote(uri[len(folder) + 1 :]) for uri in storage.list_objects(folder, lake.endpoint_url)]


B1_OBJECTS = [
    "keys/applications/b1.parquet",
    "offline/applications/event_date=2025-03-01/b1.parquet",
    "offline/applications/event_date=2025-03-02/b1.parquet",
    "offline/applications_history/event_date=2025-03-01/b1.parquet",
    "offline/applications_history/event_date=2025-03-02/b1.parquet",
]


def test_a_retracted_batch_is_moved_to_its_archive_and_ledgered_not_deleted(any_lake: Lake) -> None:
    _ingested(any_lake, "b1")
    _ingested(any_lake, "b2", _rows().assign(id=[4, 5, 6]))
    done = any_lake.retract("b1", "wrong file sent", NOW)
    assert (done["state"], done["rows"], done["moved"], done["resumed"]) == ("archived", 3, B1_OBJECTS, False)
    assert done["rows_by_table"] == {"applications": 3, "applications_history": 3}
    assert sorted(_objects(any_lake, "archive/b1")) == B1_OBJECTS  # every object kept, under its path in the lake
    assert sorted(any_lake.read_offline("applications")["id"]) == [4, 5, 6]
    assert sorted(any_lake.read_offline("applications_history")["id"]) == [4, 5, 6]
    index = any_lake.read_keys("applications", ["id"])
    assert index is not None and sorted(index.column("id").to_pylist()) == [4, 5, 6]  # its keys may come again
    record = any_lake.read_ledger("b1")
    assert record is not None and (record["status"], record["rows_accepted"]) == ("accepted", 3)  # counts stand
    assert record["retracted"]["reason"] == "wrong file sent" and record["retracted"]["objects"] == B1_OBJECTS

    any_lake.finish_retraction("b1", ["applications"], NOW)
    assert any_lake.read_ledger("b1")["retracted"]["state"] == "done"  # type: ignore[index]
    with pytest.raises(ValueError, match="batch b1 was retracted already at 2026-01-15T12:00:00"):
        any_lake.retract("b1", "again", NOW)
    assert len(any_lake.read_offline("applications")) == 3  # the other batch is untouched


def test_a_retraction_a_crash_interrupted_is_finished_by_running_it_again(any_lake: Lake) -> None:
    _ingested(any_lake, "b1")
    code = (
        "import sys\nfrom datetime import UTC, datetime\nfrom closedloop.lake import Lake\n"
        "Lake(sys.argv[1], sys.argv[2] or None).retract('b1', 'poisoned values', datetime(2026, 1, 15, tzinfo=UTC))"
    )
    env = {**os.environ, "CLOSEDLOOP_CRASH_AT": "batch-retracting"}
    argv = [sys.executable, "-c", code, any_lake.root, any_lake.endpoint_url or ""]
    crashed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert _objects(any_lake, "archive/b1") == ["keys/applications/b1.parquet"]  # the key index moves first
    assert any_lake.read_ledger("b1")["retracted"]["state"] == "retracting"  # type: ignore[index]
    # meanwhile: a lookup indexes the rows still in place again, and a move of one file stops halfway on S3
    assert any_lake.read_keys("applications", ["id"]) is not None
    half = "offline/applications/event_date=2025-03-01/b1.parquet"
    body = storage.read_bytes(storage.join(any_lake.root, half), any_lake.endpoint_url)
    storage.write_bytes(storage.join(any_lake.archive("b1"), half), body, any_lake.endpoint_url)
    # and one file moved by hand
    moved = "offline/applications_history/event_date=2025-03-02/b1.parquet"
    storage.move(storage.join(any_lake.root, moved), storage.join(any_lake.archive("b1"), moved), any_lake.endpoint_url)

    done = any_lake.retract("b1", "a reason given on the second run", NOW)
    assert done["resumed"] and done["state"] == "archived" and done["reason"] == "poisoned values"
    assert done["moved"] == [B1_OBJECTS[2], B1_OBJECTS[3]]  # the others were archived already
    assert sorted(_objects(any_lake, "archive/b1")) == B1_OBJECTS
    assert _objects(any_lake, "offline") == [] and _objects(any_lake, "keys") == []
    archived_index = storage.join(any_lake.archive("b1"), "keys/applications/b1.parquet")
    assert any_lake.read_offline_files([archived_index])[0].num_rows == 3  # the batch's own index, not the re-index


def test_a_committed_batch_a_crash_left_staged_is_published_before_it_is_retracted(lake: Lake) -> None:
    staged = lake.staging("b1")
    staged.write_offline("applications", _rows(), "at", "b1", NOW, TYPES)
    lake.write_ledger({"batch_id": "b1", "table": "applications", "status": "accepted", "rows_accepted": 3})
    done = lake.retract("b1", "wrong file", NOW)
    assert done["rows"] == 3 and len(done["objects"]) == 2
    assert lake.sweep() == {"published": [], "removed": []}  # nothing left for a sweep to bring back
    assert lake.read_offline("applications").empty


def test_retracting_a_batch_lists_its_replays_which_stay_stored(lake: Lake) -> None:
    _ingested(lake, "b1", status="partial", rows_in=4, rows_quarantined=1, quarantine_uri=lake.quarantine("b1"))
    _ingested(lake, "b1-r1", _rows().assign(id=[7, 8, 9]), replay_of="b1")
    lake.write_ledger({"batch_id": "b1-r2", "status": "duplicate", "rows_accepted": 0, "replay_of": "b1"})
    lake.write_ledger({"batch_id": "b1-rx", "status": "accepted", "rows_accepted": 1})  # not a replay's name
    done = lake.retract("b1", "wrong file", NOW)
    assert done["replays"] == [
        {"batch_id": "b1-r1", "status": "accepted", "rows_accepted": 3, "retracted": None},
        {"batch_id": "b1-r2", "status": "duplicate", "rows_accepted": 0, "retracted": None},
    ]
    assert done["quarantine"] == lake.quarantine("b1")
    assert sorted(lake.read_offline("applications")["id"]) == [7, 8, 9]
    replay = lake.retract("b1-r1", "rows of the wrong file", NOW)
    assert replay["replay_of"] == "b1" and replay["rows"] == 3 and lake.read_offline("applications").empty


def test_a_retraction_is_refused_with_one_line_saying_why(lake: Lake) -> None:
    with pytest.raises(storage.StorageError, match=r"ledger/nope.json: no batch 'nope' in the ledger$"):
        lake.retract("nope", "wrong", NOW)
    lake.write_ledger({"batch_id": "q1", "status": "quarantined", "rows_accepted": 0, "reason": "not parquet"})
    with pytest.raises(ValueError, match=r"^batch q1 stored no rows \(quarantined: not parquet\): nothing to retract$"):
        lake.retract("q1", "wrong", NOW)
    lake.write_ledger({"batch_id": "d1", "status": "duplicate", "rows_accepted": 0})
    with pytest.raises(ValueError, match=r"batch d1 stored no rows \(duplicate: no row accepted\)"):
        lake.retract("d1", "wrong", NOW)
    _ingested(lake, "b1")
    with pytest.raises(ValueError, match="batch b1: a retraction needs a reason"):
        lake.retract("b1", "  ", NOW)
    assert lake.read_ledger("b1").get("retracted") is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="no archived retraction to finish"):
        lake.finish_retraction("b1", [], NOW)


def test_every_part_of_a_batch_written_in_parts_is_retracted_and_no_other_batch(lake: Lake) -> None:
    _ingested(lake, "b1")
    _ingested(lake, "b1-r1", _rows().assign(id=[7, 8, 9]))
    day = storage.join(lake.offline("applications"), "event_date=2025-03-02")
    storage.write_bytes(storage.join(day, "b1.1.parquet"), storage.read_bytes(storage.join(day, "b1.parquet")))
    done = lake.retract("b1", "wrong file", NOW)
    assert "offline/applications/event_date=2025-03-02/b1.1.parquet" in done["objects"]
    assert done["rows_by_table"] == {"applications": 5, "applications_history": 3}
    assert sorted(lake.read_offline("applications")["id"]) == [7, 8, 9]
