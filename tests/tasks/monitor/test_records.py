"""Window records in the lake: written one object per window, read back oldest first."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from closedloop.lake import Lake
from tasks.monitor import records


def record(end: datetime, status: str = "judged") -> dict[str, object]:
    return {"window": {"start": "s", "end": end.isoformat()}, "status": status}


def test_history_reads_the_windows_oldest_first_up_to_a_time(tmp_path: Path) -> None:
    lake = Lake.of(str(tmp_path), "credit")
    ends = [datetime(2024, 3, day, tzinfo=UTC) for day in (3, 1, 2)]
    for end in ends:
        records.write_window(lake, record(end))
    assert [r["window"]["end"] for r in records.history(lake)] == [e.isoformat() for e in sorted(ends)]
    assert len(records.history(lake, before=datetime(2024, 3, 2, tzinfo=UTC))) == 2
    assert records.history(lake, limit=1)[0]["window"]["end"] == ends[0].isoformat()
    rerun = records.earlier_windows(lake, datetime(2024, 3, 2, tzinfo=UTC))  # the window's own record is replaced
    assert [r["window"]["end"] for r in rerun] == [datetime(2024, 3, 1, tzinfo=UTC).isoformat()]


def test_a_report_sits_beside_its_window(tmp_path: Path) -> None:
    lake = Lake.of(str(tmp_path), "credit")
    end = datetime(2024, 3, 1, 12, tzinfo=UTC)
    uri = records.write_report(lake, end, "<html></html>")
    assert uri.endswith("monitor/reports/20240301T120000000000.html")
    assert Path(uri.removeprefix("file://")).read_text() == "<html></html>"
