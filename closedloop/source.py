"""A table's rows as the contract names them: what a file holds becomes what closedloop stores and scores.

Files arrive as their owners write them: their own headers, an unnamed index column, ``NA`` for missing, coded
values (``A11``), codes that mean unknown (96, 98), no time column, no key. The contract says so
(``Table.file``, ``Table.as_of``, ``Table.generated_key``, ``Column.null_tokens/missing_codes/codes/formula``) and
:func:`to_internal` applies it to every batch and chunk at ingest, :func:`request_values` to every row sent for
scoring, with the same functions, so the same row gives the same values in training and in serving.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from closedloop.contract import Column, ColumnType, Contract, formula_names, parse_formula
from closedloop.landing import UnusableBatch


@dataclass(frozen=True)
class Sourced:
    """A batch (or chunk) under the contract's names, and how many values each rule made missing."""

    frame: pd.DataFrame
    made_missing: dict[str, int]  # "null_tokens(col)" / "missing_codes(col)" -> cells


@dataclass
class KeyState:
    """Rows seen so far in one batch, by the hash of their values: a generated key counts identical rows.

    A batch read in chunks passes the same state to each chunk, so the occurrence numbers continue across chunks
    and the keys are those of the batch read in one piece. Memory is two 8-byte numbers per distinct row.
    """

    hashes: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.uint64))
    counts: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))

    def occurrences(self, hashes: np.ndarray) -> np.ndarray:
        """Each row's occurrence among the rows of equal hash seen before it in the batch (0 for the first)."""
        if not len(hashes):
            return np.array([], dtype=np.int64)
        within = pd.Series(hashes).groupby(hashes, sort=False).cumcount().to_numpy(dtype=np.int64)
        at = np.searchsorted(self.hashes, hashes)
        known = at < len(self.hashes)
        known[known] = self.hashes[at[known]] == hashes[known]
        before = np.zeros(len(hashes), dtype=np.int64)
        before[known] = self.counts[at[known]]
        unique, counts = np.unique(hashes, return_counts=True)
        merged, inverse = np.unique(np.concatenate([self.hashes, unique]), return_inverse=True)
        totals = np.zeros(len(merged), dtype=np.int64)
        np.add.at(totals, inverse, np.concatenate([self.counts, counts]))
        self.hashes, self.counts = merged, totals
        return np.asarray(before + within, dtype=np.int64)


def to_internal(
    frame: pd.DataFrame,
    contract: Contract,
    table: str,
    *,
    batch_id: str,
    rows: np.ndarray,
    now: datetime,
    keys: KeyState | None = None,
) -> Sourced:
    """A frame read from a file of ``table`` as the contract's columns, ready for validation.

    In order: file headers checked and mapped to the contract's names (ignored ones dropped), null tokens and
    missing codes made missing (counted), codes mapped to categories, formulas computed, the as-of event time and
    the generated key added. ``rows``: each frame row's row in the batch; ``keys``: the batch's :class:`KeyState`
    (one per batch, shared by its chunks). A header the contract expects and the file lacks, or one it does not
    know, makes the batch unusable: :class:`UnusableBatch` names the header, the column and the fix.
    """
    spec = contract.tables[table]
    named = _named(frame, contract, table)
    if _as_sent(contract, table) and len(named) == len(frame.columns):
        return Sourced(frame, {})  # nothing to apply: the frame itself, no copy
    made_missing: dict[str, int] = {}
    out: dict[str, pd.Series] = {}
    for name, values in named.items():
        col = _column(contract, name)
        if col is None:
            out[name] = values
            continue
        out[name], counts = _cleaned(values, col, contract)
        made_missing.update({rule: n for rule, n in counts.items() if n})
    if table == contract.label.source:
        out[contract.label.column], counts = _label_cleaned(out[contract.label.column], contract)
        made_missing.update({rule: n for rule, n in counts.items() if n})
    for col in contract.columns_of(table):
        if col.formula is not None:
            out[col.name] = pd.Series(_derived(col, out), index=frame.index)
    if spec.as_of is not None:
        instant = now if spec.as_of == "ingest" else spec.as_of
        out[spec.event_time] = pd.Series(
            pd.Timestamp(instant).tz_convert(UTC), index=frame.index, dtype="datetime64[us, UTC]"
        )
    if spec.generated_key is not None:
        state = keys if keys is not None else KeyState()
        numbers = {c.name for c in contract.columns_of(table) if c.type in (ColumnType.INT, ColumnType.FLOAT)}
        hashed = row_hashes(pd.DataFrame({name: out[name] for name in named}, index=frame.index), numbers)
        key = generated_keys(hashed, state.occurrences(hashed))
        out[spec.generated_key] = pd.Series(key, index=frame.index)
        if contract.key_type == "string":
            out[spec.generated_key] = out[spec.generated_key].astype(str).astype(object)
    names = contract.required_columns(table)
    result = pd.DataFrame({name: out[name] for name in names if name in out}, index=frame.index)
    return Sourced(result, made_missing)


def generated_keys(hashes: np.ndarray, occurrences: np.ndarray) -> np.ndarray:
    """The key of a row from the hash of its values and its occurrence among identical rows: non-negative int64."""
    occurrence = _mix(occurrences.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    return np.asarray(_mix(hashes.astype(np.uint64) ^ occurrence) >> np.uint64(1), dtype=np.int64)


def row_hashes(frame: pd.DataFrame, numbers: Collection[str] = ()) -> np.ndarray:
    """One 64-bit hash per row of its values as the contract reads them, whatever the file's spelling.

    A cell of a ``numbers`` column hashes by its value (``1386``, ``1386.0``, `` 1386 `` and a parquet integer
    are one number), other cells by their text without surrounding blanks, and every missing cell alike (the
    null tokens and missing codes are already missing here). Columns combine by name, not position, so a file
    re-exported with its columns in another order or its integers as decimals gives its rows the same keys.
    """
    total = np.zeros(len(frame), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name, values in frame.items():
            salt = np.uint64(_text_hashes(pd.Series([str(name)]))[0])
            total += _mix(_cell_hashes(values, str(name) in numbers) ^ salt)
    return total


_MISSING = np.uint64(0x5BD1E9955BD1E995)


def _cell_hashes(values: pd.Series, numeric: bool) -> np.ndarray:
    text = values if pd.api.types.is_numeric_dtype(values.dtype) else values.astype("string").str.strip()
    out = _text_hashes(text)
    if numeric:
        number = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan) + 0.0  # -0.0 is 0
        parsed = ~np.isnan(number)
        out[parsed] = _mix(number[parsed].view(np.uint64))
    out[np.asarray(values.isna().to_numpy(dtype=bool), dtype=bool)] = _MISSING
    return out


def _text_hashes(values: pd.Series) -> np.ndarray:
    cells = values.astype(object).where(values.notna(), None)
    return np.asarray(pd.util.hash_pandas_object(cells, index=False).to_numpy(dtype=np.uint64), dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every bit of the input moves every bit of the output."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(x ^ (x >> np.uint64(31)), dtype=np.uint64)


def key_headers(contract: Contract, table: str) -> list[str] | None:
    """The file headers holding ``table``'s primary key; None when closedloop makes a key column (nothing to read)."""
    spec = contract.tables[table]
    added = set(contract.added_columns(table))
    if spec.generated_key is not None:
        return None
    headers = contract.file_columns(table)
    return list(dict.fromkeys(headers[k] for k in spec.primary_key if k not in added))


def key_frame(frame: pd.DataFrame, contract: Contract, table: str, now: datetime) -> pd.DataFrame:
    """The primary key columns of a frame read with :func:`key_headers`, under their contract names."""
    spec = contract.tables[table]
    headers = contract.file_columns(table)
    out = {}
    for key in dict.fromkeys(spec.primary_key):
        if key in headers:
            out[key] = frame[headers[key]]
        else:  # the as-of event time
            instant = now if spec.as_of == "ingest" else spec.as_of
            out[key] = pd.Series(pd.Timestamp(instant).tz_convert(UTC), index=frame.index, dtype="datetime64[us, UTC]")
    return pd.DataFrame(out, index=frame.index)


def request_values(contract: Contract, data: dict[str, Any]) -> dict[str, Any]:
    """One row sent for scoring under the rules ingest applies, by the same functions.

    Null tokens and missing codes become None, file codes become categories, and formula columns are computed
    from their operands (which stay in the row).
    """
    out = dict(data)
    for col in contract.columns:
        if col.name not in out:
            continue
        value = out[col.name]
        if isinstance(value, str) and value.strip() in _tokens(col, contract):
            value = None
        if value is not None and col.codes is not None and str(value) in col.codes:
            value = col.codes[str(value)]
        if value is not None and _is_missing_code(value, col):
            value = None
        out[col.name] = value
    for col in contract.columns:
        if col.formula is None or not _formula_operands(col) <= out.keys():
            continue  # a formula column is computed from its operands, when the row holds them
        operands = {}
        for name in sorted(_formula_operands(col)):
            operand = out.get(name)
            try:
                operands[name] = np.array([float(operand) if operand is not None else np.nan])
            except (TypeError, ValueError):
                operands[name] = np.array([np.nan])
        value = float(derive_values(col.formula, operands)[0])
        out[col.name] = None if math.isnan(value) else value
    return out


def derive_values(formula: str, operands: Mapping[str, np.ndarray]) -> np.ndarray:
    """A formula column (see ``Column.formula``) from its operands' values, as float64.

    The one definition of a derived column: ingest stores it and serving recomputes it from the request with this
    function. A missing operand gives NaN; so does a division by zero, never inf (as a ratio feature does).
    """
    size = len(next(iter(operands.values()))) if operands else 1

    def value(node: ast.expr) -> np.ndarray:
        if isinstance(node, ast.Constant):
            return np.full(size, float(node.value))  # type: ignore[arg-type]  # numbers only (parse_formula)
        if isinstance(node, ast.Name):
            return np.asarray(operands[node.id], dtype="float64")
        if isinstance(node, ast.UnaryOp):
            inner = value(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return np.asarray(left + right, dtype="float64")
            if isinstance(node.op, ast.Sub):
                return np.asarray(left - right, dtype="float64")
            if isinstance(node.op, ast.Mult):
                return np.asarray(left * right, dtype="float64")
            return np.asarray(left / np.where(right != 0, right, np.nan), dtype="float64")
        raise ValueError(f"formula {formula!r}: {ast.unparse(node)!r} is not arithmetic")  # parse_formula refuses it

    with np.errstate(over="ignore", invalid="ignore"):
        values = np.array(value(parse_formula(formula)), dtype="float64")
    values[~np.isfinite(values)] = np.nan
    return values


def _named(frame: pd.DataFrame, contract: Contract, table: str) -> dict[str, pd.Series]:
    """The file's columns under the contract's names; checks that the headers are those the contract expects."""
    spec = contract.tables[table]
    present = [str(c) for c in frame.columns]
    duplicated = sorted({c for c in present if present.count(c) > 1})
    if duplicated:
        raise UnusableBatch(f"column(s) {duplicated} appear more than once")
    wanted = contract.file_columns(table)
    missing = [name for name, header in wanted.items() if header not in present]
    if missing:
        if table == contract.label.source and contract.label.column in missing:
            header = wanted[contract.label.column]
            raise UnusableBatch(
                f"the label column {contract.label.column!r} is missing from this {table} batch"
                + (f" (file header {header!r})" if header != contract.label.column else "")
            )
        mapped = [f"{wanted[n]!r} (contract column {n})" for n in missing if wanted[n] != n]
        raise UnusableBatch(
            f"missing column(s) {missing} required by contract {contract.name!r} for table {table!r}"
            + (f": missing header(s) {', '.join(mapped)}" if mapped else "")
            + f"; add them to the file or fix tables.{table}.file.headers"
        )
    known = set(wanted.values())
    extra = [c for c in present if c not in known and not spec.file.ignored(c)]
    if extra:
        raise UnusableBatch(
            f"unexpected column(s) {extra} not in contract {contract.name!r} for table {table!r} "
            f"(add them to the contract, list them in tables.{table}.file.ignore, or drop them upstream)"
        )
    return {name: frame[header] for name, header in wanted.items()}


def _as_sent(contract: Contract, table: str) -> bool:
    """Whether the contract takes ``table``'s files as they are: same names, no token, code or added column."""
    file = contract.tables[table].file
    return (
        not contract.null_tokens
        and not file.headers
        and not contract.added_columns(table)
        and not any(c.null_tokens or c.codes or c.missing_codes for c in contract.columns_of(table))
        and (table != contract.label.source or contract.label.codes is None)
    )


def _column(contract: Contract, name: str) -> Column | None:
    try:
        return contract.column(name)
    except KeyError:
        return None


def _tokens(col: Column, contract: Contract) -> set[str]:
    return set(col.null_tokens if col.null_tokens is not None else contract.null_tokens)


def _cleaned(values: pd.Series, col: Column, contract: Contract) -> tuple[pd.Series, dict[str, int]]:
    """A column's values with null tokens and missing codes made missing, and file codes as categories."""
    counts: dict[str, int] = {}
    tokens = _tokens(col, contract)
    if tokens and (values.dtype == object or pd.api.types.is_string_dtype(values.dtype)):
        text = values.astype("string").str.strip()
        hit = np.asarray(text.isin(tokens).fillna(False).to_numpy(dtype=bool), dtype=bool)
        if hit.any():
            values = values.mask(hit)
            counts[f"null_tokens({col.name})"] = int(hit.sum())
    if col.codes is not None:
        text = values.where(values.isna(), values.astype(str))
        mapped = text.map(col.codes)
        values = mapped.where(mapped.notna(), values)
    if col.missing_codes:
        hit = _missing_code_mask(values, col)
        if hit.any():
            values = values.mask(hit)
            counts[f"missing_codes({col.name})"] = int(hit.sum())
    return values, counts


def _label_cleaned(values: pd.Series, contract: Contract) -> tuple[pd.Series, dict[str, int]]:
    """The label with the data set's null tokens made missing and a text label's values as its integers."""
    counts: dict[str, int] = {}
    label = contract.label
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        text = values.astype("string").str.strip()
        hit = np.asarray(text.isin(contract.null_tokens).fillna(False).to_numpy(dtype=bool), dtype=bool)
        if hit.any():
            values = values.mask(hit)
            counts[f"null_tokens({label.column})"] = int(hit.sum())
        if label.codes is not None:
            mapped = text.where(~hit).map(label.codes)
            values = mapped.where(mapped.notna(), values)
    return values, counts


def _missing_code_mask(values: pd.Series, col: Column) -> np.ndarray:
    if col.type in (ColumnType.INT, ColumnType.FLOAT):
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        codes = [float(c) for c in col.missing_codes if _as_float(c) is not None]
        return np.asarray(np.isin(numbers, codes), dtype=bool)
    text = values.astype("string").str.strip()
    return np.asarray(text.isin(_code_texts(col.missing_codes)).fillna(False).to_numpy(dtype=bool), dtype=bool)


def _code_texts(codes: list[float | str]) -> set[str]:
    """How codes are written in a file's text cells: YAML's ``0`` arrives as 0.0 and is written ``0``."""
    texts = {str(c) for c in codes}
    texts.update(str(int(c)) for c in codes if isinstance(c, float) and c.is_integer())
    return texts


def _is_missing_code(value: Any, col: Column) -> bool:
    if not col.missing_codes:
        return False
    if col.type in (ColumnType.INT, ColumnType.FLOAT):
        number = _as_float(value)
        return number is not None and number in {_as_float(c) for c in col.missing_codes}
    return str(value).strip() in {str(c) for c in col.missing_codes}


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _formula_operands(col: Column) -> set[str]:
    return formula_names(col.formula or "")


def _derived(col: Column, values: dict[str, pd.Series]) -> np.ndarray:
    operands = {
        name: pd.to_numeric(values[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        for name in _formula_operands(col)
    }
    return derive_values(col.formula or "", operands)
