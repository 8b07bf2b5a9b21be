"""Draft a dataset contract from the files a team already has (``closedloop contract init``).

The files are profiled as they are: delimiter (or runs of blanks), header row or not, headers that are not
identifiers, an unnamed row index, null tokens such as ``NA``, sentinel codes such as 96/98 or 365243, coded
categories, types, ranges and the label's positive class. Files under :data:`WHOLE_FILE_ROWS` rows are read whole;
larger ones are read as a stream and profiled on their first :data:`HEAD_ROWS` rows plus a uniform sample of the
rest, so memory stays bounded. The draft is YAML with a ``# CHECK:`` comment wherever a person must decide, and a
list of findings the command prints.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

HEAD_ROWS = 50_000
SAMPLE_ROWS = 50_000
WHOLE_FILE_ROWS = 200_000
SNIFF_BYTES = 64 * 1024
MAX_CATEGORIES = 50
TABLE = "applications"

NULL_TOKENS = ("NA", "N/A", "n/a", "NaN", "nan", "NULL", "null", "None", "none", "-", "--", "?", "#N/A", "missing")
TEXT_NULL_TOKENS = frozenset({"NA", "N/A", "n/a", "NaN", "nan", "NULL", "null", "#N/A"})
SENTINELS = (9, 99, 999, 9999, 99999, 96, 97, 98, 365243, -1, -9, -99, -999, -9999)
AGE_BANDS = [18, 25, 35, 50, 65, 101]

_SENSITIVE_NAME = re.compile(
    r"(^|_)((age|sex|race)($|_)|gender|birth|ethnic|marital|marriage|religio|nation|foreign|citizen|disab|pregnan)"
)
_AGE_NAME = re.compile(r"(^|_)(age($|_)|birth)")
_PROXY_NAME = re.compile(r"(^|_)(post_?code|zip|postal|region|district|city|address|county|neighbo)")
_CODED_NAME = re.compile(r"sex|gender|educ|marri|marital|status")
_ID_NAME = re.compile(r"^(id|.*_id|sk_id_.*)$")
_DAYS_NAME = re.compile(r"(^|_)days?($|_)")
_INDEX_NAMES = frozenset({"index", "idx", "#"})
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_CODE = re.compile(r"^[A-Z]+\d+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(?P<tz>Z|[+-]\d{2}:?\d{2})?)?$")
_BOOL_TEXT = frozenset({"true", "false"})
_OTHER_DATE = re.compile(r"^(\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}/\d{1,2}/\d{1,2})([T ]\d{1,2}:\d{2}(:\d{2})?)?$")
_PERCENT = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)\s?%$")
_MONEY = re.compile(r"^[+-]?[$€£¥]\s?[+-]?\d[\d,. ]*$|^[+-]?\d[\d,. ]*\s?[$€£¥]$|^\d{1,3}(,\d{3})+(\.\d+)?$")
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
# names of a label's values, lower-cased: the outcome a credit model predicts, and its opposite
POSITIVE_WORDS = frozenset(
    {"bad", "yes", "y", "true", "t", "default", "defaulted", "charged off", "charged_off", "late", "delinquent",
     "fraud", "churn", "churned", "positive", "pos", "fail", "failed", "rejected", "denied", "high", "risky"}
)  # fmt: skip
NEGATIVE_WORDS = frozenset(
    {"good", "no", "n", "false", "f", "paid", "fully paid", "fully_paid", "repaid", "current", "ok", "normal",
     "negative", "neg", "pass", "passed", "approved", "low", "safe"}
)  # fmt: skip


class DraftError(ValueError):
    """The files cannot be drafted into a contract; the message names the file, the column and the fix."""


@dataclass(frozen=True)
class Finding:
    """One thing the profiler inferred, and what a person should check about it (if anything)."""

    field: str
    inferred: str
    check: str | None = None


@dataclass(frozen=True)
class Draft:
    """A drafted contract: its YAML text (with ``# CHECK:`` comments), the same as data, and the findings."""

    text: str
    contract: dict[str, Any]
    findings: list[Finding]
    rows: int
    rows_profiled: int

    @property
    def checks(self) -> list[Finding]:
        return [f for f in self.findings if f.check]


@dataclass
class _Column:
    """What the profiler learned about one file column."""

    header: str
    name: str
    spec: dict[str, Any] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- reading ---------------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """The field delimiter of ``path``: the one character that splits almost every line alike, or runs of blanks."""
    try:
        with path.open("rb") as raw:
            head = raw.read(SNIFF_BYTES)
    except OSError as exc:
        raise DraftError(f"{path}: cannot read ({exc.strerror})") from exc
    text = head.decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise DraftError(f"{path}: the file is empty: give a file with a header row or at least one data row")
    best: tuple[float, int, str] | None = None
    for delim in (",", ";", "\t", "|"):
        counts = [len(row) for row in csv.reader(lines, delimiter=delim)]
        mode, n = Counter(counts).most_common(1)[0]
        share = n / len(counts)
        if mode >= 2 and share >= 0.99 and (best is None or (share, mode) > best[:2]):
            best = (share, mode, delim)
    if best is not None:
        return best[2]
    counts = [len(re.split(r"[ \t]+", line.strip())) for line in lines]
    mode, n = Counter(counts).most_common(1)[0]
    if mode >= 2 and n / len(counts) >= 0.99:
        return "whitespace"
    raise DraftError(
        f"{path}: cannot tell the field delimiter (tried ',', ';', tab, '|' and runs of blanks): "
        "every line should have the same number of fields"
    )


def _rows(path: Path, delimiter: str) -> Iterator[list[str]]:
    """The file's rows as lists of text fields, streamed (quoted fields and CRLF handled by the csv module).

    A parquet file (``delimiter`` ``"parquet"``) gives its column names, then its values as a CSV export writes
    them, so that one profiler judges both kinds of file.
    """
    if delimiter == "parquet":
        yield from _parquet_rows(path)
        return
    with path.open(encoding="utf-8-sig", newline="", errors="replace") as source:
        if delimiter == "whitespace":
            for line in source:
                if line.strip():
                    yield re.split(r"[ \t]+", line.strip())
        else:
            for row in csv.reader(source, delimiter=delimiter):
                if row and any(cell.strip() for cell in row):
                    yield row


def _parquet_rows(path: Path) -> Iterator[list[str]]:
    """A parquet file's column names, then its rows as text, read in record batches (memory stays bounded)."""
    import pyarrow.parquet as pq

    try:
        data = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DraftError(f"{path}: not a readable parquet file ({exc}): export the table again") from exc
    yield list(data.schema_arrow.names)
    for batch in data.iter_batches(batch_size=10_000):
        columns = [[_text(v) for v in column.to_pylist()] for column in batch.columns]
        yield from (list(row) for row in zip(*columns, strict=True))


def _text(value: Any) -> str:
    """A parquet value as a CSV export writes it: missing and NaN empty, times in ISO 8601 (with their offset)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


@dataclass
class _Sample:
    first: list[str]
    rows: list[list[str]]
    total: int
    head: int  # rows[:head] are the file's first rows in order; the rest a uniform sample of the later ones


def _sample(paths: Sequence[Path], delimiter: str, seed: int = 0) -> _Sample:
    """Row 1 of the first file, then every later row up to WHOLE_FILE_ROWS, else the head plus a reservoir."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
    first: list[str] | None = None
    kept: list[list[str]] = []
    reservoir: list[list[str]] | None = None
    tail_seen = 0
    total = 0
    for path in paths:
        rows = _rows(path, delimiter)
        header = next(rows, None)
        if header is None:
            raise DraftError(f"{path}: the file is empty")
        if first is None:
            first = header
        elif delimiter == "parquet" and header != first:
            raise DraftError(f"{path}: its columns differ from those of {paths[0]}: give the files of one table only")
        elif header != first:
            rows = _chain([header], rows)  # a later file without the header row: its row 1 is data
        for row in rows:
            total += 1
            if reservoir is None:
                kept.append(row)
                if len(kept) == WHOLE_FILE_ROWS:
                    reservoir = rng.sample(kept[HEAD_ROWS:], SAMPLE_ROWS)
                    tail_seen = WHOLE_FILE_ROWS - HEAD_ROWS
                    del kept[HEAD_ROWS:]
            else:
                tail_seen += 1
                slot = rng.randrange(tail_seen)
                if slot < SAMPLE_ROWS:
                    reservoir[slot] = row
    if first is None:
        raise DraftError(f"{paths[0]}: the file is empty")
    width = len(first)
    read = kept + (reservoir or [])
    for position, row in enumerate(read[:1000]):
        if len(row) != width:
            raise DraftError(
                f"{paths[0]}: row {position + 2} has {len(row)} fields, row 1 has {width}: "
                "fix the file or check its delimiter"
            )
    return _Sample(first=first, rows=[row for row in read if len(row) == width], total=total, head=len(kept))


def _chain(head: list[list[str]], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from head
    yield from rest


# --- values ------------------------------------------------------------------------------------------------------


def _is_number(value: str) -> bool:
    return bool(_FLOAT.match(value.strip()))


def _kind(value: str) -> str:
    value = value.strip()
    if not value:
        return "empty"
    if _INT.match(value):
        return "int"
    if _FLOAT.match(value):
        return "float"
    return "text"


def _number(value: str) -> float:
    return float(value.strip())


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _nice_up(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (0 for 0)."""
    if value <= 0:
        return 0.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def identifier(header: str) -> str:
    """A contract identifier for a file header: CamelCase and any punctuation become snake_case (<= 63 chars).

    Accented letters lose their accents (``Âge`` -> ``age``); other non-ASCII text is dropped like punctuation.
    """
    text = unicodedata.normalize("NFKD", header.strip()).encode("ascii", "ignore").decode()
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).lower().strip("_")
    text = re.sub(r"_+", "_", text) or "column"
    if text[0].isdigit():
        text = f"c_{text}"
    if len(text) > 63:
        text = text[:58].rstrip("_") + "_" + hashlib.sha256(header.encode()).hexdigest()[:4]
    return text


def _unique_names(headers: list[str]) -> list[str]:
    names: list[str] = []
    for header in headers:
        base = identifier(header)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


# --- the header --------------------------------------------------------------------------------------------------


def _has_header(first: list[str], rows: list[list[str]]) -> bool:
    """Row 1 is a header unless at least half of its fields look like the values below them."""
    if not rows:
        return any(_kind(v) == "text" for v in first)
    like_data = 0
    for i, value in enumerate(first):
        column = [row[i].strip() for row in rows[:5000]]
        kinds = Counter(_kind(v) for v in column if v)
        kind = kinds.most_common(1)[0][0] if kinds else "empty"
        own = _kind(value)
        numeric = {"int", "float"}
        if (own in numeric and kind in numeric) or (own == kind == "text" and value.strip() in set(column)):
            like_data += 1
    return like_data < 0.5 * len(first)


# --- one column ---------------------------------------------------------------------------------------------------


@dataclass
class _Profile:
    values: list[str]  # stripped, non-empty, not a null token
    empty: int
    tokens: Counter[str]
    kind: str  # int | float | text | empty
    numbers: list[float]


def _profile(raw: list[str]) -> _Profile:
    stripped = [v.strip() for v in raw]
    filled = [v for v in stripped if v]
    empty = len(stripped) - len(filled)
    numeric_rest = [v for v in filled if v not in NULL_TOKENS]
    numeric = bool(numeric_rest) and all(_is_number(v) for v in numeric_rest)
    tokens_allowed = set(NULL_TOKENS) if numeric else TEXT_NULL_TOKENS
    tokens = Counter(v for v in filled if v in tokens_allowed)
    values = [v for v in filled if v not in tokens_allowed]
    if not values:
        return _Profile(values, empty, tokens, "empty", [])
    if numeric:
        kind = "int" if all(_INT.match(v) for v in values) else "float"
        return _Profile(values, empty, tokens, kind, [_number(v) for v in values])
    return _Profile(values, empty, tokens, "text", [])


def _sentinels(numbers: list[float]) -> list[int | float]:
    """Values that look like codes for 'unknown' rather than measurements (see the module docstring)."""
    if len(numbers) < 20:
        return []
    counts = Counter(numbers)
    floor = max(5, 0.0005 * len(numbers))
    found: list[int | float] = []
    candidates = {float(s) for s in SENTINELS if counts.get(float(s), 0) >= floor}
    rest = sorted(v for v in numbers if v not in candidates)
    if rest:
        low, high = _quantile(rest, 0.001), _quantile(rest, 0.999)
        iqr = _quantile(rest, 0.75) - _quantile(rest, 0.25)
        for v in sorted(candidates):
            above = v > high and v - high > 3 * iqr and rest[-1] < (high + v) / 2
            below = v < low and low - v > 3 * iqr and rest[0] > (low + v) / 2
            if above or below:
                found.append(_plain(v))
    # one frequent value of the opposite sign to the rest (365243 among negative day counts)
    for v, n in counts.most_common(3):
        if n < floor or _plain(v) in found:
            continue
        others = [x for x in numbers if x != v]
        if not others:
            continue
        negative = sum(x <= 0 for x in others) / len(others)
        positive = sum(x >= 0 for x in others) / len(others)
        if (v > 0 and negative >= 0.99 and v == max(numbers)) or (v < 0 and positive >= 0.99 and v == min(numbers)):
            found.append(_plain(v))
    return sorted(found)


def _range(numbers: list[float]) -> tuple[int | float, int | float]:
    low, high = min(numbers), max(numbers)
    lower = 0.0 if low >= 0 else -_nice_up(-low)
    upper = _nice_up(high) if high > 0 else 0.0
    return _plain(lower), _plain(upper)


def _bands(name: str, numbers: list[float]) -> tuple[list[int | float], bool]:
    """Fairness band edges: the usual age bands for an age, else quintile edges; and whether it is an age."""
    if _AGE_NAME.search(name) and numbers and min(numbers) >= 0 and max(numbers) <= 120:
        return list(AGE_BANDS), True
    ordered = sorted(numbers)
    edges = sorted({_plain(round(_quantile(ordered, q), 6)) for q in (0.0, 0.2, 0.4, 0.6, 0.8)})
    top = _plain(math.floor(ordered[-1]) + 1)
    if not edges or top > edges[-1]:
        edges.append(top)
    if len(edges) < 2:
        edges = [_plain(ordered[0]), _plain(ordered[0] + 1)]
    return edges, False


# --- the draft ----------------------------------------------------------------------------------------------------


def _is_row_index(ints: list[int], head: int, total: int) -> bool:
    """Whether a column counts the rows from 0 or 1: in order over the head, unique and in range in the sample."""
    if not ints or ints[0] not in (0, 1):
        return False
    start = ints[0]
    if ints[:head] != list(range(start, start + min(head, len(ints)))):
        return False
    rest = ints[head:]
    return len(set(rest)) == len(rest) and all(start + head <= v < start + total for v in rest)


def _mostly(prof: _Profile, pattern: re.Pattern[str]) -> bool:
    """Whether 99% of a text column's values match ``pattern`` (a way of writing dates)."""
    return prof.kind == "text" and sum(bool(pattern.match(v)) for v in prof.values) >= 0.99 * len(prof.values)


def _check_headers(headers: list[str], path: Path) -> None:
    """Refuses a header row that names two columns alike: ingest could not tell which one a name means."""
    seen: dict[str, int] = {}
    for position, header in enumerate(headers, start=1):
        if header in seen:
            raise DraftError(
                f"{path}: columns {seen[header]} and {position} are both headed {header!r}: ingest cannot tell them "
                "apart; rename one in the file's header row"
            )
        seen[header] = position


def _resolve(given: str, headers: list[str], names: list[str], what: str, path: Path) -> int:
    """The position of a column given by its file header, its identifier or (header-less files) its number."""
    for candidates in (headers, names):
        if given in candidates:
            return candidates.index(given)
    if given.isdigit() and 1 <= int(given) <= len(names):
        return int(given) - 1
    if identifier(given) in names:
        return names.index(identifier(given))
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise DraftError(f"{path}: {what} column {given!r} is not in the file (its columns: {shown})")


def draft_contract(
    paths: Sequence[str | Path],
    *,
    label: str,
    id_column: str | None = None,
    time_column: str | None = None,
    sensitive: Sequence[str] = (),
    name: str | None = None,
    source: str | None = None,
) -> Draft:
    """Profile ``paths`` (one table, one or more files) and draft a contract with ``label`` as the outcome."""
    files = [Path(p) for p in paths]
    if not files:
        raise DraftError("no file given: name the CSV file(s) to draft a contract from")
    for path in files:
        if not path.is_file():
            raise DraftError(f"{path}: no such file")
    parquet = [p.suffix.lower() == ".parquet" for p in files]
    if any(parquet) and not all(parquet):
        raise DraftError(
            f"{files[parquet.index(not parquet[0])]}: give the files of one table in one kind, CSV or parquet"
        )
    delimiter = "parquet" if parquet[0] else _sniff(files[0])
    sample = _sample(files, delimiter)
    has_header = delimiter == "parquet" or _has_header(sample.first, sample.rows)
    if has_header and not sample.rows:
        raise DraftError(
            f"{files[0]}: only a header row, no data: a contract is drafted from the values; give a file with rows"
        )
    rows = sample.rows if has_header else [sample.first, *sample.rows]
    width = len(sample.first)
    if has_header:
        headers = list(sample.first)
        _check_headers(headers, files[0])
        names = _unique_names(headers)
    else:
        headers = [f"col_{i + 1}" for i in range(width)]
        names = list(headers)
    origin = files[0]
    findings: list[Finding] = []
    total = sample.total + (0 if has_header else 1)

    def note(where: str, inferred: str, check: str | None = None) -> None:
        findings.append(Finding(where, inferred, check))

    fmt: dict[str, Any] = {"delimiter": delimiter, "header": has_header}
    if delimiter == "parquet":
        fmt = {"format": "parquet"}
        note("file.format", "a parquet file: its column names are the headers")
    elif has_header:
        note(
            "file.delimiter",
            "fields separated by " + ("runs of blanks" if delimiter == "whitespace" else repr(delimiter)),
        )
        note("file.header", "row 1 is a header")
    else:
        note(
            "file.delimiter",
            "fields separated by " + ("runs of blanks" if delimiter == "whitespace" else repr(delimiter)),
        )
        fmt["columns"] = names
        note(
            "file.columns",
            f"no header row: {width} fields named col_1..col_{width}",
            "name the columns (file.columns) and the columns' `name`s alike",
        )

    columns = [_Column(header=h, name=n) for h, n in zip(headers, names, strict=True)]
    values = [[row[i] for row in rows] for i in range(width)]
    profiles = [_profile(v) for v in values]

    label_at = _resolve(label, headers, names, "label", origin)
    id_at = _resolve(id_column, headers, names, "id", origin) if id_column else None
    time_at = _resolve(time_column, headers, names, "time", origin) if time_column else None
    sensitive_at = {_resolve(s, headers, names, "sensitive", origin) for s in sensitive}
    if label_at in sensitive_at or label_at in (id_at, time_at):
        raise DraftError(
            f"{origin}: column {label!r} is the label and cannot also be the id, time or a sensitive column"
        )

    # --- unnamed row index ---------------------------------------------------------------------------------------
    ignore: list[str] = []
    index_at: int | None = None
    for i, (header, prof) in enumerate(zip(headers, profiles, strict=True)):
        unnamed = has_header and (header.strip() == "" or re.fullmatch(r"Unnamed: \d+", header.strip()) is not None)
        if not (unnamed or (has_header and header.strip().lower() in _INDEX_NAMES)) or prof.kind != "int":
            continue
        if i in (label_at, id_at, time_at) or prof.empty or prof.tokens:
            continue
        if _is_row_index([int(v) for v in prof.numbers], sample.head, sample.total):
            index_at = i
            ignore.append(header)
            note(f"file.ignore[{header!r}]", "a row index (0..n or 1..n): read and dropped, not a key")
            break

    # --- the key -------------------------------------------------------------------------------------------------
    key: str
    key_type = "int"
    generated = False
    if id_at is None:
        for i, (n, prof) in enumerate(zip(names, profiles, strict=True)):
            if i in (label_at, time_at, index_at) or not _ID_NAME.match(n):
                continue
            if prof.values and not prof.empty and not prof.tokens and len(set(prof.values)) == len(prof.values):
                id_at = i
                note(
                    f"tables.{TABLE}.primary_key",
                    f"{n} is unique in the rows read: the row's id",
                    None if total == len(rows) else f"{n} was unique in a sample only: make sure it is unique",
                )
                break
    if id_at is not None:
        key = names[id_at]
        prof = profiles[id_at]
        key_type = "int" if prof.kind == "int" else "string"
        if prof.empty or prof.tokens:
            raise DraftError(f"{origin}: id column {headers[id_at]!r} has empty cells: give another --id or none")
        if len(set(prof.values)) != len(prof.values):
            raise DraftError(
                f"{origin}: id column {headers[id_at]!r} repeats values: give a unique --id or none "
                "(closedloop then generates one per row)"
            )
    else:
        key = "row_id" if "row_id" not in names else "generated_row_id"
        generated = True
        note(
            f"tables.{TABLE}.generated_key",
            f"no id column: closedloop generates {key} from each row's values",
            "if the file has an id column, give it with --id",
        )

    # --- time ----------------------------------------------------------------------------------------------------
    table: dict[str, Any] = {}
    time_ordered = False
    start = "2000-01-01T00:00:00Z"
    iso_dates = [i for i, prof in enumerate(profiles) if _mostly(prof, _DATE) and i not in (label_at, id_at)]
    other_dates = [i for i, prof in enumerate(profiles) if _mostly(prof, _OTHER_DATE) and i not in (label_at, id_at)]
    date_columns = iso_dates + other_dates
    if time_at is None and iso_dates:
        time_at = iso_dates[0]
    if time_at is not None:
        prof = profiles[time_at]
        dated = [_DATE.match(v) for v in prof.values]
        if time_at in other_dates:
            raise DraftError(
                f"{origin}: time column {headers[time_at]!r} holds dates such as {prof.values[0]!r}, which are not "
                "ISO 8601: closedloop reads times as 2024-01-31T00:00:00Z; re-export the column so, or leave out --time"
            )
        if not prof.values or not all(dated):
            raise DraftError(
                f"{origin}: time column {headers[time_at]!r} holds values that are not dates "
                f"(for example {next((v for v, m in zip(prof.values, dated, strict=True) if not m), '')!r}): "
                "give an ISO date/time column with --time, or none"
            )
        table["event_time"] = names[time_at]
        time_ordered = True
        start = f"{min(prof.values)[:4]}-01-01T00:00:00Z"
        aware = all(m is not None and m.group("tz") for m in dated)
        note(
            f"tables.{TABLE}.event_time",
            f"{names[time_at]} holds dates: rows are ordered in time, splits follow time",
            None
            if aware
            else f"{headers[time_at]} has no timezone: closedloop refuses naive times; export it with a UTC offset",
        )
    else:
        if "event_time" in names:  # closedloop adds the as-of time as event_time unless the table names it otherwise
            table["event_time"] = next(n for n in ("ingested_at", "as_of_time", "row_time") if n not in names)
            note(
                f"tables.{TABLE}.event_time",
                f"the file has a column named event_time: the time closedloop adds is named {table['event_time']}",
            )
        table["as_of"] = "ingest"
        note(
            f"tables.{TABLE}.as_of",
            "no time column: each row's time is its ingest time; splits are random (time_ordered: false)",
            "if the rows describe one known instant, set as_of to it (with a timezone)",
        )
    if generated:
        table["generated_key"] = key
    table["primary_key"] = [key]

    # --- the label -----------------------------------------------------------------------------------------------
    label_name = names[label_at]
    classes = _label_classes(profiles[label_at], headers[label_at], origin)
    positive, negative, rate, unlabelled = classes.positive, classes.negative, classes.rate, classes.unlabelled
    note("label.positive", f"{label_name}: {classes.chosen} ({rate:.1%} of labelled rows)", classes.check)
    if unlabelled:
        note("label", f"{unlabelled:,} rows without a label (in the rows read): scored, not trained on")

    # --- columns -------------------------------------------------------------------------------------------------
    token_columns: dict[str, list[int]] = {}
    for i, prof in enumerate(profiles):
        for token in prof.tokens:
            token_columns.setdefault(token, []).append(i)
    outside = {label_at, id_at, time_at}  # not columns: their tokens can only be data-set tokens
    shared_tokens = sorted(t for t, where in token_columns.items() if len(where) >= 2 or outside & set(where))
    added: list[_Column] = []
    for i, (col, prof) in enumerate(zip(columns, profiles, strict=True)):
        if i in (label_at, id_at, time_at, index_at):
            continue
        if i in date_columns:
            ignore.append(col.header)
            note(
                f"file.ignore[{col.header!r}]",
                f"{col.header} holds dates and is not the event time: read and dropped",
                "derive a number from it (for example a formula) if the model needs it"
                if i in iso_dates
                else f"dates such as {prof.values[0]!r}: to order rows by it, re-export it in ISO 8601 with a "
                "timezone (2024-01-31T00:00:00Z) and give it with --time",
            )
            continue
        written = _numbers_as_text(prof)
        if written:
            ignore.append(col.header)
            note(
                f"file.ignore[{col.header!r}]",
                f"{col.header} holds {written}: read and dropped, not typed as text",
                "closedloop does not convert such text: export plain numbers (0.12, 1200.5) to use this column",
            )
            continue
        _draft_column(col, prof, shared_tokens, i in sensitive_at)
        if col.spec.get("exclude") == "free text or identifier":
            ignore.append(col.header)
            note(
                f"file.ignore[{col.header!r}]",
                f"{col.header}: text with more than {MAX_CATEGORIES} distinct values: read and dropped",
                "an identifier or free text? declare it as a column with `exclude:` to keep it for audit",
            )
            continue
        col.spec["name"] = col.name
        derived = _derived(col, prof, i in sensitive_at)
        if derived is not None:
            added.append(derived)
    drafted = [c for i, c in enumerate(columns) if "name" in c.spec and i not in (label_at, id_at, time_at)] + added
    findings.extend(_column_finding(col) for col in drafted)
    if not any(not c.spec.get("sensitive") and not c.spec.get("exclude") for c in drafted):
        looked = [f"{c.name} ({'sensitive' if c.spec.get('sensitive') else c.spec['exclude']})" for c in drafted]
        looked += [f"{h} (read and dropped)" for h in ignore if h.strip()]
        raise DraftError(
            f"{origin}: no column is left as a model input besides the label {headers[label_at]!r} (looked at "
            f"{', '.join(looked) or 'no other column'}): give fewer --sensitive columns, or a file with inputs"
        )
    if shared_tokens:
        note("null_tokens", f"{', '.join(shared_tokens)} mark missing values in several columns")

    # --- headers that are not identifiers ----------------------------------------------------------------------
    renamed = {n: h for h, n in zip(headers, names, strict=True) if has_header and h != n}
    kept = {names[i] for i in (label_at, id_at, time_at) if i is not None} | {
        c.name for c in columns if "name" in c.spec
    }
    renamed = {n: h for n, h in renamed.items() if n in kept}
    if renamed:
        fmt["headers"] = renamed
        note("file.headers", f"{len(renamed)} headers renamed to identifiers (the file keeps its headers)")
    if ignore:
        fmt["ignore"] = ignore
    table["file"] = fmt

    contract_name = identifier(name or origin.stem)
    entity = key if not key.endswith("_id") else key.removesuffix("_id")
    if entity in names or entity == key:
        entity = "row" if generated else "record"
    contract: dict[str, Any] = {
        "name": contract_name,
        "version": 1,
        "description": f"Drafted from {origin.name}: one row is one decision; {label_name} is its outcome.",
        "start": datetime.fromisoformat(start),
        "time_ordered": time_ordered,
        "key_type": key_type,
    }
    if shared_tokens:
        contract["null_tokens"] = shared_tokens
    contract["entity"] = {"name": entity, "join_key": key}
    contract["tables"] = {TABLE: table}
    contract["prediction"] = TABLE
    contract["label"] = {"column": label_name, "source": TABLE, "positive": positive, "negative": negative}
    if classes.codes:
        contract["label"]["codes"] = classes.codes
    contract["label"]["delay_days"] = 0
    contract["decision"] = {"cost_false_negative": 5.0, "cost_false_positive": 1.0}
    if total < 20_000:
        contract["fairness"] = {"min_group_rows": 30, "min_group_outcomes": 10}
        note(
            "fairness",
            f"{total:,} rows: groups of at least 30 rows and 10 outcomes are judged",
            "the fairness limits and the smallest group judged",
        )
    contract["columns"] = [_ordered(c.spec) for c in drafted]
    text = _render(contract, drafted, origin, total, len(rows), source)
    return Draft(text=text, contract=contract, findings=findings, rows=total, rows_profiled=len(rows))


@dataclass(frozen=True)
class _Classes:
    """The label's two classes as the contract states them, and what a person should know about the choice."""

    positive: int
    negative: int
    codes: dict[str, int] | None  # a text label: file value -> 1 (positive) or 0
    rate: float
    unlabelled: int
    chosen: str
    check: str


def _label_classes(prof: _Profile, header: str, origin: Path) -> _Classes:
    """The label's positive and negative values, the positive rate and the rows without a label.

    Integer labels keep their values (0/1, or German Credit's 1/2 where the rarer value is the outcome). A text
    label (``bad``/``good``, ``Y``/``N``) is read through ``label.codes`` as 1 and 0: the value with a name of a
    bad outcome is 1, else the rarer one.
    """
    distinct = sorted(set(prof.values))
    if len(distinct) != 2:
        raise DraftError(
            f"{origin}: label column {header!r} has {len(distinct)} distinct values "
            f"({', '.join(distinct[:5])}{', ...' if len(distinct) > 5 else ''}): a label has exactly two; "
            "give the outcome column with --label, or write the label as 1 (the outcome to predict) and 0"
        )
    unlabelled = prof.empty + sum(prof.tokens.values())
    if prof.kind in ("int", "float") and all(v.is_integer() for v in prof.numbers):
        counts = Counter(int(v) for v in prof.numbers)
        if set(counts) == {0, 1}:
            positive, negative = 1, 0
        else:  # {1, 2} and other codings: the rarer value is the outcome to predict
            positive = min(counts, key=lambda v: (counts[v], v))
            negative = next(v for v in counts if v != positive)
        return _Classes(
            positive,
            negative,
            None,
            counts[positive] / sum(counts.values()),
            unlabelled,
            f"{positive} is the outcome to predict, {negative} the other",
            f"is {positive} the bad outcome (default)? swap positive/negative if not",
        )
    counted = Counter(prof.values)
    named = [v for v in distinct if v.strip().lower() in POSITIVE_WORDS]
    opposite = [v for v in distinct if v.strip().lower() in NEGATIVE_WORDS]
    if len(named) == 1 and named[0] not in opposite:
        bad, why = named[0], "its name says a bad outcome"
    elif len(opposite) == 1 and opposite[0] not in named:
        bad, why = next(v for v in distinct if v != opposite[0]), f"{opposite[0]!r} names the good outcome"
    else:
        bad, why = min(distinct, key=lambda v: (counted[v], v)), "it is the rarer value"
    good = next(v for v in distinct if v != bad)
    return _Classes(
        1,
        0,
        {bad: 1, good: 0},
        counted[bad] / sum(counted.values()),
        unlabelled,
        f"{bad!r} is read as 1, the outcome to predict ({why}), {good!r} as 0",
        f"{bad!r} chosen as the outcome to predict because {why}: to predict {good!r}, swap 1 and 0 in label.codes",
    )


def _numbers_as_text(prof: _Profile) -> str | None:
    """What numbers written as text a column holds (``12%``, ``$1,200``, ``3,5``), if it holds nothing else."""
    if prof.kind != "text":
        return None
    for pattern, what in (
        (_PERCENT, "percentages"),
        (_MONEY, "amounts with a currency sign or thousands separators"),
        (_DECIMAL_COMMA, "numbers with a decimal comma"),
    ):
        if all(pattern.match(v) or _is_number(v) for v in prof.values):
            example = next(v for v in prof.values if pattern.match(v))
            return f"{what} such as {example!r}"
    return None


def _column_finding(col: _Column) -> Finding:
    """One line per drafted column: its type and what was found, and what to check (if anything)."""
    spec = col.spec
    kind = spec["type"] + (f" [{spec['min']}, {spec['max']}]" if "min" in spec else "")
    if "categories" in spec:
        kind += f" ({len(spec['categories'])} values)"
    role = "sensitive" if spec.get("sensitive") else f"excluded ({spec['exclude']})" if spec.get("exclude") else "input"
    inferred = "; ".join([f"{kind}, {role}", *col.notes])
    return Finding(f"columns.{col.name}", inferred, "; ".join(col.checks) or None)


def _draft_column(col: _Column, prof: _Profile, shared_tokens: list[str], sensitive: bool) -> None:
    """Type, nullability, range or categories, null tokens, missing codes and sensitivity of one column."""
    spec = col.spec
    own_tokens = sorted(t for t in prof.tokens if t not in shared_tokens)
    if own_tokens:
        spec["null_tokens"] = own_tokens
    if prof.tokens:
        shown = ", ".join(f"{t!r} {n:,}x" for t, n in prof.tokens.most_common())
        col.notes.append(f"null tokens {shown}")
    nullable = bool(prof.empty or prof.tokens)
    if prof.kind == "empty":
        spec.update(type="float", nullable=True, exclude="empty")
        col.notes.append("every cell is empty: excluded")
        return
    distinct = sorted(set(prof.values))
    if prof.kind in ("int", "float"):
        codes = _sentinels(prof.numbers)
        numbers = prof.numbers
        if codes:
            spec["missing_codes"] = codes
            nullable = True
            counted = Counter(prof.numbers)
            shown = ", ".join(f"{c} ({counted[float(c)]:,} rows)" for c in codes)
            col.checks.append(f"{shown} look like codes for 'unknown', not values: made missing before validation")
            numbers = [v for v in prof.numbers if _plain(v) not in codes]
        small = sorted({_plain(v) for v in numbers})
        if prof.kind == "int" and set(small) <= {0, 1} and len(small) == 2:
            spec["type"] = "bool"
        elif prof.kind == "int" and _CODED_NAME.search(col.name) and len(small) <= 12:
            cats = [str(v) for v in small]
            spec.update(type="category", categories=cats, codes={c: c for c in cats})
            col.checks.append(f"integer codes {', '.join(cats)}: give the codebook meanings (codes and categories)")
        else:
            spec["type"] = prof.kind
            if numbers:
                low, high = _range(numbers)
                spec["min"], spec["max"] = low, high
                col.notes.append(f"values seen in [{_plain(min(numbers))}, {_plain(max(numbers))}]")
    elif {v.lower() for v in distinct} <= _BOOL_TEXT and len(distinct) >= 2:
        spec["type"] = "bool"
    elif len(distinct) <= MAX_CATEGORIES:
        spec.update(type="category", categories=distinct)
        if all(_CODE.match(v) for v in distinct):
            spec["codes"] = {v: v for v in distinct}
            col.checks.append(f"coded values ({', '.join(distinct[:4])}...): give the codebook meanings")
    else:
        spec.update(type="category", exclude="free text or identifier")
        return
    if len(distinct) == 1:
        spec["exclude"] = "constant"
        col.notes.append(f"one value only ({distinct[0]}): excluded")
    spec["nullable"] = nullable
    if sensitive:
        spec["sensitive"] = True
        if spec["type"] in ("int", "float"):
            numbers = [v for v in prof.numbers if _plain(v) not in spec.get("missing_codes", [])]
            edges, age = _bands(col.name, numbers)
            spec["bands"] = edges
            if age:
                spec["group_thresholds"] = True
            if age and (min(numbers) < edges[0] or max(numbers) >= edges[-1]):
                spec["bands"] = [_plain(math.floor(min(numbers))), *edges[1:-1], _plain(math.floor(max(numbers)) + 1)]
            col.checks.append(
                f"sensitive, fairness bands {spec['bands']}"
                + ("; group_thresholds lets each band get its own threshold: is that lawful here?" if age else "")
            )
        else:
            col.checks.append("sensitive: used to judge fairness, not as a model input")
    elif _SENSITIVE_NAME.search(col.name):
        col.checks.append(
            "the name suggests a protected attribute: if it is one, set sensitive: true (or pass --sensitive)"
        )
    if _PROXY_NAME.search(col.name) and not sensitive:
        col.checks.append("proxy for a protected attribute? exclude it or judge it as sensitive")
    if spec["type"] in ("int", "float") and "min" in spec:
        col.checks.append(f"range [{spec['min']}, {spec['max']}] widened from the values seen: the valid range?")


def _derived(col: _Column, prof: _Profile, sensitive: bool) -> _Column | None:
    """Years from a negative day count (``-days / 365.25``); an age when the count is a birth date."""
    spec = col.spec
    if spec.get("type") not in ("int", "float") or not _DAYS_NAME.search(col.name):
        return None
    numbers = [v for v in prof.numbers if _plain(v) not in spec.get("missing_codes", [])]
    if not numbers or sum(v <= 0 for v in numbers) < 0.99 * len(numbers):
        return None
    birth = "birth" in col.name
    stem = re.sub(r"(^|_)days?($|_)", r"\1\2", col.name).strip("_") or "days"
    name = "age_years" if birth else f"{stem}_years"
    years = [-v / 365.25 for v in numbers]
    out = _Column(header="", name=name)
    out.spec = {"name": name, "type": "float", "formula": f"-{col.name} / 365.25", "nullable": spec["nullable"]}
    low, high = _range(years)
    out.spec.update(min=low, max=high)
    out.notes.append(f"years from the negative day count {col.name}")
    if birth and sensitive:
        spec.pop("sensitive", None)
        spec.pop("bands", None)
        spec.pop("group_thresholds", None)
        spec["exclude"] = f"day count; {name} is the sensitive attribute"
        col.checks[:] = [c for c in col.checks if not c.startswith("sensitive")]
        edges, _ = _bands(name, years)
        out.spec.update(sensitive=True, bands=edges, group_thresholds=True)
        out.checks.append(
            f"sensitive age from {col.name}, bands {edges}; group_thresholds: is a threshold per band lawful here?"
        )
    elif birth:
        out.checks.append("an age: set sensitive: true with bands if it is a protected attribute")
    return out


_ORDER = (
    "name",
    "type",
    "formula",
    "nullable",
    "min",
    "max",
    "categories",
    "codes",
    "null_tokens",
    "missing_codes",
    "sensitive",
    "bands",
    "group_thresholds",
    "exclude",
)


def _ordered(spec: dict[str, Any]) -> dict[str, Any]:
    out = {k: spec[k] for k in _ORDER if k in spec}
    if out.get("nullable") is False:
        del out["nullable"]
    return out


# --- YAML ---------------------------------------------------------------------------------------------------------


def _flow(value: Any) -> str:
    """One value as flow-style YAML on one line (quoted where YAML would misread it, e.g. 'yes', 'NA')."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _render(
    contract: dict[str, Any], drafted: list[_Column], origin: Path, total: int, profiled: int, source: str | None
) -> str:
    """The contract as YAML, with ``# CHECK:`` comments where a person must decide."""
    table = contract["tables"][TABLE]
    fmt = table["file"]
    read = "all rows profiled" if profiled >= total else f"{profiled:,} rows profiled"
    out = io.StringIO()
    w = out.write
    w(f"# Drafted by `closedloop contract init` from {source or origin.name} ({total:,} rows, {read}).\n")
    w("# Review every '# CHECK:' line, then run `closedloop contract check` on this file.\n")
    w(f"name: {_flow(contract['name'])}\nversion: 1\n")
    w(f"description: {_flow(contract['description'])}   # CHECK: say what one row is and what the label means\n")
    w(f"start: {contract['start'].isoformat().replace('+00:00', 'Z')}   # CHECK: no valid row is older than this\n")
    why = "rows carry their time: splits follow it" if contract["time_ordered"] else "no time column: random splits"
    w(f"time_ordered: {_flow(contract['time_ordered'])}   # {why}\n")
    w(f"key_type: {contract['key_type']}\n")
    if "null_tokens" in contract:
        w(f"null_tokens: {_flow(contract['null_tokens'])}   # text that means 'missing' in any column\n")
    w(f"entity: {_flow(contract['entity'])}\n")
    w(f"tables:\n  {TABLE}:   # one flat table: inputs, sensitive attributes and the label\n")
    if "event_time" in table:
        w(f"    event_time: {table['event_time']}\n")
    if "as_of" in table:
        w("    as_of: ingest   # CHECK: no time column; or the instant the rows describe, with a timezone\n")
    if "generated_key" in table:
        w(f"    generated_key: {table['generated_key']}   # CHECK: no id column; closedloop adds one per row\n")
    w(f"    primary_key: {_flow(table['primary_key'])}\n    file:\n")
    if "format" in fmt:
        w(f"      format: {fmt['format']}\n")
    else:
        delim = "whitespace" if fmt["delimiter"] == "whitespace" else _flow(fmt["delimiter"])
        w(f"      delimiter: {delim}\n      header: {_flow(fmt['header'])}\n")
    if "columns" in fmt:
        w(f"      columns: {_flow(fmt['columns'])}   # CHECK: no header row; name the fields\n")
    if fmt.get("headers"):
        w("      headers:   # contract name: file header\n")
        for name, header in fmt["headers"].items():
            w(f"        {name}: {_flow(header)}\n")
    if fmt.get("ignore"):
        w(f"      ignore: {_flow(fmt['ignore'])}   # read and dropped (row index, dates, free text)\n")
    w(f"prediction: {TABLE}\n")
    what = "the file value read as 1" if "codes" in contract["label"] else "positive"
    w(f"label: {_flow(contract['label'])}   # CHECK: {what} is the outcome to predict\n")
    w(f"decision: {_flow(contract['decision'])}   # CHECK: the cost of each kind of error\n")
    if "fairness" in contract:
        w(f"fairness: {_flow(contract['fairness'])}   # CHECK: limits and the smallest group judged\n")
    w("columns:\n")
    for col, spec in zip(drafted, contract["columns"], strict=True):
        for check in col.checks:
            w(f"  # CHECK: {col.name}: {check}\n")
        w(f"  - {_flow(spec)}\n")
    return out.getvalue()
