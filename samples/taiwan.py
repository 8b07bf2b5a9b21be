"""The UCI Taiwan credit-default data, reshaped from one wide row per client into contract tables.

Six monthly statements (April..September 2005) become ``credit_history`` rows, so point-in-time
feature retrieval runs on real data; see ``datasets/taiwan_credit_default/CITATION.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from closedloop import storage
from closedloop.lake import parquet_bytes
from samples.synthetic import EVENT_TIME

logger = logging.getLogger(__name__)

RAW_CSV = Path(__file__).resolve().parent.parent / "datasets" / "taiwan_credit_default" / "UCI_Credit_Card.csv"

# Column suffixes run backwards in time: PAY_0/BILL_AMT1/PAY_AMT1 are September 2005.
MONTHS = ["2005-09", "2005-08", "2005-07", "2005-06", "2005-05", "2005-04"]
PAY_STATUS = ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]
PROFILE_AT = pd.Timestamp("2005-04-01", tz="UTC")
APPLIED_AT = pd.Timestamp("2005-10-01", tz="UTC")
OBSERVED_AT = pd.Timestamp("2005-11-01", tz="UTC")

SEX = {1: "male", 2: "female"}
EDUCATION = {
    1: "graduate_school",
    2: "university",
    3: "high_school",
    4: "others",
    0: "unknown",
    5: "unknown",
    6: "unknown",
}
MARRIAGE = {1: "married", 2: "single", 3: "others", 0: "unknown"}

TS = "datetime64[us, UTC]"


class TaiwanDataError(ValueError):
    """The raw file does not look like the published data set."""


def _month_end(month: str) -> pd.Timestamp:
    return (pd.Period(month, "M").end_time.normalize()).tz_localize("UTC")


def _check_raw(raw: pd.DataFrame) -> None:
    """Refuse a file that lacks a published column or holds a code the data set's documentation does not list."""
    expected = {
        "ID",
        "LIMIT_BAL",
        "SEX",
        "EDUCATION",
        "MARRIAGE",
        "AGE",
        "default.payment.next.month",
        *PAY_STATUS,
        *(f"BILL_AMT{i}" for i in range(1, 7)),
        *(f"PAY_AMT{i}" for i in range(1, 7)),
    }
    missing = sorted(expected - set(raw.columns))
    if missing:
        raise TaiwanDataError(f"raw Taiwan file lacks column(s) {missing}")
    for column, mapping in (("SEX", SEX), ("EDUCATION", EDUCATION), ("MARRIAGE", MARRIAGE)):
        unknown = sorted(int(v) for v in set(raw[column].unique()) - set(mapping))
        if unknown:
            raise TaiwanDataError(f"raw Taiwan column {column} holds undocumented codes {unknown}")


def _at(moment: pd.Timestamp, raw: pd.DataFrame) -> pd.Series:
    """The same instant on every client row."""
    return pd.Series(moment, index=raw.index).astype(TS)


def _credit_history(raw: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """One statement row per client and month, oldest month first."""
    history = [
        pd.DataFrame(
            {
                "customer_id": ids,
                "snapshot_at": _at(_month_end(month), raw),
                "pay_status": raw[PAY_STATUS[i]].astype("int64"),
                "bill_amount": raw[f"BILL_AMT{i + 1}"].astype("float64"),
                "paid_amount": raw[f"PAY_AMT{i + 1}"].astype("float64"),
            }
        )
        for i, month in enumerate(MONTHS)
    ]
    return pd.concat(history[::-1], ignore_index=True)


def reshape_taiwan(raw: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Wide client rows -> ``profiles``, ``credit_history``, ``applications``, ``outcomes``."""
    _check_raw(raw)
    ids = raw["ID"].astype("int64")
    profiles = pd.DataFrame(
        {
            "customer_id": ids,
            "profile_at": _at(PROFILE_AT, raw),
            "credit_limit": raw["LIMIT_BAL"].astype("float64"),
            "sex": raw["SEX"].map(SEX),
            "education": raw["EDUCATION"].map(EDUCATION),
            "marital_status": raw["MARRIAGE"].map(MARRIAGE),
            "age": raw["AGE"].astype("int64"),
        }
    )
    applications = pd.DataFrame({"application_id": ids, "customer_id": ids, "applied_at": _at(APPLIED_AT, raw)})
    outcomes = pd.DataFrame(
        {
            "application_id": ids,
            "customer_id": ids,
            "observed_at": _at(OBSERVED_AT, raw),
            "defaulted": raw["default.payment.next.month"].astype("int64"),
        }
    )
    return {
        "profiles": profiles,
        "credit_history": _credit_history(raw, ids),
        "applications": applications,
        "outcomes": outcomes,
    }


def write_taiwan(landing_uri: str, raw_csv: Path = RAW_CSV, endpoint_url: str | None = None) -> dict[str, int]:
    """Publish the reshaped tables as dated parquet batches; returns rows per table."""
    tables = reshape_taiwan(pd.read_csv(raw_csv))
    rows: dict[str, int] = {}
    for name, frame in tables.items():
        for day, part in frame.groupby(frame[EVENT_TIME[name]].dt.strftime("%Y-%m-%d"), sort=True):
            uri = storage.join(landing_uri, name, f"{name}-{day}.parquet")
            storage.write_bytes(uri, parquet_bytes(part.reset_index(drop=True)), endpoint_url)
        rows[name] = len(frame)
    logger.info("wrote the Taiwan data set (%s) to %s", rows, landing_uri)
    return rows
