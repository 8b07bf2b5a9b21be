"""Fitting: time and seeded splits, the model matrix, the training configuration and the random search."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from pydantic import ValidationError

from closedloop.contract import load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.shared.features import EVENT_TIMESTAMP
from tasks.train.fit import TUNED, TrainingConfig, Trial, assign_splits, choose, search_space, trial_of

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
TAIWAN = load_contract(PROJECT_ROOT / "datasets/taiwan_credit_default/contract.yaml")


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


def test_the_configuration_refuses_unknown_knobs_and_out_of_range_values() -> None:
    with pytest.raises(ValidationError, match="n_trees"):
        TrainingConfig(n_trees=10)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="window_days"):
        TrainingConfig(window_days=7)
    with pytest.raises(ValidationError, match="engine"):
        TrainingConfig(engine="spark")  # type: ignore[arg-type]


def test_the_search_keeps_the_base_first_and_varies_only_the_tuned_knobs() -> None:
    base = TrainingConfig(n_estimators=300, window_days=90)
    configs = search_space(base, 4, seed=3)
    assert len(configs) == 4
    assert configs[0] == base.model_copy(update={"n_jobs": 1})
    assert all(c.n_estimators == 300 and c.window_days == 90 and c.n_jobs == 1 for c in configs)
    assert len({tuple(getattr(c, k) for k in TUNED) for c in configs}) == 4
    assert search_space(base, 4, seed=3) == configs  # seeded


def test_the_final_fit_takes_the_best_trials_parameters() -> None:
    base = TrainingConfig()
    trials = [
        Trial(params={"max_depth": 4, "learning_rate": 0.05}, validation_auc=0.70, best_iteration=10),
        Trial(params={"max_depth": 6, "learning_rate": 0.1}, validation_auc=0.75, best_iteration=20),
        Trial(params={"max_depth": 3, "learning_rate": 0.2}, validation_auc=0.75, best_iteration=30),
    ]
    config, tuning = choose(base, trials)
    assert (config.max_depth, config.learning_rate, config.n_jobs) == (6, 0.1, base.n_jobs)  # first of the ties
    assert tuning.trials == trials
    assert tuning.chosen == {k: getattr(config, k) for k in TUNED}
    assert tuning.model_dump()["chosen"]["max_depth"] == 6 and isinstance(tuning.chosen["max_depth"], int)


def test_a_trial_records_its_parameters_and_validation_result() -> None:
    config = TrainingConfig(max_depth=5)
    trial = trial_of(config, SimpleNamespace(best_score=0.81, best_iteration=42))
    assert trial.validation_auc == 0.81 and trial.best_iteration == 42
    assert trial.params["max_depth"] == 5 and set(trial.params) == set(TUNED)
