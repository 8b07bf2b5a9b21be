from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from closedloop.contract import load_contract
from closedloop.lake import Lake
from tasks.shared.features import EVENT_TIMESTAMP
from tasks.train.fit import TrainingConfig, TrainingDataError, assign_splits, entity_frame

REPO = Path(__file__).resolve().parents[2]
CONTRACT = load_contract(REPO / "datasets/credit_synthetic/contract.yaml")
TAIWAN = load_contract(REPO / "datasets/taiwan_credit_default/contract.yaml")
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
    lake.write_offline("applications", apps, "applied_at", "b1", NOW)
    lake.write_offline("outcomes", outcomes, "observed_at", "b1", NOW)
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


def test_time_ordered_splits_test_on_the_latest_rows() -> None:
    frame = pd.DataFrame({EVENT_TIMESTAMP: pd.date_range("2025-01-01", periods=100, freq="D", tz="UTC")[::-1]})
    split = assign_splits(frame, CONTRACT, TrainingConfig(test_share=0.2, validation_share=0.1))
    assert split.value_counts().to_dict() == {"train": 70, "test": 20, "validation": 10}
    assert frame[EVENT_TIMESTAMP][split == "test"].min() > frame[EVENT_TIMESTAMP][split == "validation"].max()
    assert frame[EVENT_TIMESTAMP][split == "validation"].min() > frame[EVENT_TIMESTAMP][split == "train"].max()


def test_unordered_data_gets_a_seeded_random_split() -> None:
    frame = pd.DataFrame({EVENT_TIMESTAMP: pd.Timestamp("2005-10-01", tz="UTC")}, index=range(100))
    first = assign_splits(frame, TAIWAN, TrainingConfig(seed=1))
    assert first.equals(assign_splits(frame, TAIWAN, TrainingConfig(seed=1)))
    assert not first.equals(assign_splits(frame, TAIWAN, TrainingConfig(seed=2)))


def test_infinite_values_become_missing_and_unknown_categories_are_not_invented() -> None:
    from tasks.shared.features import feature_names, typed_features

    row = {name: 1.0 for name in feature_names(CONTRACT)}
    row.update(
        education="university",
        region="mars",
        home_ownership="own",
        loan_purpose="car",
        channel=None,
        income=float("inf"),
        debt_to_income=float("-inf"),
    )
    frame = typed_features(pd.DataFrame([row]), CONTRACT)
    assert pd.isna(frame.loc[0, "income"]) and pd.isna(frame.loc[0, "debt_to_income"])
    assert pd.isna(frame.loc[0, "region"])  # not one of the contract's categories
    assert list(frame["education"].cat.categories) == CONTRACT.column("education").categories
    assert list(frame.columns) == feature_names(CONTRACT)


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
    lake.write_offline("applications", later, "applied_at", "b2", NOW)
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
    lake.write_offline("outcomes", again, "observed_at", "b2", NOW)  # the same application's outcome twice
    repeated = r"1 value\(s\) of \['application_id'\] appear in more than one outcomes row"
    with pytest.raises(TrainingDataError, match=repeated):
        entity_frame(lake, CONTRACT, NOW)
