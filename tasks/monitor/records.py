"""The window records and reports the monitor keeps in the lake, one object per window.

```
<lake>/<dataset>/monitor/windows/<window end %Y%m%dT%H%M%S%f>.json
<lake>/<dataset>/monitor/reports/<window end>.html          the Evidently report of the window
```

A window is named to a person (its MLflow run, its Prefect artifact) by :func:`window_label`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from closedloop import storage
from closedloop.lake import Lake

WINDOWS = "monitor/windows"
REPORTS = "monitor/reports"


def window_uri(lake: Lake, end: datetime, area: str = WINDOWS, suffix: str = "json") -> str:
    return storage.join(lake.root, area, f"{end:%Y%m%dT%H%M%S%f}.{suffix}")


def window_label(start: datetime, end: datetime) -> str:
    """A window as a person reads it, in UTC: ``2026-04-03 10:00-11:00 UTC``.

    Seconds show only when an end has some (a window judged from the form or by a test), so that two such windows
    a few seconds apart get two names; the end's date only when it is not the start's.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    whole_minutes = all(t.second == 0 and t.microsecond == 0 for t in (start, end))
    clock = "%H:%M" if whole_minutes else "%H:%M:%S"
    first = start.strftime(f"%Y-%m-%d {clock}")
    if end.date() == start.date():
        return f"{first}-{end.strftime(clock)} UTC"
    return f"{first} - {end.strftime(f'%Y-%m-%d {clock}')} UTC"


def write_window(lake: Lake, record: dict[str, Any]) -> str:
    """Write a window's JSON record (:meth:`tasks.monitor.window.WindowRecord.as_json`); returns its URI."""
    end = datetime.fromisoformat(record["window"]["end"])
    return storage.write_bytes(
        window_uri(lake, end), json.dumps(record, indent=2, default=str).encode(), lake.endpoint_url
    )


def write_report(lake: Lake, end: datetime, html: str) -> str:
    """Write the Evidently report of the window ending at ``end``; returns its URI."""
    return storage.write_bytes(window_uri(lake, end, REPORTS, "html"), html.encode(), lake.endpoint_url)


def history(lake: Lake, before: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Window records, oldest first, ending at or before ``before``."""
    uris = sorted(
        u for u in storage.list_objects(storage.join(lake.root, WINDOWS), lake.endpoint_url) if u.endswith(".json")
    )
    records = [json.loads(storage.read_bytes(u, lake.endpoint_url)) for u in uris]
    if before is not None:
        records = [r for r in records if datetime.fromisoformat(r["window"]["end"]) <= before]
    return records[-limit:] if limit else records


def earlier_windows(lake: Lake, end: datetime) -> list[dict[str, Any]]:
    """The records of the windows before the one ending at ``end`` (a rerun of that window replaces its own)."""
    return [r for r in history(lake, before=end) if r["window"]["end"] != end.isoformat()]
