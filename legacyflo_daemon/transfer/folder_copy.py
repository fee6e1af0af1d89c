"""Copy one folder: compare identities, append what is missing, checkpoint after each batch.

Owns the per-folder step of the copier (see ``copier``). The multiset comparison is done on
identities read from both servers at the start of the pass, so a pass that starts after any
interruption copies exactly what is still missing. Counts of earlier passes of the same request
come from the checkpoint (``prior``); messages this pass finds already present that earlier
passes copied are counted as copied, not as already present.

Memory: bodies are fetched in batches bounded by count and by (server-reported) size, and each
batch holds a reservation on the shared ``ByteBudget`` while its bytes are in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import structlog

from legacyflo_daemon.config.schema import ImapConfig
from legacyflo_daemon.imap.session import FetchedMessage, MailboxInfo, MessageMeta, Session
from legacyflo_daemon.model import FolderResult, MessageFailure
from legacyflo_daemon.runtime.aio import both
from legacyflo_daemon.state.store import FolderCheckpoint, StateStore
from legacyflo_daemon.transfer import folders, identity
from legacyflo_daemon.transfer.headers import summarize
from legacyflo_daemon.transfer.limits import ByteBudget
from legacyflo_daemon.transfer.recorder import ListingRecorder

log = structlog.get_logger("legacyflo_daemon.transfer.copier")

_NEVER_COPIED = {"\\recent"}
# RFC 3501 system flags a destination must accept; any other "\\X" (Dovecot: "BAD Invalid
# system flag \\FORWARDED") is dropped rather than getting the message refused.
_SYSTEM_FLAGS = {"\\seen", "\\answered", "\\flagged", "\\draft"}
_Hold = AbstractAsyncContextManager[None, bool | None]
_Fetched = tuple[list[int], dict[int, FetchedMessage], _Hold]
_COUNTERS = ("in_range", "copied", "already_present", "failed", "bytes", "deleted_dropped")


class Interrupted(Exception):
    """The daemon asked the copier to stop; the request stays queued and resumes later."""


@dataclass
class Progress:
    """Live counters of one request, read by the daemon for progress events and status."""

    messages_total: int = 0
    messages_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    folders_done: int = 0


def copy_flags(flags: tuple[str, ...], permanent: frozenset[str] | None) -> tuple[str, ...]:
    """The flags to give the copy: never ``\\Recent`` or ``\\Deleted``; keywords only where the
    destination's PERMANENTFLAGS accept them (``\\*``, or listed by name)."""
    accepts_any = permanent is None or "\\*" in permanent
    allowed = {f.lower() for f in permanent} if permanent is not None else set()
    out = []
    for f in flags:
        low = f.lower()
        if low in _NEVER_COPIED or low == "\\deleted":
            continue
        if f.startswith("\\") and low not in _SYSTEM_FLAGS:
            continue
        if not f.startswith("\\") and not accepts_any and low not in allowed:
            continue
        out.append(f)
    return tuple(out)


@dataclass
class FolderCopy:
    request_id: str
    plan: folders.FolderPlan
    criteria: list[str]
    state: StateStore
    budget: ByteBudget
    config: ImapConfig
    stop: asyncio.Event
    progress: Progress
    on_progress: Callable[[Progress], None]
    prior: FolderCheckpoint | None
    cautious: bool = False  # one synchronized APPEND per message (after an AppendDesync)
    listing: ListingRecorder | None = None
    create: bool = False  # the destination folder does not exist yet: CREATE + SUBSCRIBE it
    _appended: list[tuple[MessageMeta, int]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    _uidvalidity: int = 0

    async def run(self, src: Session, dst: Session) -> FolderResult:
        # Both sides are read at the same time (two connections): a folder costs the round
        # trips of the slower side, not of both.
        (info, metas), (dinfo, dest_metas) = await both(
            self._read_side(src, self.plan.source_name, self.criteria, examine=True),
            self._read_side(dst, self.plan.dest_name, ["ALL"], examine=False, create=self.create),
        )
        self._uidvalidity = info.uidvalidity
        dest_keys = [identity.identity(m.header, m.internaldate) for m in dest_metas]
        by_uid = {m.uid: m for m in metas}
        missing = identity.missing(
            [(m.uid, identity.identity(m.header, m.internaldate)) for m in metas], dest_keys
        )
        prior = dict(self.prior.counts) if self.prior is not None else {}
        self.counts = {k: prior.get(k, 0) for k in _COUNTERS}
        self.counts["in_range"] = len(metas)
        self.counts["failed"] = 0
        present = len(metas) - len(missing)
        self.counts["already_present"] = max(0, present - self.counts["copied"])
        self.state.clear_failures(self.request_id, self.plan.source_display)
        self._checkpoint(done=False)
        self.progress.messages_total += len(missing)
        self.progress.bytes_total += sum(by_uid[u].size for u in missing)
        log.info("folder_started", folder=self.plan.source_display, in_range=len(metas),
                 missing=len(missing), dest=self.plan.dest_display)  # fmt: skip
        sized = [(u, by_uid[u].size) for u in missing]
        batches = identity.batches(sized, self.config.fetch_batch, self.config.fetch_batch_bytes)
        await self._pipeline(src, dst, batches, by_uid, dinfo.permanent_flags)
        self._checkpoint(done=True)
        if self.listing is not None:
            now_there = [(m.internaldate, m.header, m.size) for m in dest_metas]
            now_there += [(m.internaldate, m.header, size) for m, size in self._appended]
            self.listing.record(self.plan.dest_name, self.plan.dest_display, now_there)
        log.info("folder_copied", folder=self.plan.source_display, **self.counts)
        return self._result()

    @staticmethod
    async def _read_side(
        session: Session, name: str, criteria: list[str], *, examine: bool, create: bool = False
    ) -> tuple[MailboxInfo, list[MessageMeta]]:
        """Open ``name`` (EXAMINE: read-only, for the source; ``create``: make and subscribe it
        first) and read its messages' identities."""
        if create:
            await session.create(name)
            await session.subscribe(name)
        info = await (session.examine(name) if examine else session.select(name))
        if not info.exists:
            return info, []
        if criteria == ["ALL"]:  # no date range: no SEARCH round trip needed
            metas = await session.fetch_meta_all(info.exists)
            metas.sort(key=lambda m: m.uid)
            return info, metas
        return info, await session.fetch_meta(await session.uid_search(criteria))

    async def _pipeline(
        self,
        src: Session,
        dst: Session,
        batches: list[list[int]],
        metas: dict[int, MessageMeta],
        permanent: frozenset[str] | None,
    ) -> None:
        """Fetch batch n+1 from the source while batch n is appended to the destination.

        The two servers are on separate connections, so the overlap hides one side's latency
        behind the other's. Each batch holds its share of the byte budget from the moment it
        is fetched until it is stored; at most two batches are in memory per folder copy.
        """
        queue: asyncio.Queue[_Fetched | BaseException | None] = asyncio.Queue(maxsize=1)
        holds: list[_Hold] = []

        async def produce() -> None:
            try:
                for batch in batches:
                    if self.stop.is_set():
                        break
                    hold = self.budget.reserve(sum(metas[u].size for u in batch))
                    await hold.__aenter__()
                    holds.append(hold)
                    fetched = {m.uid: m for m in await src.fetch_bodies(batch)}
                    await queue.put((batch, fetched, hold))
                await queue.put(None)
            except Exception as exc:  # handed to the consumer, which raises it
                await queue.put(exc)

        producer = asyncio.create_task(produce())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                batch, fetched, hold = item
                await self._store(dst, batch, fetched, metas, permanent)
                holds.remove(hold)
                await hold.__aexit__(None, None, None)
                self._checkpoint(done=False)
                self.on_progress(self.progress)
                if self.stop.is_set():  # the in-flight batch is stored; a prefetched one waits
                    raise Interrupted
            if self.stop.is_set():
                raise Interrupted
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            for hold in holds:
                await hold.__aexit__(None, None, None)

    async def _store(
        self,
        dst: Session,
        batch: list[int],
        fetched: dict[int, FetchedMessage],
        metas: dict[int, MessageMeta],
        permanent: frozenset[str] | None,
    ) -> None:
        """Append one fetched batch (one MULTIAPPEND where offered); record what failed."""
        ready: list[FetchedMessage] = []
        for uid in batch:
            msg = fetched.get(uid)
            if msg is None:
                self._fail(metas[uid], "the source server returned no such message")
            elif msg.error is not None or msg.body is None:
                self._fail(metas[uid], msg.error or "the source server returned no body")
            else:
                ready.append(msg)
        items = [(m.body or b"", copy_flags(m.flags, permanent), m.internaldate_raw) for m in ready]
        outcome = (
            await dst.append_many(self.plan.dest_name, items, cautious=self.cautious)
            if items
            else []
        )
        for msg, refused in zip(ready, outcome, strict=True):
            if refused is not None:
                self._fail(metas[msg.uid], f"the destination refused it: {refused}")
                continue
            self.counts["copied"] += 1
            self.counts["bytes"] += len(msg.body or b"")
            self._appended.append((metas[msg.uid], len(msg.body or b"")))
            if any(f.lower() == "\\deleted" for f in msg.flags):
                self.counts["deleted_dropped"] += 1
            self.progress.messages_done += 1
            self.progress.bytes_done += metas[msg.uid].size

    def _fail(self, meta: MessageMeta, reason: str) -> None:
        h = summarize(meta.header)
        self.counts["failed"] += 1
        self.progress.messages_done += 1
        self.state.add_failure(
            self.request_id,
            MessageFailure(
                folder=self.plan.source_display,
                uid=meta.uid,
                date=meta.internaldate.isoformat(),
                subject=h.subject,
                reason=reason,
            ),
        )
        log.warning("message_failed", folder=self.plan.source_display, uid=meta.uid,
                    reason=reason)  # fmt: skip

    def _checkpoint(self, *, done: bool) -> None:
        self.state.save_folder(
            self.request_id,
            FolderCheckpoint(self.plan.source_name, self._uidvalidity, done, dict(self.counts)),
        )

    def _result(self) -> FolderResult:
        return FolderResult(
            source=self.plan.source_display,
            destination=self.plan.dest_display,
            note=self.plan.note,
            **self.counts,
        )
