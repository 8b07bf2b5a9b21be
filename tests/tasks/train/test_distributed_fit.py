"""Training across a multi-process Dask LocalCluster gives the model quality of single-process training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from benchmarks.scale import scale_training_set
from closedloop.contract import load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.shared.dask_cluster import cluster, worker_count
from tasks.shared.features import SPLIT, feature_names, monotone_constraints, typed_features
from tasks.train.distributed_fit import fit_dask
from tasks.train.fit import TrainingConfig, fit_model

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
pytestmark = pytest.mark.slow


def test_xgboost_dask_on_two_worker_processes_matches_single_process_quality(tmp_path: Path) -> None:
    path = tmp_path / "training.parquet"
    # the benchmark's generator: a training set shaped as the point-in-time retrieval writes it
    scale_training_set(60_000, str(path), chunk=10_000)
    data = pd.read_parquet(path)
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
    loaded = xgb.XGBClassifier()
    loaded.load_model(saved)
    dask_auc = roc_auc_score(y[split == "test"], loaded.predict_proba(x[split == "test"][columns])[:, 1])
    assert local_auc > 0.7  # a model worth comparing
    assert abs(dask_auc - local_auc) <= 0.005, (dask_auc, local_auc)
