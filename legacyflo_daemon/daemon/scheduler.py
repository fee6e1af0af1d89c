"""The scheduler: which queued request starts when, and each request's run, behind a boundary.

Owns: the running requests' tasks (created in the requests scope the daemon gives it), their
live progress, and the per-request error boundary. A pass looks at the first ``CANDIDATES``
queued requests of each CSV (an index range, however long the queue), orders them fairly across
CSVs and starts what the pool's limits allow.

One request's run: register its passwords with the log scrubber, copy (``transfer.copier``),
finish (``report.finisher``), retire its CSV if it was the last one. What ends it:

- the copier's result (succeeded, partial, failed): finished as such;
- ``Interrupted`` (the daemon is stopping): re-queued, resumed at the next start;
- any other exception is a bug (an ``InternalError`` from the IMAP boundary, or anything
  else): logged once with its traceback as ``request_internal_error`` with an ``error_id``; the
  request fails at once, never retried, with "internal error … see the log event
  request_internal_error, error_id …" as its reason. No other request is touched.

When no request runs, the state store's WAL is truncated (``purge_freed_pages``), so erased
passwords do not outlive their requests there.

Several daemons on one shared state (``[state] url``): a request starts only once this node
claimed it (``Lifecycle.claim``: another node may have been quicker, then it is skipped). A
request whose lease this node lost (``lose``: its heartbeat could not renew it in time, and
another node took it over) is stopped at its next batch boundary and left alone: no requeue,
no result, no mail; the node that now holds it finishes it.

Fencing: the copier asks ``_lease_held`` before each APPEND batch. Within the local lease
deadline (``Lifecycle.fresh``: half the lease after the last renewal, on a clock that counts
while the process is stopped) the answer costs nothing; past it (the node was frozen, or its
heartbeat is late) the lease is renewed in the database at once: still this node's, the batch
goes on; another node's now, the request is lost here (as by ``lose``) and the batch is not
stored. So a node woken from a freeze longer than its lease does not append the batch it held
(which the node that took its request over appends too). What this cannot fence: a freeze
that lands between the check and the batch's bytes leaving for the server (see README
"Deployment").

Must not: parse CSVs or talk IMAP itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.daemon.pool import Pool, fair_order, slot_for
from legacyflo_daemon.errors import InternalError, StateUnusable
from legacyflo_daemon.model import Request, Status
from legacyflo_daemon.report.finisher import Finisher
from legacyflo_daemon.runtime.aio import wait_any
from legacyflo_daemon.runtime.clock import utcnow
from legacyflo_daemon.runtime.secrets import forget_secret, register_secret
from legacyflo_daemon.state.lifecycle import Lifecycle
from legacyflo_daemon.state.store import StateStore
from legacyflo_daemon.transfer.copier import Copier, Interrupted, Progress
from legacyflo_daemon.transfer.limits import ByteBudget
from legacyflo_daemon.transfer.recorder import ListingRecorder

if TYPE_CHECKING:  # the daemon loads it only with [metrics] listen (daemon.app)
    from legacyflo_daemon.daemon.metrics import Metrics

log = structlog.get_logger("legacyflo_daemon.daemon.scheduler")

CANDIDATES = 200  # queued requests of each CSV looked at per scheduling pass
PROGRESS_SECONDS = 5.0
METRICS_SECONDS = 1.0  # gauges (requests by state, queue, connections) refreshed this often
WORK_PREFIX = ".work-"  # per-request scratch directories in outbox/ (listing data)
ADMISSION = "admission"  # the cluster lock held while a node admits requests or extends one
ALLOWANCE_SECONDS = 3600.0  # an allowance learnt from a refusal holds this long in a cluster


class Scheduler:
    def __init__(
        self,
        cfg: Config,
        state: StateStore,
        lifecycle: Lifecycle,
        pool: Pool,
        budget: ByteBudget,
        finisher: Finisher,
        outbox_dir: Path,
        *,
        copy_stop: asyncio.Event,
        complete_csv: Callable[[int], Awaitable[bool]],
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.lifecycle = lifecycle
        self.pool = pool
        self.budget = budget
        self.finisher = finisher
        self.outbox_dir = outbox_dir
        self.copy_stop = copy_stop
        self.complete_csv = complete_csv
        self.wake = asyncio.Event()  # something changed: a request ended, work arrived
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.copiers: dict[str, Copier] = {}  # running requests' copiers (cancel, drain)
        self.metrics: Metrics | None = None  # set by the daemon when [metrics] is on
        self._counted: dict[str, tuple[int, int, int]] = {}  # rid -> messages, bytes, retries
        self._refreshed = 0.0
        self.progress: dict[str, Progress] = {}
        self._purge_pending = False
        # The state store cannot be used (damaged, disk full): the daemon stops. Set by the app.
        self.on_fatal: Callable[[StateUnusable], None] = lambda exc: None
        self.interrupted = 0  # requests re-queued because the daemon is stopping
        # Called when a request has ended (its CSV retired if it was the last) or a queued one
        # was cancelled: `run --once` looks at once whether everything is done (daemon.app).
        self.on_settled: Callable[[], None] = lambda: None
        self.lost: set[str] = set()  # running here, but leased to another node now
        # Per-request scratch directories carry the node's name on a shared spool, so that a
        # node's recovery removes its own only.
        node = lifecycle.node
        self.work_prefix = WORK_PREFIX if node is None else f"{WORK_PREFIX}{node}-"

    # -- the service ------------------------------------------------------------------------

    async def run(self, requests: asyncio.TaskGroup, stop: asyncio.Event) -> None:
        """Service: start what can start, whenever something changed (and every second)."""
        while not stop.is_set():
            self.wake.clear()
            await self.apply_commands()
            self.start_ready(requests)
            self.refresh_metrics()
            self.purge_if_idle()
            await wait_any((self.wake, stop), 1.0)

    async def apply_commands(self) -> None:
        """The ``cancel`` commands left in the state: a running request stops at its next
        batch boundary and finishes ``cancelled`` with what it copied; a queued one finishes
        ``cancelled`` at once; a finished one is left as it is."""
        for command_id, kind, rid in self.state.pending_commands():
            if kind == "cancel":
                copier = self.copiers.get(rid)
                if copier is not None:
                    log.info("request_cancel_requested", request_id=rid)
                    copier.cancelled = True
                    copier.stop.set()
                elif self.state.status_of(rid) is Status.RUNNING and self.lifecycle.node:
                    continue  # running on another node: that node applies it
                elif self.state.status_of(rid) is Status.QUEUED:
                    row = self.state.request_row(rid)
                    csv_name = self.state.csv(row.csv_id).name
                    await self.finisher.cancelled(rid, csv_name, self.state.load_request(rid))
                    log.info("request_finished", request_id=rid, status="cancelled")
                    await self.complete_csv(row.csv_id)
                    self.on_settled()
            self.state.command_done(command_id, utcnow())

    def refresh_metrics(self) -> None:
        """The metrics' gauges, at most every ``METRICS_SECONDS`` (a scan of the requests)."""
        now = asyncio.get_running_loop().time()
        if self.metrics is None or now - self._refreshed < METRICS_SECONDS:
            return
        self._refreshed = now
        counts = self.state.status_counts()
        self.metrics.refresh(counts, counts[Status.QUEUED.value], self.pool.connections())

    def start_ready(self, requests: asyncio.TaskGroup) -> None:
        # A cluster admits requests one node at a time, each counting what the others hold
        # (``_sync_pool``): two nodes deciding at once could each take the last connection.
        with self.state.exclusive(ADMISSION) as mine:
            if mine:
                self._sync_pool()
                self._start_ready(requests)

    def _sync_pool(self) -> None:
        """A cluster: the pool learns what the other nodes hold now and every allowance any
        node learnt from refusals (for ``ALLOWANCE_SECONDS``)."""
        node = self.lifecycle.node
        if node is None:
            return
        self.pool.elsewhere(self.state.connections_elsewhere(node))
        since = int(utcnow().timestamp() - ALLOWANCE_SECONDS)
        self.pool.learn(self.state.allowances(since))

    def _start_ready(self, requests: asyncio.TaskGroup) -> None:
        queued = self.state.queued(per_csv=CANDIDATES)
        candidates = []
        for rid in fair_order([(r.id, r.csv_id) for r in queued]):
            if rid not in self.tasks:
                candidates.append((rid, slot_for(self.state.load_request(rid))))
        for rid in self.pool.pick(candidates):
            if not self.lifecycle.claim(rid, utcnow()):
                self.pool.release(rid)  # another node claimed it first
                continue
            self.tasks[rid] = requests.create_task(self._run(rid), name=f"request {rid}")

    def lose(self, held: set[str]) -> None:
        """The heartbeat renewed the leases of ``held``: every request running here that is
        not among them now belongs to another node; stop it without a trace (see the module
        docstring)."""
        for rid in set(self.tasks) - held - self.lost:
            self._lost(rid)

    def _lost(self, rid: str) -> None:
        log.error("request_lease_lost", request_id=rid,
                  reason="another daemon took it over; it stops here")  # fmt: skip
        self.lost.add(rid)
        copier = self.copiers.get(rid)
        if copier is not None:
            copier.stop.set()

    def _lease_held(self, rid: str) -> bool:
        """Whether ``rid`` may still be written for (its next APPEND batch, its progress): see
        "Fencing" in the module docstring. A database error here is ``StateUnusable``, which
        the request's boundary turns into the daemon's stop."""
        if rid in self.lost:
            return False
        if self.lifecycle.fresh(rid):
            return True
        if rid in self.lifecycle.renew(utcnow(), {rid}):
            log.info("request_lease_renewed_late", request_id=rid)
            return True
        self._lost(rid)
        return False

    def idle(self) -> bool:
        """Nothing runs here and nothing is queued; in a shared state, nothing runs on another
        node either (``--once`` waits to take over a dead node's requests)."""
        if self.tasks or self.state.queued(per_csv=1):
            return False
        return self.lifecycle.node is None or not self.state.unfinished_counts()[Status.RUNNING]

    def purge_if_idle(self) -> None:
        """Truncate the WAL once no request runs; while a reader holds it (busy), try again at
        every tick until it succeeds."""
        if self._purge_pending and not self.tasks:
            self._purge_pending = not self.state.purge_freed_pages()

    def purge_later(self) -> None:
        """A purge was refused (a reader held the WAL): retry at the next idle ticks."""
        self._purge_pending = True

    async def drain(self, grace: float) -> None:
        """Let every running request finish its in-flight batch (``copy_stop`` is set), up to
        ``grace`` seconds; cancel what is left and wait for it."""
        self.copy_stop.set()
        for copier in self.copiers.values():
            copier.stop.set()
        pending = list(self.tasks.values())
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    # -- one request ------------------------------------------------------------------------

    async def _run(self, rid: str) -> None:
        """One request, start to end. Never raises: this is the per-request error boundary
        (cancellation, the daemon's last resort at stop, is the exception)."""
        structlog.contextvars.bind_contextvars(request_id=rid)
        csv_id: int | None = None
        csv_name = ""
        req: Request | None = None
        try:
            row = self.state.request_row(rid)
            csv_id = row.csv_id
            csv_name = self.state.csv(csv_id).name
            req = self.state.load_request(rid)
            for account in (req.source, req.dest):
                register_secret(account.password, user=account.userid, owner=rid)
            await self._copy_and_finish(rid, csv_name, req)
        except StateUnusable as exc:  # not this request's fault: the daemon stops, exit 1
            self.on_fatal(exc)
        except Interrupted:
            if rid in self.lost:
                log.info("request_left_to_another_node")
            else:
                log.info("request_interrupted")
                self.lifecycle.requeue(rid)
                self.interrupted += 1
        except Exception as exc:  # a bug: fail this request once, touch no other
            await self._fail_internal(rid, csv_name, req, exc)
        finally:
            if req is not None:
                for account in (req.source, req.dest):
                    forget_secret(account.password, user=account.userid, owner=rid)
            self.lifecycle.forget(rid)
            try:
                if rid not in self.lost:  # a lost request's phase is its new node's to show
                    self.state.clear_phase(rid)
            except StateUnusable as exc:  # the store went away meanwhile: the daemon stops
                self.on_fatal(exc)
            self.copiers.pop(rid, None)
            self._counted.pop(rid, None)
            self.pool.release(rid)
            self.tasks.pop(rid, None)
            self.progress.pop(rid, None)
            self.lost.discard(rid)
            self._purge_pending = True
            self.wake.set()
        structlog.contextvars.unbind_contextvars("request_id")  # CSV events are not the request's
        if csv_id is not None:
            try:
                await self.complete_csv(csv_id)
            except Exception:
                log.exception("csv_complete_failed", csv_id=csv_id)
        self.on_settled()

    async def _copy_and_finish(self, rid: str, csv_name: str, req: Request) -> None:
        log.info("request_started", title=req.title, source=req.source.address,
                 source_server=req.source.server, dest=req.dest.address,
                 dest_server=req.dest.server, folder=req.dest_folder)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix=self.work_prefix, dir=self.outbox_dir) as work:
            recorder = ListingRecorder(Path(work))
            # Its own stop: set by a cancel of this request, or by the daemon's stop (drain).
            stop = asyncio.Event()
            if self.copy_stop.is_set():
                stop.set()
            copier = Copier(rid, req, self.cfg, self.state, self.budget, stop=stop)
            self.copiers[rid] = copier
            copier.listing = recorder
            copier.extra_pair = lambda: self._extend(rid)
            copier.release_pair = lambda: self._shrink(rid)
            copier.on_limited = lambda host: self._limited(rid, host)
            copier.lease_held = lambda: self._lease_held(rid)
            shown: list[tuple[str, str]] = []
            copier.on_progress = lambda p: self._phase_changed(rid, p, shown)
            self.progress[rid] = copier.progress
            self._save_progress(rid, copier.progress)  # "starting": status shows it at once
            ticker = asyncio.create_task(self._tick(rid, copier.progress))
            try:
                result = await copier.run()
            finally:
                await _cancel_and_wait(ticker)
            self._save_progress(rid, copier.progress)
            if rid in self.lost:  # its result and mail are the new holder's to write
                raise Interrupted("lease lost")
            doc = await self.finisher.copied(rid, csv_name, req, result, recorder)
        log.info("request_finished", status=result.status.value, totals=doc.get("totals"),
                 failures=len(result.failures), error=result.error)  # fmt: skip

    async def _fail_internal(
        self, rid: str, csv_name: str, req: Request | None, exc: Exception
    ) -> None:
        error_id = secrets.token_hex(4)
        cause = exc.__cause__ if isinstance(exc, InternalError) and exc.__cause__ else exc
        log.error("request_internal_error", error_id=error_id, exc_info=exc)
        reason = (
            f"internal error ({type(cause).__name__}); not retried: see the daemon log, "
            f"event request_internal_error with error_id {error_id}"
        )
        try:
            await self.finisher.failed(rid, csv_name, req, reason)
            log.info("request_finished", status="failed", error=reason)
        except Exception:
            # The result could not be written: the request stays running and is re-run at the
            # next start (its outbox files are written again then).
            log.exception("request_finish_failed")

    def _extend(self, rid: str) -> bool:
        """One more connection pair for ``rid`` if every cap (of the cluster) still holds."""
        with self.state.exclusive(ADMISSION) as mine:
            if not mine:
                return False  # another node is deciding; the copier asks again later
            self._sync_pool()
            if not self.pool.try_extend(rid):
                return False
            if self.lifecycle.node is not None:
                self.state.set_pairs(rid, self.pool.pairs(rid))
            return True

    def _limited(self, rid: str, host: str) -> None:
        self._sync_pool()
        now = int(utcnow().timestamp())
        for lowered in self.pool.limited(rid, host):
            log.warning("connection_allowance_lowered", key=lowered.key, limit=lowered.limit,
                        host=host)  # fmt: skip
            if self.lifecycle.node is not None:
                self.state.learn_allowance(lowered.key, lowered.limit, now)

    def _shrink(self, rid: str) -> None:
        self.pool.shrink(rid)
        if self.lifecycle.node is not None:
            self.state.set_pairs(rid, self.pool.pairs(rid))
        self.wake.set()  # the freed connections may let a queued request start

    def _phase_changed(self, rid: str, p: Progress, shown: list[tuple[str, str]]) -> None:
        """After each batch or retry: a new phase or folder is written at once (``status``
        must not show "connecting" for the seconds until the next tick)."""
        if shown != [(p.phase, p.detail)]:
            shown[:] = [(p.phase, p.detail)]
            self._save_progress(rid, p)

    def _save_progress(self, rid: str, p: Progress) -> None:
        if rid in self.lost:  # another node's now: its progress is that node's to write
            return
        if self.metrics is not None:
            messages, nbytes, retries = self._counted.get(rid, (0, 0, 0))
            self.metrics.copied(p.messages_done - messages, p.bytes_done - nbytes)
            for _ in range(p.retries - retries):
                self.metrics.retried(p.retry_kind)
            self._counted[rid] = (p.messages_done, p.bytes_done, p.retries)
        now = utcnow()
        done, total, present = p.planned()  # in-range messages: a total that does not grow
        self.state.set_progress(rid, (done, total), (p.bytes_done, p.bytes_total), now,
                                present=present)  # fmt: skip
        self.state.set_phase(rid, p.phase, p.detail, now)

    async def _tick(self, rid: str, p: Progress) -> None:
        """Every ``PROGRESS_SECONDS``: save the request's progress and log it."""
        start = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            elapsed = asyncio.get_running_loop().time() - start
            rate = p.bytes_done / elapsed if elapsed > 0 else 0.0
            left = max(0, p.bytes_total - p.bytes_done)
            if not self._lease_held(rid):  # woken from a freeze: the request is not ours
                continue
            self._save_progress(rid, p)
            log.info("request_progress", messages_done=p.messages_done,
                     messages_total=p.messages_total, bytes_done=p.bytes_done,
                     bytes_total=p.bytes_total, rate_bytes_per_s=round(rate),
                     eta_seconds=round(left / rate) if rate > 0 else None)  # fmt: skip


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel a helper task and wait for its end, without swallowing our own cancellation."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError
