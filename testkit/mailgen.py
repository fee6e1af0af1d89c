"""Deterministic test mail: message bytes, the big message, and the message builders' helpers.

Owns: building RFC 5322 messages as exact CRLF bytes (raw 8-bit UTF-8 headers and RFC 2047
encoded words are written as given, never re-encoded), and ``make_big_message``. The same
arguments always give the same bytes. Must not: touch a server (``maildir.py`` loads,
``corpus.py`` holds the standard Exchange-like corpus).
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import random
from collections.abc import Sequence
from dataclasses import dataclass

from testkit.dovecot import DovecotServer
from testkit.maildir import LoadedMessage, MailSpec, load_messages

UTC = dt.UTC
CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def lorem(seed: int, words: int) -> str:
    """Deterministic filler text, wrapped at about 70 columns."""
    rnd = random.Random(seed)
    vocab = ("mail", "archive", "folder", "server", "copy", "message", "report", "budget")
    lines, line = [], ""
    for _ in range(words):
        word = rnd.choice(vocab)
        if len(line) + len(word) > 70:
            lines.append(line)
            line = ""
        line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _b64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", CRLF)


def make_message(
    *,
    subject: str,
    date: dt.datetime,
    message_id: str | None,
    sender: str = "Alice Example <alice@example.com>",
    to: str = "Bob Example <bob@example.com>",
    body: str = "Hello.\n",
    html: str | None = None,
    attachments: Sequence[Attachment] = (),
    extra_headers: Sequence[tuple[str, str]] = (),
    boundary_seed: str = "",
) -> bytes:
    """One message as CRLF bytes. Header values are written verbatim as UTF-8 (so a raw 8-bit
    header is just a non-ASCII ``subject``; pass ``=?UTF-8?B?...?=`` text for RFC 2047).
    ``message_id`` None means no Message-ID header at all."""
    headers = [("From", sender), ("To", to), ("Subject", subject)]  # "\n " in a value folds
    headers.append(("Date", email.utils.format_datetime(date)))
    if message_id is not None:
        headers.append(("Message-ID", message_id))
    headers += [("MIME-Version", "1.0"), *extra_headers]
    text_part = _crlf(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + body
    )
    if html is not None:
        alt = f"alt-{boundary_seed}-{date:%Y%m%d%H%M%S}"
        html_part = _crlf(
            "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + html
        )
        text_part = _crlf(
            f'Content-Type: multipart/alternative; boundary="{alt}"\n\n'
        ) + _multipart(alt, [text_part, html_part])
    if attachments:
        mixed = f"mix-{boundary_seed}-{date:%Y%m%d%H%M%S}"
        parts = [text_part]
        for a in attachments:
            parts.append(
                _crlf(
                    f'Content-Type: {a.content_type}; name="{a.filename}"\n'
                    f'Content-Disposition: attachment; filename="{a.filename}"\n'
                    "Content-Transfer-Encoding: base64\n\n"
                )
                + _b64_lines(a.data)
            )
        head = "".join(f"{k}: {v}\n" for k, v in headers)
        return (
            _crlf(head + f'Content-Type: multipart/mixed; boundary="{mixed}"\n')
            + CRLF
            + (_multipart(mixed, parts))
        )
    head = "".join(f"{k}: {v}\n" for k, v in headers)
    return _crlf(head) + text_part


def _multipart(boundary: str, parts: list[bytes]) -> bytes:
    out = b"This is a multi-part message in MIME format." + CRLF
    for part in parts:
        out += b"--" + boundary.encode() + CRLF + part
        if not part.endswith(CRLF):
            out += CRLF
    return out + b"--" + boundary.encode() + b"--" + CRLF


def make_big_message(size_bytes: int, *, seed: int = 30) -> bytes:
    """A message of at least ``size_bytes`` bytes (CRLF) with one base64 attachment of
    pseudo-random data (incompressible, so no layer can cheat), deterministic for ``seed``."""
    payload = random.Random(seed).randbytes(max(1, size_bytes * 3 // 4 - 1024))
    return make_message(
        subject=f"Big attachment ({size_bytes} bytes)",
        date=utc(2018, 3, 1, 12),
        message_id=f"<big-{size_bytes}-{seed}@example.com>",
        body="See the attachment.\n",
        attachments=[Attachment("big.bin", "application/octet-stream", payload)],
        boundary_seed=f"big{seed}",
    )


def load_big_message(
    server: DovecotServer,
    user: str,
    size_bytes: int = 30 * 1024 * 1024,
    *,
    folder: str = "INBOX",
    flags: frozenset[str] = frozenset({"\\Seen"}),
    internaldate: dt.datetime | None = None,
) -> LoadedMessage:
    """Load one ``make_big_message(size_bytes)`` into ``folder`` and return its manifest entry."""
    spec = MailSpec(
        data=make_big_message(size_bytes),
        flags=flags,
        internaldate=internaldate or utc(2018, 3, 1, 12),
        label=f"big-{size_bytes}",
    )
    return load_messages(server, user, folder, [spec])[0]
