"""Feast objects generated from the dataset contract: a new dataset is a new contract, not new code.

For every feature table of the contract (a table that is neither the prediction table nor the label table):
- ``<table>``: a feature view of its model inputs (online);
- ``<table>_sensitive``: its sensitive attributes, offline only (fairness analysis, never served, never an input);
- ``<table>_policy``: the sensitive attributes marked ``group_thresholds`` (online, never a model input): what a
  group-threshold decision policy reads to place an applicant in a group when the request does not say;
- ``<table>_history``: the contract's aggregates over the entity's recent rows (computed at ingest).
The prediction table's inputs arrive with each request (a RequestSource, and the entity frame in training); an
on-demand view computes the contract's ratios from request and stored values with :mod:`feature_repo.transforms`.
The model reads everything through one versioned FeatureService, ``<dataset>_model_v<contract version>``; the
decision policy's group attributes have their own, ``<dataset>_policy_v<contract version>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.data_format import ParquetFormat
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Bool, Float64, Int64, PrimitiveFeastType, String

from closedloop.contract import Column, ColumnType, Contract

CREATED = "created_at"
FEAST_TYPES: dict[ColumnType, PrimitiveFeastType] = {
    ColumnType.INT: Int64,
    ColumnType.FLOAT: Float64,
    ColumnType.CATEGORY: String,
    ColumnType.BOOL: Bool,
}


@dataclass
class FeatureRepo:
    """Everything Feast needs for one contract, plus the names the pipeline looks up."""

    contract: Contract
    entity: Entity
    sources: list[FileSource | RequestSource] = field(default_factory=list)
    views: list[FeatureView] = field(default_factory=list)
    on_demand: list[OnDemandFeatureView] = field(default_factory=list)
    services: list[FeatureService] = field(default_factory=list)
    view_tables: dict[str, str] = field(default_factory=dict)  # feature view -> offline table it reads

    @property
    def objects(self) -> list[Any]:
        return [self.entity, *self.sources, *self.views, *self.on_demand, *self.services]

    @property
    def model_service(self) -> FeatureService:
        return self.services[0]

    @property
    def policy_service(self) -> FeatureService | None:
        return self.services[1] if len(self.services) > 1 else None

    @property
    def online_views(self) -> list[FeatureView]:
        return [v for v in self.views if v.online]


def feature_tables(contract: Contract) -> list[str]:
    """Tables whose rows become stored features (not the scored table, not the outcomes)."""
    return [t for t in contract.tables if t not in (contract.prediction, contract.label.source)]


def history_table(table: str) -> str:
    return f"{table}_history"


def model_service_name(contract: Contract) -> str:
    return f"{contract.name}_model_v{contract.version}"


def policy_service_name(contract: Contract) -> str:
    return f"{contract.name}_policy_v{contract.version}"


def policy_columns(contract: Contract) -> list[Column]:
    """Stored sensitive attributes a group-threshold policy may read online (never model inputs)."""
    return [
        c
        for table in feature_tables(contract)
        for c in contract.columns_of(table)
        if c.sensitive and c.group_thresholds and not c.is_model_input
    ]


def sensitive_refs(contract: Contract) -> list[str]:
    """Feature references of the sensitive attributes (offline views: fairness analysis only)."""
    return [
        f"{table}_sensitive:{c.name}"
        for table in feature_tables(contract)
        for c in contract.columns_of(table)
        if c.sensitive and not c.is_model_input
    ]


def _fields(columns: list[Column]) -> list[Field]:
    return [Field(name=c.name, dtype=FEAST_TYPES[c.type]) for c in columns]


def _source(name: str, path: str, event_time: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=f"{path.rstrip('/')}/*/*.parquet",
        file_format=ParquetFormat(),
        timestamp_field=event_time,
        created_timestamp_column=CREATED,
    )


def build_repo(contract: Contract, offline_root: str) -> FeatureRepo:
    """Generate the Feast definitions of ``contract`` reading offline tables under ``offline_root``.

    ``offline_root`` is a local path or an ``s3://`` prefix (the DuckDB offline store reads it; see
    ``feature_repo.store.read_lake_on_s3``) holding ``<table>/event_date=*/...``.
    """
    value_type = ValueType.INT64 if contract.key_type == "int" else ValueType.STRING
    key = contract.entity.join_key
    entity = Entity(
        name=contract.entity.name, join_keys=[key], value_type=value_type, description=contract.entity.description
    )
    repo = FeatureRepo(contract=contract, entity=entity)
    model_refs: list[Any] = []
    policy_refs: list[Any] = []
    for table in feature_tables(contract):
        model_views, policy_views = _add_table_views(repo, table, offline_root)
        model_refs.extend(model_views)
        policy_refs.extend(policy_views)
    ratios = _add_request_and_ratios(repo)
    if ratios is not None:
        model_refs.append(ratios)
    _add_services(repo, model_refs, policy_refs)
    return repo


def _add_table_views(repo: FeatureRepo, table: str, offline_root: str) -> tuple[list[FeatureView], list[FeatureView]]:
    """Add one feature table's sources and views; return the views the model reads and those the policy reads."""
    contract, entity = repo.contract, repo.entity
    spec = contract.tables[table]
    ttl = timedelta(days=spec.ttl_days)
    source = _source(table, f"{offline_root}/{table}", spec.event_time)
    repo.sources.append(source)
    model_views: list[FeatureView] = []
    policy_views: list[FeatureView] = []
    inputs = [c for c in contract.columns_of(table) if c.is_model_input]
    sensitive = [c for c in contract.columns_of(table) if c.sensitive and not c.is_model_input]
    if inputs:
        view = FeatureView(name=table, entities=[entity], ttl=ttl, schema=_fields(inputs), source=source, online=True)
        repo.views.append(view)
        repo.view_tables[table] = table
        model_views.append(view)
    if sensitive:
        name = f"{table}_sensitive"
        repo.views.append(
            FeatureView(name=name, entities=[entity], ttl=ttl, schema=_fields(sensitive), source=source, online=False)
        )
        repo.view_tables[name] = table
    policy = [c for c in sensitive if c.group_thresholds]
    if policy:
        name = f"{table}_policy"
        view = FeatureView(name=name, entities=[entity], ttl=ttl, schema=_fields(policy), source=source, online=True)
        repo.views.append(view)
        repo.view_tables[name] = table
        policy_views.append(view)
    history = _add_history_view(repo, table, offline_root, ttl)
    if history is not None:
        model_views.append(history)
    return model_views, policy_views


def _add_history_view(repo: FeatureRepo, table: str, offline_root: str, ttl: timedelta) -> FeatureView | None:
    """Add the view of the contract's aggregates over the table's recent rows, if it has any."""
    aggregates = repo.contract.aggregates_of(table)
    if not aggregates:
        return None
    name = history_table(table)
    source = _source(name, f"{offline_root}/{name}", repo.contract.tables[table].event_time)
    repo.sources.append(source)
    view = FeatureView(
        name=name,
        entities=[repo.entity],
        ttl=ttl,
        schema=[Field(name=a.name, dtype=Float64) for a in aggregates],
        source=source,
        online=True,
    )
    repo.views.append(view)
    repo.view_tables[view.name] = name
    return view


def _add_request_and_ratios(repo: FeatureRepo) -> OnDemandFeatureView | None:
    """Add the request source of the prediction table's inputs and the on-demand view of the contract's ratios."""
    contract = repo.contract
    request_inputs = [c for c in contract.columns_of(contract.prediction) if c.is_model_input]
    request: RequestSource | None = None
    if request_inputs:
        request = RequestSource(name=f"{contract.prediction}_request", schema=_fields(request_inputs))
        repo.sources.append(request)
    if not contract.ratios:
        return None
    needed = {r.numerator for r in contract.ratios} | {r.denominator for r in contract.ratios}
    ratio_sources: list[Any] = [v for v in repo.views if v.online and {f.name for f in v.schema} & needed]
    if request is not None and {c.name for c in request_inputs} & needed:
        ratio_sources.append(request)
    specs = [(r.name, r.numerator, r.denominator) for r in contract.ratios]
    ratios = _odfv(
        name="ratios",
        sources=ratio_sources,
        schema=[Field(name=r.name, dtype=Float64) for r in contract.ratios],
        source=_RATIOS.format(specs=specs),
    )
    repo.on_demand.append(ratios)
    return ratios


def _add_services(repo: FeatureRepo, model_refs: list[Any], policy_refs: list[Any]) -> None:
    """The model's versioned FeatureService first, then the decision policy's (only if it reads any attribute)."""
    contract = repo.contract
    repo.services.append(
        FeatureService(
            name=model_service_name(contract),
            features=model_refs,
            description=f"model inputs of {contract.name} v{contract.version} (contract {contract.fingerprint})",
            tags={"contract": contract.name, "contract_fingerprint": contract.fingerprint},
        )
    )
    if policy_refs:
        repo.services.append(
            FeatureService(
                name=policy_service_name(contract),
                features=policy_refs,
                description=f"group attributes of {contract.name}'s decision policy (not model inputs)",
                tags={"contract": contract.name, "contract_fingerprint": contract.fingerprint},
            )
        )


# Feast stores an on-demand view's function as source text and re-creates it from that text wherever the
# view runs (training, the feature server, the scoring service), so the functions are generated as
# self-contained source with the contract's values written in, and delegate to feature_repo.transforms.
_RATIOS = """def ratios(inputs):
    from feature_repo.transforms import ratio_frame
    return ratio_frame(inputs, {specs!r})
"""


def _odfv(name: str, sources: list[Any], schema: list[Field], source: str) -> OnDemandFeatureView:
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<closedloop odfv {name}>", "exec"), namespace)  # noqa: S102 - our own generated code
    return OnDemandFeatureView(
        name=name, sources=sources, schema=schema, udf=namespace[name], udf_string=source, mode="pandas"
    )
