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
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from closedloop.lake import BATCH, CREATED, EVENT_DATE
from tasks.ingest.validation import Validation

ROW = "_row"


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


def key_index(accepted: pd.DataFrame, keys: list[str], event_time: str, types: dict[str, pa.DataType]) -> pa.Table:
    """The key index of a batch's stored rows: each row's primary key and event day (see ``Lake.write_keys``)."""
    columns = {key: pa.array(accepted[key], types[key], from_pandas=True) for key in keys}
    days = accepted[event_time].astype("datetime64[us, UTC]").dt.strftime("%Y-%m-%d")
    return pa.table({**columns, EVENT_DATE: pa.array(days.to_numpy(dtype=object), pa.string())})


def files_with_keys(incoming: pa.Table, index: pa.Table, keys: list[str]) -> list[tuple[str, str]]:
    """The stored files (event day, batch) holding a key of the incoming rows, from the table's key index."""
    if incoming.num_rows == 0 or index.num_rows == 0:
        return []
    join = " AND ".join(f"s.{_q(k)} = i.{_q(k)}" for k in keys)
    rows = _query(
        f"SELECT DISTINCT s.{EVENT_DATE}, s.{BATCH} FROM stored s JOIN incoming i ON {join} ORDER BY 1, 2",
        stored=index,
        incoming=incoming.select(keys),
    )
    return list(zip(rows.column(0).to_pylist(), rows.column(1).to_pylist(), strict=True))


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
    order = f"{_q(CREATED)} DESC" if CREATED in table.column_names else "1"
    differs = ", ".join(f"i.{_q(c)} IS DISTINCT FROM l.{_q(c)} AS {_q('differs:' + c)}" for c in columns)
    was = ", ".join(f"l.{_q(c)} AS {_q('stored:' + c)}" for c in columns)
    created = f"l.{_q(CREATED)}" if CREATED in table.column_names else "NULL::TIMESTAMPTZ"
    found = _query(
        f"SELECT i.{ROW}, {created} AS _created, {differs}, {was} FROM incoming i JOIN ("
        f"SELECT * FROM stored QUALIFY row_number() OVER (PARTITION BY {', '.join(_q(k) for k in keys)} "
        f"ORDER BY {order}) = 1) l ON {join} ORDER BY i.{ROW}",
        stored=table,
        incoming=incoming,
    ).to_pandas()
    if found.empty:
        return StoredMatch(np.array([], dtype=np.int64), {})
    rows = found[ROW].to_numpy(dtype=np.int64)
    changed = found[[f"differs:{c}" for c in columns]].to_numpy(dtype=bool)
    restated_at = np.flatnonzero(changed.any(axis=1))
    restated = _reasons(found.iloc[restated_at], incoming.take(pa.array(rows[restated_at])).to_pandas(), keys, columns)
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
