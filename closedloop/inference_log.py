"""The inference log: every scored request, appended in memory and written to the lake in parquet batches.

```
<lake>/<dataset>/inference/event_date=<YYYY-MM-DD>/<first scored_at %Y%m%dT%H%M%S%f>-<uuid4 hex>.parquet
```
One file per UTC day present in a batch. Columns: the scalar fields of `InferenceRecord` (``scored_at`` as
``timestamp[us, tz=UTC]``), ``reasons`` as ``list<string>`` and one ``feature.<name>`` column per served feature.
Guarantees: ``append`` never does I/O; each file is one atomic object write (never half written); a failed write
keeps its records buffered, in order, for the next flush; past ``max_buffered`` records ``append`` raises
`InferenceLogFull` rather than drop anything or grow without bound. A record can be written twice only if a
write succeeded in storage yet reported a failure; ``request_id`` identifies duplicates.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from closedloop import storage
from closedloop.lake import Lake
from closedloop.processes import pid_alive

logger = logging.getLogger(__name__)

AREA = "inference"
FEATURE_PREFIX = "feature."
VARIANTS = ("champion", "shadow", "canary")
TIMESTAMP = pa.timestamp("us", tz="UTC")

FeatureValue = float | int | str | bool | None


class InferenceLogFull(RuntimeError):
    """Too many records are waiting for storage: the service must refuse to score rather than lose records."""


@dataclass(frozen=True)
class InferenceRecord:
    """One scored request, as served."""

    request_id: str
    scored_at: datetime
    dataset: str
    model_version: str
    entity_id: str | int
    features: dict[str, FeatureValue]
    score: float
    decision: str
    latency_ms: float
    variant: str = "champion"
    reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Validate, normalise to UTC and copy the mutable fields so later changes by the caller are not logged."""
        if not isinstance(self.scored_at, datetime):
            raise ValueError(f"scored_at must be a datetime, got {type(self.scored_at).__name__}")
        if self.scored_at.tzinfo is None or self.scored_at.utcoffset() is None:
            raise ValueError(f"scored_at must be timezone-aware (UTC), got naive {self.scored_at.isoformat()}")
        for name in ("request_id", "dataset", "model_version", "decision"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        entity = _scalar(self.entity_id)
        if isinstance(entity, bool) or not isinstance(entity, str | int):
            raise ValueError(f"entity_id must be a str or an int, got {type(self.entity_id).__name__}")
        features: dict[str, FeatureValue] = {}
        for key, value in self.features.items():
            if not isinstance(key, str):
                raise ValueError(f"features keys must be strings, got {key!r}")
            plain = _scalar(value)
            if plain is not None and not isinstance(plain, float | int | str | bool):
                raise ValueError(
                    f"features[{key!r}] must be a float, int, str, bool or None, got {type(value).__name__}"
                )
            features[key] = plain
        set_ = object.__setattr__
        utc = self.scored_at.astimezone(UTC)
        if type(utc) is not datetime:  # a pandas Timestamp: plain microseconds, like the stored column
            utc = datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, UTC)
        set_(self, "scored_at", utc)
        set_(self, "entity_id", entity)
        set_(self, "features", features)
        set_(self, "score", float(self.score))
        set_(self, "latency_ms", float(self.latency_ms))
        set_(self, "reasons", [str(r) for r in self.reasons])


SCALAR_COLUMNS = tuple(f.name for f in fields(InferenceRecord) if f.name not in ("features", "reasons"))


class InferenceLog:
    """Buffers inference records in memory and writes them to the lake in batches (thread-safe)."""

    def __init__(
        self,
        lake: Lake,
        flush_rows: int = 500,
        flush_seconds: float = 5.0,
        max_buffered: int = 100_000,
        journal_dir: Path | None = None,
    ) -> None:
        if flush_rows < 1 or flush_seconds <= 0 or max_buffered < 1:
            raise ValueError("flush_rows, flush_seconds and max_buffered must be positive")
        self.lake = lake
        self.journal = Journal(journal_dir) if journal_dir is not None else None
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self._buffer: list[InferenceRecord] = []
        self._oldest: float | None = None  # time.monotonic() when the oldest buffered record arrived
        self._inflight = 0  # records taken by a flush that is writing them right now
        self._retry_at = 0.0  # the background thread waits until then after a failed write
        self._cond = threading.Condition(threading.Lock())
        self._flush_lock = threading.Lock()  # one writer at a time keeps the retry order
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False

    @property
    def uri(self) -> str:
        """Where this log writes: ``<lake.root>/inference``."""
        return inference_uri(self.lake)

    @property
    def pending(self) -> int:
        """Records not yet written: buffered plus those a flush is writing now."""
        with self._cond:
            return len(self._buffer) + self._inflight

    def append(self, record: InferenceRecord) -> None:
        """Buffer one record (no I/O); raises InferenceLogFull when storage has been failing for too long."""
        if not isinstance(record, InferenceRecord):
            raise TypeError(f"expected an InferenceRecord, got {type(record).__name__}")
        with self._cond:
            if self._closed:
                raise RuntimeError("the inference log is closed")
            waiting = len(self._buffer) + self._inflight
            if waiting >= self.max_buffered:
                raise InferenceLogFull(
                    f"{waiting} inference records are waiting for {self.uri} (limit {self.max_buffered}): "
                    "writes keep failing, refusing to take more"
                )
            if self.journal is not None:  # before it counts as taken: a killed process leaves it on disk
                self.journal.write(record)
            self._buffer.append(record)
            if self._oldest is None:
                self._oldest = time.monotonic()
                self._cond.notify()
            elif len(self._buffer) == self.flush_rows:
                self._cond.notify()

    def flush(self) -> list[str]:
        """Write every buffered record now; returns the URIs written (re-raises a storage error, records kept)."""
        with self._flush_lock:
            with self._cond:
                batch, oldest = self._buffer, self._oldest
                self._buffer, self._oldest = [], None
                self._inflight = len(batch)
                covered = self.journal.rotate() if self.journal is not None and batch else []
            if not batch:
                with self._cond:
                    self._inflight = 0
                return []
            written: list[str] = []
            remaining = batch
            try:
                for day, records in _by_day(batch):
                    uri = self._file_uri(day, records)
                    try:
                        storage.write_bytes(uri, _parquet(records_table(records)), self.lake.endpoint_url)
                    except Exception as exc:
                        logger.error(
                            "inference log: cannot write %s (%d records kept for retry): %s", uri, len(remaining), exc
                        )
                        raise
                    written.append(uri)
                    remaining = [r for r in remaining if r.scored_at.date() != day]
                    with self._cond:
                        self._inflight = len(remaining)
            except BaseException:
                with self._cond:
                    self._buffer = remaining + self._buffer
                    self._oldest = oldest if oldest is not None else self._oldest
                    self._inflight = 0
                if written:
                    logger.error("inference log: %s were written before the failure", written)
                raise
            with self._cond:
                self._inflight = 0
            if self.journal is not None:
                self.journal.drop(covered)  # written: their journal segments are no longer needed
            logger.debug("inference log: wrote %d files to %s", len(written), self.uri)
            return written

    def start(self) -> InferenceLog:
        """Start the daemon thread that flushes every ``flush_rows`` records or ``flush_seconds``; idempotent."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the inference log is closed")
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="inference-log-flusher", daemon=True)
            self._thread.start()
        return self

    def close(self) -> list[str]:
        """Stop the background thread and write everything left; raises if that final write fails."""
        with self._cond:
            self._closed = True
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread = None
        written = self.flush()
        if self.journal is not None:
            self.journal.close()
        return written

    def __enter__(self) -> InferenceLog:
        """Start the background thread."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close: flush what is left."""
        self.close()

    # --- internals ---------------------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Write the journals of killed processes to the lake (their unflushed records); returns the counts.

        Run once at start-up. A segment whose writer is alive is left alone; a torn last line (the process died
        mid-write) is counted, not guessed at.
        """
        if self.journal is None:
            return {"recovered": 0, "torn": 0, "segments": 0}
        counts = {"recovered": 0, "torn": 0, "segments": 0}
        for segment in self.journal.orphans():
            records, torn = Journal.read(segment)
            for day, same_day in _by_day(records):
                storage.write_bytes(
                    self._file_uri(day, same_day), _parquet(records_table(same_day)), self.lake.endpoint_url
                )
            segment.unlink()
            counts["recovered"] += len(records)
            counts["torn"] += torn
            counts["segments"] += 1
        if counts["segments"]:
            logger.warning(
                "inference log: recovered %d records (%d torn lines) left unflushed by killed processes",
                counts["recovered"],
                counts["torn"],
            )
        return counts

    def _file_uri(self, day: date, records: Sequence[InferenceRecord]) -> str:
        first = min(r.scored_at for r in records).strftime("%Y%m%dT%H%M%S%f")
        return storage.join(partition_uri(self.lake, day), f"{first}-{uuid.uuid4().hex}.parquet")

    def _wait(self) -> float | None:
        """Seconds until a flush is due (0 when due now, None when nothing is buffered); call under the lock."""
        now = time.monotonic()
        if now < self._retry_at:
            return self._retry_at - now
        if len(self._buffer) >= self.flush_rows:
            return 0.0
        if self._oldest is None:
            return None
        return max(0.0, self._oldest + self.flush_seconds - now)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (wait := self._wait()) != 0.0:
                    self._cond.wait(timeout=wait)
                if self._stopping:
                    return
            try:
                self.flush()
            except Exception:  # already logged with its URI; the records are back in the buffer
                with self._cond:
                    self._retry_at = time.monotonic() + self.flush_seconds


def inference_uri(lake: Lake) -> str:
    """The inference area of a lake: ``<lake.root>/inference``."""
    return storage.join(lake.root, AREA)


def partition_uri(lake: Lake, day: date) -> str:
    """The partition of one UTC day: ``<lake.root>/inference/event_date=YYYY-MM-DD``."""
    return storage.join(inference_uri(lake), f"event_date={day.isoformat()}")


def records_table(records: Sequence[InferenceRecord]) -> pa.Table:
    """Records as an Arrow table in the stored layout."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record.features))
    entity_ids = [r.entity_id for r in records]
    columns: dict[str, pa.Array] = {
        "request_id": pa.array([r.request_id for r in records], pa.string()),
        "scored_at": pa.array([r.scored_at for r in records], TIMESTAMP),
        "dataset": pa.array([r.dataset for r in records], pa.string()),
        "model_version": pa.array([r.model_version for r in records], pa.string()),
        "entity_id": (
            pa.array(entity_ids, pa.int64())
            if all(isinstance(e, int) for e in entity_ids)
            else pa.array([str(e) for e in entity_ids], pa.string())
        ),
        "score": pa.array([r.score for r in records], pa.float64()),
        "decision": pa.array([r.decision for r in records], pa.string()),
        "latency_ms": pa.array([r.latency_ms for r in records], pa.float64()),
        "variant": pa.array([r.variant for r in records], pa.string()),
        "reasons": pa.array([r.reasons for r in records], pa.list_(pa.string())),
    }
    for name in names:
        columns[FEATURE_PREFIX + name] = _feature_array([r.features.get(name) for r in records])
    return pa.table(columns)


def empty_frame() -> pd.DataFrame:
    """A frame with no rows and the scalar columns plus ``reasons``, typed as stored."""
    schema = records_table([]).schema
    schema = schema.set(schema.get_field_index("entity_id"), pa.field("entity_id", pa.string()))
    return _to_pandas(schema.empty_table())


class Journal:
    """Local append-only segments of the records not yet in the lake: what a killed process leaves behind.

    Each record is one JSON line written with ``os.write`` on an append-only file before ``append`` returns, so it
    survives the process being killed (not a power cut: no fsync per request). A flush rotates to a new segment and
    deletes the segments it covered once their records are in the lake. Files: ``<pid>-<instance>-<seq>.jsonl``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.prefix = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.seq = 0
        self._fd = self._open()

    def _path(self, seq: int) -> Path:
        return self.folder / f"{self.prefix}-{seq:06d}.jsonl"

    def _open(self) -> int:
        return os.open(self._path(self.seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, record: InferenceRecord) -> None:
        line = {
            "request_id": record.request_id,
            "scored_at": record.scored_at.isoformat(),
            "dataset": record.dataset,
            "model_version": record.model_version,
            "entity_id": record.entity_id,
            "features": record.features,
            "score": record.score,
            "decision": record.decision,
            "latency_ms": record.latency_ms,
            "variant": record.variant,
            "reasons": record.reasons,
        }
        os.write(self._fd, (json.dumps(line) + "\n").encode())

    def rotate(self) -> list[Path]:
        """Start a new segment; returns the segments that the records taken so far are in."""
        os.close(self._fd)
        covered = [self._path(s) for s in range(self.seq + 1)]
        self.seq += 1
        self._fd = self._open()
        return covered

    def close(self) -> None:
        """Close the current segment and remove it if nothing was written to it since the last flush."""
        os.close(self._fd)
        current = self._path(self.seq)
        if current.exists() and current.stat().st_size == 0:
            current.unlink()

    def drop(self, segments: list[Path]) -> None:
        for segment in segments:
            segment.unlink(missing_ok=True)

    def orphans(self) -> list[Path]:
        """Segments of processes that are no longer running."""
        out = []
        for path in sorted(self.folder.glob("*.jsonl")):
            pid = int(path.name.split("-", 1)[0])
            if path.name.startswith(self.prefix) or pid_alive(pid):
                continue
            out.append(path)
        return out

    @staticmethod
    def read(path: Path) -> tuple[list[InferenceRecord], int]:
        """The records of a segment and the number of lines that could not be read (a torn last write)."""
        records, torn = [], 0
        for line in path.read_bytes().splitlines():
            try:
                data = json.loads(line)
                data["scored_at"] = datetime.fromisoformat(data["scored_at"])
                records.append(InferenceRecord(**data))
            except (ValueError, TypeError, KeyError):
                torn += 1
        return records, torn


def read_window(lake: Lake, start: datetime, end: datetime) -> pd.DataFrame:
    """Every record with ``start <= scored_at < end``, sorted by ``scored_at``, reading only overlapping days."""
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start >= end:
        return empty_frame()
    lower, upper = pa.scalar(start, TIMESTAMP), pa.scalar(end, TIMESTAMP)
    tables = []
    for day in _days(start.date(), (end - timedelta(microseconds=1)).date()):
        for uri in storage.list_objects(partition_uri(lake, day), lake.endpoint_url):
            if not uri.endswith(".parquet"):
                continue
            table = pq.read_table(io.BytesIO(storage.read_bytes(uri, lake.endpoint_url)))
            table = table.filter(
                pc.and_(pc.greater_equal(table["scored_at"], lower), pc.less(table["scored_at"], upper))
            )
            if table.num_rows:
                tables.append(table)
    if not tables:
        return empty_frame()
    try:
        frame = _to_pandas(pa.concat_tables(tables, promote_options="permissive"))
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a feature stored with different types on different days
        frame = pd.concat([_to_pandas(t) for t in tables], ignore_index=True)
    return frame.sort_values("scored_at", kind="stable", ignore_index=True)


def _scalar(value: Any) -> Any:
    """A numpy scalar as the matching Python value; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _feature_array(values: list[FeatureValue]) -> pa.Array:
    """One feature column: bool, int64, float64 or string by what the batch holds (mixed with text: text)."""
    kinds = {type(v) for v in values if v is not None}
    try:
        if not kinds:
            return pa.nulls(len(values))
        if kinds == {bool}:
            return pa.array(values, pa.bool_())
        if kinds == {int}:
            return pa.array(values, pa.int64())
        if kinds <= {int, float, bool}:
            return pa.array([None if v is None else float(v) for v in values], pa.float64())
        if kinds == {str}:
            return pa.array(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # e.g. an int beyond int64: keep it as text
        pass
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def _by_day(records: list[InferenceRecord]) -> Iterable[tuple[date, list[InferenceRecord]]]:
    """Records grouped by UTC day of ``scored_at``, days in order, records in arrival order."""
    groups: dict[date, list[InferenceRecord]] = {}
    for record in records:
        groups.setdefault(record.scored_at.date(), []).append(record)
    return sorted(groups.items())


def _days(first: date, last: date) -> Iterable[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    frame: pd.DataFrame = table.to_pandas()
    if "reasons" in frame.columns:
        frame["reasons"] = [[] if r is None else list(r) for r in frame["reasons"]]
    return frame
