"""The ``bench`` command: hands its arguments to ``python -m benchmarks`` in a process of its own.

The benchmarks are a program of the source checkout that uses the shell (they start the stack), not a part of the
installed package; a fresh process also gives them their own peak memory.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import typer

from cli.console import fail

CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def checkout_has_benchmarks() -> bool:
    """Whether the ``benchmarks`` package of a source checkout can be imported here."""
    try:
        return importlib.util.find_spec("benchmarks") is not None
    except (ImportError, ValueError):
        return False


def bench(ctx: typer.Context) -> None:
    """Run benchmarks (``closedloop bench --help`` lists their options): figure, raw baseline, ratio."""
    if not checkout_has_benchmarks():
        fail(
            "the benchmarks are not part of the installed package: run 'closedloop bench' from closedloop's "
            "source checkout, installed with 'uv sync' or 'pip install -e .'"
        )
    done = subprocess.run([sys.executable, "-m", "benchmarks", *ctx.args], check=False)  # noqa: S603
    raise typer.Exit(done.returncode)
