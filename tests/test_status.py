"""``status``'s table: pure rendering of state-store rows."""

from __future__ import annotations

import datetime as dt

from legacyflo_daemon.cli.status import table
from legacyflo_daemon.model import Status
from legacyflo_daemon.state.store import RequestRow

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def row(rid: str, status: Status, **kw: object) -> RequestRow:
    base: dict[str, object] = {
        "id": rid, "csv_id": 1, "row": 2, "seq": 1, "status": status, "title": "Upload John",
        "created_at": "2026-11-26T11:00:00+00:00", "started_at": None, "finished_at": None,
        "error": None, "msgs_done": 0, "msgs_total": 0, "bytes_done": 0, "bytes_total": 0,
        "progress_at": None,
    }  # fmt: skip
    base.update(kw)
    return RequestRow(**base)  # type: ignore[arg-type]


def test_running_request_shows_progress_rate_and_eta() -> None:
    running = row(
        "a-r2-1", Status.RUNNING, started_at="2026-11-26T11:59:00+00:00",
        msgs_done=50, msgs_total=100, bytes_done=60_000_000, bytes_total=120_000_000,
    )  # fmt: skip
    lines = table([running], NOW).splitlines()
    assert lines[0].split() == ["REQUEST", "STATE", "MESSAGES", "BYTES", "RATE", "ETA",
                                "TITLE", "/", "ERROR"]  # fmt: skip
    assert "a-r2-1" in lines[1] and "running" in lines[1] and "50/100" in lines[1]
    assert "60.0 MB/120.0 MB" in lines[1] and "1.0 MB/s" in lines[1] and "1m00s" in lines[1]
    assert lines[-1] == "1 running"


def test_finished_and_failed_requests_and_the_summary_line() -> None:
    rows = [
        row("a", Status.SUCCEEDED, finished_at="x", msgs_done=3, msgs_total=3),
        row("b", Status.FAILED, error="authentication failed"),
        row("c", Status.QUEUED),
    ]
    text = table(rows, NOW)
    assert "Upload John: authentication failed" in text
    assert text.splitlines()[-1] == "1 failed, 1 queued, 1 succeeded"
    assert table([], NOW).splitlines()[-1] == "no requests"
