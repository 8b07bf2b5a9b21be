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
import os
import re
import shutil
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop import storage
from closedloop.contract import Contract, FileFormat
from closedloop.processes import pid_alive

BLOCK = 1 << 23  # bytes a CSV check or a hash reads at a time: memory stays this, not the file's size
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class UnusableBatch(ValueError):
    """The batch cannot be used as a whole; quarantined with this reason."""


@dataclass(frozen=True)
class BatchRef:
    """A file in the landing zone and what it claims to be."""

    uri: str
    table: str | None  # None when the path names no table of the contract
    file_format: str | None  # "parquet", "csv" or None when the extension is unknown
    fmt: FileFormat | None = None  # how the table's files are written (its contract's ``file``), when not the default

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]


def batch_id(data: bytes) -> str:
    """Content address of a batch: the first 20 hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:20]


def unplaced_id(content_id: str, uri: str) -> str:
    """Identity of a batch that belongs to no table: its content (its :func:`batch_id`) and its place.

    Such a batch is quarantined for where it landed, not for its bytes: the same file sent under a table's name
    is a new batch (see :func:`batch_id`), while the misplaced copy seen again is still recognised.
    """
    return f"{content_id}-at-{batch_id(uri.encode())[:8]}"


def work_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A private temporary folder named by this process: one a killed ingest left behind is known as such."""
    return tempfile.TemporaryDirectory(prefix=f"closedloop-{kind}-{os.getpid()}-")


def sweep_work_dirs(root: str | None = None) -> list[str]:
    """Remove the temporary folders (:func:`work_dir`) of processes that no longer run: what a kill -9 left."""
    removed = []
    for path in sorted(Path(root or tempfile.gettempdir()).glob("closedloop-*-*-*")):
        found = re.fullmatch(r"closedloop-[a-z]+-(\d+)-.+", path.name)
        if found and path.is_dir() and not pid_alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


@dataclass(frozen=True)
class SentFile:
    """A batch's bytes as a private local file, and their :func:`batch_id`.

    The file is a copy taken once (from the landing zone or an object store), so the bytes that are read are
    the bytes that were hashed, whatever happens to the landing file meanwhile, and memory never holds them whole.
    """

    path: Path
    content_id: str


@contextmanager
def fetched(uri: str, endpoint_url: str | None = None) -> Iterator[SentFile]:
    """A private copy of the object at ``uri`` for as long as the context lasts."""
    with work_dir("sent") as tmp:
        path = storage.download_file(uri, Path(tmp) / "sent", endpoint_url)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(BLOCK):
                digest.update(block)
        yield SentFile(path, digest.hexdigest()[:20])


def identify(uri: str, landing_uri: str, contract: Contract) -> BatchRef:
    """Table from the first folder below the landing root (``<table>/...``) or the file name (``<table>-...``).

    A file that names no table belongs to the table of a one-table contract. The table's ``file`` settings say
    how it is written; its ``format`` wins over the extension.
    """
    relative = uri[len(landing_uri.rstrip("/")) + 1 :] if uri.startswith(landing_uri.rstrip("/")) else uri
    parts = relative.split("/")
    name = parts[-1]
    table = parts[0] if len(parts) > 1 and parts[0] in contract.tables else None
    if table is None:
        table = next(
            (t for t in sorted(contract.tables, key=len, reverse=True) if name.startswith((f"{t}-", f"{t}_", f"{t}."))),
            None,
        )
    if table is None and len(contract.tables) == 1:  # a file of a one-table contract is of that table
        table = next(iter(contract.tables))
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    fmt = contract.tables[table].file if table is not None else None
    if fmt is None or fmt == FileFormat():
        return BatchRef(uri=uri, table=table, file_format=FORMATS.get(suffix))
    # a delimiter or a header-less layout only a CSV has says what a file of any name (german.data) is
    delimited = "csv" if fmt.delimiter != "," or not fmt.header else None
    return BatchRef(uri=uri, table=table, file_format=fmt.format or FORMATS.get(suffix) or delimited, fmt=fmt)


@dataclass(frozen=True)
class Readout:
    """A batch as read: one row per record, and the records that could not be read as rows.

    ``unreadable`` maps a row position to why its record was not read (e.g. ``line 7: 9 field(s) where the header
    has 8``); that row holds no value.
    """

    frame: pd.DataFrame
    unreadable: dict[int, str] = field(default_factory=dict)


def read_batch(path: Path, ref: BatchRef) -> Readout:
    """Parse a batch's file. CSV cells stay text: types are the contract's job, not the reader's."""
    _check_readable(path, ref)
    if ref.file_format == "parquet":
        try:
            # integers as nullable integers: a column with one null would otherwise turn float64 and lose digits
            return Readout(pq.read_table(path).to_pandas(types_mapper=exact_integers))
        except (pa.ArrowInvalid, OSError) as exc:
            raise UnusableBatch(f"not a readable parquet file ({_first_line(exc)})") from exc
    with work_dir("csv") as tmp:
        scan = _scan_csv(_normalised(path, ref, Path(tmp)), Path(tmp), _added_lines(ref))
        frame = _read_csv(scan.source)
        _check_header(frame, ref)
        if not scan.unreadable:
            return Readout(frame)
        frame.index = pd.Index(scan.batch_rows(np.arange(len(frame), dtype=np.int64)))
        return Readout(frame.reindex(pd.RangeIndex(scan.rows)), scan.unreadable)


def _check_readable(path: Path, ref: BatchRef) -> None:
    if not path.stat().st_size:
        raise UnusableBatch("empty file (0 bytes)")
    if ref.table is None:
        raise UnusableBatch(
            f"cannot tell which table {ref.name!r} belongs to: put it under <table>/ or name it <table>-..."
        )
    if ref.file_format not in ("parquet", "csv"):
        raise UnusableBatch(f"unsupported file type {ref.name!r}: closedloop reads .parquet and .csv")


@dataclass(frozen=True)
class Chunk:
    """Consecutive records of a batch read as one frame: ``rows`` gives each frame row's row in the batch.

    ``unreadable`` is keyed by the frame's row positions (see :class:`Readout`).
    """

    frame: pd.DataFrame
    unreadable: dict[int, str]
    rows: np.ndarray


def is_large(path: Path, ref: BatchRef, rows_per_chunk: int) -> bool:
    """Whether a batch holds more than ``rows_per_chunk`` records, from a parquet footer or a CSV's line count.

    A file that cannot say is not large: :func:`read_batch` then reads it, or says why it cannot.
    """
    if ref.table is None or not path.stat().st_size:
        return False
    if ref.file_format == "parquet":
        try:
            return bool(pq.ParquetFile(path).metadata.num_rows > rows_per_chunk)
        except (pa.ArrowInvalid, OSError):
            return False
    if ref.file_format != "csv":
        return False
    lines = 0
    with path.open("rb") as handle:
        while (block := handle.read(BLOCK)) and lines <= rows_per_chunk:
            lines += block.count(b"\n")
    return lines > rows_per_chunk


def batch_columns(path: Path, ref: BatchRef) -> list[str]:
    """The column names a batch holds (parquet schema, CSV header), without reading its rows."""
    try:
        if ref.file_format == "parquet":
            return [str(name) for name in pq.ParquetFile(path).schema_arrow.names]
        if ref.fmt is not None and not ref.fmt.header:
            return list(ref.fmt.columns or [])
        with path.open("rb") as handle:
            first = handle.readline(BLOCK)
        return _fields(first.decode("utf-8-sig"), ref.fmt)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise UnusableBatch(f"cannot read the columns of {ref.name!r} ({_first_line(exc)})") from exc


def read_chunks(path: Path, ref: BatchRef, rows_per_chunk: int, columns: list[str] | None = None) -> Generator[Chunk]:
    """A batch as chunks of at most ``rows_per_chunk`` records, so memory follows the chunk, not the batch.

    A batch that fits in one chunk is read by :func:`read_batch` (one chunk). A parquet file is read batch by
    batch; a CSV file through pandas' chunked reader, its ragged lines (see :class:`Readout`) coming last as
    empty rows. ``columns``: only these (they must be in the batch, see :func:`batch_columns`). Errors that make
    the whole batch unusable raise :class:`UnusableBatch`, at the latest from the chunk where the reader meets them.
    """
    if not is_large(path, ref, rows_per_chunk):
        readout = read_batch(path, ref)  # raises UnusableBatch with the reason
        frame = readout.frame if columns is None else readout.frame[columns]
        yield Chunk(frame, readout.unreadable, np.arange(len(frame), dtype=np.int64))
        return
    if ref.file_format == "parquet":
        yield from _parquet_chunks(path, rows_per_chunk, columns)
        return
    with work_dir("csv") as tmp:
        yield from _csv_chunks(
            _scan_csv(_normalised(path, ref, Path(tmp)), Path(tmp), _added_lines(ref)), rows_per_chunk, columns, ref
        )


def _parquet_chunks(path: Path, rows_per_chunk: int, columns: list[str] | None) -> Iterator[Chunk]:
    try:
        file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)  # pages read as needed, not whole row groups
        start = 0
        for batch in file.iter_batches(batch_size=rows_per_chunk, columns=columns, use_threads=False):
            frame = pa.Table.from_batches([batch]).to_pandas(types_mapper=exact_integers)
            yield Chunk(frame, {}, np.arange(start, start + len(frame), dtype=np.int64))
            start += len(frame)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnusableBatch(f"not a readable parquet file ({_first_line(exc)})") from exc


def _csv_chunks(scan: _CsvScan, rows_per_chunk: int, columns: list[str] | None, ref: BatchRef) -> Iterator[Chunk]:
    header: list[str] = []
    try:
        reader = _read_csv(scan.source, chunksize=rows_per_chunk, usecols=columns)
        start = 0
        for frame in reader:
            if not header:
                _check_header(frame, ref)
                header = [str(c) for c in frame.columns]
            rows = scan.batch_rows(np.arange(start, start + len(frame), dtype=np.int64))
            start += len(frame)
            frame.index = pd.RangeIndex(len(frame))
            yield Chunk(frame if columns is None else frame[columns], {}, rows)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise UnusableBatch(f"not a readable CSV file ({_first_line(exc)})") from exc
    if scan.unreadable:  # the lines that could not be read, as empty rows
        lines = sorted(scan.unreadable)
        frame = pd.DataFrame({c: pd.Series([None] * len(lines), dtype=object) for c in columns or header})
        why = {i: scan.unreadable[line] for i, line in enumerate(lines)}
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


def _read_csv(source: Path, **options: Any) -> Any:
    try:
        return pd.read_csv(source, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8", **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise UnusableBatch(f"not a readable CSV file ({_first_line(exc)})") from exc


def _check_header(frame: pd.DataFrame, ref: BatchRef) -> None:
    if len(frame.columns) == 1 and (ref.fmt is None or ref.fmt.header):
        header = str(frame.columns[0])
        for sep in (";", "\t", "|"):
            if sep in header:
                raise UnusableBatch(
                    f"CSV header {header[:60]!r} is one column: the file is delimited by {sep!r}; set "
                    f"tables.{ref.table or '<table>'}.file.delimiter: {sep!r} in the contract"
                )


def _fields(line: str, fmt: FileFormat | None) -> list[str]:
    """The fields of one line of a table's CSV file, split by its delimiter."""
    line = line.rstrip("\r\n")
    if fmt is not None and fmt.delimiter == "whitespace":
        return re.split(r"[ \t]+", line.strip()) if line.strip() else []
    return next(csv.reader([line], delimiter=fmt.delimiter if fmt is not None else ","), [])


def _normalised(path: Path, ref: BatchRef, tmp: Path) -> Path:
    """A CSV file as closedloop reads it: comma-delimited, with a header line.

    A file of another delimiter, or without a header (its field names from the contract's ``file.columns``), is
    rewritten to ``tmp`` line by line, blank lines kept so line numbers stay the file's; memory is a line. Other
    files are read as they are.
    """
    fmt = ref.fmt
    if fmt is None or (fmt.delimiter == "," and fmt.header):
        return path
    out = tmp / "normalised.csv"
    try:
        with (
            path.open(encoding="utf-8-sig", newline="") as source,
            out.open("w", encoding="utf-8", newline="") as target,
        ):
            writer = csv.writer(target, lineterminator="\n")
            if not fmt.header:
                writer.writerow(fmt.columns or [])
            if fmt.delimiter == "whitespace":
                for line in source:
                    writer.writerow(_fields(line, fmt))
            else:
                reader = csv.reader(source, delimiter=fmt.delimiter)
                for record in _checked(reader):
                    writer.writerow(record)
    except UnicodeDecodeError as exc:
        why = f"CSV is not UTF-8: byte 0x{exc.object[exc.start]:02x} (re-export it as UTF-8)"
        raise UnusableBatch(why) from exc
    return out


@dataclass(frozen=True)
class _CsvScan:
    """A CSV file checked line by line: the file pandas reads, and the records it cannot read as rows."""

    source: Path  # the file itself, or a copy holding the header and every record with the header's field count
    unreadable: dict[int, str]  # row position -> why its record is not read
    rows: int  # records in the file (blank lines are not records); 0 when every record is readable (not counted)

    def batch_rows(self, readable: np.ndarray) -> np.ndarray:
        """The batch rows of the ``readable``-th records of ``source``: the unreadable rows are skipped."""
        if not self.unreadable:
            return readable
        skipped = np.asarray(sorted(self.unreadable), dtype=np.int64)
        gaps = skipped - np.arange(len(skipped), dtype=np.int64)  # readable records before each skipped row
        return readable + np.searchsorted(gaps, readable, side="right")


def _added_lines(ref: BatchRef) -> int:
    """Lines before the file's first: the header line of a header-less file (see :func:`_normalised`)."""
    return 1 if ref.fmt is not None and not ref.fmt.header else 0


def _scan_csv(path: Path, tmp: Path, added_lines: int = 0) -> _CsvScan:
    """Check a CSV file block by block (UTF-8, text, every record the header's field count): memory is a block.

    The common case (no quotes, every line the header's field count) is decided by counting commas per line,
    vectorised. Otherwise the csv module reads the records (a quoted one may span lines) and those whose field
    count is not the header's are set aside with their line numbers, the rest copied to a file pandas reads.
    """
    plain, fields, offset, carry = True, -1, 0, b""
    with path.open("rb") as handle:
        while True:
            block = handle.read(BLOCK)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            part, carry = data[:cut], data[cut:]
            if offset == 0 and b"\x00" in part[:4096]:
                raise UnusableBatch("not a CSV file: it holds binary data")
            try:
                part.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte, at = part[exc.start], offset + exc.start
                why = f"CSV is not UTF-8: byte 0x{byte:02x} at offset {at} (re-export it as UTF-8)"
                raise UnusableBatch(why) from exc
            if plain and b'"' in part:
                plain = False
            if plain and part:
                counts = _field_counts(part)
                fields = counts[0] if fields < 0 and len(counts) else fields
                plain = bool((counts == fields).all())
            offset += len(part)
            if not block:
                break
    if plain:
        return _CsvScan(path, {}, 0)
    return _records(path, tmp / "readable.csv", added_lines)


def _field_counts(part: bytes) -> np.ndarray:
    """Fields on each non-blank line of unquoted CSV text made of whole lines."""
    buf = np.frombuffer(part, dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(buf[:-1] == ord("\n")) + 1))
    commas = np.add.reduceat(buf == ord(","), starts, dtype=np.int64)
    lengths = np.diff(np.append(starts, len(buf)))
    ends = starts + lengths - 1
    content = lengths - (buf[ends] == ord("\n")) - (buf[np.maximum(ends - 1, 0)] == ord("\r")) * (lengths > 1)
    return np.asarray(commas[content > 0] + 1, dtype=np.int64)


def _checked(reader: Any) -> Iterator[list[str]]:
    try:
        yield from reader
    except csv.Error as exc:
        raise UnusableBatch(f"not a readable CSV file (line {reader.line_num}: {exc})") from exc


def _records(path: Path, readable: Path, added_lines: int = 0) -> _CsvScan:
    """Read a CSV file record by record; set aside those whose field count is not the header's (see ``_scan_csv``)."""
    lines: list[str] = []

    def taken(handle: io.TextIOBase) -> Iterator[str]:
        for line in handle:
            lines.append(line)
            yield line

    header: list[str] | None = None
    rows, start, unreadable = 0, 0, {}
    with path.open(encoding="utf-8-sig", newline="") as source, readable.open("w", encoding="utf-8", newline="") as out:
        reader = csv.reader(taken(source))
        for record in _checked(reader):
            text = "".join(lines)
            lines.clear()
            if record and header is None:
                header = record
                out.write(text)
            elif record and len(record) == len(header or []):
                out.write(text)
                rows += 1
            elif record:
                unreadable[rows] = (
                    f"line {start + 1 - added_lines}: {len(record)} field(s) where the header has {len(header or [])}"
                )
                rows += 1
            start = reader.line_num
    if not unreadable:
        readable.unlink()
        return _CsvScan(path, {}, rows)
    return _CsvScan(readable, unreadable, rows)
