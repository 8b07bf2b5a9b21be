"""The online scoring service: one application in, probability, decision, reasons and model version out.

Features come from the Feast online store through the model's FeatureService (the code path training used:
stored views plus the on-demand ratios computed from the request's own fields); the model is the registry's
``champion``, reloaded when the alias moves without failing requests in flight (a request keeps the model it
started with). Every answer is authenticated with a bearer token (constant-time comparison), counted in
``/metrics`` and, when an inference log is attached, recorded there.
"""

import contextlib
import gc
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model

from closedloop.contract import ColumnType, Contract
from closedloop.registry import CHAMPION
from closedloop.settings import Settings
from feature_repo.store import open_store
from tasks.score import scoring
from tasks.score.loading import load_version
from tasks.score.online import FeatureSource
from tasks.score.scoring import ScoringModel

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_BATCH = 1000


class NoChampion(RuntimeError):
    """No model carries the champion alias yet: the service is not ready."""


@dataclass
class Rollout:
    """A candidate version in shadow or canary, with the guard that ends it when it breaks its budgets."""

    model: ScoringModel
    strategy: str  # "shadow" or "canary"
    share: float  # canary: the share of entities it answers for
    max_error_rate: float
    max_p99_ms: float
    min_requests: int
    requests: int = 0
    errors: int = 0
    tripped: str | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2_000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, model: ScoringModel, plan: dict[str, str]) -> "Rollout":
        return cls(
            model=model,
            strategy=plan["strategy"],
            share=float(plan.get("share", 0.0)),
            max_error_rate=float(plan.get("max_error_rate", 0.01)),
            max_p99_ms=float(plan.get("max_p99_ms", 50.0)),
            min_requests=int(plan.get("min_requests", 100)),
        )

    @property
    def active(self) -> bool:
        return self.tripped is None

    def routes(self, key: Any) -> bool:
        """Canary: whether this entity is in the candidate's share (sticky: a hash of version and key)."""
        if self.strategy != "canary" or not self.active:
            return False
        draw = int.from_bytes(hashlib.sha256(f"canary:{self.model.version}:{key}".encode()).digest()[:8], "big")
        return draw / 2**64 < self.share

    def observe(self, seconds: float | None, count: int = 1) -> str | None:
        """Count ``count`` requests (``seconds`` each, or None: failed); the breach reason when this trips it."""
        with self._lock:
            self.requests += count
            if seconds is None:
                self.errors += count
            else:
                self.latencies.extend([seconds * 1000] * count)
            if self.tripped is not None or self.requests < self.min_requests:
                return None
            error_rate = self.errors / self.requests
            if error_rate > self.max_error_rate:
                self.tripped = (
                    f"error rate {error_rate:.2%} over budget {self.max_error_rate:.2%} "
                    f"({self.errors} of {self.requests} requests)"
                )
            elif self.latencies and self.requests % 10 == 0:
                p99 = float(np.percentile(np.fromiter(self.latencies, dtype="float64"), 99))
                if p99 > self.max_p99_ms:
                    self.tripped = f"p99 latency {p99:.2f} ms over budget {self.max_p99_ms:g} ms"
            return self.tripped

    def summary(self) -> dict[str, Any]:
        with self._lock:
            values = np.fromiter(self.latencies, dtype="float64")
            return {
                "version": self.model.version,
                "strategy": self.strategy,
                "requests": self.requests,
                "errors": self.errors,
                "p99_ms": float(np.percentile(values, 99)) if len(values) else None,
                "tripped": self.tripped,
            }


class Champion:
    """The champion and a rollout's candidate, swapped atomically when aliases move (never half-loaded)."""

    def __init__(self, tracking_uri: str, dataset: str) -> None:
        self.tracking_uri, self.dataset = tracking_uri, dataset
        self._current: ScoringModel | None = None
        self.rollout: Rollout | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def current(self) -> ScoringModel | None:
        return self._current

    def refresh(self) -> bool:
        """Load the version the alias points at if it is not the one serving; True when the model changed."""
        from tasks.promote.promotion import aliases

        with self._lock:
            try:  # one registry call per refresh: the champion and the candidate come with the model's aliases
                known = aliases(self.tracking_uri, self.dataset)
            except Exception as exc:
                self.last_error = f"model registry: {exc}"
                logger.warning("registry lookup failed, models unchanged: %s", exc)
                return False
            self._refresh_rollout(known)
            try:
                version = known.get(CHAMPION)
                if version is None:
                    raise NoChampion(f"no version of {self.dataset!r} carries the champion alias")
                if self._current is not None and self._current.version == version:
                    return False
                loaded = load_version(self.tracking_uri, self.dataset, version)
            except Exception as exc:  # keep serving the model we have; readiness says why
                self.last_error = str(exc)
                logger.warning("champion refresh failed: %s", exc)
                return False
            previous = self._current.version if self._current else None
            self._current = loaded
            self.last_error = None
            logger.info("champion %s v%s now serving (was %s)", self.dataset, version, previous)
            return True

    def _refresh_rollout(self, known: dict[str, str]) -> None:
        from tasks.promote.promotion import rollout_state

        try:
            state = rollout_state(self.tracking_uri, self.dataset, known)
        except Exception as exc:
            logger.warning("rollout lookup failed, candidate unchanged: %s", exc)
            return
        if state is None or state.get("verdict") != "running" or state.get("strategy") not in ("shadow", "canary"):
            if self.rollout is not None:
                logger.info("rollout of v%s over", self.rollout.model.version)
            self.rollout = None
            return
        if self.rollout is not None and self.rollout.model.version == state["version"]:
            return  # the same rollout (a tripped one stays tripped until the alias goes)
        try:
            self.rollout = Rollout.of(load_version(self.tracking_uri, self.dataset, state["version"]), state)
        except Exception as exc:  # a candidate that cannot load is not served; its rollout is ended
            logger.warning("candidate v%s cannot be loaded: %s", state["version"], exc)
            self.end_rollout(state["version"], f"candidate cannot be loaded: {exc}", {})
            return
        logger.info("v%s in %s rollout (share %s)", state["version"], self.rollout.strategy, self.rollout.share)

    def end_rollout(self, version: str, reason: str, stats: dict[str, Any]) -> None:
        """Roll the candidate back in the registry, off the request path (the local guard already stopped it)."""
        from tasks.promote.promotion import end_rollout

        by = f"scoring service {socket.gethostname()}:{os.getpid()}"

        def run() -> None:
            try:
                end_rollout(
                    self.tracking_uri, self.dataset, version, "rolled back", {"reason": reason, "by": by, **stats}
                )
                logger.warning("rollout of v%s rolled back: %s", version, reason)
            except Exception as exc:  # the local guard holds; the next refresh tries again
                logger.error("could not record the rollback of v%s: %s", version, exc)

        threading.Thread(target=run, name="rollout-rollback", daemon=True).start()


def request_model(contract: Contract) -> type[BaseModel]:
    """The request body: the entity key and the prediction table's model inputs, typed and bounded by the contract."""
    fields: dict[str, Any] = {
        contract.entity.join_key: (int if contract.key_type == "int" else str, Field(description="entity key")),
    }
    for column in contract.columns_of(contract.prediction):
        if not column.is_model_input:
            continue
        kind: Any
        if column.type is ColumnType.CATEGORY:
            kind = Literal[tuple(column.categories or [])]
        elif column.type is ColumnType.INT:
            kind = int
        elif column.type is ColumnType.BOOL:
            kind = bool
        else:
            kind = float
        constraints: dict[str, Any] = {"description": column.description or column.name}
        if column.min is not None:
            constraints["ge"] = column.min
        if column.max is not None:
            constraints["le"] = column.max
        if column.nullable:
            fields[column.name] = (kind | None, Field(default=None, **constraints))
        else:
            fields[column.name] = (kind, Field(**constraints))
    for column in contract.sensitive:
        if column.group_thresholds:  # only read when the champion's decision policy needs it
            fields[column.name] = (
                float | str | None,
                Field(
                    default=None,
                    description=f"{column.name}: read only by a group-threshold decision policy, which takes the "
                    "stored value when the request leaves it out",
                ),
            )
    return create_model(
        f"{contract.name.title().replace('_', '')}Application",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


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


class BodyTooLarge(Exception):
    pass


ENDPOINTS = frozenset({"/v1/score", "/v1/score/batch", "/healthz", "/readyz", "/metrics"})


class LimitsAndMetrics:
    """Pure ASGI middleware: refuses bodies over MAX_BODY_BYTES (declared or streamed), counts and times requests.

    (Starlette's ``@app.middleware("http")`` wraps every request in extra tasks and streams: a third of the cost
    of a scoring request on this machine.) Paths outside the API are counted as ``other``: a scanner cannot
    grow the metrics without bound.
    """

    def __init__(self, app: Any, metrics: "Metrics") -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = {"code": 500, "started": False}
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await self._too_large(send, status)
                self._count(endpoint, status["code"], started)
                return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if status["started"]:
                raise
            await self._too_large(send, status)
        finally:
            self._count(endpoint, status["code"], started)

    async def _too_large(self, send: Any, status: dict[str, Any]) -> None:
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
    champion = Champion(settings.mlflow_tracking_uri, contract.name)
    metrics = Metrics()
    state: dict[str, Any] = {"source": None}
    stop = threading.Event()
    application = request_model(contract)
    bearer = HTTPBearer(auto_error=False)

    def open_feature_store() -> None:
        state["source"] = FeatureSource(open_store(settings, contract), contract)

    def watcher() -> None:
        while not stop.wait(refresh_seconds):
            if champion.refresh() and champion.current:
                metrics.model.clear()
                metrics.model.labels(champion.current.version).set(1)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            open_feature_store()
        except Exception as exc:
            logger.warning("feature store not ready: %s", exc)
        if champion.refresh() and champion.current:
            metrics.model.labels(champion.current.version).set(1)
        # everything loaded so far lives as long as the process: keep it out of the garbage collector's
        # full passes, which otherwise walk the whole heap (MLflow, Feast, pandas) in the middle of a request
        gc.collect()
        gc.freeze()
        thread = threading.Thread(target=watcher, name="champion-watcher", daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join(timeout=5)

    # FastAPI's own OpenTelemetry spans and metrics are off: /metrics is this service's telemetry, and spans on
    # the global providers (which MLflow's tracing also installs) cost more than a whole scoring request
    app = FastAPI(
        title=f"closedloop scoring: {contract.name}",
        version="1",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    app.add_middleware(LimitsAndMetrics, metrics=metrics)

    async def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            metrics.errors.labels("unauthorised").inc()
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def group_of(name: str, value: Any) -> str:
        return scoring.policy_group(contract, name, value)

    def candidate_scores(rollout: Rollout, items: list[dict[str, Any]]) -> list[scoring.Scored] | None:
        """The candidate's answers, or None when it failed (counted against its budget; the champion answers)."""
        started = time.perf_counter()
        scored: list[scoring.Scored] | None = None
        try:
            scored = scoring.score(rollout.model, state["source"], items, group_of=group_of)
        except (scoring.UnknownEntities, scoring.ScoringInputError):
            raise  # the request's fault, not the candidate's: the champion path answers it the same way
        except Exception as exc:
            logger.warning("candidate v%s failed: %s", rollout.model.version, exc)
            metrics.errors.labels(f"{rollout.strategy}_failed").inc()
            breach = rollout.observe(None, len(items))
        else:
            breach = rollout.observe((time.perf_counter() - started) / len(items), len(items))
        if breach:
            metrics.errors.labels(f"{rollout.strategy}_rolled_back").inc()
            champion.end_rollout(rollout.model.version, breach, rollout.summary())
        return scored

    def score_rows(rows: list[BaseModel]) -> list[Score]:
        model = champion.current
        source = state["source"]
        if model is None or source is None:
            metrics.errors.labels("not_ready").inc()
            raise HTTPException(503, f"not ready: {champion.last_error or 'feature store not loaded'}")
        started = time.perf_counter()
        payload = [row.model_dump() for row in rows]
        rollout = champion.rollout
        answers: list[tuple[scoring.Scored, str, str] | None] = [None] * len(payload)  # (scored, version, variant)
        shadow: list[tuple[scoring.Scored, str]] = []
        try:
            if rollout is not None and rollout.active and rollout.strategy == "canary":
                picked = [i for i, item in enumerate(payload) if rollout.routes(item[contract.entity.join_key])]
                if picked:
                    by_candidate = candidate_scores(rollout, [payload[i] for i in picked])
                    for i, scored in zip(picked, by_candidate or [], strict=False):
                        answers[i] = (scored, rollout.model.version, "canary")
            rest = [i for i, answer in enumerate(answers) if answer is None]
            if rest:
                for i, scored in zip(
                    rest, scoring.score(model, source, [payload[i] for i in rest], group_of=group_of), strict=True
                ):
                    answers[i] = (scored, model.version, "champion")
            if rollout is not None and rollout.active and rollout.strategy == "shadow":
                with contextlib.suppress(scoring.UnknownEntities, scoring.ScoringInputError):
                    shadow = [(s, rollout.model.version) for s in candidate_scores(rollout, payload) or []]
        except scoring.UnknownEntities as exc:
            metrics.errors.labels("unknown_entity").inc()
            raise HTTPException(404, str(exc)) from exc
        except scoring.ScoringInputError as exc:
            metrics.errors.labels("bad_input").inc()
            raise HTTPException(422, str(exc)) from exc
        out = []
        records = []
        seconds = (time.perf_counter() - started) / len(payload)
        for answered in answers:
            assert answered is not None  # noqa: S101 - every row was answered above
            item, version, variant = answered
            metrics.scored.labels(item.decision).inc()
            response = _score(item, version, uuid.uuid4().hex)
            out.append(response)
            records.append((response, item.features, variant))
        # the shadow's answers are logged under the same request ids, never returned
        records += [
            (_score(item, version, response.request_id), item.features, "shadow")
            for response, (item, version) in zip(out, shadow, strict=False)
        ]
        if inference_log is not None:
            from closedloop.inference_log import InferenceLogFull

            try:
                for response, features, variant in records:
                    inference_log.append(_record(contract, response, features, seconds, variant))
            except InferenceLogFull as exc:  # no score leaves without its record
                metrics.errors.labels("inference_log_full").inc()
                raise HTTPException(503, f"not scoring: {exc}") from exc
        return out

    # answers are serialised once by pydantic-core and returned as they are (FastAPI would validate the returned
    # model against response_model again); response_model still documents them in the OpenAPI schema
    @app.post("/v1/score", response_model=Score, dependencies=[Depends(authorised)])
    async def score(body: application) -> Response:  # type: ignore[valid-type]
        return Response(score_rows([body])[0].model_dump_json(), media_type="application/json")

    class Batch(BaseModel):
        applications: list[application] = Field(min_length=1, max_length=MAX_BATCH)  # type: ignore[valid-type]

    @app.post("/v1/score/batch", response_model=list[Score], dependencies=[Depends(authorised)])
    async def score_batch(body: Batch) -> Response:
        answers = ",".join(answer.model_dump_json() for answer in score_rows(list(body.applications)))
        return Response(f"[{answers}]", media_type="application/json")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        problems = []
        if state["source"] is None:
            try:
                open_feature_store()
            except Exception as exc:
                problems.append(f"feature store: {exc}")
        if champion.current is None:
            champion.refresh()
        model = champion.current
        if model is None:
            problems.append(f"model: {champion.last_error or 'no champion'}")
        if problems or model is None:
            return JSONResponse({"ready": False, "reason": "; ".join(problems)}, status_code=503)
        return JSONResponse({"ready": True, "model_version": model.version, "dataset": contract.name})

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
