"""A fairness-mitigated candidate: the same scores, a decision threshold per group (Fairlearn's ThresholdOptimizer).

Tried only when the fairness gate fails, the gates allow it, and the contract marks the failing attribute with
``group_thresholds: true`` (the attribute is then needed when deciding, which is a legal question for the team
that owns the contract: the default contracts allow it for age bands only, never for sex or marital status).
The optimizer is fitted on the validation split, never on the test window it is judged on. Fairlearn's decisions
mix two thresholds per group at random in fixed proportions; they are drawn with a fixed seed here, and the
thresholds and proportions are recorded so that serving can reproduce the policy.

A group the optimizer never saw (absent from the validation split: a rare category, a band nobody fell in) has
no threshold of its own: its rows are decided by the single threshold, here as in serving
(``tasks.score.scoring.ScoringModel.decide``), and counted, so the candidate is judged on the rule it deploys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.postprocessing import ThresholdOptimizer

from closedloop.contract import Column
from tasks.shared.fairness import groups_of

CONSTRAINT = "demographic_parity"
OBJECTIVE = "balanced_accuracy_score"
UNKNOWN = "unknown"


class MitigationError(ValueError):
    """The mitigated candidate cannot be built or judged; the fairness gate stays failed."""


def group_labels(values: pd.Series, column: Column) -> np.ndarray:
    """Groups of ``column`` as the optimizer sees them; a missing value is a group of its own."""
    labels: np.ndarray = groups_of(values.reset_index(drop=True), column).fillna(UNKNOWN).astype(str).to_numpy()
    return labels


def fit(model: Any, x: pd.DataFrame, y: np.ndarray, groups: np.ndarray) -> ThresholdOptimizer:
    """Group thresholds for the fitted ``model`` (positive class = refuse) on a split other than the test."""
    if len(np.unique(y)) < 2:
        raise MitigationError("the validation split holds one class only: group thresholds cannot be fitted")
    optimizer = ThresholdOptimizer(
        estimator=model, constraints=CONSTRAINT, objective=OBJECTIVE, prefit=True, predict_method="predict_proba"
    )
    try:
        optimizer.fit(x, y, sensitive_features=groups)
    except ValueError as exc:  # e.g. a group with one class only
        raise MitigationError(f"ThresholdOptimizer could not be fitted: {exc}") from exc
    return optimizer


@dataclass(frozen=True)
class Decisions:
    """The candidate's refusals (1 = refuse), and the rows of each group without a threshold of its own."""

    refuse: np.ndarray
    single_threshold_rows: dict[str, int]


def decide(
    optimizer: ThresholdOptimizer, x: pd.DataFrame, groups: np.ndarray, seed: int, scores: np.ndarray, threshold: float
) -> Decisions:
    """Refusals of the mitigated candidate; a group the optimizer never saw is refused at ``scores >= threshold``."""
    groups = np.asarray(groups)
    fitted = np.isin(groups, list(optimizer.interpolated_thresholder_.interpolation_dict))
    refuse = (np.asarray(scores) >= threshold).astype(int)
    if fitted.any():
        at = np.flatnonzero(fitted)
        refuse[at] = optimizer.predict(x.iloc[at], sensitive_features=groups[at], random_state=seed)
    unseen, counts = np.unique(groups[~fitted], return_counts=True)
    return Decisions(refuse, {str(g): int(n) for g, n in zip(unseen, counts, strict=True)})


def policy(optimizer: ThresholdOptimizer) -> dict[str, dict[str, float | str]]:
    """The thresholds per group: refuse when score > threshold0 with probability p0, else score > threshold1."""
    out: dict[str, dict[str, float | str]] = {}
    for group, rule in optimizer.interpolated_thresholder_.interpolation_dict.items():
        out[str(group)] = {
            "p0": float(rule["p0"]),
            "operator0": str(rule["operation0"].operator),
            "threshold0": float(rule["operation0"].threshold),
            "p1": float(rule["p1"]),
            "operator1": str(rule["operation1"].operator),
            "threshold1": float(rule["operation1"].threshold),
        }
    return out
