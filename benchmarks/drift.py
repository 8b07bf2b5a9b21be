"""Drift benchmark: window verdicts against the stored reference profile vs raw numpy PSI; the Evidently report."""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.measure import REPEATS, Measurement
from benchmarks.wide import wide_contract, wide_frame


def _raw_psi(current: Any, edges: Any, ref_shares: Any) -> float:
    """Textbook PSI with numpy alone: histogram on the reference deciles, or category counts."""
    import numpy as np

    if edges is None:
        values, counts = np.unique(current.astype(str), return_counts=True)
        cur = dict(zip(values.tolist(), (counts / len(current)).tolist(), strict=True))
        r = np.maximum(np.array(list(ref_shares.values())), 1e-4)
        c = np.maximum(np.array([cur.get(k, 0.0) for k in ref_shares]), 1e-4)
    else:
        c = np.maximum(np.histogram(current, edges)[0] / len(current), 1e-4)
        r = np.maximum(ref_shares, 1e-4)
    return float(np.sum((c - r) * np.log(c / r)))


def _raw_reference(reference: Any, names: list[str]) -> dict[str, tuple[Any, Any]]:
    """The raw baseline's reference per column: (decile edges, shares per decile), or (None, share per category)."""
    import numpy as np

    rows = len(reference)
    raw_reference: dict[str, tuple[Any, Any]] = {}
    for name in names:
        x = reference[name].to_numpy()
        if x.dtype == object:
            values, counts = np.unique(x.astype(str), return_counts=True)
            raw_reference[name] = (None, dict(zip(values.tolist(), (counts / rows).tolist(), strict=True)))
        else:
            edges = np.concatenate([[-np.inf], np.quantile(x, np.linspace(0, 1, 11)[1:-1]), [np.inf]])
            raw_reference[name] = (edges, np.histogram(x, edges)[0] / rows)
    return raw_reference


def bench_drift(rows: int = 1_000_000, columns: int = 30) -> list[Measurement]:
    """Drift verdicts for a window against the stored reference profile vs raw numpy PSI; the Evidently report."""
    import numpy as np

    from tasks.monitor.report import EVIDENTLY_SAMPLE_ROWS, drift_report
    from tasks.shared.drift import drift_rules, profile_frame, window_drift

    contract = wide_contract(columns)
    names = [c.name for c in contract.columns]
    reference = wide_frame(rows, columns, bad_share=0.0)[names]
    current = wide_frame(rows, columns, bad_share=0.0)[names].sample(frac=1.0, random_state=5, ignore_index=True)
    for name in names[: columns // 3 : 3]:  # a third of the float columns move by 10% of their range
        current[name] = current[name] + 100.0
    # the reference side is paid once, when the version is registered: neither side is timed on it
    profile = profile_frame(reference, contract, names, np.zeros(rows))
    rules = drift_rules(contract, names)
    raw_reference = _raw_reference(reference, names)
    arrays = {name: current[name].to_numpy() for name in names}
    ours_runs, raw_runs = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        verdict = window_drift(profile, current, rules, None)
        ours_runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        raw = {name: _raw_psi(arrays[name], *raw_reference[name]) for name in names}
        raw_runs.append(time.perf_counter() - started)
    ours = {c["column"]: c for c in verdict["columns"]}
    flagged_raw = {n for n, v in raw.items() if v >= 0.2}
    if set(verdict["drifted"]) != flagged_raw:
        raise RuntimeError(
            f"drift verdicts disagree with raw PSI: {sorted(verdict['drifted'])} vs {sorted(flagged_raw)}"
        )
    worst = max(abs(ours[n]["score"] - raw[n]) for n in names)
    sample = reference.sample(n=EVIDENTLY_SAMPLE_ROWS, random_state=0)
    drift_report(sample, current.head(1000), contract, names, drift_share=0.0)  # imports and first-call set-up
    started = time.perf_counter()
    theirs = drift_report(sample, current, contract, names, drift_share=0.0).columns
    report_seconds = time.perf_counter() - started
    full_window = _evidently_full(reference, current, contract, names)
    agree = sum(theirs[n] == ours[n]["drifted"] for n in names)
    return [
        Measurement(
            "drift",
            f"verdicts, {rows:,} current rows x {columns} columns",
            "s",
            statistics.median(ours_runs),
            statistics.median(raw_runs),
            False,
            f"{len(verdict['drifted'])} columns drifted by both; PSI differs from raw by at most {worst:.1e}; "
            f"median of {REPEATS}",
        ),
        Measurement(
            "drift",
            f"Evidently report of a {rows:,}-row window ({EVIDENTLY_SAMPLE_ROWS:,}-row samples)",
            "s",
            report_seconds,
            full_window,
            False,
            f"baseline: Evidently's DataDriftPreset(method=psi) on the full window and reference; "
            f"verdicts agree with ours on {agree}/{len(names)} columns",
        ),
    ]


def _evidently_full(reference: Any, current: Any, contract: Any, names: list[str]) -> float:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from tasks.shared.drift import is_categorical

    categorical = [n for n in names if is_categorical(contract, n)]
    definition = DataDefinition(
        numerical_columns=[n for n in names if n not in categorical], categorical_columns=categorical
    )
    started = time.perf_counter()
    Report([DataDriftPreset(method="psi")]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    return time.perf_counter() - started
