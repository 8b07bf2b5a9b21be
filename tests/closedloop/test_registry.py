"""MLflow registry access: a registered version keeps its model, evidence and aliases; no champion is not an error."""

from __future__ import annotations

import json
import uuid
from importlib.metadata import version as installed

import numpy as np
import pandas as pd
import pytest

from closedloop import registry


def test_the_decision_policy_is_read_from_the_fairness_gate() -> None:
    assert registry.decision_policy({}) == "single_threshold"
    assert registry.decision_policy({"gates": {"fairness": {"mitigation": None}}}) == "single_threshold"
    evidence = {"gates": {"fairness": {"mitigation": "threshold_optimizer:sex"}}}
    assert registry.decision_policy(evidence) == "threshold_optimizer:sex"


def test_the_model_is_logged_with_exact_pins_of_what_scoring_needs() -> None:
    pins = registry.model_requirements()
    assert [p.split("==")[0] for p in pins] == list(registry.SERVING_PACKAGES)
    assert f"xgboost=={installed('xgboost')}" in pins


@pytest.mark.integration
def test_a_registered_version_keeps_its_model_evidence_and_aliases(mlflow_server: int) -> None:
    from xgboost import XGBClassifier

    uri = f"http://127.0.0.1:{mlflow_server}"
    name = f"registry_{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.random(200), "b": rng.random(200)})
    y = (x["a"] > 0.5).astype(int)
    model = XGBClassifier(n_estimators=5, max_depth=2).fit(x, y)
    evidence = {"gates": {"fairness": {"mitigation": None}}, "metrics": {"roc_auc": 0.9}}
    version = registry.log_and_register(
        uri,
        name,
        model,
        x.head(20),
        params={"n_estimators": 5},
        metrics={"roc_auc": 0.9},
        tags={"closedloop.gate.quality": "pass"},
        documents={"evidence.json": json.dumps(evidence)},
        eligible=True,
    )
    assert registry.champion_version(uri, name) is None  # registered, not yet serving
    client = registry.client(uri)
    assert client.get_model_version_by_alias(name, registry.CHALLENGER).version == version
    assert client.get_model_version(name, version).tags["closedloop.gate.quality"] == "pass"
    assert registry.read_evidence(uri, name, version) == evidence
    np.testing.assert_allclose(
        registry.load_model(uri, name, version).predict_proba(x)[:, 1], model.predict_proba(x)[:, 1]
    )
    client.set_registered_model_alias(name, registry.CHAMPION, version)
    assert registry.champion_version(uri, name) == version
    np.testing.assert_allclose(registry.champion_scores(uri, name, version, x), model.predict_proba(x)[:, 1])
    with pytest.raises(registry.ChampionUnavailable, match=f"champion {name} v99 cannot be loaded"):
        registry.champion_scores(uri, name, "99", x)
