"""Landing-zone batches: find them, tell which table each belongs to, and read their bytes into Arrow.

A batch is one file. Its identity is the SHA-256 of its bytes, so the same data under another name is
still the same batch. Reading never guesses: an unreadable file, a CSV that is not UTF-8 or uses the
wrong delimiter, or a file of an unknown kind raises :class:`UnusableBatch` with the reason. A CSV line
with more or fewer fields than the header is not guessed either: it stays a row of the batch, empty, and
:class:`Readout` says which line it was, for validation to reject it while the readable lines go on.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.contract import Contract

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class UnusableBatch(ValueError):
    """The batch cannot be used as a whole; quarantined with this reason."""


@dataclass(frozen=True)
class BatchRef:
    """A file in the landing zone and what it claims to be."""

    uri: str
    table: str | None  # None when the path names no table of the contract
    file_format: str | None  # "parquet", "csv" or None when the extension is unknown

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]


def batch_id(data: bytes) -> str:
    """Content address of a batch: the first 20 hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:20]


def unplaced_id(data: bytes, uri: str) -> str:
    """Identity of a batch that belongs to no table: its content and its place.

    Such a batch is quarantined for where it landed, not for its bytes: the same file sent under a table's name
    is a new batch (see :func:`batch_id`), while the misplaced copy seen again is still recognised.
    """
    return f"{batch_id(data)}-at-{batch_id(uri.encode())[:8]}"


def identify(uri: str, landing_uri: str, contract: Contract) -> BatchRef:
    """Table from the first folder below the landing root (``<table>/...``) or the file name (``<table>-...``)."""
    relative = uri[len(landing_uri.rstrip("/")) + 1 :] if uri.startswith(landing_uri.rstrip("/")) else uri
    parts = relative.split("/")
    name = parts[-1]
    table = parts[0] if len(parts) > 1 and parts[0] in contract.tables else None
    if table is None:
        table = next(
            (t for t in sorted(contract.tables, key=len, reverse=True) if name.startswith((f"{t}-", f"{t}_", f"{t}."))),
            None,
        )
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return BatchRef(uri=uri, table=table, file_format=FORMATS.get(suffix))


@dataclass(frozen=True)
class Readout:
    """A batch as read: one row per record, and the records that could not be read as rows.

    ``unreadable`` maps a row position to why its record was not read (e.g. ``line 7: 9 field(s) where the header
    has 8``); that row holds no value.
    """

    frame: pd.DataFrame
    unreadable: dict[int, str] = field(default_factory=dict)


def read_batch(data: bytes, ref: BatchRef) -> Readout:
    """Parse a batch's bytes. CSV cells stay text: types are the contract's job, not the reader's."""
    if not data:
        raise UnusableBatch("empty file (0 bytes)")
    if ref.table is None:
        raise UnusableBatch(
            f"cannot tell which table {ref.name!r} belongs to: put it under <table>/ or name it <table>-..."
        )
    if ref.file_format == "parquet":
        try:
            # integers as nullable integers: a column with one null would otherwise turn float64 and lose digits
            return Readout(pq.read_table(io.BytesIO(data)).to_pandas(types_mapper=exact_integers))
        except (pa.ArrowInvalid, OSError) as exc:
            raise UnusableBatch(f"not a readable parquet file ({_first_line(exc)})") from exc
    if ref.file_format == "csv":
        return _read_csv(data)
    raise UnusableBatch(f"unsupported file type {ref.name!r}: closedloop reads .parquet and .csv")


@dataclass(frozen=True)
class Chunk:
    """Consecutive records of a batch read as one frame: ``rows`` gives each frame row's row in the batch.

    ``unreadable`` is keyed by the frame's row positions (see :class:`Readout`).
    """

    frame: pd.DataFrame
    unreadable: dict[int, str]
    rows: np.ndarray


def is_large(data: bytes, ref: BatchRef, rows_per_chunk: int) -> bool:
    """Whether a batch holds more than ``rows_per_chunk`` records, from a parquet footer or a CSV's line count.

    A file that cannot say is not large: :func:`read_batch` then reads it, or says why it cannot.
    """
    if ref.table is None or not data:
        return False
    if ref.file_format == "parquet":
        try:
            return bool(pq.ParquetFile(io.BytesIO(data)).metadata.num_rows > rows_per_chunk)
        except (pa.ArrowInvalid, OSError):
            return False
    return ref.file_format == "csv" and data.count(b"\n") > rows_per_chunk


def batch_columns(data: bytes, ref: BatchRef) -> list[str]:
    """The column names a batch holds (parquet schema, CSV header), without reading its rows."""
    try:
        if ref.file_format == "parquet":
            return [str(name) for name in pq.ParquetFile(io.BytesIO(data)).schema_arrow.names]
        first = data[: data.find(b"\n") if b"\n" in data else len(data)].decode("utf-8-sig")
        return next(csv.reader([first]), [])
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise UnusableBatch(f"cannot read the columns of {ref.name!r} ({_first_line(exc)})") from exc


def read_chunks(data: bytes, ref: BatchRef, rows_per_chunk: int, columns: list[str] | None = None) -> Generator[Chunk]:
    """A batch as chunks of at most ``rows_per_chunk`` records, so memory follows the chunk, not the batch.

    A batch that fits in one chunk is read by :func:`read_batch` (one chunk). A parquet file is read batch by
    batch; a CSV file through pandas' chunked reader, its ragged lines (see :class:`Readout`) coming last as
    empty rows. ``columns``: only these (they must be in the batch, see :func:`batch_columns`). Errors that make
    the whole batch unusable raise :class:`UnusableBatch`, at the latest from the chunk where the reader meets them.
    """
    if not is_large(data, ref, rows_per_chunk):
        readout = read_batch(data, ref)  # raises UnusableBatch with the reason
        frame = readout.frame if columns is None else readout.frame[columns]
        yield Chunk(frame, readout.unreadable, np.arange(len(frame), dtype=np.int64))
        return
    if ref.file_format == "parquet":
        yield from _parquet_chunks(data, rows_per_chunk, columns)
        return
    yield from _csv_chunks(data, rows_per_chunk, columns)


def _parquet_chunks(data: bytes, rows_per_chunk: int, columns: list[str] | None) -> Iterator[Chunk]:
    try:
        file = pq.ParquetFile(io.BytesIO(data), pre_buffer=False)  # no whole row group buffered ahead
        start = 0
        for batch in file.iter_batches(batch_size=rows_per_chunk, columns=columns, use_threads=False):
            frame = pa.Table.from_batches([batch]).to_pandas(types_mapper=exact_integers)
            yield Chunk(frame, {}, np.arange(start, start + len(frame), dtype=np.int64))
            start += len(frame)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnusableBatch(f"not a readable parquet file ({_first_line(exc)})") from exc


def _csv_chunks(data: bytes, rows_per_chunk: int, columns: list[str] | None) -> Iterator[Chunk]:
    _check_csv_bytes(data)
    ragged = _ragged(data)
    source = data if ragged is None else ragged.readable.encode("utf-8")
    positions = None if ragged is None else np.asarray(ragged.positions, dtype=np.int64)
    header: list[str] = []
    try:
        reader = pd.read_csv(
            io.BytesIO(source),
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
            chunksize=rows_per_chunk,
            usecols=columns,
        )
        start = 0
        for frame in reader:
            if not header:
                _check_header(frame)
                header = [str(c) for c in frame.columns]
            rows = np.arange(start, start + len(frame), dtype=np.int64)
            start += len(frame)
            frame.index = pd.RangeIndex(len(frame))
            yield Chunk(
                frame if columns is None else frame[columns], {}, rows if positions is None else positions[rows]
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise UnusableBatch(f"not a readable CSV file ({_first_line(exc)})") from exc
    if ragged is not None and ragged.unreadable:  # the lines that could not be read, as empty rows
        lines = sorted(ragged.unreadable)
        frame = pd.DataFrame({c: pd.Series([None] * len(lines), dtype=object) for c in columns or header})
        why = {i: ragged.unreadable[line] for i, line in enumerate(lines)}
        yield Chunk(frame, why, np.asarray(lines, dtype=np.int64))


def exact_integers(arrow_type: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """A ``types_mapper`` for Arrow's ``to_pandas``: integer columns as pandas' nullable integers, never float64."""
    if pa.types.is_signed_integer(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_unsigned_integer(arrow_type):
        return pd.UInt64Dtype()
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_csv_bytes(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnusableBatch(
            f"CSV is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (re-export it as UTF-8)"
        ) from exc
    if b"\x00" in data[:4096]:
        raise UnusableBatch("not a CSV file: it holds binary data")


def _check_header(frame: pd.DataFrame) -> None:
    if len(frame.columns) == 1:
        header = str(frame.columns[0])
        for sep in (";", "\t", "|"):
            if sep in header:
                raise UnusableBatch(
                    f"CSV header {header[:60]!r} is one column: the file is delimited by {sep!r}; closedloop reads ','"
                )


def _read_csv(data: bytes) -> Readout:
    _check_csv_bytes(data)
    ragged = _ragged(data)
    source = data if ragged is None else ragged.readable.encode("utf-8")
    try:
        frame = pd.read_csv(io.BytesIO(source), dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise UnusableBatch(f"not a readable CSV file ({_first_line(exc)})") from exc
    _check_header(frame)
    if ragged is None:
        return Readout(frame)
    frame.index = pd.Index(ragged.positions)
    return Readout(frame.reindex(pd.RangeIndex(ragged.rows)), ragged.unreadable)


@dataclass(frozen=True)
class _Ragged:
    readable: str  # the header and every record with its field count
    positions: list[int]  # row position of each readable record
    unreadable: dict[int, str]  # row position -> why its record is not read
    rows: int  # records in the file (blank lines are not records)


def _ragged(data: bytes) -> _Ragged | None:
    """The records whose field count is not the header's, with their line numbers; None when there is none.

    The common case (no quotes, every line the header's field count) is decided in one vectorised pass over the
    bytes; quoted files are split by the csv module, whose records may span lines.
    """
    if b'"' not in data and _same_field_counts(np.frombuffer(data, dtype=np.uint8)):
        return None
    text = data.decode("utf-8-sig")
    if b'"' in data and len({len(r) for r in csv.reader(io.StringIO(text, newline="")) if r}) <= 1:
        return None
    lines = io.StringIO(text, newline="").readlines()
    reader = csv.reader(lines)
    header = next((record for record in reader if record), [])
    start, rows = reader.line_num, 0
    kept, positions, unreadable = lines[:start], [], {}
    for record in reader:
        end = reader.line_num
        if record:  # a blank line is no record (pandas skips it too)
            if len(record) == len(header):
                kept.extend(lines[start:end])
                positions.append(rows)
            else:
                unreadable[rows] = f"line {start + 1}: {len(record)} field(s) where the header has {len(header)}"
            rows += 1
        start = end
    return _Ragged("".join(kept), positions, unreadable, rows)


def _same_field_counts(buf: np.ndarray) -> bool:
    """Every non-blank line of an unquoted CSV holds as many commas as the first."""
    ends = np.flatnonzero(buf == ord("\n"))
    bounds = np.concatenate(([-1], ends, [len(buf)]))
    commas = np.concatenate(([0], np.cumsum(buf == ord(","))))  # commas[k]: commas before byte k
    per_line = commas[bounds[1:]] - commas[bounds[:-1] + 1]
    lengths = bounds[1:] - bounds[:-1] - 1
    first = np.minimum(bounds[:-1] + 1, max(len(buf) - 1, 0))
    blank = (lengths == 0) | ((lengths == 1) & (buf[first] == ord("\r")))
    return bool(np.unique(per_line[~blank]).size <= 1)
