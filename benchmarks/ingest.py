"""Ingest benchmarks: the synthetic generator, row-level validation and materialization into the online store."""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.measure import REPEATS, Measurement, in_child
from benchmarks.wide import wide_contract, wide_frame

ROWS_PER_CUSTOMER = 8.7  # profile + 6 statements + application + ~0.7 matured outcomes


def _generate(customers: int, folder: str) -> dict[str, float]:
    from samples.synthetic import SyntheticConfig, write_synthetic

    started = time.perf_counter()
    summary = write_synthetic(SyntheticConfig(customers=customers, seed=11), folder)
    return {"rows": float(summary.total_rows), "seconds": time.perf_counter() - started}


def _raw_write(rows: int, folder: str) -> dict[str, float]:
    """The floor: the same number of rows of random columns, made in one go and written to parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    rng = np.random.default_rng(11)
    columns = {f"f{i}": rng.random(rows) for i in range(7)}
    columns["ts"] = pa.array(rng.integers(0, 2**40, rows)).cast(pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table(columns), f"{folder}/raw.parquet", compression="zstd")
    return {"rows": float(rows), "seconds": time.perf_counter() - started}


def bench_generator(rows: int = 1_000_000) -> list[Measurement]:
    """Synthetic generator: rows/s against a raw numpy->parquet write, and peak memory at 1x and 3x size."""
    customers = math.ceil(rows / ROWS_PER_CUSTOMER)
    out: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        small = in_child(_generate, customers, f"{tmp}/gen1")
        raw = in_child(_raw_write, int(small["rows"]), f"{tmp}")
        shutil.rmtree(f"{tmp}/gen1")
        big = in_child(_generate, customers * 3, f"{tmp}/gen3")
        raw_big = in_child(_raw_write, int(big["rows"]), f"{tmp}")
    out.append(
        Measurement(
            "generator",
            f"throughput at {small['rows']:,.0f} rows",
            "rows/s",
            small["rows"] / small["seconds"],
            raw["rows"] / raw["seconds"],
            True,
            f"{small['seconds']:.1f} s for {small['rows']:,.0f} rows in 4 tables",
        )
    )
    out.append(
        Measurement(
            "generator",
            f"peak memory at {small['rows']:,.0f} rows",
            "MB",
            small["peak_mb"],
            raw["peak_mb"],
            False,
            "baseline holds all rows at once",
        )
    )
    out.append(
        Measurement(
            "generator",
            f"peak memory at {big['rows']:,.0f} rows",
            "MB",
            big["peak_mb"],
            raw_big["peak_mb"],
            False,
            f"3x the rows: {big['peak_mb'] / max(small['peak_mb'], 1e-9):.2f}x the memory "
            f"(baseline {raw_big['peak_mb'] / max(raw['peak_mb'], 1e-9):.2f}x)",
        )
    )
    return out


def _raw_checks(frame: Any, contract: Any, now: Any) -> Any:
    """The floor: the same rules as one vectorised pandas pass producing a per-row bad mask."""
    import numpy as np

    bad = np.zeros(len(frame), dtype=bool)
    spec = contract.tables["events"]
    bad |= frame[spec.event_time].isna().to_numpy()
    bad |= ((frame[spec.event_time] < contract.start) | (frame[spec.event_time] > now)).to_numpy()
    bad |= frame.duplicated(spec.primary_key, keep=False).to_numpy()
    bad |= frame["customer_id"].isna().to_numpy()
    for col in contract.columns_of("events"):
        values = frame[col.name]
        bad |= values.isna().to_numpy()
        if col.categories:
            bad |= ~values.isin(col.categories).to_numpy()
        else:
            bad |= ((values < col.min) | (values > col.max)).to_numpy()
    return bad


def bench_validation(rows: int = 1_000_000, columns: int = 30) -> list[Measurement]:
    """Row-level validation (types, GX suite, split) against a vectorised pandas check of the same rules."""
    from datetime import UTC, datetime

    from tasks.ingest.validation import validate

    contract = wide_contract(columns)
    frame = wide_frame(rows, columns, bad_share=0.01)
    now = datetime.now(UTC)
    validate(frame.head(1000), contract, "events", now)  # warm GX up (imports, context)
    ours_runs, raw_runs = [], []
    for _ in range(REPEATS):  # alternating, median of each: one slow run on a shared machine decides nothing
        started = time.perf_counter()
        result = validate(frame, contract, "events", now)
        ours_runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        raw_bad = _raw_checks(frame, contract, now)
        raw_runs.append(time.perf_counter() - started)
    ours, raw = statistics.median(ours_runs), statistics.median(raw_runs)
    if int(raw_bad.sum()) != result.rows_quarantined:
        raise RuntimeError(
            f"validation disagrees with the raw check: {result.rows_quarantined} vs {int(raw_bad.sum())}"
        )
    return [
        Measurement(
            "validation",
            f"{rows:,} rows x {columns} columns, 1% bad",
            "s",
            ours,
            raw,
            False,
            f"{result.rows_quarantined:,} rows quarantined by both; median of {REPEATS} alternating runs",
        )
    ]


def bench_materialize(rows: int = 100_000) -> list[Measurement]:
    """One day's profile batch into the SQLite online store: closedloop's ingest step vs Feast's default call."""
    from datetime import UTC, datetime

    import numpy as np
    import pandas as pd

    from closedloop.contract import contract_at
    from closedloop.lake import Lake, arrow_types
    from closedloop.settings import PROJECT_ROOT, load_settings
    from feature_repo.definitions import build_repo
    from feature_repo.store import open_store
    from samples.synthetic import SyntheticConfig, iter_blocks
    from tasks.ingest.tasks import materialize_features

    contract = contract_at(str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml"))
    now = datetime.now(UTC)
    profiles = pd.concat([b["profiles"].to_pandas() for b in iter_blocks(SyntheticConfig(customers=rows))])
    rng = np.random.default_rng(5)
    day = pd.Timestamp(now - timedelta(days=1)).floor("D")
    profiles["profile_at"] = (day + pd.to_timedelta(rng.integers(0, 86_400, len(profiles)), unit="s")).astype(
        "datetime64[us, UTC]"
    )

    def timed(side: str, frame: pd.DataFrame, folder: Path) -> float:
        settings = load_settings(state_dir=folder / side)
        lake = Lake.of(settings.lake_uri, contract.name)
        lake.write_offline("profiles", frame, "profile_at", "bench", now, arrow_types(contract, "profiles"))
        started = time.perf_counter()
        if side == "closedloop":
            materialize_features.fn(settings, contract, {"profiles": frame["profile_at"].min()}, now)
        else:
            store = open_store(settings, contract)
            store.apply(build_repo(contract, str(folder / side / "lake" / contract.name / "offline")).objects)
            store.materialize_incremental(end_date=now, feature_views=["profiles"])
        return time.perf_counter() - started

    figures = {}
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        for side in ("closedloop", "feast"):  # warm-up: imports and first connections are paid by neither side
            timed(side, profiles.head(100), Path(tmp) / "warm-up")
        for side in ("closedloop", "feast"):
            figures[side] = timed(side, profiles, Path(tmp))
    return [
        Measurement(
            "materialize",
            f"{len(profiles):,} rows of one day into SQLite",
            "rows/s",
            len(profiles) / figures["closedloop"],
            len(profiles) / figures["feast"],
            True,
            "both sides include applying the definitions; closedloop writes Feast's SQLite table in bulk",
        )
    ]
