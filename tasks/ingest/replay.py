"""Replays of quarantined batches: re-validated, typically under a new contract version, each row stored once.

A replay is a batch of its own (``<id>-r<n>``), committed like one (see :mod:`tasks.ingest.batch`); the rows it
accepted are committed with it, so however often a batch is replayed, and wherever a run dies, no row is stored
twice. The Prefect task is ``replay_quarantined`` in :mod:`tasks.ingest.tasks`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from closedloop import failpoints
from closedloop.contract import Contract
from closedloop.lake import Lake, parquet_bytes
from closedloop.landing import BatchRef, SentFile, UnusableBatch, fetched, identify, is_large, read_batch
from closedloop.source import to_internal
from tasks.ingest.batch import (
    CHUNK_ROWS,
    BatchOutcome,
    Replay,
    against_stored,
    as_ranges,
    done_rows,
    finish_batch,
    ingest_in_chunks,
    nothing_to_store,
    store_batch,
)
from tasks.ingest.validation import validate, whole_batch

logger = logging.getLogger(__name__)


def replay(
    quarantined_id: str, contract: Contract, lake: Lake, now: datetime, chunk_rows: int = CHUNK_ROWS
) -> BatchOutcome:
    """Re-validate a quarantined batch: a whole batch from its original bytes, a partial one from its rejected rows.

    The replay gets its own ledger record (``<id>-r<n>``); the quarantine record keeps the history of replays and
    the rows replays have accepted (``accepted_rows``, by row of the batch, or ``accepted_ranges`` as
    ``[start, end)`` runs for a batch replayed in chunks): those are never replayed again, so however often a batch
    is replayed, each of its rows is stored at most once. A whole batch of more than ``chunk_rows`` records is
    replayed chunk by chunk, as it would be ingested.
    """
    record = lake.read_reason(quarantined_id)
    earlier = _committed_replays(lake, quarantined_id)
    _recover_replays(record, earlier)
    replay = Replay(quarantined_id, f"{quarantined_id}-r{len(earlier) + 1}", record)
    if record["status"] == "quarantined":
        outcome = _replay_whole(lake, contract, replay, now, chunk_rows)
    else:
        rejected = lake.read_rejected(quarantined_id)
        rows = rejected["_source_row"].to_numpy(dtype="int64")
        frame = rejected.drop(columns=["_source_row", "_reasons"])
        outcome = _replay_rows(lake, contract, replay, record["table"], frame, {}, rows, None, now)
    record["replays"].append(
        {
            "at": now.isoformat(),
            "batch_id": outcome.batch_id,
            "status": outcome.status,
            "rows_accepted": outcome.rows_accepted,
            "rows_quarantined": outcome.rows_quarantined,
            "contract_fingerprint": contract.fingerprint,
        }
    )
    failpoints.reach("replay-committed")
    lake.write_reason(quarantined_id, record)
    return outcome


def _recover_replays(record: dict[str, Any], committed: list[dict[str, Any]]) -> None:
    """Bring a quarantine record up to its committed replays: a run may have died between the two writes."""
    listed = {r["batch_id"] for r in record["replays"]}
    for replay in committed:
        if replay["batch_id"] not in listed:
            record["replays"].append(
                {
                    "at": replay["ingested_at"],
                    **{k: replay.get(k) for k in ("batch_id", "status", "rows_accepted", "rows_quarantined")},
                    "contract_fingerprint": replay.get("contract_fingerprint"),
                }
            )
    accepted = (row for replay in committed for row in replay.get("accepted_rows", []))
    record["accepted_rows"] = sorted({*record.get("accepted_rows", []), *accepted})
    ranges = [r for replay in [record, *committed] for r in replay.get("accepted_ranges", [])]
    if ranges:
        record["accepted_ranges"] = as_ranges(np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges]))


def _committed_replays(lake: Lake, quarantined_id: str) -> list[dict[str, Any]]:
    """The ledger records of a quarantined batch's replays (``<id>-r1``, ``<id>-r2``, ... until one is missing)."""
    found: list[dict[str, Any]] = []
    while (record := lake.read_ledger(f"{quarantined_id}-r{len(found) + 1}")) is not None:
        found.append(record)
    return found


def _replay_whole(lake: Lake, contract: Contract, replay: Replay, now: datetime, chunk_rows: int) -> BatchOutcome:
    """A batch quarantined whole, from its original bytes."""
    qid = replay.quarantined_id
    suffix = replay.name.rsplit(".", 1)[-1] if "." in replay.name else "bin"
    with fetched(lake.quarantine(qid, f"original.{suffix}"), lake.endpoint_url) as sent:
        return _replay_sent(lake, contract, replay, now, chunk_rows, sent)


def _replay_sent(
    lake: Lake, contract: Contract, replay: Replay, now: datetime, chunk_rows: int, sent: SentFile
) -> BatchOutcome:
    record, rid, qid, data = replay.record, replay.rid, replay.quarantined_id, sent.path
    # a batch of no table may belong to one of this contract's tables (one added since)
    table = record["table"] or identify(replay.uri, lake.landing, contract).table
    seen = lake.read_ledger(sent.content_id) if record["table"] is None else None
    if seen is not None:  # the same bytes were ingested under a table's name since: their rows are stored once
        reason = f"same content as batch {seen['batch_id']} from {seen['uri']}, ingested {seen['ingested_at']}"
        return nothing_to_store(lake, replay, table, reason, now)
    fmt = contract.tables[table].file if table in contract.tables else None
    suffix_format = identify(replay.name, "", contract).file_format
    ref = BatchRef(uri=replay.uri, table=table, file_format=(fmt.format if fmt else None) or suffix_format, fmt=fmt)
    lake.discard(rid)
    try:
        readout = read_batch(data, ref) if not is_large(data, ref, chunk_rows) else None
    except UnusableBatch as exc:
        outcome = BatchOutcome(
            batch_id=rid, uri=replay.uri, table=table, status="quarantined", reason=str(exc), replay_of=qid
        )
        return finish_batch(lake, outcome, data, replay.name, pd.DataFrame(), None, contract, now)
    table = table or ""  # read_chunks has refused batches that belong to no table
    if readout is None:
        return ingest_in_chunks(lake, contract, ref, table, rid, data, chunk_rows, now, replay)
    rows = np.arange(len(readout.frame), dtype=np.int64)
    try:  # every row of the batch, those earlier replays accepted included: generated keys count identical rows
        sourced = to_internal(readout.frame, contract, table, batch_id=qid, rows=rows, now=now)
    except UnusableBatch as exc:
        result = whole_batch(readout.frame, table, str(exc), unreadable=readout.unreadable)
        return store_batch(lake, contract, replay.uri, replay.name, table, rid, data, result, now, qid)
    return _replay_rows(
        lake, contract, replay, table, sourced.frame, readout.unreadable, rows, data, now, sourced.made_missing
    )


def _replay_rows(
    lake: Lake,
    contract: Contract,
    replay: Replay,
    table: str,
    frame: pd.DataFrame,
    unreadable: dict[int, str],
    rows: np.ndarray,
    data: Path | None,
    now: datetime,
    made_missing: dict[str, int] | None = None,
) -> BatchOutcome:
    """Validate and store the rows of a quarantined batch (``rows``: their row in the batch) no replay accepted.

    ``frame`` is under the contract's names: the original file's rows passed through ``to_internal``, or the rows
    quarantine kept (stored as validated).
    """
    done = done_rows(replay.record)
    kept = np.flatnonzero(~np.isin(rows, done))
    if not len(kept):
        reason = f"every row of batch {replay.quarantined_id} was accepted by an earlier replay: nothing to replay"
        return nothing_to_store(lake, replay, table, reason, now)
    renumber = {int(position): i for i, position in enumerate(kept)}
    frame, rows = frame.iloc[kept].reset_index(drop=True), rows[kept]
    unreadable = {renumber[p]: why for p, why in unreadable.items() if p in renumber}
    # the bad-row limit judges a batch the first time all of it is judged: the rows a replay of a partial batch
    # re-judges were all bad once, and a share among them says nothing about the batch
    judge_share = data is not None and not len(done)
    result = validate(frame, contract, table, now, unreadable, judge_share=judge_share)
    result, created = against_stored(lake, contract, table, result, now)
    result.rejected["_source_row"] = rows[result.rejected["_source_row"].to_numpy(dtype="int64")]  # the batch's
    accepted: list[int] = []
    if not result.batch_error:
        accepted = sorted(set(rows.tolist()) - set(result.rejected["_source_row"].tolist()))
        replay.record["accepted_rows"] = sorted({*replay.record.get("accepted_rows", []), *accepted})
    body = parquet_bytes(frame) if data is None else data
    return store_batch(
        lake,
        contract,
        replay.uri,
        replay.name,
        table,
        replay.rid,
        body,
        result,
        created,
        replay.quarantined_id,
        {"accepted_rows": accepted},  # the ledger record commits them with the rows (see replay)
        made_missing,
    )
