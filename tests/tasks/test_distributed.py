"""Training across a multi-process Dask LocalCluster gives the model quality of single-process training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from closedloop.contract import ColumnType, load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.distributed import cluster, fit_dask, predict_local, worker_count
from tasks.training import SPLIT, TrainingConfig, feature_names, fit_model, monotone_constraints, typed_features

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
pytestmark = pytest.mark.slow


def _training_set(rows: int, seed: int = 3) -> pd.DataFrame:
    """A training set in the shape the point-in-time retrieval writes: the model's inputs, label and split."""
    rng = np.random.default_rng(seed)
    aggregates = {a.name for a in CONTRACT.aggregates} | {r.name for r in CONTRACT.ratios}
    frame: dict[str, object] = {}
    risk = np.zeros(rows)
    for i, name in enumerate(feature_names(CONTRACT)):
        column = None if name in aggregates else CONTRACT.column(name)
        if column is not None and column.type is ColumnType.CATEGORY:
            categories = column.categories or []
            picks = rng.integers(0, len(categories), rows)
            frame[name] = np.asarray(categories, dtype=object)[picks]
            risk += 0.3 * (picks == 0)
        else:
            values = rng.normal(0, 1, rows)
            values[rng.random(rows) < 0.03] = np.nan  # missing values take XGBoost's default direction
            frame[name] = values
            risk += np.nan_to_num(values) * (0.6 if i % 3 == 0 else 0.1) + (
                0.4 * np.nan_to_num(values) ** 2 if i % 5 == 0 else 0
            )
    p = 1 / (1 + np.exp(-(risk - 2.0)))
    frame[CONTRACT.label.column] = np.where(rng.random(rows) < p, CONTRACT.label.positive, CONTRACT.label.negative)
    frame[SPLIT] = rng.choice(["train", "validation", "test"], size=rows, p=[0.65, 0.15, 0.2])
    return pd.DataFrame(frame)


def test_xgboost_dask_on_two_worker_processes_matches_single_process_quality(tmp_path: Path) -> None:
    data = _training_set(60_000)
    path = tmp_path / "training.parquet"
    data.to_parquet(path, index=False, row_group_size=10_000)
    columns = feature_names(CONTRACT)
    x = typed_features(data, CONTRACT)
    y = (data[CONTRACT.label.column] == CONTRACT.label.positive).astype(int).to_numpy()
    split = data[SPLIT].to_numpy()
    config = TrainingConfig(n_estimators=300, learning_rate=0.1)
    constraints = monotone_constraints(CONTRACT)

    local = fit_model(
        x[split == "train"],
        y[split == "train"],
        x[split == "validation"],
        y[split == "validation"],
        config,
        constraints,
    )
    local_auc = roc_auc_score(y[split == "test"], local.predict_proba(x[split == "test"])[:, 1])

    with cluster(None, workers=2) as client:
        assert worker_count(client) == 2  # separate processes: the histograms really are all-reduced
        model = fit_dask(client, str(path), CONTRACT, columns, config, constraints, partitions=6)
        saved = tmp_path / "dask.ubj"
        model.save_model(saved)
    # what evaluation and serving load: the single-process classifier, from the file
    dask_auc = roc_auc_score(y[split == "test"], predict_local(str(saved), x[split == "test"][columns]))
    assert local_auc > 0.7  # a model worth comparing
    assert abs(dask_auc - local_auc) <= 0.005, (dask_auc, local_auc)
