"""The deployable model: an MLflow pyfunc that scores applications from their raw fields, features fetched itself.

Training registers the bare XGBoost model; packaging (``packaging.py``) wraps that exact model file with the
contract and the version's evidence (decision threshold or group policy) into ``ApplicationScorer`` and logs it in
the version's run as ``scorer/``, with the project modules this one imports inside (``shipped_code.py``) and the
lock's exact pins. Anything that can load a pyfunc (``mlflow.pyfunc.load_model``, ``mlflow models serve``, a Spark UDF)
then scores the way the scoring service does, through the same code (``tasks.score.scoring``):

- default: each row is an application (entity key + the prediction table's fields); the customer's stored
  features come from the online store of the active profile (``CLOSEDLOOP_*`` settings) through the model's
  FeatureService, the ratios from the same function as training; out: probability, decision, top reasons;
- ``params={"features": "given"}``: each row already holds the model's features (as the golden records do);
  nothing is fetched. Infra validation scores the golden records this way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc.model import PythonModel

SCORER_PATH = "scorer"


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
            from tasks.score.feature_source import FeatureSource

            self._source = FeatureSource(open_store(load_settings(), self.contract), self.contract)
        return self._source

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from tasks.score import scoring
        from tasks.shared import explain

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
