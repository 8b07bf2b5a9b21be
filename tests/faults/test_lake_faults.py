"""Faults of the lake: no crash and no file a team sends breaks the data set.

After every fault, counts reconcile in the ledger (rows in = accepted + quarantined + duplicate), nothing is lost
(every landing row is stored, counted a duplicate, or quarantined with a reason), nothing is stored twice (no
primary key twice in a table whose contract says ``restatement: quarantine``) and the training set still builds.

Crashes are real: a process that runs what the ``ingest_validate`` flow does to the lake (under the lake's lock,
sweep, then ingest or replay) is killed with SIGKILL at a failpoint (``CLOSEDLOOP_CRASH_AT``, see
:mod:`closedloop.failpoints`). Importing the ingest code costs about 12 s on this project's machine, so one process
imports it once and forks a child per run (:class:`Forks`); each child is killed alone.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from closedloop import failpoints, storage
from closedloop.contract import Contract, contract_at, parse_contract
from closedloop.lake import Lake
from closedloop.landing import batch_id, identify, unplaced_id
from closedloop.locks import lake_lock
from closedloop.settings import PROJECT_ROOT, Settings
from samples.synthetic import SyntheticConfig, generate_block
from tasks.ingest.tasks import find_batches, ingest_batch, replay_quarantined

CONTRACT = contract_at(str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"))
NOW = datetime(2026, 1, 15, tzinfo=UTC)
LOCK_WAIT_S = 120.0
KILLED = -signal.SIGKILL
POINTS = ["batch-writing", "batch-staged", "batch-committed", "batch-publishing"]
COMMITTED = {"batch-committed", "batch-publishing"}  # the crash came after the batch's ledger record
LOCKED_AREAS = ("ledger", "offline", "keys", "quarantine", "staging")  # written only under the lake's lock
YACHT_ROW = 5  # of the second applications batch: a purpose the contract does not know, quarantined


# --- the runs, in this process or in a forked child -----------------------------------------------------------
def ingest_run(
    root: str,
    endpoint: str | None,
    contract: dict[str, Any],
    postgres_url: str | None,
    replay: list[str] | None = None,
    out: str | None = None,
    go: str | None = None,
    chunk_rows: int | None = None,
) -> dict[str, Any]:
    """What ``ingest_validate`` does to a lake, without Prefect: under the lock, sweep, then ingest or replay.

    ``contract`` is the contract's JSON form (a child gets it through a pipe); ``out`` receives the result as
    JSON; ``go``: wait for that file to exist first (two runs then reach for the lock together); ``chunk_rows``:
    validate and store larger batches chunk by chunk.
    """
    rules = parse_contract(contract)
    lake = Lake(root, endpoint)
    if go is not None:
        deadline = time.monotonic() + LOCK_WAIT_S
        while not Path(go).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{go} never appeared")
            time.sleep(0.01)
    with lake_lock(lake.root, postgres_url, LOCK_WAIT_S):
        swept = lake.sweep()
        if replay:
            outcomes = [replay_quarantined.fn(qid, rules, lake, NOW) for qid in replay]
        else:
            refs = find_batches([], lake.landing, rules, endpoint)
            chunks = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
            outcomes = [ingest_batch.fn(ref, rules, lake, NOW, **chunks) for ref in refs]
    result = {"swept": swept, "outcomes": [o.model_dump(mode="json") for o in outcomes]}
    if out is not None:
        Path(out).write_text(json.dumps(result))
    return result


_FORKS = r"""
import importlib.util, json, os, sys, tempfile, traceback
spec = importlib.util.spec_from_file_location("lake_fault_runs", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
import great_expectations  # the validation imports it on first use: paid here, once
reply = sys.stdout
reply.write(json.dumps({"ready": os.getpid()}) + "\n")
reply.flush()
for line in sys.stdin:
    job = json.loads(line)
    if "wait" in job:
        _, status = os.waitpid(job["wait"], 0)
        reply.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        reply.flush()
        continue
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.update(job["env"])
        tempfile.tempdir = None  # TMPDIR may have changed: Great Expectations leaves a folder there
        code = 0
        try:
            module.ingest_run(**job["args"])
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    reply.write(json.dumps({"pid": pid}) + "\n")
    reply.flush()
"""


class Forks:
    """A process that imports the ingest code once, then forks a child per run: a kill -9 kills only that child."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CLOSEDLOOP_")}
        self._log = (folder / "forks.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FORKS, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=PROJECT_ROOT,
            env=env,
        )
        self._ready = False
        self._runs = 0

    def _ask(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        if not self._ready:  # it imports while the first test sets its lake up
            self._reply()
            self._ready = True
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the forking process died: {(self.folder / 'forks.log').read_text()[-2000:]}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def start(self, crash_at: str | None = None, env: dict[str, str] | None = None, **args: Any) -> tuple[int, Path]:
        """Fork a child running :func:`ingest_run` with ``args``; returns its pid and its log."""
        self._runs += 1
        log = self.folder / f"run-{self._runs}.log"
        tmp = self.folder / f"tmp-{self._runs}"
        tmp.mkdir()
        child_env = {**(env or {}), "TMPDIR": str(tmp)}
        if crash_at is not None:
            child_env[failpoints.ENV] = crash_at
        pid = int(self._ask({"args": args, "env": child_env, "log": str(log)})["pid"])
        return pid, log

    def wait(self, pid: int) -> int:
        """The child's return code (``-9``: killed by SIGKILL)."""
        return int(self._ask({"wait": pid})["returncode"])

    def run(self, crash_at: str | None = None, env: dict[str, str] | None = None, **args: Any) -> tuple[int, str]:
        """Run a child to its end; its return code and log."""
        pid, log = self.start(crash_at, env, **args)
        code = self.wait(pid)
        return code, log.read_text() if log.exists() else ""

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # it ends when its input does
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forks]:
    runs = Forks(tmp_path_factory.mktemp("forks"))
    try:
        yield runs
    finally:
        runs.close()


# --- the data: a small synthetic year, split into batches ---------------------------------------------------
@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    block = generate_block(SyntheticConfig(customers=40, start="2025-01", months=12), 0)
    return {name: table.to_pandas() for name, table in block.items()}


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _csv(frame: pd.DataFrame) -> bytes:
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = out[column].dt.strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    text: str = out.to_csv(index=False)
    return text.encode()


@pytest.fixture(scope="module")
def files(tables: dict[str, pd.DataFrame]) -> dict[str, bytes]:
    """Landing files by their place under ``landing/``, in the order an ingest meets them.

    The second applications batch holds one row the contract rejects; the credit history is split in time, so
    the second batch's 6-month aggregates read the first one's rows.
    """
    apps = tables["applications"].copy()
    apps.loc[20 + YACHT_ROW, "loan_purpose"] = "yacht"
    history = tables["credit_history"]
    early = history["snapshot_at"] < pd.Timestamp("2025-01-01", tz="UTC")
    return {
        "applications/applications-1.parquet": _parquet(apps.iloc[:20]),
        "applications/applications-2.parquet": _parquet(apps.iloc[20:]),
        "credit_history/credit_history-1.parquet": _parquet(history[early]),
        "credit_history/credit_history-2.parquet": _parquet(history[~early]),
        "outcomes/outcomes-1.parquet": _parquet(tables["outcomes"]),
        "profiles/profiles-1.parquet": _parquet(tables["profiles"]),
    }


def _matured(tables: dict[str, pd.DataFrame], left_out: frozenset[int] = frozenset()) -> list[int]:
    """The applications a training set at NOW holds: labelled, matured, not in ``left_out``."""
    joined = tables["applications"].merge(tables["outcomes"], on=["application_id", "customer_id"])
    cutoff = pd.Timestamp(NOW)
    matured = joined[(joined["observed_at"] <= cutoff) & (joined["applied_at"] <= cutoff - timedelta(days=90))]
    return sorted(set(matured["application_id"].tolist()) - left_out)


# --- where the lake lives: the local profile, or S3 with the PostgreSQL lock -----------------------------------
@dataclass(frozen=True)
class Place:
    lake: Lake
    postgres_url: str | None
    settings: Settings | None  # the local profile's: what the training set is built with
    env: dict[str, str]  # what a child needs to reach the store

    def run(self, contract: Contract = CONTRACT, **args: Any) -> dict[str, Any]:
        """An ingest (or replay) in this process."""
        return ingest_run(self.lake.root, self.lake.endpoint_url, _form(contract), self.postgres_url, **args)

    def args(self, contract: Contract = CONTRACT, **more: Any) -> dict[str, Any]:
        """The arguments of the same run in a child."""
        return {
            "root": self.lake.root,
            "endpoint": self.lake.endpoint_url,
            "contract": _form(contract),
            "postgres_url": self.postgres_url,
            **more,
        }

    def land(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            storage.write_bytes(storage.join(self.lake.landing, name), data, self.lake.endpoint_url)


def _form(contract: Contract) -> dict[str, Any]:
    form: dict[str, Any] = contract.model_dump(mode="json", exclude_defaults=True)
    return form


def _local(tmp_path: Path) -> Place:
    settings = Settings(state_dir=tmp_path / "state")
    return Place(Lake.of(settings.lake_uri, CONTRACT.name), None, settings, {})


def _on_s3(endpoint: str) -> Place:
    bucket = f"faults-{uuid.uuid4().hex[:16]}"
    storage.ensure_bucket(bucket, endpoint)
    env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    return Place(Lake.of(f"s3://{bucket}/lake", CONTRACT.name, endpoint), Settings().postgres_url, None, env)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    """A new lake on the local profile, or on S3 with the PostgreSQL advisory lock (the production profile's)."""
    if request.param == "local":
        return _local(tmp_path)
    return _on_s3(request.getfixturevalue("s3_endpoint"))


# every object is a few requests to S3: the production profile's cases send what the entity frame needs
ON_S3 = ["applications/applications-1.parquet", "applications/applications-2.parquet", "outcomes/outcomes-1.parquet"]


def _sent(place: Place, files: dict[str, bytes]) -> dict[str, bytes]:
    return files if place.settings is not None else {n: files[n] for n in ON_S3}


# --- what must hold after every fault ---------------------------------------------------------------------
def _batch_of(uri: str) -> str:
    """The batch an offline or key index file belongs to: ``<batch_id>.parquet``, or ``<batch_id>.<part>.parquet``."""
    return re.sub(r"\.\d+$", "", uri.rsplit("/", 1)[-1].removesuffix(".parquet"))


def _rows_by_batch(lake: Lake, uris: list[str]) -> dict[str, int]:
    """Rows of each batch among some parquet files (no column decoded)."""
    rows: dict[str, int] = {}
    for uri, table in zip(uris, lake.read_offline_files(uris, columns=[]), strict=True):
        rows[_batch_of(uri)] = rows.get(_batch_of(uri), 0) + table.num_rows
    return rows


def _ledger_id(lake: Lake, uri: str, contract: Contract) -> str:
    data = storage.read_bytes(uri, lake.endpoint_url)
    return batch_id(data) if identify(uri, lake.landing, contract).table else unplaced_id(batch_id(data), uri)


def assert_sound(lake: Lake, contract: Contract = CONTRACT) -> None:
    """Counts reconcile, every row is where its ledger record says, no key is stored twice, nothing is half-done."""
    ep = lake.endpoint_url
    records = {r["batch_id"]: r for r in lake.ledger_records()}
    for uri in storage.list_objects(lake.landing, ep):
        assert _ledger_id(lake, uri, contract) in records, f"{uri}: a landing file with no ledger record"
    tables = list(contract.tables)
    histories = {t: f"{t}_history" for t in tables if contract.aggregates_of(t)}
    stored = {t: _rows_by_batch(lake, lake.offline_files(t)) for t in [*tables, *histories.values()]}
    indexed = {t: _rows_by_batch(lake, storage.list_objects(storage.join(lake.root, "keys", t), ep)) for t in tables}
    for bid, record in records.items():
        assert record["rows_in"] == record["rows_accepted"] + record["rows_quarantined"] + record["rows_duplicate"], (
            record
        )
        table = record["table"]
        if table is not None:  # the accepted rows are stored, under the batch's name, and only they are
            in_place = 0 if record.get("retracted") else record["rows_accepted"]  # a retraction archives them
            assert stored[table].pop(bid, 0) == in_place, (bid, record)
            if table in histories:
                assert stored[histories[table]].pop(bid, 0) == in_place, (bid, record)
            assert indexed[table].get(bid, 0) == in_place, (bid, "key index")
        if record["status"] in ("partial", "quarantined"):  # the rest is quarantined with a reason
            reason = lake.read_reason(bid)
            if storage.exists(lake.quarantine(bid, "rejected.parquet"), ep):
                rejected = lake.read_rejected(bid)
                assert len(rejected) == record["rows_quarantined"], (bid, record)
                assert rejected["_reasons"].map(bool).all(), rejected["_reasons"].tolist()
            else:
                assert record["rows_quarantined"] == record["rows_in"] and reason["reason"], (bid, reason)
    leftover = {t: rows for t, rows in stored.items() if rows}
    assert not leftover, f"offline rows of batches with no ledger record: {leftover}"
    for table, spec in contract.tables.items():
        if spec.restatement != "quarantine":
            continue
        frame = lake.read_offline(table, columns=_primary_key(contract, table))
        assert not frame.duplicated().any(), f"{table}: keys stored twice {frame[frame.duplicated()].head()}"
    assert storage.list_objects(storage.join(lake.root, "staging"), ep) == [], "staged objects left"
    local = storage.parse(lake.root)
    if local.scheme == "file":
        assert [p for p in local.path.joinpath("staging").rglob("*") if p.is_file()] == [], "staged files left"
        left = [p for area in LOCKED_AREAS for p in local.path.joinpath(area).rglob("*.tmp")]
        assert left == [], "temporary files left"


def _primary_key(contract: Contract, table: str) -> list[str]:
    return list(dict.fromkeys(contract.tables[table].primary_key))


def _key_set(frame: pd.DataFrame, contract: Contract, table: str) -> set[tuple[Any, ...]]:
    """The primary keys of some rows of ``table``, comparable whatever they were read from (text included)."""
    event_time = contract.tables[table].event_time
    columns = [
        pd.to_datetime(frame[k], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
        if k == event_time
        else frame[k].astype("int64")
        for k in _primary_key(contract, table)
    ]
    return set(zip(*(c.tolist() for c in columns), strict=True))


def assert_every_landing_row_kept(lake: Lake, contract: Contract = CONTRACT) -> None:
    """Every row of every (parquet) landing file is stored, or quarantined with a reason: none is lost."""
    ep = lake.endpoint_url
    quarantined: dict[str, set[tuple[Any, ...]]] = {t: set() for t in contract.tables}
    for reason in lake.quarantined():
        bid, table = reason["batch_id"], reason["table"]
        if table and storage.exists(lake.quarantine(bid, "rejected.parquet"), ep):
            rejected = lake.read_rejected(bid)
            rejected = rejected[rejected["_reasons"].map(bool)]
            quarantined[table] |= _key_set(rejected, contract, table)
    for table in contract.tables:
        stored = lake.read_offline(table, columns=_primary_key(contract, table))
        kept = _key_set(stored, contract, table) | quarantined[table]
        for uri in storage.list_objects(storage.join(lake.landing, table), ep):
            sent = _key_set(pd.read_parquet(io.BytesIO(storage.read_bytes(uri, ep))), contract, table)
            assert sent <= kept, f"{uri}: {len(sent - kept)} row(s) neither stored nor quarantined"


def assert_trains(place: Place, expected: list[int], contract: Contract = CONTRACT) -> None:
    """The training set builds from the lake, through Feast, and holds exactly the ``expected`` applications.

    On S3 (the production profile's Feast registry and online store are shared servers) the entity frame, which
    reads the offline store the same way, stands for it.
    """
    from tasks.train.dataset import build_training_set, entity_frame
    from tasks.train.fit import TrainingConfig

    entities = entity_frame(place.lake, contract, NOW)
    assert sorted(entities["application_id"].tolist()) == expected
    if place.settings is None:
        return
    from feature_repo.definitions import build_repo
    from feature_repo.store import offline_root, open_store

    settings = place.settings
    open_store(settings, contract).apply(build_repo(contract, offline_root(settings, contract)).objects)
    training = build_training_set(settings, contract, NOW, TrainingConfig(min_rows=5, min_positives=1))
    assert sorted(pd.read_parquet(training.path, columns=["application_id"])["application_id"]) == expected
    assert training.coverage.left_out == 0


def _objects_of(lake: Lake, bid: str) -> tuple[list[str], list[str]]:
    """A batch's objects: those staged, and those in place (its ledger record included)."""
    everything = storage.list_objects(lake.root, lake.endpoint_url)
    staging = storage.join(lake.root, "staging", bid) + "/"
    staged = [u for u in everything if u.startswith(staging)]
    landing = lake.landing + "/"
    placed = [u for u in everything if bid in u and not u.startswith((staging, landing))]
    return staged, placed


# --- A, D, E: kill -9 at each failpoint of a batch --------------------------------------------------------
APPS, HISTORY = "applications/applications-2.parquet", "credit_history/credit_history-2.parquet"
CRASHES = [
    *(pytest.param("local", point, APPS, None, id=f"local-{point}") for point in POINTS),
    pytest.param("local", "batch-writing", HISTORY, None, id="local-batch-writing-history"),
    pytest.param("local", "batch-writing", APPS, 8, id="local-batch-writing-chunks"),  # some parts staged
    pytest.param("local", "batch-publishing", APPS, 8, id="local-batch-publishing-chunks"),
    *(
        pytest.param("s3", point, APPS, None, id=f"s3-{point}", marks=pytest.mark.integration)
        for point in ("batch-staged", "batch-committed", "batch-publishing")
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("where", "point", "target", "chunk_rows"), CRASHES)
def test_a_batch_killed_at_a_failpoint_is_finished_or_undone_by_the_next_run(
    forks: Forks,
    tables: dict[str, pd.DataFrame],
    files: dict[str, bytes],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
    point: str,
    target: str,
    chunk_rows: int | None,
) -> None:
    place = _local(tmp_path) if where == "local" else _on_s3(request.getfixturevalue("s3_endpoint"))
    lake = place.lake
    names = list(_sent(place, files))
    before = {n: files[n] for n in names[: names.index(target)]}
    place.land(before)
    place.run()  # the batches before the one that crashes are committed already
    place.land({n: files[n] for n in names[names.index(target) :]})
    bid = batch_id(files[target])
    table = target.split("/", 1)[0]

    code, log = forks.run(point, place.env, **place.args(chunk_rows=chunk_rows))

    assert code == KILLED, f"the run did not die at {point} (return code {code}):\n{log[-3000:]}"
    staged, placed = _objects_of(lake, bid)
    assert staged, f"nothing of batch {bid} was staged before the crash at {point}"
    ledger = [lake.ledger(bid)] if point in COMMITTED else []
    published = [u for u in placed if u != lake.ledger(bid)]
    assert sorted(u for u in placed if u == lake.ledger(bid)) == ledger
    # before the next run, what a reader sees of the batch: nothing until its commit, then what was moved
    assert len(published) == (1 if point == "batch-publishing" else 0), published
    if point != "batch-publishing":
        sent = _key_set(pd.read_parquet(io.BytesIO(files[target])), CONTRACT, table)
        visible = _key_set(lake.read_offline(table, columns=_primary_key(CONTRACT, table)), CONTRACT, table) & sent
        assert not visible, f"{len(visible)} row(s) of the crashed batch visible before the next run"
    for earlier in before.values():  # what was committed before stays committed
        assert lake.read_ledger(batch_id(earlier)) is not None

    result = place.run()  # a batch in chunks is finished or undone by the sweep, whatever the next run's chunks

    done = "published" if point in COMMITTED else "removed"
    assert result["swept"] == {"published": [], "removed": [], done: [bid]}
    outcome = next(o for o in result["outcomes"] if o["batch_id"] == bid)
    if point in COMMITTED:  # the crashed run had ingested it: seen now as the same bytes
        assert outcome["status"] == "duplicate" and "same content as batch" in outcome["reason"], outcome
    else:  # never committed: ingested now, as a new batch
        assert outcome["status"] in ("accepted", "partial") and outcome["rows_in"] > 0, outcome
    assert lake.read_ledger(bid)["status"] == ("partial" if table == "applications" else "accepted")  # type: ignore[index]
    assert_sound(lake)
    assert_every_landing_row_kept(lake)
    yacht = int(tables["applications"].loc[20 + YACHT_ROW, "application_id"])
    assert_trains(place, _matured(tables, frozenset({yacht})))


@pytest.mark.slow
def test_a_crash_while_the_sweep_finishes_a_crashed_batch_is_finished_by_the_next_sweep(
    forks: Forks, tables: dict[str, pd.DataFrame], files: dict[str, bytes], tmp_path: Path
) -> None:
    place = _local(tmp_path)
    place.land(files)
    bid = batch_id(files["applications/applications-1.parquet"])
    assert forks.run("batch-committed", **place.args())[0] == KILLED
    staged, _ = _objects_of(place.lake, bid)

    code, log = forks.run("batch-publishing", **place.args())  # killed again, by the sweep's first move

    assert code == KILLED, log[-3000:]
    still, placed = _objects_of(place.lake, bid)
    assert len(still) == len(staged) - 1 and len(placed) == 2  # its ledger record and the one object moved
    result = place.run()
    assert result["swept"] == {"published": [bid], "removed": []}
    assert_sound(place.lake)
    assert_every_landing_row_kept(place.lake)
    yacht = int(tables["applications"].loc[20 + YACHT_ROW, "application_id"])
    assert_trains(place, _matured(tables, frozenset({yacht})))


# --- B: kill -9 during a replay ------------------------------------------------------------------------
def _admit_yacht() -> Contract:
    """The contract once a team adds the purpose the quarantined rows hold."""
    form = _form(CONTRACT)
    for column in form["columns"]:
        if column["name"] == "loan_purpose":
            column["categories"].append("yacht")
    return parse_contract(form)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["batch-staged", "batch-committed", "replay-committed"])
def test_a_replay_killed_at_a_failpoint_stores_the_quarantined_rows_once_when_replayed_again(
    forks: Forks, tables: dict[str, pd.DataFrame], files: dict[str, bytes], tmp_path: Path, point: str
) -> None:
    place, fixed = _local(tmp_path), _admit_yacht()
    lake = place.lake
    place.land(files)
    place.run()
    qid = batch_id(files["applications/applications-2.parquet"])
    assert lake.read_ledger(qid)["status"] == "partial"  # type: ignore[index]
    first = f"{qid}-r1"
    yacht = int(tables["applications"].loc[20 + YACHT_ROW, "application_id"])

    code, log = forks.run(point, place.env, **place.args(fixed, replay=[qid]))

    assert code == KILLED, f"the replay did not die at {point} (return code {code}):\n{log[-3000:]}"
    committed = point != "batch-staged"
    assert (lake.read_ledger(first) is not None) == committed
    assert lake.read_reason(qid)["replays"] == []  # the crash came before the quarantine record said anything
    stored = lake.read_offline("applications", columns=["application_id"])["application_id"].tolist()
    assert stored.count(yacht) == (1 if point == "replay-committed" else 0)  # nothing visible before the commit

    result = place.run(fixed, replay=[qid])

    assert result["swept"] == {  # replay-committed: published already by the crashed run
        "published": [first] if point == "batch-committed" else [],
        "removed": [first] if point == "batch-staged" else [],
    }
    (outcome,) = result["outcomes"]
    replays = [first] if point == "batch-staged" else [first, f"{qid}-r2"]
    assert outcome["batch_id"] == replays[-1]
    if point == "batch-staged":  # the first replay never happened: this one is it
        assert (outcome["status"], outcome["rows_accepted"]) == ("accepted", 1), outcome
    else:  # the committed replay is found, and its row is not judged again
        assert (outcome["status"], outcome["rows_in"]) == ("duplicate", 0), outcome
        assert "accepted by an earlier replay" in outcome["reason"]
    record = lake.read_reason(qid)
    assert [r["batch_id"] for r in record["replays"]] == replays
    assert record["accepted_rows"] == [YACHT_ROW]
    stored = lake.read_offline("applications", columns=["application_id"])["application_id"].tolist()
    assert stored.count(yacht) == 1
    assert_sound(lake, fixed)
    assert_every_landing_row_kept(lake, fixed)
    assert_trains(place, _matured(tables), fixed)


# --- C, D: two ingests of the same new files at once -----------------------------------------------------
@pytest.mark.slow
def test_two_ingests_of_the_same_new_files_at_once_store_them_once(
    forks: Forks, tables: dict[str, pd.DataFrame], files: dict[str, bytes], place: Place, tmp_path: Path
) -> None:
    sent = _sent(place, files)
    place.land(sent)
    go = tmp_path / "go"
    outs = [tmp_path / "first.json", tmp_path / "second.json"]
    pids = [forks.start(None, place.env, **place.args(out=str(out), go=str(go))) for out in outs]
    go.touch()  # both reach for the lake's lock now
    codes = [forks.wait(pid) for pid, _ in pids]

    assert codes == [0, 0], [log.read_text()[-3000:] for _, log in pids]
    runs = [json.loads(out.read_text())["outcomes"] for out in outs]
    runs.sort(key=lambda outcomes: all(o["status"] == "duplicate" for o in outcomes))
    ingested, waited = runs
    assert len(ingested) == len(sent) and {o["status"] for o in ingested} <= {"accepted", "partial"}, ingested
    assert [o["batch_id"] for o in waited] == [o["batch_id"] for o in ingested]
    for outcome in waited:  # the second run found the first one's ledger records
        assert (outcome["status"], outcome["rows_in"]) == ("duplicate", 0), outcome
        assert f"same content as batch {outcome['batch_id']}" in outcome["reason"]
    assert_sound(place.lake)
    assert_every_landing_row_kept(place.lake)
    yacht = int(tables["applications"].loc[20 + YACHT_ROW, "application_id"])
    assert_trains(place, _matured(tables, frozenset({yacht})))


# --- F: files a team sends, all together, then the training set ---------------------------------------------
def _sent_with_every_earlier_fault(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, bytes], dict[str, int]]:
    """Landing files holding each fault the ingest tasks' tests check one by one; and the rows those faults lose.

    Each fault's own behaviour is tested in tests/tasks/ingest/test_tasks.py; here they meet in one data set.
    """
    apps = tables["applications"].copy()
    first = apps.iloc[:10].assign(channel=None)  # an all-null nullable column
    first["application_id"] = first["application_id"].astype("Int64")
    first.loc[0, "application_id"] = None  # one null in an integer key
    second = apps.iloc[10:30].reset_index(drop=True).astype({"application_id": object})
    second.loc[7, "application_id"] = "99999999999999999999"  # beyond the 64-bit range
    lines = _csv(second).decode().splitlines()
    lines[1 + 5] += ",surplus"  # a ragged line: row 5
    third = apps.iloc[30:].reset_index(drop=True)
    third.loc[[2, 3], "loan_purpose"] = "yacht"  # a partial batch, replayed twice
    restated = tables["outcomes"].copy().reset_index(drop=True)
    restated.loc[3, "defaulted"] = 1 - restated.loc[3, "defaulted"]  # a restated value
    profiles = _parquet(tables["profiles"])
    files = {
        "applications/applications-a.parquet": _parquet(first),
        "applications/applications-b.csv": ("\n".join(lines) + "\n").encode(),
        "applications/applications-c.csv": _csv(first),  # a CSV re-export of an ingested parquet batch
        "applications/applications-y.parquet": _parquet(third),
        "credit_history/credit_history-1.parquet": _parquet(tables["credit_history"]),
        "loans/export.parquet": profiles,  # a misplaced file ...
        "outcomes/outcomes-1.parquet": _parquet(tables["outcomes"]),
        "outcomes/outcomes-2.csv": _csv(restated),
        "profiles/profiles-1.parquet": profiles,  # ... then the same bytes under the right name
    }
    ids = apps["application_id"]
    lost = {"null key": int(ids.iloc[0]), "ragged line": int(ids.iloc[15]), "beyond 64 bits": int(ids.iloc[17])}
    return files, lost


def _rows_of(name: str, data: bytes) -> int:
    if name.endswith(".csv"):
        return len(data.decode().splitlines()) - 1
    return int(pq.read_metadata(io.BytesIO(data)).num_rows)


@pytest.mark.slow
def test_every_earlier_fault_of_a_sent_file_leaves_a_sound_lake_that_still_trains(
    tables: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    place, fixed = _local(tmp_path), _admit_yacht()
    lake = place.lake
    files, lost = _sent_with_every_earlier_fault(tables)
    place.land(files)

    ingested = {o["uri"].rsplit("/landing/", 1)[-1]: o for o in place.run()["outcomes"]}
    partial = batch_id(files["applications/applications-y.parquet"])
    replays = [place.run(fixed, replay=[partial])["outcomes"][0] for _ in range(2)]
    misplaced = ingested["loans/export.parquet"]["batch_id"]
    moved = place.run(replay=[misplaced])["outcomes"][0]

    summary = {
        n: (o["status"], o["rows_accepted"], o["rows_quarantined"], o["rows_duplicate"]) for n, o in ingested.items()
    }
    assert summary["applications/applications-a.parquet"] == ("partial", 9, 1, 0)
    assert summary["applications/applications-b.csv"] == ("partial", 18, 2, 0)
    assert summary["applications/applications-c.csv"] == ("partial", 0, 1, 9)  # the null key again, 9 duplicates
    assert summary["applications/applications-y.parquet"] == ("partial", 8, 2, 0)
    assert summary["outcomes/outcomes-2.csv"][1:] == (0, 1, len(tables["outcomes"]) - 1)
    assert summary["loans/export.parquet"][0] == "quarantined"
    assert summary["profiles/profiles-1.parquet"][:2] == ("accepted", len(tables["profiles"]))
    assert [(r["status"], r["rows_in"], r["rows_accepted"]) for r in replays] == [
        ("accepted", 2, 2),
        ("duplicate", 0, 0),
    ]
    assert moved["status"] == "duplicate"
    for name, data in files.items():  # every row sent is counted in (a misplaced file has no rows to count)
        if not name.startswith("loans/"):
            assert ingested[name]["rows_in"] == _rows_of(name, data), name
    assert_sound(lake, fixed)
    assert_trains(place, _matured(tables, frozenset(lost.values())), fixed)


# --- writes outside the lock ----------------------------------------------------------------------------
def test_the_sweep_removes_temporary_files_of_crashed_writes_but_not_those_of_writes_outside_the_lock(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    """A team's upload into landing/ and the scoring service's inference log write without the lake's lock."""
    place = _local(tmp_path)
    root = storage.parse(place.lake.root).path
    crashed = root / "offline/applications/event_date=2025-01-14/.a.parquet.x1.tmp"  # killed before its rename
    uploading = root / "landing/applications/.applications-3.parquet.x2.tmp"  # an upload in flight
    logging = root / "inference/event_date=2026-01-15/.b.parquet.x3.tmp"  # a flush of the inference log in flight
    for path in (crashed, uploading, logging):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files["applications/applications-2.parquet"])
    place.land({"applications/applications-1.parquet": files["applications/applications-1.parquet"]})

    place.run()

    assert not crashed.exists()
    assert uploading.exists() and logging.exists()  # their writers rename them into place next
    uploading.replace(uploading.with_name("applications-3.parquet"))
    (outcome,) = [o for o in place.run()["outcomes"] if o["uri"].endswith("applications-3.parquet")]
    assert (outcome["status"], outcome["rows_accepted"]) == ("partial", 19)
    assert_sound(place.lake)


def test_a_replay_stores_the_rows_a_new_contract_admits_while_the_others_stay_quarantined(
    tables: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    place = _local(tmp_path)
    apps = tables["applications"].copy()
    apps.loc[2:5, "loan_purpose"] = "yacht"  # admitted by the next contract
    apps.loc[10:13, "loan_amount"] = -1.0  # wrong under any contract
    place.land({"applications/applications-1.parquet": _parquet(apps)})
    (first,) = place.run()["outcomes"]
    assert (first["status"], first["rows_accepted"], first["rows_quarantined"]) == ("partial", 32, 8)

    (replay,) = place.run(_admit_yacht(), replay=[first["batch_id"]])["outcomes"]

    assert (replay["status"], replay["rows_accepted"], replay["rows_quarantined"]) == ("partial", 4, 4), replay
