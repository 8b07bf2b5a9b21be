"""The online scoring service: one application in, probability, decision, reasons and model version out.

Features come from the Feast online store through the model's FeatureService (the code path training used:
stored views plus the on-demand ratios computed from the request's own fields); the model is the registry's
``champion``, reloaded when the alias moves without failing requests in flight (a request keeps the model it
started with). Every answer is authenticated with a bearer token (constant-time comparison), counted in
``/metrics`` and, when an inference log is attached, recorded there.
"""

import contextlib
import gc
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from closedloop import seal
from closedloop.contract import Contract
from closedloop.settings import Settings
from feature_repo.store import open_store
from serving.champion import Champion, Rollout
from serving.requests import JSONRoute, batch_model, request_model, validation_error
from tasks.score import scoring
from tasks.score.feature_source import FeatureSource
from tasks.score.scoring import ScoringModel

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024


class Reason(BaseModel):
    feature: str
    contribution: float


class Score(BaseModel):
    request_id: str
    entity_id: int | str
    probability: float
    decision: Literal["approve", "refuse"]
    model_version: str
    reasons: list[Reason]


ENDPOINTS = frozenset({"/v1/score", "/v1/score/batch", "/healthz", "/readyz", "/metrics"})


class LimitsAndMetrics:
    """Pure ASGI middleware: refuses bodies over MAX_BODY_BYTES (declared or streamed), counts and times requests.

    (Starlette's ``@app.middleware("http")`` wraps every request in extra tasks and streams: a third of the cost
    of a scoring request on this machine.) The body is read here, under the limit, before the app sees it: a
    chunked body carries no Content-Length, and an error raised while FastAPI reads the body becomes its 400.
    Paths outside the API are counted as ``other``: a scanner cannot grow the metrics without bound.
    """

    def __init__(self, app: Any, metrics: "Metrics") -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = {"code": 500}
        declared = [v for name, v in scope["headers"] if name == b"content-length"]
        first = None if any(v.isdigit() and int(v) > MAX_BODY_BYTES for v in declared) else await _body(receive)
        if first is None:
            await self._too_large(send, status)
            self._count(endpoint, status["code"], started)
            return
        pending = [first]

        async def replay() -> Any:
            return pending.pop() if pending else await receive()

        async def tracking_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, replay, tracking_send)
        finally:
            self._count(endpoint, status["code"], started)

    async def _too_large(self, send: Any, status: dict[str, int]) -> None:
        self.metrics.errors.labels("too_large").inc()
        body = json.dumps({"detail": f"request body over {MAX_BODY_BYTES} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        status["code"] = 413

    def _count(self, endpoint: str, code: int, started: float) -> None:
        self.metrics.requests.labels(endpoint, str(code)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


async def _body(receive: Any) -> dict[str, Any] | None:
    """The request's body as one message, or None past MAX_BODY_BYTES (a disconnect is passed on as it came)."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return dict(message)
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


class Metrics:
    """Prometheus series of one app (its own registry: two apps in one process do not mix)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "closedloop_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "closedloop_request_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.errors = Counter("closedloop_errors", "Errors by kind", ["kind"], registry=self.registry)
        self.scored = Counter(
            "closedloop_scored", "Applications scored by decision", ["decision"], registry=self.registry
        )
        self.model = Gauge(
            "closedloop_model_info", "Model version serving (value 1)", ["version"], registry=self.registry
        )


@dataclass
class _Service:
    """What the routes share: the champion and its rollout, the feature source, the metrics and the inference log."""

    settings: Settings
    contract: Contract
    champion: Champion
    metrics: Metrics
    refresh_seconds: float
    inference_log: Any | None
    source: FeatureSource | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def open_feature_store(self) -> None:
        self.source = FeatureSource(open_store(self.settings, self.contract), self.contract)

    def _watch(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            if self.champion.refresh() and self.champion.current:
                self.metrics.model.clear()
                self.metrics.model.labels(self.champion.current.version).set(1)

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """Open the feature store and load the champion, then watch the registry until the app stops."""
        try:
            self.open_feature_store()
        except Exception as exc:
            logger.warning("feature store not ready: %s", exc)
        if self.champion.refresh() and self.champion.current:
            self.metrics.model.labels(self.champion.current.version).set(1)
        # everything loaded so far lives as long as the process: keep it out of the garbage collector's
        # full passes, which otherwise walk the whole heap (MLflow, Feast, pandas) in the middle of a request
        gc.collect()
        gc.freeze()
        thread = threading.Thread(target=self._watch, name="champion-watcher", daemon=True)
        thread.start()
        yield
        self._stop.set()
        thread.join(timeout=5)

    def group_of(self, name: str, value: Any) -> str:
        return scoring.policy_group(self.contract, name, value)

    def candidate_scores(
        self, rollout: Rollout, source: FeatureSource, items: list[dict[str, Any]]
    ) -> list[scoring.Scored] | None:
        """The candidate's answers, or None when it failed (counted against its budget; the champion answers)."""
        started = time.perf_counter()
        scored: list[scoring.Scored] | None = None
        try:
            scored = scoring.score(rollout.model, source, items, group_of=self.group_of)
        except (scoring.UnknownEntities, scoring.ScoringInputError):
            raise  # the request's fault, not the candidate's: the champion path answers it the same way
        except Exception as exc:
            logger.warning("candidate v%s failed: %s", rollout.model.version, exc)
            self.metrics.errors.labels(f"{rollout.strategy}_failed").inc()
            breach = rollout.observe(None, len(items))
        else:
            breach = rollout.observe((time.perf_counter() - started) / len(items), len(items))
        if breach:
            self.metrics.errors.labels(f"{rollout.strategy}_rolled_back").inc()
            self.champion.end_rollout(rollout.model.version, breach, rollout.summary())
        return scored

    def score_rows(self, rows: list[BaseModel]) -> list[Score]:
        """Score the rows (champion, canary or shadow), record each answer in the inference log, return them."""
        model = self.champion.current
        source = self.source
        if model is None or source is None:
            self.metrics.errors.labels("not_ready").inc()
            raise HTTPException(503, f"not ready: {self.champion.last_error or 'feature store not loaded'}")
        started = time.perf_counter()
        payload = [row.model_dump() for row in rows]
        try:
            answers, shadow = self._answer(model, source, self.champion.rollout, payload)
        except scoring.UnknownEntities as exc:
            self.metrics.errors.labels("unknown_entity").inc()
            raise HTTPException(404, str(exc)) from exc
        except scoring.ScoringInputError as exc:
            self.metrics.errors.labels("bad_input").inc()
            raise HTTPException(422, str(exc)) from exc
        out = []
        records = []
        seconds = (time.perf_counter() - started) / len(payload)
        for item, version, variant in answers:
            self.metrics.scored.labels(item.decision).inc()
            response = _score(item, version, uuid.uuid4().hex)
            out.append(response)
            records.append((response, item.features, variant))
        # the shadow's answers are logged under the same request ids, never returned
        records += [
            (_score(item, version, response.request_id), item.features, "shadow")
            for response, (item, version) in zip(out, shadow, strict=False)
        ]
        self._log(records, seconds)
        return out

    def _answer(
        self, model: ScoringModel, source: FeatureSource, rollout: Rollout | None, payload: list[dict[str, Any]]
    ) -> tuple[list[tuple[scoring.Scored, str, str]], list[tuple[scoring.Scored, str]]]:
        """Each row's (answer, version, variant): a canary's share first, the champion the rest; a shadow's answers."""
        answers: list[tuple[scoring.Scored, str, str] | None] = [None] * len(payload)
        shadow: list[tuple[scoring.Scored, str]] = []
        if rollout is not None and rollout.active and rollout.strategy == "canary":
            picked = [i for i, item in enumerate(payload) if rollout.routes(item[self.contract.entity.join_key])]
            if picked:
                by_candidate = self.candidate_scores(rollout, source, [payload[i] for i in picked])
                for i, scored in zip(picked, by_candidate or [], strict=False):
                    answers[i] = (scored, rollout.model.version, "canary")
        rest = [i for i, answer in enumerate(answers) if answer is None]
        if rest:
            for i, scored in zip(
                rest, scoring.score(model, source, [payload[i] for i in rest], group_of=self.group_of), strict=True
            ):
                answers[i] = (scored, model.version, "champion")
        if rollout is not None and rollout.active and rollout.strategy == "shadow":
            with contextlib.suppress(scoring.UnknownEntities, scoring.ScoringInputError):
                shadow = [(s, rollout.model.version) for s in self.candidate_scores(rollout, source, payload) or []]
        answered = []
        for answer in answers:
            assert answer is not None  # noqa: S101 - every row was answered above
            answered.append(answer)
        return answered, shadow

    def _log(self, records: list[tuple[Score, dict[str, Any], str]], seconds: float) -> None:
        """Append the answers to the inference log (when one is attached): no score leaves without its record."""
        if self.inference_log is None:
            return
        from closedloop.inference_log import InferenceLogFull

        try:
            for response, features, variant in records:
                self.inference_log.append(_record(self.contract, response, features, seconds, variant))
        except InferenceLogFull as exc:
            self.metrics.errors.labels("inference_log_full").inc()
            raise HTTPException(503, f"not scoring: {exc}") from exc

    def readiness(self) -> JSONResponse:
        """200 with the model version once the feature store and a champion are loaded, else 503 with the reasons."""
        problems = []
        if self.source is None:
            try:
                self.open_feature_store()
            except Exception as exc:
                problems.append(f"feature store: {exc}")
        if self.champion.current is None:
            self.champion.refresh()
        model = self.champion.current
        if model is None:
            problems.append(f"model: {self.champion.last_error or 'no champion'}")
        if problems or model is None:
            return JSONResponse({"ready": False, "reason": "; ".join(problems)}, status_code=503)
        answer: dict[str, Any] = {"ready": True, "model_version": model.version, "dataset": self.contract.name}
        if self.champion.degraded:  # serving, but not what the registry says: the truth, for whoever looks
            answer["degraded"] = self.champion.degraded
        return JSONResponse(answer)


def _authoriser(token: str, metrics: Metrics) -> Callable[..., Awaitable[None]]:
    """The dependency that refuses a request without ``token`` as its bearer token (constant-time comparison)."""
    bearer = HTTPBearer(auto_error=False)

    async def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            metrics.errors.labels("unauthorised").inc()
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return authorised


def create_app(
    settings: Settings,
    contract: Contract,
    token: str,
    refresh_seconds: float = 10.0,
    inference_log: Any | None = None,
) -> FastAPI:
    """The scoring app for ``contract`` on ``settings``' stack; ``token`` is the bearer token it requires."""
    if not token:
        raise ValueError("the scoring service needs a bearer token (CLOSEDLOOP_SERVING_TOKEN): refusing to start open")
    champion = Champion(settings.mlflow_tracking_uri, contract.name, seal.key_files(settings))
    metrics = Metrics()
    service = _Service(settings, contract, champion, metrics, refresh_seconds, inference_log)
    application = request_model(contract)
    authorised = _authoriser(token, metrics)

    # FastAPI's own OpenTelemetry spans and metrics are off: /metrics is this service's telemetry, and spans on
    # the global providers (which MLflow's tracing also installs) cost more than a whole scoring request
    app = FastAPI(
        title=f"closedloop scoring: {contract.name}",
        version="1",
        lifespan=service.lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    app.add_middleware(LimitsAndMetrics, metrics=metrics)
    # a malformed request gets a 4xx naming the problem: JSON bodies only, parse errors and field errors as 422
    app.router.route_class = JSONRoute
    app.add_exception_handler(RequestValidationError, validation_error)

    # answers are serialised once by pydantic-core and returned as they are (FastAPI would validate the returned
    # model against response_model again); response_model still documents them in the OpenAPI schema
    @app.post("/v1/score", response_model=Score, dependencies=[Depends(authorised)])
    async def score(body: application) -> Response:  # type: ignore[valid-type]
        return Response(service.score_rows([body])[0].model_dump_json(), media_type="application/json")

    batch = batch_model(application)

    @app.post("/v1/score/batch", response_model=list[Score], dependencies=[Depends(authorised)])
    async def score_batch(body: batch) -> Response:  # type: ignore[valid-type]
        rows = list(body.applications)  # type: ignore[attr-defined]
        answers = ",".join(answer.model_dump_json() for answer in service.score_rows(rows))
        return Response(f"[{answers}]", media_type="application/json")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        return service.readiness()

    @app.get("/metrics")
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.champion = champion
    return app


def _score(item: scoring.Scored, version: str, request_id: str) -> Score:
    return Score(
        request_id=request_id,
        entity_id=item.entity_id,
        probability=item.probability,
        decision=item.decision,  # type: ignore[arg-type]
        model_version=version,
        reasons=[Reason(**r) for r in item.reasons],
    )


def _record(contract: Contract, score: Score, features: dict[str, Any], seconds: float, variant: str) -> Any:
    from closedloop.inference_log import InferenceRecord

    return InferenceRecord(
        request_id=score.request_id,
        scored_at=datetime.now(UTC),
        dataset=contract.name,
        model_version=score.model_version,
        entity_id=score.entity_id,
        features=features,
        score=score.probability,
        decision=score.decision,
        latency_ms=seconds * 1000,
        variant=variant,
        reasons=[r.feature for r in score.reasons],
    )
