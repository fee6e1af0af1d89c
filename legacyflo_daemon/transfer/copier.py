"""The copier: one request's mailbox from the source to the destination, exactly once.

Owns the copy algorithm of docs/contract.md §5. For each planned folder it reads the source's
in-range messages' identities (Message-ID/header hash + INTERNALDATE) and the destination
folder's, and appends only the multiset difference. Because the destination itself is the record
of what has been copied, every interruption (cancel, ``kill -9``, a cut connection, an APPEND
that timed out after the server stored it, a changed UIDVALIDITY) is healed by the same step:
reconnect, re-read both sides, copy what is missing. The state store only adds speed (finished
folders are not re-read) and the counts of earlier runs.

Errors: ``AuthenticationFailed`` and ``PermanentError`` end the request at once (a ``failed``
result); ``TransientError`` reconnects after a backoff (the server's hint honoured) until
``imap.retries`` attempts in a row made no progress; ``MessageRejected`` is recorded per message.
``InternalError`` (a bug) is not a result: it propagates out of ``Copier.run`` at once, never
retried, its cause and traceback intact, for the daemon's per-request error boundary to log once
and fail the request with "internal error". A stop request (``stop``) ends the run with
``Interrupted`` after the in-flight batch, and at once during a back-off wait.

Must not: modify the source (EXAMINE and BODY.PEEK only, in ``imap``), log message content,
know about the spool, retry anything but ``TransientError``, or swallow a cancellation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import (
    AppendDesync,
    AuthenticationFailed,
    ConnectionLimited,
    ImapError,
    PermanentError,
    TransientError,
)
from legacyflo_daemon.imap import session as imap_session
from legacyflo_daemon.imap.connection import Connection
from legacyflo_daemon.imap.endpoint import dest_endpoint, source_endpoint
from legacyflo_daemon.imap.session import Session, connect
from legacyflo_daemon.model import FolderResult, JobType, Request, RequestResult, Status
from legacyflo_daemon.request import dates
from legacyflo_daemon.runtime.aio import all_or_first_error, both, wait_any
from legacyflo_daemon.state.store import FolderCheckpoint, StateStore
from legacyflo_daemon.transfer import folders, readback
from legacyflo_daemon.transfer.backoff import Backoff
from legacyflo_daemon.transfer.folder_copy import (
    FolderCopy,
    Interrupted,
    Progress,
    result_from_counts,
)
from legacyflo_daemon.transfer.limits import ByteBudget
from legacyflo_daemon.transfer.recorder import ListingRecorder, request_top, selectable_under

log = structlog.get_logger("legacyflo_daemon.transfer.copier")


@dataclass
class Copier:
    """Copies one request. ``run()`` returns its result; it never raises ImapError.

    It raises ``Interrupted`` when ``stop`` was set, and ``InternalError`` (or, for a bug
    outside the IMAP boundary, the original exception) for a bug: neither is a result.
    """

    request_id: str
    request: Request
    config: Config
    state: StateStore
    budget: ByteBudget
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    on_progress: Callable[[Progress], None] = lambda _p: None
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    progress: Progress = field(default_factory=Progress)
    cautious: bool = False  # set after an AppendDesync: synchronized single APPENDs only
    cancelled: bool = False  # set (before ``stop``) by the cancel command: end with a result
    listing: ListingRecorder | None = None  # where folder passes record the destination
    # The pool's say on extra connection pairs (True: granted) and their return.
    extra_pair: Callable[[], bool] = lambda: False
    release_pair: Callable[[], None] = lambda: None
    # Told the host that refused a connection as one too many (the pool lowers its allowance).
    on_limited: Callable[[str], None] = lambda _host: None
    # Whether this node still holds the request's lease (a cluster): asked before each batch.
    lease_held: Callable[[], bool] = lambda: True
    _results: dict[str, FolderResult] = field(default_factory=dict)
    _plans: list[folders.FolderPlan] = field(default_factory=list)
    _to_create: set[str] = field(default_factory=set)  # mail folders their pass creates
    _parents: list[str] = field(default_factory=list)  # pure parents, created first
    _existing: frozenset[str] = frozenset()  # destination wire names listed at the start
    _opened: set[str] = field(default_factory=set)  # destination folders this attempt took up
    _failed_folders: set[str] = field(default_factory=set)  # refused folders: not retried
    _dest_top: str | None = None  # <root><delim><destfolder>, decoded, once the plan is made
    _skipped: list[tuple[str, str]] = field(default_factory=list)  # not copied by design
    _trust: readback.Trust = field(default_factory=readback.Trust)  # the destination's record
    # Counted right after listing (``Session.count_messages``): source folder -> in-range
    # messages, destination wire name -> messages; None where the server would not say.
    _counts: dict[str, int | None] = field(default_factory=dict)
    _dest_counts: dict[str, int | None] = field(default_factory=dict)

    async def run(self) -> RequestResult:
        started = self.now()
        status, error = Status.SUCCEEDED, None
        try:
            await self._run_with_retries()
        except Interrupted:
            if not self.cancelled:
                raise
            # Stopped at a batch boundary by the cancel command: a result, not a resume.
            status, error = Status.CANCELLED, "cancelled by the administrator"
        except AuthenticationFailed as exc:
            status, error = Status.FAILED, f"authentication failed: {exc}"
        except (PermanentError, TransientError) as exc:
            status, error = Status.FAILED, str(exc)
        failures = tuple(self.state.failures(self.request_id))
        checkpoints = self.state.folder_checkpoints(self.request_id)
        ordered = []
        for plan in self._plans:
            if plan.source_name in self._results:
                ordered.append(self._results[plan.source_name])
            elif plan.selectable and plan.source_name in checkpoints:
                # Not finished in this run (the request failed meanwhile): what its batches
                # stored still counts, so the result equals what the destination holds.
                counts = checkpoints[plan.source_name].counts
                ordered.append(
                    result_from_counts(plan, counts, self._destination(plan)[1], plan.note)
                )
        if status is Status.SUCCEEDED and (failures or any(f.error for f in ordered)):
            status = Status.PARTIAL
        return RequestResult(
            request_id=self.request_id,
            status=status,
            started=started,
            finished=self.now(),
            folders=tuple(ordered),
            failures=failures,
            error=error,
            destination_folder=self._dest_top,
            skipped=tuple(self._skipped),
        )

    async def _run_with_retries(self) -> None:
        cfg = self.config.imap
        backoff = Backoff(cfg.backoff_base, cfg.backoff_max, cfg.retries)
        attempt = 0
        while True:
            before = self.progress.messages_done + self.progress.folders_done
            try:
                await self._attempt()
                return
            except AppendDesync as exc:
                if not self.cautious:  # once: from now on one message per synchronized APPEND
                    self.cautious = True
                    log.warning("append_cautious", error=str(exc))
                    continue
                raise TransientError(str(exc), host=exc.host) from exc
            except TransientError as exc:
                if isinstance(exc, ConnectionLimited):
                    self.on_limited(exc.host)
                if self.progress.messages_done + self.progress.folders_done > before:
                    attempt = 0  # progress was made: this is a new streak of trouble
                if backoff.exhausted(attempt):
                    raise TransientError(
                        f"gave up after {attempt + 1} attempts without progress: {exc}"
                    ) from exc
                delay = backoff.delay(attempt, random.random(), exc.retry_after)
                log.warning("request_retry", attempt=attempt + 1, delay=round(delay, 2),
                            error=str(exc))  # fmt: skip
                self.progress.retries += 1
                self.progress.retry_kind = (
                    "connection_limit"
                    if isinstance(exc, ConnectionLimited)
                    else "throttled"
                    if exc.retry_after is not None
                    else "transient"
                )
                next_at = (self.now() + dt.timedelta(seconds=delay)).strftime("%H:%M:%S")
                self.progress.phase = "retrying"
                self.progress.detail = f"attempt {attempt + 2} at {next_at} UTC after: {exc}"
                self.on_progress(self.progress)
                attempt += 1
                await wait_any((self.stop,), delay)  # a stop ends the wait at once
                if self.stop.is_set():
                    raise Interrupted from exc

    async def _attempt(self) -> None:
        # What is done stays done; this pass adds what it still finds missing.
        self.progress.messages_total = self.progress.messages_done
        self.progress.bytes_total = self.progress.bytes_done
        self.progress.phase, self.progress.detail = "connecting", ""
        early: list[asyncio.Future[tuple[Session, Session]]] = []
        logged_in = asyncio.Event()  # the first pair's logins succeeded
        if not self.state.folder_checkpoints(self.request_id):
            # A first run will most likely copy several folders: the extra connection pairs
            # make their TCP and TLS handshakes beside the first pair's, log in once its logins
            # succeeded (a wrong password is tried once, never four times at once), and are
            # ready when the listing is (a re-run, which may have nothing left to copy, asks
            # for them once it knows).
            for _ in range(self.config.imap.folder_workers - 1):
                if not self.extra_pair():
                    break
                early.append(
                    asyncio.ensure_future(connect_pair(self.request, self.config, logged_in))
                )
        try:
            src, dst = await connect_pair(self.request, self.config)
        except BaseException:
            await self._drop_unused(early)
            raise
        logged_in.set()
        try:
            await self._copy_all(src, dst, early)
        finally:
            await self._drop_unused(early)
            # Every command has had its answer: no need to wait for the one to LOGOUT.
            dst.leave()
            src.leave()

    async def _drop_unused(self, early: list[asyncio.Future[tuple[Session, Session]]]) -> None:
        """Close the early extra pairs no worker took (and give them back to the pool)."""
        for opening in early:
            opening.cancel()
            await asyncio.wait((opening,))
            if not opening.cancelled() and opening.exception() is None:
                extra_src, extra_dst = opening.result()
                await both(extra_dst.logout(), extra_src.logout())
            self.release_pair()
        early.clear()

    async def _copy_all(
        self,
        src: Session,
        dst: Session,
        early: list[asyncio.Future[tuple[Session, Session]]] | None = None,
    ) -> None:
        """Copy every planned folder; with more than one folder left, up to
        ``imap.folder_workers`` connection pairs copy folders side by side (each extra pair
        only if the pool grants it within the per-server and per-login limits). ``early``:
        extra pairs already logging in (granted by the pool); a worker takes each one it
        needs out of the list and the rest are closed before the copy starts."""
        early = [] if early is None else early
        self._plans = await self._plan(src, dst)
        checkpoints = self.state.folder_checkpoints(self.request_id)
        todo: deque[folders.FolderPlan] = deque()
        for plan in self._plans:
            cp = checkpoints.get(plan.source_name)
            if plan.source_name in self._failed_folders:
                continue  # failed alone in an earlier attempt of this run: its result stands
            if plan.selectable and cp is not None and cp.done:
                # Finished earlier: part of the planned total, all of it dealt with.
                in_range = cp.counts.get("in_range", 0)
                self.progress.in_range[plan.source_name] = in_range
                self.progress.handled[plan.source_name] = in_range
                self.progress.present[plan.source_name] = cp.counts.get("already_present", 0)
                if plan.source_name not in self._results:  # finished in an earlier run
                    display = self._destination(plan)[1]
                    self._results[plan.source_name] = result_from_counts(
                        plan, cp.counts, display, plan.note
                    )
            elif plan.selectable:
                todo.append(plan)
        # Largest folders first: the big ones set the request's duration, the small ones fill
        # the gaps of the other connection pairs at the end.
        todo = deque(sorted(todo, key=lambda p: -(self._counts.get(p.source_name) or 0)))
        workers = [self._first_worker(src, dst, todo, checkpoints)]
        for _ in range(min(self.config.imap.folder_workers, len(todo)) - 1):
            if early:
                opening = early.pop(0)
            elif self.extra_pair():
                opening = asyncio.ensure_future(connect_pair(self.request, self.config))
            else:
                break
            workers.append(self._extra_worker(todo, checkpoints, opening))
        # Early pairs beyond what the folders need: closed and given back to the pool now (they
        # hold connection slots other requests may be waiting for).
        await self._drop_unused(early)
        interrupted: list[bool] = []

        async def until_stopped(worker: Awaitable[None]) -> None:
            # A stop lets every pair finish its in-flight batch: an Interrupted worker must
            # not cancel its siblings mid-APPEND (only a real error does).
            try:
                await worker
            except Interrupted:
                interrupted.append(True)

        await all_or_first_error(*(until_stopped(w) for w in workers))
        if interrupted:
            raise Interrupted
        if todo:  # an extra pair gave a folder back after the first pair had run out of work
            await self._worker(src, dst, todo, checkpoints)

    async def _worker(
        self,
        src: Session,
        dst: Session,
        todo: deque[folders.FolderPlan],
        checkpoints: dict[str, FolderCheckpoint],
        current: list[folders.FolderPlan] | None = None,
    ) -> None:
        """Copy folders from ``todo`` until it is empty; ``current`` (if given) holds the
        folders under way, oldest first, for a caller that must put them back after an error.

        Two folders overlap on the pair: once a folder has fetched its last body (the source
        connection is idle while it appends), the next one opens on the source and reads its
        metadata (a new folder: its first bodies too); it opens the destination folder only
        when the previous folder is done with the destination connection (``dest_gate``). Over
        a WAN that hides a round trip or two per folder. An error of either ends both."""
        current = [] if current is None else current
        running: list[asyncio.Task[None]] = []  # at most two, the older one appending
        try:
            while todo and not self.stop.is_set():
                plan = todo.popleft()
                current.append(plan)
                job = self._job(plan, checkpoints, gate=running[-1] if running else None)
                task = asyncio.ensure_future(self._copy_folder(job, plan, current, src, dst))
                running.append(task)
                # The next folder starts once this one no longer needs the source connection
                # and the one before it has ended (a small folder may have fetched everything
                # while it still waits for the destination: never more than two at once); an
                # error of a running folder ends the worker at once.
                source_free = asyncio.ensure_future(job.source_done.wait())
                try:
                    while len(running) > 1 or not (source_free.done() or task.done()):
                        waits = [*running] if source_free.done() else [source_free, *running]
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                        for ended in [t for t in running if t.done()]:
                            running.remove(ended)
                            ended.result()
                finally:
                    source_free.cancel()
                    await asyncio.wait((source_free,))
            while running:
                await asyncio.wait((running[0],))
                running.pop(0).result()
            if self.stop.is_set():
                raise Interrupted
        finally:
            for left in running:
                left.cancel()
            if running:
                await asyncio.wait(running)

    def _job(
        self,
        plan: folders.FolderPlan,
        checkpoints: dict[str, FolderCheckpoint],
        gate: asyncio.Task[None] | None,
    ) -> FolderCopy:
        dest_name, dest_display, create = self._destination(plan)
        # A folder put back by a pair that lost its connection may hold what that pair stored:
        # it is created again (a no-op) but compared, not streamed at once.
        at_once = create and dest_name not in self._opened
        self._opened.add(dest_name)
        return FolderCopy(
            expected=self._counts.get(plan.source_name),
            dest_expected=0 if create else self._dest_counts.get(dest_name),
            request_id=self.request_id,
            plan=plan,
            criteria=dates.imap_criteria(self.request.dates),
            state=self.state,
            budget=self.budget,
            config=self.config.imap,
            stop=self.stop,
            progress=self.progress,
            on_progress=self.on_progress,
            prior=checkpoints.get(plan.source_name),
            cautious=self.cautious,
            listing=self.listing,
            create=create,
            dest_account=f"{self.request.dest.userid}@{self.request.dest.server}",
            existing=self._existing,
            trust=self._trust,
            dest_name=dest_name,
            dest_display=dest_display,
            lease_held=self.lease_held,
            dest_gate=gate,
            stream_at_once=at_once,
        )

    async def _copy_folder(
        self,
        job: FolderCopy,
        plan: folders.FolderPlan,
        current: list[folders.FolderPlan],
        src: Session,
        dst: Session,
    ) -> None:
        """One folder pass and its result; a folder refused by a server fails alone."""
        try:
            self._results[plan.source_name] = await job.run(src, dst)
        except PermanentError as exc:
            # The destination (or the source) refused this folder: CREATE, SELECT,
            # EXAMINE or a whole APPEND answered NO. It fails alone; the others go on.
            log.warning("folder_failed", folder=plan.source_display, error=str(exc))
            self._results[plan.source_name] = job.failed_result(str(exc))
            self._failed_folders.add(plan.source_name)
        current.remove(plan)
        self.progress.folders_done += 1

    def _destination(self, plan: folders.FolderPlan) -> tuple[str, str, bool]:
        """Where ``plan`` is copied to (wire name, display name) and whether to create it: its
        planned name, or the safe mapping when an earlier run had to use that."""
        if plan.dest_name not in self._to_create:
            return plan.dest_name, plan.dest_display, False
        safe_name, safe_display = folders.safe_mapping(plan)
        if safe_name != plan.dest_name and safe_name in self._existing:
            return safe_name, safe_display, False
        return plan.dest_name, plan.dest_display, True

    async def _first_worker(
        self,
        src: Session,
        dst: Session,
        todo: deque[folders.FolderPlan],
        checkpoints: dict[str, FolderCheckpoint],
    ) -> None:
        """Copy folders (the pure parents were created while the source was counted)."""
        await self._worker(src, dst, todo, checkpoints)

    async def _extra_worker(
        self,
        todo: deque[folders.FolderPlan],
        checkpoints: dict[str, FolderCheckpoint],
        opening: asyncio.Future[tuple[Session, Session]],
    ) -> None:
        """A second (third, ...) connection pair (``opening``: its login, under way) taking
        folders from the same queue.

        Its trouble is its own: when it cannot connect (a connection limit, the network) or
        loses its connection midway, it puts its folder back, gives its pair back and ends;
        the other pairs' batches go on. Only a bug or a stop propagates."""
        try:
            try:
                src, dst = await opening
            except (TransientError, PermanentError, AuthenticationFailed) as exc:
                self._extra_failed(exc, "connect")
                return
            current: list[folders.FolderPlan] = []
            finished = False
            try:
                await self._worker(src, dst, todo, checkpoints, current)
                finished = True
            except TransientError as exc:
                # Its passes stopped midway: other pairs re-read and finish them, in order.
                fresh = self.state.folder_checkpoints(self.request_id) if current else {}
                for plan in reversed(current):
                    todo.appendleft(plan)
                    if plan.source_name in fresh:
                        checkpoints[plan.source_name] = fresh[plan.source_name]
                self._extra_failed(exc, "copy")
            finally:
                if finished:
                    # Every command has had its answer: LOGOUT is written, not waited for (the
                    # last pair to finish would hold the request's result back a round trip).
                    dst.leave()
                    src.leave()
                else:
                    await both(dst.logout(), src.logout())
        finally:
            if not opening.done():  # cancelled while logging in: nothing may stay open
                opening.cancel()
                await asyncio.wait((opening,))
                if not opening.cancelled() and opening.exception() is None:
                    extra_src, extra_dst = opening.result()
                    extra_src.abort()
                    extra_dst.abort()
            self.release_pair()

    def _extra_failed(self, exc: ImapError, during: str) -> None:
        if isinstance(exc, ConnectionLimited):
            self.on_limited(exc.host)
        log.warning("extra_connection_failed", during=during, error=str(exc),
                    limited=isinstance(exc, ConnectionLimited))  # fmt: skip

    async def _plan(self, src: Session, dst: Session) -> list[folders.FolderPlan]:
        """List both sides and map every folder; note which destination folders to create."""
        self.progress.phase, self.progress.detail = "listing", "folders on both servers"
        (src_ns, entries), (dst_ns, listed) = await both(
            src.namespaces_and_folders(), dst.namespaces_and_folders()
        )
        src_delim, dst_prefix, dst_delim = src_ns.delimiter, dst_ns.prefix, dst_ns.delimiter
        personal, foreign = folders.personal_only(entries, src_ns)
        if foreign:
            # Other users' and shared folders are never copied into this person's archive.
            log.info("folders_not_personal", count=len(foreign), folders=foreign[:20])
        source = [entry for entry, _ in personal]
        prefixes = {entry.name: prefix for entry, prefix in personal}
        exclusions = (
            self.config.imap.exclude_folders
            if self.request.jobtype is JobType.EXCHANGEIMAP
            else None
        )
        self._skipped = [
            (path, "not a mail folder of Exchange (imap.exclude_folders)")
            for path in folders.excluded_folders(
                source, source_delim=src_delim, exclusions=exclusions
            )
        ] + [
            ("/".join(folders.source_path(name, src_delim)),
             "another user's or a shared folder: only the account's own mail is archived")
            for name in foreign
        ]  # fmt: skip
        root = folders.root_path(self.config.imap.dest_root, dst_prefix, dst_delim or ".")
        self._dest_top = (dst_delim or ".").join((*root, self.request.dest_folder))
        plans = folders.plan_folders(
            source,
            source_delim=src_delim,
            dest_delim=dst_delim or ".",
            dest_prefix_path=root,
            dest_folder=self.request.dest_folder,
            exclusions=exclusions,
            prefixes=prefixes,
        )
        existing = {e.name for e in listed}
        self._existing = frozenset(existing)
        self._opened = set()
        # Mail folders are created by their own folder pass (beside the source read, on
        # whichever connection pair copies them); only pure parents are created here.
        mail_folders = {p.dest_name for p in plans if p.selectable}
        self._to_create = set(folders.folders_to_create(plans, existing)) & mail_folders
        self._parents = [
            n for n in folders.folders_to_create(plans, existing) if n not in mail_folders
        ]
        await self._count(src, dst, plans, existing)
        if self.listing is not None:
            delim = dst_delim or "."
            top = request_top(root, self.request.dest_folder, delim)
            self.listing.tree = selectable_under(
                ((e.name, e.flags) for e in listed), top, delim
            ) | {p.dest_name for p in plans if p.selectable}
        return plans

    async def _count(
        self, src: Session, dst: Session, plans: list[folders.FolderPlan], existing: set[str]
    ) -> None:
        """Count, before anything is copied, the in-range messages of every source folder and
        the messages of every destination folder that exists already: one pipelined round
        trip on each side, at the same time; the destination's pure parent folders are
        created meanwhile (one more). The totals let ``status`` show a total that does not
        grow, and let every folder pass open and read its folder in one round trip."""

        async def dest_side() -> dict[str, int | None]:
            for name, error in (await dst.create_folders(self._parents)).items():
                # A refused parent name: its mail folders are created under their safe
                # mapping (or fail alone), so this is not the end of the request.
                log.warning("parent_folder_refused", folder=name, error=error)
            return await dst.count_messages(ours, ["ALL"])

        self.progress.detail = "counting the messages of every folder"
        selectable = [p for p in plans if p.selectable]
        ours = [n for n in dict.fromkeys(self._destination(p)[0] for p in selectable)
                if n in existing]  # fmt: skip
        self._counts, self._dest_counts = await both(
            src.count_messages([p.source_name for p in selectable],
                               dates.imap_criteria(self.request.dates)),
            dest_side(),
        )  # fmt: skip
        for name, count in self._counts.items():
            if count is not None and name not in self.progress.handled:
                self.progress.in_range[name] = count
        log.info("folders_counted", folders=len(selectable),
                 messages=sum(n or 0 for n in self._counts.values()),
                 uncounted=sum(1 for n in self._counts.values() if n is None))  # fmt: skip


async def connect_pair(
    request: Request, config: Config, ready: asyncio.Event | None = None
) -> tuple[Session, Session]:
    """Log in to the source, then to the destination.

    The destination's TCP and TLS handshake runs while the source logs in, but its login is
    sent only once the source accepted ours: a refused source login ends the request without
    a login attempt on the destination account (nothing for a lockout policy to count).
    When the source fails, the destination's handshake is cancelled and whatever it opened or
    raised is dropped; the source's error (or our own cancellation) is what propagates.
    With ``ready``, both handshakes run at once and no login is sent before it is set (an
    extra pair waits for the first pair's logins; cancel it if they fail).
    """
    dst_open = asyncio.ensure_future(
        imap_session.open_unauthenticated(dest_endpoint(request, config))
    )
    try:
        if ready is None:
            src = await connect(source_endpoint(request, config))
        else:
            src_open = asyncio.ensure_future(
                imap_session.open_unauthenticated(source_endpoint(request, config))
            )
            try:
                await ready.wait()
                src = await imap_session.authenticate(await src_open)
            except BaseException:
                await _drop_opening(src_open)
                raise
    except BaseException:
        await _drop_opening(dst_open)
        raise
    try:
        return src, await imap_session.authenticate(await dst_open)
    except BaseException:
        await src.logout()
        raise


async def _drop_opening(opening: asyncio.Future[Connection]) -> None:
    """Cancel an ``open_unauthenticated`` under way and close what it opened, if anything.

    Waits for the task to end without raising its outcome; a cancellation of the caller
    during the wait propagates (it replaces the error being handled)."""
    opening.cancel()
    await asyncio.wait((opening,))
    if not opening.cancelled() and opening.exception() is None:
        imap_session.close_unauthenticated(opening.result())


__all__ = ["Copier", "Interrupted", "Progress"]
