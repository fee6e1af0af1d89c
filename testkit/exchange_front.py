"""An Exchange-like IMAP front for tests: a line-level IMAP proxy before a real test server.

Owns: terminating the client's TLS (implicit TLS with the test CA's certificate, or plaintext),
a connection to the backend (a Dovecot test server, plaintext or TLS), reading client commands
whole (tag, command name, literals ``{n}``/``{n+}``) and server responses whole (literals
included), and the Exchange behaviours a test switches on, each counted:

1. ``throttle(after=N, times=K, backoff_ms=M)``: once N commands of logged-in sessions went
   through, the next K (of the chosen name) are answered ``NO Request is throttled. Suggested
   Backoff Time: M milliseconds`` (Exchange Online's text) and not forwarded; optionally the
   connection is dropped afterwards, as Exchange Online does.
2. ``bye(after=N, times=K)``: the next K commands after N get ``* BYE Connection closed. 14``
   (the text the notes quote) and the connection is closed; ``bye_all()`` does it to every
   logged-in session now (mid-session, unsolicited).
3. ``limit_per_user(L)``: a LOGIN/AUTHENTICATE of a user who already has L logged-in (or
   logging-in) sessions through the front is refused with ``USER_LIMIT_TEXT`` and not
   forwarded. The notes give no text for Exchange's ``MaxConnectionsPerUser`` refusal; we use
   ``NO [UNAVAILABLE] User is authenticated but not connected.`` (the brief's suggestion; the
   code makes it a "try again later" and the text is what Exchange answers when a session
   cannot be bound to the mailbox). Another text can be given.
4. ``max_command_size(10240)``: a command whose text without literal payloads (line bytes
   including ``{n}`` markers, without CRLFs) is longer gets ``BAD Command Argument Error. 11``
   (the notes: "size, quota, long lines") and is not forwarded. A synchronizing literal is
   refused before its payload (no ``+``), a non-synchronizing one is read and dropped.
5. ``size_delta(percent=, fixed=)``: every ``RFC822.SIZE n`` in FETCH responses becomes
   ``round(n * (1 + percent/100)) + fixed`` (at least 0): Exchange's estimated sizes.
6. ``substitute(uids=, message_ids=)``: the ``BODY[]`` literal of those messages (UID, or a
   substring of the message's header section such as a Message-ID) is replaced by Exchange's
   substitute mail ("Retrieval using the IMAP4 protocol failed for the following message:
   <id>"); the FETCH still answers OK. Only ``BODY[]`` is replaced (headers fetched with
   ``BODY[HEADER.FIELDS ...]`` stay the original ones).

Synchronizing literals are acknowledged by the front itself (``+ Ready for additional command
text.``) and forwarded as ``{n+}`` (the backend must offer LITERAL+, as Dovecot does).
``STARTTLS`` and ``LOGINDISABLED`` are removed from the capabilities the backend announces.
It runs its own event loop in a thread like ``testkit.proxy.FaultProxy``, so it serves sync
and async tests alike. Must not: be used by product code, or hold a password longer than a
LOGIN takes (only user names are kept).

    with ExchangeFront(server.host, server.port_plain, tls=tls_ca) as front:
        front.throttle(after=3, times=2, backoff_ms=200)
        ...connect to front.host, front.port (implicit TLS, trust tls_ca.ca_file)...
        assert front.throttled == 2
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from testkit.tlsca import TlsCa

THROTTLE_TEXT = "Request is throttled. Suggested Backoff Time: {ms} milliseconds"
BYE_TEXT = "Connection closed. 14"
USER_LIMIT_TEXT = "[UNAVAILABLE] User is authenticated but not connected."
TOO_LONG_TEXT = "Command Argument Error. 11"
CONTINUE = b"+ Ready for additional command text.\r\n"
SUBSTITUTE_SUBJECT = "Retrieval using the IMAP4 protocol failed for the following message"
LINE_LIMIT = 256 * 1024  # longest line either side may send (and the read buffer's bound)

_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r\n\Z")
_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"|([^\s()]+)')
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_UID = re.compile(rb"[( ]UID (\d+)")
_BODY = re.compile(rb"BODY\[\] \{(\d+)\}\r\n\Z")
_FETCH = re.compile(rb"\* \d+ FETCH ")
_CAPS_DROPPED = re.compile(rb" (?:STARTTLS|LOGINDISABLED)(?=[ \]\r])")


@dataclass(eq=False)
class Rule:
    """A throttle or BYE rule: it lets ``after`` matching commands through, then fires
    ``times`` times. ``command`` (e.g. ``"FETCH"``; ``UID FETCH`` counts as ``FETCH``) limits
    which commands it counts; None counts every command of a logged-in session but LOGOUT."""

    after: int
    times: int
    command: str | None = None
    seen: int = 0
    fired: int = 0

    def hit(self, name: str) -> bool:
        if self.command is not None and name != self.command.upper():
            return False
        self.seen += 1
        if self.seen > self.after and self.fired < self.times:
            self.fired += 1
            return True
        return False


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    backend: asyncio.StreamWriter | None = None
    user: str | None = None  # logged in (or a login in flight: ``logging_in``)
    logging_in: dict[bytes, str] = field(default_factory=dict)  # tag -> user
    raw_until: bytes | None = None  # AUTHENTICATE/IDLE in flight: client lines are not commands
    swallow: set[bytes] = field(default_factory=set)  # tags whose completion the front answered
    forwarded: set[bytes] = field(default_factory=set)  # tags sent on, not answered yet
    closing: bool = False


@dataclass(frozen=True)
class Command:
    """A client command as read: its parts (lines ending CRLF, literal payloads between them)."""

    parts: list[bytes]
    literals: frozenset[int]  # indexes of literal payloads in ``parts``
    length: int  # bytes of command text, literal payloads and CRLFs not counted
    too_long: bool

    @property
    def tokens(self) -> list[bytes]:
        """Tag, name, arguments: atoms and quoted strings unquoted, literals as they are."""
        out: list[bytes] = []
        for i, part in enumerate(self.parts):
            if i in self.literals:
                out.append(part)
                continue
            text = _LITERAL.sub(b"", part).removesuffix(b"\r\n")
            for m in _TOKEN.finditer(text):
                if m.group(1) is not None:
                    out.append(re.sub(rb"\\(.)", rb"\1", m.group(1)))
                else:
                    out.append(m.group(2))
        return out


def substitute_message(uid: int, original: bytes) -> bytes:
    """Exchange's stand-in for a message it cannot convert (as reported by its users: the
    subject names the failure, the body names the original's subject, sender and date)."""
    head = original.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")

    def header(name: str) -> str:
        m = re.search(rf"(?im)^{name}:[ \t]*(.*(?:\r\n[ \t].*)*)", head)
        return " ".join(m.group(1).split()) if m else ""

    lines = [
        f"Date: {header('Date') or 'Mon, 1 Jan 2018 00:00:00 +0000'}",
        "From: Microsoft Exchange Server <MicrosoftExchange@front.invalid>",
        f"Subject: {SUBSTITUTE_SUBJECT}: {uid}",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="us-ascii"',
        "",
        "The server couldn't retrieve the following message:",
        "",
        f'Subject: "{header("Subject")}"',
        f'From: "{header("From")}"',
        f"Sent date: {header('Date')}",
        "",
        "The message hasn't been deleted. You might be able to view it using either Outlook or",
        "Outlook Web App. You can also try contacting the original sender to find out what the",
        "message was about.",
        "",
    ]
    return "\r\n".join(lines).encode("ascii", "replace")


class ExchangeFront:
    """Listens on ``host``:``port`` (chosen at start) and serves IMAP from the backend.

    ``tls``: the front speaks implicit TLS with this CA's server certificate (clients verify
    it with ``tls.ca_file``); None: plaintext. ``backend_ssl``: a client context to reach the
    backend over implicit TLS; None: plaintext (Dovecot allows plaintext LOGIN from 127.0.0.1
    to 127.0.0.1).
    """

    def __init__(
        self,
        backend_host: str,
        backend_port: int,
        *,
        tls: TlsCa | None = None,
        backend_ssl: ssl.SSLContext | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.backend = (backend_host, backend_port)
        self.backend_ssl = backend_ssl
        self.tls = tls
        self.host = listen_host
        self.port = 0
        # Counters (read from any thread).
        self.connections_total = 0
        self.connections_open = 0
        self.commands = 0
        self.command_names: Counter[str] = Counter()
        self.longest_command = 0
        self.throttled = 0
        self.byes = 0
        self.too_long = 0
        self.user_limit_refusals = 0
        self.sizes_rewritten = 0
        self.substituted: list[int] = []  # UIDs whose body was replaced, in order
        self.sessions: Counter[str] = Counter()  # user -> logged-in (or logging-in) sessions
        self.peak_sessions: Counter[str] = Counter()
        # Knobs.
        self._throttles: list[tuple[Rule, int, bool]] = []  # rule, backoff ms, then close
        self._byes: list[Rule] = []
        self._user_limit: int | None = None
        self._user_limit_text = USER_LIMIT_TEXT
        self._max_command: int | None = None
        self._size_percent = 0.0
        self._size_fixed = 0
        self._sub_uids: set[int] = set()
        self._sub_needles: list[bytes] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[_Conn] = set()

    # -- knobs (callable from any thread) ------------------------------------------------------

    def throttle(
        self,
        *,
        after: int,
        times: int = 1,
        backoff_ms: int = 1000,
        command: str | None = None,
        then_close: bool = False,
    ) -> Rule:
        """Answer ``times`` commands after the first ``after`` with "Request is throttled"."""
        rule = Rule(after, times, command)
        with self._lock:
            self._throttles.append((rule, backoff_ms, then_close))
        return rule

    def bye(self, *, after: int, times: int = 1, command: str | None = None) -> Rule:
        """Answer ``times`` commands after the first ``after`` with ``* BYE`` and hang up."""
        rule = Rule(after, times, command)
        with self._lock:
            self._byes.append(rule)
        return rule

    def bye_all(self) -> None:
        """``* BYE Connection closed. 14`` to every logged-in session now, then hang up."""
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._bye_all(), loop).result(5)

    def limit_per_user(self, limit: int | None, *, text: str = USER_LIMIT_TEXT) -> None:
        """At most ``limit`` logged-in sessions per user name; None lifts the limit."""
        with self._lock:
            self._user_limit, self._user_limit_text = limit, text

    def max_command_size(self, limit: int | None = 10240) -> None:
        """Exchange's ``MaxCommandSize`` (default 10,240 bytes); None lifts it."""
        with self._lock:
            self._max_command = limit

    def size_delta(self, *, percent: float = 0.0, fixed: int = 0) -> None:
        """Report every RFC822.SIZE off by ``percent`` and then ``fixed`` bytes."""
        with self._lock:
            self._size_percent, self._size_fixed = percent, fixed

    def substitute(self, *, uids: Iterable[int] = (), message_ids: Iterable[str] = ()) -> None:
        """Serve Exchange's substitute mail instead of these messages' bodies."""
        with self._lock:
            self._sub_uids.update(uids)
            self._sub_needles.extend(m.encode() for m in message_ids)

    def clear(self) -> None:
        """Switch every behaviour off (counters stay)."""
        with self._lock:
            self._throttles.clear()
            self._byes.clear()
            self._user_limit = self._max_command = None
            self._size_percent, self._size_fixed = 0.0, 0
            self._sub_uids.clear()
            self._sub_needles.clear()

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.connections_total < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.connections_total} connections, expected {n}")
            time.sleep(0.01)

    def wait_for_sessions(self, user: str, n: int, timeout: float = 5.0) -> None:
        """Block until ``user`` has ``n`` sessions: a session ends when its connection does,
        a moment after the client saw its LOGOUT answered."""
        deadline = time.monotonic() + timeout
        while self.sessions[user] != n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.sessions[user]} sessions of {user}, expected {n}")
            time.sleep(0.01)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        ready = threading.Event()
        server_ssl = None
        if self.tls is not None:
            server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ssl.load_cert_chain(self.tls.cert_file, self.tls.key_file)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, 0, ssl=server_ssl, limit=LINE_LIMIT)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="exchange-front", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("exchange front did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._abort(conn)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=2)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    @staticmethod
    def _abort(conn: _Conn) -> None:
        conn.closing = True
        for writer in (conn.client, conn.backend):
            if writer is not None:
                writer.transport.abort()

    async def _bye_all(self) -> None:
        for conn in list(self._conns):
            if conn.user is not None and not conn.closing:
                await self._send_bye(conn)

    async def _send_bye(self, conn: _Conn) -> None:
        self.byes += 1
        conn.closing = True
        with contextlib.suppress(OSError):
            conn.client.write(f"* BYE {BYE_TEXT}\r\n".encode())
            await conn.client.drain()
        self._abort(conn)

    # -- one connection (event-loop thread) ----------------------------------------------------

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_total += 1
        self.connections_open += 1
        conn = _Conn(c_writer)
        self._conns.add(conn)
        try:
            s_reader, s_writer = await asyncio.open_connection(
                *self.backend,
                ssl=self.backend_ssl,
                server_hostname=self.backend[0] if self.backend_ssl else None,
                limit=LINE_LIMIT,
            )
            conn.backend = s_writer
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._from_client(conn, c_reader, s_writer))
                tg.create_task(self._from_server(conn, s_reader))
        except* (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass  # either side went away: the other is dropped below
        finally:
            self._abort(conn)
            self._release(conn)
            self._conns.discard(conn)
            self.connections_open -= 1
            self._tasks.discard(task)

    def _release(self, conn: _Conn) -> None:
        for user in [*conn.logging_in.values(), *([conn.user] if conn.user else [])]:
            self.sessions[user] -= 1
        conn.logging_in.clear()
        conn.user = None

    async def _read_command(
        self, reader: asyncio.StreamReader, conn: _Conn, first: bytes | None = None
    ) -> Command | None:
        """One whole command, or None at EOF. Synchronizing literals are acknowledged here and
        rewritten as non-synchronizing; a command found too long is ended early or drained."""
        with self._lock:
            limit = self._max_command
        parts: list[bytes] = []
        literals: set[int] = set()
        length = 0
        too_long = False
        while True:
            line = first if first is not None else await reader.readuntil(b"\r\n")
            first = None
            length += len(line) - 2
            if limit is not None and length > limit:
                too_long = True
            m = _LITERAL.search(line)
            if m is None:
                parts.append(line)
                break
            n, plus = int(m.group(1)), bool(m.group(2))
            if too_long:
                if not plus:  # refused before the payload: the client sends no literal
                    parts.append(line)
                    break
                await reader.readexactly(n)  # sent anyway: dropped
                parts.append(line)
                continue
            if not plus:
                conn.client.write(CONTINUE)
                await conn.client.drain()
            parts.append(line[: m.start()] + b"{%d+}\r\n" % n)
            literals.add(len(parts))
            parts.append(await reader.readexactly(n))
        self.longest_command = max(self.longest_command, length)
        return Command(parts, frozenset(literals), length, too_long)

    async def _from_client(
        self, conn: _Conn, reader: asyncio.StreamReader, backend: asyncio.StreamWriter
    ) -> None:
        while not conn.closing:
            try:
                first = None
                if conn.raw_until is not None:  # a SASL response or IDLE's DONE
                    first = await reader.readuntil(b"\r\n")
                    # The command may have ended while we waited: then this is a new one.
                    if conn.raw_until is not None:
                        await self._sasl_response(conn, first, backend)
                        continue
                cmd = await self._read_command(reader, conn, first)
            except asyncio.IncompleteReadError:
                cmd = None
            if cmd is None:
                if backend.can_write_eof():
                    backend.write_eof()
                else:
                    backend.close()
                return
            await self._command(conn, cmd, backend)
            await asyncio.sleep(0)

    async def _sasl_response(self, conn: _Conn, line: bytes, backend: asyncio.StreamWriter) -> None:
        """Forward a line sent after ``+``; an AUTHENTICATE PLAIN response names the user,
        whose session limit is checked here (the backend's exchange is then cancelled)."""
        tag = conn.raw_until
        user = _plain_user(line.strip()) if tag in conn.logging_in else None
        if tag is not None and user is not None:
            old = conn.logging_in[tag]
            self.sessions[old] -= 1
            with self._lock:
                limit, text = self._user_limit, self._user_limit_text
            if limit is not None and self.sessions[user] >= limit:
                del conn.logging_in[tag]
                self.user_limit_refusals += 1
                conn.swallow.add(tag)
                backend.write(b"*\r\n")  # RFC 3501: cancels the authentication
                await backend.drain()
                conn.client.write(tag + b" NO " + text.encode() + b"\r\n")
                await conn.client.drain()
                return
            conn.logging_in[tag] = user
            self._count_session(user)
        backend.write(line)
        await backend.drain()

    def _count_session(self, user: str) -> None:
        self.sessions[user] += 1
        self.peak_sessions[user] = max(self.peak_sessions[user], self.sessions[user])

    async def _command(self, conn: _Conn, cmd: Command, backend: asyncio.StreamWriter) -> None:
        tokens = cmd.tokens
        tag = tokens[0] if tokens else b"*"
        name = tokens[1].decode("ascii", "replace").upper() if len(tokens) > 1 else ""
        if name == "UID" and len(tokens) > 2:
            name = tokens[2].decode("ascii", "replace").upper()
        self.commands += 1
        self.command_names[name] += 1

        async def answer(text: str) -> None:
            # A server answers commands in the order they came (a client that pipelines relies
            # on it): the front's own answer waits for the backend's to the commands before.
            while conn.forwarded and not conn.closing:  # noqa: ASYNC110 - a test server's poll
                await asyncio.sleep(0.001)
            conn.client.write(tag + b" " + text.encode() + b"\r\n")
            await conn.client.drain()

        if cmd.too_long:
            self.too_long += 1
            await answer(f"BAD {TOO_LONG_TEXT}")
            return
        if name == "STARTTLS":
            await answer("BAD Command received in Invalid state.")
            return
        if name in ("LOGIN", "AUTHENTICATE") and conn.user is None:
            user = _login_user(name, tokens)
            with self._lock:
                limit, text = self._user_limit, self._user_limit_text
            if limit is not None and user is not None and self.sessions[user] >= limit:
                self.user_limit_refusals += 1
                await answer(f"NO {text}")
                return
            conn.logging_in[tag] = user or ""
            self._count_session(user or "")
            if name == "AUTHENTICATE":
                conn.raw_until = tag
        elif conn.user is not None and name != "LOGOUT":
            kind, ms, then_close = self._rule_for(name)
            if kind == "bye":
                await self._send_bye(conn)
                return
            if kind == "throttle":
                self.throttled += 1
                await answer("NO " + THROTTLE_TEXT.format(ms=ms))
                if then_close:
                    self._abort(conn)
                return
        if name == "IDLE":
            conn.raw_until = tag
        conn.forwarded.add(tag)
        backend.write(b"".join(cmd.parts))
        await backend.drain()

    def _rule_for(self, name: str) -> tuple[str, int, bool]:
        """("bye" | "throttle" | "", backoff ms, close after throttling) for a command."""
        with self._lock:
            for rule in self._byes:
                if rule.hit(name):
                    return "bye", 0, False
            for rule, ms, then_close in self._throttles:
                if rule.hit(name):
                    return "throttle", ms, then_close
        return "", 0, False

    # -- server responses ----------------------------------------------------------------------

    async def _from_server(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        while True:
            parts = await _read_response(reader)
            if parts is None:
                conn.closing = True
                conn.client.close()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(conn.client.wait_closed(), 2)
                return
            first = parts[0]
            if _FETCH.match(first):
                parts = self._rewrite_fetch(parts)
            elif b"CAPABILITY" in first:
                parts = [_CAPS_DROPPED.sub(b"", p) if i % 2 == 0 else p
                         for i, p in enumerate(parts)]  # fmt: skip
            if not first.startswith((b"*", b"+")) and not self._completed(conn, first):
                continue
            if conn.closing:
                return
            conn.client.write(b"".join(parts))
            await conn.client.drain()
            await asyncio.sleep(0)  # one response per loop turn, never a whole buffer at once

    def _completed(self, conn: _Conn, line: bytes) -> bool:
        """Note a tagged response; False when the client must not see it."""
        tag, _, rest = line.partition(b" ")
        conn.forwarded.discard(tag)
        if conn.raw_until == tag:
            conn.raw_until = None
        if tag in conn.swallow:
            conn.swallow.discard(tag)
            return False
        user = conn.logging_in.pop(tag, None)
        if user is not None and rest.upper().startswith(b"OK"):
            conn.user = user
        elif user is not None:
            self.sessions[user] -= 1
        return True

    def _rewrite_fetch(self, parts: list[bytes]) -> list[bytes]:
        """RFC822.SIZE estimated, BODY[] substituted: ``parts`` alternate line, literal."""
        with self._lock:
            percent, fixed = self._size_percent, self._size_fixed
            sub_uids, needles = set(self._sub_uids), list(self._sub_needles)
        lines = parts[0::2]
        uid_m = next((m for p in lines if (m := _UID.search(p))), None)
        uid = int(uid_m.group(1)) if uid_m else 0
        out = list(parts)
        if percent or fixed:

            def estimate(m: re.Match[bytes]) -> bytes:
                self.sizes_rewritten += 1
                size = max(0, round(int(m.group(1)) * (1 + percent / 100)) + fixed)
                return b"RFC822.SIZE %d" % size

            for i in range(0, len(out), 2):
                out[i] = _SIZE.sub(estimate, out[i])
        if sub_uids or needles:
            for i in range(0, len(out) - 1, 2):
                m = _BODY.search(out[i])
                if m is None:
                    continue
                body = out[i + 1]
                head = body.split(b"\r\n\r\n", 1)[0]
                if uid in sub_uids or any(n in head for n in needles):
                    new = substitute_message(uid, body)
                    out[i] = out[i][: m.start()] + b"BODY[] {%d}\r\n" % len(new)
                    out[i + 1] = new
                    self.substituted.append(uid)
        return out


async def _read_response(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One whole server response: [line, literal, line, ..., line]; None at EOF."""
    parts: list[bytes] = []
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            return None
        parts.append(line)
        m = _LITERAL.search(line)
        if m is None or line.startswith(b"+"):
            return parts
        parts.append(await reader.readexactly(int(m.group(1))))


def _plain_user(token: bytes) -> str | None:
    """The authentication identity of a SASL PLAIN response (``authz NUL authc NUL pass``)."""
    try:
        fields = base64.b64decode(token, validate=True).split(b"\0")
    except (binascii.Error, ValueError):
        return None
    return fields[1].decode("utf-8", "replace") if len(fields) == 3 else None


def _login_user(name: str, tokens: list[bytes]) -> str | None:
    if name == "LOGIN":
        return tokens[2].decode("utf-8", "replace") if len(tokens) > 2 else None
    if len(tokens) > 3 and tokens[2].upper() == b"PLAIN":  # SASL-IR
        return _plain_user(tokens[3])
    return None
