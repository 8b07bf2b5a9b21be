"""Scale benchmark: engine=dask on a LocalCluster vs one process holding the whole training set."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.measure import Measurement, in_child, in_parent_process


def scale_training_set(rows: int, path: str, chunk: int = 1_000_000) -> dict[str, float]:
    """A training set shaped as the point-in-time retrieval writes it, made chunk by chunk (never all rows)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from closedloop.contract import ColumnType, load_contract
    from closedloop.settings import PROJECT_ROOT
    from tasks.shared.features import SPLIT, feature_names

    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        rng = np.random.default_rng(start)
        frame: dict[str, Any] = {}
        risk = np.zeros(n)
        for i, name in enumerate(feature_names(contract)):
            column = None if name in aggregates else contract.column(name)
            if column is not None and column.type is ColumnType.CATEGORY:
                categories = column.categories or []
                picks = rng.integers(0, len(categories), n)
                frame[name] = np.asarray(categories, dtype=object)[picks]
                risk += 0.3 * (picks == 0)
            else:
                values = rng.normal(0, 1, n)
                values[rng.random(n) < 0.03] = np.nan
                frame[name] = values
                clean = np.nan_to_num(values)
                risk += clean * (0.6 if i % 3 == 0 else 0.1) + (0.4 * clean**2 if i % 5 == 0 else 0)
        frame[contract.label.column] = (rng.random(n) < 1 / (1 + np.exp(-(risk - 2.0)))).astype("int64")
        frame[SPLIT] = rng.choice(["train", "validation", "test"], size=n, p=[0.7, 0.1, 0.2])
        table = pa.Table.from_pandas(pd.DataFrame(frame), preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=250_000)
    if writer is not None:
        writer.close()
    return {"rows": float(rows)}


def _scale_one_process(path: str, trees: int) -> dict[str, float]:
    """The baseline: the whole training set in one pandas frame, typed, fitted by XGBoost on all cores."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from closedloop.contract import load_contract
    from closedloop.settings import PROJECT_ROOT
    from tasks.shared.features import SPLIT, monotone_constraints, typed_features
    from tasks.train.fit import TrainingConfig, fit_model

    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    started = time.perf_counter()
    frame = pd.read_parquet(path)
    x = typed_features(frame, contract)
    y = frame[contract.label.column].to_numpy()
    split = frame[SPLIT].to_numpy()
    del frame
    config = TrainingConfig(n_estimators=trees, learning_rate=0.1, early_stopping_rounds=20)
    model = fit_model(
        x[split == "train"],
        y[split == "train"],
        x[split == "validation"],
        y[split == "validation"],
        config,
        monotone_constraints(contract),
    )
    seconds = time.perf_counter() - started
    test = split == "test"
    auc = float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    return {"seconds": seconds, "auc": auc}


def _scale_dask(path: str, trees: int, workers: int) -> dict[str, float]:
    """The engine=dask path: workers read and type their partitions, xgboost.dask fits across them."""
    import resource as res

    import dask.dataframe as dd
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from closedloop.contract import load_contract
    from closedloop.settings import PROJECT_ROOT
    from tasks.shared.dask_cluster import cluster
    from tasks.shared.features import SPLIT, feature_names, monotone_constraints, typed_features
    from tasks.train.distributed_fit import fit_dask
    from tasks.train.fit import TrainingConfig

    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    config = TrainingConfig(n_estimators=trees, learning_rate=0.1, early_stopping_rounds=20)
    columns = feature_names(contract)
    with cluster(None, workers=workers) as client:
        started = time.perf_counter()
        model = fit_dask(client, path, contract, columns, config, monotone_constraints(contract))
        seconds = time.perf_counter() - started
        worker_peaks = client.run(lambda: res.getrusage(res.RUSAGE_SELF).ru_maxrss * 1024 / 2**20)
        # quality on the test split, scored on the workers too (the flow's process never holds the frame)
        frame = dd.read_parquet(path, columns=[*columns, contract.label.column, SPLIT])
        test = frame[frame[SPLIT] == "test"]
        y = test[contract.label.column].compute().to_numpy()
        x = typed_features(test.compute(), contract)[columns]
        import xgboost as xgb

        booster = model.get_booster()
        p = booster.predict(xgb.DMatrix(x, enable_categorical=True))
        auc = float(roc_auc_score(y, p))
    return {"seconds": seconds, "auc": auc, "worker_peak_mb": float(np.max(list(worker_peaks.values())))}


def bench_scale(rows: int = 10_000_000, trees: int = 200, workers: int = 2) -> list[Measurement]:
    """Training at scale: engine=dask on a LocalCluster vs one process holding the whole training set."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="closedloop-scale-") as folder:
        path = str(Path(folder) / "training.parquet")
        in_child(scale_training_set, rows, path)
        one = in_child(_scale_one_process, path, trees)
        dask_side = in_parent_process(_scale_dask, path, trees, workers)
    return [
        Measurement(
            "scale",
            f"train on {rows:,} rows x 20 features, {workers} Dask workers vs one process (s)",
            "s",
            dask_side["seconds"],
            one["seconds"],
            False,
            f"read + type + fit; {trees} trees at most, early stopping; test AUC {dask_side['auc']:.4f} (Dask) vs "
            f"{one['auc']:.4f} (one process)",
        ),
        Measurement(
            "scale",
            f"peak memory per process at {rows:,} rows (MB)",
            "MB",
            dask_side["worker_peak_mb"],
            one["peak_mb"],
            False,
            f"largest Dask worker's peak RSS vs the single process's peak growth; the flow's own process grew "
            f"{dask_side['peak_mb']:,.0f} MB",
        ),
    ]
