"""Landing-zone batches: find them, tell which table each belongs to, and read their bytes into Arrow.

A batch is one file. Its identity is the SHA-256 of its bytes, so the same data under another name is
still the same batch. Reading never guesses: an unreadable file, a CSV that is not UTF-8 or uses the
wrong delimiter, or a file of an unknown kind raises :class:`UnusableBatch` with the reason.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

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


def read_frame(data: bytes, ref: BatchRef) -> pd.DataFrame:
    """Parse a batch's bytes. CSV cells stay text: types are the contract's job, not the reader's."""
    if not data:
        raise UnusableBatch("empty file (0 bytes)")
    if ref.table is None:
        raise UnusableBatch(
            f"cannot tell which table {ref.name!r} belongs to: put it under <table>/ or name it <table>-..."
        )
    if ref.file_format == "parquet":
        try:
            return pq.read_table(io.BytesIO(data)).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise UnusableBatch(f"not a readable parquet file ({_first_line(exc)})") from exc
    if ref.file_format == "csv":
        return _read_csv(data)
    raise UnusableBatch(f"unsupported file type {ref.name!r}: closedloop reads .parquet and .csv")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_csv(data: bytes) -> pd.DataFrame:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnusableBatch(
            f"CSV is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (re-export it as UTF-8)"
        ) from exc
    if b"\x00" in data[:4096]:
        raise UnusableBatch("not a CSV file: it holds binary data")
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise UnusableBatch(f"not a readable CSV file ({_first_line(exc)})") from exc
    if len(frame.columns) == 1:
        header = str(frame.columns[0])
        for sep in (";", "\t", "|"):
            if sep in header:
                raise UnusableBatch(
                    f"CSV header {header[:60]!r} is one column: the file is delimited by {sep!r}; closedloop reads ','"
                )
    return frame
