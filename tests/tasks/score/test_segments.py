"""Batch scoring: the window's applications as entities, segments, refusals of what batch cannot decide."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import Contract
from tasks.score import segments
from tasks.score.scoring import ScoringModel
from tasks.shared.features import EVENT_TIMESTAMP


def at(day: int) -> datetime:
    return datetime(2024, 3, day, tzinfo=UTC)


def applications(contract: Contract) -> pd.DataFrame:
    inputs = [c.name for c in contract.columns_of(contract.prediction) if c.is_model_input]
    frame = pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4],
            "application_id": [13, 11, 12, 14],
            "applied_at": pd.to_datetime([at(3), at(1), at(2), at(9)]),
            "not_a_model_input": [0, 0, 0, 0],
        }
    )
    for name in inputs:
        frame[name] = 1
    return frame


def test_the_entities_are_the_windows_applications_in_time_order(contract: Contract) -> None:
    entities = segments.window_entities(applications(contract), contract, at(1), at(9))
    assert entities["application_id"].tolist() == [11, 12, 13]  # the end is exclusive
    assert list(entities.columns[:3]) == ["customer_id", "application_id", EVENT_TIMESTAMP]
    assert "not_a_model_input" not in entities and "loan_amount" in entities
    assert segments.window_entities(pd.DataFrame(), contract, at(1), at(9)).empty  # an empty lake
    with pytest.raises(ValueError, match="empty window"):
        segments.check_window(at(2), at(2))


def test_segments_are_named_after_the_run() -> None:
    assert segments.segment_names("run", rows=10, segment_rows=10) == ["run"]
    assert segments.segment_names("run", rows=11, segment_rows=5) == ["run-0000", "run-0001", "run-0002"]


def test_a_version_with_group_thresholds_is_refused() -> None:
    grouped = ScoringModel(
        version="4", booster=None, columns=[], threshold=0.5, policy={"a": {}}, policy_attribute="age"
    )
    with pytest.raises(RuntimeError, match="v4 decides with group thresholds on age"):
        segments.check_single_threshold(grouped)
    segments.check_single_threshold(ScoringModel(version="5", booster=None, columns=[], threshold=0.5))


def test_the_scores_table_has_keys_times_and_decisions(contract: Contract) -> None:
    entities = segments.window_entities(applications(contract), contract, at(1), at(9))
    model = ScoringModel(version="5", booster=None, columns=[], threshold=0.5)
    table = segments.scores_table(entities, contract, model, np.array([0.1, 0.6, 0.5]), at(20))
    assert list(table.columns) == [
        "customer_id",
        "application_id",
        "applied_at",
        "probability",
        "decision",
        "model_version",
        "scored_at",
    ]
    assert table["decision"].tolist() == ["approve", "refuse", "refuse"]
    assert str(table["applied_at"].dtype) == "datetime64[us, UTC]" and table["applied_at"][0] == pd.Timestamp(at(1))
    assert (table["model_version"] == "5").all() and table["scored_at"][0] == pd.Timestamp(at(20))


def test_text_columns_stay_strings_in_a_segment_without_values() -> None:
    typed = segments.typed_entities(pd.DataFrame({"channel": pd.Series([None, None], dtype=object), "n": [1, 2]}))
    assert str(typed["channel"].dtype) == "string" and typed["n"].dtype == np.int64
