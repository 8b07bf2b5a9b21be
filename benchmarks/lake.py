"""Lake benchmarks: one batch into a data set that already holds many rows, and the memory of a large batch.

A team's lake grows by batches for years; what a batch costs must not grow with it. The cross-batch key check
(:mod:`tasks.ingest.stored_keys`), the typed write and the atomic commit (staged, ledgered, moved into place)
run on every batch; the baseline is the same batch into an empty data set, measured in the same run.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.measure import Measurement, in_child

STORED_BATCH = 1_000_000  # rows per stored batch when a data set is filled
STORED_DAYS = 30  # event days per stored batch (files per batch)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _profiles(rows: int, first_id: int, seed: int) -> Any:
    """``rows`` valid profile rows of the synthetic contract, customer ids from ``first_id``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2025-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "customer_id": np.arange(first_id, first_id + rows, dtype=np.int64),
            "profile_at": start + pd.to_timedelta(rng.integers(0, STORED_DAYS * 86_400, rows), unit="s"),
            "age": rng.integers(18, 90, rows),
            "sex": rng.choice(["female", "male"], rows),
            "marital_status": rng.choice(["married", "single", "other"], rows),
            "education": rng.choice(["graduate_school", "university", "high_school", "other"], rows),
            "region": rng.choice(["north", "south", "east", "west"], rows),
            "home_ownership": rng.choice(["rent", "own", "mortgage"], rows),
            "income": rng.uniform(10_000, 200_000, rows).round(2),
            "employment_years": rng.uniform(0, 40, rows).round(1),
            "postcode": rng.integers(1000, 9999, rows),
        }
    )


def _fill(stored: int, folder: str) -> dict[str, float]:
    """A lake holding ``stored`` profile rows with their key index, as batches of ``STORED_BATCH`` rows."""
    from closedloop.contract import contract_at
    from closedloop.lake import Lake, arrow_types
    from closedloop.settings import PROJECT_ROOT
    from tasks.ingest import stored_keys

    contract = contract_at(str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml"))
    lake = Lake.of(Path(folder).as_uri(), contract.name)
    types = arrow_types(contract, "profiles")
    for number, first in enumerate(range(0, stored, STORED_BATCH)):
        rows = _profiles(min(STORED_BATCH, stored - first), first, seed=number)
        lake.write_offline("profiles", rows, "profile_at", f"stored{number:03d}", NOW, types)
        index = stored_keys.key_index(rows, ["customer_id", "profile_at"], "profile_at", types)
        lake.write_keys("profiles", f"stored{number:03d}", index)
    return {"rows": float(stored)}


def _batch_file(stored: int, batch: int, path: str) -> dict[str, float]:
    """A ``batch``-row profiles file of new customers and, as re-sent files do, 1% of rows already stored."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    resent = min(batch // 100, stored)
    frame = _profiles(batch - resent, stored, seed=999)
    if resent:
        frame = pd.concat([_profiles(min(STORED_BATCH, stored), 0, seed=0).head(resent), frame], ignore_index=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return {"rows": float(batch), "resent": float(resent)}


def _ingest(folder: str, path: str, expected: tuple[int, int]) -> dict[str, float]:
    """Ingest one landing file into the lake in ``folder`` (timed, after a warm-up); ``expected``: accepted, duplicate.

    The process does nothing else, so its peak memory is the ingest's (and the imports').
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from closedloop.contract import contract_at
    from closedloop.lake import Lake
    from closedloop.landing import identify
    from closedloop.settings import PROJECT_ROOT
    from tasks.ingest.tasks import ingest_batch

    contract = contract_at(str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml"))
    lake = Lake.of(Path(folder).as_uri(), contract.name)
    landing = Path(path).parent
    warm_up = Path(folder) / "warm-up" / "profiles-warm-up.parquet"  # the first validation builds GX's context
    warm_up.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(_profiles(100, 0, seed=1), preserve_index=False), warm_up)
    ingest_batch.fn(
        identify(warm_up.as_uri(), warm_up.parent.as_uri(), contract),
        contract,
        Lake.of(f"{lake.root}-warm-up", "x"),
        NOW,
    )
    ref = identify(Path(path).as_uri(), landing.as_uri(), contract)
    started = time.perf_counter()
    outcome = ingest_batch.fn(ref, contract, lake, NOW)
    seconds = time.perf_counter() - started
    if (outcome.rows_accepted, outcome.rows_duplicate) != expected:
        raise RuntimeError(f"the benchmark batch was not ingested as expected {expected}: {outcome}")
    return {"seconds": seconds}


def _measure(tmp: str, stored: int, batch: int, fmt: str = "parquet") -> dict[str, float]:
    """Fill a lake and write the batch in processes of their own, then ingest it in a fresh one."""
    folder = f"{tmp}/lake-{stored}-{batch}-{fmt}"
    path = f"{tmp}/landing-{stored}-{batch}-{fmt}/profiles/profiles-bench.{fmt}"
    if stored:
        in_child(_fill, stored, folder)
    made = in_child(_batch_file, stored, batch, path)
    resent = int(made["resent"])
    return in_child(_ingest, folder, path, (batch - resent, resent))


def bench_lake(batch: int = 100_000, stored: tuple[int, ...] = (1_000_000, 10_000_000)) -> list[Measurement]:
    """A ``batch``-row file into data sets of each ``stored`` size vs into an empty one; memory of a 10x batch.

    Memory is measured on a parquet file and on the same rows as CSV (cells read as text, a larger working set).
    """
    out: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        empty = _measure(tmp, 0, batch)
        for size in stored:
            full = _measure(tmp, size, batch)
            out.append(
                Measurement(
                    "lake",
                    f"{batch:,}-row batch into {size:,} stored rows vs into none",
                    "s",
                    full["seconds"],
                    empty["seconds"],
                    False,
                    f"target 1.5x; {size // STORED_BATCH} stored batches of {STORED_DAYS} daily files, 1% re-sent",
                )
            )
        for fmt in ("parquet", "csv"):
            small = _measure(tmp, 0, batch * 3, fmt)
            large = _measure(tmp, 0, batch * 30, fmt)
            out.append(
                Measurement(
                    "lake",
                    f"peak memory growth, {batch * 30:,}-row {fmt} batch vs {batch * 3:,}-row {fmt} batch",
                    "MB",
                    large["peak_mb"],
                    small["peak_mb"],
                    False,
                    f"target 1.2x; {large['seconds']:.1f} s vs {small['seconds']:.1f} s; fresh processes, imports "
                    "included",
                )
            )
    return out
