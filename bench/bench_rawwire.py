"""The reference copier's wire: one IMAP connection over asyncio streams, a literal-aware reader.

Owns: connecting (implicit TLS, STARTTLS or plain; certificates verified), LOGIN, LOGOUT, and
reading one complete server response at a time: a line, and when it ends with a literal
announcement ``{n}`` the ``n`` raw bytes and the rest of the line, as often as needed. Must not:
parse what responses mean (``rawcopy`` does), retry, or swallow an unexpected answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.rawcopy import Login

_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
STREAM_LIMIT = 4 * 1024 * 1024  # longest line; literals are read by size, not by line


class RawCopyError(Exception):
    """The reference copy cannot go on: an unexpected server answer or a broken connection."""


@dataclass(frozen=True)
class Response:
    """One server response: ``parts`` are the line pieces between literals (CRLF and the
    ``{n}`` announcements removed), ``literals[i]`` came right after ``parts[i]``."""

    parts: tuple[bytes, ...]
    literals: tuple[bytes, ...]

    @property
    def tag(self) -> bytes:
        return self.parts[0].split(b" ", 1)[0]

    @property
    def status(self) -> bytes:
        """``OK``/``NO``/``BAD`` of a tagged or untagged status response (upper-cased)."""
        words = self.parts[0].split(b" ", 2)
        return words[1].upper() if len(words) > 1 else b""


def quote(name: str | bytes) -> bytes:
    """An IMAP quoted string (``\\`` and ``"`` escaped); CR/LF/NUL cannot be quoted."""
    raw = name.encode() if isinstance(name, str) else name
    if any(c in raw for c in b"\r\n\0"):
        raise ValueError("CR, LF and NUL cannot be sent in a quoted string")
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class Conn:
    """One IMAP connection. ``send`` only buffers; ``drain`` applies the transport's
    backpressure; ``read_response`` returns the next complete response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, login: Login, ctx: ssl.SSLContext) -> Conn:
        implicit = login.security == "tls"
        reader, writer = await asyncio.open_connection(
            login.host,
            login.port,
            ssl=ctx if implicit else None,
            server_hostname=login.host if implicit else None,
            limit=STREAM_LIMIT,
        )
        conn = cls(reader, writer)
        greeting = await conn.read_response()
        if greeting.status != b"OK":
            raise RawCopyError(f"{login.host}: greeting {greeting.parts[0]!r}")
        if login.security == "starttls":
            conn.send(b"S STARTTLS\r\n")
            await conn.until_tagged(b"S")
            await writer.start_tls(ctx, server_hostname=login.host)
        return conn

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_response(self) -> Response:
        parts: list[bytes] = []
        literals: list[bytes] = []
        while True:
            try:
                line = await self.reader.readuntil(b"\r\n")
            except asyncio.IncompleteReadError as exc:
                raise RawCopyError("connection closed by the server") from exc
            line = line[:-2]
            m = _LITERAL.search(line)
            if m is None:
                parts.append(line)
                return Response(tuple(parts), tuple(literals))
            parts.append(line[: m.start()])
            literals.append(await self.reader.readexactly(int(m.group(1))))

    async def until_tagged(self, tag: bytes, *, check: bool = True) -> list[Response]:
        """Every response up to and including the one tagged ``tag`` (which must be OK when
        ``check``). A tagged answer for another tag is an error: nothing else is pending."""
        got: list[Response] = []
        while True:
            resp = await self.read_response()
            got.append(resp)
            if resp.tag in (b"*", b"+"):
                continue
            if resp.tag != tag:
                raise RawCopyError(f"unexpected tagged answer {resp.parts[0][:200]!r}")
            if check and resp.status != b"OK":
                raise RawCopyError(f"{tag.decode()}: {resp.parts[0][:200]!r}")
            return got

    async def login(self, user: str, password: str) -> None:
        self.send(b"L LOGIN " + quote(user) + b" " + quote(password) + b"\r\n")
        await self.drain()
        try:
            await self.until_tagged(b"L")
        except RawCopyError:
            raise RawCopyError(f"LOGIN {user!r} refused") from None  # never echo the password

    async def logout(self) -> None:
        self.send(b"O LOGOUT\r\n")
        await self.drain()
        await self.until_tagged(b"O")

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.close()
