"""The retrain guards: each defers an automatic retrain with its reason, in order, and lets a justified one go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from tasks.train.guards import GuardVerdict, RetrainGuards, label_coverage, recent_retrains, without_labels

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
GUARDS = RetrainGuards(enabled=True, cooldown_minutes=60, max_per_day=2, min_new_labels=3)


def test_a_first_automatic_retrain_is_not_held_back_by_time() -> None:
    verdict = recent_retrains(GUARDS, NOW, [])
    assert verdict.deferred is None and verdict.versions_last_24h == 0 and verdict.minutes_since_last_version is None


def test_the_cool_down_defers_a_retrain_soon_after_the_last_automatic_one() -> None:
    verdict = recent_retrains(GUARDS, NOW, [NOW - timedelta(hours=5), NOW - timedelta(minutes=30)])
    assert verdict.deferred == "cool-down: the last automatic retrain registered its version 30.0 min ago (< 60.0)"
    assert verdict.minutes_since_last_version == 30.0


def test_the_daily_budget_defers_once_spent() -> None:
    spent = recent_retrains(GUARDS, NOW, [NOW - timedelta(hours=2), NOW - timedelta(hours=23)])
    assert spent.deferred == "daily budget: 2 automatic retrains in the last 24 hours (max 2)"
    yesterday = recent_retrains(GUARDS, NOW, [NOW - timedelta(hours=2), NOW - timedelta(hours=25)])
    assert (
        yesterday.deferred is None and yesterday.versions_last_24h == 1 and yesterday.minutes_since_last_version == 120
    )


def test_labels_the_champion_has_seen_do_not_count() -> None:
    matured = pd.Series(pd.to_datetime(["2025-01-10", "2025-02-10", "2025-03-10", "2025-03-20"], utc=True))
    seen_until = datetime(2025, 2, 15, tzinfo=UTC)
    starved = label_coverage(GuardVerdict(versions_last_24h=0), GUARDS, matured, seen_until)
    assert starved.deferred == (
        "not enough labels: 2 applications with a matured label after the champion's training window "
        "(ended 2025-02-15); need 3"
    )
    assert starved.new_labels == 2 and starved.champion_window_end == seen_until
    assert starved.versions_last_24h == 0  # what the earlier guards saw is kept
    enough = label_coverage(GuardVerdict(), GUARDS, matured, datetime(2025, 1, 1, tzinfo=UTC))
    assert enough.deferred is None and enough.new_labels == 4


def test_without_a_champion_every_matured_label_counts() -> None:
    matured = pd.Series(pd.to_datetime(["2025-01-10", "2025-02-10"], utc=True))
    verdict = label_coverage(GuardVerdict(), GUARDS, matured, None)
    assert verdict.deferred == "not enough labels: 2 applications with a matured label in all; need 3"


def test_no_usable_label_at_all_defers_with_the_datas_own_message() -> None:
    verdict = without_labels(GuardVerdict(versions_last_24h=1), "no matured labels by 2025-06-01")
    assert verdict.deferred == "not enough labels: no matured labels by 2025-06-01"
    assert verdict.versions_last_24h == 1
