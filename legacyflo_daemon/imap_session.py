"""The IMAP session's plumbing and its APPEND commands (split from ``imap``).

Owns: ``SessionBase`` (the connection, capabilities, name quoting, reply checking) and the
APPEND family: one message (``append``), or a batch in one round trip (``append_many`` with
MULTIAPPEND + LITERAL+), and the rule that a BAD after streamed literals kills the connection
(``AppendDesync``). ``imap.Session`` adds everything else. Must not: log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import retry
from .errors import AppendDesync, MessageRejected, PermanentError, TransientError
from .imap_conn import Connection, Kind
from .imap_parse import appenduid
from .imap_uidset import uid_batches
from .imap_wire import Literal, WireError, astring, date_time_arg, flag_list

AppendItem = tuple[bytes | bytearray | memoryview, Iterable[str], str | None]
NONSYNC_MAX = 256 * 1024  # largest APPEND sent without waiting for "+" (with LITERAL+)
UPLOAD_RATE = 16 * 1024  # bytes/s an APPEND is allowed at worst, for its overall ceiling


class SessionBase:
    """A logged-in connection with the helpers every command uses, and APPEND."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.host = conn.host
        self._namespace: tuple[str, str | None] | None = None

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
        retry.check(kind, result, text, host=self.host, what=what)

    def _parse_failed(self, what: str, exc: WireError) -> TransientError:
        self._conn.kill(f"unreadable reply to {what}")
        return TransientError(f"{what}: unreadable server response: {exc}", host=self.host)

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
        return appenduid(reply.text)

    def _desync(self, what: str, text: str) -> None:
        reason = f"{what}: BAD after streamed data ({retry.clean_text(text)})"
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
                if retry.classify_append(reply.result, reply.text) != "rejected":
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
