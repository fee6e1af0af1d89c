"""The header fields a copy looks at: read raw, and summarised for people. Pure.

Owns: the one reader of header fields (``header_fields``: Message-ID, Date, From, To, Subject,
unfolded, raw bytes; ``message_id``: that field alone), which message identity (``identity``)
hashes as they are, and the human-readable summary of them for failures, progress and report
listings (``summarize``: RFC 2047 words and raw 8-bit UTF-8 both decoded; undecodable bytes
replaced).
Input is the raw bytes of ``BODY.PEEK[HEADER.FIELDS (...)]`` or a whole message.
Never raises: a header we cannot read is shown as best we can, never fails a copy.
"""

from __future__ import annotations

import email.errors
import email.header
import email.utils
import re
from dataclasses import dataclass

_MAX_TEXT = 300


@dataclass(frozen=True, slots=True)
class HeaderSummary:
    subject: str
    sender: str
    message_id: str
    date: str  # the Date: field as written (decoded), "" when absent


_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of the header: the first empty line


def _field(names: bytes) -> re.Pattern[bytes]:
    # A field of one of ``names``: ``name [ \t]* :`` at the start of a line, then its value
    # up to the end of its last continuation line. Matched after a LF (``_lines`` puts one
    # before the first line): a literal the regex engine finds fast, so a header is read in
    # one C-level pass, not in a Python loop over its lines (this runs for every message of
    # both servers, ~400,000 times in a delta pass over a folder of 200,000).
    return re.compile(rb"\n((?i:" + names + rb"))[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")


_FIELDS = _field(rb"message-id|date|from|to|subject")
_MESSAGE_ID = _field(rb"message-id")
_LINE_BREAK = re.compile(rb"\r?\n")


def _lines(data: bytes | bytearray) -> bytes | None:
    """The header of ``data`` (everything before the first empty line, CRLF or LF) with a LF
    put before it; None when the header is empty."""
    if data[:2] == b"\r\n" or data[:1] == b"\n":
        return None
    blank = _BLANK_LINE.search(data)
    # Only the header is copied, never a whole (possibly 50 MB) message; bytes + bytearray
    # is bytes, so the values found are bytes too.
    return b"\n" + (data[: blank.start() + 1] if blank is not None else data)


def _unfold(value: bytes) -> bytes:
    """A value's lines joined: each line break (a LF, and one CR before it) removed, and the
    CR ending its last line."""
    if b"\n" in value:
        value = _LINE_BREAK.sub(b"", value)
    return value.removesuffix(b"\r")


def header_fields(data: bytes | bytearray) -> dict[bytes, bytes]:
    """Unfolded raw values of Message-ID, Date, From, To, Subject (lower-cased names).

    The header is everything before the first empty line (CRLF or LF); its lines end at a
    LF, and one CR before the LF is not part of the line. A field is ``name [ \t]* : value``
    at the start of a line, with a name of printable ASCII but ``:``; a continuation is a
    line starting with a blank, joined to the value with only its line break removed. The
    first occurrence of a field wins. Lines that are neither a field nor a continuation (an
    mbox ``From `` line, garbage) are ignored, and so are their continuations, and those of
    a field that is not the first of its name. Identity keys are built from these values,
    so this behaviour is frozen (``tests/test_identity_equivalence.py``).
    """
    block = _lines(data)
    if block is None:
        return {}
    # Reversed, so that the first occurrence of a name is the one left in the dict. A value
    # holds a LF only when folded (rare): ``_unfold`` inlined, as this runs for every message
    # read (a search of the whole block for folds cost more than these five checks).
    return {
        name.lower(): (_LINE_BREAK.sub(b"", value) if b"\n" in value else value).removesuffix(b"\r")
        for name, value in reversed(_FIELDS.findall(block))
    }


def message_id(data: bytes | bytearray) -> bytes | None:
    """``header_fields(data).get(b"message-id")``, reading no other field (a fifth of the
    CPU: the identity of a message with a Message-ID needs nothing else)."""
    block = _lines(data)
    if block is None:
        return None
    found = _MESSAGE_ID.search(block)
    return None if found is None else _unfold(found[2])


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
    # Whitespace runs become one space, none at either end. Every whitespace character but
    # the ASCII space is unprintable, so only spaces are left: when no two are adjacent once
    # the ends are stripped, there is nothing to collapse (the usual case, a split fewer).
    decoded = decoded.strip(" ")
    if "  " in decoded:
        decoded = " ".join(decoded.split())
    return decoded[:_MAX_TEXT]


def summarize(raw: bytes | bytearray) -> HeaderSummary:
    """Subject, From, Message-ID and Date of ``raw``, decoded for people; never raises."""
    f = header_fields(raw)
    return HeaderSummary(
        subject=decode_text(f.get(b"subject", b"")),
        sender=decode_text(f.get(b"from", b"")),
        message_id=decode_text(f.get(b"message-id", b"")),
        date=decode_text(f.get(b"date", b"")),
    )
