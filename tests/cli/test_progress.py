"""Progress of long commands: a bar on a terminal, plain lines otherwise, always on stderr, never in --json's stdout."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from cli.console import INGEST_STEPS, TRAIN_STEPS
from closedloop.lake import Lake
from closedloop.settings import Settings
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


def test_the_train_steps_are_the_tasks_the_train_flow_runs() -> None:
    """The bar follows task runs by name: a renamed task would leave it stuck on a step."""
    from tasks.ingest import tasks as ingest
    from tasks.train import tasks as train

    names = [train.build_training_set.name, train.train_model.name, train.evaluate_candidate.name]
    assert [name for name, _ in TRAIN_STEPS.steps] == [*names, train.register_candidate.name]
    assert set(INGEST_STEPS.per_item) == {ingest.ingest_batch.name, ingest.replay_quarantined.name}


@pytest.mark.integration
def test_ingest_counts_its_batches_on_stderr(
    settings: Settings, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOSEDLOOP_PREFECT_URL", prefect_server.removesuffix("/api"))
    write_synthetic(SyntheticConfig(customers=200, months=1), Lake.of(settings.lake_uri, "credit_synthetic").landing)
    done = subprocess.run(
        [CLI, "ingest", "--no-materialize", "--json"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    batches = len(json.loads(done.stdout)["batches"])  # stdout: the JSON alone
    assert batches > 1
    counted = [line for line in done.stderr.splitlines() if line.startswith("closedloop: ingest:")]
    assert counted == [f"closedloop: ingest: {n}/{batches} batches" for n in range(1, batches + 1)]
