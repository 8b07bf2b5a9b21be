"""The one settings object: a profile (`local` or `production`) plus the addresses derived from it.

Every knob is read from the environment with the prefix ``CLOSEDLOOP_`` (for example
``CLOSEDLOOP_PROFILE=production``). The object is frozen and rejects unknown keys, including a
misspelt ``CLOSEDLOOP_*`` variable, so a typo fails loudly instead of silently using a default.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from closedloop import failpoints

ENV_PREFIX = "CLOSEDLOOP_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Every library in the stack phones home unless told not to; these machines have no internet and
# users in regulated settings expect silence. Values as each library reads them (see STACK notes).
TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "true",  # Evidently and others honouring the convention
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "False",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "FEAST_USAGE": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


class Profile(StrEnum):
    """Where closedloop keeps its state: embedded on one machine, or on shared services."""

    LOCAL = "local"
    PRODUCTION = "production"


SECRETS_DIR = "CLOSEDLOOP_SECRETS_DIR"


class SettingsError(ValueError):
    """Raised when the environment does not describe a usable configuration."""


class Settings(BaseSettings):
    """Configuration of one closedloop installation; read once, then passed around."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    profile: Profile = Profile.LOCAL
    state_dir: Path = Field(default=Path(".closedloop"), description="all local state lives below this folder")
    contract: Path = Field(
        default=PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml",
        description="the dataset contract in use",
    )

    host: str = Field(default="127.0.0.1", description="interface the local servers bind to")
    prefect_port: int = Field(default=4200, ge=1, le=65535)
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    s3_port: int = Field(default=5555, ge=1, le=65535, description="port of the local in-memory S3 endpoint")
    serving_port: int = Field(default=8000, ge=1, le=65535, description="port of the online scoring service")
    serving_token: SecretStr | None = Field(
        default=None, description="bearer token the scoring service requires; unset: it refuses to start"
    )
    promotion_key_file: Path | None = Field(
        default=None,
        description="the flows' Ed25519 key that seals promotions and evidence (mount it into flow runs only); "
        "unset: <state_dir>/keys/promotion.key, created on first use",
    )
    promotion_public_key_file: Path | None = Field(
        default=None,
        description="its public half, which the scoring service and batch scoring verify seals with; "
        "unset: <state_dir>/keys/promotion.pub",
    )
    startup_timeout_s: float = Field(default=120.0, gt=0)
    ingest_chunk_rows: int = Field(
        default=250_000, ge=1000, description="records validated at once: a larger batch is validated chunk by chunk"
    )
    lake_lock_wait_s: float = Field(
        default=1800.0, gt=0, description="how long an ingest waits for another writer of the same lake to finish"
    )
    prefect_url: str | None = Field(
        default=None,
        description="a Prefect server run elsewhere (its UI address, e.g. in Kubernetes); unset: host:port",
    )
    mlflow_url: str | None = Field(
        default=None, description="an MLflow tracking server run elsewhere; unset: the one at host:mlflow_port"
    )

    # production services
    postgres_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432",
        description="server address without a database; one database per component is derived from it",
    )
    database_prefix: str = Field(default="closedloop", pattern=r"^[a-z][a-z0-9_]*$")
    redis_url: str = Field(default="127.0.0.1:6379,db=0", description="Feast's redis connection string")
    s3_endpoint_url: str | None = Field(default=None, description="any S3-compatible endpoint; None means AWS")
    s3_bucket: str = Field(default="closedloop", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    aws_region: str = "us-east-1"
    dask_address: str | None = Field(
        default=None, description="Dask scheduler for engine=dask training; unset: a LocalCluster started per run"
    )
    dask_workers: int = Field(default=2, ge=1, description="worker processes of that LocalCluster")
    retrieval_rows: int = Field(
        default=2_000_000,
        ge=1000,
        description="entity rows per point-in-time query: a larger training set is retrieved slice by slice "
        "(time order) into the same file, so the offline store's join never holds more than this many",
    )
    duckdb_memory_limit: str | None = Field(
        default=None,
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="memory the offline store's DuckDB may use before it spills to $STATE/duckdb/spill "
        "(e.g. 4GB); unset: DuckDB's default, 80% of the machine's memory",
    )

    @field_validator("state_dir", "contract")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # --- derived addresses -------------------------------------------------------------------
    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_ui_url}/api"

    @property
    def prefect_ui_url(self) -> str:
        return (self.prefect_url or f"http://{self.host}:{self.prefect_port}").rstrip("/")

    @property
    def mlflow_tracking_uri(self) -> str:
        return (self.mlflow_url or f"http://{self.host}:{self.mlflow_port}").rstrip("/")

    @property
    def serving_url(self) -> str:
        return f"http://{self.host}:{self.serving_port}"

    @property
    def s3_local_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def _database(self, component: str, driver: str) -> str:
        base = self.postgres_url.split("://", 1)[1].rstrip("/")
        return f"{driver}://{base}/{self.database_prefix}_{component}"

    @property
    def postgres_databases(self) -> list[str]:
        """Databases the production profile needs on the Postgres server."""
        return [f"{self.database_prefix}_{c}" for c in ("prefect", "mlflow", "feast")]

    @property
    def prefect_database_url(self) -> str:
        if self.profile is Profile.PRODUCTION:
            return self._database("prefect", "postgresql+asyncpg")
        return f"sqlite+aiosqlite:///{self.prefect_home / 'prefect.db'}"

    @property
    def mlflow_backend_store_uri(self) -> str:
        if self.profile is Profile.PRODUCTION:
            return self._database("mlflow", "postgresql+psycopg")
        return f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts_destination(self) -> str:
        if self.profile is Profile.PRODUCTION:
            return f"s3://{self.s3_bucket}/mlflow"
        return (self.state_dir / "mlflow" / "artifacts").as_uri()

    @property
    def lake_uri(self) -> str:
        """Root of the data lake: landing zone, offline store, quarantine, inference log."""
        if self.profile is Profile.PRODUCTION:
            return f"s3://{self.s3_bucket}/lake"
        return (self.state_dir / "lake").as_uri()

    def landing_uri(self, dataset: str) -> str:
        """Where new batches of one dataset (a contract's ``name``) arrive."""
        return f"{self.lake_uri}/{dataset}/landing"

    @property
    def bundles_uri(self) -> str:
        if self.profile is Profile.PRODUCTION:
            return f"s3://{self.s3_bucket}/bundles"
        return (self.state_dir / "bundles").as_uri()

    @property
    def feast_registry(self) -> dict[str, Any] | str:
        if self.profile is Profile.PRODUCTION:
            return {
                "registry_type": "sql",
                "path": self._database("feast", "postgresql+psycopg"),
                "cache_ttl_seconds": 60,
                "sqlalchemy_config_kwargs": {"pool_pre_ping": True},
            }
        return str(self.state_dir / "feast" / "registry.db")

    @property
    def feast_online_store(self) -> dict[str, Any]:
        if self.profile is Profile.PRODUCTION:
            return {"type": "redis", "connection_string": self.redis_url}
        return {"type": "sqlite", "path": str(self.state_dir / "feast" / "online_store.db")}

    def server_environment(self) -> dict[str, str]:
        """Environment every child process (servers, flow runs) gets on top of the caller's.

        Secrets (the serving token) are left out: only the process that checks one is given it, by name.
        """
        env = dict(TELEMETRY_OFF)
        # the same settings, with paths already absolute, for processes started elsewhere (flow runs, servers)
        for name, value in self.model_dump().items():
            if value is not None and not isinstance(value, SecretStr):
                env[ENV_PREFIX + name.upper()] = str(value.value if isinstance(value, Profile) else value)
        env["PREFECT_HOME"] = str(self.prefect_home)
        env["PREFECT_API_URL"] = self.prefect_api_url
        env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
        if self.s3_endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
            env["AWS_ENDPOINT_URL_S3"] = self.s3_endpoint_url
        env.setdefault("AWS_DEFAULT_REGION", self.aws_region)
        return env


def disable_telemetry() -> None:
    """Turn every library's telemetry off in this process unless the user chose otherwise."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; name the offending variable when one is wrong or unknown."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {SECRETS_DIR, failpoints.ENV}
    unknown = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    secrets = os.environ.get(SECRETS_DIR)
    if secrets and not Path(secrets).is_dir():
        raise SettingsError(f"{SECRETS_DIR}={secrets}: no such directory")
    try:
        # a setting may also come from a file named like its variable in CLOSEDLOOP_SECRETS_DIR (a mounted
        # Kubernetes Secret); the environment wins over the file
        return Settings(**overrides, _secrets_dir=secrets)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from exc
