"""The training set's entity frame (matured labels only, in time then key order), its checks and how it is read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from closedloop.contract import load_contract
from closedloop.lake import Lake, arrow_types
from closedloop.settings import PROJECT_ROOT, Settings
from tasks.shared.features import EVENT_TIMESTAMP, SPLIT, feature_names
from tasks.train.coverage import CoverageCounter, FeatureCoverage
from tasks.train.dataset import (
    CoveredRows,
    TrainingSet,
    build_training_set,
    enough_labels,
    entity_frame,
    frame_hash,
    load_training,
)
from tasks.train.fit import TrainingConfig, TrainingDataError

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
NOW = datetime(2025, 12, 31, tzinfo=UTC)


def _lake(tmp_path: Path, labels: list[int], applied: list[str], observed: list[str]) -> Lake:
    lake = Lake.of(tmp_path.as_uri(), CONTRACT.name)
    n = len(labels)
    apps = pd.DataFrame(
        {
            "customer_id": range(1, n + 1),
            "application_id": range(11, 11 + n),
            "applied_at": pd.to_datetime(applied, utc=True),
            "loan_amount": 1000.0,
            "loan_term_months": 12,
            "loan_purpose": "car",
            "channel": "online",
        }
    )
    outcomes = pd.DataFrame(
        {
            "customer_id": apps["customer_id"],
            "application_id": apps["application_id"],
            "observed_at": pd.to_datetime(observed, utc=True),
            "defaulted": labels,
        }
    )
    lake.write_offline("applications", apps, "applied_at", "b1", NOW, arrow_types(CONTRACT, "applications"))
    lake.write_offline("outcomes", outcomes, "observed_at", "b1", NOW, arrow_types(CONTRACT, "outcomes"))
    return lake


def test_only_matured_labels_enter_the_entity_frame(tmp_path: Path) -> None:
    lake = _lake(
        tmp_path,
        [0, 1, 1, 0],
        ["2025-01-10", "2025-02-10", "2025-11-20", "2025-03-01"],
        ["2025-04-15", "2025-05-20", "2025-12-30", "2026-02-01"],
    )
    frame = entity_frame(lake, CONTRACT, NOW)
    # the third is too recent (delay 90 days), the fourth is observed after the cut-off
    assert frame["application_id"].tolist() == [11, 12]
    assert list(frame.columns[:3]) == ["customer_id", "application_id", EVENT_TIMESTAMP]
    assert "defaulted" in frame and "loan_amount" in frame


def test_a_window_counts_back_from_the_last_matured_application(tmp_path: Path) -> None:
    lake = _lake(
        tmp_path,
        [0, 1, 1, 0],
        ["2024-01-10", "2024-05-01", "2024-06-20", "2024-06-25"],  # a table whose data ends long before now
        ["2024-04-15", "2024-08-01", "2024-09-20", "2024-09-25"],
    )
    recent = entity_frame(lake, CONTRACT, NOW, window_days=60)
    assert recent["application_id"].tolist() == [12, 13, 14]  # 60 days back from 2024-06-25, not from now
    assert len(entity_frame(lake, CONTRACT, NOW)) == 4


def test_a_single_class_label_is_refused(tmp_path: Path) -> None:
    lake = _lake(tmp_path, [0, 0], ["2025-01-10", "2025-02-10"], ["2025-04-15", "2025-05-20"])
    with pytest.raises(TrainingDataError, match="the label has a single class in the 2 matured rows"):
        entity_frame(lake, CONTRACT, NOW)


def test_missing_labels_are_refused(tmp_path: Path) -> None:
    lake = Lake.of(tmp_path.as_uri(), CONTRACT.name)
    with pytest.raises(TrainingDataError, match="no applications rows in the offline store"):
        entity_frame(lake, CONTRACT, NOW)


def test_entity_frame_is_in_time_then_key_order_over_partitions(tmp_path: Path) -> None:
    """Applications of one day in two batches, outcomes in another: one frame, sorted by time then keys."""
    lake = _lake(tmp_path, [1, 0, 0], ["2025-03-01", "2025-01-10", "2025-03-01"], ["2025-06-01"] * 3)
    later = pd.DataFrame(
        {
            "customer_id": [0],
            "application_id": [99],
            "applied_at": pd.to_datetime(["2025-03-01"], utc=True),
            "loan_amount": [5.0],
            "loan_term_months": [24],
            "loan_purpose": ["home"],
            "channel": ["branch"],
        }
    )
    lake.write_offline("applications", later, "applied_at", "b2", NOW, arrow_types(CONTRACT, "applications"))
    lake.write_offline(
        "outcomes",
        pd.DataFrame(
            {
                "customer_id": [0],
                "application_id": [99],
                "observed_at": pd.to_datetime(["2025-06-02"], utc=True),
                "defaulted": [1],
            }
        ),
        "observed_at",
        "b2",
        NOW,
        arrow_types(CONTRACT, "outcomes"),
    )
    frame = entity_frame(lake, CONTRACT, NOW)
    # 2025-01-10 first; the three of 2025-03-01 by customer: 0 (batch b2), 1, 3
    assert frame["application_id"].tolist() == [12, 99, 11, 13]
    assert frame["customer_id"].tolist() == [2, 0, 1, 3]
    assert frame["defaulted"].tolist() == [0, 1, 1, 0]
    assert frame.loc[frame["application_id"] == 99, "loan_purpose"].item() == "home"
    assert str(frame[EVENT_TIMESTAMP].dtype) == "datetime64[us, UTC]"


def test_a_label_matching_two_applications_is_refused(tmp_path: Path) -> None:
    lake = _lake(tmp_path, [1, 0], ["2025-01-10", "2025-02-10"], ["2025-04-15", "2025-05-20"])
    again = lake.read_offline("outcomes").head(1)
    # the same application's outcome twice
    lake.write_offline("outcomes", again, "observed_at", "b2", NOW, arrow_types(CONTRACT, "outcomes"))
    repeated = r"1 value\(s\) of \['application_id'\] appear in more than one outcomes row"
    with pytest.raises(TrainingDataError, match=repeated):
        entity_frame(lake, CONTRACT, NOW)


def test_too_few_rows_or_positives_are_refused_with_the_numbers() -> None:
    entities = pd.DataFrame({"defaulted": [1, 0, 0, 1, 0]})
    assert enough_labels(entities, CONTRACT, TrainingConfig(min_rows=5, min_positives=2), NOW) == 2
    with pytest.raises(TrainingDataError, match="only 5 matured labelled rows by 2025-12-31; at least 6 needed"):
        enough_labels(entities, CONTRACT, TrainingConfig(min_rows=6, min_positives=2), NOW)
    with pytest.raises(TrainingDataError, match="only 2 positive labels among 5 rows; at least 3 needed"):
        enough_labels(entities, CONTRACT, TrainingConfig(min_rows=5, min_positives=3), NOW)


def test_the_lineage_hash_follows_content_and_row_order() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert frame_hash(frame) == frame_hash(frame.copy())
    assert frame_hash(frame) != frame_hash(frame.iloc[::-1])
    assert frame_hash(frame) != frame_hash(frame.assign(a=[1, 2, 4]))


def test_a_training_set_reads_back_as_matrix_labels_and_splits(tmp_path: Path) -> None:
    rows = {name: [1.0, 2.0, 3.0, 4.0] for name in feature_names(CONTRACT)}
    frame = pd.DataFrame(
        {**rows, "defaulted": [1, 0, 0, 1], SPLIT: ["train", "train", "validation", "test"], "sex": "female"}
    )
    path = tmp_path / "training.parquet"
    frame.to_parquet(path)
    training = TrainingSet(
        uri=path.as_uri(),
        rows=4,
        positives=2,
        entity_hash="h",
        window_start=NOW,
        window_end=NOW,
        feature_service="s",
        contract_fingerprint=CONTRACT.fingerprint,
        coverage=FeatureCoverage(rows=4, left_out=0, missing={}, coverage={}),
    )
    assert training.path == path
    data = load_training(training, CONTRACT)
    assert data.labels.tolist() == [1, 0, 0, 1]
    assert list(data.features.columns) == feature_names(CONTRACT)  # the model matrix only, no attribute or split
    assert data.split("train").tolist() == [True, True, False, False]
    assert data.split("test").tolist() == [False, False, False, True]


def _retrieved(days: list[int], defaulted: list[int], income: list[float | None]) -> pa.Table:
    """A retrieved batch: the entity frame's time and label, and one feature table's column."""
    return pa.table(
        {
            EVENT_TIMESTAMP: pa.array([datetime(2025, 1, d, tzinfo=UTC) for d in days], pa.timestamp("us", tz="UTC")),
            "defaulted": pa.array(defaulted, pa.int64()),
            "income": pa.array(income, pa.float64()),
        }
    )


def test_the_covered_rows_keep_the_split_of_their_place_in_the_entity_frame() -> None:
    """Rows left out of one batch do not shift the splits of the next: a split belongs to an entity row."""
    codes = np.array([0, 0, 0, 1, 2, 2], dtype=np.int8)  # train, train, train, validation, test, test
    covered = CoveredRows(codes, CoverageCounter({"profiles": ["income"]}), CONTRACT)
    first = covered(_retrieved([1, 2, 3], [1, 0, 0], [None, 2.0, None]), 0)
    second = covered(_retrieved([4, 5, 6], [1, 1, 0], [4.0, None, 6.0]), first.num_rows)
    assert first.column(SPLIT).to_pylist() == ["train"]
    assert second.column(SPLIT).to_pylist() == ["validation", "test"]
    assert covered.rows == 3 and covered.positives == 1  # the covered rows' labels only
    assert (covered.first, covered.last) == (datetime(2025, 1, 2, tzinfo=UTC), datetime(2025, 1, 6, tzinfo=UTC))
    coverage = covered.counter.result()
    assert coverage.left_out == 3 and coverage.missing == {"profiles": 3} and coverage.coverage == {"profiles": 0.5}
    covered.check(6, TrainingConfig(min_rows=3, min_positives=1))
    with pytest.raises(TrainingDataError, match="the retrieval returned 6 rows for 7 entity rows"):
        covered.check(7, TrainingConfig(min_rows=3, min_positives=1))
    too_few = (
        r"only 3 of 6 matured applications have their feature rows at their time \(profiles 50.00%\), with 1 "
        r"positive labels; at least 4 rows and 1 positives \(and a negative\) needed"
    )
    with pytest.raises(TrainingDataError, match=too_few):
        covered.check(6, TrainingConfig(min_rows=4, min_positives=1))


def _write(lake: Lake, table: str, frame: pd.DataFrame, event_time: str, types: dict[str, pa.DataType]) -> None:
    lake.write_offline(table, frame, event_time, "b1", NOW, types)


def _feature_rows(lake: Lake, profiled: list[int], statements: dict[int, str]) -> None:
    """Profiles of the ``profiled`` customers (dated 2024-12-01) and one statement per customer at its date."""
    n = len(profiled)
    profiles = pd.DataFrame(
        {
            "customer_id": profiled,
            "profile_at": pd.to_datetime(["2024-12-01"] * n, utc=True),
            "age": [30 + i for i in range(n)],
            "sex": ["female", "male"] * (n // 2) + ["female"] * (n % 2),
            "marital_status": "single",
            "education": "university",
            "region": "north",
            "home_ownership": "rent",
            "income": 40_000.0,
            "employment_years": 5.0,
            "postcode": 1234,
        }
    )
    _write(lake, "profiles", profiles, "profile_at", arrow_types(CONTRACT, "profiles"))
    history = pd.DataFrame(
        {
            "customer_id": list(statements),
            "snapshot_at": pd.to_datetime(list(statements.values()), utc=True),
            "credit_limit": 5_000.0,
            "balance": 1_000.0,
            "utilisation": 0.2,
            "months_delinquent": 0,
            "payment_ratio": 0.9,
            "open_accounts": 2,
        }
    )
    _write(lake, "credit_history", history, "snapshot_at", arrow_types(CONTRACT, "credit_history"))
    aggregates = history[["customer_id", "snapshot_at"]].assign(
        utilisation_mean_6m=0.2, months_delinquent_max_6m=0.0, payment_ratio_min_6m=0.9
    )
    types = {"customer_id": pa.int64(), "snapshot_at": pa.timestamp("us", tz="UTC")}
    types |= {name: pa.float64() for name in aggregates.columns[2:]}
    _write(lake, "credit_history_history", aggregates, "snapshot_at", types)


@pytest.mark.slow
def test_applications_without_their_feature_rows_are_left_out_of_the_built_training_set(settings: Settings) -> None:
    """Through Feast: customers 7 and 8 have no profile (quarantined), customer 6's statement is past its ttl."""
    from feature_repo.definitions import build_repo
    from feature_repo.store import offline_root, open_store

    labels = [1, 0, 0, 1, 0, 1, 0, 1]
    lake = _lake(Path(settings.lake_uri[7:]), labels, [f"2025-03-{d:02d}" for d in range(1, 9)], ["2025-06-30"] * 8)
    statements = {c: "2025-02-28" for c in range(1, 9)} | {6: "2024-10-31"}  # ttl 92 days: 121 days before
    _feature_rows(lake, profiled=[1, 2, 3, 4, 5, 6], statements=statements)
    open_store(settings, CONTRACT).apply(build_repo(CONTRACT, offline_root(settings, CONTRACT)).objects)

    training = build_training_set(settings, CONTRACT, NOW, TrainingConfig(min_rows=3, min_positives=1))

    assert training.coverage.model_dump() == {
        "rows": 8,
        "left_out": 3,
        "missing": {"profiles": 2, "credit_history": 1},
        "coverage": {"profiles": 0.75, "credit_history": 0.875},
    }
    frame = pd.read_parquet(training.path)
    assert frame["customer_id"].tolist() == [1, 2, 3, 4, 5]
    assert training.rows == 5 and training.positives == 2  # customers 1 and 4
    assert frame["age"].notna().all() and frame["balance"].notna().all()  # no application trains without them
    assert training.window_end == datetime(2025, 3, 5, tzinfo=UTC)


def test_a_flat_table_trains_on_its_labelled_rows_with_every_sensitive_attribute(tmp_path: Path) -> None:
    """One table holds inputs, attributes and label: read once, rows still waiting for their label left out, counted."""
    from one_table import CREATED, flat_contract, flat_rows, write_flat

    _, contract = flat_contract(tmp_path)
    rows = flat_rows(300, unlabelled=40)
    lake = write_flat(tmp_path.as_uri(), contract, rows)
    frame = entity_frame(lake, contract, CREATED)
    assert len(frame) == 260 and frame.attrs["unlabelled_rows"] == 40
    assert frame["defaulted"].notna().all()
    assert {"age", "sex"} <= set(frame.columns)  # sensitive, not inputs: carried for the fairness gate
    labelled = rows.iloc[:260].set_index("application_id")
    assert frame.set_index("application_id")["sex"].equals(labelled.loc[frame["application_id"], "sex"])
    assert list(frame[EVENT_TIMESTAMP]) == sorted(frame[EVENT_TIMESTAMP])
    # rows made after the cut-off are neither trained on nor counted as waiting
    cutoff = datetime(2025, 7, 1, tzinfo=UTC)
    early = entity_frame(lake, contract, cutoff)
    before = rows[rows["applied_at"] <= cutoff]
    assert len(early) == before["defaulted"].notna().sum()
    assert early.attrs["unlabelled_rows"] == before["defaulted"].isna().sum()


@pytest.mark.slow
def test_a_flat_table_is_retrieved_without_a_stored_feature_view(settings: Settings) -> None:
    """No feature table: the training set is the entity frame with the ratios, as Feast's on-demand view computes."""
    from one_table import CREATED, flat_contract, flat_rows, write_flat

    from feature_repo.definitions import build_repo
    from feature_repo.store import offline_root, open_store

    _, contract = flat_contract(settings.state_dir)
    rows = flat_rows(600, unlabelled=50)
    write_flat(settings.lake_uri, contract, rows)
    open_store(settings, contract).apply(build_repo(contract, offline_root(settings, contract)).objects)

    training = build_training_set(settings, contract, CREATED, TrainingConfig(min_rows=100, min_positives=10))

    assert training.rows == 550 and training.unlabelled_rows == 50
    assert training.coverage.coverage == {} and training.coverage.left_out == 0
    frame = pd.read_parquet(training.path).set_index("application_id")
    source = rows.set_index("application_id").loc[frame.index]
    assert np.allclose(frame["loan_to_income"], source["loan_amount"] / source["income"])
    assert {"age", "sex", SPLIT} <= set(frame.columns)
    assert set(frame[SPLIT]) == {"train", "validation", "test"}
