"""The dataset contract: one YAML file that describes a use case, from which everything else is derived.

The validation suite, the Feast definitions, the training feature list, the fairness groups and the
serving request schema are all computed from a :class:`Contract`; a new dataset is a new contract file,
not new code. Loading a malformed contract raises :class:`ContractError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
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


class Table(_Strict):
    """A source table as it arrives in the landing zone."""

    event_time: Identifier = Field(description="UTC timestamp column: when the row became true")
    primary_key: list[Identifier] = Field(min_length=1, description="columns unique within the table")
    ttl_days: int = Field(default=3650, ge=1, description="how long a row stays a valid feature value")
    restatement: Literal["quarantine", "store"] = Field(
        default="quarantine",
        description="a row whose primary key is already stored with other values: rejected with the key and the "
        "columns that differ (quarantine), or stored as the newer version of that row (store)",
    )
    description: str = ""


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

    @model_validator(mode="after")
    def _check(self) -> Column:
        if self.type is ColumnType.CATEGORY:
            if not self.categories:
                raise ValueError("a category column needs a non-empty 'categories' list")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError("'categories' lists a value twice")
            if self.min is not None or self.max is not None:
                raise ValueError("'min'/'max' apply to numeric columns, not categories")
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
        return self

    @property
    def is_model_input(self) -> bool:
        if self.exclude:
            return False
        if self.model_input is not None:
            return self.model_input
        return not self.sensitive


class Label(_Strict):
    column: Identifier
    source: Identifier
    positive: int = 1
    negative: int = 0
    delay_days: int = Field(ge=0, description="how long after the application the outcome is known")
    description: str = ""


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
    prediction: Identifier = Field(description="the table whose rows are scored (one row = one decision)")
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
        reserved = {self.entity.join_key, self.label.column}
        for table in self.tables.values():
            reserved.add(table.event_time)
            reserved.update(table.primary_key)
        for i, col in enumerate(self.columns):
            if col.source not in tables:
                raise ValueError(
                    f"columns[{i}] ({col.name}).source: unknown table {col.source!r} (known: {sorted(tables)})"
                )
            if col.name in seen:
                raise ValueError(f"columns[{i}]: column {col.name!r} is declared twice")
            if col.name in reserved:
                raise ValueError(f"columns[{i}]: {col.name!r} is a key, time or label column and cannot be a feature")
            seen.add(col.name)
        if not self.model_inputs:
            raise ValueError("no column is a model input: every column is sensitive or excluded")
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

    # --- derived views -------------------------------------------------------------------------
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
        canonical = self.model_dump_json(exclude={"description"})
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
