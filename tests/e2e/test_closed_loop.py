"""The README's main command, end to end: `closedloop demo` closes the loop, and the UIs show it in a browser.

The demo runs as a user runs it (its own process, its own state folder and ports); the browser is Debian's
Chromium driven by Playwright (never a downloaded browser). Screenshots go to ``.closedloop/screenshots/``,
the demo's summary to ``.closedloop/demo-summary.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, prefect_api

from closedloop.settings import PROJECT_ROOT

# the demo's own size: with fewer customers the test windows are small enough for a fairness gate to flip on
# noise (12,000 customers: the first model's disparate impact on age came out 0.798, under the 0.8 limit)
pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(1800)]

CLOSEDLOOP = str(Path(sys.executable).parent / "closedloop")
SCREENSHOTS = PROJECT_ROOT / ".closedloop" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _run_demo(env: dict[str, str], keep_as: str) -> dict[str, Any]:
    """`closedloop demo --json` as a user runs it; its summary is kept in .closedloop/ for the README's figures."""
    done = subprocess.run(
        [CLOSEDLOOP, "demo", "--customers", "20000", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS.parent / keep_as).write_text(json.dumps(summary, indent=2))
    return summary


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("CLOSEDLOOP_", "PREFECT_"))}
    env.update(
        CLOSEDLOOP_STATE_DIR=str(tmp_path_factory.mktemp("demo-state")),
        CLOSEDLOOP_PREFECT_PORT=str(free_port()),
        CLOSEDLOOP_MLFLOW_PORT=str(free_port()),
        CLOSEDLOOP_SERVING_PORT=str(free_port()),
    )
    try:
        yield {"summary": _run_demo(env, "demo-summary.json"), "env": env}
    finally:
        subprocess.run([CLOSEDLOOP, "down"], env=env, capture_output=True, timeout=120, check=False)


def test_the_demo_closes_the_loop(demo: dict[str, Any]) -> None:
    s = demo["summary"]
    assert s["rows_ingested"] > 0
    first, new = s["versions"]["first_champion"], s["versions"]["new_champion"]
    assert first != new
    alerted = [w for w in s["windows"] if w["alert"]]
    assert len(alerted) == 1 and alerted[0]["event_id"] == s["drift"]["event_id"]
    assert "income" in s["drift"]["features"]  # the injected drift, found by the monitor
    assert all(w["answered_by"] == [first] for w in s["windows"][:-1])  # served by the first champion ...
    assert s["windows"][-1]["answered_by"] == [new]  # ... then by the retrained one, after the trigger deployed it
    assert s["retrain"]["eligible"] == "true" and s["retrain"]["version"] == new
    assert s["retrain"]["event_to_start_seconds"] is not None
    assert s["verification"]["verdict"] == "pass", s["verification"]  # the violation is gone
    assert "income" not in s["windows"][-1]["drifted"]
    assert s["failed_requests"] == 0 and s["requests"] > 0
    run = prefect_api("GET", f"{s['prefect_ui']}/api/flow_runs/{s['retrain']['flow_run']}").json()
    assert run["parameters"]["params"]["trigger_event_id"] == s["drift"]["event_id"]  # started by the event


def test_the_uis_show_the_deployments_the_triggered_run_and_the_champion(demo: dict[str, Any]) -> None:
    # Playwright's sync API leaves an event loop behind in its process, which Prefect's in-process flows of the
    # later test modules then trip over: the browser runs in a child process of its own
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        pool.apply(browse, (demo["summary"], str(SCREENSHOTS)))
    assert (SCREENSHOTS / "mlflow-champion.png").stat().st_size > 10_000


def browse(s: dict[str, Any], folder: str) -> None:
    """Open the Prefect and MLflow UIs in Debian's Chromium; each wait fails the test if the text never shows."""
    from playwright.sync_api import sync_playwright

    shots = Path(folder)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{s['prefect_ui']}/deployments", wait_until="networkidle")
            for name in ("ingest-validate", "train-evaluate", "package-deploy", "monitor", "batch-score"):
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=shots / "prefect-deployments.png", full_page=True)

            page.goto(f"{s['prefect_ui']}/runs/flow-run/{s['retrain']['flow_run']}", wait_until="networkidle")
            page.get_by_text("train_evaluate").first.wait_for(timeout=30_000)
            page.get_by_text("retrain-on-drift").first.wait_for(timeout=30_000)  # started by the drift trigger
            page.get_by_text("Completed").first.wait_for(timeout=30_000)
            page.screenshot(path=shots / "prefect-drift-triggered-retrain.png", full_page=True)

            # MLflow's UI keeps polling the server: the network never idles, the page is ready when the text shows
            page.goto(f"{s['mlflow_ui']}/#/models/credit_synthetic", wait_until="domcontentloaded")
            page.get_by_text("champion").first.wait_for(timeout=30_000)
            page.get_by_text(f"Version {s['versions']['new_champion']}").first.wait_for(timeout=30_000)
            page.screenshot(path=shots / "mlflow-champion.png", full_page=True)
        finally:
            browser.close()


@pytest.fixture(scope="module")
def production_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`closedloop up --s3` then `closedloop demo` on the production profile: Postgres, Redis, S3 (moto)."""
    import uuid

    import psycopg
    import redis

    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except (psycopg.Error, redis.RedisError) as exc:  # .ci/run starts both
        pytest.skip(f"Postgres or Redis is not running on 127.0.0.1 ({exc})")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("CLOSEDLOOP_", "PREFECT_", "AWS_"))}
    prefix = f"cle2e_{uuid.uuid4().hex[:8]}"
    s3_port = free_port()
    env.update(
        CLOSEDLOOP_PROFILE="production",
        CLOSEDLOOP_STATE_DIR=str(tmp_path_factory.mktemp("production-demo-state")),
        CLOSEDLOOP_DATABASE_PREFIX=prefix,
        CLOSEDLOOP_PREFECT_PORT=str(free_port()),
        CLOSEDLOOP_MLFLOW_PORT=str(free_port()),
        CLOSEDLOOP_SERVING_PORT=str(free_port()),
        CLOSEDLOOP_S3_PORT=str(s3_port),
        CLOSEDLOOP_S3_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
        CLOSEDLOOP_REDIS_URL="127.0.0.1:6379,db=9",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        up = subprocess.run([CLOSEDLOOP, "up", "--s3"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        yield {"summary": _run_demo(env, "demo-summary-production.json"), "env": env}
    finally:
        subprocess.run([CLOSEDLOOP, "down"], env=env, capture_output=True, timeout=120, check=False)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            for component in ("prefect", "mlflow", "feast"):
                conn.execute(f'DROP DATABASE IF EXISTS "{prefix}_{component}" WITH (FORCE)')
        redis.Redis(host="127.0.0.1", port=6379, db=9).flushdb()


def test_the_demo_closes_the_loop_on_the_production_profile(production_demo: dict[str, Any]) -> None:
    """The same loop on Postgres, Redis and S3; every deploy waited for an approval, recorded with its reviewer."""
    import boto3

    s = production_demo["summary"]
    env = production_demo["env"]
    first, new = s["versions"]["first_champion"], s["versions"]["new_champion"]
    assert first != new and s["retrain"]["eligible"] == "true"
    assert s["verification"]["verdict"] == "pass", s["verification"]
    assert s["failed_requests"] == 0 and s["requests"] > 0
    # the lake and the inference log are in the bucket
    s3 = boto3.client(
        "s3", endpoint_url=env["CLOSEDLOOP_S3_ENDPOINT_URL"], aws_access_key_id="test", aws_secret_access_key="test"
    )
    for area in ("landing", "offline/profiles", "ledger", "inference", "monitor/windows"):
        listed = s3.list_objects_v2(Bucket="closedloop", Prefix=f"lake/credit_synthetic/{area}/")
        assert listed.get("KeyCount", 0) > 0, area
    assert s3.list_objects_v2(Bucket="closedloop", Prefix="mlflow/").get("KeyCount", 0) > 0
    assert not (Path(env["CLOSEDLOOP_STATE_DIR"]) / "lake").exists()  # the lake is only in the bucket
    # approvals: production asks for one before every promotion; the demo's own is recorded like a person's
    from tasks.promote.promotion import history

    tracking = f"http://127.0.0.1:{env['CLOSEDLOOP_MLFLOW_PORT']}"
    approvals = [h for h in history(tracking, "credit_synthetic", new) if h.get("action") == "approval"]
    assert approvals and approvals[-1]["reviewer"] == "closedloop demo" and approvals[-1]["approve"] is True
