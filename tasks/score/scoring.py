"""Scoring applications from their raw fields: one code path for the online service, the MLflow package and tests.

An application carries its key and the prediction table's own fields; the stored features come from the online
store through the model's FeatureService, the contract's ratios are computed by the same function Feast's
on-demand view runs (``feature_repo.transforms.ratio_values``), and the model sees one contiguous float matrix
with categories as the contract's category codes, which is what the pandas path hands XGBoost (tested equal).
A single row through a pandas frame costs milliseconds in XGBoost; this path keeps a request to one small numpy
matrix, one DMatrix, one prediction and one SHAP pass.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from closedloop.contract import ColumnType, Contract
from feature_repo.transforms import ratio_values
from tasks.shared import explain
from tasks.shared.features import feature_names


class ScoringInputError(ValueError):
    """An application the schema accepted but this model cannot decide on (e.g. its policy needs a field)."""


class UnknownEntities(LookupError):
    """No stored features for these keys: unknown, or not (yet) in the online store."""

    def __init__(self, join_key: str, keys: list[Any]) -> None:
        self.keys = keys
        super().__init__(f"no features for {join_key} {keys[:10]}: unknown or not yet ingested")


@dataclass(frozen=True)
class ScoringModel:
    """One registered version, ready to score: its booster, decision threshold and (maybe) group policy."""

    version: str
    booster: Any
    columns: list[str]
    threshold: float
    iteration_range: tuple[int, int] = (0, 0)
    policy: dict[str, dict[str, Any]] | None = None  # group thresholds, when the fairness gate needed them
    policy_attribute: str | None = None

    @classmethod
    def of(
        cls,
        version: str,
        model: Any,
        threshold: float,
        policy: dict[str, dict[str, Any]] | None = None,
        policy_attribute: str | None = None,
        threads: int = 1,
    ) -> ScoringModel:
        """From the fitted scikit-learn wrapper MLflow loads.

        ``threads=1`` for online scoring (a request is one row: a thread pool costs more than it saves);
        ``threads=0`` (all cores) for batches.
        """
        booster = model.get_booster()
        booster.set_param({"nthread": threads})
        best = getattr(model, "best_iteration", None)
        return cls(
            version=version,
            booster=booster,
            columns=list(booster.feature_names),
            threshold=threshold,
            iteration_range=(0, int(best) + 1) if best is not None else (0, 0),
            policy=policy,
            policy_attribute=policy_attribute,
        )

    @classmethod
    def from_evidence(cls, version: str, model: Any, evidence: dict[str, Any], threads: int = 1) -> ScoringModel:
        """The version's threshold, or its group policy when its fairness gate chose one, from its evidence."""
        from closedloop.registry import decision_policy

        mitigation = evidence.get("report", {}).get("mitigation") or {}
        uses_policy = decision_policy(evidence).startswith("threshold_optimizer")
        return cls.of(
            version,
            model,
            threshold=float(evidence["decision_threshold"]),
            policy=mitigation.get("policy") if uses_policy else None,
            policy_attribute=mitigation.get("attribute") if uses_policy else None,
            threads=threads,
        )

    def predict(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and SHAP contributions (log-odds, bias last) of the rows of ``matrix``."""
        import xgboost as xgb

        # columns are the booster's own order (self.columns) and category splits live in the trees, so the
        # DMatrix skips naming them (a third of its cost for one row); equal to the named path, tested
        data = xgb.DMatrix(matrix, nthread=1)
        probabilities = self.booster.predict(data, iteration_range=self.iteration_range, validate_features=False)
        contributions = self.booster.predict(
            data, pred_contribs=True, iteration_range=self.iteration_range, validate_features=False
        )
        return np.asarray(probabilities, dtype="float64"), np.asarray(contributions)

    def predict_batch(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities of many rows at once (no reasons): XGBoost's ``inplace_predict``, no DMatrix copy."""
        return np.asarray(self.booster.inplace_predict(matrix, iteration_range=self.iteration_range), dtype="float64")

    def decide(self, score: float, key: str, group: str | None) -> str:
        """Refuse or approve; group thresholds mix two thresholds per group, drawn from a hash of the request key."""
        if self.policy is None:
            return "refuse" if score >= self.threshold else "approve"
        rule = self.policy.get(group or "unknown")
        if rule is None:
            raise ScoringInputError(f"no decision threshold for {self.policy_attribute} group {group!r}")
        draw = int.from_bytes(hashlib.sha256(f"{self.version}:{key}".encode()).digest()[:8], "big") / 2**64
        which = "0" if draw < rule["p0"] else "1"
        return "refuse" if score > rule[f"threshold{which}"] else "approve"


def load_version(tracking_uri: str, dataset: str, version: str, threads: int = 1) -> ScoringModel:
    """A registered version with its decision threshold (or group policy) from its evidence record."""
    from closedloop.registry import load_model, read_evidence

    model = load_model(tracking_uri, dataset, version)
    return ScoringModel.from_evidence(version, model, read_evidence(tracking_uri, dataset, version), threads)


@dataclass
class Scored:
    entity_id: Any
    probability: float
    decision: str
    reasons: list[dict[str, Any]]
    features: dict[str, Any]  # as the model saw them (categories by name), for the inference log


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

        contract = self.contract
        self._service = self.store.get_feature_service(model_service_name(contract))
        if self.fast and online_read.supported(self.store, self._service):
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


def frame_matrix(frame: Any, contract: Contract, columns: Sequence[str]) -> np.ndarray:
    """A feature frame (point-in-time retrieval, training's columns) as the model matrix, column by column.

    Categories become the contract's category codes (unknown or missing: NaN), everything else float64 with
    inf as missing: what ``typed_features`` gives XGBoost, without building a categorical frame.
    """
    import pandas as pd

    aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    out = np.empty((len(frame), len(columns)), dtype="float64")  # C order: what inplace_predict reads
    for j, name in enumerate(columns):
        column = None if name in aggregates else contract.column(name)
        if column is not None and column.type is ColumnType.CATEGORY:
            codes = pd.Categorical(frame[name], categories=column.categories).codes
            out[:, j] = np.where(codes >= 0, codes, np.nan)
        else:
            series = frame[name]
            if series.dtype != "float64":
                series = pd.to_numeric(series, errors="coerce")
            out[:, j] = series.to_numpy(dtype="float64", na_value=np.nan)
    infinite = np.isinf(out)
    if infinite.any():
        out[infinite] = np.nan
    return out


def decisions(model: ScoringModel, probabilities: np.ndarray) -> np.ndarray:
    """Single-threshold decisions of a batch (group-threshold policies need the request key: see ``decide``)."""
    if model.policy is not None:
        raise ScoringInputError(f"v{model.version} decides with group thresholds; score it application by application")
    return np.where(probabilities >= model.threshold, "refuse", "approve")


def score(
    model: ScoringModel,
    source: FeatureSource,
    applications: Sequence[dict[str, Any]],
    group_of: Any = None,
    reasons: int = 3,
) -> list[Scored]:
    """Probability, decision, top reasons and served features of each application, in order."""
    matrix = source.matrix(applications, model.columns)
    probabilities, contributions = model.predict(matrix)
    groups = _policy_groups(model, source, applications, group_of)
    out = []
    for i, application in enumerate(applications):
        group = groups[i]
        probability = float(probabilities[i])
        out.append(
            Scored(
                entity_id=application[source.join_key],
                probability=probability,
                decision=model.decide(probability, f"{application[source.join_key]}", group),
                reasons=explain.top_reasons(contributions[i], model.columns, k=reasons),
                features=source.readable(matrix[i], model.columns),
            )
        )
    return out


def _policy_groups(
    model: ScoringModel, source: FeatureSource, applications: Sequence[dict[str, Any]], group_of: Any
) -> list[str | None]:
    """Each application's group under the model's decision policy: from the request, else from the online store."""
    attribute = model.policy_attribute
    if not attribute:
        return [None] * len(applications)
    values = [a.get(attribute) for a in applications]
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        stored = source.policy_values(attribute, [applications[i][source.join_key] for i in missing])
        for i, value in zip(missing, stored, strict=True):
            values[i] = value
    unplaced = [applications[i][source.join_key] for i, v in enumerate(values) if v is None]
    if unplaced:
        raise ScoringInputError(
            f"model v{model.version} decides with group thresholds on '{attribute}', which neither the request "
            f"nor the online store gives for {source.join_key} {unplaced[:10]}"
        )
    place = group_of or (lambda name, value: policy_group(source.contract, name, value))
    return [place(attribute, v) for v in values]


def policy_group(contract: Contract, attribute: str, value: Any) -> str:
    """The fairness group of one value (``tasks.shared.fairness.groups_of`` for a single application, without pandas)."""
    column = contract.column(attribute)
    if not column.bands:
        return "unknown" if value is None else str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "unknown"
    edges = column.bands
    if not edges[0] <= number < edges[-1]:  # also NaN
        return "unknown"
    i = bisect.bisect_right(edges, number) - 1
    return f"{edges[i]:g}-{edges[i + 1]:g}"
