"""The lake of one dataset: accepted rows by event day, the ledger, and quarantine that loses nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from closedloop import storage
from closedloop.lake import CREATED, TIMESTAMP, Lake

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
