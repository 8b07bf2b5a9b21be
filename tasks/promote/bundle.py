"""The deployable model: an MLflow pyfunc that scores applications from their raw fields, features fetched itself.

Training registers the bare XGBoost model; packaging wraps that exact model file with the contract and the
version's evidence (decision threshold or group policy) into ``ApplicationScorer`` and logs it in the version's
run as ``scorer/``, with this project's code (``closedloop``, ``tasks``, ``feature_repo``) inside and the lock's
exact pins. Anything that can load a pyfunc (``mlflow.pyfunc.load_model``, ``mlflow models serve``, a Spark UDF)
then scores the way the scoring service does, through the same code (``tasks.score.scoring``):

- default: each row is an application (entity key + the prediction table's fields); the customer's stored
  features come from the online store of the active profile (``CLOSEDLOOP_*`` settings) through the model's
  FeatureService, the ratios from the same function as training; out: probability, decision, top reasons;
- ``params={"features": "given"}``: each row already holds the model's features (as the golden records do);
  nothing is fetched. Infra validation scores the golden records this way.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc.model import PythonModel

SCORER_PATH = "scorer"
CODE = ("closedloop", "tasks", "feature_repo")


class ApplicationScorer(PythonModel):
    """Raw application fields in; probability, decision, model version and top reasons out."""

    def load_context(self, context: Any) -> None:
        import xgboost as xgb

        from closedloop.contract import load_contract
        from tasks.score.scoring import ScoringModel

        self.contract = load_contract(context.artifacts["contract"])
        evidence = json.loads(Path(context.artifacts["evidence"]).read_text())
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        classifier = xgb.XGBClassifier()
        classifier.load_model(context.artifacts["model"])
        self.model = ScoringModel.from_evidence(meta["version"], classifier, evidence)
        self._source: Any = None

    def _features(self) -> Any:
        if self._source is None:  # opened on first use: given-feature scoring needs no store
            from closedloop.settings import load_settings
            from feature_repo.store import open_store
            from tasks.score.scoring import FeatureSource

            self._source = FeatureSource(open_store(load_settings(), self.contract), self.contract)
        return self._source

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from tasks.shared import explain, scoring

        if (params or {}).get("features", "lookup") == "given":
            matrix = scoring.frame_matrix(model_input, self.contract, self.model.columns)
            probabilities, contributions = self.model.predict(matrix)
            return pd.DataFrame(
                {
                    "probability": probabilities,
                    # a group-threshold policy needs the application (its key and group): ready feature rows
                    # get a score and reasons, and no decision
                    "decision": scoring.decisions(self.model, probabilities)
                    if self.model.policy is None
                    else [None] * len(probabilities),
                    "model_version": self.model.version,
                    "reasons": [json.dumps(explain.top_reasons(row, self.model.columns)) for row in contributions],
                }
            )
        applications = [
            {k: (None if _missing(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in model_input.to_dict(orient="records")
        ]
        scored = scoring.score(self.model, self._features(), applications)
        return pd.DataFrame(
            {
                "entity_id": [s.entity_id for s in scored],
                "probability": [s.probability for s in scored],
                "decision": [s.decision for s in scored],
                "model_version": self.model.version,
                "reasons": [json.dumps(s.reasons) for s in scored],
            }
        )


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def log_scorer(tracking_uri: str, name: str, version: str, contract_path: str) -> str:
    """Log the version's ``ApplicationScorer`` in its run (once); returns its model URI, also tagged on the version."""
    import mlflow
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    from closedloop.contract import load_contract
    from closedloop.registry import client, model_requirements
    from closedloop.settings import PROJECT_ROOT

    c = client(tracking_uri)
    found = c.get_model_version(name, version)
    existing = (found.tags or {}).get("scorer_uri")
    if existing:
        return str(existing)
    mlflow.set_tracking_uri(tracking_uri)
    contract = load_contract(contract_path)
    with tempfile.TemporaryDirectory(prefix="closedloop-scorer-") as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=f"{tmp}/model"))
        model_file = next(folder.rglob("model.ubj"))
        evidence = mlflow.artifacts.download_artifacts(
            run_id=found.run_id, artifact_path="evidence/evidence.json", dst_path=f"{tmp}/evidence"
        )
        meta = Path(tmp) / "meta.json"
        meta.write_text(json.dumps({"name": name, "version": version, "contract": contract.fingerprint}))
        # no input schema: a row is an application, or (features="given") the model's features; tasks.score.scoring
        # checks either against the contract and names what is wrong
        signature = ModelSignature(params=ParamSchema([ParamSpec("features", "string", "lookup")]))
        with mlflow.start_run(run_id=found.run_id):
            info = mlflow.pyfunc.log_model(
                name=SCORER_PATH,
                python_model=ApplicationScorer(),
                artifacts={
                    "model": str(model_file),
                    "contract": contract_path,
                    "evidence": evidence,
                    "meta": str(meta),
                },
                code_paths=[str(PROJECT_ROOT / package) for package in CODE],
                pip_requirements=[*model_requirements(), *_extra_requirements()],
                signature=signature,
            )
    c.set_model_version_tag(name, version, "scorer_uri", info.model_uri)
    return str(info.model_uri)


def _extra_requirements() -> list[str]:
    """Feature lookups need Feast (and what the active profile's online store needs)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("feast", "pydantic", "pyyaml")]
