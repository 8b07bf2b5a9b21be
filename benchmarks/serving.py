"""Serving benchmark: online scoring in process and over HTTP, and batch scoring, each vs its raw baseline."""

from __future__ import annotations

import gc
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.http_load import client_process, load_run, malformed, reliability, requests_to, saturation
from benchmarks.measure import REPEATS, Measurement, free_port


def _prepared_stack(tmp: str, customers: int) -> tuple[Any, Any, str, str]:
    """A stack in ``tmp`` with ``customers`` ingested and materialized, MLflow up and a champion trained."""
    from cli import stack
    from closedloop import seal
    from closedloop.contract import contract_at
    from closedloop.lake import Lake
    from closedloop.settings import PROJECT_ROOT, load_settings
    from samples.synthetic import SyntheticConfig, write_synthetic
    from tasks.ingest.tasks import earliest_new_events, find_batches, ingest_batch, materialize_features
    from tasks.promote import promotion
    from tasks.train.fit import TrainingConfig
    from tasks.train.gates import Gates
    from tasks.train.tasks import build_training_set, evaluate_candidate, register_candidate, train_model

    contract_path = str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml")
    settings = load_settings(state_dir=Path(tmp), mlflow_port=free_port(), prefect_port=free_port())
    contract = contract_at(contract_path)
    lake = Lake.of(settings.lake_uri, contract.name)
    now = datetime.now(UTC)
    write_synthetic(SyntheticConfig(customers=customers, months=12), lake.landing)  # the year up to now
    refs = find_batches([], lake.landing, contract, None)
    outcomes = [ingest_batch.fn(ref, contract, lake, now) for ref in refs]
    materialize_features.fn(settings, contract, earliest_new_events(outcomes, contract), now)
    stack.up(settings, only=("mlflow",))
    config = TrainingConfig()
    training = build_training_set.fn(settings, contract, now, config)
    model_path = train_model.fn(training, contract, config)
    evaluation = evaluate_candidate.fn(training, model_path, contract, settings.mlflow_tracking_uri, Gates())
    version, _, _ = register_candidate.fn(
        training, model_path, contract, settings.mlflow_tracking_uri, evaluation, config, "bench", now
    )
    keys = seal.key_files(settings)  # promoted as the deploy flow does: the service serves sealed versions only
    promotion.promote(settings.mlflow_tracking_uri, contract.name, version, None, keys, by="benchmark")
    return settings, contract, version, contract_path


def _recent_applications(settings: Any, contract: Any) -> list[dict[str, Any]]:
    """Request bodies of customers who applied lately (their statements are still in the online store)."""
    from closedloop.lake import Lake
    from samples.synthetic import last_month_applications

    apps = Lake.of(settings.lake_uri, contract.name).read_offline(contract.prediction)
    spec = contract.tables[contract.prediction]
    recent = last_month_applications(apps, spec.event_time)
    fields = [contract.entity.join_key] + [c.name for c in contract.columns_of(contract.prediction) if c.is_model_input]
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in recent[fields].drop_duplicates(contract.entity.join_key).to_dict("records")
    ]


def _serve(settings: Any, contract_path: str, port: int, token: str) -> None:
    """The scoring service as ``closedloop serve`` runs it (inference log on), in its own process."""
    import uvicorn

    from closedloop.contract import load_contract
    from closedloop.inference_log import InferenceLog
    from closedloop.lake import Lake
    from serving.app import create_app

    contract = load_contract(contract_path)
    log = InferenceLog(
        Lake.of(settings.lake_uri, contract.name), journal_dir=settings.state_dir / "inference-journal" / contract.name
    )
    log.recover()
    log.start()
    try:
        uvicorn.run(
            create_app(settings, contract, token, inference_log=log), host="127.0.0.1", port=port, log_level="warning"
        )
    finally:
        log.close()


def bench_serving(customers: int = 20_000, seconds: float = 60.0, rate: float = 200.0) -> list[Measurement]:
    """Online scoring in process and over HTTP, and batch scoring, each against its raw baseline.

    In process: one application through the hot path (online-store lookup, matrix, predict, SHAP reasons) vs
    XGBoost's ``inplace_predict`` of the same ready row. HTTP (a real uvicorn service with its inference log, in
    its own process, loopback): open-loop ``rate`` requests/s for ``seconds`` to ``/v1/score`` vs the same load
    on the same server's ``/healthz`` (the framework's own floor); then the saturation throughput of both.
    Batch: the batch_score flow's scoring step (typed frame, predict, decisions) vs ``inplace_predict`` on the
    same ready matrix.
    """
    from cli import stack

    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        settings, contract, version, contract_path = _prepared_stack(tmp, customers)
        try:
            bodies = _recent_applications(settings, contract)
            out = _in_process(settings, contract, version, bodies)
            out += _batch(settings, contract, version)
            out += _over_http(settings, contract_path, bodies, seconds, rate)
        finally:
            stack.down(settings)
    return out


def _in_process(settings: Any, contract: Any, version: str, bodies: list[dict[str, Any]]) -> list[Measurement]:
    """p50 and p99 of one application through the scoring hot path vs ``inplace_predict`` of the ready row."""
    import numpy as np

    from feature_repo.store import open_store
    from tasks.score import scoring
    from tasks.score.feature_source import FeatureSource
    from tasks.score.loading import load_version

    model = load_version(settings.mlflow_tracking_uri, contract.name, version)
    source = FeatureSource(open_store(settings, contract), contract)
    rows = source.matrix(bodies, model.columns)
    for body in bodies[:300]:  # warm-up: first calls are paid by neither side
        scoring.score(model, source, [body])
        model.booster.inplace_predict(rows[:1], iteration_range=model.iteration_range)
    gc.collect()
    gc.freeze()  # as the service does once loaded (serving/app.py)
    n = 5_000
    ours, raw = [], []
    for i in range(n):
        body, row = bodies[i % len(bodies)], rows[i % len(bodies)][None, :]
        started = time.perf_counter()
        scoring.score(model, source, [body])
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.booster.inplace_predict(row, iteration_range=model.iteration_range)
        raw.append(time.perf_counter() - started)
    trees = model.iteration_range[1] or model.booster.num_boosted_rounds()
    return [
        Measurement(
            "serving",
            f"in-process p{q}, one application (lookup + predict + reasons)",
            "ms",
            float(np.percentile(ours, q)) * 1000,
            float(np.percentile(raw, q)) * 1000,
            False,
            f"{n:,} requests over {len(bodies):,} customers, {len(model.columns)} features, {trees} "
            "trees; baseline: inplace_predict of the ready row (no lookup, no reasons)",
        )
        for q in (50, 99)
    ]


def _batch(settings: Any, contract: Any, version: str) -> list[Measurement]:
    """The batch_score flow's scoring step on this year's applications vs ``inplace_predict`` on the same matrix."""
    from closedloop.lake import Lake
    from feature_repo.definitions import model_service_name
    from feature_repo.store import open_store
    from tasks.score import scoring
    from tasks.score.loading import load_version
    from tasks.shared.features import EVENT_TIMESTAMP

    store = open_store(settings, contract)
    apps = Lake.of(settings.lake_uri, contract.name).read_offline(contract.prediction)
    spec = contract.tables[contract.prediction]
    request = [c.name for c in contract.columns_of(contract.prediction) if c.is_model_input]
    entities = apps[[contract.entity.join_key, spec.event_time, *request]].rename(
        columns={spec.event_time: EVENT_TIMESTAMP}
    )
    frame = store.get_historical_features(
        entity_df=entities, features=store.get_feature_service(model_service_name(contract))
    ).to_df()
    batch_model = load_version(settings.mlflow_tracking_uri, contract.name, version, threads=0)
    matrix = scoring.frame_matrix(frame, contract, batch_model.columns)
    booster = batch_model.booster
    scored_only, with_matrix, batch_raw = [], [], []
    for _ in range(REPEATS * 3):  # tens of milliseconds each: more repeats for a stable median
        started = time.perf_counter()
        scoring.decisions(batch_model, batch_model.predict_batch(matrix))
        scored_only.append(time.perf_counter() - started)
        started = time.perf_counter()
        built = scoring.frame_matrix(frame, contract, batch_model.columns)
        scoring.decisions(batch_model, batch_model.predict_batch(built))
        with_matrix.append(time.perf_counter() - started)
        started = time.perf_counter()
        booster.inplace_predict(matrix, iteration_range=batch_model.iteration_range)
        batch_raw.append(time.perf_counter() - started)
    raw_rate = len(frame) / statistics.median(batch_raw)
    return [
        Measurement(
            "serving",
            f"batch scoring throughput on the same matrix, {len(frame):,} applications",
            "rows/s",
            len(frame) / statistics.median(scored_only),
            raw_rate,
            True,
            "batch_score's scoring step (predict + decisions) vs inplace_predict on the same ready matrix; "
            f"median of {REPEATS * 3}",
        ),
        Measurement(
            "serving",
            f"batch scoring throughput from the retrieval frame, {len(frame):,} applications",
            "rows/s",
            len(frame) / statistics.median(with_matrix),
            raw_rate,
            True,
            "the same step plus building the matrix from Feast's frame (categories to codes); baseline: "
            "inplace_predict on the ready matrix",
        ),
    ]


def _wait_ready(base: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the scoring service did not become ready in {timeout_s:.0f} s")


def _over_http(
    settings: Any, contract_path: str, bodies: list[dict[str, Any]], seconds: float, rate: float
) -> list[Measurement]:
    """A real service in its own process: latency under open-loop load, malformed requests, saturation."""
    import multiprocessing

    token = secrets.token_urlsafe(16)
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(settings, contract_path, port, token), daemon=True
    )
    server.start()
    try:
        _wait_ready(f"http://127.0.0.1:{port}")
        scoring_requests = requests_to("/v1/score", bodies, token)
        health_requests = requests_to("/healthz", None, token)
        out = _latency_under_load(port, scoring_requests, health_requests, rate, seconds)
        out.append(_malformed_answered(port, scoring_requests, bodies, token))
        out.append(_saturation(port, scoring_requests, health_requests))
    finally:
        server.terminate()  # by its pid, through the Process handle
        server.join(timeout=15)
    return out


def _latency_under_load(
    port: int, scoring_requests: list[bytes], health_requests: list[bytes], rate: float, seconds: float
) -> list[Measurement]:
    """p50 and p99 of POST /v1/score at an open-loop ``rate``, against GET /healthz under the same load."""
    # the load generator runs in its own fresh process: a client stalled by this process's heap
    # (frames, models, a garbage collector walking them) would be charged to the server
    client_process(load_run, port, scoring_requests, rate, 5)  # warm-up
    floor = client_process(load_run, port, health_requests, rate, seconds)
    scored = client_process(load_run, port, scoring_requests, rate, seconds)
    return [
        Measurement(
            "serving",
            f"HTTP {stat[:3]} at {rate:.0f} req/s for {seconds:.0f} s, POST /v1/score",
            "ms",
            scored[stat],
            floor[stat],
            False,
            f"{scored['errors']:.0f} errors in {scored['requests']:.0f} requests "
            f"({scored['achieved_rps']:.0f} req/s achieved); baseline: GET /healthz, same load, "
            "same server; open loop, latency from the scheduled send time",
        )
        for stat in ("p50_ms", "p99_ms")
    ]


def _malformed_answered(
    port: int, scoring_requests: list[bytes], bodies: list[dict[str, Any]], token: str
) -> Measurement:
    """Of 10,000 requests with 1% malformed, how many malformed ones got a 4xx with a reason."""
    sturdy = client_process(reliability, port, scoring_requests, malformed(bodies, token))
    return Measurement(
        "serving",
        "malformed requests answered 4xx with a reason, 10,000 requests with 1% malformed",
        "requests",
        sturdy["malformed_4xx_with_reason"],
        sturdy["malformed"],
        True,
        f"{sturdy['server_errors']:.0f} 5xx; {sturdy['ok']:.0f} of {10_000 - sturdy['malformed']:.0f} "
        f"good requests answered 200 ({sturdy['other']:.0f} otherwise); baseline: malformed sent; "
        "kinds: missing field, text for a number, out of range, unknown field, unknown entity, "
        "not JSON, body over the limit",
    )


def _saturation(port: int, scoring_requests: list[bytes], health_requests: list[bytes]) -> Measurement:
    """Throughput of POST /v1/score with 16 concurrent clients, against GET /healthz."""
    top = client_process(saturation, port, scoring_requests, 15)
    top_floor = client_process(saturation, port, health_requests, 15)
    return Measurement(
        "serving",
        "HTTP saturation throughput, POST /v1/score, 16 concurrent clients",
        "req/s",
        top["rps"],
        top_floor["rps"],
        True,
        f"{top['errors']:.0f} errors; baseline: GET /healthz; client and server share the 2 cores",
    )
