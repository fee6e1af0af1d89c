"""Nothing blocks the event loop for more than 100 ms: a 50,000-row CSV, a 200,000-message
listing.

Each test runs the daemon's own component (the intake service, the finisher) on a running
event loop beside a lag probe: a task that asks to wake every 5 ms. Between two wake-ups the
probe measures the CPU time the event loop's thread spent (``time.thread_time``): that is work
done on the loop, which must stay under 100 ms, whatever else the machine is doing. It also
records how late it woke (wall clock), which includes the scheduling noise of a shared machine:
that figure is only checked against a gross bound here (a regression such as parsing on the loop
shows as seconds), and measured with a quiet machine by ``bench/bench_loop.py``.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import gzip
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from legacyflo_daemon.config.schema import Config, DaemonConfig
from legacyflo_daemon.daemon.watcher import Watcher
from legacyflo_daemon.model import (
    Account,
    DateRange,
    JobType,
    Request,
    RequestResult,
    Secret,
    Status,
)
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report import archive
from legacyflo_daemon.report.finisher import Finisher
from legacyflo_daemon.request import csvfile
from legacyflo_daemon.runtime.bulk import in_thread
from legacyflo_daemon.spool.directory import Spool
from legacyflo_daemon.state.lifecycle import Lifecycle
from legacyflo_daemon.state.store import StateStore
from legacyflo_daemon.transfer.recorder import ListingRecorder, RecordedListing
from tests.reporthelp import parse_mail

MAX_LOOP_CPU = 0.100  # seconds of work on the loop's thread between two wake-ups
MAX_LAG = 1.0  # seconds late at worst (wall clock, noise of a shared machine included)
NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


class LagProbe:
    def __init__(self) -> None:
        self.worst = 0.0  # wall-clock lateness
        self.worst_cpu = 0.0  # CPU time of the loop's thread in one interval
        self.ticks = 0

    def check(self, what: str) -> None:
        assert self.ticks > 20, "the probe did not run beside the work"
        assert self.worst_cpu < MAX_LOOP_CPU, (
            f"{what}: {self.worst_cpu * 1000:.0f} ms of work on the event loop at once"
        )
        assert self.worst < MAX_LAG, f"{what}: the loop woke {self.worst * 1000:.0f} ms late"


@asynccontextmanager
async def lag_probe(period: float = 0.005) -> AsyncIterator[LagProbe]:
    probe = LagProbe()
    loop = asyncio.get_running_loop()

    async def run() -> None:
        while True:
            before, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(period)
            probe.worst = max(probe.worst, loop.time() - before - period)
            probe.worst_cpu = max(probe.worst_cpu, time.thread_time() - cpu)
            probe.ticks += 1

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    try:
        yield probe
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def big_csv(rows: int, bad: int) -> bytes:
    """``rows`` good rows (distinct accounts) and ``bad`` rows with a malformed date."""
    header = ",".join(csvfile.COLUMNS)
    lines = [header]
    for i in range(rows + bad):
        since = "2017-13-45" if i < bad else "2017-09-25"
        lines.append(
            f"EXCHANGEIMAP,Upload {i},user{i},archive.example,dpw{i},archive.example,Data,"
            f"admin@example.com,user{i},example.com,spw{i},mail.example.com,993,{since},"
        )
    return ("\r\n".join(lines) + "\r\n").encode()


def components(root: Path) -> tuple[Config, Spool, StateStore, Outbox, Finisher]:
    cfg = Config(daemon=DaemonConfig(spool=root / "spool"))
    spool = Spool(cfg.daemon.spool)
    spool.ensure()
    state = StateStore(root / "state.db")
    outbox = Outbox(spool.outbox)

    async def no_listing(req: Request, tmp: Path, rec: ListingRecorder | None) -> RecordedListing:
        raise AssertionError("not used by these tests")

    return cfg, spool, state, outbox, Finisher(cfg, Lifecycle(state), outbox, no_listing)


async def test_taking_and_retiring_a_50000_row_csv_never_blocks_the_loop(tmp_path: Path) -> None:
    rows, bad = 50_000, 20
    cfg, spool, state, outbox, finisher = components(tmp_path)
    path = spool.processing / "big.csv"
    # The test's own CPU (~70 ms to build and write the CSV, ~35 ms to read the summary back)
    # runs in a thread: on the loop it counts against the loop-blocking check (conftest.py).
    await in_thread(lambda: path.write_bytes(big_csv(rows, bad)))
    stop = asyncio.Event()
    watcher = Watcher(cfg, spool, state, outbox, finisher, stop, lambda: None)

    async with lag_probe() as probe:
        await watcher.take(path)
    probe.check("taking the CSV")
    assert state.unfinished_counts()[Status.QUEUED] == rows
    assert len(list(outbox.dir.glob("*.eml"))) == bad  # every rejected row reported

    (record,) = state.unfinished_csvs()

    def copies_done() -> None:  # a shortcut (not what is measured here), off the loop
        with state._tx() as db:
            db.execute(
                "UPDATE requests SET status = 'succeeded', secrets = NULL WHERE status = 'queued'"
            )

    await in_thread(copies_done)
    async with lag_probe() as probe:
        assert await watcher.complete(record.id)
    probe.check("retiring the CSV")
    summary = await in_thread(lambda: json.loads((outbox.dir / "big.csv.summary.json").read_text()))
    assert summary["counts"] == {"succeeded": rows, "rejected": bad}
    assert [p.name for p in spool.done.iterdir()] == ["big.csv"]


async def test_recording_and_reporting_a_200000_message_folder_never_blocks_the_loop(
    tmp_path: Path,
) -> None:
    cfg, _spool, state, outbox, _ = components(tmp_path)
    req = Request(
        row=2,
        jobtype=JobType.EXCHANGEIMAP,
        title="Upload",
        source=Account("john", "example.com", Secret("s"), "mail.example.com", 993),
        dest=Account("john", "archive.example", Secret("d"), "archive.example"),
        dest_folder="Data",
        report_to="admin@example.com",
        dates=DateRange(None, None),
    )
    state.add_csv("a.csv", "a.csv", NOW, [("r1", req)])
    (tmp_path / "work").mkdir()
    recorder = ListingRecorder(tmp_path / "work")
    header = b"From: Someone <a@example.com>\r\nSubject: Hello\r\nMessage-ID: <x@y>\r\n\r\n"
    name = f"INBOX.historical_data.{req.dest_folder}.Inbox"
    async with lag_probe() as probe:  # what the copier does at the end of the folder's pass
        await recorder.record(name, name, ((NOW, header, 2048) for _ in range(200_000)))
    probe.check("recording the folder's listing")
    recorder.tree = set(recorder.files)  # the whole tree recorded: no connection is made
    finisher = Finisher(cfg, Lifecycle(state), outbox, archive.listing_source(cfg))
    Lifecycle(state).start("r1", NOW)
    result = RequestResult("r1", Status.SUCCEEDED, NOW, NOW)
    # The report concatenates the recorded rows: ~0.1 s of work, sampled every millisecond.
    async with lag_probe(period=0.001) as probe:
        doc = await finisher.copied("r1", "a.csv", req, result, recorder)
    probe.check("the report")
    assert doc["status"] == "succeeded"

    def read_rows() -> list[str]:  # ~0.1 s of CPU: in a thread, not on the loop under test
        mail = parse_mail((outbox.dir / "r1.eml").read_bytes())
        (listing,) = [p for p in mail.iter_attachments() if p.get_filename() == "listing.csv.gz"]
        return gzip.decompress(listing.get_content()).decode().splitlines()

    rows = await asyncio.to_thread(read_rows)
    assert len(rows) == 1 + 200_000  # the header and every message
    assert rows[1].endswith(",Someone <a@example.com>,Hello,2048,<x@y>")
    assert state.request_row("r1").status is Status.SUCCEEDED


async def test_folders_recorded_side_by_side_keep_their_own_entries(tmp_path: Path) -> None:
    """The copier passes through several folders at once: their recordings interleave."""
    recorder = ListingRecorder(tmp_path)
    header = b"From: a@example.com\r\nSubject: %d\r\n\r\n"

    def messages(folder: int) -> list[tuple[dt.datetime, bytes, int]]:
        return [(NOW, header % folder, n) for n in range(2_000)]

    await asyncio.gather(*(recorder.record(f"F{f}", f"F{f}", messages(f)) for f in range(3)))
    await recorder.record("F1", "F1", messages(1)[:5])  # recorded again: the new content wins
    for folder, count in ((0, 2_000), (1, 5), (2, 2_000)):
        recorded = recorder.files[f"F{folder}"]
        rows = list(csv.reader(io.StringIO(recorded.path.read_text(), newline="")))
        assert [int(size) for _, _, _, _, size, _ in rows] == list(range(count))
        assert {(r[0], r[3]) for r in rows} == {(f"F{folder}", str(folder))}
        assert (recorded.rows, recorded.folders) == (count, {f"F{folder}"})
