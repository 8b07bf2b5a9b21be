"""Scoring decisions: one threshold, group thresholds drawn per request, fairness groups, the model matrix."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import Contract
from tasks.score.scoring import ScoringInputError, ScoringModel, decisions, frame_matrix, policy_group

POLICY = {
    "18-25": {"p0": 1.0, "threshold0": 0.3, "threshold1": 0.9},  # always threshold0
    "25-35": {"p0": 0.5, "threshold0": 0.2, "threshold1": 0.8},  # a coin per request key
}


def model(policy: dict[str, dict[str, float]] | None = None) -> ScoringModel:
    return ScoringModel(
        version="4", booster=None, columns=["income"], threshold=0.5, policy=policy, policy_attribute="age"
    )


def test_one_threshold_refuses_at_and_above_it() -> None:
    single = model()
    assert single.decide(0.5, "k", None) == "refuse" and single.decide(0.49, "k", None) == "approve"
    assert decisions(single, np.array([0.1, 0.5, 0.9])).tolist() == ["approve", "refuse", "refuse"]


def test_group_thresholds_mix_two_thresholds_by_a_stable_draw_per_request() -> None:
    grouped = model(POLICY)
    assert grouped.decide(0.31, "any", "18-25") == "refuse" and grouped.decide(0.3, "any", "18-25") == "approve"
    answers = [grouped.decide(0.5, str(key), "25-35") for key in range(400)]
    assert 150 < answers.count("refuse") < 250  # about half the requests drew the lower threshold
    assert answers == [grouped.decide(0.5, str(key), "25-35") for key in range(400)]  # the same key, the same draw
    with pytest.raises(ScoringInputError, match="group thresholds"):
        decisions(grouped, np.array([0.5]))  # a batch has no request keys to draw from


def test_a_group_without_a_threshold_is_decided_by_the_single_threshold_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grouped = model(POLICY)  # its single threshold: 0.5
    with caplog.at_level("WARNING", logger="tasks.score.scoring"):
        answers = [grouped.decide(score, str(key), "65-101") for key, score in enumerate([0.49, 0.5, 0.9])]
        assert grouped.decide(0.2, "k", None) == "approve"  # no value: the 'unknown' group, unseen too
    assert answers == ["approve", "refuse", "refuse"]
    assert grouped.unseen_groups == {"65-101": 3, "unknown": 1}
    assert [r.getMessage() for r in caplog.records] == [
        "v4 has no decision threshold for age group '65-101': decided by its single threshold 0.5000",
        "v4 has no decision threshold for age group 'unknown': decided by its single threshold 0.5000",
    ]
    assert grouped.decide(0.31, "any", "18-25") == "refuse"  # the groups it has thresholds for keep them


def test_policy_group_places_a_value_in_its_band(contract: Contract) -> None:
    assert policy_group(contract, "age", 24) == "18-25"
    assert policy_group(contract, "age", 25) == "25-35"
    assert policy_group(contract, "age", 100.5) == "65-101"
    assert policy_group(contract, "age", 17) == "unknown"
    assert policy_group(contract, "age", math.nan) == "unknown"
    assert policy_group(contract, "age", "old") == "unknown"
    assert policy_group(contract, "sex", "female") == "female"
    assert policy_group(contract, "sex", None) == "unknown"


def test_frame_matrix_codes_categories_and_makes_inf_missing(contract: Contract) -> None:
    frame = pd.DataFrame(
        {
            "loan_purpose": ["car", "crypto", None],
            "income": [1.0, np.inf, None],
            "debt_to_income": ["0.5", "x", "1"],
        }
    )
    matrix = frame_matrix(frame, contract, ["income", "loan_purpose", "debt_to_income"])
    assert matrix.flags.c_contiguous and matrix.dtype == np.float64
    assert matrix[0].tolist() == [1.0, 1.0, 0.5]  # car is the contract's second category
    assert np.isnan(matrix[1]).tolist() == [True, True, True]  # inf, an unseen category, text that is no number
    assert np.isnan(matrix[2, :2]).all() and matrix[2, 2] == 1.0
