"""Benchmark harness: each named benchmark measures closedloop and a raw baseline in the same run.

A benchmark returns one or more :class:`Measurement` rows: the project's figure, the baseline's, and
their ratio, so results compare across machines. Each side runs in a fresh spawned process so that
peak memory (``ru_maxrss``) is its own and not the harness's. Results go to JSON and a markdown table.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import multiprocessing
import platform
import resource
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROWS_PER_CUSTOMER = 8.7  # profile + 6 statements + application + ~0.7 matured outcomes
WINDOW_DAYS = 210  # the concept-drift study's "fresh data": matured labels since the downturn began
REPEATS = 3  # timed runs per side where one run takes seconds


@dataclass
class Measurement:
    benchmark: str
    metric: str
    unit: str
    project: float
    baseline: float
    higher_is_better: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        """Project / baseline."""
        return self.project / self.baseline if self.baseline else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


@dataclass
class BenchReport:
    started_at: str
    machine: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "machine": self.machine,
            "measurements": [m.to_dict() for m in self.measurements],
        }

    def markdown(self) -> str:
        lines = [
            "| benchmark | metric | closedloop | raw baseline | ratio (closedloop / baseline) | note |",
            "|---|---|---|---|---|---|",
        ]
        for m in self.measurements:
            lines.append(
                f"| {m.benchmark} | {m.metric} ({m.unit}) | {m.project:,.3g} | {m.baseline:,.3g} | "
                f"{m.ratio:.2f} | {m.note} |"
            )
        return "\n".join(lines) + "\n"


def _in_child(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """Run ``fn`` in a fresh interpreter and return its figures plus its peak memory growth."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measured, (fn, *args))


def _in_parent_process(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """``_in_child`` for work that starts processes of its own (a Dask LocalCluster): a non-daemonic child."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_send_measured, args=(send, fn, *args), daemon=False)
    child.start()
    figures: dict[str, float] = receive.recv()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{fn.__name__} failed in its process (exit code {child.exitcode})")
    return figures


def _send_measured(send: Any, fn: Callable[..., dict[str, float]], *args: Any) -> None:
    send.send(_measured(fn, *args))
    send.close()


def _measured(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    import psutil

    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    figures = fn(*args)
    figures.setdefault("seconds", time.perf_counter() - started)  # fn may time itself, imports excluded
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    figures["peak_mb"] = max(peak - before, 0) / 2**20
    return figures


def _generate(customers: int, folder: str) -> dict[str, float]:
    from samples.synthetic import SyntheticConfig, write_synthetic

    started = time.perf_counter()
    summary = write_synthetic(SyntheticConfig(customers=customers, seed=11), folder)
    return {"rows": float(summary.total_rows), "seconds": time.perf_counter() - started}


def _raw_write(rows: int, folder: str) -> dict[str, float]:
    """The floor: the same number of rows of random columns, made in one go and written to parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    rng = np.random.default_rng(11)
    columns = {f"f{i}": rng.random(rows) for i in range(7)}
    columns["ts"] = pa.array(rng.integers(0, 2**40, rows)).cast(pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table(columns), f"{folder}/raw.parquet", compression="zstd")
    return {"rows": float(rows), "seconds": time.perf_counter() - started}


def bench_generator(rows: int = 1_000_000) -> list[Measurement]:
    """Synthetic generator: rows/s against a raw numpy->parquet write, and peak memory at 1x and 3x size."""
    customers = math.ceil(rows / ROWS_PER_CUSTOMER)
    out: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        small = _in_child(_generate, customers, f"{tmp}/gen1")
        raw = _in_child(_raw_write, int(small["rows"]), f"{tmp}")
        shutil.rmtree(f"{tmp}/gen1")
        big = _in_child(_generate, customers * 3, f"{tmp}/gen3")
        raw_big = _in_child(_raw_write, int(big["rows"]), f"{tmp}")
    out.append(
        Measurement(
            "generator",
            f"throughput at {small['rows']:,.0f} rows",
            "rows/s",
            small["rows"] / small["seconds"],
            raw["rows"] / raw["seconds"],
            True,
            f"{small['seconds']:.1f} s for {small['rows']:,.0f} rows in 4 tables",
        )
    )
    out.append(
        Measurement(
            "generator",
            f"peak memory at {small['rows']:,.0f} rows",
            "MB",
            small["peak_mb"],
            raw["peak_mb"],
            False,
            "baseline holds all rows at once",
        )
    )
    out.append(
        Measurement(
            "generator",
            f"peak memory at {big['rows']:,.0f} rows",
            "MB",
            big["peak_mb"],
            raw_big["peak_mb"],
            False,
            f"3x the rows: {big['peak_mb'] / max(small['peak_mb'], 1e-9):.2f}x the memory "
            f"(baseline {raw_big['peak_mb'] / max(raw['peak_mb'], 1e-9):.2f}x)",
        )
    )
    return out


def _wide_contract(columns: int) -> Any:
    """A contract of ``columns`` feature columns (a third each float, int, category) on one table."""
    from closedloop.contract import parse_contract

    cols: list[dict[str, Any]] = []
    for i in range(columns):
        kind = ("float", "int", "category")[i % 3]
        col: dict[str, Any] = {"name": f"c{i}", "type": kind, "source": "events"}
        if kind == "category":
            col["categories"] = ["a", "b", "c", "d"]
        else:
            col.update(min=0, max=1000)
        cols.append(col)
    return parse_contract(
        {
            "name": "bench",
            "version": 1,
            "start": "2020-01-01T00:00:00Z",
            "entity": {"name": "customer", "join_key": "customer_id"},
            "tables": {
                "events": {"event_time": "event_at", "primary_key": ["event_id"]},
                "outcomes": {"event_time": "observed_at", "primary_key": ["event_id"]},
            },
            "prediction": "events",
            "label": {"column": "y", "source": "outcomes", "delay_days": 1},
            "decision": {"cost_false_negative": 1, "cost_false_positive": 1},
            "columns": cols,
        }
    )


def _wide_frame(rows: int, columns: int, bad_share: float) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    data: dict[str, Any] = {
        "customer_id": rng.integers(1, rows, rows),
        "event_id": np.arange(rows),
        "event_at": pd.Series(
            pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400 * 365, rows), unit="s")
        ).astype("datetime64[us, UTC]"),
    }
    for i in range(columns):
        kind = ("float", "int", "category")[i % 3]
        if kind == "float":
            data[f"c{i}"] = rng.random(rows) * 1000
        elif kind == "int":
            data[f"c{i}"] = rng.integers(0, 1000, rows)
        else:
            data[f"c{i}"] = np.array(["a", "b", "c", "d"], dtype=object)[rng.integers(0, 4, rows)]
    frame = pd.DataFrame(data)
    bad = rng.random(rows) < bad_share
    frame.loc[bad, "c0"] = -1.0  # out of range
    return frame


def _raw_checks(frame: Any, contract: Any, now: Any) -> Any:
    """The floor: the same rules as one vectorised pandas pass producing a per-row bad mask."""
    import numpy as np

    bad = np.zeros(len(frame), dtype=bool)
    spec = contract.tables["events"]
    bad |= frame[spec.event_time].isna().to_numpy()
    bad |= ((frame[spec.event_time] < contract.start) | (frame[spec.event_time] > now)).to_numpy()
    bad |= frame.duplicated(spec.primary_key, keep=False).to_numpy()
    bad |= frame["customer_id"].isna().to_numpy()
    for col in contract.columns_of("events"):
        values = frame[col.name]
        bad |= values.isna().to_numpy()
        if col.categories:
            bad |= ~values.isin(col.categories).to_numpy()
        else:
            bad |= ((values < col.min) | (values > col.max)).to_numpy()
    return bad


def bench_validation(rows: int = 1_000_000, columns: int = 30) -> list[Measurement]:
    """Row-level validation (types, GX suite, split) against a vectorised pandas check of the same rules."""
    from datetime import UTC, datetime

    from tasks.ingest.validation import validate

    contract = _wide_contract(columns)
    frame = _wide_frame(rows, columns, bad_share=0.01)
    now = datetime.now(UTC)
    validate(frame.head(1000), contract, "events", now)  # warm GX up (imports, context)
    ours_runs, raw_runs = [], []
    for _ in range(REPEATS):  # alternating, median of each: one slow run on a shared machine decides nothing
        started = time.perf_counter()
        result = validate(frame, contract, "events", now)
        ours_runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        raw_bad = _raw_checks(frame, contract, now)
        raw_runs.append(time.perf_counter() - started)
    ours, raw = statistics.median(ours_runs), statistics.median(raw_runs)
    if int(raw_bad.sum()) != result.rows_quarantined:
        raise RuntimeError(
            f"validation disagrees with the raw check: {result.rows_quarantined} vs {int(raw_bad.sum())}"
        )
    return [
        Measurement(
            "validation",
            f"{rows:,} rows x {columns} columns, 1% bad",
            "s",
            ours,
            raw,
            False,
            f"{result.rows_quarantined:,} rows quarantined by both; median of {REPEATS} alternating runs",
        )
    ]


def bench_materialize(rows: int = 100_000) -> list[Measurement]:
    """One day's profile batch into the SQLite online store: closedloop's ingest step vs Feast's default call."""
    from datetime import UTC, datetime

    import numpy as np
    import pandas as pd

    from closedloop.contract import contract_at
    from closedloop.lake import Lake
    from closedloop.settings import PROJECT_ROOT, load_settings
    from feature_repo.definitions import build_repo
    from feature_repo.store import open_store
    from samples.synthetic import SyntheticConfig, iter_blocks
    from tasks.ingest.tasks import materialize_features

    contract_path = str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml")
    contract = contract_at(contract_path)
    now = datetime.now(UTC)
    profiles = pd.concat([b["profiles"].to_pandas() for b in iter_blocks(SyntheticConfig(customers=rows))])
    rng = np.random.default_rng(5)
    day = pd.Timestamp(now - timedelta(days=1)).floor("D")
    profiles["profile_at"] = (day + pd.to_timedelta(rng.integers(0, 86_400, len(profiles)), unit="s")).astype(
        "datetime64[us, UTC]"
    )

    def timed(side: str, frame: pd.DataFrame, folder: Path) -> float:
        settings = load_settings(state_dir=folder / side)
        lake = Lake.of(settings.lake_uri, contract.name)
        lake.write_offline("profiles", frame, "profile_at", "bench", now)
        started = time.perf_counter()
        if side == "closedloop":
            materialize_features.fn(settings, contract_path, {"profiles": frame["profile_at"].min()}, now)
        else:
            store = open_store(settings, contract)
            store.apply(build_repo(contract, str(folder / side / "lake" / contract.name / "offline")).objects)
            store.materialize_incremental(end_date=now, feature_views=["profiles"])
        return time.perf_counter() - started

    figures = {}
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        for side in ("closedloop", "feast"):  # warm-up: imports and first connections are paid by neither side
            timed(side, profiles.head(100), Path(tmp) / "warm-up")
        for side in ("closedloop", "feast"):
            figures[side] = timed(side, profiles, Path(tmp))
    return [
        Measurement(
            "materialize",
            f"{len(profiles):,} rows of one day into SQLite",
            "rows/s",
            len(profiles) / figures["closedloop"],
            len(profiles) / figures["feast"],
            True,
            "both sides include applying the definitions; closedloop writes Feast's SQLite table in bulk",
        )
    ]


def bench_concept_drift(customers: int = 48_000) -> list[Measurement]:
    """Quality, not speed: a downturn (concept drift) lowers the champion's AUC; retraining on fresh data recovers it.

    Two years of synthetic data, the downturn from the second year on, ingested through the same tasks as the flow.
    The champion is trained on what had matured when the drift began; the retrained model on what had matured
    nine months later. Both score the same later window of applications, which neither has seen.
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from closedloop.contract import contract_at
    from closedloop.lake import Lake
    from closedloop.settings import PROJECT_ROOT, load_settings
    from samples.synthetic import Scenario, SyntheticConfig, write_synthetic
    from tasks.ingest.tasks import earliest_new_events, find_batches, ingest_batch, materialize_features
    from tasks.shared.features import EVENT_TIMESTAMP
    from tasks.train.fit import TrainingConfig
    from tasks.train.tasks import _load, _model, build_training_set, train_model

    contract_path = str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml")
    config = TrainingConfig()
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        settings = load_settings(state_dir=Path(tmp))
        contract = contract_at(contract_path)
        lake = Lake.of(settings.lake_uri, contract.name)
        write_synthetic(
            SyntheticConfig(
                customers=customers, start="2024-01", months=24, scenario=Scenario.CONCEPT_DRIFT, drift_start="2025-01"
            ),
            lake.landing,
        )
        now = datetime.now(UTC)
        outcomes = [
            ingest_batch.fn(ref, contract_path, lake, now) for ref in find_batches([], lake.landing, contract, None)
        ]
        materialize_features.fn(settings, contract_path, earliest_new_events(outcomes, contract), now)

        def fit(cutoff: datetime, window_days: int | None = None) -> Any:
            training = build_training_set.fn(settings, contract_path, cutoff, replace(config, window_days=window_days))
            return _model(train_model.fn(training, contract_path, config))

        champion = fit(datetime(2025, 1, 1, tzinfo=UTC))  # labels matured before the downturn
        # nine months later, on the applications whose labels matured since the downturn began
        retrained = fit(datetime(2025, 10, 1, tzinfo=UTC), window_days=WINDOW_DAYS)
        everything_since = fit(datetime(2025, 10, 1, tzinfo=UTC))
        everything = build_training_set.fn(settings, contract_path, datetime(2026, 1, 1, tzinfo=UTC), config)
        frame, x, y = _load(everything, contract_path)
        when = frame[EVENT_TIMESTAMP]

        def auc(model: Any, start: str, end: str) -> tuple[float, int]:
            rows = ((when >= pd.Timestamp(start, tz="UTC")) & (when < pd.Timestamp(end, tz="UTC"))).to_numpy()
            return float(roc_auc_score(y[rows], model.predict_proba(x[rows])[:, 1])), int(rows.sum())

        before, before_rows = auc(champion, "2024-10-01", "2025-01-01")
        drifted, drifted_rows = auc(champion, "2025-08-01", "2025-09-16")
        recovered, _ = auc(retrained, "2025-08-01", "2025-09-16")
        mixed, _ = auc(everything_since, "2025-08-01", "2025-09-16")
    return [
        Measurement(
            "concept_drift",
            f"champion ROC-AUC, downturn window vs the quarter before it ({drifted_rows:,} vs {before_rows:,} rows)",
            "ROC-AUC",
            drifted,
            before,
            True,
            "champion trained on labels matured by 2025-01-01; the downturn starts 2025-01",
        ),
        Measurement(
            "concept_drift",
            f"retrained vs champion on the same downturn window ({drifted_rows:,} applications, 2025-08-01..09-15)",
            "ROC-AUC",
            recovered,
            drifted,
            True,
            f"retrained on the last {WINDOW_DAYS} days of labels matured by 2025-10-01 (all history: "
            f"{mixed:.3f}); neither model saw the window",
        ),
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_train(customers: int = 150_000, data: str | None = None) -> list[Measurement]:
    """The whole train path against a bare ``xgboost`` fit of the same matrix with the same parameters.

    The data is generated and ingested first (not timed); with ``data``, into that folder, and a later run with
    the same number of customers reuses it (1.4M customers take a quarter of an hour to ingest here).
    Timed: the point-in-time training set through the FeatureService, the fit, the evaluation (metrics with
    bootstrap intervals, cost threshold, calibration, segments, fairness, SHAP, behavioural tests, plots) and
    the MLflow logging and registration on a real tracking server. The bare fit is the same ``fit_model`` call
    on the matrix the flow trained on.
    """
    import numpy as np

    from cli import stack
    from closedloop.contract import contract_at
    from closedloop.lake import Lake
    from closedloop.settings import PROJECT_ROOT, load_settings
    from samples.synthetic import SyntheticConfig, write_synthetic
    from tasks.ingest.tasks import find_batches, ingest_batch, materialize_features
    from tasks.shared.features import SPLIT, monotone_constraints
    from tasks.train import plots
    from tasks.train.fit import Gates, TrainingConfig, fit_model
    from tasks.train.tasks import _load, build_training_set, evaluate_candidate, register_candidate, train_model

    contract_path = str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml")
    config = TrainingConfig()
    with contextlib.ExitStack() as cleanup:
        temporary = None if data else cleanup.enter_context(tempfile.TemporaryDirectory(prefix="closedloop-bench-"))
        folder = Path(data or str(temporary))
        settings = load_settings(state_dir=folder, mlflow_port=_free_port(), prefect_port=_free_port())
        contract = contract_at(contract_path)
        lake = Lake.of(settings.lake_uri, contract.name)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / "bench-train.json"
        prepared = json.loads(marker.read_text()) if marker.exists() else {}
        if prepared.get("customers") == customers:
            now = datetime.fromisoformat(prepared["ingested_at"])
        else:
            if prepared or (data and any(folder.iterdir())):
                raise RuntimeError(f"{folder} holds other data: give an empty or new folder")
            write_synthetic(SyntheticConfig(customers=customers, start="2025-01", months=12), lake.landing)
            now = datetime.now(UTC)
            for ref in find_batches([], lake.landing, contract, None):
                ingest_batch.fn(ref, contract_path, lake, now)
            materialize_features.fn(settings, contract_path, {}, now)  # the repo only: training reads the offline store
            marker.write_text(json.dumps({"customers": customers, "ingested_at": now.isoformat()}))
        stack.up(settings, only=("mlflow",))
        try:
            import mlflow  # noqa: F401  warm-up: imports and first calls are paid by neither side

            rng = np.random.default_rng(0)
            plots.roc_curve_png(rng.integers(0, 2, 100), rng.random(100))
            stages: dict[str, float] = {}
            started = time.perf_counter()
            training = build_training_set.fn(settings, contract_path, now, config)
            stages["retrieval"] = time.perf_counter() - started
            model_path = train_model.fn(training, contract_path, config)
            stages["fit"] = time.perf_counter() - started - sum(stages.values())
            evaluation = evaluate_candidate.fn(
                training, model_path, contract_path, settings.mlflow_tracking_uri, Gates()
            )
            stages["evaluation"] = time.perf_counter() - started - sum(stages.values())
            register_candidate.fn(
                training, model_path, contract_path, settings.mlflow_tracking_uri, evaluation, config, "bench", now
            )
            stages["mlflow"] = time.perf_counter() - started - sum(stages.values())
            ours = time.perf_counter() - started
            frame, x, y = _load(training, contract_path)
            split = frame[SPLIT].to_numpy()
            train, validation = split == "train", split == "validation"
            constraints = monotone_constraints(contract)
            started = time.perf_counter()
            fit_model(x[train], y[train], x[validation], y[validation], config, constraints)
            bare = time.perf_counter() - started
        finally:
            stack.down(settings)
    breakdown = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
    return [
        Measurement(
            "train",
            f"train path on {training.rows:,} matured applications x {x.shape[1]} features",
            "s",
            ours,
            bare,
            False,
            f"{breakdown}; baseline: the bare fit of the same matrix",
        )
    ]


def _prepared_stack(tmp: str, customers: int) -> tuple[Any, Any, str, str]:
    """A stack in ``tmp`` with ``customers`` ingested and materialized, MLflow up and a champion trained."""
    from cli import stack
    from closedloop.contract import contract_at
    from closedloop.lake import Lake
    from closedloop.registry import CHAMPION, client
    from closedloop.settings import PROJECT_ROOT, load_settings
    from samples.synthetic import SyntheticConfig, write_synthetic
    from tasks.ingest.tasks import earliest_new_events, find_batches, ingest_batch, materialize_features
    from tasks.train.fit import Gates, TrainingConfig
    from tasks.train.tasks import build_training_set, evaluate_candidate, register_candidate, train_model

    contract_path = str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml")
    settings = load_settings(state_dir=Path(tmp), mlflow_port=_free_port(), prefect_port=_free_port())
    contract = contract_at(contract_path)
    lake = Lake.of(settings.lake_uri, contract.name)
    now = datetime.now(UTC)
    write_synthetic(SyntheticConfig(customers=customers, months=12), lake.landing)  # the year up to now
    refs = find_batches([], lake.landing, contract, None)
    outcomes = [ingest_batch.fn(ref, contract_path, lake, now) for ref in refs]
    materialize_features.fn(settings, contract_path, earliest_new_events(outcomes, contract), now)
    stack.up(settings, only=("mlflow",))
    config = TrainingConfig()
    training = build_training_set.fn(settings, contract_path, now, config)
    model_path = train_model.fn(training, contract_path, config)
    evaluation = evaluate_candidate.fn(training, model_path, contract_path, settings.mlflow_tracking_uri, Gates())
    version, _, _ = register_candidate.fn(
        training, model_path, contract_path, settings.mlflow_tracking_uri, evaluation, config, "bench", now
    )
    client(settings.mlflow_tracking_uri).set_registered_model_alias(contract.name, CHAMPION, version)
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


def _requests(path: str, bodies: list[dict[str, Any]] | None, token: str) -> list[bytes]:
    """Ready HTTP/1.1 requests (keep-alive): POST ``path`` with each body, or one GET when ``bodies`` is None."""
    head = f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
    if bodies is None:
        return [f"GET {path} HTTP/1.1\r\n{head}\r\n".encode()]
    out = []
    for body in bodies:
        data = json.dumps(body).encode()
        lines = f"POST {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        out.append(f"{lines}\r\n".encode() + data)
    return out


class _Connection:
    """One keep-alive connection speaking just enough HTTP/1.1 to time a server, not the client.

    A general-purpose client (httpx) spends about a millisecond of CPU per request in Python: on two cores shared
    with the server it would be the bottleneck being measured.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: Any = None
        self.writer: Any = None

    async def send(self, request: bytes) -> int:
        return (await self.exchange(request))[0]

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        import asyncio

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _load_run(port: int, requests: list[bytes], rate: float, seconds: float, connections: int = 32) -> dict[str, float]:
    """Open-loop load: one request every 1/rate s for ``seconds``; latency measured from the intended send time.

    Timing from the schedule (not from when a request actually left) keeps a stalled server from hiding its
    queue (coordinated omission).
    """
    import asyncio

    import numpy as np

    async def main() -> dict[str, float]:
        pool: asyncio.Queue[_Connection] = asyncio.Queue()
        for _ in range(connections):
            pool.put_nowait(_Connection(port))
        latencies: list[float] = []
        errors = 0

        async def one(i: int, due: float) -> None:
            nonlocal errors
            connection = await pool.get()
            try:
                status = await connection.send(requests[i % len(requests)])
                errors += status != 200
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                errors += 1
                connection.close()
                connection = _Connection(port)
            latencies.append(time.perf_counter() - due)
            pool.put_nowait(connection)

        total = int(rate * seconds)
        started = time.perf_counter()
        tasks = []
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        while not pool.empty():
            pool.get_nowait().close()
        values = np.asarray(latencies) * 1000
        return {
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
            "errors": float(errors),
            "requests": float(total),
            "achieved_rps": total / elapsed,
        }

    return asyncio.run(main())


def _saturation(port: int, requests: list[bytes], seconds: float, workers: int = 16) -> dict[str, float]:
    """Closed-loop load: ``workers`` connections each sending the next request as soon as one returns."""
    import asyncio

    async def main() -> dict[str, float]:
        done = errors = 0
        stop_at = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done, errors
            connection, i = _Connection(port), offset
            try:
                while time.perf_counter() < stop_at:
                    errors += await connection.send(requests[i % len(requests)]) != 200
                    done += 1
                    i += workers
            finally:
                connection.close()

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        return {"rps": done / (time.perf_counter() - started), "errors": float(errors)}

    return asyncio.run(main())


def _client(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """Run a load generator in a fresh interpreter (spawned) and return its figures."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _malformed(bodies: list[dict[str, Any]], token: str) -> list[bytes]:
    """Bad requests of every kind a client gets wrong, each answerable only with a 4xx and a reason."""
    good = bodies[0]
    key = next(iter(good))
    broken: list[dict[str, Any] | str] = [
        {k: v for k, v in good.items() if k != list(good)[1]},  # a required field missing
        {**good, list(good)[1]: "lots"},  # a number that is text
        {**good, list(good)[1]: -1e12},  # out of the contract's range
        {**good, "favourite_colour": "red"},  # a field the contract does not know
        {**good, key: 987_654_321_987},  # an entity nobody knows (404)
        '{"customer_id": 1, ',  # not JSON at all
        {**good, "padding": "x" * 300_000},  # over the body limit (413)
    ]
    out = []
    for body in broken:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        head = f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        out.append(f"{head}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return out


def _reliability(port: int, good: list[bytes], bad: list[bytes], total: int = 10_000) -> dict[str, float]:
    """``total`` requests, every hundredth malformed: count 5xx, and malformed ones answered 4xx with a reason."""
    import asyncio

    plan = [(bad[(i // 100) % len(bad)], True) if i % 100 == 99 else (good[i % len(good)], False) for i in range(total)]

    async def main() -> dict[str, float]:
        counts = {"ok": 0, "server_errors": 0, "malformed": 0, "malformed_4xx_with_reason": 0, "other": 0}
        queue: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)

        async def worker() -> None:
            connection = _Connection(port)
            try:
                while not queue.empty():
                    request, malformed = queue.get_nowait()
                    status, body = await connection.exchange(request)
                    if status >= 500:
                        counts["server_errors"] += 1
                    if malformed:
                        counts["malformed"] += 1
                        counts["malformed_4xx_with_reason"] += 400 <= status < 500 and b'"detail"' in body
                    elif status == 200:
                        counts["ok"] += 1
                    else:
                        counts["other"] += 1
                    if status in (413,) or b"Connection: close" in body:
                        connection.close()
                        connection = _Connection(port)
            finally:
                connection.close()

        await asyncio.gather(*(worker() for _ in range(8)))
        return {k: float(v) for k, v in counts.items()}

    return asyncio.run(main())


def bench_serving(customers: int = 20_000, seconds: float = 60.0, rate: float = 200.0) -> list[Measurement]:
    """Online scoring in process and over HTTP, and batch scoring, each against its raw baseline.

    In process: one application through the hot path (online-store lookup, matrix, predict, SHAP reasons) vs
    XGBoost's ``inplace_predict`` of the same ready row. HTTP (a real uvicorn service with its inference log, in
    its own process, loopback): open-loop ``rate`` requests/s for ``seconds`` to ``/v1/score`` vs the same load
    on the same server's ``/healthz`` (the framework's own floor); then the saturation throughput of both.
    Batch: the batch_score flow's scoring step (typed frame, predict, decisions) vs ``inplace_predict`` on the
    same ready matrix.
    """
    import multiprocessing as mp

    import httpx
    import numpy as np

    from feature_repo.definitions import model_service_name
    from feature_repo.store import open_store
    from tasks.score import scoring
    from tasks.score.scoring import load_version
    from tasks.shared.features import EVENT_TIMESTAMP

    out: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        from cli import stack

        settings, contract, version, contract_path = _prepared_stack(tmp, customers)
        try:
            bodies = _recent_applications(settings, contract)
            model = load_version(settings.mlflow_tracking_uri, contract.name, version)
            source = scoring.FeatureSource(open_store(settings, contract), contract)
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
            for q in (50, 99):
                out.append(
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
                )

            # batch: the batch_score flow's scoring step on this year's applications
            store = open_store(settings, contract)
            from closedloop.lake import Lake

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
            out.append(
                Measurement(
                    "serving",
                    f"batch scoring throughput on the same matrix, {len(frame):,} applications",
                    "rows/s",
                    len(frame) / statistics.median(scored_only),
                    raw_rate,
                    True,
                    "batch_score's scoring step (predict + decisions) vs inplace_predict on the same ready matrix; "
                    f"median of {REPEATS * 3}",
                )
            )
            out.append(
                Measurement(
                    "serving",
                    f"batch scoring throughput from the retrieval frame, {len(frame):,} applications",
                    "rows/s",
                    len(frame) / statistics.median(with_matrix),
                    raw_rate,
                    True,
                    "the same step plus building the matrix from Feast's frame (categories to codes); baseline: "
                    "inplace_predict on the ready matrix",
                )
            )

            # HTTP: a real service in its own process
            token = secrets.token_urlsafe(16)
            port = _free_port()
            ctx = mp.get_context("spawn")
            server = ctx.Process(target=_serve, args=(settings, contract_path, port, token), daemon=True)
            server.start()
            try:
                base = f"http://127.0.0.1:{port}"
                deadline = time.time() + 120
                while time.time() < deadline:
                    try:
                        if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.5)
                else:
                    raise RuntimeError("the scoring service did not become ready in 120 s")
                scoring_requests = _requests("/v1/score", bodies, token)
                health_requests = _requests("/healthz", None, token)
                # the load generator runs in its own fresh process: a client stalled by this process's heap
                # (frames, models, a garbage collector walking them) would be charged to the server
                _client(_load_run, port, scoring_requests, rate, 5)  # warm-up
                floor = _client(_load_run, port, health_requests, rate, seconds)
                scored = _client(_load_run, port, scoring_requests, rate, seconds)
                for stat in ("p50_ms", "p99_ms"):
                    out.append(
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
                    )
                sturdy = _client(_reliability, port, scoring_requests, _malformed(bodies, token))
                out.append(
                    Measurement(
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
                )
                top = _client(_saturation, port, scoring_requests, 15)
                top_floor = _client(_saturation, port, health_requests, 15)
                out.append(
                    Measurement(
                        "serving",
                        "HTTP saturation throughput, POST /v1/score, 16 concurrent clients",
                        "req/s",
                        top["rps"],
                        top_floor["rps"],
                        True,
                        f"{top['errors']:.0f} errors; baseline: GET /healthz; client and server share the 2 cores",
                    )
                )
            finally:
                server.terminate()  # by its pid, through the Process handle
                server.join(timeout=15)
        finally:
            stack.down(settings)
    return out


def _raw_psi(current: Any, edges: Any, ref_shares: Any) -> float:
    """Textbook PSI with numpy alone: histogram on the reference deciles, or category counts."""
    import numpy as np

    if edges is None:
        values, counts = np.unique(current.astype(str), return_counts=True)
        cur = dict(zip(values.tolist(), (counts / len(current)).tolist(), strict=True))
        r = np.maximum(np.array(list(ref_shares.values())), 1e-4)
        c = np.maximum(np.array([cur.get(k, 0.0) for k in ref_shares]), 1e-4)
    else:
        c = np.maximum(np.histogram(current, edges)[0] / len(current), 1e-4)
        r = np.maximum(ref_shares, 1e-4)
    return float(np.sum((c - r) * np.log(c / r)))


def bench_drift(rows: int = 1_000_000, columns: int = 30) -> list[Measurement]:
    """Drift verdicts for a window against the stored reference profile vs raw numpy PSI; the Evidently report."""
    import numpy as np

    from tasks.monitor.window import EVIDENTLY_SAMPLE_ROWS, evidently_report
    from tasks.shared.drift import drift_rules, profile_frame, window_drift

    contract = _wide_contract(columns)
    names = [c.name for c in contract.columns]
    reference = _wide_frame(rows, columns, bad_share=0.0)[names]
    current = _wide_frame(rows, columns, bad_share=0.0)[names].sample(frac=1.0, random_state=5, ignore_index=True)
    for name in names[: columns // 3 : 3]:  # a third of the float columns move by 10% of their range
        current[name] = current[name] + 100.0
    # the reference side is paid once, when the version is registered: neither side is timed on it
    profile = profile_frame(reference, contract, names, np.zeros(rows))
    rules = drift_rules(contract, names)
    raw_reference: dict[str, tuple[Any, Any]] = {}
    for name in names:
        x = reference[name].to_numpy()
        if x.dtype == object:
            values, counts = np.unique(x.astype(str), return_counts=True)
            raw_reference[name] = (None, dict(zip(values.tolist(), (counts / rows).tolist(), strict=True)))
        else:
            edges = np.concatenate([[-np.inf], np.quantile(x, np.linspace(0, 1, 11)[1:-1]), [np.inf]])
            raw_reference[name] = (edges, np.histogram(x, edges)[0] / rows)
    arrays = {name: current[name].to_numpy() for name in names}
    ours_runs, raw_runs = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        verdict = window_drift(profile, current, rules, None)
        ours_runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        raw = {name: _raw_psi(arrays[name], *raw_reference[name]) for name in names}
        raw_runs.append(time.perf_counter() - started)
    ours = {c["column"]: c for c in verdict["columns"]}
    flagged_raw = {n for n, v in raw.items() if v >= 0.2}
    if set(verdict["drifted"]) != flagged_raw:
        raise RuntimeError(
            f"drift verdicts disagree with raw PSI: {sorted(verdict['drifted'])} vs {sorted(flagged_raw)}"
        )
    worst = max(abs(ours[n]["score"] - raw[n]) for n in names)
    sample = reference.sample(n=EVIDENTLY_SAMPLE_ROWS, random_state=0)
    evidently_report(sample, current.head(1000), contract, names)  # imports and first-call set-up
    started = time.perf_counter()
    _, theirs = evidently_report(sample, current, contract, names)
    report_seconds = time.perf_counter() - started
    full_window = _evidently_full(reference, current, contract, names)
    agree = sum(theirs[n] == ours[n]["drifted"] for n in names)
    return [
        Measurement(
            "drift",
            f"verdicts, {rows:,} current rows x {columns} columns",
            "s",
            statistics.median(ours_runs),
            statistics.median(raw_runs),
            False,
            f"{len(verdict['drifted'])} columns drifted by both; PSI differs from raw by at most {worst:.1e}; "
            f"median of {REPEATS}",
        ),
        Measurement(
            "drift",
            f"Evidently report of a {rows:,}-row window ({EVIDENTLY_SAMPLE_ROWS:,}-row samples)",
            "s",
            report_seconds,
            full_window,
            False,
            f"baseline: Evidently's DataDriftPreset(method=psi) on the full window and reference; "
            f"verdicts agree with ours on {agree}/{len(names)} columns",
        ),
    ]


def _evidently_full(reference: Any, current: Any, contract: Any, names: list[str]) -> float:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from tasks.shared.drift import is_categorical

    categorical = [n for n in names if is_categorical(contract, n)]
    definition = DataDefinition(
        numerical_columns=[n for n in names if n not in categorical], categorical_columns=categorical
    )
    started = time.perf_counter()
    Report([DataDriftPreset(method="psi")]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    return time.perf_counter() - started


def scale_training_set(rows: int, path: str, chunk: int = 1_000_000) -> dict[str, float]:
    """A training set shaped as the point-in-time retrieval writes it, made chunk by chunk (never all rows)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from closedloop.contract import ColumnType, load_contract
    from closedloop.settings import PROJECT_ROOT
    from tasks.shared.features import SPLIT, feature_names

    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        rng = np.random.default_rng(start)
        frame: dict[str, Any] = {}
        risk = np.zeros(n)
        for i, name in enumerate(feature_names(contract)):
            column = None if name in aggregates else contract.column(name)
            if column is not None and column.type is ColumnType.CATEGORY:
                categories = column.categories or []
                picks = rng.integers(0, len(categories), n)
                frame[name] = np.asarray(categories, dtype=object)[picks]
                risk += 0.3 * (picks == 0)
            else:
                values = rng.normal(0, 1, n)
                values[rng.random(n) < 0.03] = np.nan
                frame[name] = values
                clean = np.nan_to_num(values)
                risk += clean * (0.6 if i % 3 == 0 else 0.1) + (0.4 * clean**2 if i % 5 == 0 else 0)
        frame[contract.label.column] = (rng.random(n) < 1 / (1 + np.exp(-(risk - 2.0)))).astype("int64")
        frame[SPLIT] = rng.choice(["train", "validation", "test"], size=n, p=[0.7, 0.1, 0.2])
        table = pa.Table.from_pandas(pd.DataFrame(frame), preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=250_000)
    if writer is not None:
        writer.close()
    return {"rows": float(rows)}


def _scale_one_process(path: str, trees: int) -> dict[str, float]:
    """The baseline: the whole training set in one pandas frame, typed, fitted by XGBoost on all cores."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from closedloop.contract import load_contract
    from closedloop.settings import PROJECT_ROOT
    from tasks.shared.features import SPLIT, monotone_constraints, typed_features
    from tasks.train.fit import TrainingConfig, fit_model

    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    started = time.perf_counter()
    frame = pd.read_parquet(path)
    x = typed_features(frame, contract)
    y = frame[contract.label.column].to_numpy()
    split = frame[SPLIT].to_numpy()
    del frame
    config = TrainingConfig(n_estimators=trees, learning_rate=0.1, early_stopping_rounds=20)
    model = fit_model(
        x[split == "train"],
        y[split == "train"],
        x[split == "validation"],
        y[split == "validation"],
        config,
        monotone_constraints(contract),
    )
    seconds = time.perf_counter() - started
    test = split == "test"
    auc = float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    return {"seconds": seconds, "auc": auc}


def _scale_dask(path: str, trees: int, workers: int) -> dict[str, float]:
    """The engine=dask path: workers read and type their partitions, xgboost.dask fits across them."""
    import resource as res

    import dask.dataframe as dd
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from closedloop.contract import load_contract
    from closedloop.settings import PROJECT_ROOT
    from tasks.shared.distributed import cluster
    from tasks.shared.features import SPLIT, feature_names, monotone_constraints, typed_features
    from tasks.train.distributed_fit import fit_dask
    from tasks.train.fit import TrainingConfig

    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    config = TrainingConfig(n_estimators=trees, learning_rate=0.1, early_stopping_rounds=20)
    columns = feature_names(contract)
    with cluster(None, workers=workers) as client:
        started = time.perf_counter()
        model = fit_dask(client, path, contract, columns, config, monotone_constraints(contract))
        seconds = time.perf_counter() - started
        worker_peaks = client.run(lambda: res.getrusage(res.RUSAGE_SELF).ru_maxrss * 1024 / 2**20)
        # quality on the test split, scored on the workers too (the flow's process never holds the frame)
        frame = dd.read_parquet(path, columns=[*columns, contract.label.column, SPLIT])
        test = frame[frame[SPLIT] == "test"]
        y = test[contract.label.column].compute().to_numpy()
        x = typed_features(test.compute(), contract)[columns]
        import xgboost as xgb

        booster = model.get_booster()
        p = booster.predict(xgb.DMatrix(x, enable_categorical=True))
        auc = float(roc_auc_score(y, p))
    return {"seconds": seconds, "auc": auc, "worker_peak_mb": float(np.max(list(worker_peaks.values())))}


def bench_scale(rows: int = 10_000_000, trees: int = 200, workers: int = 2) -> list[Measurement]:
    """Training at scale: engine=dask on a LocalCluster vs one process holding the whole training set."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="closedloop-scale-") as folder:
        path = str(Path(folder) / "training.parquet")
        _in_child(scale_training_set, rows, path)
        one = _in_child(_scale_one_process, path, trees)
        dask_side = _in_parent_process(_scale_dask, path, trees, workers)
    return [
        Measurement(
            "scale",
            f"train on {rows:,} rows x 20 features, {workers} Dask workers vs one process (s)",
            "s",
            dask_side["seconds"],
            one["seconds"],
            False,
            f"read + type + fit; {trees} trees at most, early stopping; test AUC {dask_side['auc']:.4f} (Dask) vs "
            f"{one['auc']:.4f} (one process)",
        ),
        Measurement(
            "scale",
            f"peak memory per process at {rows:,} rows (MB)",
            "MB",
            dask_side["worker_peak_mb"],
            one["peak_mb"],
            False,
            f"largest Dask worker's peak RSS vs the single process's peak growth; the flow's own process grew "
            f"{dask_side['peak_mb']:,.0f} MB",
        ),
    ]


BENCHMARKS: dict[str, Callable[..., list[Measurement]]] = {
    "generator": bench_generator,
    "validation": bench_validation,
    "materialize": bench_materialize,
    "concept_drift": bench_concept_drift,
    "train": bench_train,
    "serving": bench_serving,
    "drift": bench_drift,
    "scale": bench_scale,
}


def run(names: list[str], out_dir: Path, **options: Any) -> tuple[BenchReport, Path]:
    """Run the named benchmarks (all when empty); write ``<out_dir>/bench-<time>.{json,md}``."""
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise KeyError(f"unknown benchmark(s) {unknown}; available: {sorted(BENCHMARKS)}")
    report = BenchReport(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine={
            "python": platform.python_version(),
            "cpus": multiprocessing.cpu_count(),
            "platform": platform.platform(),
        },
    )
    for name in names or list(BENCHMARKS):
        report.measurements.extend(BENCHMARKS[name](**options.get(name, {})))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"bench-{report.started_at.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(report.to_dict(), indent=2))
    stem.with_suffix(".md").write_text(report.markdown())
    return report, stem.with_suffix(".json")
