from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from closedloop.contract import ColumnType, load_contract
from samples.synthetic import (
    BLOCK_CUSTOMERS,
    NEW_LOAN_PURPOSE,
    FileFormat,
    Scenario,
    SyntheticConfig,
    iter_blocks,
    write_synthetic,
)

REPO = Path(__file__).resolve().parents[2]
CONTRACT = load_contract(REPO / "datasets/credit_synthetic/contract.yaml")
CUSTOMERS = 6_000


def _read(root: Path, table: str) -> pd.DataFrame:
    frames = []
    for path in sorted((root / table).iterdir()):
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
            ts = CONTRACT.tables[table].event_time
            frame[ts] = pd.to_datetime(frame[ts], utc=True).astype("datetime64[us, UTC]")
        else:
            frame = pd.read_parquet(path)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _generate(tmp: Path, name: str, **kwargs: object) -> dict[str, pd.DataFrame]:
    config = SyntheticConfig(customers=kwargs.pop("customers", CUSTOMERS), seed=3, start="2025-01", **kwargs)  # type: ignore[arg-type]
    write_synthetic(config, (tmp / name).as_uri())
    return {t: _read(tmp / name, t) for t in CONTRACT.tables}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    return _generate(tmp_path_factory.mktemp("synthetic"), "none")


def test_same_seed_same_bytes_and_blocks_bound_memory(tmp_path: Path) -> None:
    config = SyntheticConfig(customers=BLOCK_CUSTOMERS + 700, seed=5, months=3, start="2025-01")
    first = write_synthetic(config, (tmp_path / "a").as_uri())
    second = write_synthetic(config, (tmp_path / "b").as_uri())
    assert first.rows == second.rows and first.rows["profiles"] == BLOCK_CUSTOMERS + 700
    for uri_a, uri_b in zip(first.files, second.files, strict=True):
        assert Path(uri_a[7:]).read_bytes() == Path(uri_b[7:]).read_bytes()
    sizes = [len(block["profiles"]) for block in iter_blocks(config)]
    assert sizes == [BLOCK_CUSTOMERS, 700]
    other = write_synthetic(
        SyntheticConfig(customers=BLOCK_CUSTOMERS + 700, seed=6, months=3, start="2025-01"), (tmp_path / "c").as_uri()
    )
    assert Path(other.files[0][7:]).read_bytes() != Path(first.files[0][7:]).read_bytes()


def test_tables_follow_the_contract(clean: dict[str, pd.DataFrame]) -> None:
    for table, frame in clean.items():
        assert list(frame.columns) == CONTRACT.required_columns(table) or set(frame.columns) == set(
            CONTRACT.required_columns(table)
        ), table
        assert str(frame[CONTRACT.tables[table].event_time].dtype) == "datetime64[us, UTC]"
        assert not frame.duplicated(CONTRACT.tables[table].primary_key).any(), table
        for col in CONTRACT.columns_of(table):
            values = frame[col.name]
            assert col.nullable or values.notna().all(), col.name
            present = values.dropna()
            if col.type is ColumnType.CATEGORY:
                assert set(present) <= set(col.categories or []), col.name
            else:
                assert col.min is None or present.min() >= col.min, col.name
                assert col.max is None or present.max() <= col.max, col.name
    assert clean["applications"]["channel"].isna().mean() == pytest.approx(0.03, abs=0.01)


def test_history_precedes_the_application_and_labels_arrive_late(clean: dict[str, pd.DataFrame]) -> None:
    apps = clean["applications"].set_index("customer_id")
    profiles = clean["profiles"].set_index("customer_id")
    assert len(apps) == len(profiles) == CUSTOMERS
    assert (profiles["profile_at"] < apps.loc[profiles.index, "applied_at"]).all()
    hist = clean["credit_history"].join(apps["applied_at"], on="customer_id")
    assert len(hist) == 6 * CUSTOMERS
    assert (hist["snapshot_at"] < hist["applied_at"]).all()
    assert (hist.groupby("customer_id").size() == 6).all()
    out = clean["outcomes"].join(clean["applications"].set_index("application_id")["applied_at"], on="application_id")
    delay = out["observed_at"] - out["applied_at"]
    assert delay.min() >= pd.Timedelta(days=CONTRACT.label.delay_days)
    end = pd.Timestamp("2026-01-01", tz="UTC")
    assert out["observed_at"].max() < end
    # outcomes not yet observed by the end of the year are simply not there yet
    assert len(out) < CUSTOMERS and (clean["applications"]["applied_at"] < end - pd.Timedelta(days=120)).sum() <= len(
        out
    )
    assert 0.08 < out["defaulted"].mean() < 0.3


def test_batches_are_dated_by_event_time(tmp_path: Path) -> None:
    write_synthetic(
        SyntheticConfig(customers=2_000, months=2, batch="week", start="2025-01"), (tmp_path / "w").as_uri()
    )
    for path in (tmp_path / "w" / "applications").iterdir():
        day = pd.Timestamp(path.stem.split("-", 1)[1], tz="UTC")
        assert day.dayofweek == 0
        times = pq.read_table(path).column("applied_at").to_pandas()
        assert times.min() >= day and times.max() < day + pd.Timedelta(days=7)


def test_csv_and_mixed_batches_hold_the_same_rows(tmp_path: Path, clean: dict[str, pd.DataFrame]) -> None:
    for fmt in (FileFormat.CSV, FileFormat.MIXED):
        other = _generate(tmp_path, fmt.value, file_format=fmt)
        suffixes = {p.suffix for p in (tmp_path / fmt.value / "applications").iterdir()}
        assert suffixes == ({".csv"} if fmt is FileFormat.CSV else {".csv", ".parquet"})
        for table in ("applications", "outcomes"):
            key = CONTRACT.tables[table].primary_key
            left = clean[table].sort_values(key).reset_index(drop=True)
            right = other[table].sort_values(key).reset_index(drop=True)[left.columns]
            pd.testing.assert_frame_equal(left, right, check_dtype=False)


def test_the_label_is_learnable(clean: dict[str, pd.DataFrame]) -> None:
    """A data test: the planted signal is there (a shallow model beats chance clearly)."""
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    last = clean["credit_history"].sort_values("snapshot_at").groupby("customer_id").last()
    frame = (
        clean["outcomes"][["application_id", "customer_id", "defaulted"]]
        .join(
            clean["applications"].set_index("application_id")[["loan_amount", "loan_term_months"]], on="application_id"
        )
        .join(clean["profiles"].set_index("customer_id")[["income", "employment_years"]], on="customer_id")
        .join(last[["utilisation", "months_delinquent", "payment_ratio"]], on="customer_id")
    )
    features = frame.drop(columns=["application_id", "customer_id", "defaulted"])
    split = len(frame) * 2 // 3
    model = xgb.XGBClassifier(n_estimators=60, max_depth=3, n_jobs=1).fit(features[:split], frame["defaulted"][:split])
    auc = roc_auc_score(frame["defaulted"][split:], model.predict_proba(features[split:])[:, 1])
    assert auc > 0.7


@pytest.fixture(scope="module")
def drift_start() -> pd.Timestamp:
    return pd.Timestamp("2025-09-01", tz="UTC")


def _split(frame: pd.DataFrame, column: str, start: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame[frame[column] < start], frame[frame[column] >= start]


def test_covariate_shift_inflates_incomes_after_drift_start(
    tmp_path: Path, clean: dict[str, pd.DataFrame], drift_start: pd.Timestamp
) -> None:
    shifted = _generate(tmp_path, "cov", scenario=Scenario.COVARIATE_SHIFT)
    apps = clean["applications"].set_index("customer_id")["applied_at"]
    before = clean["profiles"].join(apps, on="customer_id")
    after = shifted["profiles"].join(apps, on="customer_id")
    late = before["applied_at"] >= drift_start
    ratio = after.loc[late, "income"].median() / before.loc[late, "income"].median()
    assert ratio == pytest.approx(1.4, rel=0.01)
    pd.testing.assert_series_equal(before.loc[~late, "income"], after.loc[~late, "income"])


def test_new_category_appears_only_after_drift_start(
    tmp_path: Path, clean: dict[str, pd.DataFrame], drift_start: pd.Timestamp
) -> None:
    drifted = _generate(tmp_path, "cat", scenario=Scenario.NEW_CATEGORY)["applications"]
    early, late = _split(drifted, "applied_at", drift_start)
    assert NEW_LOAN_PURPOSE not in set(early["loan_purpose"])
    assert (late["loan_purpose"] == NEW_LOAN_PURPOSE).mean() == pytest.approx(0.25, abs=0.05)
    assert NEW_LOAN_PURPOSE not in set(clean["applications"]["loan_purpose"])


def test_quality_bug_scales_utilisation_by_100(
    tmp_path: Path, clean: dict[str, pd.DataFrame], drift_start: pd.Timestamp
) -> None:
    bugged = _generate(tmp_path, "bug", scenario=Scenario.QUALITY_BUG)["credit_history"]
    base = clean["credit_history"]
    late = base["snapshot_at"] >= drift_start
    np.testing.assert_allclose(bugged.loc[late, "utilisation"], base.loc[late, "utilisation"] * 100)
    pd.testing.assert_series_equal(bugged.loc[~late, "utilisation"], base.loc[~late, "utilisation"])
    assert bugged["utilisation"].max() > CONTRACT.column("utilisation").max  # type: ignore[operator]


def test_concept_drift_changes_who_defaults(tmp_path: Path, drift_start: pd.Timestamp) -> None:
    base = _generate(tmp_path, "c0", customers=20_000)
    drifted = _generate(tmp_path, "c1", customers=20_000, scenario=Scenario.CONCEPT_DRIFT)

    def rates(tables: dict[str, pd.DataFrame]) -> pd.Series:
        out = tables["outcomes"].join(
            tables["applications"].set_index("application_id")["applied_at"], on="application_id"
        )
        out = out.join(tables["profiles"].set_index("customer_id")["region"], on="customer_id")
        late = out[out["applied_at"] >= drift_start]
        return late.groupby("region")["defaulted"].mean()

    before, after = rates(base), rates(drifted)
    assert (after > before).all()
    rise = after - before
    assert rise["south"] > 2 * rise.drop("south").max()
    early = base["outcomes"].merge(drifted["outcomes"], on="application_id")
    early = early[early["observed_at_x"] < drift_start]
    assert (early["defaulted_x"] == early["defaulted_y"]).all()


def test_inflation_downturn_is_both_the_income_shift_and_the_downturn(
    tmp_path: Path, drift_start: pd.Timestamp
) -> None:
    both = _generate(tmp_path, "d1", customers=20_000, scenario=Scenario.INFLATION_DOWNTURN)
    incomes = _generate(tmp_path, "d2", customers=20_000, scenario=Scenario.COVARIATE_SHIFT)
    downturn = _generate(tmp_path, "d3", customers=20_000, scenario=Scenario.CONCEPT_DRIFT)
    pd.testing.assert_frame_equal(both["profiles"], incomes["profiles"])  # the same inflated incomes
    pd.testing.assert_frame_equal(both["outcomes"], downturn["outcomes"])  # the same downturn defaults


def test_delayed_labels_arrive_150_days_late(
    tmp_path: Path, clean: dict[str, pd.DataFrame], drift_start: pd.Timestamp
) -> None:
    delayed = _generate(tmp_path, "late", scenario=Scenario.DELAYED_LABELS)
    apps = delayed["applications"].set_index("application_id")["applied_at"]
    out = delayed["outcomes"].join(apps, on="application_id")
    late = out[out["applied_at"] >= drift_start]
    assert ((late["observed_at"] - late["applied_at"]) >= pd.Timedelta(days=240)).all()
    base = clean["outcomes"].join(apps, on="application_id")
    assert len(late) < len(base[base["applied_at"] >= drift_start])


def test_default_period_ends_with_the_last_full_month() -> None:
    import datetime as dt

    config = SyntheticConfig(customers=10)
    this_month = np.datetime64(dt.datetime.now(dt.UTC).strftime("%Y-%m"), "M")
    assert config.first_month == this_month - 12
    assert config.end == np.datetime64(this_month, "us")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"customers": 0}, "customers must be at least 1"),
        ({"start": "January"}, "start must be a month like 2025-01"),
        ({"batch": "day"}, "batch must be 'month' or 'week'"),
    ],
)
def test_bad_configuration_is_explained(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("start", ["2024-12", "2025-02", "2025-04"])  # periods ending before 31-, 28- and 30-day months
def test_last_month_applicants_keep_their_history_online_all_month(start: str) -> None:
    """Replayed applicants' latest statements stay within the statements' ttl on every day of the next month."""
    from samples.synthetic import last_month_applications

    config = SyntheticConfig(customers=3_000, start=start, months=12)
    block = next(iter(iter_blocks(config)))
    apps, statements = block["applications"].to_pandas(), block["credit_history"].to_pandas()
    recent = last_month_applications(apps, "applied_at")
    assert len(recent) > 150 and recent["applied_at"].min().day == 1
    latest = statements.groupby("customer_id")["snapshot_at"].max().reindex(recent["customer_id"])
    ttl = pd.Timedelta(days=CONTRACT.tables["credit_history"].ttl_days)
    end = pd.Timestamp(str(config.end), tz="UTC")
    for day in range(32):  # every moment of the month after the data's last one
        now = end + pd.Timedelta(days=day, hours=23, minutes=59)
        if now.month != end.month:
            break
        assert (now - latest <= ttl).all(), f"expired on {now:%Y-%m-%d}"
