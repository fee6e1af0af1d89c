"""Copy one folder: compare identities, append what is missing, checkpoint after each batch.

Owns the per-folder step of the copier (see ``copier``). The multiset comparison is done on
identities read from both servers at the start of the pass, so a pass that starts after any
interruption copies exactly what is still missing. When the destination folder turns out to
hold nothing (the first pass of a folder), everything is missing: the copy then starts while
the source's metadata is still being read (``_Stream``), which the metadata read waits for. A
folder the pass creates starts so at once, before its destination folder is open (which may wait
for the previous folder on the same connection pair, ``dest_gate``); nothing is appended before
it is open and found empty (found filled by someone else: ``TransientError``, and the next
attempt compares).
Counts of earlier passes of the same request come from the checkpoint (``prior``); messages
this pass finds already present that earlier passes copied are counted as copied, not as
already present.

Memory: bodies are fetched in batches bounded by count and by (server-reported) size, and each
batch holds a reservation on the shared ``ByteBudget`` while its bytes are in memory. Of the
metadata, a pass into an empty folder holds a few thousand messages at a time; any other holds
what one side has read ahead of the other, and then the missing messages until copied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace

import structlog

from legacyflo_daemon.config.schema import ImapConfig
from legacyflo_daemon.errors import FolderRefused, TransientError
from legacyflo_daemon.imap.session import (
    OVERSIZE_FACTOR,
    FetchedMessage,
    MailboxInfo,
    MessageMeta,
    MetaSink,
    Session,
)
from legacyflo_daemon.model import FolderResult, MessageFailure
from legacyflo_daemon.runtime.aio import both, settled
from legacyflo_daemon.state.store import FolderCheckpoint, StateStore
from legacyflo_daemon.transfer import folders, identity, readback
from legacyflo_daemon.transfer.headers import header_fields, summarize
from legacyflo_daemon.transfer.limits import ByteBudget
from legacyflo_daemon.transfer.recorder import ListingFile, ListingRecorder, entry_line_of_fields

log = structlog.get_logger("legacyflo_daemon.transfer.copier")

_NEVER_COPIED = {"\\recent"}
# RFC 3501 system flags a destination must accept; any other "\\X" (Dovecot: "BAD Invalid
# system flag \\FORWARDED") is dropped rather than getting the message refused.
_SYSTEM_FLAGS = {"\\seen", "\\answered", "\\flagged", "\\draft"}
_Hold = AbstractAsyncContextManager[None, bool | None]
_Fetched = tuple[list[int], dict[int, FetchedMessage], _Hold]
# Appended bytes between two read-backs (and at the end of every folder): one round trip per
# 64 MB instead of one per batch (measured: +26-33 % at 25 ms each way when read per batch).
READ_BACK_BYTES = 64 * 1024 * 1024
_COUNTERS = (
    "in_range",
    "copied",
    "already_present",
    "failed",
    "bytes",
    "deleted_dropped",
    "altered",
)


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
    # What the request is doing, for ``status``: connecting, listing, copying, retrying.
    phase: str = "starting"
    detail: str = ""
    retries: int = 0  # retries after transient trouble in this run
    retry_kind: str = ""  # of the last one: connection_limit, throttled, transient
    # The request's planned total (issue 12), per source folder: its in-range messages
    # (counted for every folder right after listing, before the first APPEND; corrected by
    # what the folder's pass reads), how many of them are dealt with (already present,
    # copied, failed) and how many were already present. ``planned()`` sums them.
    in_range: dict[str, int] = field(default_factory=dict)
    handled: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)

    def planned(self) -> tuple[int, int, int]:
        """(in-range messages dealt with, in-range messages in all, already present): the
        total is known once the folders are counted and stays as it is while the copy runs
        (unless the source itself changes, or a server would not count a folder)."""
        return (
            sum(self.handled.values()),
            sum(self.in_range.values()),
            sum(self.present.values()),
        )

    def handle(self, folder: str, n: int = 1) -> None:
        self.handled[folder] = self.handled.get(folder, 0) + n


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
    # ... and no pass of this attempt has touched it: everything is missing, the bodies are
    # fetched from the start (see ``run``).
    stream_at_once: bool = False
    dest_account: str = ""  # "user@server" of the destination (altered copies are kept per it)
    existing: frozenset[str] = frozenset()  # destination wire names listed before the copy
    # Counted before the copy (``Session.count_messages``), None when not known: the source
    # folder's in-range messages, the destination folder's messages. They let the folder be
    # opened and its first metadata read in one round trip; a wrong count costs a round trip.
    expected: int | None = None
    dest_expected: int | None = None
    # This pass's listing of the destination folder, written as the pass goes: the messages
    # read at the start, then each appended one once it is known to be stored (``_settle``).
    _listing: ListingFile | None = None
    counts: dict[str, int] = field(default_factory=dict)
    _uidvalidity: int = 0
    # Appended, not read back yet: (what was sent, its source meta, \Deleted dropped).
    _unverified: list[tuple[readback.Appended, MessageMeta, bool]] = field(default_factory=list)
    _unverified_bytes: int = 0
    trust: readback.Trust = field(default_factory=readback.Trust)  # shared per request
    _next_uid: int = 1  # the destination folder's UIDNEXT: where the next batch is read back
    dest_name: str = ""  # where this folder is copied to (the plan's, or its safe mapping)
    dest_display: str = ""
    _note: str = ""
    # Whether this node still holds the request's lease (several daemons, one state): checked
    # before each APPEND batch; False stops the pass there, nothing stored (issue 15, fencing).
    lease_held: Callable[[], bool] = lambda: True
    # Awaited before the destination folder is opened: the previous folder of this connection
    # pair is done with the destination connection (its last APPEND, its read-back, which
    # reads the folder it has selected). Its error, if any, is this pass's too. None: no wait.
    dest_gate: asyncio.Future[None] | None = None
    # Set once this pass no longer uses the source connection (every body fetched, or nothing
    # to fetch): the next folder may open on it while this one appends its last batch.
    source_done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.dest_name = self.dest_name or self.plan.dest_name
        self.dest_display = self.dest_display or self.plan.dest_display
        self._note = self.plan.note

    async def run(self, src: Session, dst: Session) -> FolderResult:
        # Both sides are read at the same time (two connections): a folder costs the round
        # trips of the slower side, not of both. Each metadata batch is compared as it arrives
        # (``identity.Matcher``) and the destination's listing lines are written as its
        # batches are read, so no side's metadata is kept for the whole folder: of a source
        # message only what may be needed to copy it, until the destination proves it there.
        matcher: identity.Matcher[_Source] = identity.Matcher()
        alias_keys = self._alias_source_keys()
        aliased: list[tuple[MessageMeta, str]] = []  # source messages an altered copy may be
        reasons: dict[str, list[str]] = {}  # per source key: why its altered copies differ
        listing = self._listing = self.listing.start() if self.listing is not None else None
        pending: dict[str, list[tuple[str, str]]] | None = None  # altered copies not seen yet
        top = 0  # the highest destination UID read

        stream: _Stream | None = None  # the copy runs while the source is read (see below)
        source_read = False
        # A folder this pass creates holds nothing: every source message is missing, so the
        # bodies are fetched from the start, before the destination folder is even open (it
        # may wait for the previous folder's last APPEND, ``dest_gate``); nothing is appended
        # before it is open and found empty.
        early = self.create and self.stream_at_once
        opened: asyncio.Future[frozenset[str] | None] = asyncio.get_running_loop().create_future()
        if early:
            stream = _Stream()

        async def on_source(batch: list[MessageMeta]) -> None:
            items: list[_Source] = []
            for m in batch:
                key = identity.identity(m.header, m.internaldate)
                if key in alias_keys:
                    aliased.append((m, key))
                items.append(_Source(m.uid, (), m.internaldate, "", m.size, m.header, key))
            if stream is not None:
                stream.count += len(items)
                await stream.put(items)  # waits while the copy is behind: memory stays bounded
                return
            for item in items:
                matcher.add_source(item.key, item)

        async def read_source() -> MailboxInfo:
            nonlocal source_read
            info, _ = await src.open_folder(
                self.plan.source_name, examine=True, criteria=self.criteria,
                expected=self.expected, each=on_source,
            )  # fmt: skip
            source_read = True
            if stream is not None:
                await stream.put(None)
            return info

        async def dest_side() -> MailboxInfo:
            # The destination folder holds nothing (just created, or empty): every source
            # message is missing, so the copy starts now, while the source is still being read,
            # instead of after its last metadata batch: the metadata of a large folder is not
            # held whole, and reading it overlaps copying. (With anything in the destination,
            # what is missing is known only once both sides are read.)
            nonlocal stream
            if self.dest_gate is not None:
                await settled(self.dest_gate)
                if self.stop.is_set():
                    # Stopped while the previous folder finished: this one was only read, and
                    # nothing new is started on the destination.
                    raise Interrupted
            dinfo, _ = await self._open_dest(dst, on_dest)
            if early:
                if top or dinfo.exists:
                    # Created by someone else in between: what is missing is not known, and
                    # nothing was appended yet. The next attempt lists it and compares.
                    raise TransientError(
                        f"the destination folder {self.dest_display!r} was not empty when "
                        "created; comparing both sides in the next attempt"
                    )
                self._start_pass(in_range=None, missing=None)
                self._next_uid = dinfo.uidnext or 1
                opened.set_result(dinfo.permanent_flags)
                return dinfo
            if top or dinfo.exists or source_read:
                return dinfo
            stream = _Stream()
            first = sorted((item for _, item in matcher.missing()), key=lambda m: m.uid)
            stream.flushed = matcher.source
            matcher.clear()
            self._start_pass(in_range=None, missing=None)
            self._next_uid = dinfo.uidnext or 1
            await stream.put(first)
            by_uid: dict[int, _Source] = {}
            opened.set_result(dinfo.permanent_flags)
            await self._pipeline(src, dst, stream.batches(self, by_uid), by_uid, opened)
            return dinfo

        async def copy_early() -> None:
            assert stream is not None
            by_uid: dict[int, _Source] = {}
            await self._pipeline(src, dst, stream.batches(self, by_uid), by_uid, opened)

        def on_dest(batch: list[MessageMeta]) -> None:
            nonlocal pending, top
            display = self.dest_display
            if pending is None:  # read now: the name is final once the folder is open
                found = self.state.altered_copies(self.dest_account, self.dest_name)
                pending = {k: list(v) for k, v in found.items()}
            lines: list[bytes] = []
            for m in batch:
                # One parse of the header for the identity and the listing line (~4 us).
                fields = header_fields(m.header)
                key = identity.identity_of_fields(fields, m.internaldate)
                if listing is not None:
                    lines.append(entry_line_of_fields(display, m.internaldate, fields, m.size))
                queue = pending.get(key)
                if queue:
                    # An altered copy stands for the source message it was made from; several
                    # copies with one stored key stand for the recorded source keys in turn.
                    key, why = queue.pop(0)
                    reasons.setdefault(key, []).append(why)
                matcher.add_dest(key)
            if batch:
                top = max(top, batch[-1].uid)
            if listing is not None:
                listing.add_lines(lines, display)

        if early:
            sides = both(both(read_source(), dest_side()), copy_early())
            (info, dinfo), _ = await sides
        else:
            info, dinfo = await both(read_source(), dest_side())
        self._uidvalidity = info.uidvalidity
        if stream is not None:
            in_range = stream.flushed + stream.count
            self.counts["in_range"] = in_range
            self.progress.in_range[self.plan.source_name] = in_range
            return self._finish(listing)
        self._next_uid = max(dinfo.uidnext or 1, top + 1)
        by_uid = {m.uid: m for _, m in matcher.missing()}
        in_range, spare = matcher.source, matcher.left()
        matcher.clear()  # its source messages are in by_uid now, those present are let go
        missing = sorted(by_uid)
        adopted: list[tuple[MessageMeta, str]] = []
        if missing and self.config.read_back:
            adopted = self._adopt_munged_copies(missing, spare, by_uid)
            gone = {m.uid for m, _ in adopted}
            missing = [u for u in missing if u not in gone]
        present = in_range - len(missing)
        self._start_pass(in_range=in_range, missing=len(missing))
        if aliased or adopted:  # rare: no set of every missing UID otherwise
            self._report_altered_copies(aliased, set(missing), reasons, adopted)
            self._checkpoint(done=False)
        name = self.plan.source_name
        self.progress.handled[name] = present
        self.progress.present[name] = self.counts["already_present"]
        self.progress.messages_total += len(missing)
        self.progress.bytes_total += sum(by_uid[u].size for u in missing)
        sized = ((u, by_uid[u].size) for u in missing)  # not a list: 200,000 pairs are 13 MB
        batches = identity.batches(sized, self.config.fetch_batch, self.config.fetch_batch_bytes)
        opened.set_result(dinfo.permanent_flags)
        await self._pipeline(src, dst, batches, by_uid, opened)
        return self._finish(listing)

    def _start_pass(self, *, in_range: int | None, missing: int | None) -> None:
        """The pass's counters (this pass's on top of the earlier passes' ``prior`` ones),
        failures of earlier passes forgotten, the first checkpoint, ``folder_started``.
        ``in_range``/``missing`` None: not known yet (the copy starts while the source is
        read; the counted total stands for them until the end)."""
        prior = dict(self.prior.counts) if self.prior is not None else {}
        self.counts = {k: prior.get(k, 0) for k in _COUNTERS}
        self.counts["in_range"] = in_range or 0
        self.counts["failed"] = 0
        self.counts["altered"] = 0
        present = 0 if in_range is None or missing is None else in_range - missing
        self.counts["already_present"] = max(0, present - self.counts["copied"])
        self.state.clear_failures(self.request_id, self.plan.source_display)
        self._checkpoint(done=False)
        if in_range is not None:
            self.progress.in_range[self.plan.source_name] = in_range
        self.progress.phase, self.progress.detail = "copying", self.plan.source_display
        counted = self.expected
        log.info("folder_started", folder=self.plan.source_display,
                 in_range=counted if in_range is None else in_range,
                 missing=counted if missing is None else missing,
                 dest=self.dest_display)  # fmt: skip

    def _finish(self, listing: ListingFile | None) -> FolderResult:
        self._checkpoint(done=True)
        if listing is not None:
            listing.finish(self.dest_name)
        log.info("folder_copied", folder=self.plan.source_display, **self.counts)
        return self._result()

    def _alias_source_keys(self) -> frozenset[str]:
        """The source keys altered copies recorded for the destination folder stand for (also
        for its safe mapping when the folder is still to be created: the name may change):
        the only present source messages whose metadata is kept, to report them as altered."""
        names = [self.dest_name]
        if self.create:
            names.append(folders.safe_mapping(self.plan)[0])
        return frozenset(
            source_key
            for dest_name in names
            for copies in self.state.altered_copies(self.dest_account, dest_name).values()
            for source_key, _ in copies
        )

    def _adopt_munged_copies(
        self, missing: list[int], spare: Counter[str], by_uid: dict[int, _Source]
    ) -> list[tuple[MessageMeta, str]]:
        """Copies appended but never read back (the daemon died between two read-backs) whose
        8-bit header bytes the destination turned into ``X`` (Cyrus munge8bit): a destination
        message no source message matches (``spare``: the destination keys no source message
        took), whose identity is exactly that of a missing source message with its 8-bit bytes
        replaced, is that message's copy. It is remembered and reported like any altered copy
        instead of being appended a second time. Returns the adopted (source message, why)."""
        if not spare:
            return []
        out: list[tuple[MessageMeta, str]] = []
        for uid in missing:
            meta = by_uid[uid]
            if meta.header.isascii():
                continue
            munged = identity.identity(_munge8bit(meta.header), meta.internaldate)
            if spare[munged] <= 0:
                continue
            spare[munged] -= 1
            source_key = meta.key
            why = (
                "altered by the destination: found after an interruption, its raw 8-bit "
                "header bytes replaced with 'X' (Cyrus IMAP's munge8bit setting)"
            )
            self.state.add_altered_copy(self.dest_account, self.dest_name, munged, source_key, why)
            out.append((meta, why))
        return out

    def _report_altered_copies(
        self,
        aliased: list[tuple[MessageMeta, str]],
        missing: set[int],
        reasons: dict[str, list[str]],
        adopted: list[tuple[MessageMeta, str]],
    ) -> None:
        """Record, as altered, the source messages present only as altered copies (stored so
        by an earlier pass or request, or ``adopted`` now): they are not appended again, and
        still reported. ``aliased``: the source messages (by UID) of keys altered copies stand
        for; ``reasons``: per key, why each of its altered copies the destination holds
        differs."""
        for meta, key in aliased:
            if meta.uid in missing or not reasons.get(key):
                continue
            why = reasons[key].pop(0)
            self.counts["altered"] += 1
            self._record(meta, f"stored earlier, {why}", kind="altered")
        for meta, why in adopted:
            self.counts["altered"] += 1
            self._record(meta, f"stored earlier, {why}", kind="altered")

    async def _open_dest(
        self, dst: Session, each: MetaSink
    ) -> tuple[MailboxInfo, list[MessageMeta]]:
        """Create the destination folder if needed and read it (its metadata batches handed to
        ``each``, see ``Session.open_folder``). A name the destination refuses
        is created once more under its safe mapping (``folders.safe_mapping``), which a later
        pass finds among the existing names and uses directly."""
        if self.create:
            try:
                # CREATE, SUBSCRIBE and SELECT in one round trip; a new folder is empty.
                return await dst.open_folder(
                    self.dest_name, examine=False, criteria=["ALL"], expected=0, create=True,
                    each=each,
                )  # fmt: skip
            except FolderRefused as exc:
                safe_name, safe_display = folders.safe_mapping(self.plan)
                if safe_name == self.dest_name:
                    raise
                log.warning("folder_name_refused", folder=self.plan.source_display,
                            dest=self.dest_display, safe=safe_display, error=str(exc))  # fmt: skip
                refused = self.dest_display
                self.dest_name, self.dest_display = safe_name, safe_display
                self._add_note(
                    f"the destination refused the name {refused!r} ({exc}); "
                    f"copied to {safe_display!r} instead"
                )
                if safe_name not in self.existing:
                    await dst.create(safe_name)
                await dst.subscribe(self.dest_name)
        elif self.dest_name != self.plan.dest_name:
            self._add_note(
                f"the destination refused the name {self.plan.dest_display!r} in an earlier "
                f"run; copied to {self.dest_display!r}"
            )
        return await dst.open_folder(
            self.dest_name, examine=False, criteria=["ALL"], expected=self.dest_expected, each=each
        )

    def _add_note(self, text: str) -> None:
        self._note = f"{self._note}; {text}" if self._note else text

    async def _pipeline(
        self,
        src: Session,
        dst: Session,
        batches: _Batches,
        metas: dict[int, _Source],
        opened: asyncio.Future[frozenset[str] | None],
    ) -> None:
        """Fetch batch n+1 from the source while batch n is appended to the destination.

        The two servers are on separate connections, so the overlap hides one side's latency
        behind the other's. Each batch holds its share of the byte budget from the moment it
        is fetched until it is stored; at most two batches are in memory per folder copy.
        ``opened``: the destination folder's permanent flags, once it is open; nothing is
        appended before. ``source_done`` is set when the last batch is fetched.
        """
        queue: asyncio.Queue[_Fetched | BaseException | None] = asyncio.Queue(maxsize=1)
        holds: list[_Hold] = []

        async def produce() -> None:
            try:
                async for batch in _each(batches):
                    if self.stop.is_set():
                        break
                    reserved = sum(metas[u].size for u in batch)
                    hold = self.budget.reserve(reserved)
                    await hold.__aenter__()
                    holds.append(hold)
                    floor = self.config.max_message_mb * 1024 * 1024
                    limits = {u: max(metas[u].size * OVERSIZE_FACTOR, floor) for u in batch}
                    bodies = await src.fetch_bodies(
                        batch, limits=limits, default_limit=max(limits.values())
                    )
                    fetched = {m.uid: m for m in bodies}
                    received = sum(len(m.body) for m in bodies if m.body is not None)
                    if received > reserved:
                        # The server's sizes were estimates: account for what is really held
                        # (after giving our share back, so a batch above the whole budget is
                        # admitted alone instead of waiting for itself).
                        holds.remove(hold)
                        await hold.__aexit__(None, None, None)
                        hold = self.budget.reserve(received)
                        await hold.__aenter__()
                        holds.append(hold)
                    await queue.put((batch, fetched, hold))
                self.source_done.set()
                await queue.put(None)
            except Exception as exc:  # handed to the consumer, which raises it
                await queue.put(exc)

        producer = asyncio.create_task(produce())
        try:
            permanent = await opened
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                batch, fetched, hold = item
                await self._store(dst, batch, fetched, metas, permanent)
                holds.remove(hold)
                await hold.__aexit__(None, None, None)
                if self.stop.is_set():
                    await self._read_back(dst)  # what is stored is judged before we stop
                self._checkpoint(done=False)
                self.on_progress(self.progress)
                if self.stop.is_set():  # the in-flight batch is stored; a prefetched one waits
                    raise Interrupted
            await self._read_back(dst)
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
        metas: dict[int, _Source],
        permanent: frozenset[str] | None,
    ) -> None:
        """Append one fetched batch (one MULTIAPPEND where offered); record what failed.
        Raises ``Interrupted`` (nothing stored, no checkpoint) when the lease is not held."""
        if not self.lease_held():  # another node runs this request now: it appends this batch
            raise Interrupted("lease lost")
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
            await dst.append_many(self.dest_name, items, cautious=self.cautious) if items else []
        )
        accepted: list[FetchedMessage] = []
        settled: list[tuple[MessageMeta, int]] = []  # stored, no read-back to wait for
        for msg, refused in zip(ready, outcome, strict=True):
            if refused is not None:
                self._fail(metas[msg.uid], f"the destination refused it: {refused}")
            else:
                accepted.append(msg)
        for msg in accepted:
            size = len(msg.body or b"")
            meta = metas[msg.uid]
            deleted = any(f.lower() == "\\deleted" for f in msg.flags)
            # Counted as stored at once; a read-back that finds otherwise corrects it.
            self.counts["copied"] += 1
            self.counts["bytes"] += size
            self.counts["deleted_dropped"] += int(deleted)
            self.progress.messages_done += 1
            self.progress.handle(self.plan.source_name)
            self.progress.bytes_done += meta.size
            if self.config.read_back:
                sent = readback.Appended(
                    uid=msg.uid,
                    key=meta.key,
                    size=size,
                    header=bytes(meta.header),
                    header_block=readback.eight_bit_header(msg.body or b""),
                )
                self._unverified.append((sent, meta, deleted))
                self._unverified_bytes += size
            else:
                settled.append((meta, size))
        self._settle(settled)
        for uid in batch:  # what is still needed of a message is in _unverified now
            metas.pop(uid, None)
        if self._unverified_bytes >= READ_BACK_BYTES:
            await self._read_back(dst)

    async def _read_back(self, dst: Session) -> None:
        """Read what the destination stored since the last read-back and compare it with what
        was sent: an altered copy is counted and reported as such and its identity remembered
        (no later pass appends it again); a message the server accepted but does not hold is a
        failure. Done every ``READ_BACK_BYTES`` appended, at the end of the folder and before a
        stop: one round trip per read-back, not per batch."""
        pending, self._unverified, self._unverified_bytes = self._unverified, [], 0
        if not pending:
            return
        if self.trust.skip(sum(1 for sent, _, _ in pending if sent.header_block is not None)):
            # This destination has proven it stores such mail exactly (readback.Trust).
            self._settle([(meta, sent.size) for sent, meta, _ in pending])
            return
        sizes = await dst.fetch_sizes_from(self._next_uid)
        if len(sizes) < len(pending):
            # Some servers (Courier) show what was appended to the selected mailbox only
            # after a NOOP; one more look before anything is judged missing.
            await dst.noop()
            sizes = await dst.fetch_sizes_from(self._next_uid)
        if sizes:
            self._next_uid = sizes[-1][0] + 1
        by_uid = {sent.uid: (meta, deleted) for sent, meta, deleted in pending}
        if len(sizes) == len(pending):
            # Appended one after the other, numbered in that order: the i-th new UID is the
            # i-th message sent. Only a copy whose size differs, or whose header has raw
            # 8-bit bytes (rewritten without a size change by Cyrus), is read more closely.
            suspects = {
                uid: sent
                for (sent, _meta, _deleted), (uid, size) in zip(pending, sizes, strict=True)
                if size != sent.size or sent.header_block is not None
            }
            looked = await dst.fetch_stored(sorted(suspects)) if suspects else []
            pairs: list[readback.Pair] = [
                (suspects[m.uid], _stored(m)) for m in looked if m.uid in suspects
            ]
            seen = {m.uid for m in looked}
            pairs += [(sent, None) for uid, sent in suspects.items() if uid not in seen]
            changes = readback.judge(pairs)
        else:
            # Not one new message per message sent (another client appended too, or the
            # server dropped some): match what is there by identity instead.
            looked = await dst.fetch_stored([uid for uid, _ in sizes]) if sizes else []
            sent_all = [sent for sent, _, _ in pending]
            changes = readback.compare(sent_all, [_stored(m) for m in looked])
        self.trust.learn([sent for sent, _, _ in pending], changes)
        lost = {c.appended.uid for c in changes if c.stored is None}
        self._settle([(meta, sent.size) for sent, meta, _ in pending if sent.uid not in lost])
        for change in changes:
            meta, deleted = by_uid[change.appended.uid]
            log.warning("message_altered", folder=self.plan.source_display,
                        uid=change.appended.uid, difference=change.difference,
                        cause=change.cause)  # fmt: skip
            if change.stored is None:  # not there after all: a failure, copied by a re-run
                self.counts["copied"] -= 1
                self.counts["bytes"] -= change.appended.size
                self.counts["deleted_dropped"] -= int(deleted)
                self.counts["failed"] += 1
                self._record(meta, readback.reason(change), kind="failed")
                continue
            self.state.add_altered_copy(
                self.dest_account,
                self.dest_name,
                change.stored.key,
                change.appended.key,
                readback.reason(change),
            )
            self.counts["altered"] += 1
            self._record(meta, readback.reason(change), kind="altered")

    def _settle(self, stored: list[tuple[MessageMeta, int]]) -> None:
        """Appended messages now known to be in the destination folder (read back, or not to
        be read back), with the size sent: their lines go into the pass's listing."""
        if self._listing is not None and stored:
            self._listing.add(self.dest_display, ((m.internaldate, m.header, n) for m, n in stored))

    def _fail(self, meta: MessageMeta, reason: str) -> None:
        self.counts["failed"] += 1
        self.progress.messages_done += 1
        self.progress.handle(self.plan.source_name)
        self._record(meta, reason, kind="failed")
        log.warning("message_failed", folder=self.plan.source_display, uid=meta.uid,
                    reason=reason)  # fmt: skip

    def _record(self, meta: MessageMeta, reason: str, *, kind: str) -> None:
        h = summarize(meta.header)
        self.state.add_failure(
            self.request_id,
            MessageFailure(
                folder=self.plan.source_display,
                uid=meta.uid,
                date=meta.internaldate.isoformat(),
                subject=h.subject,
                reason=reason,
                kind=kind,
            ),
        )

    def _checkpoint(self, *, done: bool) -> None:
        self.state.save_folder(
            self.request_id,
            FolderCheckpoint(self.plan.source_name, self._uidvalidity, done, dict(self.counts)),
        )

    def _result(self) -> FolderResult:
        return self._result_with(self.counts)

    def _result_with(self, counts: dict[str, int]) -> FolderResult:
        return result_from_counts(self.plan, counts, self.dest_display, self._note)

    def failed_result(self, error: str) -> FolderResult:
        """The result of this folder when it could not be copied (``error``: why, with the
        server's words); counts are what earlier batches and passes stored."""
        prior = dict(self.prior.counts) if self.prior is not None else {}
        counts = self.counts or {k: prior.get(k, 0) for k in _COUNTERS}
        return replace(self._result_with(counts), error=error)


_Batches = Iterable[list[int]] | AsyncIterator[list[int]]


async def _each(batches: _Batches) -> AsyncIterator[list[int]]:
    if isinstance(batches, AsyncIterator):
        async for batch in batches:
            yield batch
    else:
        for batch in batches:
            yield batch


class _Stream:
    """Source messages found missing while the source folder is still being read (its
    destination folder is empty, see ``FolderCopy.run``): chunks of them in (``put``, None
    ends), body-FETCH batches out (``batches``). At most ``DEPTH`` chunks wait: the metadata
    read waits for the copy, so what is held does not grow with the folder."""

    DEPTH = 2

    def __init__(self) -> None:
        self._queue: asyncio.Queue[list[_Source] | None] = asyncio.Queue(maxsize=self.DEPTH)
        self.flushed = 0  # source messages read before the stream started
        self.count = 0  # source messages read since (every one of them missing)

    async def put(self, items: list[_Source] | None) -> None:
        await self._queue.put(items)

    async def batches(
        self, copy: FolderCopy, by_uid: dict[int, _Source]
    ) -> AsyncIterator[list[int]]:
        """Batches as ``identity.batches`` makes them, of the messages put, in order; each
        message is in ``by_uid`` (and in the copy's progress totals) once its batch is out."""
        count, size = copy.config.fetch_batch, copy.config.fetch_batch_bytes
        carry: list[int] = []  # the last, maybe partial, batch: it may grow with the next chunk
        while (items := await self._queue.get()) is not None:
            for item in items:
                by_uid[item.uid] = item
            copy.progress.messages_total += len(items)
            copy.progress.bytes_total += sum(item.size for item in items)
            carry += [item.uid for item in items]
            ready = identity.batches(((u, by_uid[u].size) for u in carry), count, size)
            carry = ready.pop() if ready else []
            for batch in ready:
                yield batch
        for batch in identity.batches(((u, by_uid[u].size) for u in carry), count, size):
            yield batch


@dataclass(slots=True)
class _Source(MessageMeta):
    """A source message that may have to be copied, as kept until the destination proves it
    there: with its identity key (no map of UID to key beside it), without the INTERNALDATE
    text and the flags (``internaldate_raw`` empty, ``flags`` ()), which the body FETCH
    brings again: ~75 bytes a message less than the ``MessageMeta`` read."""

    key: str = ""


def _munge8bit(header: bytes) -> bytes:
    """``header`` as Cyrus's munge8bit stores it: every byte above 0x7F replaced with ``X``."""
    return bytes(c if c < 0x80 else 0x58 for c in header)


def _stored(meta: MessageMeta) -> readback.Stored:
    """A read-back message (its ``header`` the whole stored header block)."""
    return readback.Stored(
        meta.uid, identity.identity(meta.header, meta.internaldate), meta.size, meta.header
    )


def result_from_counts(
    plan: folders.FolderPlan, counts: dict[str, int], destination: str, note: str
) -> FolderResult:
    """A folder's result from its counters (a checkpoint's or a pass's)."""
    return FolderResult(
        source=plan.source_display,
        destination=destination,
        in_range=counts.get("in_range", 0),
        copied=counts.get("copied", 0),
        already_present=counts.get("already_present", 0),
        failed=counts.get("failed", 0),
        bytes=counts.get("bytes", 0),
        deleted_dropped=counts.get("deleted_dropped", 0),
        altered=counts.get("altered", 0),
        note=note,
    )
