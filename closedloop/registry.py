"""MLflow: log a trained model with its evidence, register a version, move aliases, load the champion.

The registered model of a dataset is named after its contract, and so is its experiment (marked as model
training); aliases: ``challenger`` (eligible, not yet deployed), ``champion`` (serving), ``previous``. Gate
verdicts are tags on the version; the evidence record and the model card are artifacts of the version's run, and
the model card is the version's description too.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
REFERENCE_PROFILE = "reference_profile.json"  # the monitor's reference: bins and shares of the test window
REFERENCE_SAMPLE = "reference_sample.parquet"  # test-window rows (features + score) for the Evidently report
# MLflow 3 marks what an experiment is for with this tag; "custom_model_development" is its "Model training" kind
# (the UI's own experiment-type selector writes the same tag)
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# the UI's switch between its GenAI and its model-training views; MLflow 3.17's UI follows this query parameter
# (or the switch a person last clicked, GenAI until then), not the experiment's kind tag
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
# the registry's model_versions.description is VARCHAR(5000): Postgres refuses a longer one
DESCRIPTION_LIMIT = 5000


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


@dataclass(frozen=True)
class RunContext:
    """What a training run tells a reviewer in MLflow besides its numbers.

    ``name``: the run's name given its registered version (None while it runs: the version exists only once the
    model is registered); ``tags``: the run's own tags (where it came from); ``dataset``: the training set as an
    ``mlflow.data`` dataset, logged as the run's "training" input; ``description``: the version's description
    in the registry (markdown, cut to the registry's limit with a link to ``description_artifact``).
    """

    name: Callable[[str | None], str] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    dataset: Any = None
    description: str | None = None
    description_artifact: str = "evidence/model_card.md"


def training_experiment(tracking_uri: str, name: str) -> str:
    """The id of the dataset's experiment, created if need be, marked as model training (not GenAI)."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(c.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}))
        except MlflowException:  # another run created it in between: use theirs
            experiment = c.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # created before closedloop marked its experiments
        c.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return str(experiment.experiment_id)


def run_page(tracking_uri: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """The MLflow UI page of a run (or of one of its artifacts), in the UI's model-training view."""
    page = f"{tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{page}/artifacts/{artifact}?{MODEL_TRAINING_VIEW}" if artifact else f"{page}?{MODEL_TRAINING_VIEW}"


def version_description(text: str, link: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """``text`` as a version's description: whole when it fits, else cut at a line end, with a link to all of it."""
    if len(text) <= limit:
        return text
    tail = f"\n\n*Cut to the registry's {limit:,} characters: [the whole text]({link}).*"
    kept = text[: limit - len(tail)]
    return kept[: kept.rfind("\n") if "\n" in kept else len(kept)].rstrip() + tail


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
    context: RunContext | None = None,
) -> str:
    """One MLflow run: params, metrics, model (signature + example), documents, plots; returns the version.

    ``context``: the run's name, tags, training input and the version's description (see ``RunContext``).
    """
    import mlflow
    from mlflow.models import infer_signature

    context = context or RunContext()
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = training_experiment(tracking_uri, name)
    run_name = context.name(None) if context.name else None
    run_tags = {"closedloop.dataset": name, **context.tags}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        if context.dataset is not None:
            mlflow.log_input(context.dataset, context="training")
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
    if context.name:  # the version is known now: the run's name says which one it made
        c.update_run(run.info.run_id, name=context.name(version))
    if context.description:
        link = run_page(tracking_uri, experiment_id, run.info.run_id, context.description_artifact)
        c.update_model_version(name, version, description=version_description(context.description, link))
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
