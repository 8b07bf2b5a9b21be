"""Skew benchmark: the monitor's training-serving skew check against a bare point-in-time retrieval of its rows."""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.measure import REPEATS, Measurement

NOW = datetime(2025, 7, 1, tzinfo=UTC)  # the end of the generated months: materialized then, served just after


def _materialized(settings: Any, contract: Any, customers: int) -> None:
    """Six months of ``customers`` in the offline store, and online as the ingest's writer puts them at NOW."""
    import pyarrow as pa

    from closedloop.lake import TIMESTAMP, Lake, arrow_types, key_type
    from feature_repo.definitions import history_table
    from feature_repo.transforms import compute_aggregates
    from samples.synthetic import SyntheticConfig, iter_blocks
    from tasks.ingest.tasks import materialize_features

    lake = Lake.of(settings.lake_uri, contract.name)
    since: dict[str, datetime] = {}
    key, event_time = contract.entity.join_key, contract.tables["credit_history"].event_time
    aggregates = contract.aggregates_of("credit_history")
    history_types = {key: key_type(contract), event_time: TIMESTAMP, **{a.name: pa.float64() for a in aggregates}}
    for i, block in enumerate(iter_blocks(SyntheticConfig(customers=customers, start="2025-01", months=6))):
        tables = {name: table.to_pandas() for name, table in block.items()}
        for name in ("profiles", "credit_history", "applications"):
            column = contract.tables[name].event_time
            lake.write_offline(name, tables[name], column, f"b{i}", NOW, arrow_types(contract, name))
            first = tables[name][column].min()
            since[name] = min(since.get(name, first), first)
        history = compute_aggregates(tables["credit_history"], aggregates, key, event_time)
        lake.write_offline(history_table("credit_history"), history, event_time, f"b{i}", NOW, history_types)
    since[history_table("credit_history")] = since["credit_history"]
    materialize_features.fn(settings, contract, since, NOW)


def _served(settings: Any, contract: Any, store: Any) -> Any:
    """One request per customer through the service's feature source, in the inference log, read back."""
    import pandas as pd

    from closedloop.inference_log import InferenceLog, InferenceRecord
    from closedloop.lake import Lake
    from tasks.monitor.skew import request_inputs
    from tasks.monitor.sources import read_served
    from tasks.score.feature_source import FeatureSource
    from tasks.shared.features import feature_names

    source = FeatureSource(store, contract)
    lake = Lake.of(settings.lake_uri, contract.name)
    apps = lake.read_offline("applications").drop_duplicates(contract.entity.join_key, keep="last")
    inputs = [contract.entity.join_key, *request_inputs(contract)]
    payload: list[dict[str, Any]] = [
        {k: None if pd.isna(v) else v for k, v in row.items()} for row in apps[inputs].to_dict("records")
    ]
    columns = feature_names(contract)
    matrix = source.matrix(payload, columns)
    log = InferenceLog(lake, max_buffered=len(payload) + 1)
    for i, application in enumerate(payload):
        log.append(
            InferenceRecord(
                request_id=f"r{i}",
                scored_at=NOW + timedelta(milliseconds=i),
                dataset=contract.name,
                model_version="1",
                entity_id=application[contract.entity.join_key],
                features=source.readable(matrix[i], columns),
                score=0.5,
                decision="approve",
                latency_ms=1.0,
            )
        )
    log.close()
    return read_served(lake, NOW, NOW + timedelta(hours=1))


def bench_skew(requests: int = 10_000) -> list[Measurement]:
    """The skew check of ``requests`` logged requests vs Feast's bare retrieval of the same entity rows."""
    from closedloop.contract import Monitoring, contract_at
    from closedloop.settings import PROJECT_ROOT, load_settings
    from feature_repo.definitions import model_service_name
    from feature_repo.store import open_store
    from tasks.monitor import skew

    contract = contract_at(str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml"))
    contract = contract.model_copy(update={"monitoring": Monitoring(skew_sample=requests)})
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        settings = load_settings(state_dir=Path(tmp))
        _materialized(settings, contract, requests)
        store = open_store(settings, contract)
        frame = _served(settings, contract, store)
        service = store.get_feature_service(model_service_name(contract))
        entities = skew.entity_rows(contract, frame).drop(columns=[skew.ROW])

        def ours() -> skew.SkewVerdict:
            return skew.check(store, contract, frame)

        def bare() -> Any:
            return store.get_historical_features(entity_df=entities.copy(), features=service).to_df()

        ours(), bare()  # warm-up: imports, the registry's cache, DuckDB's first scans are paid by neither side
        ours_runs, bare_runs = [], []
        for _ in range(REPEATS):  # alternating, median of each
            started = time.perf_counter()
            verdict = ours()
            ours_runs.append(time.perf_counter() - started)
            started = time.perf_counter()
            retrieved = bare()
            bare_runs.append(time.perf_counter() - started)
    differing = {f.feature: f.mismatched for f in verdict.features if f.mismatched}
    if verdict.sampled != len(frame) or len(retrieved) != len(frame) or differing:
        raise RuntimeError(
            f"the skew check of {len(frame)} clean requests sampled {verdict.sampled}, the retrieval returned "
            f"{len(retrieved)} rows; features that differ: {differing}"
        )
    return [
        Measurement(
            "skew",
            f"check of {len(frame):,} logged requests vs a bare retrieval of the same entity rows",
            "s",
            statistics.median(ours_runs),
            statistics.median(bare_runs),
            False,
            f"{len(verdict.features)} features compared, none differs; baseline: get_historical_features with the "
            f"FeatureService; median of {REPEATS} alternating runs",
        )
    ]
