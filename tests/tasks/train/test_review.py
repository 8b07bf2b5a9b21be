"""The training run's page for a reviewer: verdict first, gates with reasons, metrics with intervals, links."""

from __future__ import annotations

from typing import Any

from tasks.train.review import mlflow_links, training_page


def _evidence(eligible: bool) -> dict[str, Any]:
    return {
        "eligible": eligible,
        "started_by": "event:abc",
        "training_rows": 2861,
        "data_window": ["2025-12-01T00:00:00+00:00", "2026-08-28T00:00:00+00:00"],
        "gates": {
            "quality": {"verdict": "pass", "reason": "ROC-AUC 0.8100 vs floor 0.65"},
            "fairness": {"verdict": "pass" if eligible else "fail", "reason": "age: a | b"},
        },
        "report": {"metrics": {"roc_auc": 0.81, "log_loss": 0.4}, "intervals": {"roc_auc": [0.79, 0.83]}},
        "limits": {"loosened": [] if eligible else ["min_roc_auc"]},
    }


def test_the_page_says_the_verdict_links_mlflow_and_keeps_the_card() -> None:
    links = mlflow_links("http://127.0.0.1:5000/", "credit", "3", "7", "r1")
    assert links == {
        "run": "http://127.0.0.1:5000/#/experiments/7/runs/r1?workflowType=machine_learning",
        "version": "http://127.0.0.1:5000/#/models/credit/versions/3?workflowType=machine_learning",
    }
    page = training_page("credit", "3", _evidence(True), links, "# Model card: credit\n")
    assert page.startswith("# credit v3: **eligible for promotion**: every gate passed")
    assert f"[MLflow run]({links['run']})" in page and f"[model version 3]({links['version']})" in page
    assert "| roc_auc | 0.8100 | 0.7900 - 0.8300 |" in page and "| log_loss | 0.4000 | not recorded |" in page
    assert "| fairness | pass | age: a \\| b |" in page  # a reason's bar does not break the table
    assert page.endswith("# Model card: credit\n") and "a person must approve" not in page


def test_a_version_that_failed_names_the_gate_and_a_loosened_limit_asks_for_a_person() -> None:
    page = training_page("credit", "4", _evidence(False), mlflow_links("http://m", "credit", "4", "1", "r"), "")
    assert page.startswith("# credit v4: **not eligible**: fairness fail")
    assert "looser than the contract's (min_roc_auc): a person must approve it" in page
