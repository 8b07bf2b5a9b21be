"""The model's inputs as the contract defines them: their names and order, their types, their known risk directions.

Training, batch scoring, the scoring service and the monitor all build the model matrix through these functions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from closedloop.contract import ColumnType, Contract

EVENT_TIMESTAMP = "event_timestamp"  # the point-in-time column of every entity frame and training set
SPLIT = "_split"  # the training set's column naming each row's split: train, validation or test


def feature_names(contract: Contract) -> list[str]:
    """The model's inputs, in a fixed order: contract inputs, then history aggregates, then ratios."""
    return (
        [c.name for c in contract.model_inputs]
        + [a.name for a in contract.aggregates]
        + [r.name for r in contract.ratios]
    )


def typed_features(frame: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """Model matrix: numeric columns as float, categories with the contract's fixed category set."""
    out = {}
    aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    for name in feature_names(contract):
        if name in aggregates:
            values = pd.to_numeric(frame[name], errors="coerce").astype("float64")
            out[name] = values.replace([np.inf, -np.inf], np.nan)
            continue
        col = contract.column(name)
        if col.type is ColumnType.CATEGORY:
            out[name] = pd.Categorical(frame[name], categories=col.categories)
        elif col.type is ColumnType.BOOL:
            out[name] = frame[name].astype("float64")
        else:
            out[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64").replace([np.inf, -np.inf], np.nan)
    return pd.DataFrame(out, index=frame.index)


def monotone_constraints(contract: Contract) -> dict[str, int]:
    """The contract's known risk directions as XGBoost monotone constraints (+1 increasing, -1 decreasing)."""
    return {c.name: 1 if c.risk_direction == "increasing" else -1 for c in contract.model_inputs if c.risk_direction}
