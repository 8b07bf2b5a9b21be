"""Post-deploy verification verdicts: which window is verified, remaining violations, the AUC comparison."""

from __future__ import annotations

import numpy as np

from tasks.monitor import verification


def judged(champion: str, violations: list[str], status: str = "judged") -> dict[str, object]:
    return {"champion": champion, "status": status, "violations": violations}


def test_only_the_first_judged_window_of_a_new_champion_is_verified() -> None:
    earlier = [judged("1", ["feature_drift", "score_drift"]), judged("1", [], status="no_data")]
    assert verification.replaced_champion_violations(earlier, "2") == ["feature_drift", "score_drift"]
    assert verification.replaced_champion_violations([*earlier, judged("2", [])], "2") is None  # verified already
    assert verification.replaced_champion_violations([], "2") is None  # the first champion: nothing to compare


def test_without_a_comparison_the_verdict_is_about_the_violations_only() -> None:
    cleared = verification.uncompared("2", ["feature_drift"], ["data_quality"], verification.NO_PREVIOUS)
    assert cleared.verdict == "pass" and cleared.still_violated == []
    assert cleared.as_record() == {
        "champion": "2",
        "earlier_violations": ["feature_drift"],
        "still_violated": [],
        "comparison": "no previous champion",
        "verdict": "pass",
    }
    remaining = verification.uncompared(
        "2", ["score_drift", "feature_drift"], ["feature_drift"], verification.TOO_FEW_LABELS, labelled_rows=12
    )
    assert remaining.verdict == "violations remain" and remaining.still_violated == ["feature_drift"]
    assert remaining.as_record()["labelled_rows"] == 12 and not remaining.needs_rollback


def test_enough_labels_means_fifty_rows_of_both_classes() -> None:
    assert verification.enough_labels(np.array([0, 1] * 25))
    assert not verification.enough_labels(np.array([0, 1] * 24))
    assert not verification.enough_labels(np.zeros(500, dtype=int))
    assert not verification.enough_labels(np.ones(500, dtype=int))


def test_a_champion_worse_than_previous_by_more_than_the_margin_is_to_be_rolled_back() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    skilled = y * 0.5 + rng.random(600) * 0.5
    noise = rng.random(600)
    worse = verification.compare("3", [], [], "2", y, noise, skilled, margin=0.01)
    assert worse.needs_rollback and worse.verdict == "roll back"
    assert worse.rollback_reason and worse.rollback_reason.startswith("post-deploy: v3 AUC 0.")
    assert isinstance(worse.comparison, verification.Comparison) and worse.comparison.previous == "2"
    assert worse.comparison.champion_auc < 0.6 < worse.comparison.previous_auc
    done = worse.rolled_back({"champion": "2", "rolled_back": "3"}, "event-1")
    assert done.verdict == "rolled back" and not done.needs_rollback
    record = done.as_record()
    assert "rollback_reason" not in record  # the reason travels in the event and the registry's history
    assert record["rollback"] == {"champion": "2", "rolled_back": "3"} and record["event_id"] == "event-1"
    assert record["labelled_rows"] == 600 and record["comparison"]["previous_auc"] > 0.6


def test_a_champion_within_the_margin_passes() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    scores = y * 0.5 + rng.random(600) * 0.5
    same = verification.compare("3", ["feature_drift"], [], "2", y, scores, scores, margin=0.01)
    assert same.verdict == "pass" and not same.needs_rollback and "rollback" not in same.as_record()
    assert isinstance(same.comparison, verification.Comparison)
    assert same.comparison.champion_auc == same.comparison.previous_auc > 0.7
    noise = rng.random(600)
    tolerated = verification.compare("3", ["feature_drift"], ["feature_drift"], "2", y, noise, scores, margin=0.6)
    assert tolerated.verdict == "violations remain" and not tolerated.needs_rollback
