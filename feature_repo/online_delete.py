"""Removal of some entities' rows from one feature view of the online store (SQLite embedded, Redis production).

Feast writes and reads the online store but has no call that removes chosen entity keys from one view: its
``online_write_batch`` only upserts, ``OnlineStore.update(tables_to_delete=...)`` empties a whole view (SQLite
drops its table, Redis scans every key of the entity) and ``teardown`` removes the store. Removing a few keys
with those would leave every entity of the view unserved until it is loaded again. So each profile's layout is
addressed here with Feast's own key encoding and table names:

- SQLite: one table per view (``<project>_<view>``), one row per entity key and feature: the key's rows are
  deleted, in one transaction;
- Redis: one hash per entity key (Feast's serialised key + the project) holding every view's features of that
  entity, one field per feature (``murmur3("<view>:<feature>")``) and the view's ``_ts:<view>`` field: only this
  view's fields are removed (``HDEL``), the entity's other views stay served; an emptied hash disappears.
"""

from __future__ import annotations

from collections.abc import Sequence

from feast import FeatureStore, FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_table_id, compute_versioned_name
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import python_values_to_proto_values

CHUNK = 500  # keys per SQL statement or Redis pipeline


def delete_entities(store: FeatureStore, view_name: str, keys: Sequence[int | str]) -> int:
    """Remove the rows of ``keys`` (values of the view's join key) from a view; returns how many keys had rows."""
    view = store.get_feature_view(view_name)
    if len(view.entity_columns) != 1:
        raise ValueError(f"feature view {view_name!r}: only views of one join key are supported")
    column = view.entity_columns[0]
    distinct = list(dict.fromkeys(keys))
    if not distinct:
        return 0
    protos = [
        EntityKeyProto(join_keys=[column.name], entity_values=[value])
        for value in python_values_to_proto_values(distinct, column.dtype.to_value_type())
    ]
    kind = store.config.online_store.type
    if kind == "sqlite":
        return _delete_sqlite(store.config, view, protos)
    if kind == "redis":
        return _delete_redis(store, view, protos)
    raise ValueError(f"removing entities from a {kind!r} online store is not supported (sqlite or redis)")


def _delete_sqlite(config: RepoConfig, view: FeatureView, protos: list[EntityKeyProto]) -> int:
    import sqlite3

    table = compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    serialized = [serialize_entity_key(p, config.entity_key_serialization_version) for p in protos]
    present = 0
    with sqlite3.connect(SqliteOnlineStore._get_db_path(config)) as conn:  # one transaction: all keys or none
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is None:
            conn.close()
            return 0  # the view was never loaded
        for start in range(0, len(serialized), CHUNK):
            chunk = serialized[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            (found,) = conn.execute(
                f'SELECT COUNT(DISTINCT entity_key) FROM "{table}" WHERE entity_key IN ({marks})', chunk
            ).fetchone()
            present += int(found)
            conn.execute(f'DELETE FROM "{table}" WHERE entity_key IN ({marks})', chunk)
    conn.close()
    return present


def _delete_redis(store: FeatureStore, view: FeatureView, protos: list[EntityKeyProto]) -> int:
    from feast.infra.online_stores.redis import RedisOnlineStore

    config = store.config
    online = store._get_provider().online_store  # Feast's RedisOnlineStore: its client and connection settings
    if not isinstance(online, RedisOnlineStore):
        raise ValueError(f"online store {type(online).__name__} is not Feast's RedisOnlineStore")
    client = online._get_client(config.online_store)
    name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
    fields = [_mmh3(f"{name}:{feature.name}") for feature in view.features] + [f"_ts:{name}".encode()]
    present = 0
    for start in range(0, len(protos), CHUNK):
        with client.pipeline(transaction=False) as pipe:
            for proto in protos[start : start + CHUNK]:
                pipe.hdel(_redis_key(config.project, proto, config.entity_key_serialization_version), *fields)
            present += sum(1 for removed in pipe.execute() if removed)
    return present
