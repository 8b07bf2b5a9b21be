"""The model card: a markdown page written from a version's evidence record, kept with the version."""

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
        *_fairness(report),
        *_mitigation(report.get("mitigation")),
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


def _metrics(report: dict[str, Any]) -> list[str]:
    """Metrics with their bootstrap intervals, and the decision threshold with its confusion on the test window."""
    lines = [
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
    return lines


def _fairness(report: dict[str, Any]) -> list[str]:
    """Approval rate, TPR, FPR and AUC by group, and the disparity measures of each sensitive attribute."""
    lines = [
        "",
        "## Fairness (approval = score below the threshold)",
        "",
        "| attribute | group | rows | approval rate | TPR | FPR | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for attribute, result in report.get("fairness", {}).items():
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


def _mitigation(mitigation: dict[str, Any] | None) -> list[str]:
    """The group-threshold candidate tried after a failed fairness gate, with its policy; or why it was not."""
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
        "",
        "| group | refuse if score | with probability | else if score | with probability |",
        "|---|---|---|---|---|",
    ]
    return lines + [
        f"| {g} | {r['operator0']} {r['threshold0']:.4f} | {r['p0']:.3f} | {r['operator1']} "
        f"{r['threshold1']:.4f} | {r['p1']:.3f} |"
        for g, r in mitigation["policy"].items()
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
