"""A scripted IMAP server on loopback: a tiny read-only mailbox that can misbehave on purpose.

Owns: just enough IMAP (plaintext, no TLS) for the daemon to log in, list, examine and fetch
one folder (INBOX) of fixed messages, plus the hostile behaviours a real server cannot be made
to show: a LOGIN refusal that echoes the password back, a STARTTLS answer followed by injected
lines, a BODY[] literal much larger than the RFC822.SIZE it announced (streamed, never held in
memory here), and a response line that never ends. It runs its own event loop in a thread, like
``testkit.proxy``, so sync and async tests can use it alike. Must not: be used where a real
server can show the behaviour (Dovecot, Cyrus, Courier are the rule).

    with ScriptedServer([msg1, msg2]) as server:
        server.oversize = {2: 50_000_000}        # UID 2 claims its size, sends 50 MB
        ...connect to server.host, server.port (plaintext: allow_plaintext = true)...
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

_COMMAND = re.compile(rb"^(\S+) (?:UID )?(\S+)(.*)$", re.IGNORECASE)
_CHUNK = b"x" * 65536


@dataclass
class ScriptedServer:
    """The server; ``messages`` are INBOX's messages, UIDs 1, 2, ... in that order."""

    messages: list[bytes]
    host: str = "127.0.0.1"
    port: int = 0
    # Behaviours (set before or while clients connect).
    login_reply: Callable[[str, str], bytes] | None = None  # (user, password) -> tagged text
    starttls_injection: bytes | None = None  # advertise STARTTLS; answer OK + these bytes
    oversize: dict[int, int] = field(default_factory=dict)  # UID -> bytes really sent
    endless_line: str | None = None  # a command answered with a line that never ends
    # What happened.
    commands: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._client, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="scripted-imap", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Close every client connection and the listener, then end the thread: nothing is
        left for the garbage collector to find open (it would blame whichever test runs)."""
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert self._loop is not None
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- one client ------------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caps = "IMAP4rev1 NAMESPACE" + (" STARTTLS" if self.starttls_injection else "")
        self._writers.add(writer)

        async def send(data: bytes) -> None:
            self.bytes_sent += len(data)
            writer.write(data)
            await writer.drain()

        try:
            await send(f"* OK [CAPABILITY {caps}] scripted server ready\r\n".encode())
            while line := await reader.readline():
                match = _COMMAND.match(line.rstrip(b"\r\n"))
                if match is None:
                    await send(b"* BAD what\r\n")
                    continue
                tag, name, rest = match.group(1), match.group(2).upper(), match.group(3)
                self.commands.append(name.decode())
                if self.endless_line == name.decode():  # the answer: a line without an end
                    await send(b'* LIST () "/" ')
                    while True:
                        await send(_CHUNK)
                        await asyncio.sleep(0)  # as in _fetch: one step, one chunk
                if not await self._answer(tag, name, rest, reader, send, caps):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(
        self,
        tag: bytes,
        name: bytes,
        rest: bytes,
        reader: asyncio.StreamReader,
        send: Callable[[bytes], object],
        caps: str,
    ) -> bool:
        async def ok(text: bytes = b"done") -> None:
            await send(tag + b" OK " + text + b"\r\n")  # type: ignore[misc]

        if name == b"CAPABILITY":
            await send(f"* CAPABILITY {caps}\r\n".encode())  # type: ignore[misc]
            await ok()
        elif name == b"STARTTLS" and self.starttls_injection is not None:
            await send(tag + b" OK Begin TLS negotiation now\r\n" + self.starttls_injection)  # type: ignore[misc]
        elif name == b"LOGIN":
            user, password = await _login_args(rest, reader, send)
            if self.login_reply is not None:
                await send(tag + b" " + self.login_reply(user, password) + b"\r\n")  # type: ignore[misc]
            else:
                await ok(b"logged in")
        elif name == b"NAMESPACE":
            await send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')  # type: ignore[misc]
            await ok()
        elif name == b"LIST":
            await send(b'* LIST (\\HasNoChildren) "/" INBOX\r\n')  # type: ignore[misc]
            await ok()
        elif name in (b"EXAMINE", b"SELECT"):
            n = len(self.messages)
            await send(  # type: ignore[misc]
                f"* {n} EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n* OK [UIDNEXT {n + 1}] x\r\n"
                "* FLAGS (\\Seen)\r\n".encode()
            )
            await ok(b"[READ-ONLY] done")
        elif name == b"FETCH":
            await self._fetch(rest, send)
            await ok()
        elif name == b"LOGOUT":
            await send(b"* BYE bye\r\n")  # type: ignore[misc]
            await ok()
            return False
        else:
            await ok()
        return True

    async def _fetch(self, rest: bytes, send: Callable[[bytes], object]) -> None:
        text = rest.decode("ascii", "replace")
        uids = _expand(text.split()[0], len(self.messages))
        body = "BODY.PEEK[]" in text.upper()
        for uid in uids:
            data = self.messages[uid - 1]
            head = (
                f'* {uid} FETCH (UID {uid} FLAGS (\\Seen) INTERNALDATE "01-Jan-2020 00:00:00 +0000"'
                f" RFC822.SIZE {len(data)}"
            )
            if not body:
                header = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                field_items = " BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]"
                await send(
                    f"{head}{field_items} {{{len(header)}}}\r\n".encode() + header + b")\r\n"
                )  # type: ignore[misc]
                continue
            real = self.oversize.get(uid)
            if real is None:
                await send(f"{head} BODY[] {{{len(data)}}}\r\n".encode() + data + b")\r\n")  # type: ignore[misc]
                continue
            await send(f"{head} BODY[] {{{real}}}\r\n".encode())  # type: ignore[misc]
            left = real
            while left > 0:
                piece = _CHUNK[: min(left, len(_CHUNK))]
                await send(piece)  # type: ignore[misc]
                left -= len(piece)
                # drain() does not yield while the reader keeps up: without this, one step of
                # this task writes for hundreds of ms (the tests' loop-blocking check sees it).
                await asyncio.sleep(0)
            await send(b")\r\n")  # type: ignore[misc]


async def _login_args(
    rest: bytes, reader: asyncio.StreamReader, send: Callable[[bytes], object]
) -> tuple[str, str]:
    """The user and password of ``LOGIN`` (quoted strings or synchronizing literals)."""
    values: list[bytes] = []
    data = rest.strip()
    while len(values) < 2:
        if data.startswith(b'"'):
            end, value = 1, bytearray()
            while data[end : end + 1] != b'"':
                if data[end : end + 1] == b"\\":
                    end += 1
                value += data[end : end + 1]
                end += 1
            values.append(bytes(value))
            data = data[end + 1 :].strip()
        elif data.startswith(b"{"):
            size = int(data[1 : data.index(b"}")].rstrip(b"+"))
            if not data[: data.index(b"}")].endswith(b"+"):
                await send(b"+ go on\r\n")  # type: ignore[misc]
            literal = await reader.readexactly(size)
            values.append(literal)
            data = (await reader.readline()).rstrip(b"\r\n").strip()
        else:
            word, _, data = data.partition(b" ")
            values.append(word)
    return values[0].decode("utf-8", "replace"), values[1].decode("utf-8", "replace")


def _expand(uid_set: str, top: int) -> list[int]:
    out: list[int] = []
    for part in uid_set.split(","):
        lo, _, hi = part.partition(":")
        first = top if lo == "*" else int(lo)
        last = first if not hi else (top if hi == "*" else int(hi))
        out += range(min(first, last), min(max(first, last), top) + 1)
    return out
