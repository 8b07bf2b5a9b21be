"""The retrain guards: each defers an automatic retrain with its reason, in order, and lets a justified one go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from tasks.train.guards import (
    DEFERRED,
    TRAINED,
    Attempt,
    GuardVerdict,
    RetrainGuards,
    label_coverage,
    recent_retrains,
    without_labels,
)

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
GUARDS = RetrainGuards(enabled=True, cooldown_minutes=60, max_per_day=2, min_new_labels=3)


def _trained(started: datetime, minutes: float = 0, run: str = "r") -> Attempt:
    return Attempt(
        flow_run_id=run,
        started_by="event:e",
        started=started,
        ended=started + timedelta(minutes=minutes),
        outcome=TRAINED,
        detail="3",
    )


def _storm(times: list[datetime], guards: RetrainGuards = GUARDS, before: list[Attempt] | None = None) -> list[str]:
    """Each run of a storm decides in turn on what the earlier ones recorded (the lock orders them): the ids
    of the runs that went ahead."""
    attempts = list(before or [])
    went = []
    for i, now in enumerate(times):
        if recent_retrains(guards, now, attempts).deferred is None:
            attempts.append(Attempt(flow_run_id=f"run-{i}", started_by=f"event:{i}", started=now))
            went.append(f"run-{i}")
    return went


def test_a_first_automatic_retrain_is_not_held_back_by_time() -> None:
    verdict = recent_retrains(GUARDS, NOW, [])
    assert verdict.deferred is None and verdict.retrains_last_24h == 0 and verdict.minutes_since_last_retrain is None


def test_twenty_runs_at_the_same_instant_let_one_go() -> None:
    assert _storm([NOW] * 20) == ["run-0"]


def test_twenty_runs_spread_over_a_minute_let_one_go() -> None:
    assert _storm([NOW + timedelta(seconds=3 * i) for i in range(20)]) == ["run-0"]


def test_a_storm_that_lasts_longer_than_the_cool_down_lets_one_go_per_cool_down() -> None:
    """The runs turned away are not attempts: they do not push the cool-down on, or a storm would starve it."""
    every_five_minutes = [NOW + timedelta(minutes=5 * i) for i in range(20)]  # 95 minutes
    assert _storm(every_five_minutes, RetrainGuards(enabled=True, cooldown_minutes=60, max_per_day=9)) == [
        "run-0",
        "run-12",
    ]


def test_a_retrain_still_running_holds_the_cool_down() -> None:
    running = Attempt(flow_run_id="r1", started_by="event:a", started=NOW - timedelta(minutes=2))
    verdict = recent_retrains(GUARDS, NOW, [running])
    assert verdict.deferred == (
        "cool-down: the last automatic retrain (flow run r1) started (still running, failed or killed) "
        "2.0 min ago (< 60.0)"
    )


def test_a_failed_or_killed_retrain_counts_for_the_cool_down_and_the_budget() -> None:
    """A run that died leaves its record "started": the storm's next run does not retrain at once."""
    killed = Attempt(flow_run_id="r1", started_by="event:a", started=NOW - timedelta(minutes=10))
    assert _storm([NOW + timedelta(seconds=s) for s in range(0, 60, 3)], before=[killed]) == []
    spent = recent_retrains(
        GUARDS, NOW, [killed.model_copy(update={"started": NOW - timedelta(hours=h)}) for h in (2, 3)]
    )
    assert spent.deferred == "daily budget: 2 automatic retrains in the last 24 hours (max 2)"


def test_a_label_deferral_counts_for_the_cool_down_not_the_budget() -> None:
    deferred = Attempt(
        flow_run_id="r1",
        started_by="event:a",
        started=NOW - timedelta(minutes=31),
        ended=NOW - timedelta(minutes=30),
        outcome=DEFERRED,
        detail="not enough labels: 2 applications; need 3",
    )
    verdict = recent_retrains(GUARDS, NOW, [deferred])
    assert verdict.deferred == (
        "cool-down: the last automatic retrain (flow run r1) was deferred for labels 30.0 min ago (< 60.0)"
    )
    hours_ago = [deferred.model_copy(update={"started": NOW - timedelta(hours=h), "ended": None}) for h in (2, 3)]
    assert recent_retrains(GUARDS, NOW, hours_ago).deferred is None  # two deferrals spent no training


def test_the_cool_down_runs_from_the_end_of_a_retrain() -> None:
    long = _trained(NOW - timedelta(minutes=70), minutes=20)  # ended 50 minutes ago
    verdict = recent_retrains(GUARDS, NOW, [_trained(NOW - timedelta(hours=5)), long])
    assert verdict.deferred == "cool-down: the last automatic retrain (flow run r) registered v3 50.0 min ago (< 60.0)"
    assert verdict.minutes_since_last_retrain == 50.0
    assert recent_retrains(GUARDS, NOW + timedelta(minutes=11), [long]).deferred is None


def test_the_daily_budget_defers_once_spent() -> None:
    spent = recent_retrains(GUARDS, NOW, [_trained(NOW - timedelta(hours=2)), _trained(NOW - timedelta(hours=23))])
    assert spent.deferred == "daily budget: 2 automatic retrains in the last 24 hours (max 2)"
    yesterday = recent_retrains(GUARDS, NOW, [_trained(NOW - timedelta(hours=2)), _trained(NOW - timedelta(hours=25))])
    assert (
        yesterday.deferred is None and yesterday.retrains_last_24h == 1 and yesterday.minutes_since_last_retrain == 120
    )


def test_labels_the_champion_has_seen_do_not_count() -> None:
    matured = pd.Series(pd.to_datetime(["2025-01-10", "2025-02-10", "2025-03-10", "2025-03-20"], utc=True))
    seen_until = datetime(2025, 2, 15, tzinfo=UTC)
    starved = label_coverage(GuardVerdict(retrains_last_24h=0), GUARDS, matured, seen_until)
    assert starved.deferred == (
        "not enough labels: 2 applications with a matured label after the champion's training window "
        "(ended 2025-02-15); need 3"
    )
    assert starved.new_labels == 2 and starved.champion_window_end == seen_until
    assert starved.retrains_last_24h == 0  # what the earlier guards saw is kept
    enough = label_coverage(GuardVerdict(), GUARDS, matured, datetime(2025, 1, 1, tzinfo=UTC))
    assert enough.deferred is None and enough.new_labels == 4


def test_without_a_champion_every_matured_label_counts() -> None:
    matured = pd.Series(pd.to_datetime(["2025-01-10", "2025-02-10"], utc=True))
    verdict = label_coverage(GuardVerdict(), GUARDS, matured, None)
    assert verdict.deferred == "not enough labels: 2 applications with a matured label in all; need 3"


def test_no_usable_label_at_all_defers_with_the_datas_own_message() -> None:
    verdict = without_labels(GuardVerdict(retrains_last_24h=1), "no matured labels by 2025-06-01")
    assert verdict.deferred == "not enough labels: no matured labels by 2025-06-01"
    assert verdict.retrains_last_24h == 1
