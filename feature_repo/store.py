"""Open the Feast feature store of a dataset for the active profile, from ``feature_store.<profile>.yaml``.

On the production profile the lake (and with it the offline store's tables) is on S3. Feast's DuckDB offline
store reads files through ibis' default DuckDB connection; :func:`read_lake_on_s3` gives that connection DuckDB's
``httpfs`` extension (installed from its PyPI wheel, never downloaded at run time) and an S3 secret with the
credentials boto3 resolves (environment, profile, or the pod's IRSA role) and the configured endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from string import Template
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
from feast import FeatureService, FeatureStore
from feast.infra.offline_stores.offline_store import RetrievalJob

from closedloop import storage
from closedloop.contract import Contract
from closedloop.settings import Settings

HERE = Path(__file__).resolve().parent


def store_dir(settings: Settings, contract: Contract) -> Path:
    return settings.state_dir / "feast" / contract.name


def render_config(settings: Settings, contract: Contract) -> Path:
    """Write the profile's feature_store.yaml with this installation's addresses; returns its path."""
    folder = store_dir(settings, contract)
    folder.mkdir(parents=True, exist_ok=True)
    template = Template((HERE / f"feature_store.{settings.profile.value}.yaml").read_text())
    registry = settings.feast_registry
    values = {
        "project": contract.name,
        "registry_path": registry["path"] if isinstance(registry, dict) else str(folder / "registry.db"),
        "online_path": str(folder / "online_store.db"),
        "redis_url": settings.redis_url,
    }
    target = folder / "feature_store.yaml"
    target.write_text(template.substitute(values))
    return target


def open_store(settings: Settings, contract: Contract) -> FeatureStore:
    """The FeatureStore of ``contract`` under ``settings`` (the registry may still be empty)."""
    if settings.lake_uri.startswith("s3://"):
        read_lake_on_s3(settings)
    if settings.duckdb_memory_limit:
        import ibis

        spill = settings.state_dir / "duckdb" / "spill"
        spill.mkdir(parents=True, exist_ok=True)
        con = ibis.get_backend().con  # the connection Feast's DuckDB offline store runs its queries on
        con.execute(f"SET memory_limit = '{settings.duckdb_memory_limit}'")
        con.execute(f"SET temp_directory = '{spill}'")
    return FeatureStore(fs_yaml_file=render_config(settings, contract))


def offline_root(settings: Settings, contract: Contract) -> str:
    """Where the offline store's tables of ``contract`` live: a local folder, or an ``s3://`` prefix."""
    root = storage.parse(storage.join(settings.lake_uri, contract.name, "offline"))
    return str(root.path) if root.scheme == "file" else str(root)


def read_lake_on_s3(settings: Settings) -> None:
    """Let DuckDB, through ibis' default connection (what Feast's offline store uses), read ``s3://`` files."""
    import boto3
    import duckdb
    import duckdb_extension_httpfs
    import ibis

    con = ibis.get_backend().con
    extensions = settings.state_dir / "duckdb" / "extensions"
    extensions.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET extension_directory = '{extensions}'")
    wheel = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    binary = wheel / "httpfs.duckdb_extension"
    if not binary.exists():
        raise RuntimeError(
            f"duckdb-extension-httpfs has no build for DuckDB {duckdb.__version__}: pin the same version"
        )
    con.execute(f"INSTALL '{binary}'")  # a local file: later INSTALL httpfs (ibis does one) finds it installed
    con.execute("LOAD httpfs")
    credentials = boto3.Session(region_name=settings.aws_region).get_credentials()
    if credentials is None:
        raise RuntimeError("no AWS credentials for the S3 lake (environment, profile or instance role)")
    frozen = credentials.get_frozen_credentials()
    options = {
        "TYPE": "s3",
        "KEY_ID": frozen.access_key,
        "SECRET": frozen.secret_key,
        "REGION": os.environ.get("AWS_DEFAULT_REGION", settings.aws_region),
    }
    if frozen.token:
        options["SESSION_TOKEN"] = frozen.token
    if settings.s3_endpoint_url:  # an S3-compatible endpoint (moto here, MinIO, ...): path-style addressing
        endpoint = urlparse(settings.s3_endpoint_url)
        options.update(ENDPOINT=endpoint.netloc, URL_STYLE="path", USE_SSL=str(endpoint.scheme == "https").lower())
    body = ", ".join(f"{k} {v}" if k in ("TYPE", "USE_SSL") else f"{k} '{v}'" for k, v in options.items())
    con.execute(f"CREATE OR REPLACE SECRET closedloop_lake ({body})")


def service_refs(service: FeatureService) -> list[str]:
    """The ``view:feature`` references a FeatureService names, as the registry holds it."""
    return [
        f"{projection.name_to_use()}:{feature.name}"  # type: ignore[no-untyped-call]
        for projection in service.feature_view_projections
        for feature in projection.features
    ]


def stored_views(store: FeatureStore, refs: Iterable[str]) -> list[str]:
    """The views of ``refs`` (``view:feature``) whose values are stored: not the on-demand ones (the ratios)."""
    on_demand = {view.name for view in store.list_on_demand_feature_views()}
    return list(dict.fromkeys(ref.split(":", 1)[0] for ref in refs if ref.split(":", 1)[0] not in on_demand))


class LocalRetrieval:
    """A retrieval that needs no stored view: the entity frame with the contract's ratios.

    The ratios are computed by :func:`feature_repo.transforms.compute_ratios`, the function Feast's on-demand
    view runs.
    """

    metadata = None
    on_demand_feature_views: tuple[()] = ()
    full_feature_names = False

    def __init__(self, entities: pd.DataFrame, contract: Contract, refs: list[str]) -> None:
        from feature_repo.transforms import compute_ratios

        wanted = {ref.split(":", 1)[1] for ref in refs}
        ratios = [r for r in contract.ratios if r.name in wanted]
        self.frame = entities.reset_index(drop=True)
        if ratios:
            self.frame = pd.concat([self.frame, compute_ratios(self.frame, ratios)], axis=1)

    def to_df(self) -> pd.DataFrame:
        return self.frame

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pandas(self.frame, preserve_index=False)


def historical_job(
    store: FeatureStore, contract: Contract, entities: pd.DataFrame, refs: list[str]
) -> RetrievalJob | LocalRetrieval:
    """Point-in-time features of ``entities`` for ``refs``, through Feast when a stored view is named.

    Otherwise the entity frame's own columns (the prediction table's inputs) with the ratios computed locally:
    Feast refuses a retrieval without a stored feature ("No features specified for retrieval"): a contract
    whose inputs all arrive with the application (one flat table) has none.
    """
    if stored_views(store, refs):
        return store.get_historical_features(entity_df=entities, features=refs)
    inputs = [c.name for c in contract.model_inputs if c.source == contract.prediction]
    if not refs and not inputs:
        looked_at = {
            table: [
                c.name + (" (sensitive)" if c.sensitive else "") + (" (excluded)" if c.exclude else "")
                for c in contract.columns_of(table)
            ]
            for table in contract.tables
        }
        raise ValueError(
            f"contract {contract.name}: no model input found; looked at tables {looked_at}: mark a column as a "
            "model input (not sensitive, not excluded) in the prediction table or a feature table"
        )
    return LocalRetrieval(entities, contract, refs)


def write_retrieval(
    jobs: Iterable[RetrievalJob | LocalRetrieval],
    path: Path,
    order_by: list[str],
    extra: Callable[[pa.Table, int], pa.Table] | None = None,
    batch_rows: int = 250_000,
) -> list[str]:
    """Write point-in-time retrievals to one parquet file, each sorted by ``order_by``, without holding them in memory.

    ``jobs`` are retrievals of consecutive slices of one entity frame sorted by ``order_by`` (created lazily: one
    query at a time), so the file is sorted as a whole and the offline store never joins more than one slice.
    On the DuckDB offline store a job's ibis expression runs in DuckDB (which sorts out of core) and its result
    streams as Arrow record batches; each batch gets the on-demand features from Feast's own transformation (the
    one that serves them online) and then ``extra(batch, first_row_offset)``, and is appended to the file as a
    row group. Other offline stores: Feast's ``to_arrow``, sorted, written in the same row groups. Returns the
    file's column names.
    """
    import pyarrow.parquet as pq

    writer: pq.ParquetWriter | None = None
    offset = 0
    try:
        for job in jobs:
            for chunk in _retrieved(job, order_by, batch_rows):
                if extra is not None:
                    chunk = extra(chunk, offset)
                offset += chunk.num_rows
                if writer is None:
                    writer = pq.ParquetWriter(path, chunk.schema, compression="lz4")  # read and written locally
                writer.write_table(chunk.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError("the retrieval returned no rows")
    return list(writer.schema.names)


def _retrieved(job: RetrievalJob | LocalRetrieval, order_by: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """One job's rows in ``order_by`` order, ``batch_rows`` at a time, with the on-demand features requested."""
    requested = {ref.split(":", 1)[1] for ref in (job.metadata.features if job.metadata else [])}
    table = getattr(job, "table", None)
    if table is not None and hasattr(table, "to_pyarrow_batches"):
        batches: Iterator[pa.RecordBatch] = iter(table.order_by(order_by).to_pyarrow_batches(chunk_size=batch_rows))
        odfvs = list(job.on_demand_feature_views)
    else:
        whole = job.to_arrow().sort_by([(c, "ascending") for c in order_by])
        batches, odfvs = iter(whole.to_batches(max_chunksize=batch_rows)), []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        chunk = pa.Table.from_batches([batch])
        for odfv in odfvs:
            transformed = odfv.transform_arrow(chunk, job.full_feature_names)
            for name in transformed.column_names:
                if name in requested and name not in chunk.column_names:
                    chunk = chunk.append_column(name, transformed[name])
        yield chunk
