"""The ``closedloop`` command line: the stack, the data, the benchmarks and the demo."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import bench as benchmarks
from cli import console
from cli.batches import batch_app, data_app, exit_if_all_quarantined, quarantine_app
from cli.console import (
    INGEST_STEPS,
    NOT_SO,
    TRAIN_STEPS,
    ContractOption,
    JsonFlag,
    Shell,
    checked_contract,
    connect,
    contract_option,
    emit,
    fail,
    flow_runs,
    known_errors,
    settings_or_fail,
    status_table,
)
from cli.contracts import contract_app
from closedloop.settings import disable_telemetry

app = typer.Typer(
    cls=Shell, help="closedloop: a closed-loop MLOps pipeline for credit-risk scoring.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(contract_app, name="contract")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(batch_app, name="batch")


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the traceback of an unexpected error, and Prefect's of a failed run")
    ] = False,
) -> None:
    console.debugging(debug)
    disable_telemetry()
    # MLflow prints a "View run" link to stdout when a run ends: --json prints only JSON, and the commands' own
    # output names the versions they make
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@app.command()
def up(
    s3: Annotated[bool, typer.Option("--s3", help="also start a local in-memory S3 endpoint (moto)")] = False,
    flows: Annotated[bool, typer.Option("--flows", help="also serve the flows (run them from the Prefect UI)")] = False,
    serving: Annotated[
        bool, typer.Option("--serving", help="also run the scoring service (needs CLOSEDLOOP_SERVING_TOKEN)")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start the Prefect and MLflow servers in the background (idempotent) and print their addresses."""
    from cli import stack

    settings = settings_or_fail()
    try:
        rows = stack.up(settings, s3=s3, flows=flows, serving=serving)
    except known_errors() as exc:
        fail(str(exc))
    text = status_table(rows) + f"\n\nstate: {settings.state_dir}\nprofile: {settings.profile.value}"
    if any(r.name == "s3" for r in rows):
        text += (
            "\n\nThe S3 endpoint keeps everything in memory and loses it on 'down'. Use it with\n"
            f"  export CLOSEDLOOP_S3_ENDPOINT_URL={settings.s3_local_endpoint} AWS_ACCESS_KEY_ID=test "
            "AWS_SECRET_ACCESS_KEY=test"
        )
    emit(
        {"profile": settings.profile.value, "state_dir": settings.state_dir, "components": [r.to_dict() for r in rows]},
        as_json,
        text,
    )


@app.command()
def down(as_json: JsonFlag = False) -> None:
    """Stop exactly the servers 'up' started, by their recorded pids."""
    from cli import stack

    settings = settings_or_fail()
    stopped = stack.down(settings)
    emit({"stopped": stopped}, as_json, f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Report each component, its pid and its address; exit 1 when something is not running."""
    from cli import stack

    settings = settings_or_fail()
    if not settings.state_dir.exists():
        fail(
            f"no closedloop state at {settings.state_dir}: run 'closedloop up' first "
            "(or point CLOSEDLOOP_STATE_DIR at an existing state directory)"
        )
    rows = stack.status(settings)
    emit(
        {"profile": settings.profile.value, "state_dir": settings.state_dir, "components": [r.to_dict() for r in rows]},
        as_json,
        status_table(rows),
    )
    if any(r.state != "running" for r in rows):
        raise typer.Exit(NOT_SO)


@app.command()
def ingest(
    sources: Annotated[
        list[str] | None, typer.Argument(help="files, folders or URIs (default: the landing zone)")
    ] = None,
    contract: ContractOption = None,
    no_materialize: Annotated[bool, typer.Option("--no-materialize", help="skip the online store")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the ingest/validate flow on the running stack and print its result.

    Exit code 3 when every new batch was quarantined (nothing stored); some rows or batches quarantined is 0.
    """
    settings = settings_or_fail()
    path, _ = checked_contract(contract, settings)
    for source in sources or []:
        if "://" not in source and not Path(source).exists():
            fail(
                f"{source}: no such file or folder: give an existing file or folder, a URI, or none (the landing zone)"
            )
    connect(settings)
    from flows.ingest_validate import IngestParams, ingest_validate

    params = IngestParams(sources=list(sources or []), contract=path, materialize=not no_materialize)
    with flow_runs(INGEST_STEPS if params.materialize else replace(INGEST_STEPS, after_items="")):
        result = ingest_validate(params)
    lines = []
    for o in result.batches:
        lines.append(
            f"{o.status:<11} {o.table or '?':<15} {o.rows_in:>8} in {o.rows_accepted:>8} ok "
            f"{o.rows_quarantined:>8} bad  {o.rows_duplicate:>8} dup  {o.uri.rsplit('/', 1)[-1]}"
        )
        if o.reason:
            lines.append(f"{'':<12}{o.reason}")
        if o.made_missing:  # what the contract's null tokens and missing codes made missing, per column
            lines.append(f"{'':<12}made missing: " + ", ".join(f"{k} {v:,}" for k, v in o.made_missing.items()))
    text = "\n".join(lines) + (
        f"\n\n{result.rows_in:,} rows in = {result.rows_accepted:,} accepted + {result.rows_quarantined:,} quarantined"
        f" + {result.rows_duplicate:,} duplicate (stored already);"
        f" materialized: {', '.join(result.materialized_views) or 'nothing'}"
    )
    emit(result.model_dump(mode="json"), as_json, text)
    exit_if_all_quarantined(result.batches)


def _fairness_overrides(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs of ``--fairness``, checked against the contract's fairness fields."""
    from pydantic import ValidationError

    from closedloop.contract import FairnessPolicy

    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--fairness {pair!r}: expected KEY=VALUE, for example --fairness min_group_rows=30")
        given[key.strip()] = value.strip()
    try:
        FairnessPolicy.model_validate(given)
    except ValidationError as exc:
        fields = ", ".join(FairnessPolicy.model_fields)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"--fairness: {problems} (fields: {fields})")
    return given


@app.command()
def train(
    contract: ContractOption = None,
    as_json: JsonFlag = False,
    fairness: Annotated[
        list[str] | None,
        typer.Option(
            "--fairness",
            help="KEY=VALUE fairness limit over the contract's for this run (repeatable), e.g. min_group_rows=30; "
            "recorded with the version",
        ),
    ] = None,
) -> None:
    """Run the train/evaluate flow on the running stack: version, metrics with intervals, gate verdicts."""
    overrides = _fairness_overrides(fairness or [])
    settings = settings_or_fail()
    path, _ = checked_contract(contract, settings)
    connect(settings, needs=("prefect", "mlflow"))
    from flows.train_evaluate import TrainParams, train_evaluate

    params = TrainParams.model_validate({"contract": path, "fairness": overrides})
    with flow_runs(TRAIN_STEPS):
        result = train_evaluate(params)
    lines = [
        f"{result.dataset} v{result.version}: {'eligible' if result.eligible else 'NOT eligible'} "
        f"({result.training_rows:,} training rows)"
    ]
    for name, value in result.metrics.items():
        low, high = result.intervals.get(name, (float("nan"), float("nan")))
        lines.append(f"  {name:<9} {value:.4f}  [{low:.4f}, {high:.4f}]")
    lines += [f"  gate {name}: {gate.verdict} - {gate.reason}" for name, gate in result.gates.items()]
    emit(result.model_dump(mode="json"), as_json, "\n".join(lines))


@app.command("deploy")
def deploy_command(
    version: Annotated[str | None, typer.Argument(help="registered version (default: the challenger)")] = None,
    contract: ContractOption = None,
    approval: Annotated[
        bool | None, typer.Option("--approval/--no-approval", help="pause for approval in the Prefect UI")
    ] = None,
    strategy: Annotated[
        str, typer.Option(help="direct | shadow | canary (shadow and canary are watched on live traffic first)")
    ] = "direct",
    canary_share: Annotated[float, typer.Option(help="canary: share of entities the candidate answers")] = 0.1,
    observe_seconds: Annotated[int, typer.Option(help="shadow/canary: seconds to watch before promoting")] = 600,
    min_requests: Annotated[int, typer.Option(help="shadow/canary: candidate answers needed to promote")] = 200,
    approve_as: Annotated[
        str | None,
        typer.Option(
            help="approve the promotion as this person (recorded and sealed with it); without it an "
            "approval the version needs is asked for in the Prefect UI"
        ),
    ] = None,
    comment: Annotated[str, typer.Option(help="the approver's reasons, kept with the approval")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Run the package/deploy flow: bundle, infra validation, optional approval, rollout, atomic promotion."""
    settings = settings_or_fail()
    path, loaded = checked_contract(contract, settings)
    connect(settings, needs=("prefect", "mlflow"))
    from pydantic import ValidationError

    from flows.package_deploy import DeployParams, package_deploy

    try:
        params = DeployParams(
            contract=path,
            version=version,
            require_approval=approval,
            strategy=strategy,  # type: ignore[arg-type]
            canary_share=canary_share,
            observe_seconds=observe_seconds,
            min_requests=min_requests,
            approved_by=approve_as,
            approval_comment=comment,
        )
    except ValidationError as exc:
        fail("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()))
    _check_version(settings.mlflow_tracking_uri, loaded.name, version)
    with flow_runs():
        result = package_deploy(params)
    text = (
        f"{result.dataset} v{result.version} promoted: champion v{result.champion} (previous: {result.previous})"
        if result.promoted
        else f"{result.dataset} v{result.version} NOT promoted: {result.reason}"
    )
    emit(result.model_dump(mode="json"), as_json, text)
    if not result.promoted:
        raise typer.Exit(NOT_SO)


def _check_version(tracking_uri: str, name: str, version: str | None) -> None:
    """Refuse a version the registry does not hold (or no challenger) before the deploy flow starts."""
    from closedloop.registry import CHALLENGER, client

    registry = client(tracking_uri)
    found = sorted(int(v.version) for v in registry.search_model_versions(f"name = '{name}'"))
    held = f"registered versions: {', '.join(map(str, found))}" if found else "none registered yet"
    if version is not None and (not version.isdigit() or int(version) not in found):
        fail(f"{name} has no version {version!r} ({held}): give a registered one, or train one: 'closedloop train'")
    if version is None and (not found or CHALLENGER not in registry.get_registered_model(name).aliases):
        fail(
            f"{name} has no challenger, no eligible version waiting ({held}): give a version to deploy, "
            "or train an eligible one with 'closedloop train'"
        )


@app.command()
def rollback(
    contract: ContractOption = None,
    reason: Annotated[str, typer.Option(help="why (recorded in both versions' history)")] = "manual rollback",
    as_json: JsonFlag = False,
) -> None:
    """Champion := previous, recorded in the deployment history of both versions."""
    import getpass

    settings = settings_or_fail()
    from closedloop.contract import ContractError, load_contract
    from tasks.promote.policy import DeployError
    from tasks.promote.promotion import rollback as roll_back

    try:
        name = load_contract(contract_option(contract, settings)).name
        from closedloop import seal

        keys = seal.key_files(settings)
        result = roll_back(settings.mlflow_tracking_uri, name, reason, by=f"cli:{getpass.getuser()}", keys=keys)
    except (ContractError, DeployError) as exc:
        fail(str(exc))
    emit(result.model_dump(), as_json, f"{name}: champion v{result.champion} (rolled back v{result.rolled_back})")


@app.command()
def serve(
    contract: ContractOption = None,
    port: Annotated[int | None, typer.Option(help="port (default: CLOSEDLOOP_SERVING_PORT)")] = None,
    log_inferences: Annotated[bool, typer.Option(help="record every scored request in the lake")] = True,
) -> None:
    """Run the online scoring service in the foreground (FastAPI + uvicorn) against the running stack."""
    settings = settings_or_fail()
    connect(settings)
    if settings.serving_token is None:
        fail("set CLOSEDLOOP_SERVING_TOKEN: the scoring service never runs without a bearer token")
    import uvicorn

    from closedloop.contract import ContractError, load_contract
    from serving.app import create_app

    try:
        loaded = load_contract(contract_option(contract, settings))
    except ContractError as exc:
        fail(str(exc))
    log = None
    if log_inferences:
        from closedloop.inference_log import InferenceLog
        from closedloop.lake import Lake

        log = InferenceLog(
            Lake.of(settings.lake_uri, loaded.name, settings.s3_endpoint_url),
            journal_dir=settings.state_dir / "inference-journal" / loaded.name,
        )
        recovered = log.recover()  # what a killed predecessor had not flushed yet
        if recovered["segments"]:
            typer.echo(f"inference log: recovered {recovered['recovered']} records ({recovered['torn']} torn lines)")
        log.start()
    application = create_app(settings, loaded, settings.serving_token.get_secret_value(), inference_log=log)
    try:
        uvicorn.run(application, host=settings.host, port=port or settings.serving_port, log_level="info")
    finally:
        if log is not None:
            log.close()


@app.command()
def score(
    application: Annotated[
        str, typer.Argument(help="JSON of one application or a list of them, or @FILE, or - (stdin)")
    ],
    url: Annotated[
        str | None, typer.Option(help="scoring service (default: CLOSEDLOOP_SERVING_PORT on the host)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Score applications with the running scoring service: probability, decision, reasons, model version."""
    import httpx

    settings = settings_or_fail()
    if settings.serving_token is None:
        fail("set CLOSEDLOOP_SERVING_TOKEN to the scoring service's bearer token")
    body = _application(application)
    batch = isinstance(body, list)
    target = (url or settings.serving_url).rstrip("/") + ("/v1/score/batch" if batch else "/v1/score")
    try:
        response = httpx.post(
            target,
            json={"applications": body} if batch else body,
            headers={"Authorization": f"Bearer {settings.serving_token.get_secret_value()}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        fail(f"scoring service at {target} unreachable ({exc}): start it with `closedloop serve`")
    if response.status_code != 200:
        fail(f"{response.status_code} from {target}: {response.text[:2000]}")
    scores = response.json() if batch else [response.json()]
    lines = [
        f"{s['entity_id']}: {s['decision']} (p={s['probability']:.4f}, v{s['model_version']}; "
        f"reasons: {', '.join(r['feature'] for r in s['reasons']) or '-'})"
        for s in scores
    ]
    emit(response.json(), as_json, "\n".join(lines))


def _application(given: str) -> Any:
    """The JSON given inline, in ``@FILE`` or on stdin (``-``), read and parsed before anything is sent."""
    where, text = "the application", given
    if given == "-":
        where, text = "stdin", sys.stdin.read()
    elif given.startswith("@"):
        where = given[1:]
        try:
            text = Path(where).read_text()
        except OSError as exc:
            fail(f"{where}: cannot read the application ({exc.strerror}): give @FILE of an existing JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{where} is not JSON ({exc}): give one application as a JSON object, or a list of them")


@app.command("serve-flows")
def serve_flows() -> None:
    """Serve every flow as a deployment (schedules, runs from the UI); `up --flows` runs this in the background."""
    settings = settings_or_fail()
    connect(settings)
    from prefect import serve

    from deployments.schedules import deployments

    serve(*deployments(), limit=2)


@app.command("deploy-flows")
def deploy_flows(
    pool: Annotated[str, typer.Option(help="work pool to register the deployments on")] = "closedloop-process",
    kind: Annotated[str, typer.Option("--type", help="process (a local worker) or kubernetes (Jobs)")] = "process",
    image: Annotated[str | None, typer.Option(help="kubernetes: closedloop's image (infra/Dockerfile)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register every flow's deployment on a work pool; a worker (`prefect worker start --pool POOL`) runs them."""
    settings = settings_or_fail()
    connect(settings)
    from deployments.schedules import register_on_pool

    try:
        registered = register_on_pool(pool, kind, image)
    except ValueError as exc:
        fail(str(exc))
    text = "\n".join(f"{name:<16} {ident}" for name, ident in registered.items()) + (
        f"\n\non work pool {pool!r} ({kind}); start its worker: prefect worker start --pool {pool}"
    )
    emit({"pool": pool, "type": kind, "deployments": registered}, as_json, text)


app.command(context_settings=benchmarks.CONTEXT, add_help_option=False)(benchmarks.bench)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=1000, help="synthetic customers for the year of data")] = 20_000,
    keep_running: Annotated[bool, typer.Option(help="leave the servers running afterwards")] = True,
    as_json: JsonFlag = False,
) -> None:
    """The closed loop: ingest, first champion, served traffic, drift, event-triggered retrain, new champion."""
    from cli import demo as loop
    from cli import stack

    settings = settings_or_fail()

    def say(line: str) -> None:
        if not as_json:
            typer.echo(line)

    known: tuple[type[BaseException], ...] = (*known_errors(), loop.DemoError)
    try:
        say(status_table(stack.up(settings, flows=True)))
        connect(settings)  # before anything imports Prefect
        summary = loop.run(settings, customers, say)
    except known as exc:
        fail(str(exc))
    finally:
        if not keep_running:
            stack.down(settings)
    payload = summary.to_dict()
    payload.update(prefect_ui=settings.prefect_ui_url, mlflow_ui=settings.mlflow_tracking_uri)
    drift = summary.drift
    text = (
        f"\nclosed loop done in {summary.wall_seconds:.0f} s: {summary.rows_ingested:,} rows ingested "
        f"({summary.rows_quarantined:,} quarantined); champion v{summary.versions.get('first_champion')} -> "
        f"v{summary.versions.get('new_champion')}\n"
        f"drift window {drift.get('window', {}).get('start')} .. {drift.get('window', {}).get('end')}: "
        f"{', '.join(drift.get('features', {})) or '-'}; event {drift.get('event_id')} -> retrain run "
        f"{summary.retrain.get('flow_run')} after {summary.retrain.get('event_to_start_seconds')} s\n"
        f"{summary.requests:,} requests, {summary.failed_requests} failed; post-deploy verification: "
        f"{(summary.verification or {}).get('verdict')}\n"
        f"Prefect UI: {settings.prefect_ui_url}\n"
        f"MLflow UI:  {settings.mlflow_tracking_uri}/#/experiments?workflowType=machine_learning\n"
        + ("Stop everything with: closedloop down" if keep_running else "stack stopped")
    )
    emit(payload, as_json, text)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
