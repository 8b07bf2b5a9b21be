"""The data lake of one dataset: ingestion ledger, offline feature tables and quarantine.

```
<lake>/<dataset>/
├── landing/<table>/<file>                        batches as they arrive (never modified)
├── ledger/<batch_id>.json                         one record per batch seen: counts, status, reasons
├── offline/<table>/event_date=<day>/<batch_id>.parquet    accepted rows (UTC microsecond timestamps)
└── quarantine/<batch_id>/
    ├── original.<ext>                             the batch's bytes, untouched
    ├── rejected.parquet                           rejected rows as read, with _source_row and _reasons
    ├── reason.json                                why, counts, top failing expectations, replay history
    └── validation.json                            the Great Expectations result document
```
Every write is a whole object (atomic on disk and on S3); nothing here deletes anything.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop import storage

CREATED = "created_at"  # when closedloop accepted the row: Feast breaks event-time ties with it


@dataclass(frozen=True)
class Lake:
    """Addresses of one dataset's lake areas."""

    root: str  # <lake>/<dataset>
    endpoint_url: str | None = None

    @classmethod
    def of(cls, lake_uri: str, dataset: str, endpoint_url: str | None = None) -> Lake:
        return cls(storage.join(lake_uri, dataset), endpoint_url)

    @property
    def landing(self) -> str:
        return storage.join(self.root, "landing")

    def offline(self, table: str) -> str:
        return storage.join(self.root, "offline", table)

    def ledger(self, batch_id: str) -> str:
        return storage.join(self.root, "ledger", f"{batch_id}.json")

    def quarantine(self, batch_id: str, name: str = "") -> str:
        base = storage.join(self.root, "quarantine", batch_id)
        return storage.join(base, name) if name else base

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
        self, table: str, frame: pd.DataFrame, event_time: str, batch_id: str, created: datetime
    ) -> list[str]:
        """Append accepted rows as one parquet file per event day; returns the files written."""
        if frame.empty:
            return []
        frame = frame.assign(**{CREATED: pd.Timestamp(created).tz_convert("UTC")})
        frame[CREATED] = frame[CREATED].astype("datetime64[us, UTC]")
        frame[event_time] = frame[event_time].astype("datetime64[us, UTC]")
        days = frame[event_time].dt.strftime("%Y-%m-%d")
        written = []
        for day, part in frame.groupby(days, sort=True):
            uri = storage.join(self.offline(table), f"event_date={day}", f"{batch_id}.parquet")
            written.append(storage.write_bytes(uri, parquet_bytes(part.reset_index(drop=True)), self.endpoint_url))
        return written

    def read_offline(self, table: str, columns: list[str] | None = None, filters: Any = None) -> pd.DataFrame:
        """All accepted rows of a table (optionally filtered), or an empty frame."""
        arrow = self.read_offline_arrow(table, columns, filters)
        # one conversion of the whole table: a pandas frame per partition, then a concat, costs twice as much
        return pd.DataFrame(columns=columns or []) if arrow is None else arrow.to_pandas()

    def read_offline_arrow(self, table: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table | None:
        """All accepted rows of a table as one Arrow table (None when it has no file yet)."""
        uris = [u for u in storage.list_objects(self.offline(table), self.endpoint_url) if u.endswith(".parquet")]
        if not uris:
            return None

        def read(uri: str) -> pa.Table:
            body = io.BytesIO(storage.read_bytes(uri, self.endpoint_url))
            return pq.read_table(body, columns=columns, filters=filters)

        with ThreadPoolExecutor(max_workers=4) as pool:  # many small partitions: decoding releases the GIL
            tables = list(pool.map(read, uris))
        return pa.concat_tables(tables, promote_options="permissive")  # int64 + float64 -> float64

    # --- quarantine --------------------------------------------------------------------------------
    def write_quarantine(
        self,
        batch_id: str,
        original: bytes,
        original_name: str,
        rejected: pd.DataFrame,
        reason: dict[str, Any],
        validation: dict[str, Any] | None,
    ) -> str:
        suffix = original_name.rsplit(".", 1)[-1] if "." in original_name else "bin"
        storage.write_bytes(self.quarantine(batch_id, f"original.{suffix}"), original, self.endpoint_url)
        if not rejected.empty:
            storage.write_bytes(
                self.quarantine(batch_id, "rejected.parquet"), parquet_bytes(_textual(rejected)), self.endpoint_url
            )
        if validation is not None:
            storage.write_bytes(
                self.quarantine(batch_id, "validation.json"),
                json.dumps(validation, indent=1, default=str).encode(),
                self.endpoint_url,
            )
        self.write_reason(batch_id, reason)
        return self.quarantine(batch_id)

    def write_reason(self, batch_id: str, reason: dict[str, Any]) -> None:
        storage.write_bytes(
            self.quarantine(batch_id, "reason.json"),
            json.dumps(reason, indent=2, default=str).encode(),
            self.endpoint_url,
        )

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
        return pq.read_table(io.BytesIO(data)).to_pandas()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression="zstd")
    return buffer.getvalue()


def _textual(frame: pd.DataFrame) -> pd.DataFrame:
    """Rejected rows keep their values as read; mixed-type cells are stored as text so nothing is lost."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return out
