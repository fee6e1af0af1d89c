"""The header fields a copy looks at: read raw, and summarised for people. Pure.

Owns: the one reader of header fields (``header_fields``: Message-ID, Date, From, To, Subject,
unfolded, raw bytes), which message identity (``identity``) hashes as they are, and the
human-readable summary of them for failures, progress and report listings (``summarize``:
RFC 2047 words and raw 8-bit UTF-8 both decoded; undecodable bytes replaced).
Input is the raw bytes of ``BODY.PEEK[HEADER.FIELDS (...)]`` or a whole message.
Never raises: a header we cannot read is shown as best we can, never fails a copy.
"""

from __future__ import annotations

import email.errors
import email.header
import email.utils
from dataclasses import dataclass

_MAX_TEXT = 300
_WANTED = frozenset((b"message-id", b"date", b"from", b"to", b"subject"))


@dataclass(frozen=True, slots=True)
class HeaderSummary:
    subject: str
    sender: str
    message_id: str
    date: str  # the Date: field as written (decoded), "" when absent


def _header_block(data: bytes | bytearray) -> bytes:
    """The header of ``data``: everything before the first empty line (CRLF or LF)."""
    if data[:2] == b"\r\n" or data[:1] == b"\n":
        return b""
    crlf, lf = data.find(b"\n\r\n"), data.find(b"\n\n")
    end = crlf if lf < 0 or 0 <= crlf < lf else lf
    # Only the header is copied, never a whole (possibly 50 MB) message.
    return bytes(data[: end + 1]) if end >= 0 else bytes(data)


def header_fields(data: bytes | bytearray) -> dict[bytes, bytes]:
    """Unfolded raw values of Message-ID, Date, From, To, Subject (lower-cased names).

    A field is ``name [ \t]* : value`` with a name of printable ASCII but ``:``. The first
    occurrence of a field wins. Lines that are neither a field nor a continuation (an mbox
    ``From `` line, garbage) are ignored, and so are their continuations.
    """
    parts: dict[bytes, list[bytes]] = {}
    current: list[bytes] | None = None
    for raw_line in _header_block(data).split(b"\n"):
        line = raw_line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)  # unfolding removes only the line break
            continue
        current = None
        # Only the five wanted names matter, and each is a valid field name by itself: so a
        # line is one of them exactly when the text before its first ":" is that name plus
        # blanks (no regex per line: this runs for every message of both servers).
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.rstrip(b" \t").lower()
        if name in _WANTED and name not in parts:
            current = parts[name] = [value]
    return {name: b"".join(chunks) for name, chunks in parts.items()}


def decode_text(value: bytes) -> str:
    """Decode a raw header value: 8-bit as UTF-8 (else Latin-1), then RFC 2047 words."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    decoded = text
    if "=?" in text:  # only encoded words need the (slow) email.header machinery
        try:
            decoded = str(email.header.make_header(email.header.decode_header(text)))
        except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
            decoded = text
    if not decoded.isprintable():
        decoded = "".join(ch if ch.isprintable() else " " for ch in decoded)
    return " ".join(decoded.split())[:_MAX_TEXT]


def summarize(raw: bytes | bytearray) -> HeaderSummary:
    """Subject, From, Message-ID and Date of ``raw``, decoded for people; never raises."""
    f = header_fields(raw)
    return HeaderSummary(
        subject=decode_text(f.get(b"subject", b"")),
        sender=decode_text(f.get(b"from", b"")),
        message_id=decode_text(f.get(b"message-id", b"")),
        date=decode_text(f.get(b"date", b"")),
    )
