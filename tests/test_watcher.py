"""The intake service sets aside a file on which taking it met a bug (never retried)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from legacyflo_daemon.daemon.watcher import Watcher
from legacyflo_daemon.spool import intake
from tests.test_loop_blocking import big_csv, components


async def test_a_bug_while_taking_a_csv_sets_it_aside_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, spool, state, outbox, finisher = components(tmp_path)
    path = spool.processing / "bug.csv"
    path.write_bytes(big_csv(2, 0))
    calls: list[Path] = []

    def broken(p: Path, *args: object) -> None:
        calls.append(p)
        raise AttributeError("injected intake bug")

    monkeypatch.setattr(intake, "take", broken)
    watcher = Watcher(cfg, spool, state, outbox, finisher, asyncio.Event(), lambda: None)
    with capture_logs() as events:
        await watcher.take(path)
    assert calls == [path] and watcher.whole_file_rejections == 1 and watcher.busy == 0
    (event,) = [e for e in events if e["event"] == "csv_internal_error"]
    assert isinstance(event["exc_info"], AttributeError)
    assert sorted(p.name for p in spool.failed.iterdir()) == ["bug.csv", "bug.csv.error.txt"]
    why = (spool.failed / "bug.csv.error.txt").read_text()
    assert "internal error while taking it (AttributeError)" in why
    assert event["error_id"] in why
    assert b"spw0" not in (spool.failed / "bug.csv").read_bytes()  # redacted like any reject
    assert list(spool.processing.iterdir()) == [] and state.unfinished_csvs() == []
