"""Behavioural tests of a model, derived from the contract (the Made-With-ML kinds):

- directional: raising a feature whose ``risk_direction`` is ``increasing`` never lowers the score (and the reverse);
- invariance: changing only a sensitive attribute moves the score by less than a tolerance (by construction when the
  attribute is not a model input, which the report says);
- minimum functionality: a probe with every directional feature at its riskiest contract bound scores above the same
  probe at its safest bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from closedloop.contract import Contract

Scorer = Callable[[pd.DataFrame], np.ndarray]


def _bump(column: pd.Series, up: bool) -> pd.Series:
    step = float(np.nanstd(column.to_numpy(dtype=float))) or 1.0
    return column + (step if up else -step)


def directional(score: Scorer, probes: pd.DataFrame, contract: Contract, tolerance: float = 1e-6) -> dict[str, Any]:
    base = score(probes)
    results = {}
    for col in contract.model_inputs:
        if not col.risk_direction or col.name not in probes:
            continue
        moved = probes.copy()
        moved[col.name] = _bump(moved[col.name].astype(float), up=True)
        delta = score(moved) - base
        wrong = delta < -tolerance if col.risk_direction == "increasing" else delta > tolerance
        results[col.name] = {
            "direction": col.risk_direction,
            "probes": len(probes),
            "violations": int(wrong.sum()),
            "verdict": "pass" if not wrong.any() else "fail",
        }
    return results


def invariance(score: Scorer, probes: pd.DataFrame, contract: Contract, tolerance: float = 0.01) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for col in contract.sensitive:
        if col.name not in probes:
            results[col.name] = {"verdict": "pass", "reason": "not a model input: the score cannot depend on it"}
            continue
        base = score(probes)
        values = col.categories or list(probes[col.name].dropna().unique()[:3])
        worst = 0.0
        for value in values:
            moved = probes.copy()
            moved[col.name] = (
                pd.Categorical([value] * len(moved), categories=probes[col.name].cat.categories)
                if isinstance(probes[col.name].dtype, pd.CategoricalDtype)
                else value
            )
            worst = max(worst, float(np.max(np.abs(score(moved) - base))))
        results[col.name] = {
            "max_change": worst,
            "tolerance": tolerance,
            "verdict": "pass" if worst < tolerance else "fail",
        }
    return results


def minimum_functionality(score: Scorer, probes: pd.DataFrame, contract: Contract) -> dict[str, Any]:
    directional_cols = [c for c in contract.model_inputs if c.risk_direction and c.name in probes]
    if not directional_cols:
        return {"verdict": "skipped", "reason": "the contract declares no risk direction"}
    base = probes.head(1)
    risky, safe = base.copy(), base.copy()
    for col in directional_cols:
        low = col.min if col.min is not None else float(probes[col.name].min())
        high = col.max if col.max is not None else float(probes[col.name].max())
        risky[col.name], safe[col.name] = (high, low) if col.risk_direction == "increasing" else (low, high)
    p_risky, p_safe = float(score(risky)[0]), float(score(safe)[0])
    return {"risky_probe": p_risky, "safe_probe": p_safe, "verdict": "pass" if p_risky > p_safe else "fail"}


def run_all(score: Scorer, probes: pd.DataFrame, contract: Contract) -> dict[str, Any]:
    report: dict[str, Any] = {
        "directional": directional(score, probes, contract),
        "invariance": invariance(score, probes, contract),
        "minimum_functionality": minimum_functionality(score, probes, contract),
    }
    failed = [f"directional({k})" for k, v in report["directional"].items() if v["verdict"] == "fail"]
    failed += [f"invariance({k})" for k, v in report["invariance"].items() if v["verdict"] == "fail"]
    if report["minimum_functionality"]["verdict"] == "fail":
        failed.append("minimum functionality")
    report["verdict"] = "fail" if failed else "pass"
    report["failures"] = failed
    return report
