"""The contract commands: validate a contract and show what is derived from it; draft one from a table's files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.console import JsonFlag, emit, fail, settings_or_fail

if TYPE_CHECKING:
    from closedloop.contract import Contract

contract_app = typer.Typer(help="Inspect dataset contracts.", no_args_is_help=True)


@contract_app.command("check")
def contract_check(
    path: Annotated[Path | None, typer.Argument(help="contract file (default: CLOSEDLOOP_CONTRACT)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate a contract and show what is derived from it."""
    from closedloop.contract import ContractError, load_contract

    target = path or settings_or_fail().contract
    try:
        contract = load_contract(target)
    except ContractError as exc:
        fail(str(exc))
    sensitive = {c.name: c.source for c in contract.sensitive}
    excluded = {c.name: c.exclude for c in contract.excluded}
    tables = {name: _table_layout(contract, name) for name in contract.tables}
    inputs = _model_inputs(contract)
    origins: dict[str, list[str]] = {}
    for item in inputs:
        origins.setdefault(item["origin"], []).append(item["name"])
    derived = {
        "name": contract.name,
        "version": contract.version,
        "fingerprint": contract.fingerprint,
        "tables": {name: contract.required_columns(name) for name in contract.tables},
        "layout": tables,
        "model_inputs": [item["name"] for item in inputs],
        "model_input_sources": {item["name"]: item for item in inputs},
        "inputs_by_origin": origins,
        "sensitive": list(sensitive),
        "sensitive_read_from": sensitive,
        "excluded": excluded,
        "label": contract.label.model_dump(),
    }
    width = max(len(item["name"]) for item in inputs)
    lines = [
        f"{contract.name} v{contract.version} ({contract.fingerprint}): valid",
        f"  model inputs ({len(inputs)}, in the order the model is trained on and scored with):",
        *(
            f"    {i:>2} {item['name']:<{width}}  {item['type']:<8} {item['origin']}"
            + (f": {item['how']}" if item["how"] else "")
            for i, item in enumerate(inputs, 1)
        ),
        f"  sensitive:    {', '.join(f'{n} ({t})' for n, t in sensitive.items()) or '-'}",
        f"  excluded:     {', '.join(excluded) or '-'}",
    ]
    for name, layout in tables.items():
        lines.append(f"  table {name} ({layout['role']}): a batch needs {', '.join(layout['needs'])}")
        renamed = {k: v for k, v in layout["file_headers"].items() if k != v}
        if renamed:
            lines.append("    read from headers " + ", ".join(f"{v} -> {k}" for k, v in renamed.items()))
        if layout["added"]:
            lines.append("    added at ingest: " + ", ".join(f"{k} ({v})" for k, v in layout["added"].items()))
        if layout["null_tokens"]:
            lines.append(
                "    null tokens: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in layout["null_tokens"].items())
            )
        if layout["missing_codes"]:
            codes = layout["missing_codes"].items()
            lines.append("    missing codes: " + "; ".join(f"{k}: {', '.join(map(_code, v))}" for k, v in codes))
    emit(derived, as_json, "\n".join(lines))


def _table_layout(contract: Contract, table: str) -> dict[str, Any]:
    """What one table is for, what its batches must hold (file headers) and what ingest adds or makes missing."""
    spec, role = contract.tables[table], "feature table: stored, served online"
    if table == contract.prediction:
        role = "flat: the decisions and their label" if contract.is_flat else "prediction: one row, one decision"
    elif table == contract.label.source:
        role = "label: the outcomes of the decisions"
    added: dict[str, str] = {}
    if spec.as_of is not None:
        added[spec.event_time] = f"as_of {spec.as_of if spec.as_of == 'ingest' else spec.as_of.isoformat()}"
    if spec.generated_key is not None:
        added[spec.generated_key] = "generated key"
    added.update({c.name: f"formula {c.formula}" for c in contract.columns_of(table) if c.formula is not None})
    headers = contract.file_columns(table)
    own = {c.name: c.null_tokens for c in contract.columns_of(table) if c.null_tokens is not None}
    tokens = {"every column": contract.null_tokens} if contract.null_tokens else {}
    return {
        "role": role,
        "needs": list(dict.fromkeys(headers.values())),
        "file_headers": headers,
        "added": added,
        "null_tokens": {**tokens, **{name: t for name, t in own.items() if t}},
        "missing_codes": {c.name: c.missing_codes for c in contract.columns_of(table) if c.missing_codes},
    }


def _code(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _model_inputs(contract: Contract) -> list[dict[str, str]]:
    """The model's inputs exactly as it is trained on them (``feature_names``), with where each comes from.

    Where, when a decision is scored: sent with the request, a stored view of the online store, or derived.
    """
    from tasks.shared.features import feature_names

    aggregates = {a.name: a for a in contract.aggregates}
    ratios = {r.name: r for r in contract.ratios}
    out = []
    for name in feature_names(contract):
        if name in aggregates:
            agg = aggregates[name]
            table = contract.column(agg.column).source
            how = f"{agg.function} of {agg.column} over the last {agg.window} rows of {table}"
            item = {"type": "float", "origin": "history aggregates", "table": table, "how": how}
        elif name in ratios:
            how = f"{ratios[name].numerator} / {ratios[name].denominator}, computed when scored"
            item = {"type": "float", "origin": "ratios", "table": "", "how": how}
        else:
            column = contract.column(name)
            request = column.source == contract.prediction
            origin = "sent with the request" if request else f"stored view {column.source}"
            how = f"formula {column.formula}, computed at ingest" if column.formula is not None else ""
            item = {"type": column.type.value, "origin": origin, "table": column.source, "how": how}
        out.append({"name": name, **item})
    return out


@contract_app.command("init")
def contract_init(
    paths: Annotated[list[Path], typer.Argument(help="the file(s) of one flat table (CSV, any delimiter)")],
    label: Annotated[str, typer.Option("--label", help="the outcome column (file header, or col_N without header)")],
    id_column: Annotated[str | None, typer.Option("--id", help="the column that identifies a row")] = None,
    time_column: Annotated[str | None, typer.Option("--time", help="the column saying when a row became true")] = None,
    sensitive: Annotated[
        list[str] | None, typer.Option("--sensitive", help="protected attributes: COL,COL,... (repeatable)")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write the draft here (default: print it)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Draft a contract from a table's files: what was inferred, and the '# CHECK:' lines a person must review."""
    from closedloop.drafting import DraftError, draft_contract

    if out is not None and out.exists():
        fail(f"{out} exists: give another --out or remove it (a draft never overwrites a contract)")
    given = [s.strip() for group in sensitive or [] for s in group.split(",") if s.strip()]
    try:
        draft = draft_contract(
            paths,
            label=label,
            id_column=id_column,
            time_column=time_column,
            sensitive=given,
            source=", ".join(p.name for p in paths),
        )
    except DraftError as exc:
        fail(str(exc))
    if out is not None:
        try:
            out.write_text(draft.text)
        except OSError as exc:
            fail(f"{out}: cannot write the draft ({exc.strerror}): give another --out")
    contract = {**draft.contract, "start": draft.contract["start"].isoformat()}
    payload = {
        "name": contract["name"],
        "out": str(out) if out else None,
        "rows": draft.rows,
        "rows_profiled": draft.rows_profiled,
        "contract": contract,
        "findings": [{"field": f.field, "inferred": f.inferred, "check": f.check} for f in draft.findings],
        "checks": [{"field": f.field, "check": f.check} for f in draft.checks],
    }
    if out is None:
        payload["yaml"] = draft.text
    if as_json:
        emit(payload, True, "")
        return
    width = max(len(f.field) for f in draft.findings)
    profiled = "all profiled" if draft.rows_profiled >= draft.rows else f"{draft.rows_profiled:,} profiled"
    lines = [
        f"drafted contract {contract['name']} from {', '.join(map(str, paths))}: {draft.rows:,} rows ({profiled}), "
        f"{len(contract['columns'])} columns" + (f" -> {out}" if out else ""),
        "inferred:",
        *(f"  {f.field:<{width}}  {f.inferred}" for f in draft.findings if f.inferred),
        f"check ({len(draft.checks)}):",
        *(f"  {f.field:<{width}}  {f.check}" for f in draft.checks),
        f"next: review the '# CHECK:' lines in {out or 'the draft'}, then: closedloop contract check "
        f"{out or 'CONTRACT'}",
    ]
    if out is None:
        typer.echo(draft.text, nl=False)
        typer.echo("\n".join(lines), err=True)
    else:
        typer.echo("\n".join(lines))
