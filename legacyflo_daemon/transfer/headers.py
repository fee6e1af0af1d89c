"""Human-readable summaries of raw header fields, for failures, progress and report listings.

Pure. Input is the raw bytes of ``BODY.PEEK[HEADER.FIELDS (...)]`` (or a whole message); output
is decoded text (RFC 2047 words and raw 8-bit UTF-8 both handled; undecodable bytes replaced).
Never raises: a header we cannot read is shown as best we can, never fails a copy.
"""

from __future__ import annotations

import email.errors
import email.header
import email.utils
from dataclasses import dataclass

_MAX_TEXT = 300


@dataclass(frozen=True, slots=True)
class HeaderSummary:
    subject: str
    sender: str
    message_id: str
    date: str  # the Date: field as written (decoded), "" when absent


def _fields(raw: bytes) -> dict[str, bytes]:
    """First occurrence of each field in the header block, unfolded, keyed lower-case."""
    end = len(raw)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i != -1:
            end = min(end, i)
    out: dict[str, bytes] = {}
    name: str | None = None
    value = b""
    for line in raw[:end].splitlines():
        if line[:1] in (b" ", b"\t") and name is not None:
            value += b" " + line.strip()
            continue
        if name is not None and name not in out:
            out[name] = value.strip()
        head, colon, rest = line.partition(b":")
        if colon and head and b" " not in head.strip():
            name, value = head.strip().decode("ascii", "replace").lower(), rest
        else:
            name = None
    if name is not None and name not in out:
        out[name] = value.strip()
    return out


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


def summarize(raw: bytes) -> HeaderSummary:
    f = _fields(raw)
    return HeaderSummary(
        subject=decode_text(f.get("subject", b"")),
        sender=decode_text(f.get("from", b"")),
        message_id=decode_text(f.get("message-id", b"")),
        date=decode_text(f.get("date", b"")),
    )
