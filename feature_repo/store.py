"""Open the Feast feature store of a dataset for the active profile, from ``feature_store.<profile>.yaml``."""

from __future__ import annotations

from pathlib import Path
from string import Template

from feast import FeatureStore

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
    return FeatureStore(fs_yaml_file=render_config(settings, contract))
