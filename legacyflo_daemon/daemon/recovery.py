"""The daemon's intake: recovery at start, taking CSVs from ``incoming/``, poison CSVs.

A mixin of ``daemon.Daemon`` (split out to keep each module around one concept). Owns the
start-up recovery order (count crashes, re-queue, re-take ``processing/``, repair half-finished
CSVs) and the intake loop (watchfiles wakes it, a periodic rescan is the safety net; a file is
taken once its size stopped changing). Must not: copy mail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from pathlib import Path

import structlog

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.model import RequestResult, Status
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report.finisher import Finisher
from legacyflo_daemon.runtime.aio import wait_any
from legacyflo_daemon.spool import intake
from legacyflo_daemon.spool.directory import Spool
from legacyflo_daemon.state.store import StateStore

log = structlog.get_logger("legacyflo_daemon.daemon.app")

WORK_PREFIX = ".work-"  # per-request scratch directories in outbox/ (listing data)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class IntakeMixin:
    """Recovery and intake; the attributes below are set by ``Daemon``."""

    cfg: Config
    once: bool
    spool: Spool
    state: StateStore
    outbox: Outbox
    finisher: Finisher
    stopping: asyncio.Event
    wake: asyncio.Event
    files_changed: asyncio.Event
    outcomes: list[Status]
    whole_file_rejections: int

    # -- recovery and intake -----------------------------------------------------------------

    async def _recover(self) -> None:
        running = [r for r in self.state.requests() if r.status is Status.RUNNING]
        for csv_id in sorted({r.csv_id for r in running}):
            crashes = self.state.record_crash(csv_id)
            log.warning("crash_detected", csv=self.state.csv(csv_id).name, crashes=crashes)
            if crashes >= self.cfg.daemon.max_crashes:
                await self._poison(csv_id, crashes)
        requeued = self.state.requeue_running()
        self.spool.remove_stale_temps()
        for scratch in self.outbox.dir.glob(f"{WORK_PREFIX}*"):  # left by a crash
            shutil.rmtree(scratch, ignore_errors=True)
        known = {c.name for c in self.state.unfinished_csvs()}
        for path in self.spool.processing_files():
            if path.name not in known:  # claimed, then the daemon died before recording it
                await self._take(path)
        for record in self.state.unfinished_csvs():
            for r in self.state.requests(record.id):
                if r.status is Status.REJECTED and self.state.result(r.id) is None:
                    await self._finish_rejected(r.id, record.name)
            intake.complete_if_finished(record.id, self.spool, self.state, self.outbox, utcnow())
        log.info("recovered", requeued=requeued)

    async def _poison(self, csv_id: int, crashes: int) -> None:
        record = self.state.csv(csv_id)
        why = (f"the daemon stopped unexpectedly {crashes} times while processing this CSV; "
               "it was set aside in failed/ so that the other work can go on")  # fmt: skip
        for r in self.state.requests(csv_id):
            if not r.status.finished:
                now = utcnow()
                result = RequestResult(r.id, Status.FAILED, None, now, error=why)
                req = self.state.load_request(r.id)
                await self.finisher.finish(r.id, record.name, req, None, result, "", now)
                self.outcomes.append(Status.FAILED)
        path = self.spool.processing / record.name
        if path.exists():
            self.spool.finish(path, ok=False, error=why)
        self.state.finish_csv(csv_id, intake.summary(self.state, csv_id), utcnow())
        log.error("csv_poisoned", csv=record.name, crashes=crashes)

    async def _take(self, path: Path) -> None:
        taken = intake.take(path, self.spool, self.state, utcnow())
        if taken is None:
            self.whole_file_rejections += 1
            return
        for rid, _err in taken.rejected:
            await self._finish_rejected(rid, path.name)
        intake.complete_if_finished(taken.csv_id, self.spool, self.state, self.outbox, utcnow())
        self.wake.set()

    async def _finish_rejected(self, rid: str, csv_name: str) -> None:
        err = intake.row_error_from_json(self.state.row_error(rid) or {})
        now = utcnow()
        result = RequestResult(rid, Status.REJECTED, now, now, error=err.message)
        with structlog.contextvars.bound_contextvars(request_id=rid):
            await self.finisher.finish(rid, csv_name, None, err, result, "", now)
        self.outcomes.append(Status.REJECTED)

    async def _intake_once(self, stable: float) -> None:
        for name in self.spool.ready_files(stable_seconds=stable):
            path = self.spool.claim(name)
            if path is not None:
                await self._take(path)

    async def _initial_intake(self) -> None:
        """Take what is in ``incoming/`` before READY (files still growing are left for later)."""
        stable = self.cfg.daemon.stable_seconds
        await self._intake_once(stable)
        if self.spool.waiting_files():
            await asyncio.sleep(stable)
            await self._intake_once(stable)

    async def _intake_loop(self) -> None:
        stable = self.cfg.daemon.stable_seconds
        while not self.stopping.is_set():
            try:
                await self._intake_once(stable)
            except Exception:  # a spool or state problem must not stop the copies running
                log.exception("intake_failed")
            waiting = bool(self.spool.waiting_files())
            timeout = max(0.1, stable / 2) if waiting else self.cfg.daemon.rescan_seconds
            self.files_changed.clear()
            await wait_any((self.files_changed, self.stopping), timeout)

    async def _watch(self) -> None:
        from watchfiles import awatch

        async for _changes in awatch(
            self.spool.incoming,
            stop_event=self.stopping,
            recursive=False,
            force_polling=self.cfg.daemon.force_polling or None,
            poll_delay_ms=self.cfg.daemon.poll_delay_ms,
            yield_on_timeout=True,
            rust_timeout=1000,
        ):
            self.files_changed.set()  # the intake loop re-scans (cheap) on any change
