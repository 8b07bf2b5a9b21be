"""Keys across the whole data set: a batch's rows against the rows already stored under the same primary key.

A row whose primary key is stored already is a DUPLICATE when every value equals the stored row's latest version:
it is counted, not stored again. It is a RESTATEMENT when a value differs, and the table's ``restatement`` in the
contract says what happens to it: ``quarantine`` (the default) rejects the row with the key and the columns that
differ; ``store`` stores it as the newer version of the row, accepted later (a later ``created_at``) than the
version it replaces. Feast's point-in-time join then gives, for an entity at time T, the row with the latest
event time at or before T and, among rows of that event time, the latest ``created_at``: a restatement of the same
event time replaces the older version for every T, one with a later event time replaces it from that time on.

The check joins the batch's keys with the table's key index (``keys/<table>/<batch_id>.parquet`` in the lake: the
primary key and event day of every stored row, one small file per batch), reads whole rows only from the files
holding one of its keys, and compares them; joins run in DuckDB over Arrow tables, never whole tables in pandas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.contract import Contract
from closedloop.lake import CREATED, EVENT_DATE
from tasks.ingest.validation import Validation

ROW = "_row"
HASH = "_key_hash"  # a key index column: see key_hashes
ROW_HASH = "_row_hash"  # a key index column: see row_hashes


@dataclass(frozen=True)
class StoredMatch:
    """Which accepted rows of a batch are stored already (by position among the accepted rows)."""

    duplicates: np.ndarray  # stored with the same values
    restated: dict[int, str]  # stored with other values: what differs
    latest_created: datetime | None = None  # the latest acceptance time of the stored versions restated


def incoming_arrow(accepted: pd.DataFrame, types: dict[str, pa.DataType]) -> pa.Table:
    """A batch's accepted rows in their stored types, with their position (``_row``)."""
    schema = pa.schema([pa.field(str(c), types[str(c)]) for c in accepted.columns])
    table = pa.Table.from_pandas(accepted, schema=schema, preserve_index=False)
    return table.append_column(ROW, pa.array(np.arange(len(accepted), dtype=np.int64)))


def key_index(
    accepted: pd.DataFrame,
    keys: list[str],
    event_time: str,
    types: dict[str, pa.DataType],
    unversioned: Sequence[str] = (),
) -> pa.Table:
    """The key index of a batch's stored rows (see ``Lake.write_keys``), sorted by ``_key_hash``.

    Each row's primary key, event day and the 64-bit hash of its key (:func:`key_hashes`), by which a batch's
    keys are looked up without decoding the stored keys, and of its values but ``unversioned`` (see
    :func:`unversioned`).
    """
    columns = {key: pa.array(accepted[key], types[key], from_pandas=True) for key in keys}
    times = pa.array(accepted[event_time].astype("datetime64[us, UTC]"), from_pandas=True)
    days = pc.cast(pc.cast(times, pa.date32()), pa.string())  # YYYY-MM-DD of the UTC day, in Arrow's kernels
    index = pa.table({**columns, EVENT_DATE: days})
    hashes = key_hashes(index, keys)
    values = [str(c) for c in accepted.columns if c not in keys and c != CREATED and c not in unversioned]
    rows = row_hashes(pa.table({c: pa.array(accepted[c], types[c], from_pandas=True) for c in values}), values)
    order = np.argsort(hashes, kind="stable")
    index = index.take(pa.array(order)).append_column(HASH, pa.array(hashes[order], pa.uint64()))
    return index.append_column(ROW_HASH, pa.array(rows[order], pa.uint64()))


def unversioned(contract: Contract, table: str) -> list[str]:
    """Columns a row sent again may differ in and still be the same row: the ingest time of an ``as_of: ingest`` table.

    Such a table's event time is when closedloop first saw the row, not a value of the row; a file sent again
    later holds the same rows, which are duplicates, not restatements.
    """
    spec = contract.tables[table]
    return [spec.event_time] if spec.as_of == "ingest" and spec.event_time not in spec.primary_key else []


def row_hashes(table: pa.Table, columns: list[str]) -> np.ndarray:
    """A 64-bit hash of each row's values in ``columns`` (taken in name order), a missing value its own code.

    Two rows with equal hashes are taken as equal (a batch row sent again); rows whose hashes differ are
    compared in full (:func:`match_stored`), so a hash never makes a restatement out of a duplicate.
    """
    mixed = np.zeros(table.num_rows, dtype=np.uint64)
    for name in sorted(columns):
        column = table.column(name)
        missing = column.is_null().to_numpy(zero_copy_only=False)
        mixed = _splitmix((mixed ^ _codes(column)) * _GOLDEN) ^ missing.astype(np.uint64)
    return mixed


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """64-bit codes of a column's values: integers, times and booleans by value, floats by bits, text hashed."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        column, kind = column.cast(pa.timestamp("us", tz=kind.tz)), pa.int64()
    if pa.types.is_boolean(kind):
        column, kind = column.cast(pa.int64()), pa.int64()
    if pa.types.is_timestamp(column.type) or pa.types.is_integer(kind):
        return np.asarray(pc.fill_null(column.cast(pa.int64()), 0).to_numpy()).view(np.uint64)
    if pa.types.is_floating(kind):
        return np.asarray(pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy()).view(np.uint64)
    text = pc.fill_null(column.cast(pa.string()), "").to_numpy(zero_copy_only=False)
    return np.asarray(pd.util.hash_array(text.astype(object)), dtype=np.uint64)


def key_hashes(table: pa.Table, keys: list[str]) -> np.ndarray:
    """A 64-bit hash of each row's primary key: integers and times by value, text by pandas' fixed-key SipHash.

    Equal keys have equal hashes; unequal keys rarely do, and a key found by its hash is compared in full
    (:func:`match_stored`) before anything is decided about it.
    """
    mixed = np.zeros(table.num_rows, dtype=np.uint64)
    for key in keys:
        column = table.column(key)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("us", tz=column.type.tz))
        if pa.types.is_timestamp(column.type) or pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            codes = pc.fill_null(column.cast(pa.int64()), 0).to_numpy().view(np.uint64)
        else:
            text = pc.fill_null(column.cast(pa.string()), "").to_numpy(zero_copy_only=False)
            codes = pd.util.hash_array(text.astype(object))
        mixed = _splitmix((mixed ^ codes) * _GOLDEN)
    return mixed


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return np.asarray(x ^ (x >> np.uint64(31)), dtype=np.uint64)


@dataclass(frozen=True)
class Lookup:
    """Where a batch's keys are stored: rows found identical by their hashes, and the files to read for the rest."""

    identical: np.ndarray  # positions (``_row``) of incoming rows stored already with the same values
    files: list[tuple[str, str]]  # (event day, file name) of the stored files holding the other sent keys


def look_up(
    incoming: pa.Table,
    parts: list[tuple[str, pa.Table]],
    keys: list[str],
    by_values: bool,
    rest: Callable[[str], pa.Table] | None = None,
) -> Lookup:
    """The batch's keys in the table's key index (see :func:`files_with_keys`).

    ``by_values`` (a table that stores one version per key): a sent row whose key and value hashes equal a
    stored row's is identical to it, and no file is read for it; a re-sent file is settled from the index alone.
    ``rest``: where ``parts`` hold only the key hashes, the other columns of an index file by its name, read only
    for the files holding a sent key.
    """
    if incoming.num_rows == 0:
        return Lookup(np.array([], dtype=np.int64), [])
    sent_keys = key_hashes(incoming, keys)
    values = [c for c in incoming.column_names if c not in keys and c != ROW]
    sent_rows = row_hashes(incoming, values) if by_values else None
    positions = incoming.column(ROW).to_numpy()
    identical: list[np.ndarray] = []
    found: set[tuple[str, str]] = set()
    for name, part in parts:
        if part.num_rows == 0:
            continue
        stored = part.column(HASH).to_numpy() if HASH in part.column_names else None
        if stored is None:  # an index file from before the hashes: hashed here, never settled by values
            hit, sent = np.flatnonzero(np.isin(key_hashes(part, keys), sent_keys)), np.array([], dtype=np.int64)
        else:
            at = np.searchsorted(stored, sent_keys)
            sent = np.flatnonzero(at < len(stored))
            sent = sent[stored[at[sent]] == sent_keys[sent]]  # incoming rows whose key hash is stored here
            hit = at[sent]
            if len(hit) and rest is not None and EVENT_DATE not in part.column_names:
                part = rest(name)
            if sent_rows is not None and ROW_HASH in part.column_names:
                same = part.column(ROW_HASH).to_numpy()[hit] == sent_rows[sent]
                identical.append(positions[sent[same]])
                hit = hit[~same]
        if len(hit):
            days = part.column(EVENT_DATE).take(pa.array(hit)).cast(pa.string())
            found.update((str(day), name) for day in pc.unique(days).to_pylist())
    rows = np.unique(np.concatenate(identical)) if identical else np.array([], dtype=np.int64)
    return Lookup(rows.astype(np.int64), sorted(found))


def files_with_keys(incoming: pa.Table, parts: list[tuple[str, pa.Table]], keys: list[str]) -> list[tuple[str, str]]:
    """The stored files (event day, file name) holding a key of the incoming rows, from the table's key index.

    ``parts``: the key index files (see ``Lake.read_key_parts``). Each holds its ``_key_hash`` sorted, so the
    batch's hashes are looked up in it by binary search; index files written before the hash existed are hashed
    here from their key columns. A hash found may name a file for a key it does not hold: the rows are compared
    in full afterwards, so that costs a read, never a wrong verdict.
    """
    return look_up(incoming, parts, keys, by_values=False).files


def match_stored(incoming: pa.Table, stored: list[pa.Table], keys: list[str]) -> StoredMatch:
    """Compare each incoming row (see :func:`incoming_arrow`) with the latest stored version of its key."""
    if not stored:
        return StoredMatch(np.array([], dtype=np.int64), {})
    table = pa.concat_tables(stored, promote_options="permissive")
    columns = [c for c in incoming.column_names if c not in keys and c != ROW]
    for column in columns:  # a column the stored files lack (an older contract): missing there
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, incoming.schema.field(column).type))
    join = " AND ".join(f"l.{_q(k)} = i.{_q(k)}" for k in keys)
    hit = " AND ".join(f"s.{_q(k)} = i.{_q(k)}" for k in keys)
    order = f"{_q(CREATED)} DESC" if CREATED in table.column_names else "1"
    differs = ", ".join(f"i.{_q(c)} IS DISTINCT FROM l.{_q(c)} AS {_q('differs:' + c)}" for c in columns)
    was = ", ".join(f"l.{_q(c)} AS {_q('stored:' + c)}" for c in columns)
    created = f"l.{_q(CREATED)}" if CREATED in table.column_names else "NULL::TIMESTAMPTZ"
    found = _query(
        f"SELECT i.{ROW}, {created} AS _created, {differs}, {was} FROM incoming i JOIN ("
        f"SELECT * FROM (SELECT s.* FROM stored s SEMI JOIN incoming i ON {hit}) "  # the versions of sent keys only
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(_q(k) for k in keys)} "
        f"ORDER BY {order}) = 1) l ON {join} ORDER BY i.{ROW}",
        stored=table,
        incoming=incoming,
    ).to_pandas()
    if found.empty:
        return StoredMatch(np.array([], dtype=np.int64), {})
    rows = found[ROW].to_numpy(dtype=np.int64)
    changed = found[[f"differs:{c}" for c in columns]].to_numpy(dtype=bool)
    restated_at = np.flatnonzero(changed.any(axis=1))
    at = pd.Index(incoming.column(ROW).to_numpy()).get_indexer(rows[restated_at])  # ``_row`` need not be position
    restated = _reasons(found.iloc[restated_at], incoming.take(pa.array(at)).to_pandas(), keys, columns)
    latest = found["_created"].iloc[restated_at].max() if len(restated_at) else None
    return StoredMatch(
        duplicates=rows[~changed.any(axis=1)],
        restated=restated,
        latest_created=None if latest is None or pd.isna(latest) else pd.Timestamp(latest).to_pydatetime(),
    )


def _reasons(found: pd.DataFrame, sent: pd.DataFrame, keys: list[str], columns: list[str]) -> dict[int, str]:
    """Each restated row's reason: its key, and each column that differs with the stored and the sent value."""
    reasons: dict[int, str] = {}
    for stored, row in zip(found.to_dict("records"), sent.to_dict("records"), strict=True):
        diffs = [
            f"{c} (stored {_show(stored['stored:' + c])}, sent {_show(row[c])})"
            for c in columns
            if stored[f"differs:{c}"]
        ]
        key = ", ".join(f"{k}={_show(row[k])}" for k in keys)
        reasons[int(stored[ROW])] = f"restatement of stored key {key}: {'; '.join(diffs)}"
    return reasons


def settle(
    result: Validation, match: StoredMatch, keys: list[str], restatement: Literal["quarantine", "store"]
) -> Validation:
    """The validation with its duplicates counted apart, and its restatements rejected when the table says so.

    A rejected restatement keeps its reason; its ``_source_row`` is its row in the batch.
    """
    drop = np.zeros(len(result.accepted), dtype=bool)
    drop[match.duplicates] = True
    rejected_at = np.array(sorted(match.restated) if restatement == "quarantine" else [], dtype=np.int64)
    drop[rejected_at] = True
    source = result.accepted_rows if result.accepted_rows is not None else np.arange(len(result.accepted))
    rejected, failing = result.rejected, result.failing
    if len(rejected_at):
        restated = result.accepted.iloc[rejected_at].assign(
            _source_row=source[rejected_at], _reasons=[match.restated[int(p)] for p in rejected_at]
        )
        parts = [rejected, restated] if not rejected.empty else [restated]
        rejected = pd.concat(parts, ignore_index=True).sort_values("_source_row", kind="stable")
        rejected = rejected.reset_index(drop=True)
        failing = {**failing, f"restated_key({','.join(keys)})": len(rejected_at)}
    kept = ~drop
    return dataclasses.replace(
        result,
        accepted=result.accepted.loc[kept].reset_index(drop=True),
        rejected=rejected,
        failing=failing,
        accepted_rows=source[kept],
        duplicates=result.duplicates + len(match.duplicates),
    )


def _query(sql: str, **tables: pa.Table) -> pa.Table:
    import duckdb

    con = duckdb.connect()  # private and in memory: reads only the Arrow tables it is given
    try:
        con.execute("SET TimeZone = 'UTC'")
        for name, table in tables.items():
            con.register(name, table)
        return con.execute(sql).to_arrow_table()
    finally:
        con.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _show(value: Any) -> str:
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value):
        return "missing"
    if isinstance(value, pd.Timestamp | datetime):
        return str(pd.Timestamp(value).isoformat())
    if isinstance(value, np.generic):
        value = value.item()
    return str(repr(value))
