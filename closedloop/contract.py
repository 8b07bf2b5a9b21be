"""The dataset contract: one YAML file that describes a use case, from which everything else is derived.

The validation suite, the Feast definitions, the training feature list, the fairness groups and the
serving request schema are all computed from a :class:`Contract`; a new dataset is a new contract file,
not new code. Loading a malformed contract raises :class:`ContractError` naming the file and the field.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import re
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)]


class ContractError(ValueError):
    """A contract file cannot be used; the message names the file and each offending field."""


class ColumnType(StrEnum):
    INT = "int"
    FLOAT = "float"
    CATEGORY = "category"
    BOOL = "bool"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileFormat(_Strict):
    """How a table's files are written, when that is not a headed, comma-separated file named like the contract."""

    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="the file kind; None: from the extension (.csv, .parquet)"
    )
    delimiter: str = Field(
        default=",", description="one character, or 'whitespace': runs of blanks and tabs (leading/trailing ignored)"
    )
    header: bool = Field(default=True, description="whether the first line names the fields")
    columns: list[str] | None = Field(
        default=None, description="the field names of a header-less file, in file order (required iff header: false)"
    )
    headers: dict[Identifier, str] = Field(
        default_factory=dict,
        description="contract name -> file header, for any column of the table (keys, time, label included); "
        "absent: the header is the name. One header may feed several names",
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="file headers (fnmatch patterns) read and dropped, never stored: an unnamed index ('', which "
        "also matches 'Unnamed: 0') or fields the table does not use",
    )

    @model_validator(mode="after")
    def _check(self) -> FileFormat:
        if self.delimiter != "whitespace" and (len(self.delimiter) != 1 or self.delimiter in '"\r\n'):
            raise ValueError(
                f"delimiter {self.delimiter!r}: give one character (for example ';' or '\\t') or 'whitespace'"
            )
        if self.header and self.columns is not None:
            raise ValueError("'columns' names the fields of a header-less file: remove it or set header: false")
        if not self.header:
            if not self.columns:
                raise ValueError("header: false needs 'columns': the field names of the file, in file order")
            twice = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if twice:
                raise ValueError(f"'columns' lists {twice} more than once: give each field its own name")
        if self.format == "parquet" and (self.delimiter != "," or not self.header):
            raise ValueError("'delimiter' and 'header' apply to csv files, not parquet: remove them")
        return self

    def ignored(self, header: str) -> bool:
        """Whether a file header is read and dropped; ``""`` also matches ``Unnamed: <n>``, as a reader names it."""
        unnamed = re.fullmatch(r"Unnamed: \d+", header) is not None
        return any(fnmatch.fnmatchcase(header, p) or (p == "" and unnamed) for p in self.ignore)


class Table(_Strict):
    """A source table as it arrives in the landing zone."""

    event_time: Identifier = Field(description="UTC timestamp column: when the row became true")
    as_of: datetime | Literal["ingest"] | None = Field(
        default=None,
        description="a snapshot table whose file has no time column: closedloop adds 'event_time' holding this "
        "instant (timezone required) or, with 'ingest', the time the batch is ingested",
    )
    generated_key: Identifier | None = Field(
        default=None,
        description="a key column closedloop adds: a 63-bit hash of the row's values and its occurrence among "
        "identical rows of its batch, so a re-sent row keeps its key; must be in primary_key",
    )
    file: FileFormat = FileFormat()
    primary_key: list[Identifier] = Field(min_length=1, description="columns unique within the table")
    ttl_days: int = Field(default=3650, ge=1, description="how long a row stays a valid feature value")
    restatement: Literal["quarantine", "store"] = Field(
        default="quarantine",
        description="a row whose primary key is already stored with other values: rejected with the key and the "
        "columns that differ (quarantine), or stored as the newer version of that row (store)",
    )
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_event_time(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("as_of") is not None and "event_time" not in data:
            return {**data, "event_time": "event_time"}
        return data

    @model_validator(mode="after")
    def _check(self) -> Table:
        if isinstance(self.as_of, datetime) and self.as_of.tzinfo is None:
            raise ValueError("'as_of' needs a timezone (for example 2005-10-01T00:00:00Z)")
        if self.generated_key is not None and self.generated_key not in self.primary_key:
            raise ValueError(
                f"generated_key {self.generated_key!r} is not in primary_key {self.primary_key}: add it there"
            )
        added = {self.generated_key} | ({self.event_time} if self.as_of is not None else set())
        for name in sorted(n for n in added if n is not None):
            if name in self.file.headers:
                raise ValueError(
                    f"file.headers.{name}: closedloop adds {name!r} (as_of/generated_key), it is not read from "
                    "the file: remove it from file.headers"
                )
        return self


class Entity(_Strict):
    name: Identifier
    join_key: Identifier
    description: str = ""


class Ratio(_Strict):
    """An on-demand feature: numerator / denominator, computed the same way offline and online."""

    name: Identifier
    numerator: Identifier
    denominator: Identifier
    description: str = ""


class Aggregate(_Strict):
    """A history feature: ``function`` of ``column`` over an entity's last ``window`` rows of its table."""

    name: Identifier
    column: Identifier
    function: Literal["mean", "max", "min", "sum"]
    window: int = Field(ge=2, le=120, description="number of most recent rows, the current one included")
    description: str = ""


class Drift(_Strict):
    """How the monitor judges drift of one column; distances, never p-values."""

    method: Literal["psi", "jensenshannon", "wasserstein"] = "psi"
    threshold: float = Field(default=0.2, gt=0)


class Column(_Strict):
    """One column of a source table (a feature, a sensitive attribute, or an excluded field)."""

    name: Identifier
    type: ColumnType
    source: Identifier = Field(description="the table this column arrives in")
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    unit: str = ""
    description: str = ""
    sensitive: bool = Field(default=False, description="protected attribute: used for fairness, not as an input")
    model_input: bool | None = Field(
        default=None, description="override: a sensitive column is an input only if this is true"
    )
    exclude: str | None = Field(default=None, description="why this column is never used (kept for audit)")
    bands: list[float] | None = Field(
        default=None, description="for a numeric sensitive attribute: band edges for fairness groups"
    )
    group_thresholds: bool = Field(
        default=False,
        description="a sensitive attribute whose groups may get their own decision thresholds (Fairlearn's "
        "ThresholdOptimizer) when the fairness gate fails; the attribute is then needed at scoring time",
    )
    drift: Drift = Drift()
    risk_direction: Literal["increasing", "decreasing"] | None = Field(
        default=None, description="known direction of risk: enforced in training, checked by behavioural tests"
    )
    null_tokens: list[str] | None = Field(
        default=None, description="text cells that mean missing in this column; replaces the contract's null_tokens"
    )
    missing_codes: list[float | str] = Field(
        default_factory=list,
        description="values that mean unknown (96, 98, 365243, ...): made missing before validation, counted",
    )
    codes: dict[str, str] | None = Field(
        default=None, description="category columns: file value -> category (several values may share one)"
    )
    fairness_waiver: str | None = Field(
        default=None,
        description="sensitive columns: why the fairness gate may pass a version without judging this attribute "
        "(its groups too small to measure); kept in every version's evidence. Without it, not judged fails",
    )
    formula: str | None = Field(
        default=None,
        description="a derived numeric column: + - * / and parentheses over numbers and numeric columns of the "
        "same table; computed at ingest and again at serving, never read from the file",
    )

    @model_validator(mode="after")
    def _check(self) -> Column:
        if self.type is ColumnType.CATEGORY:
            if not self.categories:
                raise ValueError("a category column needs a non-empty 'categories' list: list the values it takes")
            twice = sorted({c for c in self.categories if self.categories.count(c) > 1})
            if twice:
                raise ValueError(f"'categories' lists {twice} more than once: list each value once")
            if self.min is not None or self.max is not None:
                raise ValueError("'min'/'max' apply to numeric columns, not categories: remove them or set type: float")
        elif self.categories is not None:
            raise ValueError(f"'categories' only applies to category columns, not {self.type.value}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is greater than 'max' ({self.max})")
        if self.group_thresholds and not self.sensitive:
            raise ValueError("'group_thresholds' applies only to a sensitive column")
        if self.bands is not None:
            if not self.sensitive or self.type not in (ColumnType.INT, ColumnType.FLOAT):
                raise ValueError("'bands' apply only to numeric sensitive columns")
            if len(self.bands) < 2 or sorted(self.bands) != self.bands or len(set(self.bands)) != len(self.bands):
                raise ValueError("'bands' must be at least two strictly increasing edges")
        if self.risk_direction and self.type not in (ColumnType.INT, ColumnType.FLOAT):
            raise ValueError("'risk_direction' applies only to numeric columns")
        if self.model_input and self.exclude:
            raise ValueError("a column cannot be both excluded and a model input")
        if not self.nullable:
            if self.missing_codes:
                raise ValueError("missing_codes make values missing: set nullable: true")
            if self.null_tokens:
                raise ValueError("null_tokens make values missing: set nullable: true")
        if self.fairness_waiver is not None and (not self.sensitive or not self.fairness_waiver.strip()):
            raise ValueError("'fairness_waiver' is a reason, on a sensitive column: set sensitive: true and say why")
        if self.codes is not None:
            if self.type is not ColumnType.CATEGORY:
                raise ValueError(f"'codes' map file values to categories: set type: category (not {self.type.value})")
            unknown = sorted(set(self.codes.values()) - set(self.categories or []))
            if unknown:
                raise ValueError(f"codes map to {unknown}, which are not in 'categories': add them there")
        if self.formula is not None:
            if self.type not in (ColumnType.INT, ColumnType.FLOAT):
                raise ValueError(f"a formula column is numeric: set type: float (not {self.type.value})")
            formula_names(self.formula)
        return self

    @property
    def is_model_input(self) -> bool:
        if self.exclude:
            return False
        if self.model_input is not None:
            return self.model_input
        return not self.sensitive


def parse_formula(text: str) -> ast.expr:
    """The expression of a formula; only numbers, column names, + - * /, unary minus and parentheses."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"formula {text!r} is not an arithmetic expression ({exc.msg})") from exc
    for node in ast.walk(tree):
        ok = (
            isinstance(node, (ast.Name, ast.Load, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd))
            or (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)))
            or (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)))
            or (
                isinstance(node, ast.Constant)
                and isinstance(node.value, (int, float))
                and not isinstance(node.value, bool)
            )
        )
        if not ok:
            raise ValueError(
                f"formula {text!r}: {ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__!r} "
                "is not allowed; use numbers, column names, + - * / and parentheses"
            )
    return tree


def formula_names(text: str) -> set[str]:
    """The column names a formula reads."""
    return {node.id for node in ast.walk(parse_formula(text)) if isinstance(node, ast.Name)}


class FairnessPolicy(_Strict):
    """Fairness limits of a use case; a field left out keeps the training gates' default."""

    max_demographic_parity_difference: float | None = Field(default=None, ge=0, le=1)
    max_equalized_odds_difference: float | None = Field(default=None, ge=0, le=1)
    min_disparate_impact: float | None = Field(default=None, ge=0, le=1)
    min_group_rows: int | None = Field(default=None, ge=1, description="rows a group needs to be judged")
    min_group_outcomes: int | None = Field(default=None, ge=1, description="positives and negatives a group needs")
    max_fairness_worsening: float | None = Field(default=None, ge=0)
    mitigation: Literal["threshold_optimizer", "none"] | None = None


class Monitoring(_Strict):
    """What the monitor judges in production beyond drift: fairness of the served decisions, training-serving skew."""

    fairness_drift_action: Literal["retrain", "review"] = Field(
        default="review",
        description="a fairness-drift violation: 'retrain' lets it raise the alert that starts the guarded retrain; "
        "'review' emits its event and asks a person, without starting a retrain",
    )
    max_fairness_drift: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="how far a group's served approval rate, relative to its attribute's overall rate, or an "
        "error-rate gap may move from the version's evidence, beyond two standard errors of the window; the served "
        "decisions must also meet the contract's fairness limits",
    )
    skew_sample: int = Field(
        default=2000, ge=10, description="logged requests re-read from the offline store per window"
    )
    max_skew_share: float = Field(
        default=0.01, ge=0, le=1, description="share of sampled requests whose value of a feature may differ"
    )
    skew_tolerance: float = Field(
        default=1e-6, ge=0, description="relative difference under which two numbers count as equal"
    )


class Label(_Strict):
    column: Identifier
    source: Identifier
    positive: int = 1
    negative: int = 0
    codes: dict[str, int] | None = Field(
        default=None,
        description="a label written as text: file value -> positive or negative (e.g. {bad: 1, good: 0}); "
        "applied at ingest, before the label is read as an integer",
    )
    delay_days: int = Field(ge=0, description="how long after the application the outcome is known")
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Label:
        if self.codes is not None:
            wrong = sorted({v for v in self.codes.values()} - {self.positive, self.negative})
            if wrong:
                raise ValueError(
                    f"codes map to {wrong}: map each file value to positive ({self.positive}) or negative "
                    f"({self.negative})"
                )
        return self


class Decision(_Strict):
    """Business costs the decision threshold is chosen by (expected cost per application)."""

    cost_false_negative: float = Field(gt=0, description="approving a customer who defaults")
    cost_false_positive: float = Field(gt=0, description="refusing a customer who would have repaid")


class Contract(_Strict):
    """A use case: its tables, entity, prediction event, label, columns and sensitive attributes."""

    name: Identifier
    version: int = Field(ge=1)
    description: str = ""
    start: datetime = Field(description="no event before this instant is valid (UTC)")
    time_ordered: bool = Field(
        default=True, description="false when rows carry no usable time order: splits are then random"
    )
    entity: Entity
    tables: dict[Identifier, Table] = Field(min_length=1)
    prediction: Identifier = Field(
        description="the table whose rows are scored (one row = one decision); defaults to the only table"
    )
    label: Label
    columns: list[Column] = Field(min_length=1)
    decision: Decision
    key_type: Literal["int", "string"] = Field(default="int", description="type of the entity and primary keys")
    ratios: list[Ratio] = Field(default_factory=list)
    aggregates: list[Aggregate] = Field(default_factory=list)
    max_bad_row_share: float = Field(default=0.2, ge=0, le=1)
    min_feature_coverage: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description="share of matured applications that must have each feature table's rows at their time; "
        "below it the feature_coverage gate fails",
    )
    null_tokens: list[str] = Field(
        default_factory=list, description="text cells that mean missing in every column (the empty cell always does)"
    )
    fairness: FairnessPolicy = FairnessPolicy()
    monitoring: Monitoring = Monitoring()

    @model_validator(mode="before")
    @classmethod
    def _default_only_table(cls, data: Any) -> Any:
        """With one table, the prediction, the label and every column come from it unless they say otherwise."""
        if not isinstance(data, dict) or not isinstance(data.get("tables"), dict) or len(data["tables"]) != 1:
            return data
        only = next(iter(data["tables"]))
        data = {**data}
        data.setdefault("prediction", only)
        if isinstance(data.get("label"), dict):
            data["label"] = {"source": only, **data["label"]}
        if isinstance(data.get("columns"), list):
            data["columns"] = [{"source": only, **c} if isinstance(c, dict) else c for c in data["columns"]]
        return data

    @model_validator(mode="after")
    def _check(self) -> Contract:
        if self.start.tzinfo is None:
            raise ValueError("'start' needs a timezone (for example 2025-01-01T00:00:00Z)")
        tables = set(self.tables)
        if self.prediction not in tables:
            raise ValueError(f"'prediction' names unknown table {self.prediction!r} (known: {sorted(tables)})")
        if self.label.source not in tables:
            raise ValueError(f"'label.source' names unknown table {self.label.source!r} (known: {sorted(tables)})")
        seen: set[str] = set()
        rename = "give the column another name (its file header mapped in file.headers)"
        reserved = {
            self.entity.join_key: f"the entity's join_key): {rename}",
            self.label.column: f"the label): {rename}",
        }
        for name, table in self.tables.items():
            if table.as_of is not None:
                why = f"the time as_of adds to table {name!r}): set tables.{name}.event_time to another name"
            else:
                why = f"the event_time of table {name!r}): {rename}"
            reserved.setdefault(table.event_time, why)
            for key in table.primary_key:
                reserved.setdefault(key, f"in the primary_key of table {name!r}): {rename}")
        for i, col in enumerate(self.columns):
            if col.source not in tables:
                raise ValueError(
                    f"columns[{i}] ({col.name}).source: unknown table {col.source!r} (known: {sorted(tables)})"
                )
            if col.name in seen:
                raise ValueError(f"columns[{i}]: column {col.name!r} is declared twice")
            if col.name in reserved:
                raise ValueError(
                    f"columns[{i}]: {col.name!r} is a key, time or label column and cannot be a feature ("
                    + reserved[col.name]
                )
            seen.add(col.name)
        if self.is_flat and self.label.delay_days != 0:
            raise ValueError(
                f"label.delay_days: table {self.prediction!r} holds both the decisions and their label (the label "
                "arrives with its row): set delay_days: 0"
            )
        for i, col in enumerate(self.columns):
            if col.is_model_input and col.source == self.label.source and not self.is_flat:
                raise ValueError(
                    f"columns[{i}] ({col.name}): table {col.source!r} holds the label; inputs come from the "
                    f"prediction table {self.prediction!r} or a feature table: change its source or exclude it"
                )
        if not self.model_inputs:
            looked = "; ".join(
                f"{t}: " + (", ".join(f"{c.name} ({self._role(c)})" for c in self.columns_of(t)) or "no column")
                for t in self.tables
            )
            raise ValueError(
                f"no column is a model input: every column is sensitive or excluded (looked at {looked}); "
                "add a column, or set model_input: true on a sensitive one"
            )
        for name, table in self.tables.items():
            self._check_table(name, table)
        for i, col in enumerate(self.columns):
            if col.formula is None:
                continue
            operands = {c.name: c for c in self.columns_of(col.source)}
            for operand in sorted(formula_names(col.formula)):
                found = operands.get(operand)
                if found is None or found.type not in (ColumnType.INT, ColumnType.FLOAT) or found.formula:
                    raise ValueError(
                        f"columns[{i}] ({col.name}).formula: {operand!r} is not a numeric column of table "
                        f"{col.source!r} read from the file: use one of "
                        f"{sorted(c.name for c in operands.values() if c.type in ('int', 'float') and not c.formula)}"
                    )
            if col.name in self.tables[col.source].file.headers:
                raise ValueError(
                    f"columns[{i}] ({col.name}): a formula column is computed, not read: remove it from "
                    f"tables.{col.source}.file.headers"
                )
        numeric = {c.name for c in self.model_inputs if c.type in (ColumnType.INT, ColumnType.FLOAT)}
        for i, ratio in enumerate(self.ratios):
            for side in ("numerator", "denominator"):
                if getattr(ratio, side) not in numeric:
                    raise ValueError(
                        f"ratios[{i}] ({ratio.name}).{side}: {getattr(ratio, side)!r} is not a numeric model input"
                    )
        derived = [r.name for r in self.ratios] + [a.name for a in self.aggregates]
        for i, agg in enumerate(self.aggregates):
            if agg.column not in numeric:
                raise ValueError(f"aggregates[{i}] ({agg.name}).column: {agg.column!r} is not a numeric model input")
        clash = sorted((set(derived) & seen) | {n for n in derived if derived.count(n) > 1})
        if clash:
            raise ValueError(f"derived feature name(s) {clash} clash with a column or with each other")
        return self

    def _check_table(self, name: str, table: Table) -> None:
        where = f"tables.{name}"
        if isinstance(table.as_of, datetime):
            if table.as_of < self.start:
                raise ValueError(f"{where}.as_of ({table.as_of.isoformat()}) is before 'start': move one of them")
            if name == self.prediction and self.time_ordered:
                raise ValueError(
                    f"{where}.as_of: every row of the prediction table has the same time, so splits must be "
                    "random: set time_ordered: false"
                )
        required = self.required_columns(name)
        added = set(self.added_columns(name))
        for field in sorted(table.file.headers):
            if field not in required:
                raise ValueError(f"{where}.file.headers.{field}: table {name!r} has no column {field!r}: remove it")
        if table.file.columns is not None:
            for field in sorted(added & set(table.file.columns)):
                raise ValueError(
                    f"{where}.file.columns: {field!r} is added by closedloop (as_of, generated_key or a formula), "
                    "not read from the file: name that field otherwise or list it in file.ignore"
                )
            unread = [
                f"{column} (header {header!r})"
                for column, header in self.file_columns(name).items()
                if header not in table.file.columns
            ]
            if unread:
                raise ValueError(
                    f"{where}.file.columns: no field for {', '.join(unread)}: add the field to file.columns or map "
                    "the column to a listed field in file.headers"
                )

    def _role(self, col: Column) -> str:
        if col.exclude:
            return "excluded"
        if col.sensitive:
            return "sensitive"
        return "input"

    # --- derived views -------------------------------------------------------------------------
    @property
    def is_flat(self) -> bool:
        """One table holds the decisions and their label."""
        return self.prediction == self.label.source

    def added_columns(self, table: str) -> list[str]:
        """Columns of ``table`` closedloop adds at ingest: the as-of event time, the generated key, formulas."""
        spec = self.tables[table]
        names = [spec.event_time] if spec.as_of is not None else []
        if spec.generated_key is not None:
            names.append(spec.generated_key)
        names.extend(c.name for c in self.columns_of(table) if c.formula is not None)
        return list(dict.fromkeys(names))

    def file_columns(self, table: str) -> dict[str, str]:
        """Column name -> file header, for every column of ``table`` read from its files."""
        headers = self.tables[table].file.headers
        added = set(self.added_columns(table))
        return {name: headers.get(name, name) for name in self.required_columns(table) if name not in added}

    @property
    def model_inputs(self) -> list[Column]:
        """Columns the model is trained on, in contract order."""
        return [c for c in self.columns if c.is_model_input]

    @property
    def sensitive(self) -> list[Column]:
        return [c for c in self.columns if c.sensitive]

    @property
    def excluded(self) -> list[Column]:
        return [c for c in self.columns if c.exclude]

    def aggregates_of(self, table: str) -> list[Aggregate]:
        return [a for a in self.aggregates if self.column(a.column).source == table]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"contract {self.name!r} has no column {name!r}")

    def columns_of(self, table: str) -> list[Column]:
        if table not in self.tables:
            raise KeyError(f"contract {self.name!r} has no table {table!r}")
        return [c for c in self.columns if c.source == table]

    def required_columns(self, table: str) -> list[str]:
        """Every column a batch of ``table`` must carry: keys, entity, event time, label, features."""
        spec = self.tables[table]
        names = [self.entity.join_key, *spec.primary_key, spec.event_time]
        if table == self.label.source:
            names.append(self.label.column)
        names.extend(c.name for c in self.columns_of(table))
        return list(dict.fromkeys(names))

    @property
    def fingerprint(self) -> str:
        """Stable hash of the contract's content; recorded with every dataset and model version."""
        data = self.model_dump(mode="json", exclude={"description"})
        _drop_defaults(data, _ADDED_DEFAULTS["contract"])
        for table in data["tables"].values():
            _drop_defaults(table, _ADDED_DEFAULTS["table"])
        for column in data["columns"]:
            _drop_defaults(column, _ADDED_DEFAULTS["column"])
        _drop_defaults(data["label"], _ADDED_DEFAULTS["label"])
        canonical = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# Fields added after contracts were first fingerprinted: left at their default they are left out of the
# fingerprint, so a contract that does not use them keeps the fingerprint its data and models were recorded with.
_ADDED_DEFAULTS: dict[str, dict[str, Any]] = {
    "contract": {
        "null_tokens": [],
        "fairness": FairnessPolicy().model_dump(mode="json"),
        "monitoring": Monitoring().model_dump(mode="json"),
    },
    "table": {"as_of": None, "generated_key": None, "file": FileFormat().model_dump(mode="json")},
    "label": {"codes": None},
    "column": {"null_tokens": None, "missing_codes": [], "codes": None, "formula": None, "fairness_waiver": None},
}


def _drop_defaults(data: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, default in defaults.items():
        if data.get(key) == default:
            del data[key]


def _format_loc(loc: tuple[Any, ...], data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            name = (
                node[part].get("name")
                if isinstance(node, list) and part < len(node) and isinstance(node[part], dict)
                else None
            )
            out += f"[{part}]" + (f" ({name})" if name else "")
        else:
            out += ("." if out else "") + str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out or "(top level)"


def parse_contract(data: Any, origin: str = "<contract>") -> Contract:
    """Validate an already-parsed YAML document."""
    if not isinstance(data, dict):
        raise ContractError(f"{origin}: a contract is a mapping of fields, got {type(data).__name__}")
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = _format_loc(tuple(err["loc"]), data)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (not part of the contract schema)"
            elif err["type"] == "string_pattern_mismatch" and isinstance(err.get("input"), str):
                msg = (
                    f"{err['input']!r} is not a name closedloop can use: lower-case letters, digits and '_', starting "
                    "with a letter (a file header that is not one is mapped in file.headers: name -> header)"
                )
            lines.append(f"  {where}: {msg}")
        raise ContractError(f"{origin}: invalid contract\n" + "\n".join(lines)) from exc


def load_contract(path: str | Path) -> Contract:
    """Read and validate a contract file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ContractError(f"{path}: cannot read contract ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ContractError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    return parse_contract(data, origin=str(path))


@lru_cache(maxsize=8)
def _contract(path: str, mtime: float) -> Contract:
    return load_contract(path)


def contract_at(path: str) -> Contract:
    """Load a contract, cached per file version (its modification time)."""
    return _contract(path, Path(path).stat().st_mtime)
