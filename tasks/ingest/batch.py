"""One landing batch into the lake: read, validated, checked against the stored rows, staged and committed.

Every row of a batch is accounted for: ``rows_in = rows_accepted + rows_quarantined + rows_duplicate``, recorded in
the ledger and returned. A batch is identified by its content hash, so seeing the same bytes twice is a no-op that
says so; a row is identified by its primary key across the whole data set (see :mod:`tasks.ingest.stored_keys`), so
the same rows in another file are counted as duplicates and never stored twice. A batch is atomic: what it stores
is staged and its ledger record commits it (see :mod:`closedloop.lake`). The Prefect tasks are in
:mod:`tasks.ingest.tasks`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from closedloop import failpoints
from closedloop.contract import Contract
from closedloop.lake import CREATED, EVENT_DATE, TIMESTAMP, Lake, arrow_types, key_type
from closedloop.landing import (
    BatchRef,
    Chunk,
    SentFile,
    UnusableBatch,
    batch_columns,
    fetched,
    is_large,
    read_batch,
    read_chunks,
    unplaced_id,
    work_dir,
)
from closedloop.source import KeyState, key_frame, key_headers, to_internal
from feature_repo.definitions import history_table
from feature_repo.transforms import compute_aggregates
from tasks.ingest import stored_keys
from tasks.ingest.chunks import bounded, key_hashes, merged, repeated_keys
from tasks.ingest.validation import Validation, key_codes, validate, whole_batch

logger = logging.getLogger(__name__)

Status = Literal["accepted", "partial", "quarantined", "duplicate"]


CHUNK_ROWS = 250_000  # records validated at once (CLOSEDLOOP_INGEST_CHUNK_ROWS in a flow run)


class BatchOutcome(BaseModel):
    """What happened to one batch."""

    batch_id: str
    uri: str
    table: str | None
    status: Status
    rows_in: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0  # rows stored already with the same values: counted, not stored again
    reason: str | None = None
    failing: dict[str, int] = Field(default_factory=dict)
    quarantine_uri: str | None = None
    first_event: datetime | None = None
    replay_of: str | None = None
    made_missing: dict[str, int] = Field(default_factory=dict)  # cells null tokens / missing codes made missing


def ingest(ref: BatchRef, contract: Contract, lake: Lake, now: datetime, chunk_rows: int = CHUNK_ROWS) -> BatchOutcome:
    """Validate one landing batch; accepted rows to the offline store, the rest to quarantine; ledger it.

    A batch of more than ``chunk_rows`` records is validated and stored chunk by chunk (see ``ingest_in_chunks``).
    """
    with fetched(ref.uri, lake.endpoint_url) as sent:
        return _ingest_sent(ref, contract, lake, now, chunk_rows, sent)


def _ingest_sent(
    ref: BatchRef, contract: Contract, lake: Lake, now: datetime, chunk_rows: int, sent: SentFile
) -> BatchOutcome:
    # a file of no table is refused for its place: its bytes are not ledgered, so they still count under a table
    bid = sent.content_id if ref.table else unplaced_id(sent.content_id, ref.uri)
    seen = lake.read_ledger(bid)
    if seen is not None:
        logger.info("batch %s (%s) already ingested at %s: skipped", bid, ref.name, seen["ingested_at"])
        reason = f"same content as batch {bid} from {seen['uri']}, ingested {seen['ingested_at']} ({seen['status']})"
        retracted = seen.get("retracted")
        if retracted:  # the same bytes are not taken back in: a corrected file is a new batch
            reason += f", retracted {retracted['at']} ({retracted['reason']}): send a corrected file"
        return BatchOutcome(batch_id=bid, uri=ref.uri, table=ref.table, status="duplicate", reason=reason)
    lake.discard(bid)  # what an earlier attempt of this batch staged (a retry after an error)
    data = sent.path
    more = is_large(data, ref, chunk_rows)
    try:
        first = read_batch(data, ref) if not more else None
    except UnusableBatch as exc:
        outcome = BatchOutcome(batch_id=bid, uri=ref.uri, table=ref.table, status="quarantined", reason=str(exc))
        return finish_batch(lake, outcome, data, ref.name, pd.DataFrame(), None, contract, now)
    table = ref.table or ""  # read_chunks has refused batches that belong to no table
    if first is None:
        return ingest_in_chunks(lake, contract, ref, table, bid, data, chunk_rows, now)
    rows = np.arange(len(first.frame), dtype=np.int64)
    validated, made_missing = validate_sourced(first.frame, first.unreadable, rows, contract, table, bid, now)
    result, created = against_stored(lake, contract, table, validated, now)
    return store_batch(lake, contract, ref.uri, ref.name, table, bid, data, result, created, made_missing=made_missing)


def validate_sourced(
    frame: pd.DataFrame,
    unreadable: dict[int, str],
    rows: np.ndarray,
    contract: Contract,
    table: str,
    bid: str,
    now: datetime,
) -> tuple[Validation, dict[str, int]]:
    """A batch as read, under the contract's names (see ``to_internal``), validated; and the cells made missing.

    A header the contract does not expect, or one it expects and the batch lacks, rejects the batch whole.
    """
    try:
        sourced = to_internal(frame, contract, table, batch_id=bid, rows=rows, now=now)
    except UnusableBatch as exc:
        return whole_batch(frame, table, str(exc), unreadable=unreadable), {}
    return validate(sourced.frame, contract, table, now, unreadable), sourced.made_missing


def against_stored(
    lake: Lake, contract: Contract, table: str, result: Validation, now: datetime
) -> tuple[Validation, datetime]:
    """The accepted rows against the rows stored under the same primary key; and the time of acceptance to store.

    The batch's keys are looked up in the table's key index; whole rows are read only from the files holding one
    of them. A restatement stored as the newer version is accepted after the version it replaces, even within one
    run (Feast breaks event-time ties by the time of acceptance).
    """
    if result.batch_error or result.accepted.empty:
        return result, now
    spec = contract.tables[table]
    keys = list(dict.fromkeys(spec.primary_key))
    parts = lake.read_key_parts(table, keys, columns=[stored_keys.HASH])  # 8 bytes a stored row
    if parts is None:
        return result, now
    incoming = stored_keys.incoming_arrow(result.accepted, arrow_types(contract, table))
    incoming = incoming.drop_columns(stored_keys.unversioned(contract, table))  # compared on the row's values

    def rest(name: str) -> pa.Table:  # the rest of an index file holding a sent key
        return lake.read_key_file(table, name, [stored_keys.HASH, stored_keys.ROW_HASH, EVENT_DATE])

    # one stored version per key unless restatements are stored: a row sent again is known by its hashes
    found = stored_keys.look_up(incoming, parts, keys, by_values=spec.restatement != "store", rest=rest)
    if not found.files and not len(found.identical):
        return result, now
    match = stored_keys.StoredMatch(found.identical, {})
    if found.files:
        files = [lake.offline_file(table, day, batch) for day, batch in found.files]
        rest = incoming.filter(pc.invert(pc.is_in(incoming.column(stored_keys.ROW), pa.array(found.identical))))
        compared = stored_keys.match_stored(rest, lake.read_offline_files(files), keys)
        identical = np.sort(np.concatenate([found.identical, compared.duplicates]))
        match = stored_keys.StoredMatch(identical, compared.restated, compared.latest_created)
    if match.restated:
        logger.info("%d restated row(s) of %s (%s)", len(match.restated), table, spec.restatement)
    created = now
    if spec.restatement == "store" and match.latest_created is not None:
        created = max(now, match.latest_created + timedelta(microseconds=1))
    return stored_keys.settle(result, match, keys, spec.restatement), created


def store_batch(
    lake: Lake,
    contract: Contract,
    uri: str,
    name: str,
    table: str,
    bid: str,
    data: bytes | Path,
    result: Validation,
    created: datetime,
    replay_of: str | None = None,
    ledgered: dict[str, Any] | None = None,
    made_missing: dict[str, int] | None = None,
) -> BatchOutcome:
    """Store a validated batch's accepted rows (accepted at ``created``); quarantine the rest; ledger it."""
    event_time = contract.tables[table].event_time
    status: Status = "quarantined" if result.batch_error else ("partial" if result.rows_quarantined else "accepted")
    if status == "partial" and not result.rows_accepted and not result.duplicates:
        status = "quarantined"  # a replay whose rows are all still bad
    if status == "accepted" and result.accepted.empty and result.duplicates:
        status = "duplicate"  # every row is stored already
    first_event = None
    if not result.batch_error and not result.accepted.empty:
        types = arrow_types(contract, table)
        staged = lake.staging(bid)  # nothing of the batch is visible before its ledger record (see finish_batch)
        staged.write_offline(table, result.accepted, event_time, bid, created, types)
        keys = list(dict.fromkeys(contract.tables[table].primary_key))
        unversioned = stored_keys.unversioned(contract, table)
        staged.write_keys(table, bid, stored_keys.key_index(result.accepted, keys, event_time, types, unversioned))
        first_event = result.accepted[event_time].min().to_pydatetime()
        aggregates = contract.aggregates_of(table)
        if aggregates:
            _write_history(lake, contract, table, result.accepted, bid, created)
    outcome = BatchOutcome(
        batch_id=bid,
        uri=uri,
        table=table,
        status=status,
        rows_in=result.rows_in,
        rows_accepted=result.rows_accepted,
        rows_quarantined=result.rows_quarantined,
        rows_duplicate=result.duplicates,
        reason=result.batch_error,
        failing=result.failing,
        first_event=first_event,
        replay_of=replay_of,
        made_missing=made_missing or {},
    )
    return finish_batch(lake, outcome, data, name, result.rejected, result.gx_result, contract, created, ledgered)


def _write_history(
    lake: Lake,
    contract: Contract,
    table: str,
    accepted: pd.DataFrame,
    bid: str,
    now: datetime,
    part: int | None = None,
) -> None:
    """Aggregates over each entity's recent rows (earlier batches included) for the rows of this batch.

    ``accepted`` holds every row of the batch for its entities; a batch stored in chunks passes its entities
    slice by slice (see :func:`_write_history_in_slices`), each slice a ``part``.
    """
    key, event_time = contract.entity.join_key, contract.tables[table].event_time
    columns = sorted({a.column for a in contract.aggregates_of(table)})
    entities = accepted[key].dropna().astype("int64" if contract.key_type == "int" else "string").unique().tolist()
    read = list(dict.fromkeys([key, event_time, *contract.tables[table].primary_key, *columns]))
    earlier = lake.read_offline(table, columns=[*read, CREATED], filters=[(key, "in", entities)])
    if not earlier.empty and contract.tables[table].restatement == "store":  # each row's latest version only
        earlier = earlier.sort_values(CREATED, kind="stable")
        earlier = earlier.drop_duplicates(contract.tables[table].primary_key, keep="last")
    earlier = earlier[~earlier[event_time].isin(accepted[event_time])] if not earlier.empty else earlier
    earlier = earlier[[key, event_time, *columns]]
    sent = accepted[[key, event_time, *columns]]
    history = pd.concat([earlier, sent], ignore_index=True) if not earlier.empty else sent.reset_index(drop=True)
    history[event_time] = pd.to_datetime(history[event_time], utc=True)
    aggregated = compute_aggregates(history, contract.aggregates_of(table), key, event_time)
    mine = aggregated.iloc[len(earlier) :]
    types = {
        key: key_type(contract),
        event_time: TIMESTAMP,
        **{a.name: pa.float64() for a in contract.aggregates_of(table)},
    }
    lake.staging(bid).write_offline(
        history_table(table), mine.reset_index(drop=True), event_time, bid, now, types, part
    )


def finish_batch(
    lake: Lake,
    outcome: BatchOutcome,
    data: bytes | Path,
    name: str,
    rejected: pd.DataFrame,
    validation: dict[str, Any] | None,
    contract: Contract,
    now: datetime,
    ledgered: dict[str, Any] | None = None,
) -> BatchOutcome:
    """Stage the quarantine of a batch with rejected rows, then commit the batch (see ``Lake.commit``).

    ``ledgered``: more the ledger record keeps (a replay's accepted rows).
    """
    if outcome.status in ("quarantined", "partial"):
        reason = {
            **outcome.model_dump(mode="json"),
            "source_name": name,
            "contract": contract.name,
            "contract_version": contract.version,
            "contract_fingerprint": contract.fingerprint,
            "quarantined_at": now.isoformat(),
            "replays": [],
        }
        lake.staging(outcome.batch_id).write_quarantine(outcome.batch_id, data, name, rejected, reason, validation)
        outcome.quarantine_uri = lake.quarantine(outcome.batch_id)
    failpoints.reach("batch-staged")
    lake.commit(
        {
            **outcome.model_dump(mode="json"),
            "ingested_at": now.isoformat(),
            "contract_fingerprint": contract.fingerprint,
            **(ledgered or {}),
        }
    )
    logger.info(
        "batch %s %s: %s (%d in, %d accepted, %d quarantined, %d duplicate)%s",
        outcome.batch_id,
        name,
        outcome.status,
        outcome.rows_in,
        outcome.rows_accepted,
        outcome.rows_quarantined,
        outcome.rows_duplicate,
        f": {outcome.reason}" if outcome.reason else "",
    )
    return outcome


@dataclass
class _Tally:
    """What the chunks of one batch add up to."""

    rows_in: int
    accepted: int = 0
    duplicates: int = 0
    failing: dict[str, int] = field(default_factory=dict)
    first_event: datetime | None = None
    documents: list[dict[str, Any]] = field(default_factory=list)
    made_missing: dict[str, int] = field(default_factory=dict)  # added up by the chunks' to_internal

    def add(self, result: Validation, event_time: str) -> None:
        self.accepted += len(result.accepted)
        self.duplicates += result.duplicates
        for name, count in result.failing.items():
            self.failing[name] = self.failing.get(name, 0) + count
        if result.gx_result is not None:  # bounded now: a batch's documents stay a few per chunk
            self.documents.append(bounded(result.gx_result) or {})
        if not result.accepted.empty:
            first = result.accepted[event_time].min().to_pydatetime()
            self.first_event = first if self.first_event is None else min(self.first_event, first)

    @property
    def quarantined(self) -> int:
        return self.rows_in - self.accepted - self.duplicates


def ingest_in_chunks(
    lake: Lake,
    contract: Contract,
    ref: BatchRef,
    table: str,
    bid: str,
    data: Path,
    chunk_rows: int,
    now: datetime,
    replay: Replay | None = None,
) -> BatchOutcome:
    """A batch of more than ``chunk_rows`` records, validated and stored chunk by chunk: memory follows the chunk.

    A first pass reads only the primary keys (8 bytes per key column and row), so a key repeated across chunks
    breaks the uniqueness expectation as it would in one piece. Each chunk is then validated, checked against the
    stored rows and staged as parts (``<batch_id>.<k>.parquet``); its rejected rows are appended to one
    ``rejected.parquet`` (cells as text). The bad-row share is judged on the whole batch at the end: over the
    contract's limit, the staged parts are dropped and the batch is quarantined whole (its rows are in its
    original bytes; ``rejected.parquet`` holds the bad ones with their reasons). Nothing is visible before the
    ledger record commits the batch.

    A ``replay`` of a batch quarantined whole leaves out the rows earlier replays accepted, and its ledger record
    commits the rows it accepts (``accepted_ranges``).
    """
    spec = contract.tables[table]
    done = done_rows(replay.record) if replay else np.array([], dtype=np.int64)
    hashes: list[np.ndarray] = []
    rows_in, size = 0, 0  # rows to judge; rows of the batch (a replay leaves some out)
    name, uri, replay_of = (replay.name, replay.uri, replay.quarantined_id) if replay else (ref.name, ref.uri, None)
    primary = key_headers(contract, table)  # None: a generated key, unique by construction
    try:
        # else validation says what is missing
        readable = primary is not None and all(key in batch_columns(data, ref) for key in primary)
        for chunk in _chunks_left(data, ref, chunk_rows, done, primary if readable else None):
            if readable:
                codes, whole = key_codes(key_frame(chunk.frame, contract, table, now), contract, table)
                hashes.append(key_hashes(codes[whole]))
            rows_in += len(chunk.frame)
            size = max(size, int(chunk.rows.max(initial=-1)) + 1)
    except UnusableBatch as exc:
        outcome = BatchOutcome(
            batch_id=bid, uri=uri, table=table, status="quarantined", reason=str(exc), replay_of=replay_of
        )
        return finish_batch(lake, outcome, data, name, pd.DataFrame(), None, contract, now)
    if replay and not rows_in:
        reason = f"every row of batch {replay.quarantined_id} was accepted by an earlier replay: nothing to replay"
        return nothing_to_store(lake, replay, table, reason, now)

    def keys_again() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # read only when two keys' hashes are equal
        return _whole_keys(_chunks_left(data, ref, chunk_rows, done, primary), contract, table, now)

    repeated = repeated_keys(hashes, size, keys_again)
    del hashes
    _give_back()
    tally, error = _Tally(rows_in), None
    entities: list[np.ndarray] = []  # of the accepted rows, for the history aggregates
    accepted_rows: list[np.ndarray] = []  # their rows in the batch, for a replay's record
    staged, types = lake.staging(bid), arrow_types(contract, table)
    keys = KeyState()  # generated keys count identical rows across the chunks, as in one piece

    def internal(chunk: Chunk) -> Chunk:  # every row of the chunk, those replays accepted included
        sourced = to_internal(chunk.frame, contract, table, batch_id=bid, rows=chunk.rows, now=now, keys=keys)
        for name, count in sourced.made_missing.items():
            tally.made_missing[name] = tally.made_missing.get(name, 0) + count
        return Chunk(sourced.frame, chunk.unreadable, chunk.rows)

    with work_dir("batch") as tmp:
        rejected = _RejectedRows(Path(tmp) / "rejected.parquet")
        try:
            for part, chunk in enumerate(_chunks_left(data, ref, chunk_rows, done, internal=internal)):
                result = validate(
                    chunk.frame, contract, table, now, chunk.unreadable, repeated[chunk.rows], judge_share=False
                )
                if result.batch_error:  # the columns, or GX disagreeing with the row checks: the whole batch
                    error = result.batch_error
                    tally.documents.append(result.gx_result or {})
                    break
                result, created = against_stored(lake, contract, table, result, now)
                rejected.append(result.rejected, chunk.rows)
                if replay is not None and result.accepted_rows is not None:
                    accepted_rows.append(chunk.rows[result.accepted_rows])
                if not result.accepted.empty:
                    staged.write_offline(table, result.accepted, spec.event_time, bid, created, types, part)
                    index = stored_keys.key_index(
                        result.accepted,
                        list(dict.fromkeys(spec.primary_key)),
                        spec.event_time,
                        types,
                        stored_keys.unversioned(contract, table),
                    )
                    staged.write_keys(table, f"{bid}.{part}", index)
                    if contract.aggregates_of(table):
                        entities.append(result.accepted[contract.entity.join_key].dropna().unique())
                tally.add(result, spec.event_time)
                del result, chunk
                _give_back()
        except UnusableBatch as exc:  # headers the contract does not expect (see to_internal): the whole batch
            error = str(exc)
        rejected.close()
        share = tally.quarantined / rows_in if rows_in else 0.0
        if error is None and share > contract.max_bad_row_share:
            top = ", ".join(f"{k} ({v})" for k, v in sorted(tally.failing.items(), key=lambda kv: -kv[1])[:3])
            error = f"{share:.0%} of rows are bad, over the contract's limit of {contract.max_bad_row_share:.0%}: {top}"
        if error is not None:
            lake.discard(bid)  # the staged parts: nothing of the batch is stored
        elif contract.aggregates_of(table) and entities:
            _write_history_in_slices(lake, contract, table, bid, now, np.unique(np.concatenate(entities)), chunk_rows)
        status: Status = "quarantined" if error else ("partial" if tally.quarantined else "accepted")
        if status == "accepted" and not tally.accepted and tally.duplicates:
            status = "duplicate"
        outcome = BatchOutcome(
            batch_id=bid,
            uri=uri,
            table=table,
            status=status,
            replay_of=replay_of,
            rows_in=rows_in,
            rows_accepted=0 if error else tally.accepted,
            rows_quarantined=rows_in - tally.duplicates if error else tally.quarantined,
            rows_duplicate=tally.duplicates,
            reason=error,
            failing=dict(sorted(tally.failing.items(), key=lambda kv: -kv[1])),
            first_event=None if error else tally.first_event,
            made_missing=tally.made_missing,
        )
        kept = rejected.path if rejected.rows else pd.DataFrame()
        ledgered = None
        if replay is not None:
            ranges = as_ranges(np.concatenate(accepted_rows)) if accepted_rows and not error else []
            replay.record["accepted_ranges"] = as_ranges(
                np.concatenate([done, *(np.arange(a, b, dtype=np.int64) for a, b in ranges)])
            )
            ledgered = {"accepted_ranges": ranges}  # committed with the rows (see replay)
        return finish_batch(lake, outcome, data, name, kept, merged(tally.documents), contract, now, ledgered)


def _give_back() -> None:
    """Return what a chunk freed to the system before the next one.

    Arrow's memory pool and the C heap keep freed pages for reuse; over a batch of many chunks they would hold
    more than one chunk's worth.
    """
    gc.collect()  # pandas frames and groupbys hold reference cycles: freed only by the collector
    pa.default_memory_pool().release_unused()
    psutil.heap_trim()


def _whole_keys(
    chunks: Iterable[Chunk], contract: Contract, table: str, now: datetime
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each chunk's rows with a whole primary key: their positions in the batch and their key codes."""
    for chunk in chunks:
        codes, whole = key_codes(key_frame(chunk.frame, contract, table, now), contract, table)
        yield chunk.rows[whole], codes[whole]


def _chunks_left(
    data: Path,
    ref: BatchRef,
    chunk_rows: int,
    done: np.ndarray,
    columns: list[str] | None = None,
    internal: Callable[[Chunk], Chunk] | None = None,
) -> Iterator[Chunk]:
    """The chunks of a batch (only ``columns``, when given) without the rows in ``done`` (accepted by replays).

    ``internal`` turns each whole chunk into the contract's columns before rows are left out, so what depends on
    every row of the batch (a generated key counts identical rows) is what it was when the batch was first read.
    """
    for chunk in read_chunks(data, ref, chunk_rows, columns):
        if internal is not None:
            chunk = internal(chunk)
        if not len(done):
            yield chunk
            continue
        kept = np.flatnonzero(~np.isin(chunk.rows, done))
        if len(kept) == len(chunk.rows):
            yield chunk
        elif len(kept):
            renumber = {int(position): i for i, position in enumerate(kept)}
            unreadable = {renumber[p]: why for p, why in chunk.unreadable.items() if p in renumber}
            yield Chunk(chunk.frame.iloc[kept].reset_index(drop=True), unreadable, chunk.rows[kept])


def _write_history_in_slices(
    lake: Lake, contract: Contract, table: str, bid: str, now: datetime, entities: np.ndarray, chunk_rows: int
) -> None:
    """The history aggregates of a batch stored in chunks, computed once its chunks are staged.

    An entity's rows may lie in several chunks, in any order: its aggregates are computed over all of them at
    once, as for a batch in one piece. Entities are taken in slices of about ``chunk_rows`` staged rows.
    """
    key, staged = contract.entity.join_key, lake.staged_view(bid)
    rows = sum(f.num_rows for f in staged.read_offline_files(staged.offline_files(table), columns=[key]))
    per_slice = max(1, int(len(entities) * chunk_rows / max(rows, 1)))
    for part, start in enumerate(range(0, len(entities), per_slice)):
        some = entities[start : start + per_slice].tolist()
        accepted = staged.read_offline(table, filters=[(key, "in", some)])
        created = pd.Timestamp(accepted.pop(CREATED).max()).to_pydatetime() if not accepted.empty else now
        _write_history(lake, contract, table, accepted, bid, created, part)


class _RejectedRows:
    """The rejected rows of a batch's chunks, appended to one parquet file; every cell as text, as it was read."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, 0
        self._writer: pq.ParquetWriter | None = None

    def append(self, rejected: pd.DataFrame, rows: np.ndarray) -> None:
        """Add a chunk's rejected rows (``_source_row`` is their row in the chunk; ``rows`` maps it to the batch)."""
        if rejected.empty:
            return
        cells = [c for c in rejected.columns if c not in ("_source_row", "_reasons")]
        columns = {c: pa.array(rejected[c].astype("string"), pa.string(), from_pandas=True) for c in cells}
        columns["_source_row"] = pa.array(rows[rejected["_source_row"].to_numpy(dtype=np.int64)], pa.int64())
        columns["_reasons"] = pa.array(rejected["_reasons"].astype("string"), pa.string(), from_pandas=True)
        table = pa.table(columns)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclass(frozen=True)
class Replay:
    quarantined_id: str
    rid: str  # the replay's own batch id
    record: dict[str, Any]  # the quarantine record (reason.json), updated by the replay

    @property
    def uri(self) -> str:
        return str(self.record["uri"])

    @property
    def name(self) -> str:
        return str(self.record.get("source_name", self.quarantined_id))


def as_ranges(rows: np.ndarray) -> list[list[int]]:
    """Row numbers as sorted ``[start, end)`` runs: the rows a replay of millions of rows accepted, in a few numbers."""
    rows = np.unique(rows)
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, ends = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, len(rows) - 1]] + 1
    return [[int(a), int(b)] for a, b in zip(starts, ends, strict=True)]


def done_rows(record: dict[str, Any]) -> np.ndarray:
    """The rows of a quarantined batch that replays have accepted (see :func:`replay`)."""
    parts = [np.asarray(record.get("accepted_rows", []), dtype=np.int64)]
    parts += [np.arange(a, b, dtype=np.int64) for a, b in record.get("accepted_ranges", [])]
    return np.unique(np.concatenate(parts))


def earliest_new_events(outcomes: list[BatchOutcome], contract: Contract) -> dict[str, datetime]:
    """Per offline table that received rows (history tables included), its earliest new event time."""
    since: dict[str, datetime] = {}
    for outcome in outcomes:
        if outcome.first_event is None or outcome.table is None:
            continue
        tables = [outcome.table] + ([history_table(outcome.table)] if contract.aggregates_of(outcome.table) else [])
        for table in tables:
            since[table] = min(since.get(table, outcome.first_event), outcome.first_event)
    return since


def earliest_published(lake: Lake, contract: Contract, batch_ids: list[str]) -> dict[str, datetime]:
    """:func:`earliest_new_events` of batches committed by a crashed run and published since (``Lake.sweep``)."""
    records = (lake.read_ledger(b) for b in batch_ids)
    return earliest_new_events([BatchOutcome.model_validate(r) for r in records if r is not None], contract)


def nothing_to_store(lake: Lake, replay: Replay, table: str | None, reason: str, now: datetime) -> BatchOutcome:
    """A replay whose rows are all stored already: it says why, is ledgered, and stores nothing."""
    outcome = BatchOutcome(
        batch_id=replay.rid,
        uri=replay.uri,
        table=table,
        status="duplicate",
        reason=reason,
        replay_of=replay.quarantined_id,
    )
    lake.write_ledger({**outcome.model_dump(mode="json"), "ingested_at": now.isoformat()})
    logger.info("replay %s of %s: %s", replay.rid, replay.quarantined_id, reason)
    return outcome
