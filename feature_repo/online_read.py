"""Point lookups in Feast's SQLite online store for the scoring hot path, answering as ``get_online_features`` does.

``FeatureStore.get_online_features`` spends most of a single-entity request outside the store: it resolves the
FeatureService against the registry, builds protobuf request and response messages and converts them to Python
(about 0.25 ms at the median but 4 ms at p99 for 20 features on this machine). The scoring service asks the same
question thousands of times a second with the same FeatureService, so the plan is resolved once here and each
request is one indexed ``SELECT`` per feature view on a per-thread read-only connection, with the values decoded
from the ``ValueProto`` bytes Feast wrote.

The answers are Feast's (``tests/feature_repo/test_online_read.py`` compares them for known, unknown and
partially known entities); configurations this path does not cover fall back to Feast (:func:`supported`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feast import FeatureService, FeatureStore, FeatureView
from feast.errors import FeatureViewNotFoundException
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from feature_repo.online_write import entity_key_bytes
from feature_repo.online_write import supported as view_supported


@dataclass(frozen=True)
class _ViewPlan:
    table: str
    features: tuple[str, ...]
    query: str  # one entity key


def supported(store: FeatureStore, service: FeatureService) -> bool:
    """Whether :class:`OnlineReader` can answer for ``service`` (SQLite store, one join key, scalar values)."""
    views = _stored_views(store, service)
    return bool(views) and all(view_supported(store, view) for view, _ in views)


def _stored_views(store: FeatureStore, service: FeatureService) -> list[tuple[FeatureView, list[str]]]:
    out = []
    for projection in service.feature_view_projections:
        try:
            view = store.get_feature_view(projection.name)
        except FeatureViewNotFoundException:  # an on-demand view: computed from the request, not stored
            continue
        out.append((view, [f.name for f in projection.features]))
    return out


class OnlineReader:
    """The stored features of a FeatureService for given entity keys, straight from Feast's SQLite tables."""

    def __init__(self, store: FeatureStore, service: FeatureService) -> None:
        if not supported(store, service):
            raise ValueError(f"feature service {service.name!r} is not on a SQLite online store this reader covers")
        config = store.config
        self.path = SqliteOnlineStore._get_db_path(config)
        views = _stored_views(store, service)
        self.join_key = views[0][0].entity_columns[0].name
        self.key_type = views[0][0].entity_columns[0].dtype.to_value_type()
        versioning = config.registry.enable_online_feature_view_versioning
        self.plans: list[_ViewPlan] = []
        for view, features in views:
            table = compute_table_id(config.project, view, versioning)
            self.plans.append(
                _ViewPlan(
                    table=table,
                    features=tuple(features),
                    query=f'SELECT {len(self.plans)}, feature_name, value FROM "{table}" WHERE entity_key = ?',
                )
            )
        # one statement for every view of the service: one round through SQLite per entity
        self.query = " UNION ALL ".join(plan.query for plan in self.plans)
        self.features = [f for plan in self.plans for f in plan.features]
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # read-only, one per thread; waits (rather than failing) while a materialization commits
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
            self._local.conn = conn
        return conn

    def read(self, keys: Sequence[int | str]) -> list[dict[str, Any] | None]:
        """Per key: its feature values (None where Feast has none), or None when no view knows the entity."""
        conn = self._connection()
        out: list[dict[str, Any] | None] = []
        value = ValueProto()
        params_per_key = len(self.plans)
        for key in keys:
            encoded = entity_key_bytes(self.join_key, key, self.key_type)
            cells: list[dict[str, bytes]] = [{} for _ in self.plans]
            for view, name, blob in conn.execute(self.query, (encoded,) * params_per_key):
                cells[view][name] = blob
            if not any(cells):
                out.append(None)
                continue
            row: dict[str, Any] = {}
            for plan, found in zip(self.plans, cells, strict=True):
                for name in plan.features:
                    blob = found.get(name)
                    if blob is None:
                        row[name] = None
                        continue
                    value.ParseFromString(blob)
                    kind = value.WhichOneof("val")
                    row[name] = None if kind is None or kind == "null_val" else getattr(value, kind)
            out.append(row)
        return out


def feast_rows(
    store: FeatureStore, service: FeatureService, join_key: str, keys: Sequence[int | str]
) -> list[dict[str, Any] | None]:
    """The same answer as :meth:`OnlineReader.read` through Feast itself (any online store)."""
    features = [f"{view.name}:{name}" for view, names in _stored_views(store, service) for name in names]
    answer = store.get_online_features(features=features, entity_rows=[{join_key: k} for k in keys]).to_dict()
    names = [ref.split(":", 1)[1] for ref in features]
    rows: list[dict[str, Any] | None] = []
    for i in range(len(keys)):
        row = {name: answer[name][i] for name in names}
        rows.append(None if all(v is None for v in row.values()) else row)
    return rows
