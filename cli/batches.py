"""The data commands: data into the landing zone; quarantined batches listed, shown, replayed; batches retracted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.console import (
    ALL_QUARANTINED,
    INGEST_STEPS,
    ContractOption,
    JsonFlag,
    Progress,
    checked_contract,
    connect,
    contract_option,
    emit,
    fail,
    flow_runs,
    known_errors,
    settings_or_fail,
    warn,
)
from closedloop.settings import Settings

data_app = typer.Typer(help="Put data into the landing zone.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Inspect and replay quarantined batches.", no_args_is_help=True)
batch_app = typer.Typer(help="Act on ingested batches.", no_args_is_help=True)


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

    settings = settings_or_fail()
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
        with Progress("data synth", config.customers, "customers") as progress:
            summary = write_synthetic(config, target, settings.s3_endpoint_url, progress=progress.reached)
    except ValueError as exc:
        fail(str(exc))
    except known_errors() as exc:
        fail(str(exc))
    payload = {
        "landing_uri": target,
        "rows": summary.rows,
        "total_rows": summary.total_rows,
        "files": len(summary.files),
        "config": summary.config,
    }
    emit(
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

    settings = settings_or_fail()
    target = out or settings.landing_uri("taiwan_credit_default")
    try:
        rows = write_taiwan(target, endpoint_url=settings.s3_endpoint_url)
    except known_errors() as exc:
        fail(str(exc))
    emit({"landing_uri": target, "rows": rows}, as_json, f"wrote {rows} to {target}")


def exit_if_all_quarantined(batches: list[Any]) -> None:
    """Exit 3 when every new batch of an ingest or replay was quarantined: the run stored nothing.

    A run that stored some rows exits 0 even when it quarantined others: quarantine is how bad rows are meant to
    be handled, and the counts printed (``rows_quarantined`` with --json) say how many.
    """
    new = [b for b in batches if b.status != "duplicate"]
    if new and all(b.status == "quarantined" for b in new):
        warn(
            f"all {len(new)} new batch(es) quarantined, nothing stored: 'closedloop quarantine list' says why; fix "
            "the data or the contract, then 'closedloop quarantine replay BATCH...'"
        )
        raise typer.Exit(ALL_QUARANTINED)


def _lake(settings: Settings, contract: Path | None) -> Any:
    from closedloop.lake import Lake

    _, loaded = checked_contract(contract, settings)
    return Lake.of(settings.lake_uri, loaded.name, settings.s3_endpoint_url)


@quarantine_app.command("list")
def quarantine_list(contract: ContractOption = None, as_json: JsonFlag = False) -> None:
    """Quarantined batches of the dataset, newest first, with their reasons."""
    settings = settings_or_fail()
    records = sorted(_lake(settings, contract).quarantined(), key=lambda r: r["quarantined_at"], reverse=True)
    text = (
        "\n".join(
            f"{r['batch_id']}  {r['status']:<11} {r['table'] or '?':<15} {r['rows_quarantined']:>7} rows  "
            f"{r.get('source_name')}  replays: {len(r['replays'])}\n    {r['reason'] or _top(r['failing'])}"
            for r in records
        )
        or "no quarantined batches"
    )
    emit(records, as_json, text)


def _top(failing: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in list(failing.items())[:3])


@quarantine_app.command("show")
def quarantine_show(batch: str, contract: ContractOption = None, rows: int = 10, as_json: JsonFlag = False) -> None:
    """One quarantined batch: its reason record and its first rejected rows with their reasons."""
    from closedloop import storage

    settings = settings_or_fail()
    lake = _lake(settings, contract)
    try:
        record = lake.read_reason(batch)
    except storage.StorageError as exc:
        fail(str(exc))
    sample: list[dict[str, Any]] = []
    if storage.exists(lake.quarantine(batch, "rejected.parquet"), lake.endpoint_url):
        sample = lake.read_rejected(batch).head(rows).astype(str).to_dict(orient="records")
    text = (
        json.dumps(record, indent=2, default=str)
        + "\n\nrejected rows:\n"
        + "\n".join(f"  row {r['_source_row']}: {r['_reasons']}" for r in sample)
    )
    emit({**record, "rejected_rows": sample}, as_json, text)


@quarantine_app.command("replay")
def quarantine_replay(
    batches: Annotated[list[str], typer.Argument(help="quarantined batch ids")],
    contract: ContractOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-validate quarantined batches through the ingest/validate flow (after fixing the contract or the data)."""
    from closedloop.lake import BatchIdError, checked_batch_id

    try:
        batches = [checked_batch_id(b) for b in batches]  # refused before anything connects
    except BatchIdError as exc:
        fail(str(exc))
    settings = settings_or_fail()
    lake = _lake(settings, contract)
    for batch in batches:
        lake.read_reason(batch)  # an unknown batch is refused here, by name, before the flow starts
    connect(settings)
    from flows.ingest_validate import IngestParams, ingest_validate

    with flow_runs(INGEST_STEPS, total=len(batches)):
        result = ingest_validate(IngestParams(replay=batches, contract=contract_option(contract, settings)))
    text = "\n".join(
        f"{o.replay_of} -> {o.batch_id}: {o.status} ({o.rows_accepted} accepted, "
        f"{o.rows_quarantined} still quarantined, {o.rows_duplicate} stored already)"
        for o in result.batches
    )
    emit(result.model_dump(mode="json"), as_json, text)
    exit_if_all_quarantined(result.batches)


@batch_app.command("retract")
def batch_retract(
    batch: Annotated[str, typer.Argument(help="ledgered batch id (a replay: <id>-r<n>)")],
    reason: Annotated[
        str, typer.Option("--reason", help="required: why the batch is retracted (kept in its ledger record)")
    ] = "",
    contract: ContractOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Take a wrong batch's rows out of the offline store (into its archive) and out of the online store.

    Running it again finishes a retraction a crash interrupted.
    """
    from closedloop import storage

    if not reason.strip():
        fail("--reason is required: say why the batch is retracted (it is kept in the batch's ledger record)")
    settings = settings_or_fail()
    lake = _lake(settings, contract)
    try:
        lake.check_retractable(batch)  # refused before any flow run: unknown, retracted already, no stored rows
    except (storage.StorageError, ValueError) as exc:
        fail(str(exc))
    connect(settings)
    from flows.retract import RetractParams, retract

    try:
        with flow_runs():
            result = retract(RetractParams(batch_id=batch, reason=reason, contract=contract_option(contract, settings)))
    except ValueError as exc:
        fail(str(exc))
    emit(result.model_dump(mode="json"), as_json, _retraction_text(result.model_dump(mode="json")))


def _retraction_text(result: dict[str, Any]) -> str:
    """What a retraction moved, and what the operator does next."""
    files: dict[str, int] = {}
    for path in result["objects"]:
        area = "/".join(path.split("/")[:2])
        files[area] = files.get(area, 0) + 1
    lines = [
        f"batch {result['batch_id']} ({result['table']}, {result['status']}) retracted: {result['reason']}",
        f"  {result['rows']:,} rows taken out of the offline store"
        + (" (a half-done retraction finished)" if result["resumed"] else ""),
        f"  moved to {result['archive']}/ (kept, never deleted):",
        *(
            f"    {area}: {count} file(s), {result['rows_by_table'].get(area.split('/')[1], 0):,} rows"
            if area.startswith("offline/")
            else f"    {area}: {count} key index file(s)"
            for area, count in files.items()
        ),
        "  online store refreshed: "
        + (", ".join(f"{view} ({n} entities reloaded)" for view, n in result["online_views"].items()) or "no view"),
        "next:",
        "  - send the corrected file to the landing zone and run `closedloop ingest`: the retracted rows' keys are",
        "    no longer stored, so its rows are accepted as new (the retracted file itself is still ledgered: the",
        "    same bytes sent again are skipped)",
    ]
    stored = [r for r in result["replays"] if r["rows_accepted"] and r["retracted"] != "done"]
    if stored:
        lines.append("  - replays of this batch are stored batches of their own; retract them too if they are wrong:")
        lines += [
            f"      closedloop batch retract {r['batch_id']} --reason '...'  ({r['status']}, {r['rows_accepted']} rows)"
            for r in stored
        ]
    if result["quarantine"]:
        lines.append(f"  - its rejected rows stay in {result['quarantine']}: do not replay them")
    if result["replay_of"]:
        lines.append(f"  - it replayed batch {result['replay_of']}, whose own stored rows are still there")
    return "\n".join(lines)
