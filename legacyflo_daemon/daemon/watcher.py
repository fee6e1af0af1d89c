"""The intake service: CSVs from ``incoming/`` into the state store, and out to ``done/``.

Owns: when files are taken (watchfiles wakes the intake loop; a periodic rescan is the safety
net; a file is taken once its size stopped changing and its last line is finished), reporting
the rows rejected at intake, setting aside a file on which taking it met a bug (``failed/``,
logged once, never retried), and retiring a CSV once its last request finished. Parsing,
recording and retiring a file are blocking (seconds for a 50,000-row file) and run in a worker
thread (``spool.intake`` does the work); the event loop only waits for them.

``watchfiles`` is imported only by a daemon that watches (not ``run --once``, which only
rescans): ``require_watchfiles`` at its start, so that a missing package stops that start with
one clear line instead of a service crashing in a loop.

Must not: copy mail, or decide when requests run (the scheduler does; ``wake`` tells it that
work arrived).
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
from collections.abc import Callable
from pathlib import Path

import structlog

from legacyflo_daemon.config.packages import require_package
from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import SpoolError
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report import batch
from legacyflo_daemon.report.finisher import Finisher
from legacyflo_daemon.runtime.aio import wait_any
from legacyflo_daemon.runtime.bulk import in_thread
from legacyflo_daemon.runtime.clock import utcnow
from legacyflo_daemon.spool import intake
from legacyflo_daemon.spool.directory import Spool
from legacyflo_daemon.state.store import StateStore

log = structlog.get_logger("legacyflo_daemon.daemon.watcher")


class Watcher:
    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        state: StateStore,
        outbox: Outbox,
        finisher: Finisher,
        stop: asyncio.Event,
        wake: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.state = state
        self.outbox = outbox
        self.finisher = finisher
        self.stop = stop
        self.wake = wake
        self.changed = asyncio.Event()  # watchfiles saw something in incoming/
        self.whole_file_rejections = 0  # CSVs sent to failed/ as a whole (for --once's exit)
        self.busy = 0  # files being taken right now (claimed, requests not yet queued)
        # Called whenever a file was taken (or set aside): `run --once` looks at once whether
        # everything is done (daemon.app), instead of at its next poll.
        self.on_settled: Callable[[], None] = lambda: None

    async def take(self, path: Path, csv_id: int | None = None) -> None:
        """Record the claimed CSV ``path`` (in ``processing/``) and report its rejected rows;
        ``csv_id``: its record when recovery takes it again after a crash while parsing."""
        self.busy += 1
        try:
            try:
                taken = await in_thread(intake.take, path, self.spool, self.state, utcnow(), csv_id)
            except Exception as exc:  # a bug: set the file aside, never take it again by itself
                await self._set_aside(path, exc)
                return
            if taken is None:
                self.whole_file_rejections += 1
                return
            self.wake()
            for rid, err in taken.rejected:
                with structlog.contextvars.bound_contextvars(request_id=rid):
                    await self.finisher.rejected(rid, path.name, err)
            await self.complete(taken.csv_id)
        finally:
            self.busy -= 1
            self.on_settled()

    async def _set_aside(self, path: Path, exc: Exception) -> None:
        """A bug met while taking ``path``: logged once with its traceback, the file moved to
        ``failed/`` (redacted) with the reason, so that neither this run nor the next start's
        recovery meets it again."""
        error_id = secrets.token_hex(4)
        log.error("csv_internal_error", file=path.name, error_id=error_id, exc_info=exc)
        reason = (
            f"{path.name}: internal error while taking it ({type(exc).__name__}); not retried: "
            f"see the daemon log, event csv_internal_error with error_id {error_id}"
        )
        try:
            await in_thread(self.spool.reject_unusable, path, reason)
        except (SpoolError, OSError) as move_exc:  # stays in processing/; the daemon goes on
            log.error("csv_set_aside_failed", file=path.name, error=str(move_exc))
        self.whole_file_rejections += 1

    async def complete(self, csv_id: int) -> bool:
        """Retire ``csv_id`` if every one of its requests is finished (summary, ``done/``).

        A file-system error (a full disk, a name refused) is logged and leaves the CSV in
        ``processing/`` for the next start, which repeats the idempotent steps; it never stops
        the intake of other files."""
        if self.state.unfinished_count(csv_id):
            return False
        # Two daemons finishing a CSV's last requests at once: one retires it, once.
        with self.state.exclusive(f"complete {csv_id}") as mine:
            if not mine:
                return False
            try:
                done = await in_thread(
                    intake.complete_if_finished, csv_id, self.spool, self.state, self.outbox,
                    utcnow(),
                )  # fmt: skip
                if done and await in_thread(
                    batch.write_batch_report, csv_id, self.state, self.outbox, self.cfg
                ):
                    self.finisher.on_mail()  # the sender picks it up now
            except OSError as exc:
                log.error("csv_finish_failed", csv_id=csv_id, error=str(exc))
                return False
        return done

    async def take_ready(self) -> None:
        """Claim and take every file of ``incoming/`` whose size stopped changing."""
        stable = self.cfg.daemon.stable_seconds
        incomplete = self.cfg.daemon.incomplete_seconds
        ready = await asyncio.to_thread(
            self.spool.ready_files, stable_seconds=stable, incomplete_seconds=incomplete
        )
        if not ready:
            return
        # Daemons sharing a spool and a state claim files one node at a time: a file claimed
        # (renamed into processing/) is recorded before another node may look at processing/
        # (recovery takes what the state does not know).
        with self.state.exclusive("intake") as mine:
            if not mine:
                return  # another node takes files right now; the next rescan looks again
            for name in ready:
                if self.stop.is_set():
                    return
                path = self.spool.claim(name)
                if path is not None:
                    await self.take(path)

    async def initial(self) -> None:
        """Take what is in ``incoming/`` before READY (files still growing are left for later)."""
        await self.take_ready()
        if self.spool.waiting_files():
            await wait_any((self.stop,), self.cfg.daemon.stable_seconds)
            await self.take_ready()

    async def intake_loop(self) -> None:
        """Service: take files whenever ``incoming/`` changed, and at least every
        ``rescan_seconds``."""
        stable = self.cfg.daemon.stable_seconds
        while not self.stop.is_set():
            await self.take_ready()
            waiting = bool(self.spool.waiting_files())
            timeout = max(0.1, stable / 2) if waiting else self.cfg.daemon.rescan_seconds
            self.changed.clear()
            await wait_any((self.changed, self.stop), timeout)

    async def watch(self) -> None:
        """Service: wake the intake loop on any change in ``incoming/`` (watchfiles; see
        ``require_watchfiles``)."""
        from watchfiles import awatch  # ~20 ms of imports that `run --once` does not need

        async for _changes in awatch(
            self.spool.incoming,
            stop_event=self.stop,
            recursive=False,
            force_polling=self.cfg.daemon.force_polling or None,
            poll_delay_ms=self.cfg.daemon.poll_delay_ms,
            yield_on_timeout=True,
            rust_timeout=1000,
        ):
            self.changed.set()


def require_watchfiles(cfg: Config) -> None:
    """Import ``watchfiles`` now (``Watcher.watch`` needs it); ``ConfigError`` naming the
    package if it is not installed."""
    require_package(
        lambda: importlib.import_module("watchfiles"), str(cfg.path or "config"),
        "daemon.intake", "watching incoming/", "; run --once does not need it",
    )  # fmt: skip
