"""Model evaluation on the test window.

Metrics with bootstrap intervals, the cost-optimal threshold, calibration, segments, and the paired comparison
with the champion on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

HEADLINE = ("roc_auc", "pr_auc", "ks", "brier", "log_loss")
CLIP = 1e-7  # scores are clipped to [CLIP, 1 - CLIP] for the log loss: a score of 0 or 1 would make it infinite


class _Ranked:
    """Scores reduced once to their distinct values, each row to one code: (distinct score, class).

    A bootstrap round is then one integer bincount of the drawn rows' codes (how many negatives and positives
    at each distinct score) and two cumulative sums over the distinct scores: no sort, no copy of the rows.
    """

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.values, codes = np.unique(p, return_inverse=True)
        self.y = np.asarray(y, dtype=float)
        self.p = np.asarray(p, dtype=float)
        self.k = len(self.values)
        self.cells = codes.ravel() + self.k * (self.y > 0)  # below k: a negative at that score, from k: a positive
        self.squared = (self.p - self.y) ** 2
        clipped = np.clip(self.p, CLIP, 1 - CLIP)
        self.losses = -(self.y * np.log(clipped) + (1 - self.y) * np.log(1 - clipped))  # each row's log loss

    def counted(self, counts: np.ndarray, squared_sum: float, loss_sum: float, rows: float) -> dict[str, float] | None:
        """ROC-AUC, average precision, KS, Brier and log loss from negatives and positives per distinct score."""
        wn, wp = counts[: self.k], counts[self.k :]
        pos, neg = wp.sum(), wn.sum()
        if pos == 0 or neg == 0:
            return None
        below_p, below_n = np.cumsum(wp), np.cumsum(wn)  # rows scored at or below each distinct score
        # a positive outranks the negatives scored lower; a tie counts half
        auc = float(np.dot(wp, below_n - 0.5 * wn) / (pos * neg))
        # average precision from the highest score down, as scikit-learn computes it: each distinct score adds its
        # positives' share of recall times the precision of refusing at that score (rows scored at or above it)
        tp, fp = pos - below_p + wp, neg - below_n + wn
        ap = float(np.dot(wp, tp / np.maximum(tp + fp, 1e-300)) / pos)
        ks = float(np.max(np.abs(below_p / pos - below_n / neg)))
        return {
            "roc_auc": auc,
            "pr_auc": ap,
            "ks": ks,
            "brier": float(squared_sum / rows),
            "log_loss": float(loss_sum / rows),
        }

    def weighted(self, w: np.ndarray) -> dict[str, float] | None:
        """The metrics with row weights ``w`` (a count vector: how often each row was drawn)."""
        counts = np.bincount(self.cells, weights=w, minlength=2 * self.k)
        return self.counted(counts, float(np.sum(w * self.squared)), float(np.sum(w * self.losses)), float(w.sum()))

    def drawn(self, rows: np.ndarray) -> dict[str, float] | None:
        """The metrics of the rows at positions ``rows`` (drawn with replacement)."""
        counts = np.bincount(self.cells[rows], minlength=2 * self.k).astype(float)
        return self.counted(counts, float(self.squared[rows].sum()), float(self.losses[rows].sum()), float(len(rows)))


def ks_statistic(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the score distributions of positives and negatives (ties grouped)."""
    result = _Ranked(y, p).weighted(np.ones(len(y)))
    return result["ks"] if result else 0.0


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    p = np.clip(p, CLIP, 1 - CLIP)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "ks": ks_statistic(y, p),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
    }


def _resamples(n: int, rounds: int, seed: int) -> Any:
    """Bootstrap resamples of n rows: the positions drawn, ``rng.integers(0, n, n)`` per round."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        yield rng.integers(0, n, n)


def bootstrap_intervals(
    y: np.ndarray, p: np.ndarray, rounds: int = 200, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the headline metrics (resampling test rows)."""
    ranked = _Ranked(y, p)
    draws: dict[str, list[float]] = {m: [] for m in HEADLINE}
    for rows in _resamples(len(y), rounds, seed):
        result = ranked.drawn(rows)
        if result is None:
            continue
        for name in HEADLINE:
            draws[name].append(result[name])
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
    """The distinct values in first-seen order, without the missing ones (None, NaN, pandas' NA)."""
    return [v for v in dict.fromkeys(values.tolist()) if not pd.isna(v)]


def paired_auc_difference(
    y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, rounds: int = 200, seed: int = 0
) -> dict[str, float]:
    """AUC(challenger) - AUC(champion) on the same rows, with a paired bootstrap 95% interval."""
    new, old = _Ranked(y, p_new), _Ranked(y, p_old)
    diffs = []
    for rows in _resamples(len(y), rounds, seed):
        a, b = new.drawn(rows), old.drawn(rows)
        if a is not None and b is not None:
            diffs.append(a["roc_auc"] - b["roc_auc"])
    point = float(roc_auc_score(y, p_new) - roc_auc_score(y, p_old))
    return {"difference": point, "lower": float(np.quantile(diffs, 0.025)), "upper": float(np.quantile(diffs, 0.975))}
