"""The training set's entity frame (matured labels only, in time then key order), its checks and how it is read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from closedloop.contract import load_contract
from closedloop.lake import Lake, arrow_types
from closedloop.settings import PROJECT_ROOT
from tasks.shared.features import EVENT_TIMESTAMP, SPLIT, feature_names
from tasks.train.dataset import TrainingSet, enough_labels, entity_frame, frame_hash, load_training
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
    )
    assert training.path == path
    data = load_training(training, CONTRACT)
    assert data.labels.tolist() == [1, 0, 0, 1]
    assert list(data.features.columns) == feature_names(CONTRACT)  # the model matrix only, no attribute or split
    assert data.split("train").tolist() == [True, True, False, False]
    assert data.split("test").tolist() == [False, False, False, True]
