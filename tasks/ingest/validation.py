"""Row-level validation of a batch with a Great Expectations suite derived from the dataset contract.

Three stages, each naming what it rejects:
1. schema (whole batch): required columns present, no unknown columns, event times carry a timezone, rows exist;
2. types (per row): every cell converts to the contract's type (text in a numeric column, a timestamp without
   a timezone or a fractional integer fail that row, with the offending value);
3. expectations (per row): the GX suite (nulls, ranges, categories, key uniqueness, event times between the
   contract's start and now, label domain). Every row is judged by one vectorised pass over the suite's
   expectation configurations with GX's semantics; GX itself then validates the rejected rows (its result
   document is kept in quarantine) and a sample of the accepted rows. If GX disagrees on an accepted row, the
   batch is held whole: the gate fails closed.
A batch whose bad-row share exceeds the contract's ``max_bad_row_share`` is quarantined whole.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from closedloop.contract import ColumnType, Contract
from closedloop.landing import UnusableBatch

logger = logging.getLogger(__name__)

TZ_SUFFIX = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)
TS_DTYPE = "datetime64[us, UTC]"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_GX_LOCK = threading.Lock()  # the ephemeral GX context is not safe to mutate from two threads


@dataclass
class Validation:
    """Outcome of validating one batch of one table."""

    table: str
    rows_in: int
    accepted: pd.DataFrame
    rejected: pd.DataFrame  # rows as read, plus _source_row and _reasons
    failing: dict[str, int] = field(default_factory=dict)  # expectation -> rows that broke it
    gx_result: dict[str, Any] | None = None
    batch_error: str | None = None  # set when the batch is quarantined whole
    accepted_rows: np.ndarray | None = None  # each accepted row's position in the batch
    duplicates: int = 0  # rows already stored with the same values: neither accepted nor quarantined

    @property
    def rows_accepted(self) -> int:
        return 0 if self.batch_error else len(self.accepted)

    @property
    def rows_quarantined(self) -> int:
        return self.rows_in - self.rows_accepted - self.duplicates


def _gx() -> Any:
    import great_expectations as gx

    return gx


@lru_cache(maxsize=1)
def _context() -> Any:
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def build_suite(contract: Contract, table: str, now: datetime) -> Any:
    """The GX expectation suite for one table of the contract, as of ``now`` (for the future-time check)."""
    import great_expectations.expectations as gxe

    spec = contract.tables[table]
    keys = list(dict.fromkeys([contract.entity.join_key, *[k for k in spec.primary_key if k != spec.event_time]]))
    expectations: list[Any] = [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    for key in keys:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=key))
    expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=spec.event_time))
    expectations.append(
        gxe.ExpectColumnValuesToBeBetween(column=spec.event_time, min_value=contract.start, max_value=now)
    )
    if len(spec.primary_key) == 1:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column=spec.primary_key[0]))
    else:
        expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(spec.primary_key)))
    if table == contract.label.source:
        label = contract.label
        if not contract.is_flat:  # in a flat table a row without its label yet is a decision awaiting its outcome
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=label.column))
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column=label.column, value_set=[label.negative, label.positive])
        )
    for col in contract.columns_of(table):
        if not col.nullable:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=col.name))
        if col.type is ColumnType.CATEGORY:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=col.name, value_set=list(col.categories or [])))
        elif col.min is not None or col.max is not None:
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(column=col.name, min_value=col.min, max_value=col.max)
            )
    gx = _gx()
    return gx.ExpectationSuite(name=f"{contract.name}.{table}.v{contract.version}", expectations=expectations)


def describe(expectation: dict[str, Any]) -> str:
    """Short, stable name of an expectation, e.g. ``expect_column_values_to_be_between(income)``."""
    kwargs = expectation.get("kwargs", {})
    target = kwargs.get("column") or ",".join(kwargs.get("column_list", []) or [])
    return f"{expectation['type']}({target})" if target else expectation["type"]


def check_schema(frame: pd.DataFrame, contract: Contract, table: str) -> None:
    """Whole-batch checks: the columns are exactly the contract's, and there are rows."""
    required = contract.required_columns(table)
    present = [str(c) for c in frame.columns]
    duplicated = sorted({c for c in present if present.count(c) > 1})
    if duplicated:
        raise UnusableBatch(f"column(s) {duplicated} appear more than once")
    missing = [c for c in required if c not in present]
    if table == contract.label.source and contract.label.column in missing:
        raise UnusableBatch(f"the label column {contract.label.column!r} is missing from this {table} batch")
    if missing:
        raise UnusableBatch(f"missing column(s) {missing} required by contract {contract.name!r} for table {table!r}")
    extra = [c for c in present if c not in required]
    if extra:
        raise UnusableBatch(
            f"unexpected column(s) {extra} not in contract {contract.name!r} for table {table!r} "
            "(add them to the contract, or drop them upstream)"
        )
    if frame.empty:
        raise UnusableBatch("empty batch: a header but no rows")
    event_time = contract.tables[table].event_time
    dtype = frame[event_time].dtype
    if isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.datetime64):
        raise UnusableBatch(f"event time {event_time!r} has no timezone: closedloop will not guess one (write UTC)")


def _key_columns(contract: Contract, table: str) -> list[str]:
    spec = contract.tables[table]
    keys = [contract.entity.join_key, *spec.primary_key]
    return [k for k in dict.fromkeys(keys) if k != spec.event_time]


def coerce(frame: pd.DataFrame, contract: Contract, table: str) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Cast every column to the contract's type; returns the typed frame and type failures by row position."""
    failures: dict[int, list[str]] = {}
    out: dict[str, pd.Series] = {}
    for key in _key_columns(contract, table):
        if contract.key_type == "int":
            out[key] = _numbers(frame[key], key, True, failures)
        else:
            out[key] = frame[key].astype("string")
    event_time = contract.tables[table].event_time
    out[event_time] = _timestamps(frame[event_time], event_time, failures)
    if table == contract.label.source:
        out[contract.label.column] = _numbers(frame[contract.label.column], contract.label.column, True, failures)
    for col in contract.columns_of(table):
        raw = frame[col.name]
        if col.type is ColumnType.INT:
            out[col.name] = _numbers(raw, col.name, True, failures)
        elif col.type is ColumnType.FLOAT:
            out[col.name] = _numbers(raw, col.name, False, failures)
        elif col.type is ColumnType.BOOL:
            out[col.name] = _booleans(raw, col.name, failures)
        elif raw.dtype == object and pd.api.types.infer_dtype(raw, skipna=True) in ("string", "empty"):
            out[col.name] = raw
        else:
            out[col.name] = raw.where(raw.isna(), raw.astype(str)).astype(object)
    # side by side without consolidating into 2-D blocks: a copy of every column that nothing here needs
    names = contract.required_columns(table)
    typed = pd.concat([out[name].rename(name) for name in names], axis=1, copy=False)
    typed.index = frame.index
    return typed, failures


def _record_failures(
    failures: dict[int, list[str]], mask: np.ndarray, column: str, raw: pd.Series, expected: str
) -> None:
    for pos in np.flatnonzero(mask):
        value = raw.iloc[pos]
        value = value.item() if isinstance(value, np.generic) else value
        failures.setdefault(int(pos), []).append(f"type({column}): expected {expected}, got {value!r}")


def _numbers(raw: pd.Series, column: str, integer: bool, failures: dict[int, list[str]]) -> pd.Series:
    """A numeric column: integers exactly (see :func:`_integers`), others as float64; a cell that is no number fails."""
    if integer:
        return _integers(raw, column, failures)
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        return raw.astype("float64", copy=False)  # already numbers: nothing to check
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna().to_numpy() & values.isna().to_numpy()
    _record_failures(failures, bad, column, raw, "a number")
    return values.astype("float64")


def _integers(raw: pd.Series, column: str, failures: dict[int, list[str]]) -> pd.Series:
    """An integer column as exact 64-bit integers: int64 when no cell is missing, nullable Int64 otherwise.

    Never float64, whose 53-bit mantissa would change large keys. A cell that is no number or a fractional one
    fails its row, and so does an integer beyond the int64 range (it is never wrapped), each with its value.
    """
    if isinstance(raw.dtype, np.dtype) and raw.dtype.kind == "i":
        return raw.astype("int64", copy=False)  # already right: nothing to check, nothing copied
    if isinstance(raw.dtype, np.dtype) and raw.dtype.kind == "f":
        data = raw.to_numpy()
        with np.errstate(invalid="ignore"):
            fractional = ~np.isnan(data) & (data % 1 != 0)
            beyond = ~np.isnan(data) & ~fractional & ((data < INT64_MIN) | (data >= 2.0**63))
        _record_failures(failures, fractional, column, raw, "an integer")
        _record_failures(failures, beyond, column, raw, "an integer within the 64-bit range")
        values = pd.Series(np.where(fractional | beyond, np.nan, data), index=raw.index).astype("Int64")
    else:
        values = pd.to_numeric(raw, errors="coerce", dtype_backend="numpy_nullable")
        if isinstance(values.dtype, pd.Int64Dtype):  # every number fits: exact, in one vectorised pass
            _record_failures(failures, raw.notna().to_numpy() & values.isna().to_numpy(), column, raw, "an integer")
        else:  # a fraction, a float or an integer beyond int64 somewhere: judge each cell exactly
            values = _exact_integers(raw, column, failures)
    # numpy int64 when nothing is missing, so that GX compares whole columns at once
    return values.astype("int64") if not values.isna().any() else values


def _exact_integers(raw: pd.Series, column: str, failures: dict[int, list[str]]) -> pd.Series:
    cells: list[int | None] = []
    for pos, value in enumerate(raw.tolist()):
        number, problem = _exact_integer(value)
        if problem:
            failures.setdefault(pos, []).append(f"type({column}): expected {problem}, got {value!r}")
        cells.append(number)
    return pd.Series(pd.array(cells, dtype="Int64"), index=raw.index)


def _exact_integer(value: Any) -> tuple[int | None, str | None]:
    """The cell as a Python integer (None when missing), or the reason it is not one."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None, None
    number: int | float
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        number = int(value)
    else:
        text = str(value).strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None, "an integer"
    if isinstance(number, float):
        if not np.isfinite(number) or number % 1 != 0:
            return None, "an integer"
        number = int(number)
    if not INT64_MIN <= number <= INT64_MAX:
        return None, "an integer within the 64-bit range"
    return number, None


def _booleans(raw: pd.Series, column: str, failures: dict[int, list[str]]) -> pd.Series:
    """true/false/1/0 in any case as a nullable boolean; any other value fails its row."""
    mapped = raw.map(
        lambda v: {"true": True, "1": True, "false": False, "0": False}.get(str(v).strip().lower())
        if pd.notna(v)
        else None
    )
    _record_failures(failures, raw.notna().to_numpy() & mapped.isna().to_numpy(), column, raw, "true or false")
    return mapped.astype("boolean")


def _timestamps(raw: pd.Series, column: str, failures: dict[int, list[str]]) -> pd.Series:
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").astype(TS_DTYPE)
    text = raw.astype("string")
    has_value = text.notna().to_numpy()
    has_tz = text.str.strip().str.contains(TZ_SUFFIX, na=False).to_numpy()
    parsed = pd.to_datetime(text.where(has_tz), utc=True, format="ISO8601", errors="coerce")
    for pos in np.flatnonzero(has_value & ~has_tz):
        failures.setdefault(int(pos), []).append(f"type({column}): timestamp without timezone {raw.iloc[pos]!r}")
    for pos in np.flatnonzero(has_value & has_tz & parsed.isna().to_numpy()):
        failures.setdefault(int(pos), []).append(f"type({column}): not a timestamp {raw.iloc[pos]!r}")
    return parsed.astype(TS_DTYPE)


def run_suite(typed: pd.DataFrame, suite: Any) -> dict[str, Any]:
    """Run the suite with GX on a pandas batch; the result as GX's JSON document."""
    with _GX_LOCK:
        ctx = _context()
        try:
            source = ctx.data_sources.get("closedloop")
        except (KeyError, ValueError):
            source = ctx.data_sources.add_pandas("closedloop")
        asset_name = suite.name
        try:
            asset = source.get_asset(asset_name)
        except (LookupError, ValueError):
            asset = source.add_dataframe_asset(asset_name)
        try:
            definition = asset.get_batch_definition("whole")
        except (KeyError, LookupError, ValueError):
            definition = asset.add_batch_definition_whole_dataframe("whole")
        # the suite runs on the batch directly: no stored suite, validation definition or result store, whose
        # bookkeeping (pairwise expectation comparison, result serialisation) cost more than the validation here
        batch = definition.get_batch(batch_parameters={"dataframe": typed})
        result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    document: dict[str, Any] = result.to_json_dict()
    return document


def unexpected_masks(typed: pd.DataFrame, suite: Any) -> dict[str, np.ndarray] | None:
    """Row masks of every column expectation of the suite, evaluated with GX's semantics in one vectorised pass.

    GX's own pandas engine is run on the rejected rows (for the validation document) and on a sample of the
    accepted ones (as a cross-check) by :func:`validate`; running it on every row costs about 25x this pass.
    Returns None when the suite holds an expectation type this pass does not know (GX then runs on all rows).
    """
    masks: dict[str, np.ndarray] = {}
    presence: dict[str, np.ndarray] = {}
    for expectation in suite.expectations:
        config = expectation.configuration.to_json_dict()
        kind, kwargs = config["type"], config["kwargs"]
        name = describe(config)
        if kind == "expect_table_row_count_to_be_between":
            continue  # batch level: an empty batch never gets here
        if kind == "expect_compound_columns_to_be_unique":
            masks[name] = typed.duplicated(kwargs["column_list"], keep=False).to_numpy()
            continue
        if kind not in _ROW_RULES:
            return None
        values = typed[kwargs["column"]]
        present = presence.get(kwargs["column"])
        if present is None:
            numpy_dtype = isinstance(values.dtype, np.dtype)  # nullable Int64 and boolean may hold <NA>
            present = (
                np.ones(len(values), dtype=bool)
                if numpy_dtype and values.dtype.kind in "iub"
                else values.notna().to_numpy()
            )
            presence[kwargs["column"]] = present
        masks[name] = _ROW_RULES[kind](values, present, kwargs)
    return masks


def _between(values: pd.Series, present: np.ndarray, kwargs: dict[str, Any]) -> np.ndarray:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        data = values.to_numpy(dtype="datetime64[us]", na_value=np.datetime64("NaT", "us"))
        low, high = (
            np.datetime64(pd.Timestamp(v).tz_convert("UTC").tz_localize(None), "us") if v is not None else None
            for v in (low, high)
        )
    elif isinstance(values.dtype, pd.Int64Dtype):
        data = values.to_numpy(dtype="float64", na_value=np.nan)  # the contract's bounds are numbers, not keys
    else:
        data = values.to_numpy()
    outside = np.zeros(len(values), dtype=bool)
    with np.errstate(invalid="ignore"):
        if low is not None:
            outside |= data < low
        if high is not None:
            outside |= data > high
    return present & outside


_ROW_RULES: dict[str, Any] = {
    "expect_column_values_to_not_be_null": lambda values, present, kwargs: ~present,
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_in_set": lambda values, present, kwargs: present
    & ~values.isin(kwargs["value_set"]).to_numpy(),
    "expect_column_values_to_be_unique": lambda values, present, kwargs: present
    & values.duplicated(keep=False).to_numpy(),
}

GX_SAMPLE_ROWS = 10_000


UNREADABLE = "unreadable_line"  # the failure of a record the reader could not split into the header's fields


def validate(
    frame: pd.DataFrame,
    contract: Contract,
    table: str,
    now: datetime,
    unreadable: dict[int, str] | None = None,
    repeated: np.ndarray | None = None,
    judge_share: bool = True,
) -> Validation:
    """Validate a batch read from the landing zone; never drops a row without a reason.

    ``unreadable`` (from :class:`closedloop.landing.Readout`) names the rows whose record could not be read: each
    is rejected with that reason alone, and counts in the batch's rows like any other.

    A chunk of a larger batch passes ``repeated`` (see :func:`tasks.ingest.chunks.repeated_keys`), the rows
    whose primary key occurs elsewhere in the batch (they break the uniqueness expectation as they would in one
    piece), and ``judge_share=False``: the bad-row share is the whole batch's to judge.
    """
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        frame = frame.reset_index(drop=True)  # positions are row numbers below; a copy only when needed
    unreadable = unreadable or {}
    rows_in = len(frame)
    try:
        check_schema(frame, contract, table)
    except UnusableBatch as exc:
        return whole_batch(frame, table, str(exc), unreadable=unreadable)
    typed, type_failures = coerce(frame, contract, table)
    suite = build_suite(contract, table, now)
    masks = unexpected_masks(typed, suite)
    if masks is None:  # an expectation only GX knows: let GX judge every row
        masks = _masks_from(run_suite(typed, suite), rows_in)
    if repeated is not None and repeated.any():
        unique = uniqueness_expectation(contract, table)
        masks[unique] = masks.get(unique, np.zeros(rows_in, dtype=bool)) | repeated
    if unreadable:  # an empty row stands for each: its one reason is that it could not be read
        lines = np.fromiter(unreadable, dtype=np.int64)
        for mask in masks.values():
            mask[lines] = False
    reasons, failing = _row_reasons(type_failures, masks)
    for pos, why in unreadable.items():
        reasons[pos] = [why]
    if unreadable:
        failing[UNREADABLE] = len(unreadable)
    bad = np.array(sorted(reasons), dtype=np.int64)
    good_mask = np.ones(rows_in, dtype=bool)
    good_mask[bad] = False
    # GX's own verdict in one run: on every rejected row (the document kept in quarantine) and on a sample of
    # the accepted rows, where it must find nothing
    accepted = typed.loc[good_mask]
    accepted.index = pd.RangeIndex(len(accepted))  # no second copy
    sample = accepted.sample(GX_SAMPLE_ROWS, random_state=0) if len(accepted) > GX_SAMPLE_ROWS else accepted
    # one consolidated copy: GX's pandas engine copies the batch once per metric, re-merging blocks each time
    document = run_suite(pd.concat([typed.iloc[bad], sample], ignore_index=True).copy(), suite)
    disagreement = _rejected_by_gx_among_accepted(document, len(bad))
    if disagreement:
        return whole_batch(
            frame,
            table,
            f"validator disagreement: GX rejects accepted rows on {sorted(disagreement)}; batch held for review",
            gx_result=document,
            unreadable=unreadable,
        )
    rejected = frame.iloc[bad].assign(_source_row=bad, _reasons=["; ".join(reasons[int(p)]) for p in bad])
    failing = dict(sorted(failing.items(), key=lambda kv: -kv[1]))
    share = len(bad) / rows_in
    if judge_share and share > contract.max_bad_row_share:
        top = ", ".join(f"{k} ({v})" for k, v in list(failing.items())[:3])
        reason = f"{share:.0%} of rows are bad, over the contract's limit of {contract.max_bad_row_share:.0%}: {top}"
        rejected = frame.assign(
            _source_row=np.arange(rows_in),
            _reasons=["; ".join(reasons.get(i, [])) or "batch over the bad-row limit" for i in range(rows_in)],
        )
        return Validation(table, rows_in, typed.iloc[0:0], rejected, failing, document, reason)
    return Validation(table, rows_in, accepted, rejected, failing, document, accepted_rows=np.flatnonzero(good_mask))


def uniqueness_expectation(contract: Contract, table: str) -> str:
    """The name (see :func:`describe`) of the suite's primary-key uniqueness expectation for ``table``."""
    keys = contract.tables[table].primary_key
    if len(keys) == 1:
        return f"expect_column_values_to_be_unique({keys[0]})"
    return f"expect_compound_columns_to_be_unique({','.join(keys)})"


def key_codes(frame: pd.DataFrame, contract: Contract, table: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's primary key as 64-bit codes (one column per key column), and whether the row has a whole key.

    Integer keys and event times are their exact values; text keys are hashed (64 bits). A cell that fails its
    type counts as missing: such a row is rejected for its type anyway.
    """
    spec = contract.tables[table]
    codes, whole = [], np.ones(len(frame), dtype=bool)
    for key in spec.primary_key:
        failures: dict[int, list[str]] = {}
        if key == spec.event_time:
            times = _timestamps(frame[key], key, failures)
            present, values = times.notna().to_numpy(), times.to_numpy(dtype="datetime64[us]").view(np.int64)
        elif contract.key_type == "int":
            numbers = _integers(frame[key], key, failures)
            present = numbers.notna().to_numpy()
            values = numbers.fillna(0).to_numpy(dtype=np.int64)
        else:
            text = frame[key].astype("string")
            present = text.notna().to_numpy()
            values = pd.util.hash_array(text.fillna("").to_numpy(dtype=object)).view(np.int64)
        present[np.fromiter(failures, dtype=np.int64, count=len(failures))] = False
        codes.append(values)
        whole &= present
    return np.column_stack(codes), whole


def whole_batch(
    frame: pd.DataFrame,
    table: str,
    reason: str,
    failing: dict[str, int] | None = None,
    gx_result: dict[str, Any] | None = None,
    unreadable: dict[int, str] | None = None,
) -> Validation:
    """Every row of the batch rejected for one reason (an unreadable line for its own): quarantined whole."""
    why = [(unreadable or {}).get(pos, reason) for pos in range(len(frame))]
    rejected = frame.assign(_source_row=np.arange(len(frame)), _reasons=why)
    return Validation(table, len(frame), frame.iloc[0:0], rejected, failing or {}, gx_result, reason)


def _row_reasons(
    type_failures: dict[int, list[str]], masks: dict[str, np.ndarray]
) -> tuple[dict[int, list[str]], dict[str, int]]:
    """Each bad row's reasons (type failures first, then broken expectations) and the rows each rule rejected."""
    reasons: dict[int, list[str]] = {pos: list(msgs) for pos, msgs in type_failures.items()}
    failing: dict[str, int] = {}
    for msgs in type_failures.values():
        for msg in msgs:
            label = msg.split(":", 1)[0]
            failing[label] = failing.get(label, 0) + 1
    typed_cells = {(pos, m.split("(", 1)[1].split(")", 1)[0]) for pos, msgs in type_failures.items() for m in msgs}
    for name, mask in masks.items():
        column = name.split("(", 1)[1].rstrip(")") if "(" in name else None
        positions = np.flatnonzero(mask)
        if name.startswith("expect_column_values_to_not_be_null("):
            # a cell that failed its type is already reported as such
            positions = np.array([p for p in positions if (int(p), column) not in typed_cells], dtype=np.int64)
        for pos in positions:
            reasons.setdefault(int(pos), []).append(name)
        if len(positions):
            failing[name] = len(positions)
    return reasons, failing


def _rejected_by_gx_among_accepted(document: dict[str, Any], rejected_rows: int) -> set[str]:
    """Expectations GX finds broken on a row this pass accepted (rows after the first ``rejected_rows``)."""
    return {
        describe(item["expectation_config"])
        for item in document["results"]
        if not item["success"]
        and any(i >= rejected_rows for i in item.get("result", {}).get("unexpected_index_list") or [rejected_rows])
    }


def _masks_from(document: dict[str, Any], rows: int) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for item in document["results"]:
        indices = item.get("result", {}).get("unexpected_index_list")
        if item["success"] or indices is None:
            continue
        mask = np.zeros(rows, dtype=bool)
        mask[np.asarray(indices, dtype=np.int64)] = True
        masks[describe(item["expectation_config"])] = mask
    return masks
