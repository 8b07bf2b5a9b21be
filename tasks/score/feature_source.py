"""Model inputs of applications from the online store: the model's Feast FeatureService and the request's fields.

The stored features are read through Feast's own online read, or straight from the store's tables when the
store supports it (``feature_repo.online_read``, tested equal); the contract's ratios are computed by the same
function Feast's on-demand view runs (``feature_repo.transforms.ratio_values``). A contract without stored views
(one flat table: every input arrives with the application) reads nothing from the online store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from closedloop.contract import ColumnType, Contract
from feature_repo.transforms import ratio_values
from tasks.score.scoring import UnknownEntities
from tasks.shared.features import feature_names


@dataclass
class FeatureSource:
    """Model inputs of applications from the online store (Feast's FeatureService) and the request fields."""

    store: Any
    contract: Contract
    fast: bool = True
    _reader: Any = field(init=False, default=None)
    _service: Any = field(init=False, default=None)
    _plans: dict[tuple[str, ...], Any] = field(init=False, default_factory=dict)
    _policy_service: Any = field(init=False, default=None)
    _policy_reader: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        from feast.errors import FeatureServiceNotFoundException

        from feature_repo import online_read
        from feature_repo.definitions import model_service_name, policy_columns, policy_service_name
        from feature_repo.store import service_refs, stored_views

        contract = self.contract
        self._service = self.store.get_feature_service(model_service_name(contract))
        # a contract whose inputs all arrive with the application (one flat table) has nothing stored to read
        self.reads_store = bool(stored_views(self.store, service_refs(self._service)))
        if self.reads_store and self.fast and online_read.supported(self.store, self._service):
            self._reader = online_read.OnlineReader(self.store, self._service)
        self.policy_fields = {c.name for c in policy_columns(contract)}
        if self.policy_fields:
            try:  # a registry applied before the policy view existed has none until the next ingest
                self._policy_service = self.store.get_feature_service(policy_service_name(contract))
            except FeatureServiceNotFoundException:
                self._policy_service = None
            if (
                self._policy_service is not None
                and self.fast
                and online_read.supported(self.store, self._policy_service)
            ):
                self._policy_reader = online_read.OnlineReader(self.store, self._policy_service)
        self.join_key = contract.entity.join_key
        self.request_fields = {c.name for c in contract.columns_of(contract.prediction) if c.is_model_input}
        self.names = feature_names(contract)
        self.ratios = list(contract.ratios)
        aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
        self.codes: dict[str, dict[Any, float]] = {}
        for name in self.names:
            if name in aggregates:
                continue
            column = contract.column(name)
            if column.type is ColumnType.CATEGORY:
                self.codes[name] = {c: float(i) for i, c in enumerate(column.categories or [])}

    @property
    def uses_fast_path(self) -> bool:
        return self._reader is not None

    def stored(self, keys: Sequence[Any]) -> list[dict[str, Any] | None]:
        """Stored features per key (None for an unknown entity), from the store's tables or through Feast."""
        if not self.reads_store:
            return [{} for _ in keys]
        if self._reader is not None:
            return list(self._reader.read(keys))
        from feature_repo.online_read import feast_rows

        return feast_rows(self.store, self._service, self.join_key, keys)

    def policy_values(self, attribute: str, keys: Sequence[Any]) -> list[Any]:
        """The stored value of a decision policy's group attribute per key (None where the store has none)."""
        if attribute not in self.policy_fields or self._policy_service is None:
            return [None] * len(keys)
        if self._policy_reader is not None:
            rows = self._policy_reader.read(keys)
        else:
            from feature_repo.online_read import feast_rows

            rows = feast_rows(self.store, self._policy_service, self.join_key, keys)
        return [None if row is None else row.get(attribute) for row in rows]

    def matrix(self, applications: Sequence[dict[str, Any]], columns: Sequence[str]) -> np.ndarray:
        """The model matrix (rows = applications, ``columns`` in the model's order); raises UnknownEntities."""
        keys = [a[self.join_key] for a in applications]
        stored = self.stored(keys)
        unknown = [k for k, row in zip(keys, stored, strict=True) if row is None]
        if unknown:
            raise UnknownEntities(self.join_key, unknown)
        inputs, positions = self._plan(tuple(columns))
        values = np.empty((len(applications), len(inputs)), dtype="float64")
        requested = self.request_fields
        for i, (found, application) in enumerate(zip(stored, applications, strict=True)):
            row = found or {}
            for j, (name, codes) in enumerate(inputs):
                raw = application.get(name) if name in requested else row.get(name)
                if codes is not None:
                    values[i, j] = codes.get(raw, math.nan)
                else:
                    values[i, j] = math.nan if raw is None else float(raw)
        values[~np.isfinite(values)] = math.nan
        index = {name: j for j, (name, _) in enumerate(inputs)}
        out = np.empty((len(applications), len(columns)), dtype="float64")
        for target, source in enumerate(positions):
            if isinstance(source, int):
                out[:, target] = values[:, source]
            else:  # a ratio, by the definition training's on-demand view uses
                out[:, target] = ratio_values(values[:, index[source[0]]], values[:, index[source[1]]])
        return out

    def _plan(self, columns: tuple[str, ...]) -> tuple[list[tuple[str, dict[Any, float] | None]], list[Any]]:
        """Which raw inputs to read (with their category codes) and where each model column comes from."""
        plan = self._plans.get(columns)
        if plan is None:
            plan = self._plans[columns] = self._make_plan(columns)
        return plan

    def _make_plan(self, columns: tuple[str, ...]) -> tuple[list[tuple[str, dict[Any, float] | None]], list[Any]]:
        ratios = {r.name: (r.numerator, r.denominator) for r in self.ratios}
        unknown = [c for c in columns if c not in self.names]
        if unknown:
            raise ValueError(f"the model needs {unknown}, which contract {self.contract.name!r} does not define")
        names = [c for c in columns if c not in ratios]
        for numerator, denominator in (ratios[c] for c in columns if c in ratios):
            names += [n for n in (numerator, denominator) if n not in names]
        inputs = [(name, self.codes.get(name)) for name in names]
        positions: list[Any] = [names.index(c) if c not in ratios else ratios[c] for c in columns]
        return inputs, positions

    def readable(self, matrix_row: np.ndarray, columns: Sequence[str]) -> dict[str, Any]:
        """One matrix row as the inference log keeps it: numbers, categories by name, None for missing."""
        out: dict[str, Any] = {}
        for value, name in zip(matrix_row.tolist(), columns, strict=True):
            if value != value:
                out[name] = None
            elif name in self.codes:
                out[name] = (self.contract.column(name).categories or [])[int(value)]
            else:
                out[name] = value
        return out
