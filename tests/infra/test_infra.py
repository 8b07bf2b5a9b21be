"""infra/ checked offline: Kubernetes schemas, the flow-run Job template, checkov, hadolint, and agreement with the
lock and the code (the image copies every package, the charts run the locked Prefect)."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from closedloop.settings import PROJECT_ROOT

INFRA = PROJECT_ROOT / "infra"
KUBERNETES = "1.31"  # the oldest minor version EKS, GKE and AKS all still support
CHECKOV = PROJECT_ROOT / ".venv-tools" / "bin" / "checkov"
HADOLINT = Path(__import__("sys").executable).parent / "hadolint"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _render_job_template() -> dict[str, Any]:
    """The Job the Kubernetes worker creates for a flow run, with the template's defaults filled in."""
    template = json.loads((INFRA / "helm" / "base-job-template.json").read_text())
    values = {name: spec.get("default") for name, spec in template["variables"]["properties"].items()}
    values.update(
        name="closedloop-monitor-abc12",
        command=["prefect", "flow-run", "execute"],
        env=[{"name": "PREFECT__FLOW_RUN_ID", "value": "0b0e6f3c"}],
        labels={"prefect.io/flow-run-id": "0b0e6f3c"},
    )

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str):
            whole = re.fullmatch(r"\{\{ (\w+) \}\}", node)
            if whole:
                return values[whole.group(1)]
            return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values[m.group(1)]), node)
        return node

    job: dict[str, Any] = fill(template["job_configuration"]["job_manifest"])
    job["metadata"]["name"] = job["metadata"].pop("generateName") + "x"
    return job


@pytest.mark.parametrize("path", sorted((INFRA / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_match_the_kubernetes_api_schemas(path: Path) -> None:
    documents = _documents(path)
    assert documents
    for document in documents:
        # strict: a misspelt or misplaced field is an error, not silently dropped by the API server
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
        assert document["metadata"].get("namespace", "closedloop") == "closedloop"


def test_every_workload_has_probes_resources_and_a_locked_down_container() -> None:
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for document in _documents(path):
            if document["kind"] != "Deployment":
                continue
            pod = document["spec"]["template"]["spec"]
            for container in pod["containers"]:
                where = f"{path.name}: {document['metadata']['name']}/{container['name']}"
                assert "readinessProbe" in container and "livenessProbe" in container, where
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
                assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"], where
                assert context["capabilities"]["drop"] == ["ALL"], where
    scoring = next(d for d in _documents(INFRA / "k8s" / "scoring.yaml") if d["kind"] == "Deployment")
    container = scoring["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert not any("valueFrom" in e for e in container.get("env", []))  # credentials are mounted files


def test_the_flow_run_job_template_renders_a_valid_job(tmp_path: Path) -> None:
    job = _render_job_template()
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    # scanned with the flow runs' network policy, as they are applied together
    (tmp_path / "flows.yaml").write_text((INFRA / "k8s" / "flows.yaml").read_text())
    report = _checkov(tmp_path, "kubernetes")
    assert report["failed"] == [], report["failed"]


def _checkov(folder: Path, framework: str) -> dict[str, Any]:
    if not CHECKOV.exists():
        subprocess.run(["bash", str(PROJECT_ROOT / ".ci" / "tools")], check=True)
    done = subprocess.run(
        [str(CHECKOV), "-d", str(folder), "--framework", framework, "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    parsed = json.loads(done.stdout) if done.stdout.strip() else {}
    reports = parsed if isinstance(parsed, list) else [parsed]
    failed: list[str] = []
    skipped: list[dict[str, Any]] = []
    passed = 0
    for report in reports:
        results = report.get("results", {})
        passed += len(results.get("passed_checks", []))
        failed += [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in results.get("failed_checks", [])]
        skipped += results.get("skipped_checks", [])
    return {"passed": passed, "failed": failed, "skipped": skipped, "stderr": done.stderr[-2000:]}


@pytest.mark.parametrize(
    ("folder", "framework"),
    [("terraform", "terraform"), ("k8s", "kubernetes"), (".", "dockerfile")],
    ids=["terraform", "kubernetes", "dockerfile"],
)
def test_checkov_finds_nothing_left_unexplained(folder: str, framework: str) -> None:
    """Every finding is fixed, or skipped where it is declared with the reason next to it."""
    report = _checkov(INFRA / folder, framework)
    assert report["passed"] > 0, report["stderr"]  # it really scanned something
    assert report["failed"] == [], report["failed"]
    for skip in report["skipped"]:
        reason = (skip.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20, f"{skip['check_id']} on {skip['resource']} skipped without a reason"


def test_the_dockerfile_passes_hadolint_and_copies_what_the_wheel_ships() -> None:
    done = subprocess.run([str(HADOLINT), str(INFRA / "Dockerfile")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    dockerfile = (INFRA / "Dockerfile").read_text()
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    for package in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert f"COPY {package}/ {package}/" in dockerfile, f"the image misses the {package} package"
    assert "uv sync --frozen --no-dev" in dockerfile  # the lock's versions, nothing resolved at build time
    assert re.search(r"^USER \d+$", dockerfile, re.M), "the image runs as a numeric non-root user"


def test_the_charts_run_the_prefect_the_lock_pins() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    prefect = next(d for d in project["project"]["dependencies"] if d.startswith("prefect=="))
    version = prefect.split("==")[1]
    server = yaml.safe_load((INFRA / "helm" / "prefect-server.values.yaml").read_text())
    worker = yaml.safe_load((INFRA / "helm" / "prefect-worker.values.yaml").read_text())
    assert server["server"]["image"]["prefectTag"].startswith(f"{version}-")
    assert worker["worker"]["image"]["prefectTag"].startswith(f"{version}-")
    assert worker["worker"]["config"]["type"] == "kubernetes"
    assert server["postgresql"]["enabled"] is False  # the shared Postgres, as on the production profile
