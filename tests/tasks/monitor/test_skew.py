"""Training-serving skew on a real Feast store (DuckDB offline, SQLite online filled by closedloop's writer).

Requests are served through the scoring path's feature source (the online fast path, the model matrix and the
readable values the service logs), written to the inference log and read back as the monitor reads them; faults
are then put in the online store only: a wrong value of one feature, a missing row of one view.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from closedloop.contract import Contract
from closedloop.inference_log import InferenceLog, InferenceRecord
from closedloop.lake import TIMESTAMP, Lake, arrow_types, key_type
from closedloop.settings import Settings, load_settings
from feature_repo.definitions import history_table
from feature_repo.online_delete import delete_entities
from feature_repo.online_write import entity_key_bytes
from feature_repo.store import open_store
from feature_repo.transforms import compute_aggregates
from samples.synthetic import SyntheticConfig, generate_block
from tasks.ingest.tasks import materialize_features
from tasks.monitor import skew
from tasks.monitor.sources import read_served
from tasks.monitor.tasks import training_serving_skew
from tasks.score.feature_source import FeatureSource
from tasks.shared.features import feature_names

NOW = datetime(2025, 7, 1, tzinfo=UTC)  # the generated data's end: materialized then, served just after
CONFIG = SyntheticConfig(customers=300, start="2025-01", months=6, seed=3)
HISTORY = ["credit_limit", "balance", "utilisation", "months_delinquent", "payment_ratio", "open_accounts"]


@pytest.fixture(scope="module")
def base_state(tmp_path_factory: pytest.TempPathFactory, contract: Contract) -> Path:
    """Six months of 300 customers in the offline store, materialized online by closedloop's writer at NOW."""
    state = tmp_path_factory.mktemp("skew-store")
    settings = load_settings(state_dir=state)
    lake = Lake.of(settings.lake_uri, contract.name)
    block = {name: table.to_pandas() for name, table in generate_block(CONFIG, 0).items()}
    since = {}
    for name in ("profiles", "credit_history", "applications"):
        event_time = contract.tables[name].event_time
        lake.write_offline(name, block[name], event_time, "b1", NOW, arrow_types(contract, name))
        since[name] = block[name][event_time].min()
    key, event_time = contract.entity.join_key, contract.tables["credit_history"].event_time
    aggregates = contract.aggregates_of("credit_history")
    history = compute_aggregates(block["credit_history"], aggregates, key, event_time)
    types = {key: key_type(contract), event_time: TIMESTAMP, **{a.name: pa.float64() for a in aggregates}}
    lake.write_offline(history_table("credit_history"), history, event_time, "b1", NOW, types)
    since[history_table("credit_history")] = since["credit_history"]
    materialize_features.fn(settings, contract, since, NOW)
    return state


@pytest.fixture
def state(base_state: Path, tmp_path: Path) -> Settings:
    """A copy of the materialized store for one test: its faults stay in it (the offline tables are shared)."""
    shutil.copytree(base_state, tmp_path / "state")
    return load_settings(state_dir=tmp_path / "state")


def serve(settings: Settings, contract: Contract) -> pd.DataFrame:
    """One request per customer (their latest application) served from the online store, logged, read back."""
    source = FeatureSource(open_store(settings, contract), contract)
    assert source.uses_fast_path
    lake = Lake.of(settings.lake_uri, contract.name)
    apps = lake.read_offline("applications").sort_values("applied_at").drop_duplicates("customer_id", keep="last")
    inputs = ["customer_id", *skew.request_inputs(contract)]
    payload = [{k: None if pd.isna(v) else v for k, v in row.items()} for row in apps[inputs].to_dict("records")]
    columns = feature_names(contract)
    matrix = source.matrix(payload, columns)
    log = InferenceLog(lake)
    for i, application in enumerate(payload):
        log.append(
            InferenceRecord(
                request_id=f"r{i}",
                scored_at=NOW + timedelta(seconds=i),
                dataset=contract.name,
                model_version="1",
                entity_id=application["customer_id"],
                features=source.readable(matrix[i], columns),
                score=0.5,
                decision="approve",
                latency_ms=1.0,
            )
        )
    log.close()
    return read_served(lake, NOW, NOW + timedelta(hours=1))


def fresh_history(settings: Settings, contract: Contract, count: int) -> list[int]:
    """Customers whose statements are served online (still within the view's TTL), the first ``count``."""
    source = FeatureSource(open_store(settings, contract), contract)
    keys = Lake.of(settings.lake_uri, contract.name).read_offline("profiles")["customer_id"].tolist()
    rows = source.stored(keys)
    found = [k for k, row in zip(keys, rows, strict=True) if row and row["credit_limit"] is not None]
    assert len(found) >= count
    return sorted(found)[:count]


def by_feature(verdict: skew.SkewVerdict) -> dict[str, skew.FeatureSkew]:
    return {f.feature: f for f in verdict.features}


def test_served_features_equal_the_offline_store_at_request_time(state: Settings, contract: Contract) -> None:
    frame = serve(state, contract)
    verdict = skew.check(open_store(state, contract), contract, frame)
    assert verdict.status == "judged" and verdict.sampled == len(frame) == CONFIG.customers
    assert verdict.request_features == ["loan_amount", "loan_term_months", "loan_purpose", "channel"]
    compared = [n for n in feature_names(contract) if n not in verdict.request_features]
    assert [f.feature for f in verdict.features] == compared and not verdict.not_logged
    assert {f.feature: f.mismatched for f in verdict.features if f.mismatched} == {}
    assert verdict.violations == [] and verdict.skewed == [] and verdict.message is None
    # stale statements (beyond the view's TTL) are missing on both sides, and count as equal
    assert 0 < frame["credit_limit"].isna().sum() < len(frame)


@pytest.mark.integration
def test_a_wrong_online_value_of_one_feature_is_skew_on_that_feature_only(
    state: Settings, contract: Contract, mlflow_server: int
) -> None:
    import mlflow
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    wrong = fresh_history(state, contract, 20)
    path = state.state_dir / "feast" / contract.name / "online_store.db"
    blob = python_values_to_proto_values([99.0], ValueType.DOUBLE)[0].SerializeToString()
    with sqlite3.connect(path) as conn:
        for key in wrong:
            conn.execute(
                f'UPDATE "{contract.name}_profiles" SET value = ? WHERE entity_key = ? AND feature_name = ?',
                (blob, entity_key_bytes("customer_id", key, ValueType.INT64), "employment_years"),
            )
    conn.close()
    frame = serve(state, contract)
    settings = state.model_copy(update={"mlflow_port": mlflow_server})
    verdict = training_serving_skew.fn(settings, contract, frame, "1", NOW)
    found = by_feature(verdict)["employment_years"]
    assert (found.mismatched, found.missing_served, found.missing_offline) == (20, 0, 0)
    assert found.kind == "number" and found.share == pytest.approx(20 / CONFIG.customers)
    assert set(found.examples) <= set(wrong) and len(found.examples) == skew.EXAMPLES
    assert {f.feature: f.mismatched for f in verdict.features if f.mismatched} == {"employment_years": 20}
    assert verdict.skewed == ["employment_years"] and verdict.violations == [skew.VIOLATION]
    assert verdict.message is not None and verdict.message.startswith("training_serving_skew: employment_years 6.7%")
    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(str(verdict.mlflow_run))
    assert run.data.metrics["skew_share.employment_years"] == pytest.approx(20 / CONFIG.customers)
    assert run.data.metrics["skew_share.income"] == 0 and run.data.metrics["skewed_features"] == 1
    payload = skew.event_payload(verdict, {"start": "a", "end": "b"}, "1")
    assert payload["features"] == {"employment_years": round(20 / CONFIG.customers, 4)}


def test_a_missing_online_row_counts_as_served_missing_where_the_offline_store_has_it(
    state: Settings, contract: Contract
) -> None:
    gone = fresh_history(state, contract, 15)
    assert delete_entities(open_store(state, contract), "credit_history", gone) == 15
    frame = serve(state, contract)
    verdict = skew.check(open_store(state, contract), contract, frame)
    found = by_feature(verdict)
    differing = {name for name, f in found.items() if f.mismatched}
    assert differing == {*HISTORY, "loan_to_limit"}  # the ratio of a missing statement is missing too
    for name in differing:
        assert (found[name].mismatched, found[name].missing_served, found[name].missing_offline) == (15, 15, 0)
        assert set(found[name].examples) <= set(gone)
    assert found["utilisation_mean_6m"].mismatched == 0  # the history view's row is still there
    assert sorted(verdict.skewed) == sorted(differing) and verdict.violations == [skew.VIOLATION]
    assert "| credit_limit | 15 | 15 | 0 | 5.00% |" in skew.markdown(verdict)


def test_numbers_within_the_relative_tolerance_are_equal_categories_only_when_identical(contract: Contract) -> None:
    served = pd.DataFrame(
        {
            "entity_id": [1, 2, 3, 4, 5, 6],
            "income": [100.0, 100.0, 0.0, None, 5.0, -3.0],
            "education": ["university", "other", None, None, "university", "high_school"],
        }
    )
    offline = pd.DataFrame(
        {
            "income": [100.00001, 100.01, 0.0, None, None, -3.0000000001],
            "education": ["university", "university", "doctorate", None, None, "high_school"],
        }
    )
    found = {f.feature: f for f in skew.compare(contract, served, offline, ["income", "education"], 1e-6)}
    income, education = found["income"], found["education"]
    assert (income.mismatched, income.missing_served, income.missing_offline, income.examples) == (2, 0, 1, [2, 5])
    # an unknown category ("doctorate") is missing to the model, as the log keeps it
    assert (education.mismatched, education.missing_offline, education.examples) == (2, 1, [2, 5])
    assert education.kind == "category" and income.share == pytest.approx(2 / 6)
    exact = skew.compare(contract, served, offline, ["income"], 0.0)[0]
    assert exact.examples == [1, 2, 5, 6]


def test_the_sample_is_seeded_bounded_and_in_window_order() -> None:
    frame = pd.DataFrame({"request_id": [f"r{i}" for i in range(1000)], "entity_id": np.arange(1000)})
    first, again = skew.sample_requests(frame, 100, 7), skew.sample_requests(frame, 100, 7)
    assert len(first) == 100 and first.equals(again)
    assert first["entity_id"].is_monotonic_increasing
    assert not first.equals(skew.sample_requests(frame, 100, 8))
    assert len(skew.sample_requests(frame, 5000, 7)) == 1000


def test_an_empty_window_has_no_verdict(contract: Contract) -> None:
    verdict = skew.check(None, contract, pd.DataFrame(columns=["entity_id", "scored_at"]))
    assert (verdict.status, verdict.sampled, verdict.violations) == ("no_data", 0, [])
    assert verdict.not_logged == feature_names(contract)
