"""What every command of the shell shares: settings, the ``--json`` and ``--contract`` options, output and errors.

Exit codes (docs/cli.md): 0 done; 1 done, and the answer is no (``status``: a component is down; ``deploy``: not
promoted); 2 an error, one ``closedloop: error:`` line on stderr; 3 an ingest or replay that stored nothing because
every new batch was quarantined.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TextIO, cast

import typer
from typer.core import TyperGroup

from closedloop.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from closedloop.contract import Contract

ERROR, NOT_SO, ALL_QUARANTINED = 2, 1, 3
_debug: list[bool] = [False]  # closedloop --debug, set by the top command for this invocation
# where emit() writes: the real stdout, kept while --json sends everything else printed to stderr
_stdout: list[TextIO] = []


def _json_only(ctx: typer.Context, value: bool) -> bool:
    """With --json, stdout is for the JSON alone: what libraries print goes to stderr until the command ends."""
    if value and not _stdout:
        _stdout.append(sys.stdout)
        sys.stdout = sys.stderr

        def restore() -> None:
            sys.stdout = _stdout.pop()

        ctx.call_on_close(restore)
    return value


JsonFlag = Annotated[
    bool, typer.Option("--json", help="print machine-readable JSON (only JSON on stdout)", callback=_json_only)
]
ContractOption = Annotated[Path | None, typer.Option("--contract", help="contract file (default: CLOSEDLOOP_CONTRACT)")]

# errors whose message is enough for the user (module, class): printed as one line, exit code 2
KNOWN_ERRORS = (
    ("closedloop.settings", "SettingsError"),
    ("closedloop.contract", "ContractError"),
    ("closedloop.storage", "StorageError"),
    ("closedloop.locks", "LockTimeout"),
    ("closedloop.lake", "BatchIdError"),
    ("cli.stack", "StackError"),
    ("tasks.promote.policy", "DeployError"),
    ("tasks.train.fit", "TrainingDataError"),
)


def one_line(message: str) -> str:
    """``message`` on one line: the lines of a library's message joined, whitespace runs collapsed."""
    return " ".join(message.split())


def fail(message: str, code: int = ERROR) -> NoReturn:
    """Print one ``closedloop: error:`` line on stderr and exit with ``code``."""
    typer.echo(f"closedloop: error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """One ``closedloop:`` line on stderr that is not an error (the command goes on, or ends with its own code)."""
    typer.echo(f"closedloop: {one_line(message)}", err=True)


def known_errors() -> tuple[type[BaseException], ...]:
    """The known error classes of the modules imported so far (an error of a module never imported cannot occur)."""
    return tuple(getattr(sys.modules[m], name) for m, name in KNOWN_ERRORS if m in sys.modules)


class Shell(TyperGroup):
    """The top command: whatever error a command lets through is one line on stderr and exit code 2."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        words = [*ctx._protected_args, *ctx.args]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except typer.TyperException as exc:  # a usage error: unknown option, missing argument, bad value
            if type(exc).__name__ == "NoArgsIsHelpError":  # a group given no command shows its help
                raise
            fail(f"{exc.format_message()} (see '{self._command_path(ctx, words)} --help')")
        except Exception as exc:
            if isinstance(exc, known_errors()):
                fail(str(exc))
            if _debug[0]:
                traceback.print_exc()
                fail(f"unexpected {type(exc).__name__}: {exc} (the traceback is above)")
            fail(
                f"unexpected {type(exc).__name__}: {exc} "
                "(run 'closedloop --debug ...' for the traceback, and report it if the message does not say the fix)"
            )

    def _command_path(self, ctx: typer.Context, words: list[str]) -> str:
        """The command the words typed name (``closedloop quarantine replay``), for the hint of a usage error."""
        path, command = [ctx.command_path], cast(Any, self)
        for word in words:
            found = command.get_command(ctx, word) if isinstance(command, TyperGroup) else None
            if found is None:
                break
            path.append(word)
            command = found
        return " ".join(path)


def debugging(on: bool) -> None:
    """Whether this invocation shows tracebacks (``closedloop --debug``)."""
    _debug[0] = on


def settings_or_fail() -> Settings:
    """The settings of this environment, or a clear error naming the setting at fault."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


def emit(payload: Any, as_json: bool, text: str) -> None:
    """Print ``payload`` as JSON with ``--json``, else the human-readable ``text``."""
    out = _stdout[-1] if _stdout else None
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else text, file=out)


def contract_option(contract: Path | None, settings: Settings) -> str:
    """The absolute path of the ``--contract`` given, or of the configured contract."""
    return str((contract or settings.contract).resolve())


def checked_contract(contract: Path | None, settings: Settings) -> tuple[str, Contract]:
    """The contract's absolute path and the contract, read and validated before any flow starts."""
    from closedloop.contract import ContractError, load_contract

    path = contract_option(contract, settings)
    try:
        return path, load_contract(path)
    except ContractError as exc:
        fail(f"{exc} (give an existing contract with --contract, or set CLOSEDLOOP_CONTRACT)")


def connect(settings: Settings, needs: tuple[str, ...] = ("prefect",)) -> None:
    """Point this process's Prefect and MLflow clients at the running stack (before Prefect is imported).

    Runs left Running by a killed command of this host are marked crashed first (closedloop/crashed_runs.py).
    """
    import os

    from cli import stack
    from closedloop.crashed_runs import sweep

    try:
        stack.require_running(settings, needs)
    except stack.StackError as exc:
        fail(str(exc))
    os.environ.update(settings.server_environment())
    os.umask(stack.PRIVATE_UMASK)  # what a flow run here writes (online store, registry, lake) is the user's alone
    marked = sweep(settings.prefect_api_url, settings.mlflow_tracking_uri)
    if marked:
        warn(f"marked crashed, their process killed: {', '.join(marked)}")


@contextmanager
def flow_runs(steps: FlowSteps | None = None, total: int | None = None) -> Iterator[None]:
    """Around a flow called in this process: its runs record this process, its failure prints no traceback.

    With ``steps``, the run's progress is shown on stderr as its log records tell it (``total``: the number of
    items, when the command knows it before the flow does).
    """
    from closedloop.crashed_runs import owned_runs

    with owned_runs():  # imports Prefect, whose logging is set up by then
        if not _debug[0]:
            quiet_tracebacks()
        if steps is None:
            yield
            return
        with Progress(steps.what, total, steps.unit) as progress:
            reader = _FlowProgress(steps, progress)
            runs = logging.getLogger()  # where flow and task run records end up, after Prefect's console printed them
            runs.addHandler(reader)
            try:
                reader.start()
                yield
            finally:
                runs.removeHandler(reader)


def quiet_tracebacks() -> None:
    """Prefect's console shows a failed run's error in one line: the traceback stays in the run's logs in the UI.

    Without this, a flow that fails prints its traceback on stderr before the command's own error line.
    """
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    for log in loggers:
        for handler in getattr(log, "handlers", []):
            if type(handler).__name__ in ("PrefectConsoleHandler", "StreamHandler") and not any(
                isinstance(f, _OneLineRecords) for f in handler.filters
            ):
                handler.addFilter(_OneLineRecords(handler))


class _OneLineRecords(logging.Filter):
    """Passes a console handler each record, but one that carries a traceback without it."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return True
        plain = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        self.handler.handle(plain)  # the copy: other handlers (Prefect's API log) still get the traceback
        return False


def status_table(rows: list[Any]) -> str:
    """The stack's components as an aligned table: name, state, pid, address (and a detail line)."""
    lines = [f"{'component':<10} {'state':<10} {'pid':>8}  address"]
    for row in rows:
        lines.append(
            f"{row.name:<10} {row.state:<10} {row.pid or '-':>8}  {row.address}"
            + (f"\n{'':<31}{row.detail}" if row.detail else "")
        )
    return "\n".join(lines)


class Progress:
    """How far a long piece of work is, on stderr: a live bar on a terminal, one plain line per step otherwise.

    Never on stdout: with --json stdout holds the result alone. A log, a CI job or a pipe gets plain lines a
    person can still read afterwards; a bar's redraws would fill them with control codes.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "") -> None:
        self.what, self.total, self.unit, self.done, self.label = what, total, unit, 0, ""
        self._bar: Any = None
        self._task: Any = None
        self._routed: list[Callable[[], object]] = []

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                console=Console(stderr=True, markup=False, highlight=False),  # log lines are printed as they are
                redirect_stdout=False,  # stdout is the command's result, never the bar's
                redirect_stderr=True,
            )
            self._bar.start()  # from here sys.stderr is the bar's: what is written to it is printed above the bar
            self._task = self._bar.add_task(self.what, total=self.total)
            self._route_logs(sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            for restore in reversed(self._routed):
                restore()
            self._bar.stop()

    def _route_logs(self, stderr: Any) -> None:
        """Log lines printed while the bar is shown go above it, through ``stderr`` (the bar's), not across it.

        Prefect's console handler prints through a rich console of its own, a plain handler to its stream: both
        were given the real stderr when logging was set up, and keep writing there unless pointed elsewhere. The
        first is given the bar's console (a rich console would see through the redirected stderr to the real one).
        """
        loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
        for handler in {h for log in loggers for h in getattr(log, "handlers", [])}:
            output = getattr(handler, "console", None)
            if type(handler).__name__ == "PrefectConsoleHandler" and output is not None:
                self._routed.append(partial(setattr, handler, "console", output))
                handler.console = self._bar.console  # type: ignore[attr-defined]  # a console unwraps stderr's proxy
            elif type(handler) is logging.StreamHandler and handler.stream is sys.__stderr__:
                self._routed.append(partial(handler.setStream, handler.stream))
                handler.setStream(stderr)

    def set_total(self, total: int) -> None:
        """The number of steps, once the work knows it (an ingest, once it has listed its batches)."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def step(self, label: str) -> None:
        """The step now running (``fit``, ``evaluation``): the bar's text, or one plain line."""
        self.label = label
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.what}: {label}")
        else:
            counted = f" ({self.done + 1}/{self.total})" if self.total and self.done < self.total else ""
            warn(f"{self.what}: {label}{counted}")

    def advance(self, done: int = 1, say: bool = True) -> None:
        """``done`` more steps finished; ``say``: also as a plain line (a stage's next step says it already)."""
        self.reached(self.done + done, say=say)

    def reached(self, done: int, total: int | None = None, say: bool = True) -> None:
        """``done`` steps (of ``total``) finished in all: for work that counts its own, like customers written."""
        if total is not None and total != self.total:
            self.set_total(total)
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif say:
            counted = f"{self.done:,}/{self.total:,}" if self.total else f"{self.done:,}"
            warn(f"{self.what}: {counted} {self.unit}")


@dataclass(frozen=True)
class FlowSteps:
    """What a progress bar counts of one flow run, told by the run's own log records (the flows know no shell).

    ``per_item`` tasks run once per batch and are counted; ``steps`` are the flow's stages in order, each shown
    while it runs; ``count`` is the format of the flow's log line whose first argument is the number of items.
    """

    what: str
    unit: str = ""
    per_item: tuple[str, ...] = ()
    steps: tuple[tuple[str, str], ...] = ()
    count: str = ""
    after_items: str = ""


# tasks/ingest/tasks.py and flows/ingest_validate.py: one task run per batch file, then the online store's load
INGEST_STEPS = FlowSteps(
    "ingest",
    unit="batches",
    per_item=("ingest_batch", "replay_quarantined"),
    count="%d batch file(s) found for %s",
    after_items="loading the online store",
)
# tasks/train/tasks.py, in the order flows/train_evaluate.py runs them
TRAIN_STEPS = FlowSteps(
    "train",
    unit="steps",
    steps=(
        ("build_training_set", "retrieval of the point-in-time training set"),
        ("fit_model", "fit"),
        ("evaluate_candidate", "evaluation and gates"),
        ("register_candidate", "registration"),
    ),
)
_FINISHED = "Finished in state "  # what Prefect's task engine logs when a task run ends


class _FlowProgress(logging.Handler):
    """Reads a flow run's log records as they are emitted and moves a :class:`Progress` on."""

    def __init__(self, spec: FlowSteps, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.spec, self.progress = spec, progress
        self.stages = [name for name, _ in spec.steps]

    def start(self) -> None:
        if self.spec.steps:
            self.progress.set_total(len(self.spec.steps))
            self.progress.step(self.spec.steps[0][1])

    def emit(self, record: logging.LogRecord) -> None:
        if self.spec.count and record.msg == self.spec.count and record.args:
            self.progress.set_total(int(cast(tuple[Any, ...], record.args)[0]))
            return
        task = getattr(record, "task_name", None)
        if task is None or not str(record.msg).startswith(_FINISHED):
            return
        if task in self.spec.per_item:
            self.progress.advance()
            if self.spec.after_items and self.progress.total == self.progress.done:
                self.progress.step(self.spec.after_items)
        elif task in self.stages:
            self.progress.advance(say=False)
            following = self.stages.index(task) + 1
            if following < len(self.spec.steps):
                self.progress.step(self.spec.steps[following][1])
