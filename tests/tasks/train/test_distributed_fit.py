"""Training across a multi-process Dask LocalCluster gives the model quality of single-process training.

The fit runs in an interpreter of its own, as it does in a flow run's process: a Dask cluster started inside the
long test-suite process (after its servers, harnesses and threads) was seen to wait forever on workers that had
gone, while the same test alone, or after any one of the suite's folders, passed in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from closedloop.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

FIT_BOTH_WAYS = """
import json, sys
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from benchmarks.scale import scale_training_set
from closedloop.contract import load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.shared.dask_cluster import cluster, worker_count
from tasks.shared.features import SPLIT, feature_names, monotone_constraints, typed_features
from tasks.train.distributed_fit import fit_dask
from tasks.train.fit import TrainingConfig, fit_model

folder = sys.argv[1]
contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
path = f"{folder}/training.parquet"
# the benchmark's generator: a training set shaped as the point-in-time retrieval writes it
scale_training_set(60_000, path, chunk=10_000)
data = pd.read_parquet(path)
columns = feature_names(contract)
x = typed_features(data, contract)
y = (data[contract.label.column] == contract.label.positive).astype(int).to_numpy()
split = data[SPLIT].to_numpy()
config = TrainingConfig(n_estimators=300, learning_rate=0.1)
constraints = monotone_constraints(contract)
train, validation, test = split == "train", split == "validation", split == "test"
local = fit_model(x[train], y[train], x[validation], y[validation], config, constraints)
local_auc = roc_auc_score(y[test], local.predict_proba(x[test])[:, 1])
with cluster(None, workers=2) as client:
    workers = worker_count(client)
    model = fit_dask(client, path, contract, columns, config, constraints, partitions=6)
    model.save_model(f"{folder}/dask.ubj")
# what evaluation and serving load: the single-process classifier, from the file
loaded = xgb.XGBClassifier()
loaded.load_model(f"{folder}/dask.ubj")
dask_auc = roc_auc_score(y[test], loaded.predict_proba(x[test][columns])[:, 1])
print(json.dumps({"workers": workers, "local_auc": local_auc, "dask_auc": dask_auc}))
"""


def test_xgboost_dask_on_two_worker_processes_matches_single_process_quality(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FIT_BOTH_WAYS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["workers"] == 2  # separate processes: the histograms really are all-reduced
    assert result["local_auc"] > 0.7  # a model worth comparing
    assert abs(result["dask_auc"] - result["local_auc"]) <= 0.005, result
