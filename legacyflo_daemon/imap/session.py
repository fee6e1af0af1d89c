"""The IMAP boundary: every IMAP operation of the daemon, with aioimaplib's failures translated.

Owns: ``connect()`` and ``Session``, the only way the rest of the daemon talks IMAP. Every
foreign exception and every NO/BAD/BYE leaves here as one of ``errors``:
``AuthenticationFailed`` (never retry), ``TransientError`` (retry later, ``retry_after`` from
"Suggested Backoff Time"), ``MessageRejected`` (one message; the request goes on),
``PermanentError`` (the request cannot go on), ``InternalError`` (a bug, e.g. in the parsing of
a reply; chained to the original exception, never retried). Classification of tagged replies
is ``responses.classify_response``, of exceptions ``endpoint.translate``; every reply is parsed
under ``_parsing``, where a ``WireError`` (unreadable reply) kills the session and is a
``TransientError`` and anything else is an ``InternalError``.

Must not: log (no password, body or header ever reaches a log from here), modify the source
(``examine`` is read-only and fetches use ``BODY.PEEK``), or decide about folders/identities.

Names: callers pass WIRE names (modified UTF-7, as LIST returns them); the boundary only quotes
them (quoted string, or a literal for 8-bit). Batches: one FETCH asks for at most
``BODY_BATCH`` (bodies) or ``META_BATCH`` (metadata) UIDs, and at most ~8,000 characters of
UID set (Exchange's MaxCommandSize); larger requests are split here.

Round trips: the per-folder steps (``namespaces_and_folders``, ``create_folders``,
``count_messages``, ``open_folder``) pipeline their commands (``Connection.run_pipelined``):
one round trip each, whatever the number of commands. Only commands that need no continuation
are pipelined; a folder name that must be sent as a literal takes the one-by-one path.

Dead sessions: after a timeout, a lost connection, a protocol surprise or an unreadable reply
the session is dead and every later call raises ``TransientError`` at once; reconnect. A
``NO``/``BAD`` reply does not kill a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Self, TypeVar

from legacyflo_daemon.errors import (
    AppendDesync,
    FolderRefused,
    ImapError,
    MessageRejected,
    PermanentError,
)
from legacyflo_daemon.imap.connection import Connection, Kind, Reply, Step
from legacyflo_daemon.imap.endpoint import Endpoint, TlsMode, chain, make_ssl_context, translate
from legacyflo_daemon.imap.opening import login, open_connection, start
from legacyflo_daemon.imap.syntax import responses
from legacyflo_daemon.imap.syntax.parse import (
    SEQUENCE_KEY,
    FetchedMessage,
    ListEntry,
    MailboxInfo,
    MessageMeta,
    Namespaces,
    appenduid,
    fetch_items,
    message_from,
    messages_of,
    metas_of,
    parse_list,
    parse_mailbox,
    parse_namespaces,
    parse_search,
    uid_size_from,
    uid_sizes_of,
)
from legacyflo_daemon.imap.syntax.uidset import MAX_SET_LEN, expand_uid_set, uid_batches
from legacyflo_daemon.imap.syntax.wire import (
    Literal,
    Value,
    WireError,
    astring,
    date_time_arg,
    flag_list,
    search_args,
)

# A body may be this many times the size the server announced (RFC822.SIZE is an estimate on
# Exchange) before it counts as a server sending more than it said; see fetch_bodies.
OVERSIZE_FACTOR = 4
BODY_BATCH = 500  # UIDs per body FETCH (the caller also bounds a batch's bytes)
# Metadata FETCHes are made of units of META_BATCH UIDs (responses are parsed in linear time
# here): the first FETCH, sent with EXAMINE/SELECT, is one unit (a copy into an empty folder
# starts as soon as it is read); each later one joins up to META_MERGE units while the batch
# just read says their header fields stay near META_BATCH_BYTES (a To: of a few hundred
# recipients is kilobytes: then one unit, as before). Every FETCH costs fixed work on both
# sides (the command, the server's set-up of its answer, the hand-over to the copier); with
# 4,000 instead of 1,000 a delta pass over 200,000 small messages took ~12 % less CPU and
# wall time (dev harness, 2026-12-06).
META_BATCH = 1000
META_MERGE = 4
META_BATCH_BYTES = 4 * 1024 * 1024
_META_ITEM_BYTES = 100  # what a metadata answer carries beside its header fields, about
# Read-back of stored copies: whole headers (kilobytes each with long Received chains).
STORED_BATCH = 1000
HEADER_FIELDS = "MESSAGE-ID DATE FROM TO SUBJECT"  # what transfer.identity reads
META_ITEMS = f"(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})])"
BODY_ITEMS = "(UID FLAGS INTERNALDATE BODY.PEEK[])"
# Read-back of what was appended: the whole header (identity fields and any rewritten byte).
STORED_ITEMS = "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])"
AppendItem = tuple[bytes | bytearray | memoryview, Iterable[str], str | None]
NONSYNC_MAX = 256 * 1024  # largest APPEND sent without waiting for "+" (with LITERAL+)
UPLOAD_RATE = 16 * 1024  # bytes/s an APPEND is allowed at worst, for its overall ceiling
T = TypeVar("T")
# Receives each batch of metadata as it is read (ascending UID within the batch), instead of
# one list of the whole folder: a caller that keeps only what it needs of each message holds
# a folder of 200,000 in a fraction of the memory (see ``open_folder``). An awaitable it
# returns is awaited before the batch after the next is fetched (a consumer that falls behind
# holds the read back).
MetaSink = Callable[[list[MessageMeta]], Awaitable[None] | None]
PIPELINE_MAX = 200  # commands sent in one pipeline (a long folder list goes in several)
_STATUS_MESSAGES = re.compile(rb"\bMESSAGES ([0-9]+)", re.IGNORECASE)
_ESEARCH_COUNT = re.compile(rb"^ESEARCH\b.*\bCOUNT ([0-9]+)", re.IGNORECASE)
CONVERT_SLICE = 200  # FETCH items parsed between two turns of the event loop
LOGOUT_TIMEOUT = 5.0  # seconds a polite goodbye may take before we just hang up

__all__ = [
    "BODY_BATCH",
    "META_BATCH",
    "OVERSIZE_FACTOR",
    "Endpoint",
    "FetchedMessage",
    "ListEntry",
    "MailboxInfo",
    "MessageMeta",
    "MetaSink",
    "Namespaces",
    "Session",
    "TlsMode",
    "connect",
    "make_ssl_context",
]


async def connect(ep: Endpoint) -> Session:
    """Connect, secure (implicit TLS or STARTTLS per ``ep.tls``) and log in once.

    ``AuthenticationFailed`` for refused credentials (one attempt, never retried here);
    ``PermanentError`` for TLS verification failures ("certificate verify failed", naming the
    host), a missing STARTTLS where required, ``LOGINDISABLED``; ``TransientError`` otherwise.
    """
    return Session(await open_connection(ep))


async def open_unauthenticated(ep: Endpoint) -> Connection:
    """The first half of ``connect``: TCP, TLS and capabilities, no login yet.

    Lets a caller get a handshake out of the way while it waits for something else (the
    source login) before deciding to log in with ``authenticate``. Close what it does not
    use with ``close_unauthenticated``. Errors as for ``connect``.
    """
    return await start(ep)


async def authenticate(conn: Connection) -> Session:
    """The second half of ``connect``: one login attempt on an ``open_unauthenticated`` one."""
    await login(conn)
    return Session(conn)


def close_unauthenticated(conn: Connection) -> None:
    """Drop a connection that ``open_unauthenticated`` made and nobody logged in on."""
    conn.kill("not needed")


class Session:
    """A logged-in IMAP session. Commands are serialized; use several sessions for parallelism."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.host = conn.host
        self._namespaces: Namespaces | None = None

    @property
    def capabilities(self) -> frozenset[str]:
        return self._conn.capabilities

    @property
    def alive(self) -> bool:
        return self._conn.alive

    @property
    def tls(self) -> bool:
        """Whether the session runs over TLS (implicit or after STARTTLS)."""
        return self._conn.tls

    def _mailbox(self, name: str) -> str | Literal:
        try:
            return astring(name)
        except ValueError as exc:
            raise PermanentError(f"folder name {name!r}: {exc}", host=self.host) from None

    def _nonsync(self, size: int) -> bool:
        caps = self.capabilities
        return ("LITERAL+" in caps and size <= NONSYNC_MAX) or ("LITERAL-" in caps and size <= 4096)

    def _batches(self, uids: str | Iterable[int], cap: int) -> list[str]:
        try:
            return uid_batches(uids, cap)
        except ValueError as exc:
            raise PermanentError(f"bad UID set: {exc}", host=self.host) from None

    def _check(self, kind: Kind, result: str, text: str, what: str) -> None:
        responses.check(kind, result, text, host=self.host, what=what)

    @contextlib.contextmanager
    def _parsing(self, what: str) -> Iterator[None]:
        """Around the parsing of the reply to ``what``: a ``WireError`` (the reply is unreadable)
        kills the session and becomes ``TransientError``; any other exception is a bug and
        becomes ``InternalError`` chained to it (``endpoint.translate``)."""
        try:
            yield
        except Exception as exc:
            if isinstance(exc, WireError):
                self._conn.kill(f"unreadable reply to {what}")
            raise translate(exc, self.host, what) from chain(exc)

    # -- folders -------------------------------------------------------------------------------

    async def append(
        self,
        mailbox: str,
        body: bytes | bytearray | memoryview,
        flags: Iterable[str] = (),
        internaldate: str | None = None,
        *,
        cautious: bool = False,
    ) -> int | None:
        """Store one message in ``mailbox``; return its UID when the server says (UIDPLUS).

        ``flags``: ``\\Recent`` and invalid atoms are dropped. ``internaldate``: the source's
        INTERNALDATE string exactly as fetched (``26-Nov-2025 17:30:21 +0000``).
        ``MessageRejected`` when the server refuses this message (size, content, flags).

        A ``TransientError`` here (timeout, lost connection) does NOT mean the message is
        missing: the server may have stored it before the connection broke. The caller must
        re-read the destination folder before appending again, or it creates duplicates.

        Messages up to ``NONSYNC_MAX`` bytes go as non-synchronizing literals when the server
        offers LITERAL+ (LITERAL-: up to 4,096 bytes), saving one round trip each; larger ones
        wait for the server's go-ahead, so it can refuse them before the upload.
        """
        args: list[str | Literal] = [self._mailbox(mailbox)]
        nonsync = self._nonsync(len(body)) and not cautious
        args += self._message_args(mailbox, body, flags, internaldate, nonsync)
        what = f"APPEND to {mailbox!r}"
        reply = await self._conn.run("APPEND", args, what=what, allowance=len(body) / UPLOAD_RATE)
        if nonsync and reply.result == "BAD":
            self._desync(what, reply.text)
        self._check("append", reply.result, reply.text, what)
        with self._parsing(what):
            return appenduid(reply.text)

    def _desync(self, what: str, text: str) -> None:
        reason = f"{what}: BAD after streamed data ({responses.one_line(text)})"
        self._conn.kill(reason)
        raise AppendDesync(f"{reason}; retrying with one message at a time", host=self.host)

    def _message_args(
        self,
        mailbox: str,
        body: bytes | bytearray | memoryview,
        flags: Iterable[str],
        internaldate: str | None,
        nonsync: bool,
    ) -> list[str | Literal]:
        """``[(flags)] ["date"] {n}`` of one message of an APPEND."""
        args: list[str | Literal] = []
        if (flag_text := flag_list(flags)) is not None:
            args.append(flag_text)
        if internaldate is not None:
            try:
                args.append(date_time_arg(internaldate))
            except ValueError as exc:
                raise MessageRejected(f"APPEND to {mailbox!r}: {exc}", host=self.host) from None
        args.append(Literal(body, nonsync=nonsync))
        return args

    async def append_many(
        self, mailbox: str, messages: Sequence[AppendItem], *, cautious: bool = False
    ) -> list[str | None]:
        """Store ``messages`` (body, flags, INTERNALDATE) in ``mailbox``; per message, ``None``
        when stored or the reason the destination refused it.

        With MULTIAPPEND (RFC 3502) and LITERAL+ (RFC 7888) advertised, this is a single
        APPEND command whose literals are all non-synchronizing: the whole batch costs one
        round trip instead of one or two per message. MULTIAPPEND is atomic: after a refusal
        nothing was stored, and the messages are appended one by one so that only the refused
        one(s) fail. Without both capabilities, or when ``cautious``, each message is appended
        on its own (``cautious``: with synchronizing literals, so a BAD cannot desynchronize).
        ``AppendDesync`` when the server answered BAD to streamed data (see there).

        The same caution as ``append``: after a ``TransientError`` the batch may or may not
        have been stored (all or nothing); re-read the destination before appending again.
        """
        caps = self.capabilities
        if not cautious and len(messages) > 1 and "MULTIAPPEND" in caps and "LITERAL+" in caps:
            args: list[str | Literal] = [self._mailbox(mailbox)]
            try:
                for body, flags, date in messages:
                    args += self._message_args(mailbox, body, flags, date, True)
            except MessageRejected:
                args = []  # one of them is malformed: the one-by-one path below says which
            if args:
                total = sum(len(m[0]) for m in messages)
                what = f"APPEND of {len(messages)} messages to {mailbox!r}"
                reply = await self._conn.run(
                    "APPEND", args, what=what, allowance=total / UPLOAD_RATE
                )
                if reply.result == "BAD":
                    self._desync(what, reply.text)
                if responses.classify_append(reply.result, reply.text) != "rejected":
                    self._check("append", reply.result, reply.text, what)
                    return [None] * len(messages)
        outcome: list[str | None] = []
        for body, flags, date in messages:
            try:
                await self.append(mailbox, body, flags, date, cautious=cautious)
                outcome.append(None)
            except MessageRejected as exc:
                outcome.append(str(exc))
        return outcome

    # -- ending ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.logout()

    async def namespaces(self) -> Namespaces:
        """The server's namespaces (personal, other users', shared); asked once per session.

        Without the NAMESPACE capability: one personal namespace, prefix ``""``, with the
        delimiter from ``LIST "" ""``.
        """
        if self._namespaces is None:
            if "NAMESPACE" in self.capabilities:
                reply = await self._conn.run("NAMESPACE", what="NAMESPACE")
                self._check("other", reply.result, reply.text, "NAMESPACE")
                with self._parsing("NAMESPACE"):
                    self._namespaces = parse_namespaces(reply.lines)
            else:
                reply = await self._conn.run("LIST", ['""', '""'], what="LIST")
                self._check("other", reply.result, reply.text, "LIST")
                with self._parsing("LIST"):
                    entries = parse_list(reply.lines)
                self._namespaces = Namespaces((("", entries[0].delimiter if entries else None),))
        return self._namespaces

    async def namespaces_and_folders(self) -> tuple[Namespaces, list[ListEntry]]:
        """``namespaces()`` and ``list_folders()`` in one round trip (pipelined)."""
        if self._namespaces is not None:
            return self._namespaces, await self.list_folders()
        first = (
            Step("NAMESPACE") if "NAMESPACE" in self.capabilities else Step("LIST", ['""', '""'])
        )
        ns_reply, list_reply = await self._conn.run_pipelined(
            [first, Step("LIST", ['""', '"*"'])], what="NAMESPACE and LIST"
        )
        self._check("other", ns_reply.result, ns_reply.text, first.name)
        self._check("other", list_reply.result, list_reply.text, "LIST")
        with self._parsing(first.name):
            if first.name == "NAMESPACE":
                self._namespaces = parse_namespaces(ns_reply.lines)
            else:
                entries = parse_list(ns_reply.lines)
                delimiter = entries[0].delimiter if entries else None
                self._namespaces = Namespaces((("", delimiter),))
        with self._parsing("LIST"):
            return self._namespaces, parse_list(list_reply.lines)

    async def namespace(self) -> tuple[str, str | None]:
        """The personal namespace ``(prefix, delimiter)``: ``("", "/")``, ``("INBOX.", ".")``."""
        ns = await self.namespaces()
        return ns.prefix, ns.delimiter

    async def list_folders(self, pattern: str = "*") -> list[ListEntry]:
        """The folders matching ``pattern`` (``LIST "" pattern``; default: every folder), names
        as on the wire, in the server's order. ``pattern`` is sent quoted (mUTF-7 already)."""
        reply = await self._conn.run("LIST", ['""', self._mailbox(pattern)], what="LIST")
        self._check("other", reply.result, reply.text, "LIST")
        with self._parsing("LIST"):
            return parse_list(reply.lines)

    async def _open_mailbox(self, command: str, name: str) -> MailboxInfo:
        what = f"{command} {name!r}"
        reply = await self._conn.run(command, [self._mailbox(name)], what=what)
        if reply.result != "OK":
            self._conn.proto.state = "AUTH"  # RFC 3501: a failed SELECT leaves none selected
            self._check("select", reply.result, reply.text, what)
        # aioimaplib leaves its state at AUTH after EXAMINE, then refuses FETCH/SEARCH.
        self._conn.proto.state = "SELECTED"
        with self._parsing(what):
            return parse_mailbox(name, reply.lines, reply.text)

    async def examine(self, name: str) -> MailboxInfo:
        """Open ``name`` read-only (nothing in it can change, not even ``\\Seen``)."""
        return await self._open_mailbox("EXAMINE", name)

    async def select(self, name: str) -> MailboxInfo:
        """Open ``name`` read-write (the destination, for PERMANENTFLAGS)."""
        return await self._open_mailbox("SELECT", name)

    async def create(self, name: str) -> None:
        """Create ``name``; a folder that already exists is fine. ``FolderRefused`` when the
        server refuses it."""
        reply = await self._conn.run("CREATE", [self._mailbox(name)], what=f"CREATE {name!r}")
        self._check_create(reply, name)

    def _check_create(self, reply: Reply, name: str) -> None:
        try:
            self._check("create", reply.result, reply.text, f"CREATE {name!r}")
        except PermanentError as exc:
            raise FolderRefused(str(exc), host=self.host) from None

    async def subscribe(self, name: str) -> None:
        reply = await self._conn.run("SUBSCRIBE", [self._mailbox(name)], what=f"SUBSCRIBE {name!r}")
        self._check("other", reply.result, reply.text, f"SUBSCRIBE {name!r}")

    # -- pipelined folder commands -------------------------------------------------------------

    def _pipelinable(self, names: Iterable[str]) -> bool:
        """Whether commands on ``names`` can be pipelined: a name that needs a literal (raw
        8-bit) would need a continuation; such folders take the one-by-one path."""
        return all(isinstance(self._mailbox(n), str) for n in names)

    async def _pipelined(self, steps: list[Step], what: str) -> list[Reply]:
        out: list[Reply] = []
        for first in range(0, len(steps), PIPELINE_MAX):
            out += await self._conn.run_pipelined(steps[first : first + PIPELINE_MAX], what=what)
        return out

    async def create_folders(self, names: Sequence[str]) -> dict[str, str]:
        """CREATE and SUBSCRIBE every one of ``names``, in order, in one round trip (pipelined;
        parents must come before their children). A folder that already exists is fine.
        Returns the refused ones: name -> the server's reason. ``TransientError`` and the
        like as for every command."""
        refused: dict[str, str] = {}
        if not self._pipelinable(names):
            for name in names:
                try:
                    await self.create(name)
                    await self.subscribe(name)
                except PermanentError as exc:
                    refused[name] = str(exc)
            return refused
        steps = [
            Step(command, [self._mailbox(name)])
            for name in names
            for command in ("CREATE", "SUBSCRIBE")
        ]
        replies = await self._pipelined(steps, f"CREATE of {len(names)} folders")
        for i, name in enumerate(names):
            created, subscribed = replies[2 * i], replies[2 * i + 1]
            try:
                self._check_create(created, name)
                self._check("other", subscribed.result, subscribed.text, f"SUBSCRIBE {name!r}")
            except PermanentError as exc:
                refused[name] = str(exc)
        return refused

    async def count_messages(
        self, names: Sequence[str], criteria: list[str]
    ) -> dict[str, int | None]:
        """How many messages of each folder of ``names`` match ``criteria``, for all of them in
        one round trip (pipelined): ``STATUS (MESSAGES)`` without a date range (``["ALL"]``),
        else ``EXAMINE`` + ``UID SEARCH RETURN (COUNT)`` (ESEARCH, RFC 4731) or a plain ``UID
        SEARCH`` whose UIDs are counted. ``None`` for a folder the server would not count
        (its pass finds out). Read-only: STATUS and EXAMINE change nothing. Leaves the last
        examined folder open (the next EXAMINE/SELECT replaces it)."""
        names = list(names)
        if not names or not self._pipelinable(names):
            return dict.fromkeys(names)
        if criteria == ["ALL"]:
            steps = [Step("STATUS", [self._mailbox(n), "(MESSAGES)"]) for n in names]
            replies = await self._pipelined(steps, f"STATUS of {len(names)} folders")
            return {
                name: _first_int(_STATUS_MESSAGES, r.lines) if r.result == "OK" else None
                for name, r in zip(names, replies, strict=True)
            }
        try:
            args = search_args(criteria)
        except ValueError as exc:
            raise PermanentError(f"UID SEARCH: {exc}", host=self.host) from None
        esearch = "ESEARCH" in self.capabilities
        search = Step("SEARCH", ["RETURN", "(COUNT)", *args] if esearch else args, prefix="UID")
        steps = [step for n in names for step in (Step("EXAMINE", [self._mailbox(n)]), search)]
        self._conn.proto.searching = True  # a plain SEARCH's line may be long (every UID)
        try:
            replies = await self._pipelined(steps, f"counting the messages of {len(names)} folders")
        finally:
            self._conn.proto.searching = False
        self._conn.proto.state = "SELECTED"
        out: dict[str, int | None] = {}
        for i, name in enumerate(names):
            opened, found = replies[2 * i], replies[2 * i + 1]
            if opened.result != "OK" or found.result != "OK":
                out[name] = None
            elif esearch:
                out[name] = _first_int(_ESEARCH_COUNT, found.lines) or 0  # RFC 4731: COUNT 0
            else:
                with self._parsing("UID SEARCH"):
                    out[name] = len(set(parse_search(found.lines)))
        return out

    async def open_folder(
        self,
        name: str,
        *,
        examine: bool,
        criteria: list[str],
        expected: int | None = None,
        create: bool = False,
        each: MetaSink | None = None,
    ) -> tuple[MailboxInfo, list[MessageMeta]]:
        """Open ``name`` (EXAMINE: read-only, the source; SELECT: the destination, after CREATE
        and SUBSCRIBE when ``create``) and read the identities of its messages matching
        ``criteria``, by ascending UID, with as few round trips as the server allows: the
        commands are pipelined with the first metadata FETCH of ``expected`` messages (the
        count from ``count_messages``, 0 for a folder just created), or with the UID SEARCH
        of a date range. When the folder holds more than expected, the rest is fetched after;
        when it holds fewer (a message was expunged meanwhile) the FETCH is repeated for what
        is there. Errors: the first refused command's, as ``create`` (``FolderRefused``),
        ``subscribe``, ``examine``/``select``.

        ``each``: every batch (at most ``META_MERGE`` x ``META_BATCH`` messages, sorted by
        UID) is handed to it as soon as it is parsed, batches in ascending UID order, and the
        returned list is empty: the caller keeps what it needs, not every ``MessageMeta`` of
        the folder. The next batch's FETCH is in flight while ``each`` takes one
        (``_read_batches``); when ``each`` returns an awaitable, the batch after that is
        fetched once it is done (the caller may use the session meanwhile: its commands wait
        for the FETCH in flight).
        """
        command = "EXAMINE" if examine else "SELECT"
        if not self._pipelinable([name]):
            if create:
                await self.create(name)
                await self.subscribe(name)
            info = await self._open_mailbox(command, name)
            return info, await self._read_open(info, criteria, each)
        mailbox = self._mailbox(name)
        steps = [Step("CREATE", [mailbox]), Step("SUBSCRIBE", [mailbox])] if create else []
        steps.append(Step(command, [mailbox]))
        first = min(expected or 0, META_BATCH)
        if criteria != ["ALL"]:
            try:
                steps.append(Step("SEARCH", search_args(criteria), prefix="UID"))
            except ValueError as exc:
                raise PermanentError(f"UID SEARCH: {exc}", host=self.host) from None
        elif first:
            steps.append(Step("FETCH", [f"1:{first}", META_ITEMS], fetch=True))
        what = f"{command} {name!r}"
        self._conn.proto.searching = criteria != ["ALL"]
        try:
            replies = await self._conn.run_pipelined(steps, what=what)
        finally:
            self._conn.proto.searching = False
        if create:
            created, subscribed = replies[0], replies[1]
            self._check_create(created, name)
            self._check("other", subscribed.result, subscribed.text, f"SUBSCRIBE {name!r}")
        opened = replies[2 if create else 0]
        if opened.result != "OK":
            self._conn.proto.state = "AUTH"  # RFC 3501: a failed SELECT leaves none selected
            self._check("select", opened.result, opened.text, what)
        self._conn.proto.state = "SELECTED"
        with self._parsing(what):
            info = parse_mailbox(name, opened.lines, opened.text)
        if not info.exists:
            return info, []
        if criteria != ["ALL"]:
            found = replies[-1]
            self._check("other", found.result, found.text, "UID SEARCH")
            with self._parsing("UID SEARCH"):
                uids = sorted(set(parse_search(found.lines)))
            return info, await self.fetch_meta(uids, each=each)
        batch: list[MessageMeta] | None = None
        if first and first <= info.exists:
            # The FETCH was valid for the folder as opened: its refusal (throttling with a
            # backoff hint, say) is an answer to act on, as for any FETCH.
            fetched = replies[-1]
            self._check("other", fetched.result, fetched.text, f"FETCH 1:{first}")
            with self._parsing(f"FETCH 1:{first}"):
                batch = metas_of(fetched.lines)
        else:
            # Fewer messages than counted (expunged meanwhile): the FETCH named numbers that
            # do not exist and proves nothing; read the folder as it is now.
            first = 0
        metas = await self._read_batches(_sequence_sets(first + 1, info.exists), each, batch)
        metas.sort(key=lambda m: m.uid)
        return info, metas

    async def _read_open(
        self, info: MailboxInfo, criteria: list[str], each: MetaSink | None
    ) -> list[MessageMeta]:
        """The identities of the open folder's messages matching ``criteria``."""
        if not info.exists:
            return []
        if criteria == ["ALL"]:  # no date range: no SEARCH round trip needed
            metas = await self.fetch_meta_all(info.exists, each=each)
            metas.sort(key=lambda m: m.uid)
            return metas
        return await self.fetch_meta(await self.uid_search(criteria), each=each)

    # -- messages ------------------------------------------------------------------------------

    async def uid_search(self, criteria: list[str]) -> list[int]:
        """UIDs matching ``criteria`` (``["SINCE", "25-Sep-2017"]``, ``["ALL"]``) in the open
        mailbox, ascending. Tokens that are not atoms are quoted; non-ASCII is refused."""
        try:
            args = search_args(criteria)
        except ValueError as exc:
            raise PermanentError(f"UID SEARCH: {exc}", host=self.host) from None
        self._conn.proto.searching = True  # its one answer line may be long (every UID)
        try:
            reply = await self._conn.run("SEARCH", args, prefix="UID", what="UID SEARCH")
        finally:
            self._conn.proto.searching = False
        self._check("other", reply.result, reply.text, "UID SEARCH")
        with self._parsing("UID SEARCH"):
            return sorted(set(parse_search(reply.lines)))

    async def _fetch(self, uid_set: str, items: str, what: str, *, by_uid: bool = True) -> Reply:
        """One FETCH (``UID FETCH`` unless ``by_uid`` is False), its reply unparsed: each
        caller reads it its own way (most straight from the bytes, see ``parse``)."""
        return await self._conn.run(
            "FETCH", [uid_set, items], prefix="UID" if by_uid else None, fetch=True, what=what
        )

    async def _fetch_metas(
        self, uid_set: str, items: str, *, by_uid: bool = True
    ) -> list[MessageMeta]:
        """One metadata FETCH (``META_ITEMS`` or ``STORED_ITEMS``) of at most ``META_MERGE`` x
        ``META_BATCH`` messages, converted in one go (``metas_of``: ~4 us a message, so a
        batch of 4,000 holds the loop ~20 ms), in the order the server sent them."""
        what = f"{'UID ' if by_uid else ''}FETCH {uid_set}"
        reply = await self._fetch(uid_set, items, what, by_uid=by_uid)
        self._check("other", reply.result, reply.text, what)
        with self._parsing(what):
            return metas_of(reply.lines)

    async def fetch_meta(
        self, uids: str | Iterable[int], *, each: MetaSink | None = None
    ) -> list[MessageMeta]:
        """UID, flags, INTERNALDATE, RFC822.SIZE and identity headers, in batches of
        ``META_BATCH``, by ascending UID. ``uids``: a UID set (no ``*``) or UIDs. Missing UIDs
        are skipped. ``each``: as for ``open_folder`` (batches handed over, nothing returned)."""
        sets = [(uid_set, True) for uid_set in self._batches(uids, META_BATCH)]
        out = await self._read_batches(sets, each)
        out.sort(key=lambda m: m.uid)
        return out

    async def fetch_sizes_from(self, first_uid: int) -> list[tuple[int, int]]:
        """(UID, RFC822.SIZE) of every message of the open mailbox from UID ``first_uid`` on
        (``UID FETCH first:* (UID RFC822.SIZE)``: one command, no literals), by ascending UID.
        The read-back's first look at what APPENDs stored. RFC 3501 answers ``n:*`` with the
        last message even when its UID is below ``n``: that one is dropped here."""
        if first_uid < 1:
            raise ValueError(f"first_uid must be at least 1, got {first_uid}")
        what = f"UID FETCH {first_uid}:*"
        reply = await self._fetch(f"{first_uid}:*", "(UID RFC822.SIZE)", what)
        self._check("other", reply.result, reply.text, what)
        with self._parsing(what):
            pairs = uid_sizes_of(reply.lines)
            items = fetch_items(reply.lines) if pairs is None else []
        if pairs is None:  # an unusual answer: the general path, with turns of the loop
            pairs = await self._convert(items, uid_size_from, what)
        out = [p for p in pairs if p[0] >= first_uid]
        out.sort()
        return out

    async def fetch_stored(self, uids: str | Iterable[int]) -> list[MessageMeta]:
        """Size, INTERNALDATE and the whole header block (``BODY.PEEK[HEADER]``, as
        ``header``) of messages of the open mailbox, by ascending UID: the read-back's close
        look at the copies that need one."""
        out: list[MessageMeta] = []
        for uid_set in self._batches(uids, STORED_BATCH):
            out += await self._fetch_metas(uid_set, STORED_ITEMS)
        out.sort(key=lambda m: m.uid)
        return out

    async def noop(self) -> None:
        """NOOP: lets the server report changes of the open mailbox (Courier shows messages
        appended to the selected mailbox only after one)."""
        reply = await self._conn.run("NOOP", what="NOOP")
        self._check("other", reply.result, reply.text, "NOOP")

    async def fetch_meta_all(
        self, exists: int, start: int = 1, *, each: MetaSink | None = None
    ) -> list[MessageMeta]:
        """``fetch_meta`` of every message of the open mailbox, addressed by sequence numbers
        ``start:exists`` (from SELECT/EXAMINE), which saves the UID SEARCH round trip. A
        message expunged meanwhile is simply missing from the answer; UIDs come with every
        item. ``each``: as for ``open_folder`` (sequence numbers ascend with UIDs, RFC 3501
        2.3.1.1, so the batches come in ascending UID order)."""
        return await self._read_batches(_sequence_sets(start, exists), each)

    async def _read_batches(
        self,
        sets: list[tuple[str, bool]],
        each: MetaSink | None,
        first: list[MessageMeta] | None = None,
    ) -> list[MessageMeta]:
        """The metadata FETCHes of ``sets`` ((set, by UID), in order, each of at most
        ``META_BATCH`` messages; consecutive ones joined into one FETCH as ``_units_after``
        says), each batch handed to ``each`` (see ``_deliver``) after ``first`` (a batch
        already read, if any). The next batch's FETCH is sent before a batch is handed over,
        so the server prepares it while the caller works on the one before (on a
        200,000-message delta pass both servers otherwise sat idle during every batch's
        identity keys and listing rows). At most one FETCH is in flight; it is cancelled (the
        connection with it) if handing over fails."""
        out: list[MessageMeta] = []
        pending = first
        ahead: asyncio.Future[list[MessageMeta]] | None = None
        i = 0
        try:
            while True:
                if i < len(sets):
                    uid_set, by_uid, taken = _joined(sets, i, _units_after(pending))
                    i += taken
                    ahead = asyncio.ensure_future(
                        self._fetch_metas(uid_set, META_ITEMS, by_uid=by_uid)
                    )
                    await asyncio.sleep(0)  # it sends its command before the hand-over runs
                if pending is not None:
                    out += await _deliver(pending, each)
                if ahead is None:
                    break
                pending, ahead = await ahead, None
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead
        return out

    async def fetch_bodies(
        self,
        uids: str | Iterable[int],
        *,
        limits: dict[int, int] | None = None,
        default_limit: int | None = None,
    ) -> list[FetchedMessage]:
        """Whole messages (``BODY.PEEK[]``: never sets ``\\Seen``), in batches of ``BODY_BATCH``.

        A message the server cannot deliver comes back with ``error`` set (no body, empty
        body, Exchange's substitute message, or a per-message ``NO``). When a batch gets a
        ``NO``, its UIDs are fetched one by one so the others still arrive. UIDs that do not
        exist (any more) are simply absent.

        ``limits`` (UID -> bytes) and ``default_limit`` bound what a server may send for one
        message: a larger body is read off the wire and dropped as it arrives (memory stays
        bounded whatever the server announces) and the message comes back with an error
        saying so. ``None``: no limit.
        """
        out: list[FetchedMessage] = []
        for uid_set in self._batches(uids, BODY_BATCH):
            out += await self._fetch_bodies(
                uid_set, split_on_no=True, limits=limits, default_limit=default_limit
            )
        return out

    async def _fetch_bodies(
        self,
        uid_set: str,
        *,
        split_on_no: bool,
        limits: dict[int, int] | None = None,
        default_limit: int | None = None,
    ) -> list[FetchedMessage]:
        proto = self._conn.proto
        proto.limit_literals(limits, default_limit)
        what = f"UID FETCH {uid_set}"
        try:
            reply = await self._fetch(uid_set, BODY_ITEMS, what)
            oversized = dict(proto.oversized)
        finally:
            proto.limit_literals(None, None)
        result, text = reply.result, reply.text
        if responses.classify_fetch(result, text) == "rejected":
            uids = expand_uid_set(uid_set)
            if split_on_no and len(uids) > 1:
                return [
                    m
                    for uid in uids
                    for m in await self._fetch_bodies(
                        str(uid), split_on_no=False, limits=limits, default_limit=default_limit
                    )
                ]
            reason = f"the server refused to deliver it: {responses.one_line(text)}"
            return [FetchedMessage(uid, (), "", None, None, reason) for uid in uids]
        self._check("fetch", result, text, what)
        with self._parsing(what):
            # The usual answer is read straight from its bytes (parse.messages_of); a dropped
            # oversized literal needs the items' sequence numbers below.
            direct = None if oversized else messages_of(reply.lines)
            items = fetch_items(reply.lines) if direct is None else []
        if direct is not None:
            return direct
        messages = await self._convert(items, message_from, what)
        if oversized:
            by_seq = {item.get(SEQUENCE_KEY): m for item, m in zip(items, messages, strict=True)}
            for seq, size in oversized.items():
                m = by_seq.get(str(seq))
                if m is None:
                    continue
                limit = (limits or {}).get(m.uid, default_limit)
                error = (
                    f"the server sent {size:,} bytes for it, more than the {limit:,} bytes "
                    "allowed for this message (its announced size times "
                    f"{OVERSIZE_FACTOR}, at least imap.max_message_mb): not copied"
                )
                index = messages.index(m)
                messages[index] = FetchedMessage(
                    m.uid, m.flags, m.internaldate_raw, m.internaldate, None, error
                )
        return messages

    async def _convert(
        self, items: list[dict[str, Value]], convert: Callable[[dict[str, Value]], T], what: str
    ) -> list[T]:
        """``convert`` each FETCH item, giving the event loop a turn every ``CONVERT_SLICE``
        items (1,000 items take about 100 ms of CPU: other connections must not wait that)."""
        out: list[T] = []
        for first in range(0, len(items), CONVERT_SLICE):
            if first:
                await asyncio.sleep(0)
            with self._parsing(what):
                out += [convert(i) for i in items[first : first + CONVERT_SLICE]]
        return out

    async def logout(self) -> None:
        """Say goodbye and close. Never raises ``ImapError``; a dead session is just aborted."""
        if self._conn.alive:
            with contextlib.suppress(ImapError):
                await self._conn.run("LOGOUT", what="LOGOUT", silence=LOGOUT_TIMEOUT)
        self.abort()

    def leave(self) -> None:
        """Say goodbye without waiting for the answer: ``LOGOUT`` is written and the connection
        dropped (saves the round trip of ``logout`` at the end of a request, when every
        command has had its answer). Never raises, never waits."""
        self._conn.leave()

    def abort(self) -> None:
        """Drop the connection now. Never raises, never waits."""
        self._conn.kill("aborted by the client")


async def _deliver(batch: list[MessageMeta], each: MetaSink | None) -> list[MessageMeta]:
    """``batch`` sorted by UID, handed to ``each`` (then nothing is kept: ``[]``) or returned."""
    batch.sort(key=lambda m: m.uid)
    if each is None:
        return batch
    pending = each(batch)
    if pending is not None:
        await pending
    return []


def _units_after(batch: list[MessageMeta] | None) -> int:
    """How many ``META_BATCH`` units the next metadata FETCH joins: as many as keep its
    answers near ``META_BATCH_BYTES``, judged by the batch just read (one with none read yet),
    from 1 to ``META_MERGE``."""
    if not batch:
        return 1
    per_item = sum(len(m.header) for m in batch) / len(batch) + _META_ITEM_BYTES
    return max(1, min(META_MERGE, int(META_BATCH_BYTES / (per_item * META_BATCH))))


def _joined(sets: list[tuple[str, bool]], i: int, units: int) -> tuple[str, bool, int]:
    """``sets[i]`` joined with the sets after it (a comma-separated set list, RFC 3501
    ``sequence-set``) up to ``units`` of them, all of one kind (UIDs or sequence numbers) and
    at most ``MAX_SET_LEN`` characters together (Exchange's command size): (set, by UID,
    how many were joined)."""
    joined, by_uid = sets[i]
    n = 1
    while n < units and i + n < len(sets):
        nxt, nxt_by_uid = sets[i + n]
        if nxt_by_uid != by_uid or len(joined) + 1 + len(nxt) > MAX_SET_LEN:
            break
        joined += "," + nxt
        n += 1
    return joined, by_uid, n


def _sequence_sets(start: int, exists: int) -> list[tuple[str, bool]]:
    """Sequence sets of ``META_BATCH`` messages from ``start`` to ``exists`` (not by UID)."""
    return [
        (f"{first}:{min(exists, first + META_BATCH - 1)}", False)
        for first in range(start, exists + 1, META_BATCH)
    ]


def _first_int(pattern: re.Pattern[bytes], lines: Iterable[bytes | bytearray]) -> int | None:
    """The number the first line matching ``pattern`` holds (its group 1), if any."""
    for line in lines:
        if isinstance(line, bytes) and (m := pattern.search(line)):
            return int(m[1])
    return None
