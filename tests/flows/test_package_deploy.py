"""The package/deploy flow on real servers: bundle, infra validation in a fresh interpreter, promotion, rollback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from closedloop import seal, storage
from closedloop.lake import Lake
from closedloop.registry import CHALLENGER, CHAMPION, PREVIOUS, champion_version, client, read_evidence
from closedloop.settings import PROJECT_ROOT, load_settings
from flows.ingest_validate import IngestParams, ingest_validate
from flows.package_deploy import DeployParams, package_deploy
from flows.train_evaluate import TrainParams, train_evaluate
from samples.synthetic import SyntheticConfig, write_synthetic
from tasks.promote import promotion
from tasks.promote.policy import DeployError, Rollback
from tasks.train.fit import TrainingConfig
from tasks.train.gates import Gates

pytestmark = pytest.mark.integration

SYNTHETIC = str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
NAME = "credit_synthetic"
# these tests are about deployment mechanics, not about the fairness of a 4,000-customer model
LENIENT = Gates(max_demographic_parity_difference=1, max_equalized_odds_difference=1, min_disparate_impact=0)


@pytest.fixture(scope="module")
def env(prefect_server: str, mlflow_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    values = {
        "CLOSEDLOOP_STATE_DIR": str(tmp_path_factory.mktemp("deploy-state")),
        "CLOSEDLOOP_MLFLOW_PORT": str(mlflow_server),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        settings = load_settings()
        write_synthetic(SyntheticConfig(customers=4_000), Lake.of(settings.lake_uri, NAME).landing)
        ingest_validate(IngestParams(contract=SYNTHETIC))
        yield {"settings": settings, "uri": settings.mlflow_tracking_uri}
        # the MLflow server is shared by the session: leave no champion behind for the next module
        client(settings.mlflow_tracking_uri).delete_registered_model(NAME)


@pytest.fixture
def configured(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("CLOSEDLOOP_STATE_DIR", str(env["settings"].state_dir))
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_PORT", str(env["settings"].mlflow_port))
    return env


def _train(**gates: Any) -> str:
    quick = TrainingConfig(n_estimators=150)
    result = train_evaluate(TrainParams(contract=SYNTHETIC, training=quick, gates=LENIENT.model_copy(update=gates)))
    return result.version


def test_deploy_promote_conflict_and_rollback(configured: dict[str, Any]) -> None:
    uri = configured["uri"]
    c = client(uri)
    first = _train()
    assert c.get_model_version_by_alias(NAME, CHALLENGER).version == first

    # 1. the first champion: bundle, infra validation in a fresh interpreter, approval, promotion, event, history.
    # Trained with fairness limits looser than the contract's, it needs a person's approval even where the run
    # asks for none
    result = package_deploy(
        DeployParams(contract=SYNTHETIC, require_approval=False, approved_by="risk officer", approval_comment="test")
    )
    assert result.approval and result.approval["reviewer"] == "risk officer"
    assert result.approval["required_because"].startswith(
        "judged by limits looser than its contract's: max_demographic_parity_difference 1.0 (contract: 0.15)"
    )
    assert result.promoted and result.champion == first and result.previous is None
    assert result.infra.verdict == "pass" and result.infra.max_abs_difference <= 1e-6
    assert result.infra.golden_rows == 50
    manifest = json.loads(storage.read_bytes(storage.join(result.bundle_uri or "", "MANIFEST.json")))
    assert {
        "contract.yaml",
        "feature_service.json",
        "evidence/evidence.json",
        "evidence/model_card.md",
        "model/MLmodel",
        "model/model.ubj",
        "scorer/MLmodel",
        "scorer/python_model.pkl",
    } <= set(manifest["files"])
    assert "scorer/code/tasks/score/scoring.py" in manifest["files"]  # the package carries the code it scores with
    assert not any(f.startswith(("scorer/code/tasks/train/", "scorer/code/tasks/monitor/")) for f in manifest["files"])
    assert result.infra.scorer_uri == c.get_model_version(NAME, first).tags["scorer_uri"]
    for relative, digest in manifest["files"].items():
        import hashlib

        data = storage.read_bytes(storage.join(result.bundle_uri or "", relative))
        assert hashlib.sha256(data).hexdigest() == digest
    assert str(c.get_model_version_by_alias(NAME, CHAMPION).version) == first
    assert [e["action"] for e in promotion.history(uri, NAME, first)] == ["approval", "promoted"]

    # 2. a challenger compared with v(first) is refused once another promotion made a new champion
    keys = seal.key_files(configured["settings"])
    approved = {"require_approval": False, "approved_by": "risk officer"}
    second = _train()
    assert json.loads(json.dumps(read_evidence(uri, NAME, second)["gates"]["champion"]))["compared_with"] == first
    elsewhere = str(c.copy_model_version(f"models:/{NAME}/{first}", NAME).version)
    promotion.promote(uri, NAME, elsewhere, first, keys, by="pytest")
    refused = package_deploy(DeployParams(contract=SYNTHETIC, version=second, **approved))
    assert not refused.promoted and "re-evaluate" in refused.reason
    assert str(c.get_model_version_by_alias(NAME, CHAMPION).version) == elsewhere == refused.champion

    # 3. against the champion it was compared with, it is promoted and the old champion stays reachable
    promotion.promote(uri, NAME, first, elsewhere, keys, by="pytest")
    promoted = package_deploy(DeployParams(contract=SYNTHETIC, version=second, **approved))
    assert promoted.promoted and promoted.previous == first
    assert str(c.get_model_version_by_alias(NAME, PREVIOUS).version) == first

    # 4. an alias moved by hand changes nothing: the sealed promotions decide what is champion
    c.set_registered_model_alias(NAME, PREVIOUS, elsewhere)
    c.set_registered_model_alias(NAME, CHAMPION, elsewhere)
    assert seal.champion_of(configured["settings"], NAME) == second

    # 5. rollback: champion := the previous sealed champion (not the hand-moved alias), in both histories
    back = promotion.rollback(uri, NAME, reason="test", by="pytest", keys=keys)
    assert back == Rollback(champion=first, rolled_back=second)
    assert str(c.get_model_version_by_alias(NAME, CHAMPION).version) == first
    assert promotion.history(uri, NAME, second)[-1]["action"] == "rollback"
    assert promotion.history(uri, NAME, first)[-1] == {
        **promotion.history(uri, NAME, first)[-1],
        "from": second,
        "to": first,
    }


def test_infra_validation_fails_closed(configured: dict[str, Any]) -> None:
    uri = configured["uri"]
    before = champion_version(uri, NAME)
    version = _train(noninferiority_margin=1.0)
    result = package_deploy(
        DeployParams(contract=SYNTHETIC, version=version, require_approval=False, latency_budget_ms=0.0001)
    )
    assert not result.promoted and "latency" in result.reason
    assert champion_version(uri, NAME) == before
    assert promotion.history(uri, NAME, version)[-1]["action"] == "deploy refused"


def test_a_version_that_failed_a_gate_is_never_deployed(configured: dict[str, Any]) -> None:
    version = _train(min_roc_auc=0.99)
    with pytest.raises(DeployError, match="not eligible"):
        package_deploy(DeployParams(contract=SYNTHETIC, version=version, require_approval=False))


def _answer_when_paused(api: str, run_input: dict[str, Any]) -> None:
    """Play the reviewer: wait for the paused deploy run, then resume it with the form filled in."""
    import time

    from conftest import prefect_api
    from prefect.flow_runs import resume_flow_run

    body = {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
    for _ in range(240):
        paused = prefect_api("POST", f"{api}/flow_runs/filter", json=body).json()
        if paused:
            resume_flow_run(paused[0]["id"], run_input=run_input)
            return
        time.sleep(0.5)
    raise AssertionError("the deploy run never paused for approval")


def test_approval_pauses_and_the_decision_and_its_author_are_kept(
    configured: dict[str, Any], prefect_server: str
) -> None:
    import threading

    uri = configured["uri"]
    before = champion_version(uri, NAME)
    version = _train(noninferiority_margin=1.0)
    reviewer = threading.Thread(
        target=_answer_when_paused, args=(prefect_server, {"approve": False, "reviewer": "bob", "comment": "too soon"})
    )
    reviewer.start()
    refused = package_deploy(DeployParams(contract=SYNTHETIC, version=version, require_approval=True))
    reviewer.join()
    assert not refused.promoted and refused.approval
    assert {k: refused.approval[k] for k in ("approve", "reviewer", "comment")} == {
        "approve": False,
        "reviewer": "bob",
        "comment": "too soon",
    }
    assert refused.approval["required_because"].startswith("judged by limits looser than its contract's")
    assert "noninferiority_margin 1.0 (contract: 0.01)" in refused.approval["required_because"]
    assert champion_version(uri, NAME) == before
    reviewer = threading.Thread(
        target=_answer_when_paused, args=(prefect_server, {"approve": True, "reviewer": "alice"})
    )
    reviewer.start()
    approved = package_deploy(DeployParams(contract=SYNTHETIC, version=version, require_approval=True))
    reviewer.join()
    assert approved.promoted and approved.approval and approved.approval["reviewer"] == "alice"
    actions = [(e["action"], e.get("reviewer")) for e in promotion.history(uri, NAME, version)]
    assert ("approval", "bob") in actions and ("approval", "alice") in actions and actions[-1][0] == "promoted"


def test_batch_scoring_writes_the_champions_scores_to_the_lake(configured: dict[str, Any]) -> None:
    from datetime import timedelta

    import pandas as pd

    from flows.batch_score import BatchScoreParams, batch_score

    settings = configured["settings"]
    if champion_version(configured["uri"], NAME) is None:
        package_deploy(DeployParams(contract=SYNTHETIC, version=_train(), approved_by="risk officer"))
    lake = Lake.of(settings.lake_uri, NAME)
    apps = lake.read_offline("applications")
    end = apps["applied_at"].max() + timedelta(seconds=1)
    start = end - timedelta(days=30)
    expected = int(((apps["applied_at"] >= start) & (apps["applied_at"] < end)).sum())
    result = batch_score(BatchScoreParams(contract=SYNTHETIC, start=start, end=end))
    assert result.rows == expected > 0 and result.model_version == champion_version(configured["uri"], NAME)
    scores = pd.read_parquet(storage.parse(result.uri or "").path)
    assert len(scores) == expected and scores["application_id"].is_unique
    assert scores["probability"].between(0, 1).all() and set(scores["decision"]) <= {"approve", "refuse"}
    assert (scores["decision"] == "refuse").sum() == result.refused
    # per-segment scoring on two Dask worker processes: the same scores, one object per segment
    segmented = batch_score(
        BatchScoreParams(contract=SYNTHETIC, start=start, end=end, segment_rows=expected // 3 + 1, engine="dask")
    )
    assert len(segmented.uris) == 3 and segmented.rows == expected and segmented.refused == result.refused
    parts = pd.concat([pd.read_parquet(storage.parse(uri).path) for uri in segmented.uris], ignore_index=True)
    both = scores.merge(parts, on="application_id", suffixes=("", "_segmented"), validate="one_to_one")
    assert len(both) == expected
    assert np.allclose(both["probability"], both["probability_segmented"], rtol=0, atol=1e-7)
    assert (both["decision"] == both["decision_segmented"]).all()
    assert not storage.list_objects(storage.join(lake.root, "scores", "staging"))  # the staged entities are gone
    # all or nothing: when one segment cannot be written, the segments that were are removed
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.batch_score import score_segments

    window = apps[(apps["applied_at"] >= start) & (apps["applied_at"] < end)]
    entities = window.rename(columns={"applied_at": "event_timestamp"}).sort_values("event_timestamp")
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(entities, preserve_index=False), buffer, row_group_size=expected // 3 + 1)
    staged = storage.write_bytes(storage.join(lake.root, "scores", "staging", "failing.parquet"), buffer.getvalue())
    blocker = storage.parse(lake.root).path / "not-a-folder"
    blocker.write_text("a file where a folder would be")
    good = [storage.join(lake.root, "scores", "failing", f"{i}.parquet") for i in (0, 2)]
    uris = [good[0], (blocker / "1.parquet").as_uri(), good[1]]
    with pytest.raises(Exception, match="not-a-folder"):
        one_at_a_time = score_segments.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
        one_at_a_time(SYNTHETIC, segmented.model_version, staged, uris)
    assert not any(storage.exists(uri) for uri in good)
    with pytest.raises(ValueError, match="empty window"):
        batch_score(BatchScoreParams(contract=SYNTHETIC, start=end, end=start))


def test_evidence_rewritten_after_training_is_refused(configured: dict[str, Any]) -> None:
    """An ineligible version whose evidence file is rewritten to say eligible is not deployed: the seal differs."""
    uri = configured["uri"]
    version = _train(min_roc_auc=0.99)
    evidence = read_evidence(uri, NAME, version)
    assert evidence["eligible"] is False and evidence["limits"]["loosened"]
    forged = {
        **evidence,
        "eligible": True,
        "gates": {k: {**v, "verdict": "pass"} for k, v in evidence["gates"].items()},
    }
    run_id = client(uri).get_model_version(NAME, version).run_id
    client(uri).log_text(run_id, json.dumps(forged, indent=2), "evidence/evidence.json")
    with pytest.raises(DeployError, match="differs from the record the train flow sealed"):
        package_deploy(DeployParams(contract=SYNTHETIC, version=version, approved_by="risk officer"))
    assert promotion.history(uri, NAME, version) == []  # nothing was packaged or promoted
