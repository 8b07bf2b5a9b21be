"""Fairness of the refusal decision across the contract's sensitive attributes, with Fairlearn.

The favourable outcome for an applicant is approval (score below the threshold). For each sensitive attribute
(numeric ones in the contract's bands) it reports approval rate, TPR, FPR and AUC by group, the
demographic-parity and equalized-odds differences and the disparate-impact ratio of approval rates
(four-fifths rule). Groups below ``min_group_rows`` are reported and flagged but not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import roc_auc_score

from closedloop.contract import Column, Contract


@dataclass(frozen=True)
class FairnessLimits:
    max_demographic_parity_difference: float = 0.15
    max_equalized_odds_difference: float = 0.15
    min_disparate_impact: float = 0.8
    min_group_rows: int = 50
    max_worsening_vs_champion: float = 0.02
    min_group_outcomes: int = 30  # defaults and repayments a group needs for its TPR/FPR to be judged


def groups_of(values: pd.Series, column: Column) -> pd.Series:
    """Group labels of a sensitive attribute: categories as they are, numbers in the contract's bands."""
    if column.bands:
        edges = column.bands
        labels = [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)]
        return pd.cut(pd.to_numeric(values, errors="coerce"), bins=edges, right=False, labels=labels).astype(object)
    return values.astype(object)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def assess(
    contract: Contract,
    sensitive: pd.DataFrame,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    limits: FairnessLimits,
    decisions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per sensitive attribute: metrics by group, the three disparity measures, and whether they pass the limits.

    ``decisions`` (1 = refuse) replaces ``p >= threshold`` for a candidate whose decisions are not one threshold
    on the score (group thresholds); AUC by group is still that of the scores ``p``.
    """
    refuse = (p >= threshold).astype(int) if decisions is None else np.asarray(decisions, dtype=int)
    approve = 1 - refuse
    out: dict[str, Any] = {}
    for column in contract.sensitive:
        if column.name not in sensitive:
            out[column.name] = {"verdict": "skipped", "reason": "attribute not available for the test rows"}
            continue
        groups = groups_of(sensitive[column.name].reset_index(drop=True), column)
        known = groups.notna().to_numpy()
        sizes = groups[known].value_counts()
        judged = [g for g, n in sizes.items() if n >= limits.min_group_rows]
        small = [g for g, n in sizes.items() if n < limits.min_group_rows]
        if len(judged) < 2:
            out[column.name] = {
                "verdict": "skipped",
                "groups": sizes.to_dict(),
                "reason": f"fewer than two groups with at least {limits.min_group_rows} rows",
            }
            continue
        mask = known & groups.isin(judged).to_numpy()
        frame = MetricFrame(
            metrics={"approval_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
            y_true=y[mask],
            y_pred=refuse[mask],
            sensitive_features=groups[mask].to_numpy(),
        )
        by_group = frame.by_group.to_dict(orient="index")
        for g in by_group:
            sel = groups[mask].to_numpy() == g
            by_group[g]["approval_rate"] = float(approve[mask][sel].mean())
            by_group[g]["roc_auc"] = _auc(y[mask][sel], p[mask][sel])
            by_group[g]["rows"] = int(sel.sum())
        rates = [v["approval_rate"] for v in by_group.values()]
        dp = float(demographic_parity_difference(y[mask], refuse[mask], sensitive_features=groups[mask].to_numpy()))
        # a TPR over a dozen defaults moves by 0.1 with one applicant: equalized odds is judged only between
        # groups with enough defaults and repayments, the others are reported and flagged
        labels = groups[mask].to_numpy()
        counted = [
            g
            for g in judged
            if min(int((y[mask][labels == g] == 1).sum()), int((y[mask][labels == g] == 0).sum()))
            >= limits.min_group_outcomes
        ]
        eo_mask = known & groups.isin(counted).to_numpy()
        eo = (
            float(equalized_odds_difference(y[eo_mask], refuse[eo_mask], sensitive_features=groups[eo_mask].to_numpy()))
            if len(counted) >= 2
            else float("nan")
        )
        di = float(min(rates) / max(rates)) if max(rates) > 0 else float("nan")
        result: dict[str, Any] = {
            "groups": {str(k): v for k, v in by_group.items()},
            "small_groups": {str(g): int(sizes[g]) for g in small},
            "demographic_parity_difference": dp,
            "equalized_odds_difference": eo,
            "disparate_impact": di,
            "equalized_odds_groups": [str(g) for g in counted],
        }
        failures = []
        if dp > limits.max_demographic_parity_difference:
            failures.append("demographic parity difference")
        if eo == eo and eo > limits.max_equalized_odds_difference:  # NaN: fewer than two groups could be judged
            failures.append("equalized odds difference")
        if not di >= limits.min_disparate_impact:
            failures.append("disparate impact (four-fifths rule)")
        result["verdict"] = "fail" if failures else "pass"
        result["failures"] = failures
        out[column.name] = result
    return out


def _ranges(weights: np.ndarray, onehot: np.ndarray, numerator: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Per bootstrap round: max - min over groups of the weighted share of ``numerator`` among ``among`` rows."""
    num = weights @ (onehot * (numerator * among)[:, None])
    den = weights @ (onehot * among[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = num / den
    out: np.ndarray = np.nanmax(rates, axis=1) - np.nanmin(rates, axis=1)
    return out


def worsening_bounds(
    contract: Contract,
    sensitive: pd.DataFrame,
    y: np.ndarray,
    refuse_new: np.ndarray,
    refuse_old: np.ndarray,
    new: dict[str, Any],
    rounds: int = 400,
    seed: int = 0,
) -> dict[tuple[str, str], float]:
    """One-sided 95% lower bounds of (new - champion) disparity, by a paired bootstrap of the test rows.

    Both decisions are judged on the same resampled rows, over the groups the new model was judged on, so a
    bound above zero means the new model is less fair beyond the noise of a few dozen defaults per group.
    """
    rng = np.random.default_rng(seed)
    weights = rng.poisson(1.0, (rounds, len(y))).astype("float64")
    y = np.asarray(y, dtype="float64")
    new_d, old_d = np.asarray(refuse_new, dtype="float64"), np.asarray(refuse_old, dtype="float64")
    bounds: dict[tuple[str, str], float] = {}
    for column in contract.sensitive:
        result = new.get(column.name, {})
        if result.get("verdict") not in ("pass", "fail") or column.name not in sensitive:
            continue
        labels = groups_of(sensitive[column.name].reset_index(drop=True), column).astype(str).to_numpy()
        for measure, groups in (
            ("demographic_parity_difference", list(result["groups"])),
            ("equalized_odds_difference", list(result["equalized_odds_groups"])),
        ):
            if len(groups) < 2:
                continue
            onehot = np.stack([labels == g for g in groups], axis=1).astype("float64")
            everyone = np.ones_like(y)
            if measure == "demographic_parity_difference":
                diff = _ranges(weights, onehot, new_d, everyone) - _ranges(weights, onehot, old_d, everyone)
            else:
                worst_new = np.maximum(_ranges(weights, onehot, new_d, y), _ranges(weights, onehot, new_d, 1 - y))
                worst_old = np.maximum(_ranges(weights, onehot, old_d, y), _ranges(weights, onehot, old_d, 1 - y))
                diff = worst_new - worst_old
            bounds[(column.name, measure)] = float(np.nanquantile(diff, 0.05))
    return bounds
