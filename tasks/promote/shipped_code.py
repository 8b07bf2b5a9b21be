"""The project code a packaged scorer needs: the modules ``tasks.promote.bundle`` imports, followed to the end.

A registered model carries its code (MLflow ``code_paths``). Shipping the project's packages whole would put the
training, monitoring and ingestion code in every model; this follows the imports of the scorer's module through
the project's source instead (every ``import`` statement, those inside functions included, since scoring imports
the feature store lazily), adds each package's ``__init__.py`` and the data files beside shipped modules (the
Feast store templates), and stages that tree for MLflow. A test loads the staged scorer in an interpreter that
sees nothing else of the project.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

SCORER_MODULE = "tasks.promote.bundle"  # the module of the pickled ``ApplicationScorer``
# the packages a scorer may take code from (an installed project sits beside numpy and the rest in site-packages)
PROJECT_PACKAGES = ("closedloop", "feature_repo", "tasks")
NOT_SHIPPED = ("README.md",)


def module_file(root: Path, module: str) -> Path | None:
    """The source file of a project module under ``root`` (a package's ``__init__.py``), or None when not there."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement in ``source`` may load (``from a import b``: ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imported_modules(root: Path, entry: str = SCORER_MODULE, packages: tuple[str, ...] = PROJECT_PACKAGES) -> set[str]:
    """``entry`` and every module of ``packages`` it imports, directly or not, with their parent packages."""
    found: set[str] = set()
    pending = [entry]
    while pending:
        module = pending.pop()
        parts = module.split(".")
        if parts[0] not in packages:
            continue
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            name = ".".join(parts[:i])
            path = module_file(root, name)
            if name in found or path is None:
                continue
            found.add(name)
            pending.extend(imports_of(path.read_text(), name, path.name == "__init__.py"))
    return found


def scoring_files(root: Path, entry: str = SCORER_MODULE, packages: tuple[str, ...] = PROJECT_PACKAGES) -> list[Path]:
    """The files to ship, relative to ``root``: the imported modules and the data files of their folders."""
    modules = [module_file(root, name) for name in imported_modules(root, entry, packages)]
    sources = {path for path in modules if path is not None}
    data = {
        path
        for folder in {source.parent for source in sources}
        for path in folder.iterdir()
        if path.is_file() and path.suffix not in (".py", ".pyc") and path.name not in NOT_SHIPPED
    }
    return sorted(path.relative_to(root) for path in sources | data)


def stage_scoring_code(root: Path, destination: Path, entry: str = SCORER_MODULE) -> list[Path]:
    """Copy the scorer's files under ``destination``; returns its top-level package folders (MLflow's code_paths)."""
    files = scoring_files(root, entry)
    for relative in files:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    return sorted({destination / relative.parts[0] for relative in files})
