"""Scoring applications: one code path for the online service, the MLflow package, batch scoring and tests.

A version's model and decision rule (:class:`ScoringModel`: one threshold, or group thresholds when its fairness
gate chose them); probabilities, decisions and reasons of applications whose model inputs come from
:class:`StoredFeatures` (the online store: :class:`tasks.score.feature_source.FeatureSource`); a retrieved feature frame
as the model matrix (:func:`frame_matrix`).
The model sees one contiguous float matrix with categories as the contract's category codes, which is what the
pandas path hands XGBoost (tested equal). A single row through a pandas frame costs milliseconds in XGBoost; this
path keeps a request to one small numpy matrix, one DMatrix, one prediction and one SHAP pass.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from closedloop.contract import ColumnType, Contract
from closedloop.registry import decision_policy
from tasks.shared import explain

logger = logging.getLogger(__name__)


class StoredFeatures(Protocol):
    """Where an application's stored features come from: the online store (``feature_source.FeatureSource``)."""

    contract: Contract
    join_key: str

    def matrix(self, applications: Sequence[dict[str, Any]], columns: Sequence[str]) -> np.ndarray: ...

    def policy_values(self, attribute: str, keys: Sequence[Any]) -> list[Any]: ...

    def readable(self, matrix_row: np.ndarray, columns: Sequence[str]) -> dict[str, Any]: ...


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
    # decisions taken by the single threshold for a group the policy has no threshold for, by group
    unseen_groups: Counter[str] = field(default_factory=Counter, compare=False, repr=False)

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
        """Refuse or approve; group thresholds mix two thresholds per group, drawn from a hash of the request key.

        A group without a threshold of its own (absent when they were fitted: a new category, an empty band) is
        decided by the version's single threshold, as training judged it (``tasks.train.mitigation.decide``);
        ``unseen_groups`` counts those decisions, and the first of each group is logged.
        """
        if self.policy is None:
            return "refuse" if score >= self.threshold else "approve"
        rule = self.policy.get(group or "unknown")
        if rule is None:
            unseen = group or "unknown"
            self.unseen_groups[unseen] += 1
            if self.unseen_groups[unseen] == 1:
                logger.warning(
                    "v%s has no decision threshold for %s group %r: decided by its single threshold %.4f",
                    self.version,
                    self.policy_attribute,
                    unseen,
                    self.threshold,
                )
            return "refuse" if score >= self.threshold else "approve"
        draw = int.from_bytes(hashlib.sha256(f"{self.version}:{key}".encode()).digest()[:8], "big") / 2**64
        which = "0" if draw < rule["p0"] else "1"
        return "refuse" if score > rule[f"threshold{which}"] else "approve"


@dataclass
class Scored:
    entity_id: Any
    probability: float
    decision: str
    reasons: list[dict[str, Any]]
    features: dict[str, Any]  # as the model saw them (categories by name), for the inference log


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
    source: StoredFeatures,
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
    model: ScoringModel, source: StoredFeatures, applications: Sequence[dict[str, Any]], group_of: Any
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
    """The fairness group of one value: ``tasks.shared.fairness.groups_of`` for one application, without pandas."""
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
