"""The model card: a markdown page written from a version's evidence record, kept with the version.

Its decision and fairness figures are those of the rule the version deploys: the single threshold, or the group
thresholds once the fairness gate chose them (the rule ``closedloop.registry.decision_policy`` reads, the one
serving applies).
"""

from __future__ import annotations

from typing import Any


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
        *_coverage_line(evidence.get("feature_coverage")),
        f"- Code: `{evidence['code_commit'][:12]}`; started by: {evidence['started_by']}",
        f"- Eligible for promotion: **{evidence['eligible']}**",
        "",
        *_metrics(report),
        *_decision(report, _group_thresholds(evidence)),
        *_fairness(report, _group_thresholds(evidence)),
        *_mitigation(report.get("mitigation"), report.get("fairness", {})),
        *_tuning(report.get("tuning")),
        *_importance(report.get("explanations", {}).get("global", {})),
        "",
        "## Gates",
        "",
        *[f"- **{k}**: {v['verdict']} ({v.get('reason', '')})" for k, v in evidence["gates"].items()],
        *_limits(evidence["gates"], evidence.get("feature_coverage")),
    ]
    return "\n".join(lines) + "\n"


def _coverage_line(coverage: dict[str, Any] | None) -> list[str]:
    """The share of matured applications with each feature table's rows at their time (older records: none)."""
    if not coverage:
        return []
    shares = ", ".join(f"{table} {share:.2%}" for table, share in coverage["coverage"].items())
    return [
        f"- Feature coverage: {shares}; {coverage['left_out']:,} of {coverage['rows']:,} matured applications left "
        "out (a feature table had no row at their time)"
    ]


def _group_thresholds(evidence: dict[str, Any]) -> str | None:
    """The attribute whose group thresholds the version decides with, or None: it decides with one threshold."""
    if not evidence["gates"].get("fairness", {}).get("mitigation"):
        return None
    return str((evidence["report"].get("mitigation") or {}).get("attribute"))


def _metrics(report: dict[str, Any]) -> list[str]:
    """Metrics with their bootstrap intervals (a record without one says so, never a made-up figure)."""
    lines = [
        "## Metrics on the out-of-time test window (95% bootstrap intervals)",
        "",
        "| metric | value | interval |",
        "|---|---|---|",
    ]
    intervals = report.get("intervals") or {}
    for metric, value in report.get("metrics", {}).items():
        if metric in intervals:
            low, high = intervals[metric]
            lines.append(f"| {metric} | {value:.4f} | {low:.4f} - {high:.4f} |")
        else:  # no resample held both classes, or a record from before this metric was bootstrapped
            lines.append(f"| {metric} | {value:.4f} | not recorded |")
    return lines


def _decision(report: dict[str, Any], grouped: str | None) -> list[str]:
    """The decision rule the version deploys, its expected cost and its confusion on the test window."""
    decision = report.get("decision")
    if not decision:
        return []
    single = (
        f"Decision threshold {decision['threshold']:.4f} (minimum expected cost: "
        f"{decision['expected_cost']:.4f} per application); confusion on the test window: "
        f"TP {decision['tp']}, FP {decision['fp']}, TN {decision['tn']}, FN {decision['fn']}."
    )
    if grouped is None:
        return ["", f"Decision rule deployed: one threshold for everyone. {single}"]
    mitigation = report["mitigation"]
    confusion = mitigation["confusion"]
    return [
        "",
        f"Decision rule deployed: **group thresholds on {grouped}** (the policy is under Fairness mitigation): "
        f"expected cost {mitigation['expected_cost']:.4f} per application; confusion on the test window: "
        f"TP {confusion['tp']}, FP {confusion['fp']}, TN {confusion['tn']}, FN {confusion['fn']}.",
        "",
        f"The single threshold decides only the {grouped} groups without a threshold of their own. {single}",
    ]


def _fairness(report: dict[str, Any], grouped: str | None) -> list[str]:
    """Approval rate, TPR, FPR and AUC by group, and the disparity measures, of the decision rule deployed."""
    rule = "the single threshold" if grouped is None else f"the group thresholds on {grouped}"
    fairness = report.get("fairness", {}) if grouped is None else report["mitigation"].get("fairness", {})
    lines = [
        "",
        f"## Fairness of the deployed decision: {rule} (approval = not refused)",
        "",
        "| attribute | group | rows | approval rate | TPR | FPR | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for attribute, result in fairness.items():
        if result.get("verdict") == "skipped":  # its groups are only counted: too small to measure
            sizes = ", ".join(f"{group} {count}" for group, count in result.get("groups", {}).items())
            waiver = f"; waived by the contract: {result['waiver']}" if result.get("waiver") else ""
            lines.append(f"| {attribute} | not judged: {result.get('reason', '')} (rows: {sizes}){waiver} | | | | | |")
            continue
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
    return lines


def _mitigation(mitigation: dict[str, Any] | None, single: dict[str, Any]) -> list[str]:
    """The group-threshold candidate tried after a failed fairness gate, with its policy; or why it was not.

    ``single`` is the single threshold's fairness analysis: its disparity measures, for comparison.
    """
    if not mitigation:
        return []
    lines = ["", "## Fairness mitigation", ""]
    if "policy" not in mitigation:
        return [*lines, f"Not tried: {mitigation.get('skipped')}"]
    lines += [
        "The single threshold failed the fairness gate; a candidate with a threshold per "
        f"{mitigation['attribute']} group was tried: {mitigation['method']}. Expected cost per application "
        f"{mitigation['expected_cost']:.4f} "
        f"(single threshold: {mitigation['expected_cost_single_threshold']:.4f}); "
        f"verdict: **{mitigation['verdict']['verdict']}** ({mitigation['verdict']['reason']}).",
        *_single_threshold_disparities(single),
        "",
        "| group | refuse if score | with probability | else if score | with probability |",
        "|---|---|---|---|---|",
    ]
    return lines + [
        f"| {g} | {r['operator0']} {r['threshold0']:.4f} | {r['p0']:.3f} | {r['operator1']} "
        f"{r['threshold1']:.4f} | {r['p1']:.3f} |"
        for g, r in mitigation["policy"].items()
    ]


def _single_threshold_disparities(single: dict[str, Any]) -> list[str]:
    """One line per judged attribute: the single threshold's disparity measures, which the candidate was to fix."""
    judged = {a: r for a, r in single.items() if "disparate_impact" in r}
    if not judged:
        return []
    return [
        "",
        "The single threshold on the same test window: "
        + "; ".join(
            f"{a}: DP diff {r['demographic_parity_difference']:.3f}, EO diff {r['equalized_odds_difference']:.3f}, "
            f"DI {r['disparate_impact']:.3f}"
            for a, r in judged.items()
        )
        + ".",
    ]


def _tuning(tuning: dict[str, Any] | None) -> list[str]:
    if not tuning:
        return []
    return [
        "",
        f"Hyper-parameters from a random search of {len(tuning['trials'])} trials judged on the validation "
        f"split: {', '.join(f'{k}={v:.4g}' for k, v in tuning['chosen'].items())}.",
    ]


def _importance(importance: dict[str, float]) -> list[str]:
    if not importance:
        return []
    lines = ["", "## What drives the score (mean |SHAP|, log-odds)", "", "| feature | importance |", "|---|---|"]
    return lines + [f"| {name} | {value:.4f} |" for name, value in list(importance.items())[:10]]


def _limits(verdicts: dict[str, Any], coverage: dict[str, Any] | None = None) -> list[str]:
    lines = [
        "",
        "## Limits",
        "",
        "- Trained on matured labels only: the most recent applications are not represented.",
        "- Sensitive attributes are not model inputs, but correlated inputs can still carry their signal; "
        "monitor the fairness table over time.",
    ]
    if coverage and coverage["left_out"]:
        lines.append(
            f"- {coverage['left_out']:,} matured applications without their feature rows were left out: neither the "
            "metrics nor the fairness analysis include them."
        )
    if verdicts.get("fairness", {}).get("mitigation"):
        lines.append(
            f"- Decisions use group thresholds ({verdicts['fairness']['mitigation']}): the attribute must be "
            "supplied when scoring, and the decision mixes two thresholds per group at random in fixed proportions."
        )
    return lines
