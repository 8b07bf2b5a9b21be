"""The README's configuration table names every variable closedloop reads, and no other."""

from __future__ import annotations

import re

from closedloop import failpoints
from closedloop.settings import ENV_PREFIX, PROJECT_ROOT, SECRETS_DIR, Settings


def _table_variables(readme: str) -> list[str]:
    """The variables of the first column of the table under "Configuration at a glance" (``_X`` is CLOSEDLOOP_X)."""
    section = readme.split("## Configuration at a glance", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            found = re.findall(r"`([A-Z0-9_]+)`", line.split("|")[1])
            names += [n if n.startswith(ENV_PREFIX) else ENV_PREFIX + n[1:] for n in found]
    return names


def test_the_readme_table_lists_every_setting_once() -> None:
    listed = _table_variables((PROJECT_ROOT / "README.md").read_text())
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {SECRETS_DIR, failpoints.ENV}
    assert sorted(known - set(listed)) == [], "missing from README.md's configuration table"
    assert sorted(set(listed) - known) == [], "in README.md's configuration table, but closedloop reads no such one"
    assert len(listed) == len(set(listed)), "listed twice"


def test_the_short_form_is_read_as_the_readme_writes_it() -> None:
    table = "## Configuration at a glance\n\n| variable |\n|---|\n| `CLOSEDLOOP_A` / `_S3_C` | `x` |\n| **g** | |\n"
    assert _table_variables(table) == ["CLOSEDLOOP_A", "CLOSEDLOOP_S3_C"]
