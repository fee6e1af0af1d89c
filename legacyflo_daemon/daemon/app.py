"""The daemon: composition root, supervision scopes and signals (docs/contract.md §7).

Start-up order matters: open the state store, recover (``daemon.recovery``), take what is
already in ``incoming/``, and only then tell systemd READY=1. Then, until a stop:

- **services** — the intake loop and the watchfiles watcher (``daemon.watcher``), the scheduler
  (``daemon.scheduler``), the status line and the watchdog — each under a ``Supervisor``: a
  crash is logged with its traceback and the service restarted, a bounded number of times; then
  the daemon stops gracefully (and exits 1, so that systemd restarts it).
- **requests** — one task per running request in a TaskGroup of their own, each behind the
  scheduler's error boundary: one failing request never touches another, and no service crash
  cancels a copy.
- **the mail sender** — a task of its own, never cancelled: it is asked to stop between two
  deliveries, so that a mail the SMTP server accepted always reaches ``sent/`` (a cancelled
  delivery would be sent again by the next start).

Stop (SIGTERM/SIGINT, ``--once`` with nothing left, or a service that gave up): the services
end, copiers finish their in-flight batch (up to ``grace_seconds``, then they are cancelled),
unfinished requests are re-queued, the sender finishes its current mail, the WAL is truncated,
exit. SIGHUP reloads the log level and the limits.

Nothing imports this module except the CLI.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import signal
import socket
import stat
import sys
import time
from typing import TYPE_CHECKING

import structlog

from legacyflo_daemon.config.load import load_config
from legacyflo_daemon.config.packages import require_package
from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.daemon.pool import Limits, Pool
from legacyflo_daemon.daemon.recovery import recover, take_over
from legacyflo_daemon.daemon.scheduler import PROGRESS_SECONDS, Scheduler
from legacyflo_daemon.daemon.supervisor import Service, Supervisor
from legacyflo_daemon.daemon.watcher import Watcher, require_watchfiles
from legacyflo_daemon.errors import ConfigError, SpoolError, StateError, StateUnusable
from legacyflo_daemon.model import Status
from legacyflo_daemon.outbox.sender import MailSender
from legacyflo_daemon.outbox.smtp import require_aiosmtplib
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report import archive
from legacyflo_daemon.report.finisher import Finisher
from legacyflo_daemon.request import csvfile
from legacyflo_daemon.runtime import files
from legacyflo_daemon.runtime import log as logsetup
from legacyflo_daemon.runtime.aio import wait_any
from legacyflo_daemon.runtime.bulk import in_thread
from legacyflo_daemon.runtime.clock import utcnow
from legacyflo_daemon.runtime.files import ensure_private_dir
from legacyflo_daemon.runtime.lock import ExclusiveLock, lock_paths
from legacyflo_daemon.runtime.systemd import Notifier, watchdog_task
from legacyflo_daemon.spool.directory import Spool
from legacyflo_daemon.state import view
from legacyflo_daemon.state.lifecycle import Lifecycle
from legacyflo_daemon.state.schema import iso
from legacyflo_daemon.state.store import open_store
from legacyflo_daemon.transfer.limits import ByteBudget

if TYPE_CHECKING:  # loaded only with [metrics] listen (prometheus_client: ~30 ms of start-up)
    from legacyflo_daemon.daemon.metrics import Metrics

# ``run --once``: how often it looks whether everything is done (a directory listing and a few
# counters), besides looking at once whenever a request or a file was settled (``settled``):
# the poll is the safety net for what no event announces (a file in incoming/ that became
# stable). Waiting for the poll alone cost ~25 ms per run after its last request, and 50 ms on
# an empty spool (issue 14 measures runs of 1-3 s).
ONCE_POLL = 0.05
SNAPSHOT_SECONDS = 15.0  # <spool>/status.json is rewritten this often (a scan of the requests)
log = structlog.get_logger("legacyflo_daemon.daemon.app")


class Daemon:
    def __init__(self, cfg: Config, *, once: bool = False, notifier: Notifier | None = None):
        self.cfg = cfg
        self.once = once
        self.notifier = notifier or Notifier.from_env()
        self.spool = Spool(cfg.daemon.spool, csvfile.Limits.of(cfg.csv, cfg.passwordless()))
        self.pool = Pool(Limits.from_config(cfg))
        self.budget = ByteBudget(cfg.daemon.byte_budget_mb * 1024 * 1024)
        self.stopping = asyncio.Event()  # stop taking work; the services end
        # Something that may end a `run --once` happened: a request ended, a file was taken,
        # the first status pass is done (``_serve`` looks whether it is idle).
        self.settled = asyncio.Event()
        self.status_passes = 0  # the status loop's passes (heartbeat, status.json)
        self.copy_stop = asyncio.Event()  # copiers: stop after the in-flight batch
        self.gave_up: list[str] = []  # services that crashed too often
        self.supervisor = Supervisor(self.stopping, self._give_up, on_fatal=self._fatal)
        self.fatal: StateUnusable | None = None  # the state store failed: stop, exit 1
        self.started_at = iso(utcnow())
        self.started_monotonic = time.monotonic()
        self._snapshot_at = -SNAPSHOT_SECONDS  # the first status loop writes one at once
        self.metrics: Metrics | None = None
        # This daemon's name among those sharing a state (README "Deployment"); None: alone.
        self.node: str | None = None
        if cfg.state.url is not None:
            # Nodes in containers may share a host name and a pid: the random part keeps
            # their default names apart.
            self.node = cfg.state.node or (
                f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
            )

    # -- entry -------------------------------------------------------------------------------

    async def run(self) -> int:
        locks = self._lock()  # before anything else is touched: recovery assumes it is alone
        try:
            self.spool.ensure()
            warn_at_start(self.cfg, self.spool)
            # A damaged store stops the start, saying what to do, before anything is written.
            self.state = open_store(self.cfg, verify=True)
            try:
                code = await self._run()
            finally:
                self.state.close()
            if self.fatal is not None:
                raise self.fatal  # one line on stderr, exit 1 (cli.main)
            return code
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            for lock in reversed(locks):
                lock.release()

    def _lock(self) -> list[ExclusiveLock]:
        """Take the exclusive locks of the spool and the state store (``runtime.lock``).

        A second daemon on the same spool or state store would count the first one's running
        requests as crashed and run them again beside it: it stops here with
        ``AlreadyRunning`` (one line naming the holder's pid, exit 2) before it reads or writes
        anything but the lock files (and the directories that hold them)."""
        self.spool.ensure_root()
        if self.node is not None:
            # Daemons sharing a state share the spool too: the database arbitrates (leases,
            # the intake lock), not a lock file.
            return []
        state_dir = self.cfg.daemon.state_path.parent
        held: list[ExclusiveLock] = []
        try:
            # A shared database (PostgreSQL) has no lock file: the spool's lock is the one.
            state_file = None if self.cfg.state.url else self.cfg.daemon.state_path
            for path in lock_paths(self.spool.root, state_file):
                if path.parent == state_dir:
                    ensure_private_dir(state_dir)
                held.append(ExclusiveLock.acquire(path))
        except OSError as exc:
            for lock in held:
                lock.release()
            raise SpoolError(
                f"{exc.filename}: cannot take the daemon's lock: {exc.strerror}"
            ) from exc
        except BaseException:
            for lock in held:
                lock.release()
            raise
        return held

    async def _run(self) -> int:
        cfg, smtp = self.cfg, self.cfg.smtp
        self.lifecycle = Lifecycle(self.state, self.node, cfg.state.lease_seconds)
        self.outbox = Outbox(self.spool.outbox)
        if smtp is not None:
            smtp.password()  # a missing password file/variable stops the start, naming the key
            require_aiosmtplib(str(cfg.path or "config"))
        self.sender = MailSender(
            self.outbox,
            smtp,
            interval=smtp.scan_interval if smtp else 60.0,
            backoff_base=smtp.retry_base if smtp else 30.0,
            backoff_max=smtp.retry_max if smtp else 3600.0,
            exclusive=self.state.exclusive if self.node is not None else None,
        )
        self.finisher = Finisher(
            cfg, self.lifecycle, self.outbox, archive.listing_source(cfg), self.sender.kick
        )
        self.scheduler = Scheduler(
            cfg, self.state, self.lifecycle, self.pool, self.budget, self.finisher,
            self.outbox.dir, copy_stop=self.copy_stop, complete_csv=self._complete_csv,
        )  # fmt: skip
        self.scheduler.on_fatal = self._fatal
        self.scheduler.on_settled = self.settled.set
        self.watcher = Watcher(
            cfg, self.spool, self.state, self.outbox, self.finisher, self.stopping,
            self.scheduler.wake.set,
        )  # fmt: skip
        self.watcher.on_settled = self.settled.set
        if cfg.metrics.listen is not None:
            self.metrics = _load_metrics(cfg)(self.node)
            try:
                self.metrics.start(cfg.metrics.listen)
            except OSError as exc:
                raise ConfigError(
                    str(cfg.path or "config"),
                    "metrics.listen",
                    f"cannot listen on {cfg.metrics.listen}: {exc.strerror or exc}",
                ) from None
            self.scheduler.metrics = self.metrics
            log.info("metrics_listening", listen=cfg.metrics.listen)
        if cfg.daemon.intake and not self.once:
            require_watchfiles(cfg)
        self._install_signals()
        await recover(cfg, self.state, self.lifecycle, self.spool, self.outbox, self.finisher,
                      self.watcher)  # fmt: skip
        if cfg.daemon.intake:
            await self.watcher.initial()
        # A WAL that a crash (or a reader that held it at the last stop) left behind may still
        # hold passwords of finished requests: truncate it before serving, or retry when idle.
        if not self.state.purge_freed_pages():
            self.scheduler.purge_later()
        # Everything loaded and built so far lives as long as the process: keep it out of full
        # garbage collections, which would walk it every time (a pause of the event loop that
        # grows with the heap).
        gc.freeze()
        self.notifier.ready()
        log.info("daemon_ready", spool=str(self.spool.root), once=self.once, node=self.node,
                 queued=self.state.unfinished_counts()[Status.QUEUED])  # fmt: skip
        sender_stop = asyncio.Event()
        # The sender is never cancelled: a mail the SMTP server accepted must reach sent/
        # before we exit, or the next start would deliver it a second time.
        sender = asyncio.create_task(self.sender.run(sender_stop), name="mail sender")
        try:
            async with asyncio.TaskGroup() as requests:
                await self._serve(requests)
                # A node of a cluster that lost its database stops copying at once: its leases
                # run out meanwhile, and another node must not find it still appending.
                lost_db = self.fatal is not None and self.node is not None
                await self.scheduler.drain(0.0 if lost_db else cfg.daemon.grace_seconds)
        finally:
            sender_stop.set()
            await sender
            try:
                requeued = self.scheduler.interrupted + self.lifecycle.requeue_all_running()
                self._heartbeat("stopped")
                purged = self.state.purge_freed_pages(wait=True)
            except StateError:
                if self.fatal is None:
                    raise
                # The store already failed: what is still running is re-queued (counted as
                # a crash) at the next start; the operator reads why on stderr.
                requeued, purged = 0, True
            if not purged:
                # A reader held the WAL through the busy timeout; SQLite truncates it when the
                # last connection closes, else the next start does (see above).
                log.warning("state_purge_incomplete", state=self.state.where,
                            reason="a reader holds the state store (status?)")  # fmt: skip
            log.info("daemon_shutdown", requeued=requeued)
        if self.once and smtp is not None:
            await self.sender.send_pending()
        outcomes = self.finisher.outcomes
        log.info("daemon_stopped", outcomes=[s.value for s in outcomes], gave_up=self.gave_up)
        if self.once:
            self._summary(outcomes)
        if self.gave_up:
            return 1
        if self.once:
            ok = all(s is Status.SUCCEEDED for s in outcomes)
            return 0 if ok and not self.watcher.whole_file_rejections else 1
        return 0

    def _summary(self, outcomes: list[Status]) -> None:
        """``run --once``: one line for the administrator (stderr; stdout is the JSON log) and
        the same as a ``run_summary`` event."""
        counts: dict[str, int] = {}
        for status in outcomes:
            counts[status.value] = counts.get(status.value, 0) + 1
        t = self.finisher.totals
        took = round(time.monotonic() - self.started_monotonic)
        log.info("run_summary", accounts=len(outcomes), outcomes=counts, copied=t["copied"],
                 already_present=t["already_present"], failed=t["failed"], bytes=t["bytes"],
                 seconds=took)  # fmt: skip
        by_status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to do"
        print(
            f"legacyflo-daemon: {len(outcomes)} account(s): {by_status}; {t['copied']:,} "
            f"messages copied ({t['bytes'] / 1e6:,.1f} MB), {t['already_present']:,} already "
            f"there, {t['failed']:,} failed; {took // 60}m{took % 60:02d}s",
            file=sys.stderr,
        )

    async def _serve(self, requests: asyncio.TaskGroup) -> None:
        """Run the services until a stop; then end them (never a copy: those are in
        ``requests``)."""
        services: dict[str, Service] = {
            "scheduler": lambda: self.scheduler.run(requests, self.stopping),
            "status": self._status_loop,
            "watchdog": lambda: watchdog_task(self.notifier, lambda: True),
        }
        if self.cfg.daemon.intake:
            services["intake"] = self.watcher.intake_loop
            if not self.once:
                services["watcher"] = self.watcher.watch
        if self.node is not None:
            services["leases"] = self._lease_loop
        tasks = [
            asyncio.create_task(self.supervisor.run(name, service), name=f"service {name}")
            for name, service in services.items()
        ]
        # `run --once` looks whether it is done at every ``settled`` and every ``ONCE_POLL``,
        # never before the status loop's first pass (which sets ``settled``): every service
        # has had its first turn (heartbeat, status.json, the scheduler's first pass), as with
        # the poll alone, even on an empty spool.
        wake = (self.stopping, self.settled) if self.once else (self.stopping,)
        try:
            while not self.stopping.is_set():
                self.settled.clear()
                await wait_any(wake, ONCE_POLL if self.once else 60.0)
                if self.once and self.status_passes and self._idle():
                    log.info("daemon_idle")
                    self.stopping.set()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _idle(self) -> bool:
        return self.scheduler.idle() and not self.watcher.busy and not self.spool.waiting_files()

    async def _complete_csv(self, csv_id: int) -> bool:
        return await self.watcher.complete(csv_id)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("daemon_stopping", running=len(self.scheduler.tasks))
            self.notifier.stopping()
            self.stopping.set()

    def _fatal(self, exc: StateUnusable) -> None:
        """The state store cannot be used (damaged, disk full): stop the same graceful way as
        SIGTERM; ``run`` then raises ``exc`` (one line on stderr, exit 1). Nothing is lost:
        what was not recorded is redone by the next start."""
        if self.fatal is None:
            self.fatal = exc
            log.error("state_unusable", error=str(exc))
        self.request_stop()

    def _give_up(self, service: str) -> None:
        """A service crashed too often: stop gracefully, exit 1 (systemd restarts us)."""
        self.gave_up.append(service)
        self.request_stop()

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
        self.scheduler.wake.set()

    async def _status_loop(self) -> None:
        """Every ``PROGRESS_SECONDS``: systemd's STATUS line and the heartbeat ``status``
        reads to tell whether the daemon is alive."""
        while not self.stopping.is_set():
            counts = self.state.unfinished_counts()
            self.notifier.status(
                f"{counts[Status.RUNNING]} running, {counts[Status.QUEUED]} queued"
            )
            self._heartbeat("running")
            now = asyncio.get_running_loop().time()
            if now - self._snapshot_at >= SNAPSHOT_SECONDS:
                self._snapshot_at = now
                await in_thread(self._write_snapshot)
            self.status_passes += 1
            self.settled.set()  # after the first pass, `run --once` may look whether it is done
            await wait_any((self.stopping,), PROGRESS_SECONDS)

    async def _lease_loop(self) -> None:
        """A shared state, every third of ``lease_seconds``: renew this node's leases (a
        request whose lease is gone is another node's now: ``Scheduler.lose``), take over the
        requests of nodes whose leases ran out (they died), and record this node as alive."""
        interval = self.cfg.state.lease_seconds / 3
        while not self.stopping.is_set():
            running = set(self.scheduler.tasks)
            self.scheduler.lose(self.lifecycle.renew(utcnow(), running))
            taken = await take_over(self.cfg, self.state, self.lifecycle, self.spool,
                                    self.finisher)  # fmt: skip
            if taken:
                log.warning("requests_taken_over", requests=sorted(rid for rid, _ in taken))
                self.scheduler.wake.set()
            self._heartbeat("running")
            await wait_any((self.stopping,), interval)

    def _write_snapshot(self) -> None:
        """``<spool>/status.json``, mode 0640: ``status`` for administrators who may read the
        spool (its group) but not the state store, which holds queued passwords. No secret is
        in it: titles, ids, counts, scrubbed errors."""
        data = view.snapshot(self.state, utcnow())
        try:
            files.atomic_write(
                self.spool.root / view.SNAPSHOT_NAME,
                json.dumps(data, sort_keys=True).encode(),
                0o640,
            )
        except OSError as exc:
            log.warning("status_snapshot_failed", error=exc.strerror or str(exc))

    def _heartbeat(self, state: str) -> None:
        """Record that this daemon is ``state`` (running, stopped) now; ``status`` trusts a
        running heartbeat only while it is fresh (``HEARTBEAT_STALE``). A node of a shared
        state records it under its name too (``status`` lists the nodes)."""
        now = utcnow()
        doc = {
            "state": state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "pidns": _pid_namespace(),
            "started_at": self.started_at,
            "at": iso(now),
            "interval": PROGRESS_SECONDS,
        }
        if self.node is not None:
            interval = min(PROGRESS_SECONDS, self.cfg.state.lease_seconds / 3)
            doc |= {"node": self.node, "interval": interval,
                    "running": len(self.scheduler.tasks)}  # fmt: skip
            self.state.set_node(self.node, doc, int(now.timestamp()))
        self.state.set_heartbeat(doc)


def _load_metrics(cfg: Config) -> type[Metrics]:
    """``daemon.metrics.Metrics``, imported only when ``[metrics] listen`` asks for it: a
    daemon without metrics does not load ``prometheus_client`` (issue 14: start-up time).
    Raises ``ConfigError`` naming the key and the missing package if it is not installed."""

    def load() -> type[Metrics]:
        from legacyflo_daemon.daemon.metrics import Metrics

        return Metrics

    return require_package(
        load, str(cfg.path or "config"), "metrics.listen", "exporting metrics",
        ", or remove [metrics] listen",
    )  # fmt: skip


def _pid_namespace() -> str:
    """This process's pid namespace (``status`` checks a pid only inside the same one)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def warn_at_start(cfg: Config, spool: Spool) -> None:
    """Log what an operator should know about before the daemon serves (docs/contract.md §7.1):
    an ``incoming/`` that others may write (anyone in that group, or anyone at all, can drop
    requests the daemon will run), and every host whose certificates are not verified."""
    try:
        mode = stat.S_IMODE(os.stat(spool.incoming).st_mode)
    except OSError:
        mode = 0
    if mode & 0o022:
        who = "everyone" if mode & 0o002 else "its group"
        log.warning("incoming_writable_by_others", path=str(spool.incoming), mode=f"{mode:04o}",
                    reason=f"{who} can drop requests that this daemon will run")  # fmt: skip
    for name, host in sorted(cfg.hosts.items()):
        sides = [d for d in ("source", "dest") if not host.side(d).tls_verify]
        if sides:
            reason = "certificates of this host are not verified (tls_verify = false)"
            log.warning("tls_verify_disabled", host=name, directions=sides, reason=reason)


def main(cfg: Config, *, once: bool = False) -> int:
    """Run the daemon until SIGTERM (or, with ``once``, until the spool is drained)."""
    return asyncio.run(Daemon(cfg, once=once).run())
