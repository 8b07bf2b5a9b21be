from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from closedloop.contract import ColumnType, load_contract
from samples.taiwan import MONTHS, RAW_CSV, TaiwanDataError, reshape_taiwan, write_taiwan

REPO = Path(__file__).resolve().parents[2]
CONTRACT = load_contract(REPO / "datasets/taiwan_credit_default/contract.yaml")


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return pd.read_csv(RAW_CSV)


@pytest.fixture(scope="module")
def tables(raw: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return reshape_taiwan(raw)


def test_shipped_file_is_the_published_one() -> None:
    import hashlib

    digest = hashlib.sha256(RAW_CSV.read_bytes()).hexdigest()
    assert digest == "61537758427df346bd48014953d99bc55f138b4f19dda4012a6238fa5214cf6d"
    assert "CC BY 4.0" in (RAW_CSV.parent / "CITATION.md").read_text()


def test_row_counts_and_label_rate(tables: dict[str, pd.DataFrame]) -> None:
    assert {k: len(v) for k, v in tables.items()} == {
        "profiles": 30_000,
        "credit_history": 180_000,
        "applications": 30_000,
        "outcomes": 30_000,
    }
    assert tables["outcomes"]["defaulted"].sum() == 6_636


def test_reshape_round_trips_every_monthly_value(raw: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    hist = tables["credit_history"]
    wide = hist.pivot(index="customer_id", columns="snapshot_at", values=["pay_status", "bill_amount", "paid_amount"])
    months = sorted(hist["snapshot_at"].unique())
    assert [m.strftime("%Y-%m") for m in months] == sorted(MONTHS)
    raw = raw.set_index("ID")
    sept, april = months[-1], months[0]
    assert (wide[("pay_status", sept)] == raw["PAY_0"]).all()
    assert (wide[("pay_status", april)] == raw["PAY_6"]).all()
    assert (wide[("bill_amount", sept)] == raw["BILL_AMT1"]).all()
    assert (wide[("paid_amount", april)] == raw["PAY_AMT6"]).all()


def test_point_in_time_order(tables: dict[str, pd.DataFrame]) -> None:
    applied = tables["applications"]["applied_at"].iloc[0]
    assert (tables["credit_history"]["snapshot_at"] < applied).all()
    assert (tables["profiles"]["profile_at"] < tables["credit_history"]["snapshot_at"].min()).all()
    delay = tables["outcomes"]["observed_at"] - tables["applications"]["applied_at"]
    assert (delay >= pd.Timedelta(days=CONTRACT.label.delay_days)).all()


def test_values_respect_the_contract(tables: dict[str, pd.DataFrame]) -> None:
    for table, frame in tables.items():
        assert set(frame.columns) == set(CONTRACT.required_columns(table)), table
        assert str(frame[CONTRACT.tables[table].event_time].dtype) == "datetime64[us, UTC]"
        for col in CONTRACT.columns_of(table):
            values = frame[col.name]
            assert values.notna().all(), col.name
            if col.type is ColumnType.CATEGORY:
                assert set(values) <= set(col.categories or []), col.name
            else:
                assert col.min is None or values.min() >= col.min, col.name
                assert col.max is None or values.max() <= col.max, col.name
    assert (tables["profiles"]["education"] == "unknown").sum() == 14 + 280 + 51


def test_undocumented_codes_and_missing_columns_are_rejected(raw: pd.DataFrame) -> None:
    broken = raw.copy()
    broken.loc[0, "SEX"] = 3
    with pytest.raises(TaiwanDataError, match=r"column SEX holds undocumented codes \[3\]"):
        reshape_taiwan(broken)
    with pytest.raises(TaiwanDataError, match=r"lacks column\(s\) \['PAY_0'\]"):
        reshape_taiwan(raw.drop(columns=["PAY_0"]))


def test_written_batches_are_dated(tmp_path: Path) -> None:
    rows = write_taiwan(tmp_path.as_uri())
    assert rows["credit_history"] == 180_000
    files = sorted(p.name for p in (tmp_path / "credit_history").iterdir())
    assert files[0] == "credit_history-2005-04-30.parquet" and len(files) == 6
    assert pd.read_parquet(tmp_path / "outcomes").shape == (30_000, 4)
