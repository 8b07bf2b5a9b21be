"""Package a registered version: its scorer logged in MLflow, and the bundle written to object storage.

- **Scorer**: the exact model file, the contract and the version's evidence wrapped into ``ApplicationScorer``
  (``bundle.py``), logged in the version's run as ``scorer/`` with the project code it imports
  (``shipped_code.py``) and the lock's exact pins; its URI is tagged on the version (``scorer_uri``).
- **Bundle**: model, scorer package, contract, FeatureService, model card and evidence written together to object
  storage (a local folder, or ``s3://`` through boto3 in production), with a manifest of SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from closedloop import storage
from closedloop.contract import Contract
from closedloop.registry import client, model_requirements
from closedloop.settings import PROJECT_ROOT
from tasks.promote.bundle import SCORER_PATH, ApplicationScorer
from tasks.promote.promotion import run_artifact
from tasks.promote.shipped_code import stage_scoring_code


class BundleWritten(BaseModel):
    """Where the bundle of a version was written, and how many files it holds (besides its manifest)."""

    model_config = ConfigDict(frozen=True)

    uri: str
    files: int


def scorer_model(
    contract: Contract, contract_file: str, version: str, model_file: Path, evidence_file: Path, workdir: Path
) -> dict[str, Any]:
    """The arguments of ``mlflow.pyfunc.log_model``/``save_model`` for a version's scorer (files under ``workdir``)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    meta = workdir / "meta.json"
    meta.write_text(json.dumps({"name": contract.name, "version": version, "contract": contract.fingerprint}))
    code = stage_scoring_code(PROJECT_ROOT, workdir / "code")
    return {
        "python_model": ApplicationScorer(),
        "artifacts": {
            "model": str(model_file),
            "contract": contract_file,
            "evidence": str(evidence_file),
            "meta": str(meta),
        },
        "code_paths": [str(folder) for folder in code],
        "pip_requirements": [*model_requirements(), *_extra_requirements()],
        # no input schema: a row is an application, or (features="given") the model's features;
        # tasks.score.scoring checks either against the contract and names what is wrong
        "signature": ModelSignature(params=ParamSchema([ParamSpec("features", "string", "lookup")])),
    }


def log_scorer(tracking_uri: str, contract: Contract, contract_file: str, version: str) -> str:
    """Log the version's ``ApplicationScorer`` in its run (once); returns its model URI, also tagged on the version."""
    import mlflow

    name = contract.name
    c = client(tracking_uri)
    found = c.get_model_version(name, version)
    existing = (found.tags or {}).get("scorer_uri")
    if existing:
        return str(existing)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="closedloop-scorer-") as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=f"{tmp}/model"))
        evidence = mlflow.artifacts.download_artifacts(
            run_id=found.run_id, artifact_path="evidence/evidence.json", dst_path=f"{tmp}/evidence"
        )
        package = scorer_model(
            contract, contract_file, version, next(folder.rglob("model.ubj")), Path(evidence), Path(tmp)
        )
        with mlflow.start_run(run_id=found.run_id):
            info = mlflow.pyfunc.log_model(name=SCORER_PATH, **package)
    c.set_model_version_tag(name, version, "scorer_uri", info.model_uri)
    return str(info.model_uri)


def _extra_requirements() -> list[str]:
    """Feature lookups need Feast (and what the active profile's online store needs)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("feast", "pydantic", "pyyaml")]


def write_bundle(
    tracking_uri: str,
    contract: Contract,
    contract_file: str,
    version: str,
    bundles_uri: str,
    endpoint: str | None,
) -> BundleWritten:
    """Model, scorer package, contract, FeatureService, model card and evidence together, with a digest manifest."""
    name = contract.name
    base = storage.join(bundles_uri, name, f"v{version}")
    files = {
        "contract.yaml": Path(contract_file).read_bytes(),
        "feature_service.json": _feature_service(contract),
        **_folder_files(run_artifact(tracking_uri, name, version, "")),  # the whole run: model/ and evidence/
        **_packages(tracking_uri, name, version),
    }
    manifest = {
        "model": name,
        "version": version,
        "contract_fingerprint": contract.fingerprint,
        "written_at": datetime.now(UTC).isoformat(),
        "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())},
    }
    for relative, data in files.items():
        storage.write_bytes(storage.join(base, relative), data, endpoint)
    storage.write_bytes(storage.join(base, "MANIFEST.json"), json.dumps(manifest, indent=2).encode(), endpoint)
    return BundleWritten(uri=base, files=len(files))


def _feature_service(contract: Contract) -> bytes:
    """The model's FeatureService as JSON: its name and ``view:feature`` references."""
    from feature_repo.definitions import build_repo

    service = build_repo(contract, "offline").model_service
    features = [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]
    return json.dumps({"name": service.name, "features": features}, indent=2).encode()


def _folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {
        f"{prefix}{path.relative_to(folder)}": path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def _packages(tracking_uri: str, name: str, version: str) -> dict[str, bytes]:
    """The registered model and its deployable package, which live beside the run in MLflow 3 (logged models)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    packages = {"model": f"models:/{name}/{version}"}
    scorer = (client(tracking_uri).get_model_version(name, version).tags or {}).get("scorer_uri")
    if scorer:
        packages["scorer"] = scorer
    files: dict[str, bytes] = {}
    for prefix, uri in packages.items():
        files.update(_folder_files(Path(mlflow.artifacts.download_artifacts(uri)), f"{prefix}/"))
    return files
