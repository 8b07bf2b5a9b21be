"""Progress of long commands: a bar on a terminal, plain lines otherwise, always on stderr, never in --json's stdout."""

from __future__ import annotations

import ast
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.console import INGEST_STEPS, TRAIN_STEPS
from cli.main import app
from closedloop.settings import PROJECT_ROOT, Settings, load_settings
from samples.synthetic import SyntheticConfig, write_synthetic

CLI = str(Path(sys.executable).parent / "closedloop")


def _read_all(fd: int) -> bytes:
    """Everything written to a pseudo-terminal whose other end is closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the writer closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_data_synth_draws_a_bar_on_a_terminal_and_keeps_json_alone_on_stdout(settings: Settings) -> None:
    terminal, attached = pty.openpty()
    try:
        done = subprocess.run(
            [CLI, "data", "synth", "--customers", "30000", "--months", "1", "--json"],
            stdout=subprocess.PIPE,
            stderr=attached,
            env=os.environ,
            timeout=300,
            check=False,
        )
        os.close(attached)
        shown = _read_all(terminal).decode(errors="replace")
    finally:
        os.close(terminal)
    assert done.returncode == 0, shown
    assert json.loads(done.stdout)["rows"]["profiles"] == 30_000  # stdout: the JSON and nothing else
    assert "\x1b[" in shown and "data synth" in shown and "30000/30000" in shown  # a redrawn bar, on stderr
    assert "closedloop: data synth:" not in shown  # not the plain lines of a pipe


def test_data_synth_prints_plain_lines_when_not_on_a_terminal(settings: Settings) -> None:
    done = subprocess.run(
        [CLI, "data", "synth", "--customers", "30000", "--months", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "closedloop: data synth: 25,000/30,000 customers",
        "closedloop: data synth: 30,000/30,000 customers",
    ]
    assert done.stdout.startswith("wrote ") and "\x1b[" not in done.stderr + done.stdout


def _task_names(module: Path) -> dict[str, str]:
    """Function name -> Prefect task name of each ``@task(name=...)`` in a module (read, not imported: cheap)."""
    names = {}
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "task":
                    names[node.name] = next(k.value.value for k in decorator.keywords if k.arg == "name")  # type: ignore[attr-defined]
    return names


def test_the_steps_are_the_tasks_the_flows_run_in_their_order() -> None:
    """The bar follows task runs by name: a renamed or reordered task would leave it stuck on a step."""
    train = _task_names(PROJECT_ROOT / "tasks/train/tasks.py")
    flow = (PROJECT_ROOT / "flows/train_evaluate.py").read_text()
    called = sorted(train, key=lambda f: flow.find(f"= {f}(") if f"= {f}(" in flow else len(flow))
    steps = [name for name, _ in TRAIN_STEPS.steps]
    assert [train[f] for f in called if train[f] in steps] == steps
    ingest = _task_names(PROJECT_ROOT / "tasks/ingest/tasks.py")
    assert set(INGEST_STEPS.per_item) == {ingest["ingest_batch"], ingest["replay_quarantined"]}


@pytest.mark.integration
def test_ingest_counts_its_batches_on_stderr(
    settings: Settings, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOSEDLOOP_PREFECT_URL", prefect_server.removesuffix("/api"))
    written = write_synthetic(SyntheticConfig(customers=200, months=1), (settings.state_dir / "export").as_uri())
    files = sorted(uri.removeprefix("file://") for uri in written.files if "/credit_history/" in uri)[:3]
    for key, value in load_settings().server_environment().items():
        monkeypatch.setenv(key, value)  # what connect() sets for the flow, put back after the test
    done = CliRunner().invoke(app, ["ingest", *files, "--no-materialize", "--json"])
    assert done.exit_code == 0, done.output
    assert [b["status"] for b in json.loads(done.stdout)["batches"]] == ["accepted"] * 3  # stdout: the JSON alone
    counted = [line for line in done.stderr.splitlines() if line.startswith("closedloop: ingest:")]
    assert counted == [f"closedloop: ingest: {n}/3 batches" for n in (1, 2, 3)]
