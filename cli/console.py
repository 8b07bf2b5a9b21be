"""What every command of the shell shares: settings, the ``--json`` and ``--contract`` options, output and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from closedloop.settings import Settings, SettingsError, load_settings

JsonFlag = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
ContractOption = Annotated[Path | None, typer.Option("--contract", help="contract file (default: CLOSEDLOOP_CONTRACT)")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one ``closedloop: error:`` line on stderr and exit with ``code``."""
    typer.echo(f"closedloop: error: {message}", err=True)
    raise typer.Exit(code)


def settings_or_fail() -> Settings:
    """The settings of this environment, or a clear error naming the setting at fault."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


def emit(payload: Any, as_json: bool, text: str) -> None:
    """Print ``payload`` as JSON with ``--json``, else the human-readable ``text``."""
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else text)


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is enough for the user: printed as one line, exit code 2."""
    from cli.stack import StackError
    from closedloop.contract import ContractError
    from closedloop.storage import StorageError

    return (ContractError, StackError, StorageError, SettingsError)


def contract_option(contract: Path | None, settings: Settings) -> str:
    """The absolute path of the ``--contract`` given, or of the configured contract."""
    return str((contract or settings.contract).resolve())


def connect(settings: Settings) -> None:
    """Point this process's Prefect and MLflow clients at the running stack (before Prefect is imported)."""
    import os

    from cli import stack

    try:
        stack.require_running(settings, ("prefect",))
    except stack.StackError as exc:
        fail(str(exc))
    os.environ.update(settings.server_environment())


def status_table(rows: list[Any]) -> str:
    """The stack's components as an aligned table: name, state, pid, address (and a detail line)."""
    lines = [f"{'component':<10} {'state':<10} {'pid':>8}  address"]
    for row in rows:
        lines.append(
            f"{row.name:<10} {row.state:<10} {row.pid or '-':>8}  {row.address}"
            + (f"\n{'':<31}{row.detail}" if row.detail else "")
        )
    return "\n".join(lines)
