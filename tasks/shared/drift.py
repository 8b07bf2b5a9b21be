"""Reference profiles and drift verdicts that cost O(rows in the window).

A model version's *reference profile* is taken once, when it is registered, from its out-of-time test window:
the most recent labelled data the version was judged on, and the window its test figures come from. Numeric
columns keep quantile bin edges with the share of rows in each bin, 101 quantiles and their standard deviation;
categories keep their shares; both keep the share of missing values. A monitoring window is then binned against
those edges (one ``searchsorted`` and one ``bincount`` per column), never against the reference rows.

Distances, never p-values (a KS p-value on a million rows flags a 0.01-sigma move):

* ``psi``: population stability index over the reference bins plus a missing bin (and, for categories, a bin
  for values the reference never saw); 0.1 watch, 0.2 drift by convention.
* ``jensenshannon``: Jensen-Shannon distance (natural log, like ``scipy.spatial.distance.jensenshannon`` and
  Evidently) over the same bins.
* ``wasserstein``: first Wasserstein distance between the two quantile functions, divided by the reference
  standard deviation (Evidently's normed variant, so one threshold fits every unit); categories fall back to
  Jensen-Shannon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from closedloop.contract import ColumnType, Contract, Drift

BINS = 10
QUANTILES = np.linspace(0.0, 1.0, 101)
EPS = 1e-4  # floor for an empty bin's share, so that PSI stays finite
SCORE = "score"
SCORE_DRIFT = Drift(method="psi", threshold=0.2)
UNSEEN = "__unseen__"
MISSING = "__missing__"


def _numeric(values: pd.Series) -> np.ndarray:
    out: np.ndarray = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    out[~np.isfinite(out)] = np.nan
    return out


def profile_numeric(values: pd.Series | np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Quantile bins (interior edges), their shares, 101 quantiles, std and the missing share."""
    x = _numeric(pd.Series(values))
    finite = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        raise ValueError("cannot profile an empty column")
    if len(finite) == 0:
        return {"kind": "numeric", "rows": n, "missing": 1.0, "edges": [], "shares": [], "quantiles": [], "std": 0.0}
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1)
    return {
        "kind": "numeric",
        "rows": n,
        "missing": float(1 - len(finite) / n),
        "edges": edges.tolist(),
        "shares": (counts / len(finite)).tolist(),
        "quantiles": np.quantile(finite, QUANTILES).tolist(),
        "std": float(finite.std()),
    }


def profile_category(values: pd.Series) -> dict[str, Any]:
    """Category shares among present values and the missing share."""
    n = len(values)
    if n == 0:
        raise ValueError("cannot profile an empty column")
    present = values.dropna().astype(str)
    shares = present.value_counts(normalize=True, sort=False)
    return {
        "kind": "category",
        "rows": n,
        "missing": float(1 - len(present) / n),
        "shares": {str(k): float(v) for k, v in shares.items()},
    }


def is_categorical(contract: Contract, name: str) -> bool:
    aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    return name not in aggregates and contract.column(name).type is ColumnType.CATEGORY


def profile_frame(frame: pd.DataFrame, contract: Contract, features: list[str], scores: np.ndarray) -> dict[str, Any]:
    """The reference profile of a model version: every feature and the score."""
    columns = {
        name: profile_category(frame[name]) if is_categorical(contract, name) else profile_numeric(frame[name])
        for name in features
    }
    return {"rows": len(frame), "columns": columns, SCORE: profile_numeric(scores)}


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    r, c = np.maximum(ref, EPS), np.maximum(cur, EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _js(ref: np.ndarray, cur: np.ndarray) -> float:
    r, c = ref / ref.sum(), cur / cur.sum()
    m = (r + c) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_r = np.where(r > 0, r * np.log(r / m), 0.0).sum()
        kl_c = np.where(c > 0, c * np.log(c / m), 0.0).sum()
    return float(np.sqrt(max((kl_r + kl_c) / 2, 0.0)))


@dataclass(frozen=True)
class ColumnDrift:
    """One column's distance to its reference and the verdict under its threshold."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool
    rows: int
    missing_reference: float
    missing_current: float
    unseen_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _distributions(reference: dict[str, Any], values: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(reference shares, current shares, unseen share) over the reference bins + missing (+ unseen) bins."""
    n = len(values)
    if reference["kind"] == "numeric":
        x = _numeric(pd.Series(values)) if not isinstance(values, np.ndarray) else values.astype("float64", copy=False)
        missing = np.isnan(x)
        finite = x[~missing]
        counts = np.bincount(
            np.searchsorted(np.asarray(reference["edges"]), finite, side="right"), minlength=len(reference["shares"])
        )
        present = 1 - reference["missing"]
        ref = np.append(np.asarray(reference["shares"]) * present, reference["missing"])
        cur = np.append(counts, missing.sum()) / n
        return ref, cur, 0.0
    series = pd.Series(values)
    known = list(reference["shares"])
    present = series.dropna().astype(str)
    counts = present.value_counts(sort=False)
    seen = np.array([counts.get(k, 0) for k in known], dtype="float64")
    unseen = float(len(present) - seen.sum())
    ref = np.append(np.asarray([reference["shares"][k] for k in known]) * (1 - reference["missing"]), [0.0, 0.0])
    ref[-1] = reference["missing"]
    cur = np.append(seen, [unseen, n - len(present)]) / n
    return ref, cur, unseen / n


def column_drift(name: str, reference: dict[str, Any], values: pd.Series | np.ndarray, rule: Drift) -> ColumnDrift:
    """Distance of one window column to its reference profile, judged by the contract's rule."""
    n = len(values)
    if n == 0:
        raise ValueError(f"no rows for column {name!r}")
    ref, cur, unseen = _distributions(reference, values)
    method = rule.method
    if method == "wasserstein" and reference["kind"] != "numeric":
        method = "jensenshannon"  # no order between categories
    if method == "psi":
        score = _psi(ref, cur)
    elif method == "jensenshannon":
        score = _js(ref, cur)
    else:
        x = _numeric(pd.Series(values)) if not isinstance(values, np.ndarray) else values
        finite = x[~np.isnan(x)]
        if len(finite) == 0 or not reference["quantiles"]:  # all missing on one side: as far apart as it gets
            score = 0.0 if len(finite) == 0 and not reference["quantiles"] else float("inf")
        else:
            current_q = np.quantile(finite, QUANTILES)
            spread = reference["std"] or 1.0
            score = float(np.trapezoid(np.abs(current_q - np.asarray(reference["quantiles"])), QUANTILES) / spread)
    return ColumnDrift(
        column=name,
        method=method,
        score=score,
        threshold=rule.threshold,
        drifted=bool(score >= rule.threshold),
        rows=n,
        missing_reference=float(reference["missing"]),
        missing_current=float(cur[-1]),
        unseen_share=unseen,
    )


def drift_rules(contract: Contract, features: list[str]) -> dict[str, Drift]:
    """Each feature's drift rule: the contract column's, or the default for derived features."""
    aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    return {name: Drift() if name in aggregates else contract.column(name).drift for name in features}


def window_drift(
    profile: dict[str, Any], window: pd.DataFrame, rules: dict[str, Drift], scores: np.ndarray | None
) -> dict[str, Any]:
    """Drift of every profiled feature present in the window, and of the score."""
    columns = [
        column_drift(name, profile["columns"][name], window[name], rule).to_dict()
        for name, rule in judged_rules(profile, window, rules).items()
    ]
    return window_summary(profile, len(window), columns, scores)


def judged_rules(profile: dict[str, Any], window: pd.DataFrame, rules: dict[str, Drift]) -> dict[str, Drift]:
    """The rules of the features both the window and the reference profile have."""
    return {name: rule for name, rule in rules.items() if name in window and name in profile["columns"]}


def window_summary(
    profile: dict[str, Any], rows: int, columns: list[dict[str, Any]], scores: np.ndarray | None
) -> dict[str, Any]:
    """A window's drift record from its columns' verdicts (computed here or on a cluster's workers)."""
    out: dict[str, Any] = {
        "rows": rows,
        "columns": columns,
        "drifted": [c["column"] for c in columns if c["drifted"]],
        "share": (sum(c["drifted"] for c in columns) / len(columns)) if columns else 0.0,
    }
    if scores is not None and len(scores):
        out["score"] = column_drift(SCORE, profile[SCORE], np.asarray(scores, dtype="float64"), SCORE_DRIFT).to_dict()
    return out


def expected_auc(scores: np.ndarray) -> float:
    """The AUC the scores would have if they were calibrated: every pair weighted by p_i (1 - p_j).

    CBPE-style label-free estimate: with calibrated scores, the expected number of (default, repaid) pairs
    ranked correctly over the expected number of such pairs. O(n log n) through one sort and a cumulative sum.
    """
    p = np.sort(np.asarray(scores, dtype="float64"))
    if len(p) < 2:
        return float("nan")
    below = np.cumsum(1 - p) - (1 - p)  # sum of (1 - p_j) over j ranked below i
    correct = float(np.sum(p * below))
    pairs = float(p.sum() * (1 - p).sum() - np.sum(p * (1 - p)))
    return correct / pairs if pairs > 0 else float("nan")
