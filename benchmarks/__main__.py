"""``python -m benchmarks`` (what ``closedloop bench`` runs): the benchmarks of a source checkout, with their ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks import harness
from cli.console import JsonFlag, Progress, emit, fail, settings_or_fail


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
    settings = settings_or_fail()
    try:
        options: dict[str, dict[str, Any]] = {"generator": {"rows": rows}}
        if customers is not None:
            options["train"] = {"customers": customers}
        if data is not None:
            options.setdefault("train", {})["data"] = str(data.resolve())
        chosen = list(names or [])
        with Progress("bench", len(chosen) or None, "benchmarks") as bar:

            def running(name: str, done: int, total: int) -> None:
                bar.reached(done, total, say=False)
                bar.step(name)

            report, path = harness.run(chosen, out or settings.state_dir / "bench", progress=running, **options)
    except KeyError as exc:
        fail(str(exc.args[0]))
    emit(report.to_dict(), as_json, report.markdown() + f"\nresults: {path} (+ .md)")


app = typer.Typer(add_completion=False)
app.command()(bench)


def main() -> None:
    """Run the ``bench`` command with this process's arguments, named as the shell's command."""
    app(prog_name="closedloop bench")


if __name__ == "__main__":
    main()
