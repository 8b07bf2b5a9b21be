"""The monitor run's Prefect artifact: a sentence and one markdown section per check, from a window's record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.monitor import artifact
from tasks.monitor.policy import Alert, MonitorPolicy
from tasks.monitor.records import window_label
from tasks.monitor.report import Agreement
from tasks.monitor.verification import Comparison, Verification
from tasks.monitor.window import DataQuality, EstimatedPerformance, Performance, Span, Verdicts, WindowRecord

SPAN = Span(start="2026-04-03T10:00:00+00:00", end="2026-04-03T11:00:00+00:00")
SECTIONS = [
    "## Feature drift",
    "## Score drift",
    "## Data quality",
    "## Estimated performance (label-free)",
    "## Realized performance",
]


def judged() -> WindowRecord:
    """A judged window: income drifted, the score did not, one column out of range, no label matured yet."""
    columns = [
        {"column": "income", "method": "psi", "score": 0.61, "threshold": 0.2, "drifted": True},
        {"column": "utilisation", "method": "psi", "score": 0.01, "threshold": 0.2, "drifted": False},
    ]
    score = {"column": "score", "method": "psi", "score": 0.05, "threshold": 0.2, "drifted": False}
    verdicts = Verdicts(
        drift={"rows": 900, "columns": columns, "drifted": ["income"], "share": 0.5, "score": score},
        quality=DataQuality(columns={"utilisation": {"out_of_range": 0.002}}, worst_share=0.002),
        performance=Performance(
            labelled_rows=3, reference={"roc_auc": 0.83}, verdict="no_verdict", reason="3 labelled rows"
        ),
        estimated_performance=EstimatedPerformance(expected_auc=0.81, reference_expected_auc=0.82, verdict="ok"),
        violations=["feature_drift"],
    )
    return WindowRecord(
        dataset="credit_synthetic",
        window=SPAN,
        champion="3",
        rows=900,
        status="judged",
        verdicts=verdicts,
        alert=Alert(alert=True, reason="2 of the last 3 judged windows violated"),
        event_id="e-1",
    )


def test_a_judged_window_reads_as_a_sentence_and_a_section_per_check() -> None:
    record = judged()
    said = artifact.description(record)
    assert said == (
        "Window 2026-04-03 10:00-11:00 UTC of credit_synthetic v3: judged on 900 served rows, 1 violation "
        "(feature drift); the drift alert was raised."
    )
    page = artifact.markdown(record, MonitorPolicy())
    assert [line for line in page.splitlines() if line.startswith("## ")] == SECTIONS
    assert "1 of 2 features drifted" in page and "| income | psi | 0.6100 | 0.2 | True |" in page
    assert "psi 0.0500, threshold 0.2: **ok**" in page and "| utilisation | out of range | 0.20% |" in page
    assert "Not judged yet: 3 labelled rows." in page and "Drift alert **raised** (event `e-1`)" in page


def test_the_verification_the_report_s_page_and_a_skew_entry_get_their_sections() -> None:
    verification = Verification(
        champion="3",
        earlier_violations=["feature_drift"],
        still_violated=[],
        labelled_rows=600,
        comparison=Comparison(champion_auc=0.85, previous="2", previous_auc=0.84),
        verdict="pass",
    )
    report = Agreement(
        uri="file:///lake/r.html",
        mlflow_run="run-1",
        url="http://127.0.0.1:5000/#/experiments/1/runs/run-1/artifacts/evidently/data_drift.html",
        compared_columns=2,
        disagree=[],
        evidently_drifted=["income"],
        drift_share=0.0,
        dataset_drift=True,
        evidently_dataset_drift=True,
    )
    skew = {
        "status": "judged",
        "feature_service": "credit_synthetic_v1",
        "window_rows": 900,
        "sampled": 300,
        "seed": 0,
        "tolerance": 1e-6,
        "max_share": 0.01,
    }
    record = judged().model_copy(update={"verification": verification, "evidently": report, "skew": skew})
    page = artifact.markdown(record, MonitorPolicy())
    headings = [line for line in page.splitlines() if line.startswith("## ")]
    assert headings == [*SECTIONS, "## Training-serving skew", "## Post-deploy verification", "## Evidently report"]
    assert f"[Evidently data drift report]({report.url})" in page and "file://" not in page
    assert "Evidently says **drifted**, the monitor **drifted**" in page
    assert "v3's first judged window: **pass**" in page and "v3 0.8500, v2 0.8400" in page
    assert "300 of 900 requests re-read through credit_synthetic_v1" in page


def test_a_window_without_a_verdict_says_why() -> None:
    record = WindowRecord(dataset="credit_synthetic", window=SPAN, champion="3", rows=12, status="too_few_rows")
    assert artifact.description(record) == (
        "Window 2026-04-03 10:00-11:00 UTC of credit_synthetic v3: not judged, too few served requests to judge "
        "(12 served rows)."
    )
    assert "## " not in artifact.markdown(record, MonitorPolicy())


def test_a_window_is_named_to_the_minute_or_to_the_second_when_its_ends_have_seconds() -> None:
    end = datetime(2026, 4, 3, 11, tzinfo=UTC)
    assert window_label(end - timedelta(hours=1), end) == "2026-04-03 10:00-11:00 UTC"
    assert window_label(end - timedelta(days=1), end) == "2026-04-02 11:00 - 2026-04-03 11:00 UTC"
    assert (
        window_label(end - timedelta(seconds=4), end + timedelta(microseconds=1)) == "2026-04-03 10:59:56-11:00:00 UTC"
    )
