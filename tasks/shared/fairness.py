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
    out: dict[str, Any] = {}
    for column in contract.sensitive:
        if column.name not in sensitive:
            out[column.name] = {"verdict": "skipped", "reason": "attribute not available for the test rows"}
            continue
        groups = groups_of(sensitive[column.name].reset_index(drop=True), column)
        out[column.name] = _assess_attribute(groups, y, p, refuse, limits)
    for column in contract.sensitive:  # why the contract lets the gate pass an attribute it could not judge
        if out[column.name]["verdict"] == "skipped" and column.fairness_waiver:
            out[column.name]["waiver"] = column.fairness_waiver
    return out


def _assess_attribute(
    groups: pd.Series, y: np.ndarray, p: np.ndarray, refuse: np.ndarray, limits: FairnessLimits
) -> dict[str, Any]:
    """One attribute's groups judged against the limits; skipped unless two groups have ``min_group_rows`` rows."""
    known = groups.notna().to_numpy()
    sizes = groups[known].value_counts()
    judged = [g for g, n in sizes.items() if n >= limits.min_group_rows]
    small = [g for g, n in sizes.items() if n < limits.min_group_rows]
    if len(judged) < 2:
        return {
            "verdict": "skipped",
            "groups": sizes.to_dict(),
            "reason": f"fewer than two groups with at least {limits.min_group_rows} rows",
        }
    mask = known & groups.isin(judged).to_numpy()
    labels = groups[mask].to_numpy()
    y_in, refuse_in = y[mask], refuse[mask]
    # Fairlearn sees one weighted row per (group, outcome, decision): the same rates and differences as on
    # every test row, in a few dozen rows instead of hundreds of thousands (its metrics walk rows in Python)
    cells, weight = _cells(labels, y_in, refuse_in)
    by_group = _metrics_by_group(cells, weight, labels, y_in, refuse_in, p[mask])
    rates = [v["approval_rate"] for v in by_group.values()]
    dp = float(
        demographic_parity_difference(
            cells["y"], cells["refuse"], sensitive_features=cells["group"], sample_weight=weight
        )
    )
    counted = _groups_with_enough_outcomes(judged, labels, y_in, limits.min_group_outcomes)
    eo = _equalized_odds_among(cells, weight, counted)
    di = float(min(rates) / max(rates)) if max(rates) > 0 else float("nan")
    result: dict[str, Any] = {
        "groups": {str(k): v for k, v in by_group.items()},
        "small_groups": {str(g): int(sizes[g]) for g in small},
        "demographic_parity_difference": dp,
        "equalized_odds_difference": eo,
        "disparate_impact": di,
        "equalized_odds_groups": [str(g) for g in counted],
    }
    failures = _failures(dp, eo, di, limits)
    result["verdict"] = "fail" if failures else "pass"
    result["failures"] = failures
    return result


def _metrics_by_group(
    cells: dict[str, np.ndarray],
    weight: np.ndarray,
    labels: np.ndarray,
    y: np.ndarray,
    refuse: np.ndarray,
    p: np.ndarray,
) -> dict[Any, dict[str, Any]]:
    """Approval rate, TPR, FPR, AUC and row count of each judged group."""
    frame = MetricFrame(
        metrics={"approval_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=cells["y"],
        y_pred=cells["refuse"],
        sensitive_features=cells["group"],
        sample_params={name: {"sample_weight": weight} for name in ("approval_rate", "tpr", "fpr")},
    )
    by_group: dict[Any, dict[str, Any]] = frame.by_group.to_dict(orient="index")
    approve = 1 - refuse
    for g in by_group:
        sel = labels == g
        by_group[g]["approval_rate"] = float(approve[sel].mean())
        by_group[g]["roc_auc"] = _auc(y[sel], p[sel])
        by_group[g]["rows"] = int(sel.sum())
    return by_group


def _groups_with_enough_outcomes(judged: list[Any], labels: np.ndarray, y: np.ndarray, min_outcomes: int) -> list[Any]:
    """The judged groups with at least ``min_outcomes`` defaults and as many repayments.

    A TPR over a dozen defaults moves by 0.1 with one applicant: equalized odds is judged only between these
    groups, the others are reported and flagged.
    """
    return [
        g for g in judged if min(int((y[labels == g] == 1).sum()), int((y[labels == g] == 0).sum())) >= min_outcomes
    ]


def _equalized_odds_among(cells: dict[str, np.ndarray], weight: np.ndarray, counted: list[Any]) -> float:
    """Equalized-odds difference between the ``counted`` groups; NaN when fewer than two."""
    if len(counted) < 2:
        return float("nan")
    among = np.isin(cells["group"], counted)
    return float(
        equalized_odds_difference(
            cells["y"][among],
            cells["refuse"][among],
            sensitive_features=cells["group"][among],
            sample_weight=weight[among],
        )
    )


def _failures(dp: float, eo: float, di: float, limits: FairnessLimits) -> list[str]:
    """The measures beyond their limits, named as the evidence reports them."""
    failures = []
    if dp > limits.max_demographic_parity_difference:
        failures.append("demographic parity difference")
    if eo == eo and eo > limits.max_equalized_odds_difference:  # NaN: fewer than two groups could be judged
        failures.append("equalized odds difference")
    if not di >= limits.min_disparate_impact:
        failures.append("disparate impact (four-fifths rule)")
    return failures


def _cells(*columns: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Distinct rows of (group, y, refuse, ...) and how many test rows each stands for."""
    frame = pd.DataFrame({f"c{i}": np.asarray(c) for i, c in enumerate(columns)})
    counted = frame.groupby(list(frame.columns), sort=True, dropna=False).size().reset_index(name="n")
    names = ["group", "y", "refuse", "other"]
    cells = {names[i]: counted[f"c{i}"].to_numpy() for i in range(len(columns))}
    for name in ("y", "refuse", "other"):
        if name in cells:
            cells[name] = cells[name].astype(int)
    return cells, counted["n"].to_numpy(dtype="float64")


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
    y = np.asarray(y, dtype=int)
    new_d, old_d = np.asarray(refuse_new, dtype=int), np.asarray(refuse_old, dtype=int)
    bounds: dict[tuple[str, str], float] = {}
    for column in contract.sensitive:
        result = new.get(column.name, {})
        if result.get("verdict") not in ("pass", "fail") or column.name not in sensitive:
            continue
        labels = groups_of(sensitive[column.name].reset_index(drop=True), column).astype(str).to_numpy()
        # resampling every row with a Poisson(1) weight gives each (group, y, new, old) cell a Poisson(count)
        # weight: the same bootstrap, drawn per cell instead of per row
        cells, count = _cells(labels, y, new_d, old_d)
        weights = rng.poisson(count, (rounds, len(count))).astype("float64")
        cy = cells["y"].astype("float64")
        cell_new, cell_old = cells["refuse"].astype("float64"), cells["other"].astype("float64")
        for measure, groups in (
            ("demographic_parity_difference", list(result["groups"])),
            ("equalized_odds_difference", list(result["equalized_odds_groups"])),
        ):
            if len(groups) < 2:
                continue
            onehot = np.stack([cells["group"] == g for g in groups], axis=1).astype("float64")
            everyone = np.ones_like(cy)
            if measure == "demographic_parity_difference":
                diff = _ranges(weights, onehot, cell_new, everyone) - _ranges(weights, onehot, cell_old, everyone)
            else:
                worst_new = np.maximum(
                    _ranges(weights, onehot, cell_new, cy), _ranges(weights, onehot, cell_new, 1 - cy)
                )
                worst_old = np.maximum(
                    _ranges(weights, onehot, cell_old, cy), _ranges(weights, onehot, cell_old, 1 - cy)
                )
                diff = worst_new - worst_old
            bounds[(column.name, measure)] = float(np.nanquantile(diff, 0.05))
    return bounds
