"""Synthetic consumer-credit data: profiles, monthly credit history, applications and delayed outcomes.

The generator follows ``datasets/credit_synthetic/contract.yaml``. Customers are generated in fixed
blocks, each seeded from ``(seed, block index)``, so the output depends only on the seed and the
parameters, never on memory settings, and memory stays bounded by one block whatever the total size.
Rows are written as dated batches (one file per table and month, or per week) into a landing zone.

Named drift scenarios change the data from ``drift_start`` on, so that the monitor has something real
to catch: incomes inflate (covariate shift), a new loan purpose appears, a downturn changes who
defaults (concept drift), a feature is scaled x100 (data-quality bug), or outcomes arrive late.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from closedloop import storage

logger = logging.getLogger(__name__)

BLOCK_CUSTOMERS = 25_000
HISTORY_MONTHS = 6
FIRST_CUSTOMER_ID = 100_001
NEW_LOAN_PURPOSE = "green_energy"

EDUCATION = np.array(["graduate_school", "university", "high_school", "other"])
REGIONS = np.array(["north", "south", "east", "west"])
HOME = np.array(["rent", "own", "mortgage"])
MARITAL = np.array(["married", "single", "other"])
SEXES = np.array(["female", "male"])
PURPOSES = np.array(["debt_consolidation", "car", "home_improvement", "education", "medical", "business"])
CHANNELS = np.array(["branch", "online", "broker"])
TERMS = np.array([12, 24, 36, 48, 60, 84])

US_PER_DAY = 86_400 * 1_000_000
TS = pa.timestamp("us", tz="UTC")


class Scenario(StrEnum):
    """Drift injected from ``drift_start`` on."""

    NONE = "none"
    COVARIATE_SHIFT = "covariate_shift"  # incomes inflate by 40%
    NEW_CATEGORY = "new_category"  # a quarter of applications carry an unseen loan purpose
    CONCEPT_DRIFT = "concept_drift"  # a downturn: defaults rise, most in the south and in business loans
    QUALITY_BUG = "quality_bug"  # utilisation reported in percent (x100) by a broken upstream job
    DELAYED_LABELS = "delayed_labels"  # outcomes arrive 150 days later than usual
    INFLATION_DOWNTURN = "inflation_downturn"  # both: incomes inflate by 40% and the downturn raises defaults


class FileFormat(StrEnum):
    PARQUET = "parquet"
    CSV = "csv"
    MIXED = "mixed"  # alternate parquet and CSV batch by batch, as heterogeneous upstreams do


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; the same config and seed always give the same bytes."""

    customers: int = 100_000
    seed: int = 7
    start: str | None = None  # first application month (YYYY-MM); default: `months` months before this one
    months: int = 12
    scenario: Scenario = Scenario.NONE
    drift_start: str | None = None  # YYYY-MM; default: two thirds into the period
    label_delay_days: int = 90
    batch: str = "month"  # "month" or "week"
    file_format: FileFormat = FileFormat.PARQUET

    def __post_init__(self) -> None:
        object.__setattr__(self, "scenario", Scenario(self.scenario))  # accept plain names too
        object.__setattr__(self, "file_format", FileFormat(self.file_format))
        if self.customers < 1:
            raise ValueError(f"customers must be at least 1, got {self.customers}")
        if self.months < 1:
            raise ValueError(f"months must be at least 1, got {self.months}")
        if self.batch not in ("month", "week"):
            raise ValueError(f"batch must be 'month' or 'week', got {self.batch!r}")
        for name in ("start", "drift_start"):
            value = getattr(self, name)
            if value is not None:
                try:
                    np.datetime64(value, "M")
                except ValueError as exc:
                    raise ValueError(f"{name} must be a month like 2025-01, got {value!r}") from exc

    @property
    def first_month(self) -> np.datetime64:
        if self.start is None:  # the most recent full months, so that the data is fresh for serving
            return np.datetime64(datetime.now(UTC).strftime("%Y-%m"), "M") - np.timedelta64(self.months, "M")
        return np.datetime64(self.start, "M")

    @property
    def drift_month(self) -> np.datetime64:
        if self.drift_start is not None:
            return np.datetime64(self.drift_start, "M")
        return self.first_month + int(np.ceil(self.months * 2 / 3))

    @property
    def end(self) -> np.datetime64:
        """The generator's "now": nothing later than this has been observed yet."""
        return np.datetime64(self.first_month + np.timedelta64(self.months, "M"), "us")


def last_month_applications(apps: pd.DataFrame, event_time: str) -> pd.DataFrame:
    """The applications of the data's last calendar month: the applicants whose features are still served online.

    A customer's latest statement is dated the 28th of the month before their application, and the statements'
    view keeps a value online for 92 days. With the default period (up to the first day of the current month),
    last month's applicants have a statement at most 65 days old on any day of this month; applicants of the
    month before would pass the 92 days from about the 28th, and be served without their history.
    """
    newest = pd.Timestamp(apps[event_time].max())
    first_day = newest.normalize() - pd.Timedelta(days=newest.day - 1)
    return apps[apps[event_time] >= first_day]


@dataclass
class SyntheticSummary:
    """What a generation run wrote."""

    landing_uri: str
    config: dict[str, object]
    rows: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _months_us(months: np.ndarray) -> np.ndarray:
    """datetime64[M] -> int64 microseconds since the epoch."""
    return months.astype("datetime64[us]").astype(np.int64)


@dataclass(frozen=True)
class _Timing:
    """When each customer applied: the month, the instant (microseconds) and whether it is past ``drift_start``."""

    app_month: np.ndarray
    applied_at: np.ndarray
    drifted: np.ndarray


@dataclass(frozen=True)
class _Profile:
    """Who each customer is, with the unobserved creditworthiness that drives the rest (higher = riskier)."""

    latent: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    marital: np.ndarray
    education: np.ndarray
    region: np.ndarray
    home: np.ndarray
    employment_years: np.ndarray
    income: np.ndarray
    postcode: np.ndarray
    profile_at: np.ndarray


@dataclass(frozen=True)
class _History:
    """HISTORY_MONTHS monthly statements per customer (one row per customer, one column per month)."""

    limit: np.ndarray
    snapshot_at: np.ndarray
    utilisation: np.ndarray  # the true utilisation, which drives the outcome
    reported_util: np.ndarray  # what the upstream reports (x100 after drift_start under QUALITY_BUG)
    months_delinquent: np.ndarray
    payment_ratio: np.ndarray
    open_accounts: np.ndarray
    balance: np.ndarray


@dataclass(frozen=True)
class _Application:
    """The loan each customer applies for."""

    purpose: np.ndarray
    purpose_names: np.ndarray
    loan_amount: np.ndarray
    term: np.ndarray
    channel: np.ndarray


@dataclass(frozen=True)
class _Outcome:
    """Whether each customer defaulted, and when that became known."""

    defaulted: np.ndarray
    observed_at: np.ndarray


def _draw_timing(rng: np.random.Generator, config: SyntheticConfig, n: int, drift_us: int) -> _Timing:
    """One application per customer, at a random instant of a random month of the period."""
    app_month = config.first_month + rng.integers(0, config.months, n)
    app_start = _months_us(app_month)
    month_len = _months_us(app_month + 1) - app_start
    applied_at = app_start + (rng.random(n) * month_len).astype(np.int64)
    return _Timing(app_month=app_month, applied_at=applied_at, drifted=applied_at >= drift_us)


def _draw_profile(rng: np.random.Generator, timing: _Timing, scenario: Scenario) -> _Profile:
    """Profiles dated about HISTORY_MONTHS months before the application; incomes inflate under covariate shift."""
    n = len(timing.applied_at)
    latent = rng.standard_normal(n)
    age = np.clip(rng.normal(41, 12, n), 18, 85).astype(np.int64)
    sex = rng.integers(0, 2, n)
    marital = rng.choice(3, n, p=[0.5, 0.4, 0.1])
    education = rng.choice(4, n, p=[0.15, 0.45, 0.32, 0.08])
    region = rng.choice(4, n, p=[0.3, 0.25, 0.25, 0.2])
    home = rng.choice(3, n, p=[0.4, 0.2, 0.4])
    employment_years = np.round(np.clip(rng.gamma(2.0, 3.5, n), 0, np.maximum(age - 16, 0)), 1)
    log_income = (
        10.55
        + 0.18 * (3 - education)
        + 0.012 * (age - 41)
        - 0.0006 * (age - 41) ** 2
        - 0.06 * (sex == 0)
        - 0.15 * latent
        + rng.normal(0, 0.35, n)
    )
    income = np.round(np.exp(log_income), 2)
    if scenario in (Scenario.COVARIATE_SHIFT, Scenario.INFLATION_DOWNTURN):
        income = np.where(timing.drifted, np.round(income * 1.4, 2), income)
    postcode = rng.integers(1000, 10000, n)
    profile_at = _months_us(timing.app_month - HISTORY_MONTHS) + rng.integers(0, 27 * US_PER_DAY, n)
    return _Profile(
        latent=latent,
        age=age,
        sex=sex,
        marital=marital,
        education=education,
        region=region,
        home=home,
        employment_years=employment_years,
        income=income,
        postcode=postcode,
        profile_at=profile_at,
    )


def _draw_history(
    rng: np.random.Generator, profile: _Profile, app_month: np.ndarray, drift_us: int, scenario: Scenario
) -> _History:
    """The HISTORY_MONTHS statements before the application, each dated the 28th of its month."""
    n = len(profile.latent)
    latent = profile.latent
    limit = np.round(profile.income * rng.uniform(0.15, 0.45, n), -2) + 500.0
    k = np.arange(HISTORY_MONTHS)
    snap_month = app_month[:, None] - HISTORY_MONTHS + k[None, :]
    snapshot_at = _months_us(snap_month) + 27 * US_PER_DAY
    noise = rng.normal(0, 0.35, (n, HISTORY_MONTHS)).cumsum(axis=1) * 0.5
    utilisation = np.round(np.clip(1.15 * _sigmoid(-0.5 + 0.9 * latent[:, None] + noise), 0, 1.5), 4)
    delinquency_rate = np.exp(-2.3 + 0.9 * latent)
    months_delinquent = np.clip(rng.poisson(delinquency_rate[:, None] * (6 + k[None, :])), 0, 12).astype(np.int64)
    payment_ratio = np.round(
        np.clip(_sigmoid(1.4 - 1.1 * latent[:, None] + rng.normal(0, 0.6, (n, HISTORY_MONTHS))), 0, 1), 4
    )
    open_accounts = np.clip(rng.poisson(np.exp(1.1 + 0.15 * latent))[:, None] + (k[None, :] >= 4), 0, 50)
    balance = np.round(utilisation * limit[:, None], 2)
    reported_util = utilisation
    if scenario is Scenario.QUALITY_BUG:
        reported_util = np.where(snapshot_at >= drift_us, utilisation * 100, utilisation)
    return _History(
        limit=limit,
        snapshot_at=snapshot_at,
        utilisation=utilisation,
        reported_util=reported_util,
        months_delinquent=months_delinquent,
        payment_ratio=payment_ratio,
        open_accounts=open_accounts,
        balance=balance,
    )


def _draw_application(
    rng: np.random.Generator, income: np.ndarray, drifted: np.ndarray, scenario: Scenario
) -> _Application:
    """Purpose, amount, term and channel; under NEW_CATEGORY a quarter of drifted applications get an unseen purpose."""
    n = len(income)
    purpose = rng.choice(6, n, p=[0.35, 0.2, 0.15, 0.08, 0.07, 0.15])
    purpose_names = PURPOSES[purpose].astype(object)
    if scenario is Scenario.NEW_CATEGORY:
        purpose_names[drifted & (rng.random(n) < 0.25)] = NEW_LOAN_PURPOSE
    loan_amount = np.round(np.clip(income * rng.lognormal(-1.3, 0.5, n), 100, 500_000), 2)
    term = TERMS[rng.choice(6, n, p=[0.15, 0.25, 0.3, 0.1, 0.15, 0.05])]
    channel = CHANNELS[rng.choice(3, n, p=[0.3, 0.55, 0.15])].astype(object)
    channel[rng.random(n) < 0.03] = None
    return _Application(
        purpose=purpose, purpose_names=purpose_names, loan_amount=loan_amount, term=term, channel=channel
    )


def _draw_outcome(
    rng: np.random.Generator,
    config: SyntheticConfig,
    timing: _Timing,
    profile: _Profile,
    history: _History,
    application: _Application,
) -> _Outcome:
    """Default drawn from the latest statement, the loan and the latent risk; the label arrives after a delay."""
    n = len(profile.latent)
    last = HISTORY_MONTHS - 1
    logit = (
        -2.6
        + 1.4 * history.utilisation[:, last]
        + 0.22 * history.months_delinquent[:, last]
        - 1.3 * history.payment_ratio[:, last]
        + 1.1 * np.minimum(application.loan_amount / profile.income, 3)
        - 0.03 * profile.employment_years
        + 0.25 * (profile.home == 0)
        + np.array([0.1, -0.2, -0.1, 0.0, 0.3, 0.45])[application.purpose]
        + 0.012 * (application.term - 36) / 12
        + 0.6 * profile.latent
    )
    if config.scenario in (Scenario.CONCEPT_DRIFT, Scenario.INFLATION_DOWNTURN):
        downturn = 0.5 + 1.0 * (profile.region == 1) + 0.9 * (application.purpose == 5) - 0.5 * (profile.home == 1)
        logit = np.where(timing.drifted, logit + downturn, logit)
    defaulted = (rng.random(n) < _sigmoid(logit)).astype(np.int64)
    delay = config.label_delay_days * US_PER_DAY + rng.integers(0, 30 * US_PER_DAY, n)
    if config.scenario is Scenario.DELAYED_LABELS:
        delay = np.where(timing.drifted, delay + 150 * US_PER_DAY, delay)
    return _Outcome(defaulted=defaulted, observed_at=timing.applied_at + delay)


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values.ravel(), type=pa.int64()).cast(TS)


def generate_block(config: SyntheticConfig, block: int) -> dict[str, pa.Table]:
    """All rows of one block of customers, as Arrow tables keyed by contract table name.

    The draws run in a fixed order (timing, profile, history, application, outcome) from one generator
    seeded by ``(seed, block)``, so the same config always gives the same rows.
    """
    first = block * BLOCK_CUSTOMERS
    n = min(BLOCK_CUSTOMERS, config.customers - first)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(block,)))
    drift_us = int(_months_us(np.array([config.drift_month]))[0])
    end_us = int(config.end.astype(np.int64))

    customer_id = np.arange(first, first + n, dtype=np.int64) + FIRST_CUSTOMER_ID
    timing = _draw_timing(rng, config, n, drift_us)
    profile = _draw_profile(rng, timing, config.scenario)
    history = _draw_history(rng, profile, timing.app_month, drift_us, config.scenario)
    application = _draw_application(rng, profile.income, timing.drifted, config.scenario)
    outcome = _draw_outcome(rng, config, timing, profile, history, application)
    known = outcome.observed_at < end_us
    return _block_tables(customer_id, timing, profile, history, application, outcome, known)


def _block_tables(
    customer_id: np.ndarray,
    timing: _Timing,
    profile: _Profile,
    history: _History,
    application: _Application,
    outcome: _Outcome,
    known: np.ndarray,
) -> dict[str, pa.Table]:
    """The drawn arrays as the four contract tables; only outcomes already observed by the generator's "now"."""
    application_id = customer_id * 10 + 1
    return {
        "profiles": pa.table(
            {
                "customer_id": customer_id,
                "profile_at": _ts(profile.profile_at),
                "age": profile.age,
                "sex": SEXES[profile.sex],
                "marital_status": MARITAL[profile.marital],
                "education": EDUCATION[profile.education],
                "region": REGIONS[profile.region],
                "home_ownership": HOME[profile.home],
                "income": profile.income,
                "employment_years": profile.employment_years,
                "postcode": profile.postcode,
            }
        ),
        "credit_history": pa.table(
            {
                "customer_id": np.repeat(customer_id, HISTORY_MONTHS),
                "snapshot_at": _ts(history.snapshot_at),
                "credit_limit": np.repeat(history.limit, HISTORY_MONTHS),
                "balance": history.balance.ravel(),
                "utilisation": history.reported_util.ravel(),
                "months_delinquent": history.months_delinquent.ravel(),
                "payment_ratio": history.payment_ratio.ravel(),
                "open_accounts": history.open_accounts.ravel().astype(np.int64),
            }
        ),
        "applications": pa.table(
            {
                "application_id": application_id,
                "customer_id": customer_id,
                "applied_at": _ts(timing.applied_at),
                "loan_amount": application.loan_amount,
                "loan_term_months": application.term.astype(np.int64),
                "loan_purpose": pa.array(application.purpose_names, type=pa.string()),
                "channel": pa.array(application.channel, type=pa.string()),
            }
        ),
        "outcomes": pa.table(
            {
                "application_id": application_id[known],
                "customer_id": customer_id[known],
                "observed_at": _ts(outcome.observed_at[known]),
                "defaulted": outcome.defaulted[known],
            }
        ),
    }


EVENT_TIME = {
    "profiles": "profile_at",
    "credit_history": "snapshot_at",
    "applications": "applied_at",
    "outcomes": "observed_at",
}


def _batch_keys(times: pa.Array, batch: str) -> np.ndarray:
    """Batch date of each row: the first day of its month or the Monday of its week."""
    days: np.ndarray = np.asarray(times.cast(pa.int64()).to_numpy()) // US_PER_DAY
    if batch == "month":
        return np.asarray(days.astype("datetime64[D]").astype("datetime64[M]"), dtype="datetime64[D]")
    # 1970-01-01 was a Thursday: shift so that weeks start on Monday
    return np.asarray((days + 3) // 7 * 7 - 3, dtype="datetime64[D]")


class _BatchWriters:
    """Open writers for every (table, batch date), streaming row groups block by block."""

    def __init__(self, staging: Path, file_format: FileFormat) -> None:
        self.staging = staging
        self.file_format = file_format
        self.writers: dict[tuple[str, str], pq.ParquetWriter | pacsv.CSVWriter] = {}
        self.paths: dict[tuple[str, str], Path] = {}
        self.rows: dict[str, int] = {}

    def _suffix(self, day: str) -> str:
        if self.file_format is FileFormat.MIXED:
            return "csv" if int(day[5:7]) % 2 == 0 else "parquet"
        return self.file_format.value

    def write(self, table: str, data: pa.Table, batch: str) -> None:
        keys = _batch_keys(data.column(EVENT_TIME[table]).combine_chunks(), batch)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        data = data.take(pa.array(order))
        uniq, starts = np.unique(keys, return_index=True)
        bounds = [*starts.tolist(), len(keys)]
        for i, day in enumerate(uniq):
            piece = data.slice(bounds[i], bounds[i + 1] - bounds[i])
            day_text = str(day)
            key = (table, day_text)
            writer = self.writers.get(key)
            if writer is None:
                suffix = self._suffix(day_text)
                path = self.staging / table / f"{table}-{day_text}.{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                if suffix == "csv":
                    writer = pacsv.CSVWriter(str(path), piece.schema)
                else:
                    writer = pq.ParquetWriter(str(path), piece.schema, compression="zstd")
                self.writers[key] = writer
                self.paths[key] = path
            writer.write_table(piece)
            self.rows[table] = self.rows.get(table, 0) + piece.num_rows

    def close(self) -> list[Path]:
        for writer in self.writers.values():
            writer.close()
        return [self.paths[k] for k in sorted(self.paths)]


def iter_blocks(config: SyntheticConfig) -> Iterator[dict[str, pa.Table]]:
    for block in range(-(-config.customers // BLOCK_CUSTOMERS)):
        yield generate_block(config, block)


def write_synthetic(
    config: SyntheticConfig,
    landing_uri: str,
    endpoint_url: str | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> SyntheticSummary:
    """Generate the data set and publish it as dated batch files under ``landing_uri``.

    Files are built in a hidden staging folder and only moved into the landing zone once complete,
    so a reader never sees a half-written batch. ``progress(customers done, customers)`` is called after
    each block, for whoever shows how far a large run is (the command line's bar).
    """
    target = storage.parse(landing_uri)
    local_root = target.path if target.scheme == "file" else None
    if local_root is not None:
        local_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=local_root))
    try:
        writers = _BatchWriters(staging, config.file_format)
        try:
            for block, tables in enumerate(iter_blocks(config), 1):
                for name, data in tables.items():
                    writers.write(name, data, config.batch)
                if progress is not None:
                    progress(min(block * BLOCK_CUSTOMERS, config.customers), config.customers)
        finally:
            paths = writers.close()
        summary = SyntheticSummary(landing_uri=landing_uri, config=_describe(config), rows=dict(writers.rows))
        for path in paths:
            relative = path.relative_to(staging).as_posix()
            uri = storage.join(landing_uri, relative)
            if local_root is not None:
                final = local_root / relative
                final.parent.mkdir(parents=True, exist_ok=True)
                path.replace(final)
                summary.files.append(final.as_uri())
            else:
                summary.files.append(storage.upload_file(path, uri, endpoint_url))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d rows in %d batch files to %s", summary.total_rows, len(summary.files), landing_uri)
    return summary


def _describe(config: SyntheticConfig) -> dict[str, object]:
    out = asdict(config)
    out["start"] = str(config.first_month)
    out["drift_start"] = str(config.drift_month)
    out["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return out
