"""The page a reviewer reads in the Prefect UI for a training run: verdict, gates, metrics, links, model card.

Pure: the links are built from what the run knows (MLflow's UI address, experiment and run ids, the version).
"""

from __future__ import annotations

from typing import Any

# MLflow 3 opens an experiment on its GenAI view unless the link says which kind of work it holds
MODEL_TRAINING = "workflowType=machine_learning"


def mlflow_links(mlflow_ui: str, name: str, version: str, experiment_id: str, run_id: str) -> dict[str, str]:
    """The MLflow pages of a registered version: its training run and the version in the registry."""
    ui = mlflow_ui.rstrip("/")
    return {
        "run": f"{ui}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING}",
        "version": f"{ui}/#/models/{name}/versions/{version}?{MODEL_TRAINING}",
    }


def training_page(name: str, version: str, evidence: dict[str, Any], links: dict[str, str], card: str) -> str:
    """Markdown: what was decided and why, where to look next, then the model card."""
    gates = evidence["gates"]
    failed = [gate for gate, verdict in gates.items() if verdict["verdict"] != "pass"]
    not_passed = ", ".join(f"{gate} {gates[gate]['verdict']}" for gate in failed)
    verdict = (
        "**eligible for promotion**: every gate passed" if evidence["eligible"] else f"**not eligible**: {not_passed}"
    )
    report = evidence["report"]
    metrics = report.get("metrics") or {}
    intervals = report.get("intervals") or {}
    lines = [
        f"# {name} v{version}: {verdict}",
        "",
        f"Started by {evidence['started_by']}; {evidence['training_rows']:,} labelled applications, "
        f"{evidence['data_window'][0][:10]} to {evidence['data_window'][1][:10]}.",
        "",
        f"[MLflow run]({links['run']}) · [model version {version}]({links['version']})",
        "",
        "| gate | verdict | reason |",
        "|---|---|---|",
        *[f"| {gate} | {v['verdict']} | {_cell(v.get('reason', ''))} |" for gate, v in gates.items()],
        "",
        "| metric (test window) | value | 95% interval |",
        "|---|---|---|",
        *[
            f"| {metric} | {value:.4f} | "
            + (f"{intervals[metric][0]:.4f} - {intervals[metric][1]:.4f}" if metric in intervals else "not recorded")
            + " |"
            for metric, value in metrics.items()
        ],
    ]
    loosened = (evidence.get("limits") or {}).get("loosened")
    if loosened:
        lines += ["", f"Judged by limits looser than the contract's ({', '.join(loosened)}): a person must approve it."]
    return "\n".join(lines) + "\n\n---\n\n" + card


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
