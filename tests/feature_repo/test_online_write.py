"""The bulk SQLite materialization writes exactly what Feast's own materialization writes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import load_contract
from closedloop.lake import Lake, arrow_types
from closedloop.settings import load_settings
from feature_repo.definitions import build_repo
from feature_repo.online_write import entity_keys, materialize_view, supported
from feature_repo.store import open_store
from samples.synthetic import EVENT_TIME, SyntheticConfig, iter_blocks

REPO = Path(__file__).resolve().parents[2]
CONTRACT = load_contract(REPO / "datasets/credit_synthetic/contract.yaml")
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _tables() -> dict[str, pd.DataFrame]:
    """Two days of profiles and statements for 400 customers, with gaps and an entity updated twice."""
    block = next(iter(iter_blocks(SyntheticConfig(customers=400, seed=11))))
    rng = np.random.default_rng(3)
    out = {}
    for name in ("profiles", "credit_history"):
        frame = block[name].to_pandas().head(600).reset_index(drop=True)
        event_time = EVENT_TIME[name]
        frame[event_time] = (
            pd.Timestamp(NOW - timedelta(days=2)) + pd.to_timedelta(rng.integers(0, 40 * 3600, len(frame)), unit="s")
        ).astype("datetime64[us, UTC]")
        for column in frame.columns.drop(["customer_id", event_time]):
            if column in {"postcode"}:
                continue
            frame.loc[rng.random(len(frame)) < 0.1, column] = None  # missing cells of every type
        out[name] = frame
    return out


def _online_rows(settings_dir: Path, view: str) -> list[tuple[object, ...]]:
    path = settings_dir / "feast" / CONTRACT.name / "online_store.db"
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{CONTRACT.name}_{view}" '
            "ORDER BY entity_key, feature_name"
        ).fetchall()
    conn.close()
    return rows


@pytest.mark.integration
def test_bulk_write_is_byte_identical_to_feasts_materialize(tmp_path: Path) -> None:
    tables = _tables()
    stores = {}
    for side in ("feast", "bulk"):
        settings = load_settings(state_dir=tmp_path / side)
        lake = Lake.of(settings.lake_uri, CONTRACT.name)
        for name, frame in tables.items():
            lake.write_offline(name, frame, EVENT_TIME[name], "b1", NOW, arrow_types(CONTRACT, name))
        store = open_store(settings, CONTRACT)
        store.apply(build_repo(CONTRACT, str(tmp_path / side / "lake" / CONTRACT.name / "offline")).objects)
        stores[side] = store
    start, end = NOW - timedelta(days=3), NOW
    for view in ("profiles", "credit_history"):
        stores["feast"].materialize(start_date=start, end_date=end, feature_views=[view])
        assert supported(stores["bulk"], stores["bulk"].get_feature_view(view))
        written = materialize_view(stores["bulk"], view, start, end)
        assert written == tables[view]["customer_id"].nunique()  # the latest row per customer
        feast_rows = _online_rows(tmp_path / "feast", view)
        assert len(feast_rows) > 0
        assert _online_rows(tmp_path / "bulk", view) == feast_rows
        # and the registry knows what was materialized, as after Feast's own call
        intervals = stores["bulk"].get_feature_view(view).materialization_intervals
        assert intervals and intervals[-1][1] == end
    ids = [{"customer_id": int(c)} for c in tables["profiles"]["customer_id"].unique()[:50]]
    refs = ["profiles:income", "profiles:education", "credit_history:months_delinquent"]
    served = {side: store.get_online_features(refs, ids).to_dict() for side, store in stores.items()}
    assert served["bulk"] == served["feast"]


def test_entity_keys_are_feasts_serialisation() -> None:
    import pyarrow as pa
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    ids = [0, 1, -5, 2**40, 123456789]
    keys = entity_keys(pa.chunked_array([pa.array(ids, pa.int64())]), ValueType.INT64, "customer_id")
    expected = [
        serialize_entity_key(EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=i)]), 3) for i in ids
    ]
    assert keys == expected
    names = ["a", "bé", ""]
    keys = entity_keys(pa.chunked_array([pa.array(names)]), ValueType.STRING, "customer_id")
    assert keys == [
        serialize_entity_key(EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=n)]), 3)
        for n in names
    ]
