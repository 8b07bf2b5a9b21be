"""A batch's rows against the stored rows of the same keys: duplicates counted apart, restatements named."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.lake import CREATED, TIMESTAMP
from tasks.ingest.stored_keys import (
    StoredMatch,
    files_with_keys,
    incoming_arrow,
    key_hashes,
    key_index,
    look_up,
    match_stored,
    settle,
)
from tasks.ingest.validation import Validation

TYPES = {"id": pa.int64(), "at": TIMESTAMP, "amount": pa.float64(), "channel": pa.string()}
KEYS = ["id"]
EARLY, LATE = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)


def _frame(ids: list[int], amounts: list[float], channels: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ids,
            "at": pd.Series(pd.to_datetime(["2025-03-01T10:00:00Z"] * len(ids)), dtype="datetime64[us, UTC]"),
            "amount": amounts,
            "channel": pd.Series(channels, dtype=object),
        }
    )


def _stored(frame: pd.DataFrame, created: datetime) -> pa.Table:
    table = incoming_arrow(frame, TYPES).drop_columns(["_row"])
    return table.append_column(CREATED, pa.array([created] * len(frame), TIMESTAMP))


def test_only_the_files_holding_a_key_of_the_batch_are_named() -> None:
    incoming = incoming_arrow(_frame([2, 9], [1.0, 1.0], ["a", "a"]), TYPES)
    days = ["2025-03-01", "2025-03-01", "2025-03-02", "2025-03-02", "2025-03-05"]
    stored = pd.DataFrame({"id": [1, 2, 3, 9, 9], "at": pd.to_datetime(days, utc=True)})
    index = key_index(stored, KEYS, "at", TYPES)
    by_file = {"b1": index.filter(pc.is_in(index["id"], pa.array([1, 2, 3]))), "b2": index.slice(0, 0)}
    by_file["b2"] = key_index(stored.iloc[[3]], KEYS, "at", TYPES)
    by_file["b3"] = key_index(stored.iloc[[4]], KEYS, "at", TYPES)
    parts = sorted(by_file.items())
    assert files_with_keys(incoming, parts, KEYS) == [("2025-03-01", "b1"), ("2025-03-02", "b2"), ("2025-03-05", "b3")]
    assert files_with_keys(incoming, [("b0", index.slice(0, 0))], KEYS) == []
    # an index file written before the key hash existed: its keys are hashed where it is read
    old = ("b4", index.drop_columns(["_key_hash"]))
    assert files_with_keys(incoming, [old], KEYS) == [("2025-03-01", "b4"), ("2025-03-02", "b4"), ("2025-03-05", "b4")]


def test_key_hashes_are_equal_for_equal_keys_of_any_stored_type() -> None:
    ints = pa.table({"id": pa.array([1, 2, None], pa.int64()), "at": pa.array([EARLY, LATE, LATE], TIMESTAMP)})
    floats = pa.table(
        {"id": pa.array([1.0, 2.0, None]), "at": pa.array([EARLY, LATE, LATE], pa.timestamp("ns", "UTC"))}
    )
    assert key_hashes(ints, ["id", "at"]).tolist() == key_hashes(floats, ["id", "at"]).tolist()
    assert len(set(key_hashes(ints, ["id", "at"]).tolist())) == 3
    text = pa.table({"id": ["a", "b", "a"]})
    hashes = key_hashes(text, ["id"])
    assert hashes[0] == hashes[2] != hashes[1]


def test_the_key_index_of_a_batch_holds_each_rows_key_and_event_day() -> None:
    frame = _frame([1, 2], [1.0, 2.0], ["a", "b"]).assign(
        at=pd.Series(pd.to_datetime(["2025-03-01T23:59:59Z", "2025-03-02T00:00:00Z"]), dtype="datetime64[us, UTC]")
    )
    index = key_index(frame, KEYS, "at", TYPES)
    assert sorted(zip(index["id"].to_pylist(), index["event_date"].to_pylist(), strict=True)) == [
        (1, "2025-03-01"),
        (2, "2025-03-02"),
    ]
    assert index.schema.field("id").type == pa.int64()
    assert index["_key_hash"].to_pylist() == sorted(index["_key_hash"].to_pylist())  # for binary search


def test_identical_rows_are_duplicates_and_a_changed_value_is_a_restatement_naming_key_and_columns() -> None:
    stored = _stored(_frame([1, 2, 3], [10.0, 20.0, 30.0], ["online", None, "branch"]), EARLY)
    sent = incoming_arrow(_frame([4, 1, 2, 3], [5.0, 10.0, 21.5, 30.0], ["online", "online", None, None]), TYPES)
    match = match_stored(sent, [stored], KEYS)
    assert match.duplicates.tolist() == [1]  # id 1: every value the same (a missing cell equals a missing cell)
    assert sorted(match.restated) == [2, 3]  # id 4 (row 0) is new
    assert match.restated[2] == "restatement of stored key id=2: amount (stored 20.0, sent 21.5)"
    assert match.restated[3] == "restatement of stored key id=3: channel (stored 'branch', sent missing)"
    assert match.latest_created == EARLY


def test_a_row_is_compared_with_the_latest_stored_version_of_its_key() -> None:
    older = _stored(_frame([1], [10.0], ["online"]), EARLY)
    newer = _stored(_frame([1], [12.0], ["online"]), LATE)
    again = incoming_arrow(_frame([1], [12.0], ["online"]), TYPES)
    assert match_stored(again, [newer, older], KEYS).duplicates.tolist() == [0]
    back = match_stored(incoming_arrow(_frame([1], [10.0], ["online"]), TYPES), [older, newer], KEYS)
    assert back.restated == {0: "restatement of stored key id=1: amount (stored 12.0, sent 10.0)"}
    assert back.latest_created == LATE


def _validation(accepted: pd.DataFrame, accepted_rows: list[int], rows_in: int) -> Validation:
    bad = sorted(set(range(rows_in)) - set(accepted_rows))
    rejected = pd.DataFrame({"id": bad, "_source_row": bad, "_reasons": ["bad"] * len(bad)})
    return Validation("t", rows_in, accepted, rejected, {"x": len(bad)}, accepted_rows=np.array(accepted_rows))


def test_settling_counts_duplicates_apart_and_rejects_restatements_with_their_batch_row() -> None:
    accepted = _frame([7, 8, 9], [1.0, 2.0, 3.0], ["a", "b", "c"])
    result = _validation(accepted, [0, 2, 3], rows_in=4)  # batch row 1 failed validation
    match = StoredMatch(duplicates=np.array([0]), restated={2: "restatement of stored key id=9: amount"})
    settled = settle(result, match, KEYS, "quarantine")
    assert settled.accepted["id"].tolist() == [8]
    assert settled.accepted_rows is not None and settled.accepted_rows.tolist() == [2]
    assert settled.rejected["_source_row"].tolist() == [1, 3]
    assert settled.rejected["_reasons"].tolist() == ["bad", "restatement of stored key id=9: amount"]
    assert settled.failing == {"x": 1, "restated_key(id)": 1}
    assert (settled.rows_in, settled.rows_accepted, settled.rows_quarantined, settled.duplicates) == (4, 1, 2, 1)


def test_a_table_that_stores_restatements_keeps_them_among_the_accepted_rows() -> None:
    result = _validation(_frame([7, 8], [1.0, 2.0], ["a", "b"]), [0, 1], rows_in=2)
    match = StoredMatch(duplicates=np.array([0]), restated={1: "restatement"})
    settled = settle(result, match, KEYS, "store")
    assert settled.accepted["id"].tolist() == [8] and settled.rejected.empty
    assert (settled.rows_accepted, settled.rows_quarantined, settled.duplicates) == (1, 0, 1)


def test_rows_sent_again_are_known_by_their_hashes_and_only_changed_ones_are_read() -> None:
    stored = _frame([1, 2, 3], [10.0, 20.0, 30.0], ["online", None, "branch"])
    parts = [("b1", key_index(stored, KEYS, "at", TYPES))]
    sent = incoming_arrow(_frame([4, 1, 2, 3], [5.0, 10.0, 20.0, 31.0], ["online", "online", None, "branch"]), TYPES)
    found = look_up(sent, parts, KEYS, by_values=True)
    assert found.identical.tolist() == [1, 2]  # ids 1 and 2: every value the same, a missing one included
    assert found.files == [("2025-03-01", "b1")]  # id 3 differs: its file is read to say how
    assert look_up(sent, parts, KEYS, by_values=False).identical.tolist() == []  # versions kept: always compared
