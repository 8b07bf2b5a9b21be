"""Prefect tasks of the train/evaluate flow: build the training set, fit, evaluate with gates, register."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from closedloop.contract import contract_at
from closedloop.lake import Lake, parquet_bytes
from closedloop.registry import ChampionUnavailable, champion_scores, champion_version, log_and_register
from closedloop.settings import PROJECT_ROOT, Settings
from feature_repo.definitions import model_service_name, sensitive_refs
from feature_repo.store import open_store, service_refs, write_retrieval
from tasks.shared import explain, metrics
from tasks.shared.drift import SCORE, expected_auc, profile_frame
from tasks.shared.fairness import FairnessLimits, assess, groups_of, worsening_bounds
from tasks.shared.features import EVENT_TIMESTAMP, SPLIT, feature_names, monotone_constraints, typed_features
from tasks.train import mitigation, plots
from tasks.train.behaviour import run_all as run_behaviour
from tasks.train.fit import (
    SPLITS,
    TUNED,
    Gates,
    TrainingConfig,
    TrainingDataError,
    entity_frame,
    fit_model,
    frame_hash,
    split_codes,
)

logger = logging.getLogger(__name__)

GOLDEN_ROWS = 50  # test rows kept with each version, re-scored by infra validation
REFERENCE_PROFILE = "reference_profile.json"  # the monitor's reference: bins and shares of the test window
REFERENCE_SAMPLE = "reference_sample.parquet"  # test-window rows (features + score) for the Evidently report
REFERENCE_SAMPLE_ROWS = 5000
EXPLAIN_ROWS = 20_000  # test rows whose SHAP values give the global and by-group importance


class TrainingSet(BaseModel):
    uri: str
    rows: int
    positives: int
    entity_hash: str
    window_start: datetime
    window_end: datetime
    feature_service: str
    contract_fingerprint: str


@task(name="build_training_set", cache_policy=NO_CACHE)
def build_training_set(
    settings: Settings, contract_path: str, cutoff: datetime, config: TrainingConfig, batch_rows: int = 250_000
) -> TrainingSet:
    """Point-in-time features for every matured application, through the model's FeatureService.

    The retrieval runs in the offline store's engine and streams to one parquet file in time order, with the
    split of each row, ``batch_rows`` rows per row group; the training set is never a pandas frame here.
    """
    contract = contract_at(contract_path)
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    entities = entity_frame(lake, contract, cutoff, config.window_days)
    if len(entities) < config.min_rows:
        raise TrainingDataError(
            f"only {len(entities)} matured labelled rows by {cutoff:%Y-%m-%d}; at least {config.min_rows} needed"
        )
    positives = int((entities[contract.label.column] == contract.label.positive).sum())
    if positives < config.min_positives:
        raise TrainingDataError(
            f"only {positives} positive labels among {len(entities)} rows; at least {config.min_positives} needed"
        )
    digest = frame_hash(entities)
    keys = _row_keys(contract)  # entity_frame's row order, [EVENT_TIMESTAMP, *keys], is the file's
    # text columns as strings, not objects: a slice where one is all missing would otherwise reach DuckDB untyped
    text = [c for c in entities.columns if entities[c].dtype == object]
    entities = entities.astype(dict.fromkeys(text, "string"))
    codes = split_codes(entities, contract, config)
    splits = pa.DictionaryArray.from_arrays(codes, list(SPLITS))
    folder = settings.state_dir / "training" / contract.name
    folder.mkdir(parents=True, exist_ok=True)
    # named by its content (entities and their splits), written aside and moved into place whole: a run never
    # reads a half-written file, and runs with other splits never share one
    path = folder / f"training-{digest}-{hashlib.sha256(codes.tobytes()).hexdigest()[:8]}.parquet"
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    store = open_store(settings, contract)
    service = model_service_name(contract)
    try:  # the service's features and the sensitive attributes (for the fairness analysis) in one retrieval
        refs = [*service_refs(store.get_feature_service(service)), *sensitive_refs(contract)]
        step = settings.retrieval_rows
        jobs = (  # one query per slice of the sorted entity frame, each started when the previous one is written
            store.get_historical_features(entity_df=entities.iloc[i : i + step].copy(), features=refs)
            for i in range(0, len(entities), step)
        )
        columns = write_retrieval(
            jobs,
            staging,
            [EVENT_TIMESTAMP, *keys],
            lambda chunk, offset: chunk.append_column(SPLIT, _split_slice(splits, offset, chunk.num_rows)),
            batch_rows,
        )
        written = pq.ParquetFile(staging).metadata.num_rows
        if written != len(entities):  # fail closed: the splits are assigned by row position
            raise TrainingDataError(f"the retrieval returned {written} rows for {len(entities)} entity rows")
        staging.replace(path)
    except Exception as exc:  # a feature the service names but the store lacks, an unapplied repo, ...
        staging.unlink(missing_ok=True)
        if isinstance(exc, TrainingDataError):
            raise
        raise TrainingDataError(f"cannot build the training set through FeatureService {service!r}: {exc}") from exc
    missing = [f for f in feature_names(contract) if f not in columns]
    if missing:
        raise TrainingDataError(f"the feature store returned no column(s) {missing} for FeatureService {service!r}")
    return TrainingSet(
        uri=path.as_uri(),
        rows=len(entities),
        positives=positives,
        entity_hash=digest,
        window_start=entities[EVENT_TIMESTAMP].min().to_pydatetime(),
        window_end=entities[EVENT_TIMESTAMP].max().to_pydatetime(),
        feature_service=service,
        contract_fingerprint=contract.fingerprint,
    )


def _split_slice(splits: pa.Array, offset: int, rows: int) -> pa.Array:
    if offset + rows > len(splits):
        raise TrainingDataError(f"the retrieval returned more than the {len(splits)} entity rows it was given")
    return splits.slice(offset, rows)


def _row_keys(contract: Any) -> list[str]:
    """The entity key and the prediction table's own key: one row per decision."""
    spec = contract.tables[contract.prediction]
    return list(dict.fromkeys([contract.entity.join_key, *[k for k in spec.primary_key if k != spec.event_time]]))


_loaded: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame, np.ndarray]] = {}
_loading = threading.Lock()


def _load(training: TrainingSet, contract_path: str) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The training set's rows, typed model matrix and labels; read once per flow run (callers only read them).

    The fit, the evaluation and the registration of one run share the last set read: one entry, so a long-lived
    process never holds more than the training set it is working on.
    """
    stat = Path(training.uri[7:]).stat()  # a rebuilt file at the same path is read again
    key = (f"{training.uri}@{stat.st_mtime_ns}:{stat.st_size}", contract_path)
    with _loading:
        if key not in _loaded:
            contract = contract_at(contract_path)
            frame = pd.read_parquet(training.uri[7:])
            features = typed_features(frame, contract)
            y = (frame[contract.label.column] == contract.label.positive).astype(int).to_numpy()
            _loaded.clear()
            _loaded[key] = (frame, features, y)
        return _loaded[key]


def _fit(training: TrainingSet, contract_path: str, config: TrainingConfig) -> Any:
    """XGBoost on the train split, early stopping on the validation split, the contract's monotone constraints."""
    frame, x, y = _load(training, contract_path)
    split = frame[SPLIT].to_numpy()
    return fit_model(
        x[split == "train"],
        y[split == "train"],
        x[split == "validation"],
        y[split == "validation"],
        config,
        monotone_constraints(contract_at(contract_path)),
    )


@task(name="fit_model", cache_policy=NO_CACHE)
def train_model(
    training: TrainingSet, contract_path: str, config: TrainingConfig, settings: Settings | None = None
) -> str:
    """Fit XGBoost on the train split with early stopping on the validation split; returns the model file.

    ``engine="dask"``: the same fit across a Dask cluster (``settings.dask_address``, else a LocalCluster).
    """
    path = Path(training.uri[7:]).with_suffix(".ubj")
    if config.engine == "dask":
        from tasks.shared.distributed import cluster
        from tasks.train.distributed_fit import fit_dask

        contract = contract_at(contract_path)
        address, workers = (settings.dask_address, settings.dask_workers) if settings else (None, 2)
        with cluster(address, workers) as client:
            model = fit_dask(
                client, training.uri[7:], contract, feature_names(contract), config, monotone_constraints(contract)
            )
            model.save_model(path)
        return str(path)
    model = _fit(training, contract_path, config)
    model.save_model(path)
    return str(path)


@task(name="tuning_trial", cache_policy=NO_CACHE)
def tuning_trial(training: TrainingSet, contract_path: str, config: TrainingConfig) -> dict[str, Any]:
    """One configuration of the search, judged by AUC on the validation split (never on the test window)."""
    model = _fit(training, contract_path, config)
    return {
        "params": {name: getattr(config, name) for name in TUNED},
        "validation_auc": float(model.best_score),
        "best_iteration": int(model.best_iteration),
    }


def _model(path: str) -> Any:
    import xgboost as xgb

    model = xgb.XGBClassifier()
    model.load_model(path)
    return model


_scored: dict[tuple[str, str, str], np.ndarray] = {}


def _test_scores(model: Any, model_path: str, training: TrainingSet, x_test: pd.DataFrame) -> np.ndarray:
    """The model's scores on the test window: computed by the evaluation, read again by the registration.

    One entry, keyed by the model file (path and modification time) and the training set, like :func:`_load`.
    """
    key = (f"{model_path}@{Path(model_path).stat().st_mtime_ns}", training.uri, training.entity_hash)
    with _loading:
        if key not in _scored:
            _scored.clear()
            _scored[key] = model.predict_proba(x_test)[:, 1]
        return _scored[key]


@task(name="evaluate_candidate", cache_policy=NO_CACHE)
def evaluate_candidate(
    training: TrainingSet, model_path: str, contract_path: str, tracking_uri: str, gates: Gates
) -> dict[str, Any]:
    """Metrics with intervals, cost threshold, calibration, segments, champion comparison, fairness and gates."""
    contract = contract_at(contract_path)
    frame, x, y = _load(training, contract_path)
    test = (frame[SPLIT] == "test").to_numpy()
    model = _model(model_path)
    p = _test_scores(model, model_path, training, x[test])
    yt = y[test]
    verdicts: dict[str, dict[str, Any]] = {}
    decidable = test.sum() >= gates.min_test_rows and yt.sum() >= gates.min_test_positives and yt.sum() < len(yt)
    report: dict[str, Any] = {"test_rows": int(test.sum()), "test_positives": int(yt.sum())}
    if not decidable:
        verdicts["quality"] = {
            "verdict": "blocked",
            "reason": (
                f"cannot decide on {int(test.sum())} test rows with {int(yt.sum())} positives "
                f"(need {gates.min_test_rows} rows and {gates.min_test_positives} positives of each class)"
            ),
        }
        return {"report": report, "verdicts": verdicts, "eligible": False, "threshold": 0.5}
    headline = metrics.metrics(yt, p)
    cost_fn, cost_fp = contract.decision.cost_false_negative, contract.decision.cost_false_positive
    # the threshold is chosen on the validation split and judged on the test window, like everything else
    validation = (frame[SPLIT] == "validation").to_numpy()
    p_validation = model.predict_proba(x[validation])[:, 1]
    tuned_on = y[validation] if 0 < y[validation].sum() < validation.sum() else None
    chosen = metrics.cost_threshold(tuned_on, p_validation, cost_fn, cost_fp) if tuned_on is not None else None
    decision = (
        metrics.decision_at(yt, p, chosen.threshold, cost_fn, cost_fp)
        if chosen is not None
        else metrics.cost_threshold(yt, p, cost_fn, cost_fp)
    )
    thresholds, costs = metrics.cost_curve(yt, p, cost_fn, cost_fp)
    categorical = {
        c.name: frame.loc[test, c.name].to_numpy(dtype=object)
        for c in contract.model_inputs
        if c.categories and len(c.categories) <= 12
    }
    report.update(
        metrics=headline,
        intervals=metrics.bootstrap_intervals(yt, p),
        decision={
            "threshold": decision.threshold,
            "chosen_on": "validation" if chosen is not None else "test (the validation split holds one class)",
            "expected_cost": decision.expected_cost,
            "lowest_expected_cost_on_test": float(costs.min()),
            **decision.confusion,
        },
        calibration=metrics.calibration(yt, p),
        segments=metrics.segments(yt, p, categorical, min_rows=gates.min_group_rows),
        best_iteration=int(model.best_iteration) if hasattr(model, "best_iteration") else None,
    )
    # SHAP on a fixed random sample of the test window: the mean |contribution| of 20,000 rows is within a few
    # thousandths of the full window's, at a tenth of the time on a 200,000-row window
    test_rows = np.flatnonzero(test)
    explained = np.sort(
        np.random.default_rng(0).choice(test_rows, size=min(EXPLAIN_ROWS, len(test_rows)), replace=False)
    )
    contribs = explain.contributions(model, x.iloc[explained])
    names = list(x.columns)
    riskiest = int(np.argmax(p))
    report["explanations"] = {
        "rows": len(explained),
        "of_test_rows": len(test_rows),
        "global": explain.global_importance(contribs, names),
        "by_group": {
            c.name: explain.importance_by_group(
                contribs, names, groups_of(frame[c.name].iloc[explained], c), min_rows=gates.min_group_rows
            )
            for c in contract.sensitive
            if c.name in frame
        },
        "example_reasons": explain.top_reasons(
            explain.contributions(model, x.iloc[test_rows[riskiest] : test_rows[riskiest] + 1])[0], names
        ),
    }
    probes = x[test].head(200)
    behaviour = run_behaviour(lambda frame: model.predict_proba(frame)[:, 1], probes, contract)
    report["behaviour"] = behaviour
    verdicts["behaviour"] = {
        "verdict": behaviour["verdict"],
        "reason": "; ".join(behaviour["failures"]) or "directional, invariance, minimum functionality",
    }
    floor_ok = headline["roc_auc"] >= gates.min_roc_auc
    verdicts["quality_floor"] = {
        "verdict": "pass" if floor_ok else "fail",
        "reason": f"ROC-AUC {headline['roc_auc']:.4f} vs floor {gates.min_roc_auc}",
    }
    limits = FairnessLimits(
        gates.max_demographic_parity_difference,
        gates.max_equalized_odds_difference,
        gates.min_disparate_impact,
        gates.min_group_rows,
        gates.max_fairness_worsening,
        gates.min_group_outcomes,
    )
    sensitive = frame.loc[test, [c.name for c in contract.sensitive if c.name in frame]]
    fairness = assess(contract, sensitive, yt, p, decision.threshold, limits)
    report["fairness"] = fairness
    champion_fairness: dict[str, Any] | None = None
    champion_refuse: np.ndarray | None = None
    champion_test_scores: np.ndarray | None = None
    try:
        champ = champion_version(tracking_uri, contract.name)
        if champ is None:
            verdicts["champion"] = {"verdict": "pass", "reason": "no champion yet: absolute floors only"}
        else:
            scored = validation | test
            both = champion_scores(tracking_uri, contract.name, champ, x[scored])
            p_old, p_old_validation = both[test[scored]], both[validation[scored]]
            diff = metrics.paired_auc_difference(yt, p, p_old)
            ok = diff["lower"] > -gates.noninferiority_margin
            report["champion"] = {"version": champ, **diff, "champion_roc_auc": metrics.metrics(yt, p_old)["roc_auc"]}
            verdicts["champion"] = {
                "verdict": "pass" if ok else "fail",
                "compared_with": champ,
                "reason": (
                    f"AUC difference {diff['difference']:+.4f}, 95% lower bound {diff['lower']:+.4f} vs margin "
                    f"-{gates.noninferiority_margin}"
                ),
            }
            old_threshold = (
                metrics.cost_threshold(tuned_on, p_old_validation, cost_fn, cost_fp).threshold
                if tuned_on is not None
                else metrics.cost_threshold(yt, p_old, cost_fn, cost_fp).threshold
            )
            old_decision = metrics.decision_at(yt, p_old, old_threshold, cost_fn, cost_fp)
            champion_test_scores = p_old
            champion_fairness = assess(contract, sensitive, yt, p_old, old_decision.threshold, limits)
            champion_refuse = (p_old >= old_decision.threshold).astype(int)
    except ChampionUnavailable as exc:
        verdicts["champion"] = {"verdict": "blocked", "reason": str(exc)}
    bounds = (
        worsening_bounds(contract, sensitive, yt, (p >= decision.threshold).astype(int), champion_refuse, fairness)
        if champion_refuse is not None
        else None
    )
    verdicts["fairness"] = _fairness_verdict(fairness, champion_fairness, gates, bounds)
    if verdicts["fairness"]["verdict"] == "fail" and gates.mitigation == "threshold_optimizer":
        mitigated = _mitigate(
            contract, frame, x, y, model, p, fairness, champion_fairness, gates, limits, decision, champion_refuse
        )
        report["mitigation"] = mitigated
        if "verdict" in mitigated:
            before = verdicts["fairness"]["reason"]
            verdicts["fairness"] = {
                "verdict": mitigated["verdict"]["verdict"],
                "reason": f"with group thresholds on {mitigated['attribute']}: {mitigated['verdict']['reason']} "
                f"(single threshold: {before})",
                "mitigation": f"threshold_optimizer:{mitigated['attribute']}",
            }
    eligible = all(v["verdict"] == "pass" for v in verdicts.values())
    figures = {
        "roc.png": plots.roc_curve_png(yt, p, label="candidate", champion_scores=champion_test_scores),
        "precision_recall.png": plots.pr_curve_png(yt, p, champion_scores=champion_test_scores, label="candidate"),
        "calibration.png": plots.calibration_png(yt, p),
        "expected_cost.png": plots.threshold_cost_png(thresholds, costs, decision.threshold),
        "shap_importance.png": plots.shap_importance_png(report["explanations"]["global"]),
    }
    by_group = {
        attribute: {
            group: {
                "selection_rate": 1 - m["approval_rate"],
                "tpr": m["tpr"],
                "fpr": m["fpr"],
                "auc": m["roc_auc"],
                "count": m["rows"],
            }
            for group, m in result["groups"].items()
        }
        for attribute, result in fairness.items()
        if "disparate_impact" in result
    }
    if by_group:  # refusal rate, TPR and FPR of the refusal decision, by group
        figures["fairness_by_group.png"] = plots.fairness_png(by_group, min_group_rows=gates.min_group_rows)
    return {
        "report": report,
        "verdicts": verdicts,
        "eligible": eligible,
        "threshold": decision.threshold,
        "plots": figures,
    }


def _mitigate(
    contract: Any,
    frame: pd.DataFrame,
    x: pd.DataFrame,
    y: np.ndarray,
    model: Any,
    p: np.ndarray,
    fairness: dict[str, Any],
    champion_fairness: dict[str, Any] | None,
    gates: Gates,
    limits: FairnessLimits,
    decision: Any,
    champion_refuse: np.ndarray | None = None,
) -> dict[str, Any]:
    """The group-threshold candidate, judged on the same test window; ``verdict`` only when it could be judged."""
    allowed = [
        c for c in contract.sensitive if c.group_thresholds and fairness.get(c.name, {}).get("verdict") == "fail"
    ]
    if not allowed:
        failing = sorted(a for a, r in fairness.items() if r.get("verdict") == "fail")
        return {"skipped": f"no failing attribute ({', '.join(failing)}) allows group thresholds in the contract"}
    column = min(allowed, key=lambda c: fairness[c.name]["disparate_impact"])
    split = frame[SPLIT].to_numpy()
    validation, test = split == "validation", split == "test"
    try:
        optimizer = mitigation.fit(
            model, x[validation], y[validation], mitigation.group_labels(frame.loc[validation, column.name], column)
        )
        groups = mitigation.group_labels(frame.loc[test, column.name], column)
        refuse = mitigation.decide(optimizer, x[test], groups, gates.decision_seed)
    except mitigation.MitigationError as exc:
        return {"attribute": column.name, "skipped": str(exc)}
    yt = y[test]
    sensitive = frame.loc[test, [c.name for c in contract.sensitive if c.name in frame]]
    judged = assess(contract, sensitive, yt, p, decision.threshold, limits, decisions=refuse)
    fn = int(((refuse == 0) & (yt == 1)).sum())
    fp = int(((refuse == 1) & (yt == 0)).sum())
    cost = (fn * contract.decision.cost_false_negative + fp * contract.decision.cost_false_positive) / len(yt)
    return {
        "attribute": column.name,
        "method": f"fairlearn ThresholdOptimizer ({mitigation.CONSTRAINT}, {mitigation.OBJECTIVE}), fitted on the validation split",
        "policy": mitigation.policy(optimizer),
        "fairness": judged,
        "confusion": {
            "tp": int(((refuse == 1) & (yt == 1)).sum()),
            "fp": fp,
            "tn": int(((refuse == 0) & (yt == 0)).sum()),
            "fn": fn,
        },
        "expected_cost": cost,
        "expected_cost_single_threshold": decision.expected_cost,
        "verdict": _fairness_verdict(
            judged,
            champion_fairness,
            gates,
            worsening_bounds(contract, sensitive, yt, refuse, champion_refuse, judged)
            if champion_refuse is not None
            else None,
        ),
    }


def _fairness_verdict(
    new: dict[str, Any],
    old: dict[str, Any] | None,
    gates: Gates,
    bounds: dict[tuple[str, str], float] | None = None,
) -> dict[str, Any]:
    """Absolute limits on the point estimates; "worse than the champion" needs practical and statistical evidence.

    Worse means: the disparity exceeds the champion's by more than ``max_fairness_worsening`` AND the paired
    bootstrap's one-sided 95% lower bound of the difference is above zero (``bounds``); without bounds, the point
    estimates alone decide.
    """
    problems = []
    for attribute, result in new.items():
        if result.get("verdict") == "fail":
            problems.append(f"{attribute}: {', '.join(result['failures'])}")
        if (
            old
            and result.get("verdict") in ("pass", "fail")
            and old.get(attribute, {}).get("verdict") in ("pass", "fail")
        ):
            for measure in ("demographic_parity_difference", "equalized_odds_difference"):
                if not result[measure] > old[attribute][measure] + gates.max_fairness_worsening:
                    continue
                lower = (bounds or {}).get((attribute, measure))
                if lower is None or lower > 0:
                    evidence = f", 95% lower bound of the increase {lower:+.3f}" if lower is not None else ""
                    problems.append(f"{attribute}: {measure} worse than the champion's{evidence}")
    skipped = [a for a, r in new.items() if r.get("verdict") == "skipped"]
    reason = "; ".join(problems) or "within limits" + (f" (not judged: {', '.join(skipped)})" if skipped else "")
    return {"verdict": "fail" if problems else "pass", "reason": reason}


def code_commit() -> str:
    try:
        command = ["git", "rev-parse", "HEAD"]  # read-only, git from PATH
        out = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=False)  # noqa: S603
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


@task(name="register_candidate", cache_policy=NO_CACHE)
def register_candidate(
    training: TrainingSet,
    model_path: str,
    contract_path: str,
    tracking_uri: str,
    evaluation: dict[str, Any],
    config: TrainingConfig,
    started_by: str,
    now: datetime,
) -> tuple[str, str, str]:
    """Log and register the model with its evidence record and model card; returns (version, card, evidence)."""
    contract = contract_at(contract_path)
    frame, x, _ = _load(training, contract_path)
    model = _model(model_path)
    report, verdicts = evaluation["report"], evaluation["verdicts"]
    evidence = {
        "dataset": contract.name,
        "contract_version": contract.version,
        "contract_fingerprint": contract.fingerprint,
        "feature_service": training.feature_service,
        "entity_frame_hash": training.entity_hash,
        "data_window": [training.window_start.isoformat(), training.window_end.isoformat()],
        "training_rows": training.rows,
        "training_positives": training.positives,
        "code_commit": code_commit(),
        "started_by": started_by,
        "trained_at": now.isoformat(),
        "report": report,
        "gates": verdicts,
        "eligible": evaluation["eligible"],
        "decision_threshold": evaluation["threshold"],
    }
    card = model_card(contract.name, evidence)
    metrics = {f"test_{k}": v for k, v in report.get("metrics", {}).items()}
    for name, (low, high) in report.get("intervals", {}).items():
        metrics[f"test_{name}_ci_low"], metrics[f"test_{name}_ci_high"] = low, high
    tags = {f"gate.{k}": v["verdict"] for k, v in verdicts.items()}
    tags.update(
        {
            "eligible": str(evaluation["eligible"]).lower(),
            "contract_fingerprint": contract.fingerprint,
            "feature_service": training.feature_service,
            "started_by": started_by,
            "decision_threshold": f"{evaluation['threshold']:.6f}",
            "decision_policy": verdicts.get("fairness", {}).get("mitigation", "single_threshold"),
        }
    )
    params = {
        **config.__dict__,
        "features": ",".join(feature_names(contract)),
        "entity_frame_hash": training.entity_hash,
    }
    test_rows = (frame[SPLIT] == "test").to_numpy()
    golden_x = x[test_rows].head(GOLDEN_ROWS)
    golden_rows = frame.loc[test_rows, feature_names(contract)].head(GOLDEN_ROWS).astype(object)
    golden = {
        "rows": golden_rows.where(golden_rows.notna(), None).to_dict(orient="records"),
        "scores": [float(v) for v in model.predict_proba(golden_x)[:, 1]],
    }
    test_scores = _test_scores(model, model_path, training, x[test_rows])
    test_frame = frame.loc[test_rows, feature_names(contract)]
    profile = profile_frame(test_frame, contract, feature_names(contract), test_scores)
    profile.update(
        test_metrics=report.get("metrics", {}),
        decision_threshold=evaluation["threshold"],
        expected_auc=expected_auc(test_scores),
        window=[str(frame.loc[test_rows, EVENT_TIMESTAMP].min()), str(frame.loc[test_rows, EVENT_TIMESTAMP].max())],
    )
    sample = test_frame.assign(**{SCORE: test_scores}).sample(
        n=min(REFERENCE_SAMPLE_ROWS, len(test_frame)), random_state=0
    )
    documents: dict[str, str | bytes] = {
        "evidence.json": json.dumps(evidence, indent=2, default=str),
        REFERENCE_PROFILE: json.dumps(profile, default=str),
        REFERENCE_SAMPLE: parquet_bytes(sample.reset_index(drop=True)),
        "model_card.md": card,
        "golden.json": json.dumps(golden, default=str),
    }
    example = x[(frame[SPLIT] == "train").to_numpy()].head(50)
    version = log_and_register(
        tracking_uri,
        contract.name,
        model,
        example,
        params,
        metrics,
        tags,
        documents,
        evaluation["eligible"],
        plots=evaluation.get("plots", {}),
    )
    return version, card, str(documents["evidence.json"])


def model_card(name: str, evidence: dict[str, Any]) -> str:
    """Markdown model card from the evidence record."""
    report = evidence["report"]
    lines = [
        f"# Model card: {name}",
        "",
        "**Intended use**: estimate the probability that a credit application defaults, to support (not replace) a "
        "lending decision. Not for use on populations or products outside the contract's data.",
        "",
        f"- Contract: {name} v{evidence['contract_version']} (`{evidence['contract_fingerprint']}`), FeatureService "
        f"`{evidence['feature_service']}`",
        f"- Data window: {evidence['data_window'][0][:10]} to {evidence['data_window'][1][:10]}, "
        f"{evidence['training_rows']:,} labelled applications ({evidence['training_positives']:,} defaults)",
        f"- Code: `{evidence['code_commit'][:12]}`; started by: {evidence['started_by']}",
        f"- Eligible for promotion: **{evidence['eligible']}**",
        "",
        "## Metrics on the out-of-time test window (95% bootstrap intervals)",
        "",
        "| metric | value | interval |",
        "|---|---|---|",
    ]
    for metric, value in report.get("metrics", {}).items():
        low, high = report.get("intervals", {}).get(metric, (float("nan"), float("nan")))
        lines.append(f"| {metric} | {value:.4f} | {low:.4f} - {high:.4f} |")
    decision = report.get("decision")
    if decision:
        lines += [
            "",
            f"Decision threshold {decision['threshold']:.4f} (minimum expected cost: "
            f"{decision['expected_cost']:.4f} per application); confusion on the test window: "
            f"TP {decision['tp']}, FP {decision['fp']}, TN {decision['tn']}, FN {decision['fn']}.",
        ]
    lines += [
        "",
        "## Fairness (approval = score below the threshold)",
        "",
        "| attribute | group | rows | approval rate | TPR | FPR | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for attribute, result in report.get("fairness", {}).items():
        for group, m in result.get("groups", {}).items():
            lines.append(
                f"| {attribute} | {group} | {m['rows']} | {m['approval_rate']:.3f} | {m['tpr']:.3f} | "
                f"{m['fpr']:.3f} | {m['roc_auc']:.3f} |"
            )
        if "disparate_impact" in result:
            lines.append(
                f"| {attribute} | DP diff {result['demographic_parity_difference']:.3f}, EO diff "
                f"{result['equalized_odds_difference']:.3f}, DI {result['disparate_impact']:.3f} | | | | | |"
            )
        if result.get("small_groups"):
            lines.append(f"| {attribute} | small groups, not judged: {result['small_groups']} | | | | | |")
    mitigation = report.get("mitigation")
    if mitigation:
        lines += ["", "## Fairness mitigation", ""]
        if "policy" in mitigation:
            lines += [
                "The single threshold failed the fairness gate; a candidate with a threshold per "
                f"{mitigation['attribute']} group was tried: {mitigation['method']}. Expected cost per application "
                f"{mitigation['expected_cost']:.4f} "
                f"(single threshold: {mitigation['expected_cost_single_threshold']:.4f}); "
                f"verdict: **{mitigation['verdict']['verdict']}** ({mitigation['verdict']['reason']}).",
                "",
                "| group | refuse if score | with probability | else if score | with probability |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {g} | {r['operator0']} {r['threshold0']:.4f} | {r['p0']:.3f} | {r['operator1']} "
                f"{r['threshold1']:.4f} | {r['p1']:.3f} |"
                for g, r in mitigation["policy"].items()
            ]
        else:
            lines.append(f"Not tried: {mitigation.get('skipped')}")
    tuning = report.get("tuning")
    if tuning:
        lines += [
            "",
            f"Hyper-parameters from a random search of {len(tuning['trials'])} trials judged on the validation "
            f"split: {', '.join(f'{k}={v:.4g}' for k, v in tuning['chosen'].items())}.",
        ]
    importance = report.get("explanations", {}).get("global", {})
    if importance:
        lines += ["", "## What drives the score (mean |SHAP|, log-odds)", "", "| feature | importance |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in list(importance.items())[:10]]
    lines += ["", "## Gates", ""] + [
        f"- **{k}**: {v['verdict']} ({v.get('reason', '')})" for k, v in evidence["gates"].items()
    ]
    lines += [
        "",
        "## Limits",
        "",
        "- Trained on matured labels only: the most recent applications are not represented.",
        "- Sensitive attributes are not model inputs, but correlated inputs can still carry their signal; "
        "monitor the fairness table over time.",
    ]
    if evidence["gates"].get("fairness", {}).get("mitigation"):
        lines.append(
            f"- Decisions use group thresholds ({evidence['gates']['fairness']['mitigation']}): the attribute must be "
            "supplied when scoring, and the decision mixes two thresholds per group at random in fixed proportions."
        )
    return "\n".join(lines) + "\n"
