"""Explanations from XGBoost's native SHAP contributions: global importance, importance by group, top reasons.

``pred_contribs`` gives, per row, one additive contribution per feature plus a bias, in log-odds: they sum to the
model's margin, so the reasons returned to an applicant add up to the score they were given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def contributions(model: Any, features: pd.DataFrame) -> np.ndarray:
    """Per-row SHAP values (log-odds), one column per feature and a last column for the bias."""
    import xgboost as xgb

    matrix = xgb.DMatrix(features, enable_categorical=True)
    return np.asarray(model.get_booster().predict(matrix, pred_contribs=True))


def global_importance(contribs: np.ndarray, names: list[str], top: int = 15) -> dict[str, float]:
    """Mean absolute contribution per feature, largest first."""
    mean_abs = np.abs(contribs[:, : len(names)]).mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")[:top]
    return {names[i]: float(mean_abs[i]) for i in order}


def importance_by_group(
    contribs: np.ndarray, names: list[str], groups: pd.Series, top: int = 5, min_rows: int = 50
) -> dict[str, dict[str, float]]:
    """Global importance within each group of a sensitive attribute (groups under ``min_rows`` left out)."""
    labels = groups.to_numpy(dtype=object)
    out = {}
    for group in pd.unique(labels):
        if pd.isna(group):  # applicants without the attribute form no group
            continue
        mask = np.asarray((groups == group).fillna(False).to_numpy(dtype=bool), dtype=bool)
        if mask.sum() < min_rows:
            continue
        out[str(group)] = global_importance(contribs[mask], names, top)
    return out


def top_reasons(row: np.ndarray, names: list[str], k: int = 3) -> list[dict[str, Any]]:
    """The ``k`` features that raised this applicant's risk the most (positive contributions only)."""
    values = row[: len(names)]
    order = [i for i in np.argsort(-values, kind="stable")[:k] if values[i] > 0]
    return [{"feature": names[i], "contribution": float(values[i])} for i in order]
