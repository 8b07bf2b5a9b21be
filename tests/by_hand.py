"""XGBoost fitted by hand on a raw file, on the split closedloop used: the baseline a brought-in table must match."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from tasks.shared.features import SPLIT
from tasks.train.fit import TrainingConfig, xgboost_params


def split_of(raw: pd.DataFrame, stored: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Each raw row's split in closedloop's training set (``stored``), found by its values in ``columns``.

    The tables brought in this way have no id of their own: a row is known by its values (numbers compared as
    floats, so 1386 and 1386.0 are the same amount).
    """

    def text(frame: pd.DataFrame) -> pd.Series:
        cells = {c: frame[c].astype(float if frame[c].dtype.kind in "iuf" else str).astype(str) for c in columns}
        return pd.DataFrame(cells).agg("|".join, axis=1)

    left, right = text(raw), text(stored)
    assert left.is_unique and right.is_unique and set(left) == set(right), "every raw row is in the training set once"
    position = pd.Series(np.arange(len(stored)), index=right.to_numpy())
    return np.asarray(stored[SPLIT].to_numpy()[position[left.to_numpy()].to_numpy()])


def auc_by_hand(x: pd.DataFrame, y: np.ndarray, split: np.ndarray, config: TrainingConfig | None = None) -> float:
    """ROC-AUC on the test split of XGBoost with closedloop's parameters, early-stopped on the validation split."""
    import xgboost as xgb

    config = config or TrainingConfig()
    model = xgb.XGBClassifier(**xgboost_params(config), n_jobs=config.n_jobs)
    fit, val, test = split == "train", split == "validation", split == "test"
    model.fit(x[fit], y[fit], eval_set=[(x[val], y[val])], verbose=False)
    return float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
