"""aioimaplib 2.0.3 defects (docs/imap-interop.md §1), each shown twice.

For every defect one test asserts that the BARE library still misbehaves (so we learn when
upstream fixes it: such a test then fails and the workaround can go) and one shows that the
``imap`` boundary absorbs it. A bare-library hang is bounded with ``asyncio.wait``/timeouts.

Real Dovecot where it can show the defect; a small scripted server (``FakeImap``) for what a
correct server never does (stalls, cuts, Exchange's quirks, huge single responses).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import aioimaplib
import pytest
from aioimaplib import aioimaplib as lib

from legacyflo_daemon.errors import (
    AuthenticationFailed,
    ImapError,
    PermanentError,
    TransientError,
)
from legacyflo_daemon.imap import opening as imap_open
from legacyflo_daemon.imap import session as imap
from legacyflo_daemon.imap._aioimaplib.commands import LinearFetchCommand, SafeCommand
from legacyflo_daemon.imap._aioimaplib.protocol import ImapProtocol
from legacyflo_daemon.imap.session import Endpoint, Session
from legacyflo_daemon.imap.syntax.parse import EXCHANGE_FAILED, NO_BODY
from legacyflo_daemon.model import Secret
from testkit.imap import ServerAccount
from testkit.maildir import MailSpec, create_folder, load_messages
from testkit.mailgen import make_message, utc
from testkit.proxy import FaultProxy

# -- a scripted IMAP server ----------------------------------------------------------------------

CAPS = b"IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS"
Handler = Callable[
    ["FakeImap", bytes, bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]


async def _ok(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter) -> None:
    w.write(tag + b" OK done\r\n")


async def _bad(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter) -> None:
    w.write(tag + b" BAD unknown command\r\n")


async def _capability(
    s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter
) -> None:
    w.write(b"* CAPABILITY " + s.caps + b"\r\n" + tag + b" OK done\r\n")


async def _examine(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter) -> None:
    w.write(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n* OK [UIDNEXT 4] n\r\n")
    w.write(tag + b" OK [READ-ONLY] done\r\n")


async def _logout(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter) -> None:
    w.write(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
    await w.drain()
    w.close()


_DEFAULTS: dict[str, Handler] = {
    "CAPABILITY": _capability,
    "AUTHENTICATE": _ok,
    "LOGIN": _ok,
    "EXAMINE": _examine,
    "SELECT": _examine,
    "LOGOUT": _logout,
    "NOOP": _ok,
}


class FakeImap:
    """Greets, then answers each command line with a handler (``"UID FETCH"``, ``"LOGIN"``...).

    ``lines`` records every line received. Runs in the test's event loop.
    """

    def __init__(
        self,
        handlers: dict[str, Handler] | None = None,
        *,
        greeting: bytes | None = None,
        caps: bytes = CAPS,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.handlers = handlers or {}
        self.tls = tls
        self.caps = caps
        self.greeting = (
            b"* OK [CAPABILITY " + caps + b"] fake ready\r\n" if greeting is None else greeting
        )
        self.lines: list[bytes] = []
        self.disconnected = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FakeImap:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()

    def endpoint(
        self, *, timeout: float = 5.0, connect_timeout: float = 5.0, password: str = "pw"
    ) -> Endpoint:
        return Endpoint(
            "127.0.0.1",
            self.port,
            "plain",
            None,
            "user",
            Secret(password),
            timeout=timeout,
            connect_timeout=connect_timeout,
        )

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            writer.write(self.greeting)
            while line := await reader.readline():
                self.lines.append(line)
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                words = rest.split(b" ")
                name = words[0].upper().decode()
                if name == "UID" and len(words) > 1:
                    name += " " + words[1].upper().decode()
                handler = self.handlers.get(name) or _DEFAULTS.get(name, _bad)
                await handler(self, tag, rest, reader, writer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.disconnected.set()
            writer.transport.abort()
            self._writers.discard(writer)


async def bare_connect(port: int, limit: float) -> aioimaplib.IMAP4:
    c = aioimaplib.IMAP4("127.0.0.1", port, timeout=limit)
    await c.wait_hello_from_server()
    return c


def bare_close(c: aioimaplib.IMAP4) -> None:
    """What it takes to stop a bare client for sure: abort the transport, cancel its tasks."""
    if c.protocol.transport is not None:
        c.protocol.transport.abort()
    for task in [*c.protocol.tasks, *c.tasks]:
        task.cancel()


async def still_running(aw: Awaitable[Any], seconds: float) -> asyncio.Task[Any]:
    """Start ``aw`` and assert it is not done after ``seconds``; return the task (to clean up)."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    assert not done, "the bare library finished: has upstream fixed this defect?"
    return task


async def finish(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.done()
    if not task.cancelled():
        task.exception()  # retrieve it, so asyncio does not log "never retrieved"


# -- 0. the internals our protocol class overrides still exist -------------------------------------


def test_aioimaplib_is_the_version_whose_internals_we_override() -> None:
    assert metadata.version("aioimaplib") == "2.0.3"
    proto = lib.IMAP4ClientProtocol
    for name in (
        "_handle_responses",
        "_handle_line",
        "_untagged_response",
        "_continuation",
        "_response_done",
        "data_received",
        "connection_lost",
        "send",
        "execute",
    ):
        assert callable(getattr(proto, name)), name
    for name in (
        "append_literal_data",
        "begin_literal_data",
        "wait_literal_data",
        "wait_data",
        "append_to_resp",
        "_reset_timer",
    ):
        assert callable(getattr(lib.Command, name)), name
    # LinearFetchCommand.append_to_resp and SafeCommand._reset_timer use these attributes.
    loop = asyncio.new_event_loop()
    try:
        command = lib.Command("NOOP", "T1", loop=loop)
        command.append_to_resp(b"x")
        assert (command._resp_result, command._resp_lines, command._timeout) == (
            "Pending",
            [b"x"],
            None,
        )
    finally:
        loop.close()
    assert lib.literal_data_re.match(b"* 1 FETCH (BODY[] {12}")["size"] == b"12"
    assert lib.message_data_re.match(b"1 FETCH (UID 1)")


# -- 1. receive path: one chunk with many lines (no network) ---------------------------------------


def _fetch_lines(n: int, tag: bytes = b"T1") -> bytes:
    return (
        b"".join(b"* %d FETCH (UID %d FLAGS ())\r\n" % (i, i) for i in range(1, n + 1))
        + tag
        + b" OK done\r\n"
    )


def _list_lines(n: int) -> bytes:
    return b"".join(b'* LIST () "/" f%05d\r\n' % i for i in range(n))


@pytest.mark.blocks_loop("the bare library recurses once per line inside data_received")
async def test_bare_recursion_error_on_a_chunk_of_2000_lines() -> None:
    proto = lib.IMAP4ClientProtocol(asyncio.get_running_loop())
    proto.state = lib.SELECTED
    cmd = lib.FetchCommand("T1", "1:2000", "(UID FLAGS)", prefix="UID", loop=proto.loop)
    proto.pending_async_commands["FETCH"] = cmd
    with pytest.raises(RecursionError):  # issue #118: one recursion per line
        proto.data_received(_fetch_lines(2000))


async def test_boundary_parses_a_chunk_of_8000_lines_without_recursion() -> None:
    proto = ImapProtocol(asyncio.get_running_loop())
    proto.state = lib.SELECTED
    cmd = LinearFetchCommand("T1", "1:8000", "(UID FLAGS)", prefix="UID", loop=proto.loop)
    proto.pending_async_commands["FETCH"] = cmd
    start = time.perf_counter()
    proto.data_received(_fetch_lines(8000))
    assert time.perf_counter() - start < 2.0
    assert cmd.response.result == "OK" and len(cmd.response.lines) == 8001
    assert proto.failure is None


@pytest.mark.blocks_loop("the bare library copies the rest of a chunk at every line")
async def test_bare_chunk_parsing_copies_the_rest_of_the_chunk_at_every_line() -> None:
    # With the recursion limit raised (the usual advice), the recursion keeps a copy of the
    # remaining chunk per line alive: 66 KB of 3,000 LIST lines peak at ~100 MB.
    proto = lib.IMAP4ClientProtocol(asyncio.get_running_loop())
    proto.state = lib.AUTH
    proto.pending_async_commands["LIST"] = lib.Command("LIST", "T1", loop=proto.loop)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    tracemalloc.start()
    try:
        proto.data_received(_list_lines(3000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        sys.setrecursionlimit(old)
    assert peak > 50_000_000


async def test_boundary_chunk_parsing_memory_is_linear() -> None:
    proto = ImapProtocol(asyncio.get_running_loop())
    proto.state = lib.AUTH
    cmd = SafeCommand("LIST", "T1", loop=proto.loop)
    proto.pending_async_commands["LIST"] = cmd
    tracemalloc.start()
    try:
        proto.data_received(_list_lines(3000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
    assert len(cmd.response.lines) == 3000


def test_bare_fetch_rescans_the_whole_response_after_every_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scanned = [0]
    real = lib.matched_parenthesis

    def counting(data: bytes) -> bool:
        scanned[0] += len(data)
        return bool(real(data))

    monkeypatch.setattr(lib, "matched_parenthesis", counting)
    lines = [b"1 FETCH (UID 1 BODY[] {3}", bytearray(b"abc")] + [b" X (%d" % i for i in range(2000)]
    for cmd_class in (lib.FetchCommand, LinearFetchCommand):
        scanned[0] = 0
        loop = asyncio.new_event_loop()
        try:
            cmd = cmd_class("T1", "1", "(BODY[])", prefix="UID", loop=loop)
            for line in lines:
                cmd.append_to_resp(line)
                assert cmd.wait_data()  # parentheses stay open: the response goes on
        finally:
            loop.close()
        if cmd_class is lib.FetchCommand:
            assert scanned[0] > 2000 * 2000 * 5 // 2  # O(lines²) bytes joined and counted
        else:
            assert scanned[0] == 0  # the boundary counts each line once, on arrival


def test_bare_and_boundary_on_parentheses_inside_quoted_strings() -> None:
    # Issue #51: an ENVELOPE subject "(test" leaves the library waiting for a ")" forever,
    # so the next response would be glued onto this one.
    line = b'1 FETCH (UID 1 ENVELOPE ("1 Jan 2024" "(test \\" x" NIL NIL NIL NIL NIL NIL NIL NIL))'
    loop = asyncio.new_event_loop()
    try:
        bare = lib.FetchCommand("T1", "1", "(ENVELOPE)", prefix="UID", loop=loop)
        bare.append_to_resp(line)
        assert bare.wait_data()  # still "open": the defect
        ours = LinearFetchCommand("T1", "1", "(ENVELOPE)", prefix="UID", loop=loop)
        ours.append_to_resp(line)
        assert not ours.wait_data()
    finally:
        loop.close()


# -- 2. over the network, scripted server ---------------------------------------------------------


async def _many(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter) -> None:
    w.write(_fetch_lines(4000, tag))


@pytest.mark.blocks_loop("the bare library rescans every line of a FETCH after each new one")
async def test_bare_fetch_of_4000_lines_hangs_past_its_timeout() -> None:
    async with FakeImap({"UID FETCH": _many}) as srv:
        c = await bare_connect(srv.port, limit=0.5)
        await c.login("user", "pw")
        await c.select("INBOX")
        task = await still_running(
            c.uid("fetch", "1:4000", "(UID FLAGS)"), 2.0
        )  # 4 times its timeout
        assert c.protocol.transport.is_closing()  # asyncio closed it after the RecursionError
        bare_close(c)
        await finish(task)


async def test_boundary_fetch_of_4000_lines_in_one_response() -> None:
    async with FakeImap({"UID FETCH": _many}) as srv:
        conn = await imap_open.open_connection(srv.endpoint(timeout=2))
        conn.proto.state = lib.SELECTED
        reply = await conn.run(
            "FETCH", ["1:4000", "(UID FLAGS)"], prefix="UID", fetch=True, what="f"
        )
        assert reply.result == "OK" and len(reply.lines) == 4000
        conn.kill("done")


async def test_bare_connect_hangs_when_capability_gets_no_answer() -> None:
    async def silent(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: Any) -> None:
        pass

    async with FakeImap({"CAPABILITY": silent}, greeting=b"* OK fake ready\r\n") as srv:
        c = aioimaplib.IMAP4("127.0.0.1", srv.port, timeout=0.3)
        task = await still_running(
            c.wait_hello_from_server(), 1.5
        )  # issue #128: 5 times its timeout
        bare_close(c)  # the only way out: abort the transport and cancel its tasks
        await finish(task)


async def test_boundary_connect_gives_up_when_capability_gets_no_answer() -> None:
    async def silent(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: Any) -> None:
        pass

    async with FakeImap({"CAPABILITY": silent}, greeting=b"* OK fake ready\r\n") as srv:
        start = time.monotonic()
        with pytest.raises(TransientError, match=r"no answer for 0\.3 s"):
            await imap.connect(srv.endpoint(timeout=0.3, connect_timeout=0.3))
        assert time.monotonic() - start < 1.5
        await asyncio.wait_for(srv.disconnected.wait(), 2)  # the connection was closed


async def test_boundary_connect_gives_up_without_greeting() -> None:
    async with FakeImap(greeting=b"") as srv:
        start = time.monotonic()
        with pytest.raises(TransientError, match=r"no greeting within 0\.3 s"):
            await imap.connect(srv.endpoint(connect_timeout=0.3))
        assert time.monotonic() - start < 1.5


GREETING_BYE = b"* BYE Too many connections. Suggested Backoff Time: 2500 milliseconds\r\n"


async def test_bare_greeting_bye_waits_for_the_timeout() -> None:
    async with FakeImap(greeting=GREETING_BYE) as srv:
        c = aioimaplib.IMAP4("127.0.0.1", srv.port, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await c.wait_hello_from_server()
        assert time.monotonic() - start >= 0.45
        bare_close(c)
        await asyncio.sleep(0)


async def test_boundary_greeting_bye_is_transient_at_once_with_the_hint() -> None:
    async with FakeImap(greeting=GREETING_BYE) as srv:
        start = time.monotonic()
        with pytest.raises(TransientError, match="Too many connections") as info:
            await imap.connect(srv.endpoint(connect_timeout=5))
        assert time.monotonic() - start < 1.0
        assert info.value.retry_after == 2.5


async def _cut_mid_literal(
    s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter
) -> None:
    w.write(b"* 1 FETCH (UID 1 BODY[] {1000}\r\n" + b"x" * 100)
    await w.drain()
    w.transport.abort()


async def test_bare_disconnect_mid_literal_waits_for_the_timeout() -> None:
    async with FakeImap({"UID FETCH": _cut_mid_literal}) as srv:
        c = await bare_connect(srv.port, limit=1.0)
        await c.login("user", "pw")
        await c.select("INBOX")
        start = time.monotonic()
        with pytest.raises(lib.CommandTimeout):  # neither TimeoutError nor ConnectionError
            await c.uid("fetch", "1", "(UID BODY.PEEK[])")
        assert time.monotonic() - start >= 0.9
        assert c.get_state() == lib.SELECTED  # still believes all is well
        start = time.monotonic()
        with pytest.raises(TimeoutError):  # every later command waits the full timeout too
            await c.noop()
        assert time.monotonic() - start >= 0.9
        bare_close(c)


async def test_boundary_disconnect_mid_literal_fails_fast_and_kills_the_session() -> None:
    async with (
        FakeImap({"UID FETCH": _cut_mid_literal}) as srv,
        await imap.connect(srv.endpoint(timeout=5.0)) as session,
    ):
        await session.examine("INBOX")
        start = time.monotonic()
        with pytest.raises(TransientError, match="connection was lost"):
            await session.fetch_bodies("1")
        assert time.monotonic() - start < 1.0
        assert not session.alive
        start = time.monotonic()
        with pytest.raises(TransientError, match="no longer usable"):
            await session.examine("INBOX")
        assert time.monotonic() - start < 0.1


async def _challenge(
    s: FakeImap, tag: bytes, rest: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    w.write(b"+ eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIn0=\r\n")
    await w.drain()
    answer = await r.readline()  # RFC 4954/7628: the client must answer the challenge
    s.lines.append(answer)
    w.write(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")


async def test_bare_rejected_xoauth2_hangs_until_the_timeout() -> None:
    async with FakeImap({"AUTHENTICATE": _challenge}) as srv:
        c = await bare_connect(srv.port, limit=0.5)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await c.xoauth2("user", "token")
        assert time.monotonic() - start >= 0.45
        bare_close(c)


async def test_boundary_answers_an_authentication_challenge_with_cancel() -> None:
    async with FakeImap({"AUTHENTICATE": _challenge}) as srv:
        start = time.monotonic()
        with pytest.raises(AuthenticationFailed, match="authentication failed for 'user'"):
            await imap.connect(srv.endpoint(timeout=5.0))
        assert time.monotonic() - start < 1.0
        assert srv.lines[-1] == b"*\r\n"


THROTTLED = b"NO Request is throttled. Suggested Backoff Time: "


@pytest.mark.parametrize(
    ("command", "reply", "error", "retry_after"),
    [
        ("AUTHENTICATE", THROTTLED + b"299609 milliseconds", TransientError, 299.609),
        ("AUTHENTICATE", b"NO [UNAVAILABLE] Server Unavailable. 15", TransientError, None),
        ("AUTHENTICATE", b"NO LOGIN failed.", AuthenticationFailed, None),
        ("AUTHENTICATE", b"BAD Command received in Invalid state.", PermanentError, None),
        ("EXAMINE", b"NO User is authenticated but not connected.", AuthenticationFailed, None),
        ("EXAMINE", THROTTLED + b"1500 milliseconds", TransientError, 1.5),
        ("EXAMINE", b"NO [NONEXISTENT] Mailbox doesn't exist", PermanentError, None),
    ],
)
async def test_boundary_classifies_exchange_replies(
    command: str, reply: bytes, error: type[ImapError], retry_after: float | None
) -> None:
    async def answer(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter) -> None:
        w.write(tag + b" " + reply + b"\r\n")

    async with FakeImap({command: answer}) as srv:
        with pytest.raises(error) as info:
            async with await imap.connect(srv.endpoint()) as session:
                await session.examine("INBOX")
        assert type(info.value) is error
        assert "pw" not in str(info.value)
        if isinstance(info.value, TransientError):
            assert info.value.retry_after == retry_after


async def test_boundary_bye_mid_command_is_transient_with_the_servers_words() -> None:
    async def bye(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter) -> None:
        w.write(b"* BYE Connection closed. 14\r\n")
        await w.drain()
        w.transport.abort()

    async with FakeImap({"UID SEARCH": bye}) as srv, await imap.connect(srv.endpoint()) as session:
        await session.examine("INBOX")
        with pytest.raises(TransientError, match=r"closed the connection: Connection closed\. 14"):
            await session.uid_search(["ALL"])


# -- 3. Exchange's FETCH quirks, scripted ------------------------------------------------------

BODY = b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nHello ) ( { } world\r\n"
SUBSTITUTE = (
    b"From: Microsoft Exchange Server\r\n"
    b"Subject: Retrieval using the IMAP4 protocol failed for the following message: 2\r\n\r\n"
    b"The server couldn't retrieve the following message.\r\n"
)


async def _exchange_fetch(
    s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter
) -> None:
    if b" 1:4 " in rest:
        w.write(b"* 1 FETCH (BODY[] {%d}\r\n%s FLAGS (\\Seen $Label1) UID 1 " % (len(BODY), BODY))
        w.write(b'INTERNALDATE "26-Nov-2025 17:30:22 +0100")\r\n')
        w.write(b"* 2 FETCH (UID 2 FLAGS () BODY[] {%d}\r\n%s)\r\n" % (len(SUBSTITUTE), SUBSTITUTE))
        w.write(b'* 3 FETCH (UID 3 FLAGS (\\Seen) INTERNALDATE "01-Jan-2020 00:00:00 +0000")\r\n')
        w.write(b"* 4 FETCH (UID 4 BODY[] NIL)\r\n")
        w.write(tag + b" OK FETCH completed.\r\n")
    elif b" 5:7 " in rest or b" 6 " in rest:
        w.write(
            tag + b" NO The requested message could not be converted to an RFC-822 message.\r\n"
        )
    else:
        uid = rest.split(b" ")[2]
        w.write(b"* 1 FETCH (UID %s BODY[] {%d}\r\n%s)\r\n" % (uid, len(BODY), BODY))
        w.write(tag + b" OK FETCH completed.\r\n")


async def test_boundary_exchange_fetch_quirks_become_per_message_errors() -> None:
    async with (
        FakeImap({"UID FETCH": _exchange_fetch}) as srv,
        await imap.connect(srv.endpoint()) as session,
    ):
        await session.examine("INBOX")
        msgs = {m.uid: m for m in await session.fetch_bodies("1:4")}
        assert msgs[1].body == BODY and msgs[1].error is None  # items after the literal
        assert msgs[1].flags == ("\\Seen", "$Label1")
        assert msgs[1].internaldate_raw == "26-Nov-2025 17:30:22 +0100"
        assert msgs[2].error == EXCHANGE_FAILED and msgs[2].body is None
        assert msgs[3].error == NO_BODY  # OK without any body
        assert msgs[4].error == NO_BODY  # BODY[] NIL
        # A NO for a batch: each UID is fetched alone; only the bad one fails.
        split = {m.uid: m for m in await session.fetch_bodies("5:7")}
        assert split[5].body == BODY and split[7].body == BODY
        assert split[6].body is None and "could not be converted" in (split[6].error or "")
        assert session.alive


# -- 4. real Dovecot ------------------------------------------------------------------------------


def _endpoint(acct: ServerAccount, **kw: Any) -> Endpoint:
    args: dict[str, Any] = {
        "host": acct.host,
        "port": acct.port_tls,
        "tls": "implicit",
        "ssl_context": acct.server.tls.client_context(),
        "user": acct.user,
        "password": Secret(acct.password),
        "timeout": 5.0,
        "connect_timeout": 5.0,
    }
    args.update(kw)
    return Endpoint(**args)


async def bare_dovecot(
    acct: ServerAccount, limit: float = 2.0, login: bool = True
) -> aioimaplib.IMAP4:
    c = aioimaplib.IMAP4_SSL(
        acct.host, acct.port_tls, timeout=limit, ssl_context=acct.server.tls.client_context()
    )
    await c.wait_hello_from_server()
    if login:
        assert (await c.login(aioimaplib.quoted(acct.user), acct.password)).result == "OK"
    return c


def _load(acct: ServerAccount, folder: str, n: int) -> None:
    if folder != "INBOX":
        create_folder(acct.server, acct.user, folder)
    specs = [
        MailSpec(
            make_message(
                subject=f"m{i}",
                date=utc(2020, 1, 1 + i % 28),
                message_id=f"<m{i}@x>",
                body=f"body {i}\n",
            ),
            frozenset(),
            utc(2020, 1, 1 + i % 28),
        )
        for i in range(n)
    ]
    load_messages(acct.server, acct.user, folder, specs)


async def test_bare_examine_leaves_the_state_at_auth(source_account: ServerAccount) -> None:
    _load(source_account, "INBOX", 2)
    c = await bare_dovecot(source_account)
    assert (await c.examine("INBOX")).result == "OK"
    with pytest.raises(lib.Abort, match="illegal in state AUTH"):
        await c.uid("fetch", "1:2", "(UID FLAGS)")
    bare_close(c)


async def test_boundary_examine_then_fetch(source_account: ServerAccount) -> None:
    _load(source_account, "INBOX", 2)
    async with await imap.connect(_endpoint(source_account)) as session:
        info = await session.examine("INBOX")
        assert info.read_only and info.exists == 2
        assert [m.uid for m in await session.fetch_meta("1:2")] == [1, 2]


NAMES = ["Sent Items", 'Quote"d', "Brace{1}"]  # what the bare library gets wrong


async def test_bare_sends_mailbox_names_unquoted(source_account: ServerAccount) -> None:
    for name in NAMES:
        _load(source_account, name, 1)
    c = await bare_dovecot(source_account)
    for name in NAMES:
        assert (await c.select(name)).result != "OK", name
    bare_close(c)


async def test_boundary_quotes_mailbox_names(source_account: ServerAccount) -> None:
    names = {n: n for n in [*NAMES, "back\\slash", "a%b", "x(y)"]} | {"Café & Co": "Caf&AOk- &- Co"}
    for name in names:
        _load(source_account, name, 1)  # the loader takes decoded names
    async with await imap.connect(_endpoint(source_account)) as session:
        for wire in names.values():  # the boundary takes wire (modified UTF-7) names
            assert (await session.examine(wire)).exists == 1, wire


async def test_bare_sends_the_user_name_unquoted(
    new_source_account: Callable[..., ServerAccount],
) -> None:
    acct = new_source_account("pw")
    acct.server.add_user("sp ace", "pw")
    c = await bare_dovecot(acct, login=False)
    assert (await c.login("sp ace", "pw")).result == "BAD"
    bare_close(c)


async def test_boundary_logs_in_a_user_name_with_space(
    new_source_account: Callable[..., ServerAccount],
) -> None:
    acct = new_source_account("pw")
    acct.server.add_user("sp ace2", 'p"w')
    async with await imap.connect(_endpoint(acct, user="sp ace2", password=Secret('p"w'))) as s:
        assert s.alive


async def test_bare_mangles_listed_names_containing_star_space(
    source_account: ServerAccount,
) -> None:
    _load(source_account, "x* y", 1)
    c = await bare_dovecot(source_account)
    lines = (await c.list('""', "*")).lines
    assert any(line.endswith(b'"xy"') for line in lines)
    assert not any(b"x* y" in line for line in lines)
    bare_close(c)


async def test_boundary_lists_names_containing_star_space(source_account: ServerAccount) -> None:
    _load(source_account, "x* y", 1)
    async with await imap.connect(_endpoint(source_account)) as session:
        assert "x* y" in {e.name for e in await session.list_folders()}
        assert (await session.examine("x* y")).exists == 1


async def test_bare_login_ignores_logindisabled(source_account: ServerAccount) -> None:
    server = source_account.server
    c = aioimaplib.IMAP4(server.insecure_host, server.port_plain, timeout=2)
    await c.wait_hello_from_server()
    assert "LOGINDISABLED" in c.protocol.capabilities
    response = await c.login(source_account.user, source_account.password)
    assert any(b"the password was exposed" in line for line in response.lines)
    bare_close(c)


async def test_boundary_refuses_to_log_in_when_logindisabled(source_account: ServerAccount) -> None:
    server = source_account.server
    ep = _endpoint(source_account, host=server.insecure_host, port=server.port_plain, tls="plain")
    with pytest.raises(PermanentError, match="LOGINDISABLED"):
        await imap.connect(ep)
    async with await imap.connect(
        _endpoint(source_account, host=server.insecure_host, port=server.port_plain, tls="starttls")
    ) as s:
        assert s.tls and "LOGINDISABLED" not in s.capabilities
    logins = server.logins(source_account.user)
    assert len(logins) == 1 and logins[0].tls


def test_bare_has_no_starttls() -> None:
    assert not hasattr(aioimaplib.IMAP4, "starttls")
    assert not hasattr(lib.IMAP4ClientProtocol, "starttls")


async def test_bare_concurrent_commands_on_one_connection_break(
    source_account: ServerAccount,
) -> None:
    _load(source_account, "INBOX", 30)
    c = await bare_dovecot(source_account, limit=1.0)
    await c.select("INBOX")
    results = await asyncio.gather(
        *(c.uid("fetch", "1:30", "(UID FLAGS BODY.PEEK[])") for _ in range(3)),
        return_exceptions=True,
    )
    assert any(isinstance(r, BaseException) for r in results)
    bare_close(c)


async def test_boundary_serializes_concurrent_commands(source_account: ServerAccount) -> None:
    _load(source_account, "INBOX", 30)
    async with await imap.connect(_endpoint(source_account)) as session:
        await session.examine("INBOX")
        results = await asyncio.gather(
            *(session.fetch_bodies("1:30") for _ in range(3)),
            session.fetch_meta("1:30"),
            session.list_folders(),
            session.uid_search(["ALL"]),
        )
        for bodies in results[:3]:
            assert [m.uid for m in bodies] == list(range(1, 31))
            assert all(m.body and m.error is None for m in bodies)
        assert len(results[3]) == 30 and results[5] == list(range(1, 31))


def _password_forms(user: str, password: str) -> list[bytes]:
    """The password as it could show up in a log: raw, escaped, as a bytes repr, SASL token."""
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    forms = [password, escaped, repr(password.encode())[2:-1], repr(escaped.encode())[2:-1]]
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    return [*(f.encode() for f in forms), token, repr(token)[2:-1].encode()]


def _captured(caplog: pytest.LogCaptureFixture) -> bytes:
    return "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records).encode(
        "utf-8", "replace"
    )


async def test_bare_debug_log_shows_the_escaped_password_and_bodies(
    source_account: ServerAccount, caplog: pytest.LogCaptureFixture
) -> None:
    _load(source_account, "INBOX", 1)
    # imap sets this logger to WARNING at import; a careless config could set it back.
    caplog.set_level(logging.DEBUG, logger="aioimaplib.aioimaplib")
    c = await bare_dovecot(source_account)
    await c.select("INBOX")
    await c.uid("fetch", "1", "(BODY.PEEK[])")
    bare_close(c)
    text = _captured(caplog)
    escaped = source_account.password.replace("\\", "\\\\").replace('"', '\\"').encode()
    assert repr(escaped)[2:-1].encode() in text  # the scrub missed the escaped form
    assert b"body 0" in text  # message bodies, too


async def test_boundary_never_logs_passwords_or_bodies(
    source_account: ServerAccount, caplog: pytest.LogCaptureFixture
) -> None:
    _load(source_account, "INBOX", 1)
    caplog.set_level(logging.DEBUG)  # root at DEBUG
    for forced in (False, True):
        if forced:  # even if someone turns the library's own logger to DEBUG
            caplog.set_level(logging.DEBUG, logger="aioimaplib.aioimaplib")
        for mechanism in ("AUTH=PLAIN", "LOGIN"):
            conn = await imap_open.start(_endpoint(source_account))
            if mechanism == "LOGIN":
                conn.capabilities -= {"AUTH=PLAIN"}
            await imap_open.login(conn)
            session = Session(conn)
            await session.examine("INBOX")
            (msg,) = await session.fetch_bodies("1")
            assert b"body 0" in (msg.body or b"")
            await session.logout()
    text = _captured(caplog)
    assert any(r.name == "aioimaplib.aioimaplib" for r in caplog.records)  # capture works
    for form in _password_forms(source_account.user, source_account.password):
        assert form not in text, form
    assert b"body 0" not in text


async def test_bare_append_quirks(source_account: ServerAccount) -> None:
    _load(source_account, "Sent Items", 0)
    c = await bare_dovecot(source_account, limit=1.0)
    with pytest.raises(IndexError):
        await c.append(b"Subject: x\r\n\r\nx\r\n", "INBOX", flags="")
    r = await c.append(b"Subject: x\r\n\r\nx\r\n", "INBOX", flags="\\Seen \\Recent")
    assert r.result == "BAD"
    r = await c.append(b"Subject: x\r\n\r\nx\r\n", "Sent Items")
    assert r.result != "OK"
    with pytest.raises(TimeoutError):  # after the refused APPEND the connection is out of step
        await c.noop()
    bare_close(c)


async def test_boundary_append_quirks(source_account: ServerAccount) -> None:
    _load(source_account, "Sent Items", 0)
    async with await imap.connect(_endpoint(source_account)) as session:
        await session.append("INBOX", b"Subject: a\r\n\r\na\r\n", flags=[])
        await session.append("INBOX", b"Subject: b\r\n\r\nb\r\n", flags=["\\Seen", "\\Recent"])
        await session.append("Sent Items", b"Subject: c\r\n\r\nc\r\n")
        assert (await session.examine("INBOX")).exists == 2
        assert (await session.examine("Sent Items")).exists == 1


async def test_bare_plain_client_to_tls_port_waits_for_the_timeout(
    source_account: ServerAccount,
) -> None:
    c = aioimaplib.IMAP4(source_account.host, source_account.port_tls, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await c.wait_hello_from_server()
    assert time.monotonic() - start >= 0.45
    bare_close(c)


async def test_boundary_plain_client_to_tls_port_is_transient(
    source_account: ServerAccount,
) -> None:
    ep = _endpoint(source_account, tls="plain", connect_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TransientError, match="no greeting"):
        await imap.connect(ep)
    assert time.monotonic() - start < 2.0


MESSAGE = b"Subject: stalled\r\nMessage-ID: <stalled@x>\r\n\r\n" + b"line of text\r\n" * 5000


def _stored(acct: ServerAccount) -> int:
    with acct.imap() as c:
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK"
        return int(data[0])


async def test_bare_append_timeout_although_the_server_stored_it(
    source_account: ServerAccount, fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    proxy = fault_proxy(source_account.host, source_account.port_plain)
    proxy.stall_after_server_bytes(0, after=b"[APPENDUID")  # the tagged OK never arrives
    c = aioimaplib.IMAP4(proxy.host, proxy.port, timeout=1.0)
    await c.wait_hello_from_server()
    assert (
        await c.login(aioimaplib.quoted(source_account.user), source_account.password)
    ).result == "OK"
    with pytest.raises(lib.CommandTimeout):
        await c.append(MESSAGE, "INBOX")
    bare_close(c)
    assert _stored(source_account) == 1


async def test_boundary_append_timeout_is_transient_kills_the_session_and_says_so(
    source_account: ServerAccount, fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    proxy = fault_proxy(source_account.host, source_account.port_plain)
    proxy.stall_after_server_bytes(0, after=b"[APPENDUID")
    ep = _endpoint(source_account, host=proxy.host, port=proxy.port, tls="plain", timeout=1.0)
    async with await imap.connect(ep) as session:
        start = time.monotonic()
        with pytest.raises(TransientError, match="no answer for 1 s"):
            await session.append("INBOX", MESSAGE)
        assert 0.9 <= time.monotonic() - start < 3.0
        assert not session.alive
        with pytest.raises(TransientError, match="no longer usable"):
            await session.append("INBOX", MESSAGE)
    assert _stored(source_account) == 1  # why the copier must re-read before appending again
    assert imap.Session.append.__doc__ and "re-read the destination" in imap.Session.append.__doc__


BIG = 8 * 1024 * 1024


def _big_message() -> bytearray:
    return bytearray(b"Subject: big\r\n\r\n" + b"0123456789abcdef" * (BIG // 16) + b"\r\n")


async def test_bare_tls_append_holds_copies_of_the_whole_message(
    dest_account: ServerAccount,
) -> None:
    body = _big_message()
    c = await bare_dovecot(dest_account, limit=10.0)
    tracemalloc.start()
    try:
        assert (await c.append(body, "INBOX")).result == "OK"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bare_close(c)
    assert peak > BIG  # the encrypted message, read out of OpenSSL's buffer in one piece


async def test_boundary_tls_append_streams_under_flow_control(dest_account: ServerAccount) -> None:
    body = _big_message()
    async with await imap.connect(_endpoint(dest_account, timeout=10.0)) as session:
        tracemalloc.start()
        try:
            assert await session.append("INBOX", body) == 1
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < BIG // 4
