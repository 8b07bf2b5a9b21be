"""Training on a Dask cluster with ``xgboost.dask``: for a training set that does not fit one worker.

The workers read the training set's parquet themselves, partition by partition, and type it with the same
``typed_features`` the single-process path uses; XGBoost builds one histogram model across them (its quantile
sketch and gradient sums are all-reduced through Rabit), so the flow's process never holds the frame. The result
is saved with the scikit-learn metadata, so evaluation, SHAP, registration and serving load it as the
``XGBClassifier`` a single-process fit gives: nothing downstream knows where it was trained.
"""

from __future__ import annotations

import logging
from typing import Any

from closedloop.contract import Contract
from tasks.shared.dask_cluster import worker_count
from tasks.shared.features import SPLIT, typed_features
from tasks.train.fit import TrainingConfig, xgboost_params

logger = logging.getLogger(__name__)


def _typed(part: Any, contract: Contract, columns: list[str], label: str, positive: Any) -> Any:
    out = typed_features(part, contract)[columns]
    out[SPLIT] = part[SPLIT].to_numpy()
    out["__label__"] = (part[label] == positive).astype("int8").to_numpy()
    return out


def fit_dask(
    client: Any,
    path: str,
    contract: Contract,
    columns: list[str],
    config: TrainingConfig,
    constraints: dict[str, int] | None = None,
    partitions: int | None = None,
) -> Any:
    """XGBoost (hist, early stopping on the validation split) across the cluster from the training parquet.

    Returns the fitted ``DaskXGBClassifier``; ``save_model`` writes a file ``XGBClassifier.load_model`` reads.
    """
    import dask.dataframe as dd
    from xgboost import dask as dxgb

    frame = dd.read_parquet(path)
    if partitions:
        frame = frame.repartition(npartitions=partitions)
    meta = _typed(frame._meta, contract, columns, contract.label.column, contract.label.positive)
    typed = frame.map_partitions(
        _typed, contract, columns, contract.label.column, contract.label.positive, meta=meta
    ).persist()
    train = typed[typed[SPLIT] == "train"]
    validation = typed[typed[SPLIT] == "validation"]
    model = dxgb.DaskXGBClassifier(**xgboost_params(config, constraints))
    model.client = client
    model.fit(
        train[columns],
        train["__label__"],
        eval_set=[(validation[columns], validation["__label__"])],
        verbose=False,
    )
    logger.info(
        "fitted %d trees on %d Dask workers (best iteration %d)",
        model.n_estimators,
        worker_count(client),
        model.best_iteration,
    )
    return model
