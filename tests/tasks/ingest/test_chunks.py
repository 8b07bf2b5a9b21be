"""A large batch is validated and stored chunk by chunk, with the same outcome as in one piece."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from closedloop import storage
from closedloop.contract import Contract, contract_at, parse_contract
from closedloop.lake import Lake
from closedloop.landing import identify
from closedloop.settings import PROJECT_ROOT
from samples.synthetic import SyntheticConfig, generate_block
from tasks.ingest.tasks import BatchOutcome, ingest_batch, replay_quarantined

CONTRACT = contract_at(str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"))
NOW = datetime(2026, 1, 15, tzinfo=UTC)
IN_ONE_PIECE = 10**9


@pytest.fixture(scope="module")
def block() -> dict[str, pd.DataFrame]:
    tables = generate_block(SyntheticConfig(customers=300, start="2025-01", months=12), 0)
    return {name: table.to_pandas() for name, table in tables.items()}


def _bytes(frame: pd.DataFrame, fmt: str, ragged: bool) -> bytes:
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = out[column].dt.strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    data = out.to_csv(index=False).encode()
    return data.replace(b"\n", b"\n1,2\n", 1) if ragged else data  # the first record is a ragged line


def _chunk(frame: pd.DataFrame) -> int:
    """Rows per chunk that make four chunks of a frame, the last one short."""
    return len(frame) // 3 - 1


def _ingest(tmp: Path, table: str, data: bytes, fmt: str, chunk_rows: int) -> tuple[Lake, BatchOutcome]:
    lake = Lake.of(tmp.as_uri(), CONTRACT.name)
    uri = storage.write_bytes(storage.join(lake.landing, table, f"{table}-1.{fmt}"), data)
    outcome = ingest_batch.fn(identify(uri, lake.landing, CONTRACT), CONTRACT, lake, NOW, chunk_rows)
    assert outcome.rows_in == outcome.rows_accepted + outcome.rows_quarantined + outcome.rows_duplicate
    return lake, outcome


def _stored(lake: Lake, table: str) -> pd.DataFrame:
    frame = lake.read_offline(table)
    if frame.empty:
        return frame
    frame = frame.drop(columns=["created_at"])
    return frame.sort_values(list(frame.columns[:2])).reset_index(drop=True)


@pytest.mark.parametrize(
    ("table", "fmt"), [("applications", "csv"), ("credit_history", "parquet"), ("credit_history", "csv")]
)
def test_a_batch_in_chunks_ends_as_it_would_in_one_piece(
    block: dict[str, pd.DataFrame], tmp_path: Path, table: str, fmt: str
) -> None:
    frame = block[table]
    # keys repeated across chunks (the first rows again at the end), and a missing required value
    frame = pd.concat([frame, frame.head(3)], ignore_index=True)
    frame.loc[5, "open_accounts" if table == "credit_history" else "loan_amount"] = None
    data = _bytes(frame, fmt, ragged=fmt == "csv")
    whole_lake, whole = _ingest(tmp_path / "whole", table, data, fmt, IN_ONE_PIECE)
    lake, chunked = _ingest(tmp_path / "chunked", table, data, fmt, _chunk(frame))

    assert whole.status == chunked.status == "partial"
    same = ("rows_in", "rows_accepted", "rows_quarantined", "rows_duplicate", "failing", "first_event")
    assert chunked.model_dump(include=set(same)) == whole.model_dump(include=set(same))
    assert chunked.failing[next(k for k in chunked.failing if "unique" in k)] == 6  # both rows of each repeat
    rejected, rejected_whole = lake.read_rejected(chunked.batch_id), whole_lake.read_rejected(whole.batch_id)
    assert sorted(rejected["_source_row"]) == sorted(rejected_whole["_source_row"])
    assert set(rejected["_reasons"]) == set(rejected_whole["_reasons"])
    pd.testing.assert_frame_equal(_stored(lake, table), _stored(whole_lake, table), check_dtype=False)
    if CONTRACT.aggregates_of(table):  # an entity's rows in several chunks: aggregated over all of them
        history = f"{table}_history"
        pd.testing.assert_frame_equal(_stored(lake, history), _stored(whole_lake, history), check_dtype=False)
    files = storage.list_objects(lake.offline(table))
    assert any(uri.endswith(".1.parquet") for uri in files)  # stored in parts
    assert storage.list_objects(storage.join(lake.root, "staging")) == []


def test_a_batch_over_the_bad_row_limit_in_chunks_stores_nothing(
    block: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    frame = block["applications"].copy()
    frame.loc[len(frame) // 2 :, "loan_amount"] = -1.0  # half the rows bad, all in the later chunks
    lake, outcome = _ingest(tmp_path, "applications", _bytes(frame, "parquet", False), "parquet", _chunk(frame))
    assert outcome.status == "quarantined" and outcome.rows_accepted == 0
    assert outcome.reason is not None and "over the contract's limit" in outcome.reason
    assert outcome.rows_quarantined == len(frame)
    assert lake.read_offline("applications").empty  # the good early chunks were staged, then dropped
    assert storage.list_objects(storage.join(lake.root, "staging")) == []
    assert len(lake.read_rejected(outcome.batch_id)) == len(frame) - len(frame) // 2


def test_the_kept_validation_document_is_bounded(block: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    frame = block["credit_history"].copy()
    frame.loc[: len(frame) // 10, "utilisation"] = 9.0  # many rows break one expectation
    lake, outcome = _ingest(tmp_path, "credit_history", _bytes(frame, "parquet", False), "parquet", _chunk(frame))
    document = json.loads(storage.read_bytes(lake.quarantine(outcome.batch_id, "validation.json")))
    broken = [r for r in document["results"] if not r["success"]]
    assert [r["expectation_config"]["kwargs"]["column"] for r in broken] == ["utilisation"]
    result = broken[0]["result"]
    assert result["unexpected_count"] == outcome.failing["expect_column_values_to_be_between(utilisation)"]
    assert len(result["partial_unexpected_list"]) <= 20 and len(result["unexpected_index_list"]) == 20
    assert result["unexpected_index_list_truncated_from"] == result["unexpected_count"] > 20
    assert document["chunks"] > 1
    assert len(lake.read_rejected(outcome.batch_id)) == result["unexpected_count"]  # every row is kept there


def _admitting_negative_loans() -> Contract:
    data = CONTRACT.model_dump(mode="json", exclude_defaults=True)
    for column in data["columns"]:
        if column["name"] == "loan_amount":
            column["min"] = -10
    return parse_contract(data)


def test_a_batch_quarantined_whole_is_replayed_in_chunks_once(block: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    frame = block["applications"].copy()
    frame.loc[len(frame) // 2 :, "loan_amount"] = -1.0  # over the bad-row limit: quarantined whole
    data = _bytes(frame, "parquet", False)
    outcomes = {}
    for name, chunk_rows in (("whole", IN_ONE_PIECE), ("chunked", _chunk(frame))):
        lake, outcome = _ingest(tmp_path / name, "applications", data, "parquet", chunk_rows)
        assert outcome.status == "quarantined"
        fixed = _admitting_negative_loans()  # a new contract version admits the rows
        replayed = replay_quarantined.fn(outcome.batch_id, fixed, lake, NOW, chunk_rows)
        again = replay_quarantined.fn(outcome.batch_id, fixed, lake, NOW, chunk_rows)
        outcomes[name] = (lake, replayed, again)
    (whole_lake, whole, whole_again), (lake, chunked, chunked_again) = outcomes["whole"], outcomes["chunked"]
    assert (chunked.status, chunked.rows_in, chunked.rows_accepted) == ("accepted", len(frame), len(frame))
    assert (whole.status, whole.rows_in, whole.rows_accepted) == ("accepted", len(frame), len(frame))
    pd.testing.assert_frame_equal(_stored(lake, "applications"), _stored(whole_lake, "applications"), check_dtype=False)
    assert chunked_again.status == whole_again.status == "duplicate"  # nothing is stored twice
    assert "accepted by an earlier replay" in (chunked_again.reason or "")
    record = lake.read_reason(chunked.replay_of or "")
    assert record["accepted_ranges"] == [[0, len(frame)]] and len(record["replays"]) == 2
    assert lake.read_ledger(chunked.batch_id)["accepted_ranges"] == [[0, len(frame)]]


@pytest.mark.parametrize("collide", [False, True], ids=["real hashes", "every hash equal"])
def test_keys_repeated_across_chunks_are_found_exactly_even_when_their_hashes_collide(
    collide: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal 64-bit hashes only send rows to the exact comparison: a collision never makes a key repeated."""
    import numpy as np

    from tasks.ingest import chunks

    if collide:
        monkeypatch.setattr(chunks, "key_hashes", lambda codes: np.zeros(len(codes), dtype=np.uint64))
    parts = [  # positions in the batch, key codes (two key columns); row 4 has no whole key (left out)
        (np.array([0, 1, 2]), np.array([[1, 10], [2, 20], [3, 30]])),
        (np.array([3, 5, 6]), np.array([[2, 20], [2, 21], [7, 70]])),
    ]
    hashes = [chunks.key_hashes(codes) for _, codes in parts]
    assert chunks.repeated_keys(hashes, 7, lambda: iter(parts)).tolist() == [0, 1, 0, 1, 0, 0, 0]
    unique = [(rows, codes * 100) for rows, codes in parts[:1]]
    hashes = [chunks.key_hashes(codes) for _, codes in unique]
    assert not chunks.repeated_keys(hashes, 3, lambda: iter(unique)).any()
