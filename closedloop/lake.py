"""The data lake of one dataset: ingestion ledger, offline feature tables and quarantine.

```
<lake>/<dataset>/
├── landing/<table>/<file>                        batches as they arrive (never modified)
├── ledger/<batch_id>.json                         one record per batch seen: counts, status, reasons
├── offline/<table>/event_date=<day>/<batch_id>.parquet    accepted rows (UTC microsecond timestamps)
├── keys/<table>/<batch_id>.parquet                the primary key and event day of each of a batch's rows
├── quarantine/<batch_id>/
│   ├── original.<ext>                             the batch's bytes, untouched
│   ├── rejected.parquet                           rejected rows as read, with _source_row and _reasons
│   ├── reason.json                                why, counts, top failing expectations, replay history
│   └── validation.json                            the Great Expectations result document
├── staging/<batch_id>/...                         a batch being written: the same layout, not yet visible
└── archive/<batch_id>/{offline,keys}/...          a retracted batch's rows and key index, moved out of the store
```
Every write is a whole object (atomic on disk and on S3). A batch is atomic too: its offline rows, key index
and quarantine are written under ``staging/<batch_id>/`` (see :meth:`Lake.staging`), where neither Feast nor
training looks; its ledger record is the commit (:meth:`Lake.commit`); then its objects are moved into place.
:meth:`Lake.sweep`, run under the lake's lock before each ingest, finishes what a crashed run left: a staged
batch with a ledger record is moved into place, one without is removed (its landing file is still there, and
is ingested again as a new batch). Nothing here deletes a committed row: a retracted batch's objects are moved
to ``archive/`` (see :meth:`Lake.retract`).
"""

from __future__ import annotations

import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop import failpoints, storage
from closedloop.contract import ColumnType, Contract
from closedloop.landing import exact_integers

CREATED = "created_at"  # when closedloop accepted the row: Feast breaks event-time ties with it
EVENT_DATE = "event_date"  # the partition of an offline file, and of a key in the key index
BATCH = "batch_id"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lake:
    """Addresses of one dataset's lake areas."""

    root: str  # <lake>/<dataset>
    endpoint_url: str | None = None
    staged: str | None = None  # a batch id: this lake's writes go to that batch's staging area

    @classmethod
    def of(cls, lake_uri: str, dataset: str, endpoint_url: str | None = None) -> Lake:
        return cls(storage.join(lake_uri, dataset), endpoint_url)

    @property
    def landing(self) -> str:
        return storage.join(self.root, "landing")

    def offline(self, table: str) -> str:
        return storage.join(self.root, "offline", table)

    def ledger(self, batch_id: str) -> str:
        return storage.join(self.root, "ledger", f"{checked_batch_id(batch_id)}.json")

    def quarantine(self, batch_id: str, name: str = "") -> str:
        base = storage.join(self.root, "quarantine", checked_batch_id(batch_id))
        return storage.join(base, name) if name else base

    # --- atomic batches ------------------------------------------------------------------------------
    def staging(self, batch_id: str) -> Lake:
        """The lake with its writes (offline rows, key index, quarantine) staged for one batch until committed."""
        return Lake(self.root, self.endpoint_url, staged=checked_batch_id(batch_id))

    def _put(self, uri: str, body: bytes | Path) -> str:
        """Write an object of this lake: bytes, or a local file streamed.

        Under the staging area of the batch being written when there is one.
        """
        if self.staged is not None and uri.startswith(self.root + "/"):
            uri = storage.join(self.root, "staging", self.staged, uri[len(self.root) + 1 :])
        if isinstance(body, Path):
            return storage.upload_file(body, uri, self.endpoint_url)
        return storage.write_bytes(uri, body, self.endpoint_url)

    def staged_view(self, batch_id: str) -> Lake:
        """What a batch has staged so far, read as a lake of its own (a chunk reads the batch's earlier chunks)."""
        return Lake(storage.join(self.root, "staging", checked_batch_id(batch_id)), self.endpoint_url)

    def discard(self, batch_id: str) -> None:
        """Drop what a batch staged (an attempt that failed, or a batch quarantined whole after all)."""
        storage.delete_prefix(storage.join(self.root, "staging", checked_batch_id(batch_id)), self.endpoint_url)

    def commit(self, record: dict[str, Any]) -> str:
        """Ledger a batch (the commit), then move what it staged into place; returns the ledger record's URI."""
        uri = self.write_ledger(record)
        failpoints.reach("batch-committed")
        self.publish(str(record["batch_id"]))
        return uri

    def publish(self, batch_id: str) -> list[str]:
        """Move a committed batch's staged objects into place (again after a crash: a move is idempotent)."""
        folder = storage.join(self.root, "staging", batch_id)
        moved = []
        for uri in storage.list_objects(folder, self.endpoint_url):
            target = storage.join(self.root, uri[len(folder) + 1 :])
            moved.append(storage.move(uri, target, self.endpoint_url))
            failpoints.reach("batch-publishing")
        storage.delete_prefix(folder, self.endpoint_url)  # on disk: the emptied folders
        return moved

    def sweep(self) -> dict[str, list[str]]:
        """Finish what crashed runs left (call it holding the lake's lock): returns the batches done and undone.

        A staged batch whose ledger record exists is published (``published``); one without is removed
        (``removed``): it was never committed, and its landing file is ingested again. On disk, temporary files
        of interrupted writes are removed as well, only in the areas written under the lock: landing/, the
        inference log and the monitor's records have writers that do not take it, whose writes may be in flight.
        """
        folder = storage.join(self.root, "staging")
        staged = sorted(
            {uri[len(folder) + 1 :].split("/", 1)[0] for uri in storage.list_objects(folder, self.endpoint_url)}
        )
        done: dict[str, list[str]] = {"published": [], "removed": []}
        for batch_id in staged:
            if storage.exists(self.ledger(batch_id), self.endpoint_url):
                self.publish(batch_id)
                done["published"].append(batch_id)
            else:
                storage.delete_prefix(storage.join(folder, batch_id), self.endpoint_url)
                done["removed"].append(batch_id)
        local = storage.parse(self.root)
        if local.scheme == "file":
            if local.path.joinpath("staging").exists():  # emptied batch folders, temporary files of a crash
                storage.delete_prefix(folder)
            for area in ("ledger", "offline", "keys", "quarantine", "archive"):
                for tmp in local.path.joinpath(area).rglob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
        if staged:
            logger.warning(
                "lake %s: crashed batch(es) published %s, removed %s", self.root, done["published"], done["removed"]
            )
        return done

    # --- ledger ----------------------------------------------------------------------------------
    def read_ledger(self, batch_id: str) -> dict[str, Any] | None:
        uri = self.ledger(batch_id)
        if not storage.exists(uri, self.endpoint_url):
            return None
        record: dict[str, Any] = json.loads(storage.read_bytes(uri, self.endpoint_url))
        return record

    def write_ledger(self, record: dict[str, Any]) -> str:
        return storage.write_bytes(
            self.ledger(record["batch_id"]), json.dumps(record, indent=2, default=str).encode(), self.endpoint_url
        )

    def ledger_records(self) -> list[dict[str, Any]]:
        uris = storage.list_objects(storage.join(self.root, "ledger"), self.endpoint_url)
        return [json.loads(storage.read_bytes(u, self.endpoint_url)) for u in uris if u.endswith(".json")]

    # --- offline store -----------------------------------------------------------------------------
    def write_offline(
        self,
        table: str,
        frame: pd.DataFrame,
        event_time: str,
        batch_id: str,
        created: datetime,
        types: dict[str, pa.DataType],
        part: int | None = None,
    ) -> list[str]:
        """Append accepted rows as one parquet file per event day; returns the files written.

        A batch written in parts (validated in chunks) names its files ``<batch_id>.<part>.parquet``.

        Every column is stored with its type in ``types`` (see :func:`arrow_types`), whatever the batch held:
        a column empty in every row is not written as Arrow type null, nor an integer column as float64.
        """
        if frame.empty:
            return []
        columns = [str(c) for c in frame.columns if c != CREATED]  # the time of acceptance is this write's
        unknown = [c for c in columns if c not in types]
        if unknown:
            raise ValueError(f"no stored type for column(s) {unknown} of offline table {table!r}")
        schema = pa.schema([pa.field(c, types[c]) for c in columns] + [pa.field(CREATED, TIMESTAMP)])
        frame = frame.assign(**{CREATED: pd.Timestamp(created).tz_convert("UTC")})
        frame[CREATED] = frame[CREATED].astype("datetime64[us, UTC]")
        frame[event_time] = frame[event_time].astype("datetime64[us, UTC]")
        days = frame[event_time].dt.floor("D")  # grouped by the day's timestamp: formatting every row is slow
        written = []
        name = batch_id if part is None else f"{batch_id}.{part}"
        for day, rows in frame.groupby(days, sort=True):
            uri = storage.join(self.offline(table), f"event_date={pd.Timestamp(day):%Y-%m-%d}", f"{name}.parquet")
            written.append(self._put(uri, parquet_bytes(rows.reset_index(drop=True), schema)))
            failpoints.reach("batch-writing")
        return written

    def read_offline(self, table: str, columns: list[str] | None = None, filters: Any = None) -> pd.DataFrame:
        """All accepted rows of a table (optionally filtered), or an empty frame."""
        arrow = self.read_offline_arrow(table, columns, filters)
        # one conversion of the whole table: a pandas frame per partition, then a concat, costs twice as much
        return pd.DataFrame(columns=columns or []) if arrow is None else arrow.to_pandas()

    def read_offline_arrow(self, table: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table | None:
        """All accepted rows of a table as one Arrow table (None when it has no file yet)."""
        tables = self.read_offline_files(self.offline_files(table), columns, filters)
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")  # int64 + float64 -> float64

    def read_current_arrow(self, contract: Contract, table: str, columns: list[str]) -> pa.Table | None:
        """A table's rows as the data set holds them now: one row per primary key (``columns`` must hold it).

        Where the contract stores restatements (``restatement: store``) a key may have several versions; the
        latest accepted one (``created_at``) is the row's current value. Otherwise every stored row is returned.
        """
        spec = contract.tables[table]
        if spec.restatement != "store":
            return self.read_offline_arrow(table, columns=columns)
        stored = self.read_offline_arrow(table, columns=[*columns, CREATED])
        if stored is None:
            return None
        import duckdb

        keys = ", ".join('"' + k.replace('"', '""') + '"' for k in dict.fromkeys(spec.primary_key))
        con = duckdb.connect()  # private and in memory: reads only the Arrow table below
        try:
            con.register("stored", stored)
            return con.execute(
                f"SELECT * EXCLUDE ({CREATED}) FROM stored "
                f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {CREATED} DESC) = 1"
            ).to_arrow_table()
        finally:
            con.close()

    def offline_file(self, table: str, day: str, batch_id: str) -> str:
        return storage.join(self.offline(table), f"{EVENT_DATE}={day}", f"{batch_id}.parquet")

    # --- key index -------------------------------------------------------------------------------
    def write_keys(self, table: str, batch_id: str, index: pa.Table) -> str:
        """Index a batch's stored rows: their primary key and ``event_date``, one small file per batch."""
        buffer = io.BytesIO()
        # the hashes (``_key_hash``, ``_row_hash``) are random 64-bit numbers: stored plain, they are read at the
        # speed of the disk, where compressing them gains nothing
        hashes = [f.name for f in index.schema if f.name.startswith("_") and pa.types.is_integer(f.type)]
        others = [c for c in index.column_names if c not in hashes]
        compression = {**dict.fromkeys(others, "zstd"), **dict.fromkeys(hashes, "none")}
        pq.write_table(index, buffer, compression=compression, use_dictionary=others)
        return self._put(self._keys_file(table, batch_id), buffer.getvalue())

    def read_keys(self, table: str, keys: list[str]) -> pa.Table | None:
        """Every stored row's primary key, event day and batch (None when the table has no row yet)."""
        parts = self.read_key_parts(table, keys)
        if parts is None:
            return None
        tagged = [_with(part, BATCH, name) for name, part in parts]
        return pa.concat_tables(tagged, promote_options="permissive")

    def read_key_parts(
        self, table: str, keys: list[str], columns: list[str] | None = None
    ) -> list[tuple[str, pa.Table]] | None:
        """The key index of a table, file by file: (file name, its rows), None when the table has no row yet.

        ``columns``: only these, from the files that hold them all (others are read whole); ``event_date`` is read
        as a dictionary. Batches stored with no index file (before the index existed, or written outside
        ingestion) are indexed here from their offline files' key columns, once.
        """
        files: dict[str, list[str]] = {}
        for uri in self.offline_files(table):
            files.setdefault(uri.rsplit("/", 1)[-1].removesuffix(".parquet"), []).append(uri)
        if not files:
            return None
        folder = storage.join(self.root, "keys", table)
        indexed = {
            uri.rsplit("/", 1)[-1].removesuffix(".parquet")
            for uri in storage.list_objects(folder, self.endpoint_url)
            if uri.endswith(".parquet")
        }
        for batch_id in sorted(set(files) - indexed):
            parts = self.read_offline_files(files[batch_id], columns=keys)
            days = [unquote(uri.rsplit("/", 2)[-2]).removeprefix(f"{EVENT_DATE}=") for uri in files[batch_id]]
            dated = [_with(part, EVENT_DATE, day) for part, day in zip(parts, days, strict=True)]
            self.write_keys(table, batch_id, pa.concat_tables(dated, promote_options="permissive"))
        batches = sorted(files)

        with ThreadPoolExecutor(max_workers=4) as pool:
            found = pool.map(lambda batch: self.read_key_file(table, batch, columns), batches)
            return list(zip(batches, found, strict=True))

    def read_key_file(self, table: str, name: str, columns: list[str] | None = None) -> pa.Table:
        """One key index file (see :meth:`read_key_parts`): ``columns`` if it holds them all, else all of it."""
        uri = self._keys_file(table, name)
        local = storage.local_path(uri)  # on disk only the columns asked for are read
        data = local if local is not None else io.BytesIO(storage.read_bytes(uri, self.endpoint_url))
        body = pq.ParquetFile(data, read_dictionary=[EVENT_DATE] if columns else None)
        names = body.schema_arrow.names
        return body.read(columns=columns if columns and all(c in names for c in columns) else None)

    def _keys_file(self, table: str, batch_id: str) -> str:
        return storage.join(self.root, "keys", table, f"{batch_id}.parquet")

    def offline_files(self, table: str) -> list[str]:
        """The parquet files of a table."""
        return [u for u in storage.list_objects(self.offline(table), self.endpoint_url) if u.endswith(".parquet")]

    def read_offline_files(
        self, uris: list[str], columns: list[str] | None = None, filters: Any = None
    ) -> list[pa.Table]:
        """Some offline files, one Arrow table each (in the order of ``uris``), only ``columns`` decoded."""

        def read(uri: str) -> pa.Table:
            body = io.BytesIO(storage.read_bytes(uri, self.endpoint_url))
            return pq.read_table(body, columns=columns, filters=filters)

        with ThreadPoolExecutor(max_workers=4) as pool:  # many small partitions: decoding releases the GIL
            return list(pool.map(read, uris))

    # --- quarantine --------------------------------------------------------------------------------
    def write_quarantine(
        self,
        batch_id: str,
        original: bytes | Path,
        original_name: str,
        rejected: pd.DataFrame | Path,
        reason: dict[str, Any],
        validation: dict[str, Any] | None,
    ) -> str:
        """Keep a batch's bytes (or its file), its rejected rows and why.

        The rejected rows are a frame, or a parquet file written chunk by chunk.
        """
        suffix = original_name.rsplit(".", 1)[-1] if "." in original_name else "bin"
        self._put(self.quarantine(batch_id, f"original.{suffix}"), original)
        if isinstance(rejected, Path):
            self._put(self.quarantine(batch_id, "rejected.parquet"), rejected)
        elif not rejected.empty:
            self._put(self.quarantine(batch_id, "rejected.parquet"), parquet_bytes(_textual(rejected)))
        if validation is not None:
            self._put(
                self.quarantine(batch_id, "validation.json"), json.dumps(validation, indent=1, default=str).encode()
            )
        self.write_reason(batch_id, reason)
        return self.quarantine(batch_id)

    def write_reason(self, batch_id: str, reason: dict[str, Any]) -> None:
        self._put(self.quarantine(batch_id, "reason.json"), json.dumps(reason, indent=2, default=str).encode())

    def read_reason(self, batch_id: str) -> dict[str, Any]:
        uri = self.quarantine(batch_id, "reason.json")
        if not storage.exists(uri, self.endpoint_url):
            raise storage.StorageError(f"{self.quarantine(batch_id)}: no quarantined batch {batch_id!r}")
        record: dict[str, Any] = json.loads(storage.read_bytes(uri, self.endpoint_url))
        return record

    def quarantined(self) -> list[dict[str, Any]]:
        uris = storage.list_objects(storage.join(self.root, "quarantine"), self.endpoint_url)
        return [json.loads(storage.read_bytes(u, self.endpoint_url)) for u in uris if u.endswith("/reason.json")]

    def read_rejected(self, batch_id: str) -> pd.DataFrame:
        data = storage.read_bytes(self.quarantine(batch_id, "rejected.parquet"), self.endpoint_url)
        return pq.read_table(io.BytesIO(data)).to_pandas(types_mapper=exact_integers)

    # --- retraction --------------------------------------------------------------------------------
    def archive(self, batch_id: str) -> str:
        """Where a retracted batch's objects go: ``archive/<batch_id>/`` with their paths in the lake kept."""
        return storage.join(self.root, "archive", checked_batch_id(batch_id))

    def retract(self, batch_id: str, reason: str, at: datetime) -> dict[str, Any]:
        """Take a committed batch's rows out of the offline store into its archive; returns what was done.

        Every object of the batch (``keys/<table>/<batch_id>.parquet``, then each
        ``offline/<table>/event_date=*/<batch_id>.parquet``, aggregate history tables included) is moved to
        ``archive/<batch_id>/<same path>``: nothing is deleted. The ledger record keeps its status and counts
        and gains ``retracted``, written before anything moves (``state: retracting``, the objects listed) and
        updated once all are archived (``state: archived``); the online store is still to be refreshed then, and
        :meth:`finish_retraction` marks it ``done``. Called again on a retraction that is not done, it finishes
        it (a crash between two moves, or before the online refresh). The key index goes first: until an
        offline file is moved its rows are stored and, with no index file, indexed again from it (see
        :meth:`read_keys`); an object found both in place and in the archive (an interrupted S3 move, such a
        re-index) is removed from its place, the archive keeping the batch's own.

        A replay (``<batch_id>-r<n>``) is a batch of its own: retracting a batch leaves its replays stored and
        lists them (``replays``) so that the operator can retract them as well.
        """
        record = self.check_retractable(batch_id)
        retraction = record.get("retracted")
        resumed = retraction is not None
        if retraction is None:
            reason = reason.strip()
            if not reason:
                raise ValueError(f"batch {batch_id}: a retraction needs a reason")
            if storage.list_objects(storage.join(self.root, "staging", batch_id), self.endpoint_url):
                self.publish(batch_id)  # committed by a crashed run: else a later sweep would bring it back
            objects = self._stored_objects(batch_id)
            if not objects:
                raise storage.StorageError(
                    f"{self.root}: batch {batch_id} has {record.get('rows_accepted')} accepted rows in its ledger "
                    "record but no object under offline/ or keys/"
                )
            rows = self._rows_by_table(objects)
            retraction = {
                "state": "retracting",
                "at": at.isoformat(),
                "reason": reason,
                "archive": self.archive(batch_id),
                "objects": objects,
                "rows": rows.get(str(record.get("table")), 0),
                "rows_by_table": rows,
            }
            record["retracted"] = retraction
            self.write_ledger(record)  # the intent: a crash from here on is finished by the next call
        moved: list[str] = []
        if retraction["state"] == "retracting":
            objects = sorted({*retraction["objects"], *self._stored_objects(batch_id)}, key=self._keys_first)
            for relative in objects:
                if self._archive_object(batch_id, relative):
                    moved.append(relative)
                    failpoints.reach("batch-retracting")
            retraction.update(state="archived", objects=objects)
            self.write_ledger(record)
        return {
            **{k: record.get(k) for k in ("batch_id", "table", "status", "replay_of", "uri", "rows_accepted")},
            **retraction,
            "moved": moved,
            "resumed": resumed,
            "replays": self.replays_of(batch_id),
            "quarantine": self.quarantine(batch_id) if record.get("quarantine_uri") else None,
        }

    def check_retractable(self, batch_id: str) -> dict[str, Any]:
        """The ledger record of a batch that can be retracted (or whose retraction is to be finished).

        Refused, with one line saying why: a batch not in the ledger, one retracted already, one that stored
        no row (quarantined whole, or every row stored already by other batches).
        """
        record = self.read_ledger(batch_id)
        if record is None:
            raise storage.StorageError(f"{self.ledger(batch_id)}: no batch {batch_id!r} in the ledger")
        retraction = record.get("retracted")
        if retraction is not None and retraction.get("state") == "done":
            raise ValueError(
                f"batch {batch_id} was retracted already at {retraction['at']} ({retraction['reason']}); "
                f"its objects are in {retraction['archive']}"
            )
        if retraction is None and not record.get("rows_accepted"):
            why = record.get("reason") or "no row accepted"
            raise ValueError(f"batch {batch_id} stored no rows ({record.get('status')}: {why}): nothing to retract")
        return record

    def finish_retraction(self, batch_id: str, online_views: list[str], at: datetime) -> dict[str, Any]:
        """Mark an archived retraction done once the online store no longer serves its rows; returns the record."""
        record = self.read_ledger(batch_id)
        retraction = (record or {}).get("retracted")
        if record is None or retraction is None or retraction.get("state") not in ("archived", "done"):
            raise ValueError(f"batch {batch_id}: no archived retraction to finish")
        retraction.update(state="done", online_views=online_views, online_refreshed_at=at.isoformat())
        self.write_ledger(record)
        return record

    def replays_of(self, batch_id: str) -> list[dict[str, Any]]:
        """The ledgered replays of a batch (``<batch_id>-r<n>``): their status, rows and retraction state."""
        pattern = re.compile(rf"{re.escape(batch_id)}-r(\d+)\.json")
        found = []
        for uri in storage.list_objects(storage.join(self.root, "ledger"), self.endpoint_url):
            match = pattern.fullmatch(uri.rsplit("/", 1)[-1])
            if match:
                record = json.loads(storage.read_bytes(uri, self.endpoint_url))
                found.append((int(match.group(1)), record))
        return [
            {
                "batch_id": record["batch_id"],
                "status": record.get("status"),
                "rows_accepted": record.get("rows_accepted", 0),
                "retracted": (record.get("retracted") or {}).get("state"),
            }
            for _, record in sorted(found, key=lambda pair: pair[0])
        ]

    def _stored_objects(self, batch_id: str) -> list[str]:
        """A batch's objects in place, as paths in the lake: its offline files (every table) and key index files.

        A batch written in parts has files named ``<batch_id>.<part>.parquet``; a replay's (``<batch_id>-r<n>``)
        are its own.
        """
        name = re.compile(rf"{re.escape(batch_id)}(\.\d+)?\.parquet")
        on_disk = storage.parse(self.root).scheme == "file"
        found = []
        for area in ("offline", "keys"):
            for uri in storage.list_objects(storage.join(self.root, area), self.endpoint_url):
                relative = uri[len(self.root) + 1 :]
                parts = (unquote(relative) if on_disk else relative).split("/")  # a file URI quotes the "="
                offline = area == "offline" and len(parts) == 4 and parts[2].startswith(f"{EVENT_DATE}=")
                if name.fullmatch(parts[-1]) and (offline or (area == "keys" and len(parts) == 3)):
                    found.append("/".join(parts))
        return sorted(found, key=self._keys_first)

    def _rows_by_table(self, objects: list[str]) -> dict[str, int]:
        """Rows of each offline table among a batch's objects (from the parquet footers)."""
        rows: dict[str, int] = {}
        for relative in objects:
            if relative.startswith("offline/"):
                body = storage.read_bytes(storage.join(self.root, relative), self.endpoint_url)
                table = relative.split("/")[1]
                rows[table] = rows.get(table, 0) + pq.read_metadata(io.BytesIO(body)).num_rows
        return rows

    @staticmethod
    def _keys_first(relative: str) -> tuple[bool, str]:
        """Order a batch's objects for archiving: its key index files before its offline files."""
        return (not relative.startswith("keys/"), relative)

    def _archive_object(self, batch_id: str, relative: str) -> bool:
        """Move one object of a batch to its archive; False when it was archived already."""
        source = storage.join(self.root, relative)
        target = storage.join(self.archive(batch_id), relative)
        if storage.exists(target, self.endpoint_url):
            storage.delete(source, self.endpoint_url)  # a leftover: the archive holds the batch's own object
            return False
        if not storage.exists(source, self.endpoint_url):
            raise storage.StorageError(f"{source}: object of batch {batch_id} is neither in place nor in {target}")
        storage.move(source, target, self.endpoint_url)
        return True


BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
_BATCH_ID = re.compile(BATCH_ID_PATTERN)


class BatchIdError(storage.StorageError):
    """A batch id that could not be one: it would name a path outside the batch's own place in the lake."""


def checked_batch_id(value: str) -> str:
    """A batch id, safe to be a part of a path: letters, digits, '-' and '_' only (``<sha>``, ``<sha>-r2``, ...)."""
    if not _BATCH_ID.fullmatch(value):
        raise BatchIdError(
            f"{value[:80]!r} is not a batch id: ids are letters, digits, '-' and '_' (closedloop quarantine list "
            "shows them)"
        )
    return value


def parquet_bytes(frame: pd.DataFrame, schema: pa.Schema | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), buffer, compression="zstd")
    return buffer.getvalue()


TIMESTAMP = pa.timestamp("us", tz="UTC")
_COLUMN_TYPES = {
    ColumnType.INT: pa.int64(),
    ColumnType.FLOAT: pa.float64(),
    ColumnType.CATEGORY: pa.string(),
    ColumnType.BOOL: pa.bool_(),
}


def key_type(contract: Contract) -> pa.DataType:
    """The Arrow type of the entity and primary keys."""
    return pa.int64() if contract.key_type == "int" else pa.string()


def arrow_types(contract: Contract, table: str) -> dict[str, pa.DataType]:
    """The stored Arrow type of every column of a contract table: its keys, event time, label and columns."""
    spec = contract.tables[table]
    types = {key: key_type(contract) for key in [contract.entity.join_key, *spec.primary_key]}
    types[spec.event_time] = TIMESTAMP
    if table == contract.label.source:
        types[contract.label.column] = pa.int64()
    types.update({col.name: _COLUMN_TYPES[col.type] for col in contract.columns_of(table)})
    return types


def _with(table: pa.Table, column: str, value: str) -> pa.Table:
    """``table`` with a text column holding ``value`` in every row."""
    return table.append_column(column, pa.repeat(value, table.num_rows))


def _textual(frame: pd.DataFrame) -> pd.DataFrame:
    """Rejected rows keep their values as read; mixed-type cells are stored as text so nothing is lost.

    A missing cell stays missing (null), never the text 'nan': its replay must see what the batch held.
    """
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(_as_text)
    return out


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value):
        return None
    return str(value)
