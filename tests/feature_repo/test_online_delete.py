"""Removing some entities from one view of the online store, on SQLite (embedded) and Redis (production)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from feast import FeatureStore

from closedloop.contract import load_contract
from closedloop.lake import Lake, arrow_types
from feature_repo.definitions import build_repo
from feature_repo.online_delete import delete_entities
from samples.synthetic import EVENT_TIME, SyntheticConfig, iter_blocks

REPO = Path(__file__).resolve().parents[2]
CONTRACT = load_contract(REPO / "datasets/credit_synthetic/contract.yaml")
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
REDIS = "127.0.0.1:6379,db=9"


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeatureStore]:
    """A feature store of 40 customers' profiles and statements, loaded into the online store of each kind."""
    if request.param == "redis":
        import redis

        try:
            redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:  # .ci/run starts it
            pytest.skip(f"Redis is not running on 127.0.0.1 ({exc})")
        online = f'{{type: redis, connection_string: "{REDIS}"}}'
    else:
        online = f"{{type: sqlite, path: {tmp_path / 'online.db'}}}"
    (tmp_path / "feature_store.yaml").write_text(
        f"project: retraction_{uuid.uuid4().hex[:8]}\nprovider: local\nregistry: {tmp_path / 'registry.db'}\n"
        f"offline_store: {{type: duckdb}}\nonline_store: {online}\nentity_key_serialization_version: 3\n"
    )
    lake = Lake.of(tmp_path.as_uri(), CONTRACT.name)
    block = next(iter(iter_blocks(SyntheticConfig(customers=40, seed=5))))
    for table in ("profiles", "credit_history"):
        frame = block[table].to_pandas().drop_duplicates("customer_id").reset_index(drop=True)
        frame[EVENT_TIME[table]] = NOW - timedelta(days=1)
        lake.write_offline(table, frame, EVENT_TIME[table], "b1", NOW, arrow_types(CONTRACT, table))
    feature_store = FeatureStore(fs_yaml_file=tmp_path / "feature_store.yaml")
    feature_store.apply(build_repo(CONTRACT, str(tmp_path / CONTRACT.name / "offline")).objects)
    feature_store.materialize(NOW - timedelta(days=2), NOW, feature_views=["profiles", "credit_history"])
    try:
        yield feature_store
    finally:
        feature_store.teardown()  # Redis: every key of this project


def test_only_the_given_entities_leave_only_the_given_view(store: FeatureStore) -> None:
    ids = [100_001, 100_002, 100_003]
    refs = ["credit_history:utilisation", "profiles:income"]
    before = store.get_online_features(refs, [{"customer_id": i} for i in ids]).to_dict()
    assert None not in before["utilisation"] and None not in before["income"]

    # a key twice and one never loaded: each key with rows is counted once
    assert delete_entities(store, "credit_history", [100_001, 100_002, 100_001, 42]) == 2
    after = store.get_online_features(refs, [{"customer_id": i} for i in ids]).to_dict()
    assert after["utilisation"] == [None, None, before["utilisation"][2]]
    assert after["income"] == before["income"]  # on Redis the same hash holds both views: the profile stays
    assert delete_entities(store, "credit_history", [100_001]) == 0  # gone already
