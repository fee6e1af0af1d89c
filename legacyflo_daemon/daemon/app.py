"""The daemon: composition root, scheduling, signals (SPEC §7); intake is in daemon_intake.

Start-up order matters: open the state store, recover (count crashes, re-queue what was
running, re-take ``processing/``, repair half-finished CSVs), take what is already in
``incoming/``, and only then tell systemd READY=1. Then watch ``incoming/`` (watchfiles, with a
periodic rescan as a safety net), start queued requests as the pool allows, and send reports.

Every request runs in its own task inside one TaskGroup, behind an error boundary: whatever
goes wrong in one request becomes that request's ``failed`` result and never cancels its
siblings. SIGTERM/SIGINT: stop claiming, ask copiers to stop after their in-flight APPEND,
wait up to ``grace_seconds``, cancel what is left, re-queue it, exit 0. SIGHUP: reload the log
level and the limits from the config file.

Nothing imports this module except the CLI.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

import structlog

from legacyflo_daemon.config.load import load_config
from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.daemon.pool import Limits, Pool, fair_order, slot_for
from legacyflo_daemon.daemon.recovery import WORK_PREFIX, IntakeMixin, utcnow
from legacyflo_daemon.model import RequestResult, Status
from legacyflo_daemon.outbox.sender import MailSender
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report import archive
from legacyflo_daemon.report.finisher import Finisher
from legacyflo_daemon.runtime import log as logsetup
from legacyflo_daemon.runtime.aio import wait_any
from legacyflo_daemon.runtime.systemd import Notifier, watchdog_task
from legacyflo_daemon.spool import intake
from legacyflo_daemon.spool.directory import Spool
from legacyflo_daemon.state.store import StateStore
from legacyflo_daemon.transfer.copier import Copier, Interrupted, Progress
from legacyflo_daemon.transfer.limits import ByteBudget
from legacyflo_daemon.transfer.recorder import ListingRecorder

log = structlog.get_logger("legacyflo_daemon.daemon.app")

CANDIDATES = 200  # queued requests looked at per scheduling pass
PROGRESS_SECONDS = 5.0


class Daemon(IntakeMixin):
    def __init__(self, cfg: Config, *, once: bool = False, notifier: Notifier | None = None):
        self.cfg = cfg
        self.once = once
        self.notifier = notifier or Notifier.from_env()
        self.spool = Spool(cfg.daemon.spool)
        self.pool = Pool(Limits.from_config(cfg))
        self.budget = ByteBudget(cfg.daemon.byte_budget_mb * 1024 * 1024)
        self.stopping = asyncio.Event()  # SIGTERM: stop taking work
        self.copy_stop = asyncio.Event()  # copiers: stop after the in-flight APPEND
        self.wake = asyncio.Event()  # scheduler: something changed
        self.files_changed = asyncio.Event()  # intake: watchfiles saw something
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.progress: dict[str, Progress] = {}
        self.outcomes: list[Status] = []
        self.whole_file_rejections = 0

    # -- entry -------------------------------------------------------------------------------

    async def run(self) -> int:
        self.spool.ensure()
        self.state = StateStore(self.cfg.daemon.state_path)
        self.outbox = Outbox(self.spool.outbox)
        smtp = self.cfg.smtp
        if smtp is not None:
            smtp.password()  # a missing password file/variable stops the start, naming the key
        self.sender = MailSender(
            self.outbox,
            smtp,
            interval=smtp.scan_interval if smtp else 60.0,
            backoff_base=smtp.retry_base if smtp else 30.0,
            backoff_max=smtp.retry_max if smtp else 3600.0,
        )
        self.finisher = Finisher(
            self.cfg, self.state, self.outbox, archive.listing_source(self.cfg), self.sender.kick
        )
        self._install_signals()
        try:
            await self._recover()
            await self._initial_intake()
            self.notifier.ready()
            log.info("daemon_ready", spool=str(self.spool.root), queued=len(self.state.queued()),
                     once=self.once)  # fmt: skip
            sender_stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                services = [
                    tg.create_task(self._intake_loop()),
                    tg.create_task(watchdog_task(self.notifier, lambda: True)),
                    tg.create_task(self._status_loop()),
                ]
                if not self.once:
                    services.append(tg.create_task(self._watch()))
                # The sender is never cancelled: a mail the SMTP server accepted must reach
                # sent/ before we exit, or the next start would deliver it a second time.
                tg.create_task(self.sender.run(sender_stop))
                await self._schedule()
                await self._shutdown()
                sender_stop.set()
                for task in services:
                    task.cancel()
            if self.once and self.cfg.smtp is not None:
                await self.sender.send_pending()
        finally:
            self.state.close()
        log.info("daemon_stopped", outcomes=[s.value for s in self.outcomes])
        if self.once:
            ok = all(s is Status.SUCCEEDED for s in self.outcomes)
            return 0 if ok and not self.whole_file_rejections else 1
        return 0

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("daemon_stopping", running=len(self.tasks))
            self.notifier.stopping()
            self.stopping.set()
            self.wake.set()

    def reload(self) -> None:
        """SIGHUP: new log level and limits; running requests keep going."""
        if self.cfg.path is None:
            return
        try:
            new = load_config(self.cfg.path)
        except Exception as exc:
            log.error("reload_failed", error=str(exc))
            return
        logsetup.set_level(new.log.level)
        self.pool.limits = Limits.from_config(new)
        log.info("reloaded", level=new.log.level, max_jobs=new.daemon.max_jobs)
        self.wake.set()

    # -- scheduling --------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()
            self._start_ready()
            idle = not self.tasks and not self.state.queued() and not self.spool.waiting_files()
            if self.once and idle:
                return
            await wait_any((self.wake, self.stopping), 1.0)

    def _start_ready(self) -> None:
        queued = self.state.queued()
        order = fair_order([(r.id, r.csv_id) for r in queued])[:CANDIDATES]
        candidates = []
        for rid in order:
            if rid not in self.tasks:
                candidates.append((rid, slot_for(self.state.load_request(rid))))
        for rid in self.pool.pick(candidates):
            self.state.mark_running(rid, utcnow())
            self.tasks[rid] = self.tg.create_task(self._run_request(rid))

    async def _run_request(self, rid: str) -> None:
        structlog.contextvars.bind_contextvars(request_id=rid)
        row = self.state.request_row(rid)
        csv_name = self.state.csv(row.csv_id).name
        try:
            await self._copy_and_finish(rid, csv_name)
        except Interrupted:
            log.info("request_interrupted")
        except Exception as exc:  # the per-request error boundary
            log.exception("request_crashed")
            await self._finish_crashed(rid, csv_name, exc)
        finally:
            self.pool.release(rid)
            self.tasks.pop(rid, None)
            self.progress.pop(rid, None)
            self.wake.set()
        structlog.contextvars.unbind_contextvars("request_id")  # CSV events are not the request's
        try:
            intake.complete_if_finished(row.csv_id, self.spool, self.state, self.outbox, utcnow())
        except Exception:
            log.exception("csv_complete_failed")

    async def _copy_and_finish(self, rid: str, csv_name: str) -> None:
        req = self.state.load_request(rid)
        log.info("request_started", title=req.title, source=req.source.address,
                 source_server=req.source.server, dest=req.dest.address,
                 dest_server=req.dest.server, folder=req.dest_folder)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=self.outbox.dir) as work:
            recorder = ListingRecorder(Path(work))
            copier = Copier(rid, req, self.cfg, self.state, self.budget, stop=self.copy_stop)
            copier.listing = recorder
            copier.extra_pair = lambda: self.pool.try_extend(rid)
            copier.release_pair = lambda: self._shrink(rid)
            self.progress[rid] = copier.progress
            ticker = asyncio.create_task(self._progress(rid, copier.progress))
            try:
                result = await copier.run()
            finally:
                ticker.cancel()
            p = copier.progress
            self.state.set_progress(rid, (p.messages_done, p.messages_total),
                                    (p.bytes_done, p.bytes_total), utcnow())  # fmt: skip
            dest_path = f"{self.cfg.imap.dest_root}.{req.dest_folder}"
            doc = await self.finisher.finish(
                rid, csv_name, req, None, result, dest_path, utcnow(), recorder
            )
        self.outcomes.append(result.status)
        log.info("request_finished", status=result.status.value, totals=doc.get("totals"),
                 failures=len(result.failures), error=result.error)  # fmt: skip

    def _shrink(self, rid: str) -> None:
        self.pool.shrink(rid)
        self.wake.set()  # the freed connections may let a queued request start

    async def _finish_crashed(self, rid: str, csv_name: str, exc: Exception) -> None:
        now = utcnow()
        error = f"internal error ({type(exc).__name__}); see the daemon log"
        try:
            req = self.state.load_request(rid)
            result = RequestResult(rid, Status.FAILED, None, now, error=error)
            await self.finisher.finish(rid, csv_name, req, None, result, "", now)
            self.outcomes.append(Status.FAILED)
        except Exception:
            log.exception("request_finish_failed")

    async def _progress(self, rid: str, p: Progress) -> None:
        start = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            elapsed = asyncio.get_running_loop().time() - start
            rate = p.bytes_done / elapsed if elapsed > 0 else 0.0
            left = max(0, p.bytes_total - p.bytes_done)
            self.state.set_progress(rid, (p.messages_done, p.messages_total),
                                    (p.bytes_done, p.bytes_total), utcnow())  # fmt: skip
            log.info("request_progress", messages_done=p.messages_done,
                     messages_total=p.messages_total, bytes_done=p.bytes_done,
                     bytes_total=p.bytes_total, rate_bytes_per_s=round(rate),
                     eta_seconds=round(left / rate) if rate > 0 else None)  # fmt: skip

    async def _status_loop(self) -> None:
        while True:
            self.notifier.status(f"{len(self.tasks)} running, {len(self.state.queued())} queued")
            await asyncio.sleep(PROGRESS_SECONDS)

    async def _shutdown(self) -> None:
        self.copy_stop.set()
        pending = list(self.tasks.values())
        if pending:
            _done, late = await asyncio.wait(pending, timeout=self.cfg.daemon.grace_seconds)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        requeued = self.state.requeue_running()
        log.info("daemon_shutdown", requeued=requeued)


def main(cfg: Config, *, once: bool = False) -> int:
    """Run the daemon until SIGTERM (or, with ``once``, until the spool is drained)."""
    return asyncio.run(Daemon(cfg, once=once).run())
