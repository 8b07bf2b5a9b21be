from __future__ import annotations

from pathlib import Path

import pytest

from closedloop.settings import Profile, Settings, SettingsError, load_settings


def test_local_profile_keeps_all_state_under_one_folder(settings: Settings) -> None:
    root = settings.state_dir
    assert settings.profile is Profile.LOCAL
    assert settings.prefect_database_url == f"sqlite+aiosqlite:///{root}/prefect/prefect.db"
    assert settings.mlflow_backend_store_uri == f"sqlite:///{root}/mlflow/mlflow.db"
    assert settings.mlflow_artifacts_destination == (root / "mlflow" / "artifacts").as_uri()
    assert settings.lake_uri == (root / "lake").as_uri()
    assert settings.landing_uri("credit_synthetic") == (root / "lake" / "credit_synthetic" / "landing").as_uri()
    assert settings.feast_registry == str(root / "feast" / "registry.db")
    assert settings.feast_online_store == {"type": "sqlite", "path": str(root / "feast" / "online_store.db")}


def test_production_profile_points_at_postgres_redis_and_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSEDLOOP_PROFILE", "production")
    monkeypatch.setenv("CLOSEDLOOP_POSTGRES_URL", "postgresql://ml:secret@db.internal:5432")
    monkeypatch.setenv("CLOSEDLOOP_S3_BUCKET", "acme-credit")
    monkeypatch.setenv("CLOSEDLOOP_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    s = load_settings()
    assert s.prefect_database_url == "postgresql+asyncpg://ml:secret@db.internal:5432/closedloop_prefect"
    assert s.mlflow_backend_store_uri == "postgresql+psycopg://ml:secret@db.internal:5432/closedloop_mlflow"
    assert s.mlflow_artifacts_destination == "s3://acme-credit/mlflow"
    assert s.lake_uri == "s3://acme-credit/lake"
    assert s.bundles_uri == "s3://acme-credit/bundles"
    registry = s.feast_registry
    assert isinstance(registry, dict) and registry["path"].endswith("/closedloop_feast")
    assert s.feast_online_store["type"] == "redis"
    env = s.server_environment()
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DO_NOT_TRACK"] == "true"
    assert s.mlflow_tracking_uri == f"http://127.0.0.1:{s.mlflow_port}"  # started here: host and port


def test_servers_run_elsewhere_are_reached_by_their_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """In Kubernetes the pods bind 0.0.0.0 and reach Prefect and MLflow through their Services."""
    monkeypatch.setenv("CLOSEDLOOP_HOST", "0.0.0.0")  # noqa: S104 (what a pod binds)
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_URL", "http://mlflow.closedloop.svc.cluster.local:5000/")
    monkeypatch.setenv("CLOSEDLOOP_PREFECT_URL", "http://prefect-server.closedloop.svc.cluster.local:4200")
    s = load_settings()
    assert s.mlflow_tracking_uri == "http://mlflow.closedloop.svc.cluster.local:5000"
    assert s.prefect_api_url == "http://prefect-server.closedloop.svc.cluster.local:4200/api"
    assert s.serving_url == f"http://0.0.0.0:{s.serving_port}"


def test_settings_are_frozen(settings: Settings) -> None:
    with pytest.raises(Exception, match="frozen"):
        settings.prefect_port = 1  # type: ignore[misc]


def test_a_misspelt_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSEDLOOP_STATE_DIRR", "/tmp/x")
    with pytest.raises(SettingsError, match="CLOSEDLOOP_STATE_DIRR"):
        load_settings()


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSEDLOOP_PROFILE", "staging")
    with pytest.raises(SettingsError, match="CLOSEDLOOP_PROFILE"):
        load_settings()
    monkeypatch.setenv("CLOSEDLOOP_PROFILE", "local")
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_PORT", "70000")
    with pytest.raises(SettingsError, match="CLOSEDLOOP_MLFLOW_PORT"):
        load_settings()


def test_unknown_constructor_keys_are_rejected() -> None:
    with pytest.raises(SettingsError, match="STAT_DIR: Extra inputs are not permitted"):
        load_settings(stat_dir=Path("/tmp"))


def test_credentials_can_come_from_mounted_secret_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Kubernetes Secret mounted as files (infra/k8s): one file per variable, read when the variable is unset."""
    (tmp_path / "CLOSEDLOOP_SERVING_TOKEN").write_text("from-a-file\n")
    (tmp_path / "CLOSEDLOOP_POSTGRES_URL").write_text("postgresql://ml:pw@db.internal:5432")
    monkeypatch.setenv("CLOSEDLOOP_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("CLOSEDLOOP_SERVING_TOKEN", raising=False)
    monkeypatch.delenv("CLOSEDLOOP_POSTGRES_URL", raising=False)
    s = load_settings()
    assert s.serving_token is not None and s.serving_token.get_secret_value() == "from-a-file"
    assert s.postgres_url == "postgresql://ml:pw@db.internal:5432"
    monkeypatch.setenv("CLOSEDLOOP_SERVING_TOKEN", "from-the-environment")
    assert load_settings().serving_token.get_secret_value() == "from-the-environment"  # type: ignore[union-attr]
    monkeypatch.setenv("CLOSEDLOOP_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="CLOSEDLOOP_SECRETS_DIR"):
        load_settings()


def test_the_offline_stores_memory_limit_is_given_to_duckdb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With a limit, DuckDB spills the point-in-time join to the state folder instead of growing past it."""
    import ibis

    from closedloop.contract import load_contract
    from feature_repo.store import open_store

    monkeypatch.setenv("CLOSEDLOOP_DUCKDB_MEMORY_LIMIT", "1.5 GB")
    monkeypatch.setenv("CLOSEDLOOP_STATE_DIR", str(tmp_path))
    settings = load_settings()
    contract = load_contract(Path(__file__).resolve().parents[2] / "datasets/credit_synthetic/contract.yaml")
    con = ibis.get_backend().con
    before = con.execute("SELECT current_setting('memory_limit')").fetchone()
    try:
        open_store(settings, contract)
        query = "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        limit, spill = con.execute(query).fetchone()
        assert limit in ("1.3 GiB", "1.4 GiB") and spill == str(tmp_path / "duckdb" / "spill")
    finally:
        con.execute(f"SET memory_limit = '{before[0]}'")
    monkeypatch.setenv("CLOSEDLOOP_DUCKDB_MEMORY_LIMIT", "lots")
    with pytest.raises(SettingsError, match="CLOSEDLOOP_DUCKDB_MEMORY_LIMIT"):
        load_settings()
