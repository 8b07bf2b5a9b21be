"""The scoring service on real components: MLflow tracking server, Feast online store, the champion alias.

The served stack (``served``, ``app_client``) is the package's: tests/serving/conftest.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from closedloop import seal
from closedloop.contract import load_contract
from closedloop.inference_log import InferenceLog, read_window
from closedloop.lake import Lake
from closedloop.registry import CHAMPION, client
from closedloop.settings import PROJECT_ROOT, Settings
from serving.app import MAX_BODY_BYTES, create_app
from tasks.promote import promotion
from tasks.promote.policy import RolloutPlan

pytestmark = pytest.mark.integration

SYNTHETIC = PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"
CONTRACT = load_contract(SYNTHETIC)
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _application(customer_id: int, **changes: Any) -> dict[str, Any]:
    body = {
        "customer_id": customer_id,
        "loan_amount": 12_000.0,
        "loan_term_months": 36,
        "loan_purpose": "car",
        "channel": "online",
        "age": 41,
    }
    body.update(changes)
    return body


def test_an_application_is_scored_with_reasons_and_the_champion_version(
    app_client: TestClient, served: dict[str, Any]
) -> None:
    customer = served["customers"][0]
    response = app_client.post("/v1/score", json=_application(customer), headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 < body["probability"] < 1
    assert body["decision"] in ("approve", "refuse")
    assert body["model_version"] == served["version"]
    assert body["entity_id"] == customer and len(body["request_id"]) == 32
    assert 1 <= len(body["reasons"]) <= 3 and all(r["contribution"] > 0 for r in body["reasons"])
    assert len(served["customers"]) > 100
    # the batch endpoint scores the same application the same way
    batch = app_client.post(
        "/v1/score/batch",
        json={"applications": [_application(customer), _application(served["customers"][1])]},
        headers=AUTH,
    )
    assert batch.status_code == 200
    assert batch.json()[0]["probability"] == pytest.approx(body["probability"], abs=1e-9)
    # the request's own fields reach the model (through the on-demand ratios too)
    bigger = app_client.post("/v1/score", json=_application(customer, loan_amount=90_000.0), headers=AUTH).json()
    assert bigger["probability"] != body["probability"]


def test_without_the_right_token_nothing_is_scored(app_client: TestClient, served: dict[str, Any]) -> None:
    body = _application(served["customers"][0])
    assert app_client.post("/v1/score", json=body).status_code == 401
    wrong = app_client.post("/v1/score", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"


def test_a_bad_body_gets_field_errors(app_client: TestClient, served: dict[str, Any]) -> None:
    bad = _application(served["customers"][0], loan_amount=5.0, loan_purpose="yacht", favourite_colour="red")
    response = app_client.post("/v1/score", json=bad, headers=AUTH)
    assert response.status_code == 422
    fields = {tuple(e["loc"])[-1] for e in response.json()["detail"]}
    assert {"loan_amount", "loan_purpose", "favourite_colour"} <= fields
    missing = {k: v for k, v in _application(served["customers"][0]).items() if k != "loan_term_months"}
    assert app_client.post("/v1/score", json=missing, headers=AUTH).status_code == 422
    empty_batch = app_client.post("/v1/score/batch", json={"applications": []}, headers=AUTH)
    assert empty_batch.status_code == 422


def test_an_unknown_customer_is_a_clear_404(app_client: TestClient) -> None:
    response = app_client.post("/v1/score", json=_application(987_654_321), headers=AUTH)
    assert response.status_code == 404
    assert "987654321" in response.json()["detail"] and "customer_id" in response.json()["detail"]


def test_an_oversized_body_is_refused(app_client: TestClient) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    declared = app_client.post("/v1/score", content=b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}", headers=headers)
    assert declared.status_code == 413 and str(MAX_BODY_BYTES) in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body streams in
        yield b"["
        for _ in range(MAX_BODY_BYTES // 4096 + 1):
            yield b" " * 4096
        yield b"]"

    streamed = app_client.post("/v1/score/batch", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and str(MAX_BODY_BYTES) in streamed.json()["detail"]
    assert "content-length" not in streamed.request.headers


def test_health_readiness_and_metrics(app_client: TestClient, served: dict[str, Any]) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == served["version"]
    app_client.post("/v1/score", json=_application(served["customers"][0]), headers=AUTH)
    app_client.post("/v1/score", json=_application(1), headers={"Authorization": "Bearer nope"})
    text = app_client.get("/metrics").text
    assert 'closedloop_requests_total{endpoint="/v1/score",status="200"}' in text
    assert 'closedloop_errors_total{kind="unauthorised"}' in text
    assert f'closedloop_model_info{{version="{served["version"]}"}} 1.0' in text
    assert "closedloop_request_seconds_bucket" in text


def test_the_champion_is_swapped_without_failing_requests_in_flight(
    app_client: TestClient, served: dict[str, Any]
) -> None:
    settings: Settings = served["settings"]
    c = client(settings.mlflow_tracking_uri)
    current = c.get_model_version(CONTRACT.name, served["version"])
    copy = c.copy_model_version(f"models:/{CONTRACT.name}/{current.version}", CONTRACT.name)
    keys = seal.key_files(settings)
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            response = app_client.post("/v1/score", json=_application(served["customers"][2]), headers=AUTH)
            statuses.append(response.status_code)
            versions.add(response.json().get("model_version", ""))

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        promotion.promote(settings.mlflow_tracking_uri, CONTRACT.name, str(copy.version), served["version"], keys, "t")
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        while str(copy.version) not in versions and datetime.now(UTC) < deadline:
            threading.Event().wait(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join()
        promotion.promote(settings.mlflow_tracking_uri, CONTRACT.name, served["version"], str(copy.version), keys, "t")
    assert set(statuses) == {200}
    assert {served["version"], str(copy.version)} <= versions


def test_no_champion_means_not_ready(served: dict[str, Any]) -> None:
    taiwan = load_contract(PROJECT_ROOT / "datasets/taiwan_credit_default/contract.yaml")
    with TestClient(create_app(served["settings"], taiwan, TOKEN)) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 503 and "was promoted yet" in ready.json()["reason"]
        body = {"customer_id": 1, "credit_limit": 1000.0}
        assert http.post("/v1/score", json=body, headers=AUTH).status_code in (422, 503)


def test_no_token_no_service(served: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="bearer token"):
        create_app(served["settings"], CONTRACT, "")


def test_scored_requests_land_in_the_inference_log(served: dict[str, Any]) -> None:
    settings: Settings = served["settings"]
    lake = Lake.of(settings.lake_uri, CONTRACT.name)
    log = InferenceLog(lake)
    started = datetime.now(UTC)
    with TestClient(create_app(settings, CONTRACT, TOKEN, inference_log=log)) as http:
        ids = [
            http.post("/v1/score", json=_application(c), headers=AUTH).json()["request_id"]
            for c in served["customers"][:5]
        ]
    log.flush()
    logged = read_window(lake, started - timedelta(seconds=1), datetime.now(UTC) + timedelta(seconds=1))
    assert set(ids) <= set(logged["request_id"])
    assert (logged["model_version"] == served["version"]).all()
    assert "feature.utilisation" in logged.columns
    assert logged["feature.utilisation"].notna().all()  # recent customers: history served from the online store


def test_the_cli_scores_through_a_real_http_server(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import time

    import uvicorn
    from conftest import free_port
    from typer.testing import CliRunner

    from cli.main import app as cli

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(served["settings"], CONTRACT, TOKEN), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        monkeypatch.setenv("CLOSEDLOOP_SERVING_TOKEN", TOKEN)
        url = f"http://127.0.0.1:{port}"
        customers = served["customers"][:2]
        one = CliRunner().invoke(cli, ["score", json.dumps(_application(customers[0])), "--url", url, "--json"])
        assert one.exit_code == 0, one.output
        assert json.loads(one.output)["model_version"] == served["version"]
        many = CliRunner().invoke(cli, ["score", json.dumps([_application(c) for c in customers]), "--url", url])
        assert many.exit_code == 0 and all(str(c) in many.output for c in customers)
        unknown = CliRunner().invoke(cli, ["score", json.dumps(_application(987_654_321)), "--url", url])
        assert unknown.exit_code == 2 and "404" in unknown.output
        monkeypatch.setenv("CLOSEDLOOP_SERVING_TOKEN", "wrong")
        refused = CliRunner().invoke(cli, ["score", json.dumps(_application(customers[0])), "--url", url])
        assert refused.exit_code == 2 and "401" in refused.output
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_fast_feature_path_answers_as_feast_and_the_pandas_model_path(served: dict[str, Any]) -> None:
    """The hot path (direct SQLite reads, numpy matrix, unnamed DMatrix) changes nothing a model sees or says."""
    import numpy as np
    import xgboost as xgb

    from closedloop.registry import load_model
    from feature_repo.definitions import model_service_name
    from feature_repo.online_read import OnlineReader, feast_rows
    from feature_repo.store import open_store
    from tasks.score.feature_source import FeatureSource
    from tasks.score.loading import load_version
    from tasks.score.scoring import UnknownEntities, score
    from tasks.shared.features import typed_features

    settings = served["settings"]
    store = open_store(settings, CONTRACT)
    service = store.get_feature_service(model_service_name(CONTRACT))
    customers = served["customers"][:150]
    keys = [*customers, 999_999_999]  # and one nobody knows
    reader = OnlineReader(store, service)
    assert reader.read(keys) == feast_rows(store, service, "customer_id", keys)
    assert reader.read([999_999_999]) == [None]

    model = load_version(settings.mlflow_tracking_uri, CONTRACT.name, served["version"])
    fast = FeatureSource(store, CONTRACT)
    slow = FeatureSource(store, CONTRACT, fast=False)
    assert fast.uses_fast_path and not slow.uses_fast_path
    rng = np.random.default_rng(7)
    applications = [
        _application(
            c,
            loan_amount=float(rng.uniform(1_000, 60_000)),
            loan_purpose=str(rng.choice(["car", "home_improvement", "debt_consolidation"])),
            channel=str(rng.choice(["online", "branch"])),
        )
        for c in customers
    ]
    applications[3]["loan_amount"] = 0.0  # a zero denominator somewhere must stay missing, not inf
    matrix = fast.matrix(applications, model.columns)
    assert np.array_equal(matrix, slow.matrix(applications, model.columns), equal_nan=True)
    # the reference: Feast's FeatureService (with its on-demand view) into the pandas frame training uses
    online = store.get_online_features(features=service, entity_rows=applications).to_df()
    for name in ("loan_amount", "loan_term_months", "loan_purpose", "channel"):
        online[name] = [a[name] for a in applications]
    frame = typed_features(online, CONTRACT)[model.columns]
    sklearn_model = load_model(settings.mlflow_tracking_uri, CONTRACT.name, served["version"])
    expected = sklearn_model.predict_proba(frame)[:, 1]
    scored = score(model, fast, applications)
    assert np.array_equal([s.probability for s in scored], expected)
    named = xgb.DMatrix(frame, enable_categorical=True)
    contributions = sklearn_model.get_booster().predict(
        named, pred_contribs=True, iteration_range=model.iteration_range
    )
    assert np.allclose(model.predict(matrix)[1], contributions, atol=1e-6)
    # the batch path (batch_score): the retrieval frame as one matrix, inplace_predict
    from tasks.score.scoring import frame_matrix

    assert np.array_equal(frame_matrix(online, CONTRACT, model.columns), matrix, equal_nan=True)
    assert np.allclose(model.predict_batch(frame_matrix(online, CONTRACT, model.columns)), expected, atol=1e-7)
    assert scored[0].features["loan_purpose"] == applications[0]["loan_purpose"]
    with pytest.raises(UnknownEntities, match="999999999"):
        fast.matrix([_application(999_999_999)], model.columns)


# --- shadow and canary rollouts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twin(served: dict[str, Any]) -> str:
    """A second registered version of the champion's model (same run, artifacts and evidence): a candidate."""
    import mlflow

    mlflow.set_tracking_uri(served["settings"].mlflow_tracking_uri)
    original = client(served["settings"].mlflow_tracking_uri).get_model_version(CONTRACT.name, served["version"])
    return str(mlflow.register_model(original.source, CONTRACT.name).version)


@pytest.fixture(scope="module")
def broken(served: dict[str, Any]) -> str:
    """A registered version that loads but cannot score this contract's applications (it wants a 'shoe_size')."""
    import json

    import numpy as np
    import xgboost as xgb

    from closedloop.registry import log_and_register

    rng = np.random.default_rng(0)
    x = pd.DataFrame({"shoe_size": rng.normal(42, 2, 200)})
    model = xgb.XGBClassifier(n_estimators=5).fit(x, (x["shoe_size"] > 42).astype(int))
    return log_and_register(
        served["settings"].mlflow_tracking_uri,
        CONTRACT.name,
        model,
        x,
        params={},
        metrics={},
        tags={},
        documents={"evidence.json": json.dumps({"decision_threshold": 0.5, "eligible": False})},
        eligible=False,
    )


def _until(predicate: Any, seconds: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _plan(strategy: str, **changes: Any) -> RolloutPlan:
    plan = {"strategy": strategy, "share": 0.0, "max_error_rate": 0.01, "max_p99_ms": 10_000.0, "min_requests": 10_000}
    plan.update(changes)
    return RolloutPlan.model_validate(plan)


def test_a_group_threshold_policy_places_applicants_by_their_stored_age(served: dict[str, Any]) -> None:
    """A champion whose fairness gate chose group thresholds decides requests that do not carry the age."""
    import dataclasses

    from feature_repo.store import open_store
    from tasks.score.feature_source import FeatureSource
    from tasks.score.loading import load_version
    from tasks.score.scoring import ScoringInputError, policy_group, score
    from tasks.shared.fairness import groups_of

    settings = served["settings"]
    model = load_version(settings.mlflow_tracking_uri, CONTRACT.name, served["version"])
    refuse, approve = (
        {"p0": 1.0, "threshold0": -1.0, "threshold1": -1.0},
        {"p0": 1.0, "threshold0": 2.0, "threshold1": 2.0},
    )
    bands = ["18-25", "25-35", "35-50", "50-65", "65-101"]
    # refuse the young, approve everyone else: the decision shows which group the service placed each applicant in
    policy = {band: refuse if band == "18-25" else approve for band in bands}
    grouped = dataclasses.replace(model, policy=policy, policy_attribute="age")
    source = FeatureSource(open_store(settings, CONTRACT), CONTRACT)
    assert source.policy_fields == {"age"}

    profiles = Lake.of(settings.lake_uri, CONTRACT.name).read_offline("profiles")
    latest = profiles.sort_values("profile_at").groupby("customer_id").last()
    customers = served["customers"][:300]
    expected = groups_of(latest.loc[customers, "age"], CONTRACT.column("age")).tolist()
    assert "18-25" in expected and len(set(expected)) > 2  # the check below can tell groups apart
    applications = [_application(c) for c in customers]
    for application in applications:
        del application["age"]  # what a request replayed from the applications table looks like
    scored = score(grouped, source, applications)
    assert [s.decision for s in scored] == ["refuse" if g == "18-25" else "approve" for g in expected]

    # the age a request gives wins over the stored one; the banding matches the fairness analysis'
    young = next(c for c, g in zip(customers, expected, strict=True) if g != "18-25")
    assert score(grouped, source, [_application(young, age=19)])[0].decision == "refuse"
    for age in (17, 18, 24.9, 25, 64, 65, 100, 101, None, "n/a"):
        label = groups_of(pd.Series([age]), CONTRACT.column("age")).iloc[0]
        assert policy_group(CONTRACT, "age", age) == (label if isinstance(label, str) else "unknown")

    # a store without the policy view (applied before it existed) cannot place anyone: a clear error
    source.policy_fields = set()
    with pytest.raises(ScoringInputError, match="neither the request nor the online store"):
        score(grouped, source, applications[:2])


def test_a_canary_answers_a_sticky_share_of_customers_logged_as_canary(served: dict[str, Any], twin: str) -> None:
    from tasks.promote.promotion import end_rollout, start_rollout

    settings: Settings = served["settings"]
    uri, lake = settings.mlflow_tracking_uri, Lake.of(settings.lake_uri, CONTRACT.name)
    log = InferenceLog(lake)
    started = datetime.now(UTC)
    start_rollout(uri, CONTRACT.name, twin, _plan("canary", share=0.5), seal.key_files(settings))
    try:
        app = create_app(settings, CONTRACT, TOKEN, refresh_seconds=0.2, inference_log=log)
        with TestClient(app) as http:
            assert _until(lambda: app.state.champion.rollout is not None)
            customers = served["customers"][:60]

            def versions() -> dict[int, str]:
                answers = {c: http.post("/v1/score", json=_application(c), headers=AUTH) for c in customers}
                assert all(r.status_code == 200 for r in answers.values())
                return {c: r.json()["model_version"] for c, r in answers.items()}

            first = versions()
            assert versions() == first  # sticky: a customer keeps the version that answered them
            by_canary = [c for c, v in first.items() if v == twin]
            assert set(first.values()) == {served["version"], twin} and 10 <= len(by_canary) <= 50
            batch = http.post(
                "/v1/score/batch", json={"applications": [_application(c) for c in customers[:20]]}, headers=AUTH
            ).json()
            assert [r["model_version"] for r in batch] == [first[c] for c in customers[:20]]
        log.flush()
    finally:
        end_rollout(uri, CONTRACT.name, twin, "ended by test", {})
    logged = read_window(lake, started, datetime.now(UTC) + timedelta(seconds=1))
    canary = logged[logged["variant"] == "canary"]
    assert set(canary["model_version"]) == {twin}
    assert len(canary) == 2 * len(by_canary) + sum(first[c] == twin for c in customers[:20])
    assert set(logged.loc[logged["variant"] == "champion", "model_version"]) == {served["version"]}


def test_a_shadow_over_its_latency_budget_is_rolled_back_without_failing_a_request(
    served: dict[str, Any], twin: str
) -> None:
    from tasks.promote.promotion import history, rollout_state, start_rollout

    settings: Settings = served["settings"]
    uri, lake = settings.mlflow_tracking_uri, Lake.of(settings.lake_uri, CONTRACT.name)
    log = InferenceLog(lake)
    started = datetime.now(UTC)
    # a budget no model can meet: the guard must trip once it has seen min_requests answers
    start_rollout(
        uri, CONTRACT.name, twin, _plan("shadow", max_p99_ms=0.001, min_requests=20), seal.key_files(settings)
    )
    app = create_app(settings, CONTRACT, TOKEN, refresh_seconds=0.2, inference_log=log)
    with TestClient(app) as http:
        assert _until(lambda: app.state.champion.rollout is not None)
        responses = [http.post("/v1/score", json=_application(c), headers=AUTH) for c in served["customers"][:40]]
        assert all(r.status_code == 200 for r in responses)
        assert {r.json()["model_version"] for r in responses} == {served["version"]}  # the shadow never answers
        assert _until(lambda: rollout_state(uri, CONTRACT.name) is None)  # the service ended it in the registry
        assert _until(lambda: app.state.champion.rollout is None)
    log.flush()
    tags = client(uri).get_model_version(CONTRACT.name, twin).tags
    assert tags["rollout.verdict"] == "rolled back"
    ended = [e for e in history(uri, CONTRACT.name, twin) if e["action"] == "rollout rolled back"]
    assert "p99 latency" in ended[-1]["reason"] and ended[-1]["requests"] == 20
    logged = read_window(lake, started, datetime.now(UTC) + timedelta(seconds=1))
    shadow = logged[logged["variant"] == "shadow"]
    assert len(shadow) == 20 and set(shadow["model_version"]) == {twin}
    # each shadow answer is paired with the champion's answer to the same request
    assert set(shadow["request_id"]) <= set(logged.loc[logged["variant"] == "champion", "request_id"])


def test_a_canary_that_fails_is_rolled_back_and_its_customers_get_the_champion(
    served: dict[str, Any], broken: str
) -> None:
    from tasks.promote.promotion import history, rollout_state, start_rollout

    uri = served["settings"].mlflow_tracking_uri
    start_rollout(
        uri, CONTRACT.name, broken, _plan("canary", share=0.9, min_requests=10), seal.key_files(served["settings"])
    )
    app = create_app(served["settings"], CONTRACT, TOKEN, refresh_seconds=0.2)
    with TestClient(app) as http:
        assert _until(lambda: app.state.champion.rollout is not None)
        responses = [http.post("/v1/score", json=_application(c), headers=AUTH) for c in served["customers"][:30]]
        assert [r.status_code for r in responses] == [200] * 30  # nobody saw the candidate's failure
        assert {r.json()["model_version"] for r in responses} == {served["version"]}
        assert _until(lambda: rollout_state(uri, CONTRACT.name) is None)
        metrics = http.get("/metrics").text
    assert 'closedloop_errors_total{kind="canary_failed"}' in metrics
    ended = [e for e in history(uri, CONTRACT.name, broken) if e["action"] == "rollout rolled back"]
    assert "error rate" in ended[-1]["reason"] and ended[-1]["errors"] >= 10


def test_the_deploy_flow_promotes_only_a_rollout_with_enough_logged_answers(
    served: dict[str, Any], twin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """observe_rollout: fails closed without traffic; passes with it and reports the shadow's agreement."""
    import time

    from tasks.promote import promotion

    settings: Settings = served["settings"]
    uri, lake = settings.mlflow_tracking_uri, Lake.of(settings.lake_uri, CONTRACT.name)
    keys = seal.key_files(settings)
    monkeypatch.setattr(promotion, "LOG_FLUSH_GRACE_SECONDS", 1.0)
    monkeypatch.setattr(promotion, "ROLLOUT_POLL_SECONDS", 0.2)
    quiet = promotion.observe_rollout(
        uri, CONTRACT.name, twin, _plan("shadow", min_requests=5), 1.0, lake, "test", keys
    )
    assert quiet.verdict == "failed" and "only 0 answers" in quiet.reason
    assert promotion.rollout_state(uri, CONTRACT.name) is None  # a failed rollout leaves no candidate behind

    log = InferenceLog(lake, flush_seconds=0.2)
    log.start()
    app = create_app(settings, CONTRACT, TOKEN, refresh_seconds=0.2, inference_log=log)
    stop = threading.Event()

    def traffic() -> None:
        with TestClient(app) as http:
            i = 0
            while not stop.is_set():
                http.post("/v1/score", json=_application(served["customers"][i % 50]), headers=AUTH)
                i += 1
                time.sleep(0.01)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        busy = promotion.observe_rollout(
            uri, CONTRACT.name, twin, _plan("shadow", min_requests=5), 4.0, lake, "test", keys
        )
    finally:
        stop.set()
        sender.join(timeout=10)
        log.close()
    assert busy.verdict == "passed", busy
    assert (busy.requests or 0) >= 5 and busy.decision_agreement == 1.0  # the twin is the same model
    assert busy.mean_abs_score_difference == 0.0
    assert client(uri).get_model_version(CONTRACT.name, twin).tags["rollout.verdict"] == "passed"


def test_the_packaged_pyfunc_scores_raw_applications_as_the_service_does(
    app_client: TestClient, served: dict[str, Any]
) -> None:
    """The deployable package fetches its own features: a fresh load answers as the running service."""
    import mlflow

    from tasks.promote.packaging import log_scorer

    settings: Settings = served["settings"]
    uri = log_scorer(settings.mlflow_tracking_uri, CONTRACT, str(SYNTHETIC), served["version"])
    assert log_scorer(settings.mlflow_tracking_uri, CONTRACT, str(SYNTHETIC), served["version"]) == uri  # once
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with pytest.MonkeyPatch.context() as patch:  # the package reads the active profile's settings, as deployed
        patch.setenv("CLOSEDLOOP_STATE_DIR", str(settings.state_dir))
        patch.setenv("CLOSEDLOOP_MLFLOW_PORT", str(settings.mlflow_port))
        scorer = mlflow.pyfunc.load_model(uri)
        applications = [_application(c) for c in served["customers"][:5]]
        answer = scorer.predict(pd.DataFrame(applications))
    service = [app_client.post("/v1/score", json=a, headers=AUTH).json() for a in applications]
    assert answer["probability"].tolist() == pytest.approx([s["probability"] for s in service], abs=1e-12)
    assert answer["decision"].tolist() == [s["decision"] for s in service]
    assert set(answer["model_version"]) == {served["version"]}
    assert answer["entity_id"].tolist() == served["customers"][:5]


def test_a_hand_moved_champion_alias_is_not_served_and_readiness_and_an_event_say_so(
    app_client: TestClient, served: dict[str, Any], prefect_server: str
) -> None:
    """One REST call moves the alias to a version the deploy flow never promoted: the sealed champion serves on."""
    import time

    from conftest import prefect_api

    from closedloop import events

    settings: Settings = served["settings"]
    c = client(settings.mlflow_tracking_uri)
    unsealed = str(c.copy_model_version(f"models:/{CONTRACT.name}/{served['version']}", CONTRACT.name).version)

    def readiness_until(done: Any) -> dict[str, Any]:
        for _ in range(150):  # the app re-reads the registry every 0.2 s
            ready: dict[str, Any] = app_client.get("/readyz").json()
            if done(ready):
                return ready
            time.sleep(0.2)
        raise AssertionError(f"readiness never changed: {ready}")

    c.set_registered_model_alias(CONTRACT.name, CHAMPION, unsealed)
    try:
        ready = readiness_until(lambda r: "degraded" in r)
        assert ready["ready"] is True and ready["model_version"] == served["version"]
        assert f"points at v{unsealed}, but the last sealed promotion is v{served['version']}" in ready["degraded"]
        scored = app_client.post("/v1/score", json=_application(served["customers"][0]), headers=AUTH)
        assert scored.status_code == 200 and scored.json()["model_version"] == served["version"]
        body = {"filter": {"event": {"name": [events.CHAMPION_REFUSED]}}, "limit": 10}
        for _ in range(40):  # events reach the server through a background worker
            found = prefect_api("POST", f"{prefect_server}/events/filter", json=body).json()["events"]
            if any(f"points at v{unsealed}" in e["payload"]["reason"] for e in found):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("no champion_refused event")
    finally:
        c.set_registered_model_alias(CONTRACT.name, CHAMPION, served["version"])
    assert "degraded" not in readiness_until(lambda r: "degraded" not in r)
