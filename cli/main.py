"""The ``closedloop`` command line: the stack, the data, the benchmarks and the demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from closedloop.settings import Settings, SettingsError, disable_telemetry, load_settings

app = typer.Typer(help="closedloop: a closed-loop MLOps pipeline for credit-risk scoring.", no_args_is_help=True)
data_app = typer.Typer(help="Put data into the landing zone.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Inspect and replay quarantined batches.", no_args_is_help=True)
contract_app = typer.Typer(help="Inspect dataset contracts.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(contract_app, name="contract")
app.add_typer(quarantine_app, name="quarantine")

JsonFlag = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"closedloop: error: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _fail(str(exc))


def _emit(payload: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else text)


@app.callback()
def _main() -> None:
    disable_telemetry()


def _known_errors() -> tuple[type[BaseException], ...]:
    from cli.stack import StackError
    from closedloop.contract import ContractError
    from closedloop.storage import StorageError

    return (ContractError, StackError, StorageError, SettingsError)


def _status_table(rows: list[Any]) -> str:
    lines = [f"{'component':<10} {'state':<10} {'pid':>8}  address"]
    for row in rows:
        lines.append(
            f"{row.name:<10} {row.state:<10} {row.pid or '-':>8}  {row.address}"
            + (f"\n{'':<31}{row.detail}" if row.detail else "")
        )
    return "\n".join(lines)


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

    settings = _settings()
    try:
        rows = stack.up(settings, s3=s3, flows=flows, serving=serving)
    except _known_errors() as exc:
        _fail(str(exc))
    text = _status_table(rows) + f"\n\nstate: {settings.state_dir}\nprofile: {settings.profile.value}"
    if any(r.name == "s3" for r in rows):
        text += (
            "\n\nThe S3 endpoint keeps everything in memory and loses it on 'down'. Use it with\n"
            f"  export CLOSEDLOOP_S3_ENDPOINT_URL={settings.s3_local_endpoint} AWS_ACCESS_KEY_ID=test "
            "AWS_SECRET_ACCESS_KEY=test"
        )
    _emit(
        {"profile": settings.profile.value, "state_dir": settings.state_dir, "components": [r.to_dict() for r in rows]},
        as_json,
        text,
    )


@app.command()
def down(as_json: JsonFlag = False) -> None:
    """Stop exactly the servers 'up' started, by their recorded pids."""
    from cli import stack

    settings = _settings()
    stopped = stack.down(settings)
    _emit({"stopped": stopped}, as_json, f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Report each component, its pid and its address; exit 1 when something is not running."""
    from cli import stack

    settings = _settings()
    if not settings.state_dir.exists():
        _fail(
            f"no closedloop state at {settings.state_dir}: run 'closedloop up' first "
            "(or point CLOSEDLOOP_STATE_DIR at an existing state directory)"
        )
    rows = stack.status(settings)
    _emit(
        {"profile": settings.profile.value, "state_dir": settings.state_dir, "components": [r.to_dict() for r in rows]},
        as_json,
        _status_table(rows),
    )
    if any(r.state != "running" for r in rows):
        raise typer.Exit(1)


@contract_app.command("check")
def contract_check(
    path: Annotated[Path | None, typer.Argument(help="contract file (default: CLOSEDLOOP_CONTRACT)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate a contract and show what is derived from it."""
    from closedloop.contract import ContractError, load_contract

    target = path or _settings().contract
    try:
        contract = load_contract(target)
    except ContractError as exc:
        _fail(str(exc))
    inputs = [c.name for c in contract.model_inputs]
    sensitive = [c.name for c in contract.sensitive]
    excluded = {c.name: c.exclude for c in contract.excluded}
    derived = {
        "name": contract.name,
        "version": contract.version,
        "fingerprint": contract.fingerprint,
        "tables": {name: contract.required_columns(name) for name in contract.tables},
        "model_inputs": inputs,
        "sensitive": sensitive,
        "excluded": excluded,
        "label": contract.label.model_dump(),
    }
    text = (
        f"{contract.name} v{contract.version} ({contract.fingerprint}): valid\n"
        f"  model inputs: {', '.join(inputs)}\n"
        f"  sensitive:    {', '.join(sensitive) or '-'}\n"
        f"  excluded:     {', '.join(excluded) or '-'}"
    )
    _emit(derived, as_json, text)


@data_app.command("synth")
def data_synth(
    customers: Annotated[int, typer.Option(min=1, help="customers, one application each (~8.7 rows each)")] = 20_000,
    seed: int = 7,
    start: Annotated[str | None, typer.Option(help="first application month, YYYY-MM (default: a year ago)")] = None,
    months: Annotated[int, typer.Option(min=1)] = 12,
    scenario: Annotated[
        str, typer.Option(help="none, covariate_shift, new_category, concept_drift, quality_bug, delayed_labels")
    ] = "none",
    drift_start: Annotated[str | None, typer.Option(help="YYYY-MM the scenario starts (default: 2/3 in)")] = None,
    batch: Annotated[str, typer.Option(help="month or week")] = "month",
    file_format: Annotated[str, typer.Option("--format", help="parquet, csv or mixed")] = "parquet",
    out: Annotated[str | None, typer.Option(help="landing URI (default: the lake's landing zone)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Generate synthetic credit data as dated batches in the landing zone."""
    from samples.synthetic import FileFormat, Scenario, SyntheticConfig, write_synthetic

    settings = _settings()
    try:
        config = SyntheticConfig(
            customers=customers,
            seed=seed,
            start=start,
            months=months,
            scenario=Scenario(scenario),
            drift_start=drift_start,
            batch=batch,
            file_format=FileFormat(file_format),
        )
        target = out or settings.landing_uri("credit_synthetic")
        summary = write_synthetic(config, target, settings.s3_endpoint_url)
    except ValueError as exc:
        _fail(str(exc))
    except _known_errors() as exc:
        _fail(str(exc))
    payload = {
        "landing_uri": target,
        "rows": summary.rows,
        "total_rows": summary.total_rows,
        "files": len(summary.files),
        "config": summary.config,
    }
    _emit(
        payload,
        as_json,
        f"wrote {summary.total_rows:,} rows ({summary.rows}) in {len(summary.files)} files to {target}",
    )


@data_app.command("taiwan")
def data_taiwan(
    out: Annotated[str | None, typer.Option(help="landing URI (default: the lake's landing zone)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Reshape the shipped UCI Taiwan credit-default data into contract tables in the landing zone."""
    from samples.taiwan import write_taiwan

    settings = _settings()
    target = out or settings.landing_uri("taiwan_credit_default")
    try:
        rows = write_taiwan(target, endpoint_url=settings.s3_endpoint_url)
    except _known_errors() as exc:
        _fail(str(exc))
    _emit({"landing_uri": target, "rows": rows}, as_json, f"wrote {rows} to {target}")


def _connect(settings: Settings) -> None:
    """Point this process's Prefect and MLflow clients at the running stack (before Prefect is imported)."""
    import os

    from cli import stack

    try:
        stack.require_running(settings, ("prefect",))
    except stack.StackError as exc:
        _fail(str(exc))
    os.environ.update(settings.server_environment())


def _contract_option(contract: Path | None, settings: Settings) -> str:
    return str((contract or settings.contract).resolve())


ContractOption = Annotated[Path | None, typer.Option("--contract", help="contract file (default: CLOSEDLOOP_CONTRACT)")]


@app.command()
def ingest(
    sources: Annotated[
        list[str] | None, typer.Argument(help="files, folders or URIs (default: the landing zone)")
    ] = None,
    contract: ContractOption = None,
    no_materialize: Annotated[bool, typer.Option("--no-materialize", help="skip the online store")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the ingest/validate flow on the running stack and print its result."""
    settings = _settings()
    _connect(settings)
    from flows.ingest_validate import IngestParams, ingest_validate

    params = IngestParams(
        sources=list(sources or []), contract=_contract_option(contract, settings), materialize=not no_materialize
    )
    try:
        result = ingest_validate(params)
    except _known_errors() as exc:
        _fail(str(exc))
    text = "\n".join(
        f"{o.status:<11} {o.table or '?':<15} {o.rows_in:>8} in {o.rows_accepted:>8} ok {o.rows_quarantined:>8} bad  "
        f"{o.uri.rsplit('/', 1)[-1]}" + (f"\n{'':<12}{o.reason}" if o.reason else "")
        for o in result.batches
    ) + (
        f"\n\n{result.rows_in:,} rows in = {result.rows_accepted:,} accepted + {result.rows_quarantined:,} quarantined;"
        f" materialized: {', '.join(result.materialized_views) or 'nothing'}"
    )
    _emit(result.model_dump(mode="json"), as_json, text)


def _lake(settings: Settings, contract: Path | None) -> Any:
    from closedloop.contract import ContractError, load_contract
    from closedloop.lake import Lake

    try:
        loaded = load_contract(_contract_option(contract, settings))
    except ContractError as exc:
        _fail(str(exc))
    return Lake.of(settings.lake_uri, loaded.name, settings.s3_endpoint_url)


@quarantine_app.command("list")
def quarantine_list(contract: ContractOption = None, as_json: JsonFlag = False) -> None:
    """Quarantined batches of the dataset, newest first, with their reasons."""
    settings = _settings()
    records = sorted(_lake(settings, contract).quarantined(), key=lambda r: r["quarantined_at"], reverse=True)
    text = (
        "\n".join(
            f"{r['batch_id']}  {r['status']:<11} {r['table'] or '?':<15} {r['rows_quarantined']:>7} rows  "
            f"{r.get('source_name')}  replays: {len(r['replays'])}\n    {r['reason'] or _top(r['failing'])}"
            for r in records
        )
        or "no quarantined batches"
    )
    _emit(records, as_json, text)


def _top(failing: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in list(failing.items())[:3])


@quarantine_app.command("show")
def quarantine_show(batch: str, contract: ContractOption = None, rows: int = 10, as_json: JsonFlag = False) -> None:
    """One quarantined batch: its reason record and its first rejected rows with their reasons."""
    from closedloop import storage

    settings = _settings()
    lake = _lake(settings, contract)
    try:
        record = lake.read_reason(batch)
    except storage.StorageError as exc:
        _fail(str(exc))
    sample: list[dict[str, Any]] = []
    if storage.exists(lake.quarantine(batch, "rejected.parquet"), lake.endpoint_url):
        sample = lake.read_rejected(batch).head(rows).astype(str).to_dict(orient="records")
    text = (
        json.dumps(record, indent=2, default=str)
        + "\n\nrejected rows:\n"
        + "\n".join(f"  row {r['_source_row']}: {r['_reasons']}" for r in sample)
    )
    _emit({**record, "rejected_rows": sample}, as_json, text)


@quarantine_app.command("replay")
def quarantine_replay(
    batches: Annotated[list[str], typer.Argument(help="quarantined batch ids")],
    contract: ContractOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-validate quarantined batches through the ingest/validate flow (after fixing the contract or the data)."""
    settings = _settings()
    _connect(settings)
    from flows.ingest_validate import IngestParams, ingest_validate

    try:
        result = ingest_validate(IngestParams(replay=batches, contract=_contract_option(contract, settings)))
    except _known_errors() as exc:
        _fail(str(exc))
    text = "\n".join(
        f"{o.replay_of} -> {o.batch_id}: {o.status} ({o.rows_accepted} accepted, "
        f"{o.rows_quarantined} still quarantined)"
        for o in result.batches
    )
    _emit(result.model_dump(mode="json"), as_json, text)


@app.command()
def train(contract: ContractOption = None, as_json: JsonFlag = False) -> None:
    """Run the train/evaluate flow on the running stack: version, metrics with intervals, gate verdicts."""
    settings = _settings()
    _connect(settings)
    from flows.train_evaluate import TrainParams, train_evaluate
    from tasks.train.fit import TrainingDataError

    try:
        result = train_evaluate(TrainParams(contract=_contract_option(contract, settings)))
    except TrainingDataError as exc:
        _fail(str(exc))
    except _known_errors() as exc:
        _fail(str(exc))
    lines = [
        f"{result.dataset} v{result.version}: {'eligible' if result.eligible else 'NOT eligible'} "
        f"({result.training_rows:,} training rows)"
    ]
    for name, value in result.metrics.items():
        low, high = result.intervals.get(name, (float("nan"), float("nan")))
        lines.append(f"  {name:<9} {value:.4f}  [{low:.4f}, {high:.4f}]")
    lines += [f"  gate {k}: {v['verdict']} - {v.get('reason', '')}" for k, v in result.gates.items()]
    _emit(result.model_dump(mode="json"), as_json, "\n".join(lines))


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
    as_json: JsonFlag = False,
) -> None:
    """Run the package/deploy flow: bundle, infra validation, optional approval, rollout, atomic promotion."""
    settings = _settings()
    _connect(settings)
    from pydantic import ValidationError

    from flows.package_deploy import DeployParams, package_deploy
    from tasks.promote.promotion import DeployError

    try:
        params = DeployParams(
            contract=_contract_option(contract, settings),
            version=version,
            require_approval=approval,
            strategy=strategy,  # type: ignore[arg-type]
            canary_share=canary_share,
            observe_seconds=observe_seconds,
            min_requests=min_requests,
        )
    except ValidationError as exc:
        _fail("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()))
    try:
        result = package_deploy(params)
    except DeployError as exc:
        _fail(str(exc))
    text = (
        f"{result.dataset} v{result.version} promoted: champion v{result.champion} (previous: {result.previous})"
        if result.promoted
        else f"{result.dataset} v{result.version} NOT promoted: {result.reason}"
    )
    _emit(result.model_dump(mode="json"), as_json, text)
    if not result.promoted:
        raise typer.Exit(1)


@app.command()
def rollback(
    contract: ContractOption = None,
    reason: Annotated[str, typer.Option(help="why (recorded in both versions' history)")] = "manual rollback",
    as_json: JsonFlag = False,
) -> None:
    """Champion := previous, recorded in the deployment history of both versions."""
    import getpass

    settings = _settings()
    from closedloop.contract import ContractError, load_contract
    from tasks.promote.promotion import DeployError
    from tasks.promote.promotion import rollback as roll_back

    try:
        name = load_contract(_contract_option(contract, settings)).name
        result = roll_back(settings.mlflow_tracking_uri, name, reason, by=f"cli:{getpass.getuser()}")
    except (ContractError, DeployError) as exc:
        _fail(str(exc))
    _emit(result, as_json, f"{name}: champion v{result['champion']} (rolled back v{result['rolled_back']})")


@app.command()
def serve(
    contract: ContractOption = None,
    port: Annotated[int | None, typer.Option(help="port (default: CLOSEDLOOP_SERVING_PORT)")] = None,
    log_inferences: Annotated[bool, typer.Option(help="record every scored request in the lake")] = True,
) -> None:
    """Run the online scoring service in the foreground (FastAPI + uvicorn) against the running stack."""
    settings = _settings()
    _connect(settings)
    if settings.serving_token is None:
        _fail("set CLOSEDLOOP_SERVING_TOKEN: the scoring service never runs without a bearer token")
    import uvicorn

    from closedloop.contract import ContractError, load_contract
    from serving.app import create_app

    try:
        loaded = load_contract(_contract_option(contract, settings))
    except ContractError as exc:
        _fail(str(exc))
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
    import sys

    import httpx

    settings = _settings()
    if settings.serving_token is None:
        _fail("set CLOSEDLOOP_SERVING_TOKEN to the scoring service's bearer token")
    text = sys.stdin.read() if application == "-" else application
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"the application is not JSON: {exc}")
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
        _fail(f"scoring service at {target} unreachable ({exc}): start it with `closedloop serve`")
    if response.status_code != 200:
        _fail(f"{response.status_code} from {target}: {response.text[:2000]}")
    scores = response.json() if batch else [response.json()]
    lines = [
        f"{s['entity_id']}: {s['decision']} (p={s['probability']:.4f}, v{s['model_version']}; "
        f"reasons: {', '.join(r['feature'] for r in s['reasons']) or '-'})"
        for s in scores
    ]
    _emit(response.json(), as_json, "\n".join(lines))


@app.command("serve-flows")
def serve_flows() -> None:
    """Serve every flow as a deployment (schedules, runs from the UI); `up --flows` runs this in the background."""
    settings = _settings()
    _connect(settings)
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
    settings = _settings()
    _connect(settings)
    from deployments.schedules import register_on_pool

    try:
        registered = register_on_pool(pool, kind, image)
    except ValueError as exc:
        _fail(str(exc))
    text = "\n".join(f"{name:<16} {ident}" for name, ident in registered.items()) + (
        f"\n\non work pool {pool!r} ({kind}); start its worker: prefect worker start --pool {pool}"
    )
    _emit({"pool": pool, "type": kind, "deployments": registered}, as_json, text)


@app.command()
def bench(
    names: Annotated[list[str] | None, typer.Argument(help="benchmarks to run (default: all)")] = None,
    rows: Annotated[int, typer.Option(help="generator: rows to write")] = 1_000_000,
    customers: Annotated[
        int | None, typer.Option(min=1000, help="train: synthetic customers ingested first (1,400,000: ~1M rows)")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="train: keep the ingested data in this folder; a later run with as many customers reuses it"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the JSON and markdown results")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run benchmarks; each reports closedloop's figure, a raw baseline and their ratio."""
    from benchmarks import harness

    settings = _settings()
    try:
        options: dict[str, dict[str, Any]] = {"generator": {"rows": rows}}
        if customers is not None:
            options["train"] = {"customers": customers}
        if data is not None:
            options.setdefault("train", {})["data"] = str(data.resolve())
        report, path = harness.run(list(names or []), out or settings.state_dir / "bench", **options)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    _emit(report.to_dict(), as_json, report.markdown() + f"\nresults: {path} (+ .md)")


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=1000, help="synthetic customers for the year of data")] = 20_000,
    keep_running: Annotated[bool, typer.Option(help="leave the servers running afterwards")] = True,
    as_json: JsonFlag = False,
) -> None:
    """The closed loop: ingest, first champion, served traffic, drift, event-triggered retrain, new champion."""
    from cli import demo as loop
    from cli import stack

    settings = _settings()

    def say(line: str) -> None:
        if not as_json:
            typer.echo(line)

    known: tuple[type[BaseException], ...] = (*_known_errors(), loop.DemoError)
    try:
        say(_status_table(stack.up(settings, flows=True)))
        _connect(settings)  # before anything imports Prefect
        summary = loop.run(settings, customers, say)
    except known as exc:
        _fail(str(exc))
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
        f"Prefect UI: {settings.prefect_ui_url}\nMLflow UI:  {settings.mlflow_tracking_uri}\n"
        + ("Stop everything with: closedloop down" if keep_running else "stack stopped")
    )
    _emit(payload, as_json, text)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
