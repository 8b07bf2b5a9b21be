"""Model evaluation on the test window.

Metrics with bootstrap intervals, the cost-optimal threshold, calibration, segments, and the paired comparison
with the champion on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

HEADLINE = ("roc_auc", "pr_auc", "ks", "brier")


def ks_statistic(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the score distributions of positives and negatives."""
    order = np.argsort(p, kind="stable")
    y_sorted = y[order]
    pos = np.cumsum(y_sorted) / max(y_sorted.sum(), 1)
    neg = np.cumsum(1 - y_sorted) / max((1 - y_sorted).sum(), 1)
    return float(np.max(np.abs(pos - neg)))


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "ks": ks_statistic(y, p),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
    }


def bootstrap_intervals(
    y: np.ndarray, p: np.ndarray, rounds: int = 200, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the headline metrics (resampling test rows)."""
    rng = np.random.default_rng(seed)
    n = len(y)
    draws: dict[str, list[float]] = {m: [] for m in HEADLINE}
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        yb, pb = y[idx], p[idx]
        if yb.min() == yb.max():
            continue
        draws["roc_auc"].append(float(roc_auc_score(yb, pb)))
        draws["pr_auc"].append(float(average_precision_score(yb, pb)))
        draws["ks"].append(ks_statistic(yb, pb))
        draws["brier"].append(float(np.mean((pb - yb) ** 2)))
    alpha = (1 - level) / 2
    return {m: (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) for m, v in draws.items() if v}


@dataclass
class Decision:
    threshold: float
    expected_cost: float  # per application
    confusion: dict[str, int] = field(default_factory=dict)


def decision_at(y: np.ndarray, p: np.ndarray, threshold: float, cost_fn: float, cost_fp: float) -> Decision:
    """Confusion and expected cost per application when refusing at ``p >= threshold``."""
    refuse = p >= threshold
    fn = int(np.sum(~refuse & (y == 1)))
    fp = int(np.sum(refuse & (y == 0)))
    tp, tn = int(np.sum(refuse & (y == 1))), int(np.sum(~refuse & (y == 0)))
    cost = float((cost_fn * fn + cost_fp * fp) / len(y))
    return Decision(float(threshold), cost, {"tp": tp, "fp": fp, "tn": tn, "fn": fn})


def cost_curve(y: np.ndarray, p: np.ndarray, cost_fn: float, cost_fp: float) -> tuple[np.ndarray, np.ndarray]:
    """Expected cost per application at each candidate threshold (score quantiles, plus refuse-all/none)."""
    thresholds = np.unique(np.concatenate([[0.0, 1.0 + 1e-9], np.quantile(p, np.linspace(0, 1, 201))]))
    order = np.argsort(p)
    ps, ys = p[order], y[order]
    below = np.searchsorted(ps, thresholds, side="left")  # rows approved at each threshold
    positives_below = np.concatenate([[0], np.cumsum(ys)])[below]
    negatives_above = (len(ys) - ys.sum()) - (below - positives_below)
    costs = (cost_fn * positives_below + cost_fp * negatives_above) / len(y)
    return thresholds, costs


def cost_threshold(y: np.ndarray, p: np.ndarray, cost_fn: float, cost_fp: float) -> Decision:
    """Refuse when p >= threshold; the threshold minimising the expected cost per application on these rows."""
    thresholds, costs = cost_curve(y, p, cost_fn, cost_fp)
    return decision_at(y, p, float(thresholds[int(np.argmin(costs))]), cost_fn, cost_fp)


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Observed default rate against mean predicted probability, by score decile."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    return [
        {
            "bin": int(b),
            "predicted": float(p[which == b].mean()),
            "observed": float(y[which == b].mean()),
            "rows": int((which == b).sum()),
        }
        for b in range(len(edges) - 1)
        if (which == b).any()
    ]


def segments(y: np.ndarray, p: np.ndarray, groups: dict[str, np.ndarray], min_rows: int = 50) -> dict[str, Any]:
    """AUC and default rate per value of each segmenting column (groups too small or single-class are flagged)."""
    out: dict[str, Any] = {}
    for column, values in groups.items():
        rows = {}
        for value in pd_unique(values):
            mask = values == value
            n = int(mask.sum())
            entry: dict[str, Any] = {"rows": n, "default_rate": float(y[mask].mean()) if n else None}
            if n >= min_rows and 0 < y[mask].sum() < n:
                entry["roc_auc"] = float(roc_auc_score(y[mask], p[mask]))
            else:
                entry["flag"] = "too small or single-class: reported, not judged"
            rows[str(value)] = entry
        out[column] = rows
    return out


def pd_unique(values: np.ndarray) -> list[Any]:
    return [v for v in dict.fromkeys(values.tolist()) if v is not None and v == v]


def paired_auc_difference(
    y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, rounds: int = 200, seed: int = 0
) -> dict[str, float]:
    """AUC(challenger) - AUC(champion) on the same rows, with a paired bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    diffs = []
    n = len(y)
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        if y[idx].min() == y[idx].max():
            continue
        diffs.append(float(roc_auc_score(y[idx], p_new[idx]) - roc_auc_score(y[idx], p_old[idx])))
    point = float(roc_auc_score(y, p_new) - roc_auc_score(y, p_old))
    return {"difference": point, "lower": float(np.quantile(diffs, 0.025)), "upper": float(np.quantile(diffs, 0.975))}
