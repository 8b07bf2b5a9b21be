"""The code a packaged scorer ships: followed from its imports, and enough on its own in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import ColumnType, load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.promote.shipped_code import imported_modules, imports_of, scoring_files, stage_scoring_code
from tasks.score.scoring import ScoringModel, frame_matrix
from tasks.shared.features import feature_names

CONTRACT_FILE = PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"


def test_imports_are_read_from_every_statement_including_lazy_and_relative_ones() -> None:
    source = textwrap.dedent(
        """
        import json
        from a.b import c, d
        from . import sibling
        from ..up import thing

        def later():
            import a.lazy
        """
    )
    assert imports_of(source, "pkg.sub.mod", is_package=False) == {
        "json",
        "a.b",
        "a.b.c",
        "a.b.d",
        "pkg.sub",
        "pkg.sub.sibling",
        "pkg.up",
        "pkg.up.thing",
        "a.lazy",
    }
    assert "pkg.sub.sibling" in imports_of("from . import sibling", "pkg.sub", is_package=True)


def test_imports_are_followed_through_the_project_with_parent_packages(tmp_path: Path) -> None:
    for relative, text in {
        "app/__init__.py": "",
        "app/entry.py": "import numpy\nfrom app.helpers import tool\n",
        "app/helpers/__init__.py": "from .tool import run\n",
        "app/helpers/tool.py": "def run():\n    from lib.core import x\n",
        "app/unused.py": "import app.entry\n",
        "lib/core.py": "x = 1\n",  # a namespace package: no __init__.py
        "lib/template.yaml": "data: 1\n",
        "lib/README.md": "not shipped\n",
    }.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    (tmp_path / "numpy").mkdir()  # an installed project sits beside its dependencies: they are not followed
    (tmp_path / "numpy/__init__.py").write_text("")
    assert imported_modules(tmp_path, "app.entry", ("app", "lib")) == {
        "app",
        "app.entry",
        "app.helpers",
        "app.helpers.tool",
        "lib.core",
    }
    assert [str(p) for p in scoring_files(tmp_path, "app.entry", ("app", "lib"))] == [
        "app/__init__.py",
        "app/entry.py",
        "app/helpers/__init__.py",
        "app/helpers/tool.py",
        "lib/core.py",
        "lib/template.yaml",
    ]


def test_the_scorer_ships_scoring_and_the_feature_store_but_not_training_or_monitoring() -> None:
    files = {str(p) for p in scoring_files(PROJECT_ROOT)}
    assert {
        "tasks/promote/bundle.py",
        "tasks/score/scoring.py",
        "tasks/shared/explain.py",
        "closedloop/contract.py",
        "closedloop/settings.py",
        "feature_repo/store.py",
        "feature_repo/feature_store.local.yaml",  # the store template the lookup path renders
        "feature_repo/feature_store.production.yaml",
    } <= files
    assert not any(f.startswith(("tasks/train/", "tasks/monitor/", "tasks/ingest/", "flows/", "cli/")) for f in files)
    assert "tasks/promote/promotion.py" not in files and not any(f.endswith("README.md") for f in files)


def _tiny_model(folder: Path) -> tuple[Path, pd.DataFrame, np.ndarray]:
    """A small XGBoost model on the contract's features, a few rows (as golden records keep them) and its scores."""
    import xgboost as xgb

    contract = load_contract(CONTRACT_FILE)
    names = feature_names(contract)
    rng = np.random.default_rng(7)
    rows = pd.DataFrame({name: rng.normal(size=40) for name in names})
    for name in names:
        column = next((c for c in contract.columns if c.name == name), None)
        if column is not None and column.type is ColumnType.CATEGORY and column.categories:
            rows[name] = rng.choice(column.categories, size=len(rows))
    matrix = pd.DataFrame(frame_matrix(rows, contract, names), columns=names)
    classifier = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(matrix, rng.integers(0, 2, len(rows)))
    model_file = folder / "model.ubj"
    classifier.save_model(model_file)
    expected = ScoringModel.from_evidence("7", classifier, {"decision_threshold": 0.5})
    probabilities, _ = expected.predict(frame_matrix(rows, contract, expected.columns))
    return model_file, rows.head(10), probabilities[:10]


CHILD = """
import json, sys
from pathlib import Path

project, scorer, rows = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != project]  # nothing of the project but the package
import mlflow.pyfunc
import pandas as pd

answer = mlflow.pyfunc.load_model(scorer).predict(pd.read_json(rows), params={"features": "given"})
import tasks.score.scoring

print(json.dumps({
    "probability": answer["probability"].tolist(),
    "decision": answer["decision"].tolist(),
    "model_version": sorted(set(answer["model_version"])),
    "scoring_from": tasks.score.scoring.__file__,
}))
"""


@pytest.mark.slow
def test_the_packaged_scorer_loads_and_scores_in_a_fresh_interpreter_with_only_its_code(tmp_path: Path) -> None:
    import mlflow

    from tasks.promote.packaging import scorer_model

    contract = load_contract(CONTRACT_FILE)
    model_file, rows, expected = _tiny_model(tmp_path)
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps({"decision_threshold": 0.5}))
    package = scorer_model(contract, str(CONTRACT_FILE), "7", model_file, evidence, tmp_path)
    mlflow.pyfunc.save_model(path=tmp_path / "scorer", **package)
    shipped = sorted(p.relative_to(tmp_path / "scorer" / "code") for p in (tmp_path / "scorer/code").rglob("*.py"))
    assert shipped == [p for p in scoring_files(PROJECT_ROOT) if p.suffix == ".py"]

    (tmp_path / "rows.json").write_text(rows.to_json())
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(PROJECT_ROOT), str(tmp_path / "scorer"), str(tmp_path / "rows.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(answer["scoring_from"]).is_relative_to(tmp_path / "scorer" / "code")
    assert answer["model_version"] == ["7"]
    assert np.abs(np.asarray(answer["probability"]) - expected).max() <= 1e-6
    assert answer["decision"] == ["refuse" if p >= 0.5 else "approve" for p in expected]


def test_staging_copies_the_files_into_package_folders(tmp_path: Path) -> None:
    folders = stage_scoring_code(PROJECT_ROOT, tmp_path)
    assert folders == [tmp_path / "closedloop", tmp_path / "feature_repo", tmp_path / "tasks"]
    assert (tmp_path / "tasks/score/scoring.py").read_bytes() == (PROJECT_ROOT / "tasks/score/scoring.py").read_bytes()
    assert not (tmp_path / "tasks/train").exists()
