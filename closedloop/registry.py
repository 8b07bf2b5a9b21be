"""MLflow: log a trained model with its evidence, register a version, move aliases, load the champion.

The registered model of a dataset is named after its contract; aliases: ``challenger`` (eligible, not yet
deployed), ``champion`` (serving), ``previous``. Gate verdicts are tags on the version; the evidence record and
the model card are artifacts of the version's run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
REFERENCE_PROFILE = "reference_profile.json"  # the monitor's reference: bins and shares of the test window
REFERENCE_SAMPLE = "reference_sample.parquet"  # test-window rows (features + score) for the Evidently report


class ChampionUnavailable(RuntimeError):
    """A champion is registered but cannot be loaded: the comparison gate cannot decide."""


def client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def champion_version(tracking_uri: str, name: str) -> str | None:
    """The version the champion alias points at, or None when there is no champion yet."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise ChampionUnavailable(f"cannot look up the champion of {name!r}: {exc}") from exc


def champion_scores(tracking_uri: str, name: str, version: str, features: pd.DataFrame) -> np.ndarray:
    """Champion probabilities on the challenger's test rows (same features, same rows)."""
    import mlflow

    try:
        mlflow.set_tracking_uri(tracking_uri)
        model = mlflow.xgboost.load_model(f"models:/{name}/{version}")
        return np.asarray(model.predict_proba(features[list(model.feature_names_in_)])[:, 1])
    except Exception as exc:
        raise ChampionUnavailable(f"champion {name} v{version} cannot be loaded or scored: {exc}") from exc


SERVING_PACKAGES = ("mlflow", "xgboost", "scikit-learn", "pandas", "numpy", "scipy", "pyarrow")


def model_requirements() -> list[str]:
    """Exact pins of what loading and scoring the model needs, as installed from the lock file.

    Given to MLflow explicitly: its own inference imports the model in a subprocess (about 15 s per version here)
    and can only guess from what that subprocess happened to import.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in SERVING_PACKAGES]


def log_and_register(
    tracking_uri: str,
    name: str,
    model: Any,
    example: pd.DataFrame,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    documents: dict[str, str | bytes],
    eligible: bool,
    plots: dict[str, bytes] | None = None,
) -> str:
    """One MLflow run: params, metrics, model (signature + example), documents, plots; returns the version."""
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(name)
    with mlflow.start_run(experiment_id=experiment_id, tags={"closedloop.dataset": name}) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        signature = infer_signature(example, model.predict_proba(example)[:, 1])
        info = mlflow.xgboost.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example.head(3),
            registered_model_name=name,
            model_format="ubj",
            pip_requirements=model_requirements(),
        )
        with tempfile.TemporaryDirectory() as tmp:
            for filename, content in documents.items():
                if isinstance(content, bytes):
                    (Path(tmp) / filename).write_bytes(content)
                else:
                    (Path(tmp) / filename).write_text(content)
                mlflow.log_artifact(str(Path(tmp) / filename), artifact_path="evidence")
            for filename, png in (plots or {}).items():
                (Path(tmp) / filename).write_bytes(png)
                mlflow.log_artifact(str(Path(tmp) / filename), artifact_path="plots")
        version = str(info.registered_model_version)
        logger.info("registered %s v%s (run %s)", name, version, run.info.run_id)
    c = client(tracking_uri)
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, value)
    if eligible:
        c.set_registered_model_alias(name, CHALLENGER, version)
    return version


def load_model(tracking_uri: str, name: str, version: str) -> Any:
    """A registered version's XGBoost model, from its registry URI."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.xgboost.load_model(f"models:/{name}/{version}")


def decision_policy(evidence: dict[str, Any]) -> str:
    """How a version decides: ``single_threshold`` or ``threshold_optimizer:<attribute>`` (group thresholds)."""
    return str(evidence.get("gates", {}).get("fairness", {}).get("mitigation") or "single_threshold")


def evidence_file(tracking_uri: str, name: str, version: str, filename: str) -> Path:
    """A local copy of one file kept in a model version's ``evidence/`` folder."""
    import mlflow

    c = client(tracking_uri)
    run_id = c.get_model_version(name, version).run_id
    mlflow.set_tracking_uri(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"evidence/{filename}"))


def read_evidence(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    """The evidence record kept with a model version."""
    record: dict[str, Any] = json.loads(evidence_file(tracking_uri, name, version, "evidence.json").read_text())
    return record
