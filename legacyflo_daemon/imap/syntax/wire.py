"""IMAP wire syntax (RFC 3501): command arguments out, generic response values in. Pure.

Owns: how every argument we send is written (quoted string, atom or literal; an INTERNALDATE
checked with ``request.dates``), and a tokenizer/parser for response data that reads
aioimaplib's raw response lines (``bytes`` text lines, ``bytearray`` literal payloads) in any
item order. Must not: do I/O, know about sessions or classify errors (``parse`` turns the
generic values into typed results, ``imap.session`` talks to servers). Why the library's own
argument handling is not used: docs/imap-interop.md §1.8.

Text is decoded as UTF-8 with ``surrogateescape``, so an 8-bit name a server sends comes back
to it byte for byte when we send it as a literal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from legacyflo_daemon.request.dates import parse_date_time

CRLF = b"\r\n"


class WireError(ValueError):
    """A server response that does not follow the IMAP grammar where we need it to."""


class ResponseTooLarge(WireError):
    """A response beyond what we accept (a line over the cap). Its text is ours alone, never
    server data, so it may be shown as it is."""


@dataclass(frozen=True, slots=True)
class Literal:
    """An argument sent as a literal: ``{n}`` (wait for the server's ``+``, then the bytes) or,
    with ``nonsync`` (LITERAL+/LITERAL-, RFC 7888), ``{n+}`` and the bytes at once."""

    data: bytes | bytearray | memoryview
    nonsync: bool = False

    def __repr__(self) -> str:  # never show the payload (passwords, message bodies)
        return f"Literal({len(self.data)} bytes)"


Arg = str | Literal
Value = str | bytearray | None | list["Value"]

# -- arguments ---------------------------------------------------------------------------------

_QUOTABLE = re.compile(r"[\x01-\x09\x0b\x0c\x0e-\x7f]*")  # TEXT-CHAR: 7-bit, no NUL/CR/LF
# A flag: an atom (ATOM-CHAR: printable ASCII except atom-specials ( ) { SP % * " \ ]),
# "\" first for a system flag.
_FLAG = re.compile(r"\\?[\x21\x23-\x24\x26-\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
# SEARCH tokens sent as they are: atoms plus '*' (sequence sets like 1:*).
_SEARCH_TOKEN = re.compile(r"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c\x7e]+")


def quoted(text: str) -> str:
    """``text`` as an IMAP quoted string; ``ValueError`` if it needs a literal (8-bit, CR, LF)."""
    if not _QUOTABLE.fullmatch(text):
        raise ValueError("text needs a literal: it has 8-bit, CR, LF or NUL characters")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def astring(text: str) -> Arg:
    """A string argument (user, password, mailbox): quoted when possible, else a literal.

    Raises ``ValueError`` for NUL, which no IMAP string can carry.
    """
    if "\0" in text:
        raise ValueError("IMAP cannot send a NUL character")
    try:
        return quoted(text)
    except ValueError:
        return Literal(text.encode("utf-8", "surrogateescape"))


def search_args(criteria: Iterable[str]) -> list[str]:
    """SEARCH criteria tokens: keys, dates and sets as they are, anything else quoted.

    Raises ``ValueError`` for an empty list or a token that needs a literal (non-ASCII).
    """
    out = [t if _SEARCH_TOKEN.fullmatch(t) else quoted(t) for t in criteria]
    if not out:
        raise ValueError("empty SEARCH criteria")
    return out


def flag_list(flags: Iterable[str]) -> str | None:
    """APPEND flags: ``(\\Seen $Forwarded)``, or None when there are none.

    ``\\Recent`` is never sent (servers answer BAD), duplicates are dropped, and anything that
    is not a valid flag atom is dropped because it cannot be written on the wire.
    """
    kept: dict[str, str] = {}
    for flag in flags:
        if flag.lower() == "\\recent" or not _FLAG.fullmatch(flag):
            continue
        kept.setdefault(flag.lower(), flag)
    return "(" + " ".join(kept.values()) + ")" if kept else None


def date_time_arg(raw: str) -> str:
    """INTERNALDATE as the server sent it (``26-Nov-2025 17:30:21 +0000``), quoted again.

    Raises ``ValueError`` when ``raw`` is not an RFC 3501 date-time (``dates.parse_date_time``).
    """
    parse_date_time(raw)
    return '"' + raw.strip('"') + '"'


Chunk = bytes | bytearray | memoryview


def split_args(args: Sequence[Arg]) -> tuple[list[str], list[Chunk], list[list[Chunk]]]:
    """Cut a command at its literals: ``(first line, right after it, after each "+")``.

    The first line's arguments end with the first literal's ``{n}``/``{n+}``. The chunks
    written right after the first line carry non-synchronizing literals; each synchronizing
    literal starts a new list, written when the server asks with ``+``. Text that follows a
    literal is sent as ``" word ... {m}"`` + CRLF; the command ends with CRLF.
    """
    first: list[str] = []
    steps: list[list[Chunk]] = [[]]
    line = first
    for arg in args:
        if not isinstance(arg, Literal):
            line.append(arg)
            continue
        line.append(f"{{{len(arg.data)}{'+' if arg.nonsync else ''}}}")
        if line is not first:
            steps[-1].append((" " + " ".join(line)).encode() + CRLF)
        if not arg.nonsync:
            steps.append([])
        steps[-1].append(arg.data)
        line = []
    if line is not first:
        steps[-1].append((" " + " ".join(line)).encode() + CRLF if line else CRLF)
    return first, steps[0], steps[1:]


# -- response values ---------------------------------------------------------------------------

_TOKEN = re.compile(
    rb"""(?P<sp>[ ]+)
    |(?P<open>\()|(?P<close>\))
    |"(?P<quoted>(?:[^"\\]|\\.)*)"
    |\{(?P<literal>[0-9]+)\+?\}$
    |(?P<atom>(?:[^\x00-\x20()"{\[\]\x7f]|\[[^\]]*\])+(?:<[0-9.]+>)?)""",
    re.VERBOSE,
)
_UNESCAPE = re.compile(rb"\\(.)")


def decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


def _tokens(line: bytes, out: list[tuple[str, object]]) -> bool:
    """Append the tokens of one text line to ``out``; True if it ends with a literal ``{n}``."""
    pos = 0
    while pos < len(line):
        m = _TOKEN.match(line, pos)
        if m is None:
            raise WireError(f"unexpected byte {line[pos : pos + 1]!r} at {pos} of a response line")
        pos = m.end()
        kind = m.lastgroup
        if kind == "sp":
            continue
        if kind == "literal":
            return True
        if kind == "quoted":
            out.append(("string", decode(_UNESCAPE.sub(rb"\1", m["quoted"]))))
        elif kind == "atom":
            out.append(("atom", decode(m["atom"])))
        else:
            out.append((kind or "", None))
    return False


def _build(tokens: list[tuple[str, object]]) -> list[Value]:
    stack: list[list[Value]] = [[]]
    for kind, value in tokens:
        if kind == "open":
            stack.append([])
        elif kind == "close":
            if len(stack) == 1:
                raise WireError("unbalanced ')' in a response")
            done = stack.pop()
            stack[-1].append(done)
        elif kind == "atom":
            stack[-1].append(None if str(value).upper() == "NIL" else str(value))
        elif kind == "string":
            stack[-1].append(str(value))
        else:
            assert isinstance(value, bytearray)
            stack[-1].append(value)
    if len(stack) != 1:
        raise WireError("unbalanced '(' in a response")
    return stack[0]


def responses(parts: Sequence[bytes | bytearray]) -> list[list[Value]]:
    """Split untagged response parts into responses, each a list of its top-level values.

    aioimaplib hands over a line ending with ``{n}``, then the literal as a ``bytearray``, then
    the rest of the response as the next ``bytes`` part. After a literal the grammar allows
    only a space, ``)`` or the end of the response, and an untagged response (``* `` removed)
    never starts with either, so a part starting with one of them continues the response.
    Raises ``WireError`` for anything that is not IMAP response syntax.
    """
    out: list[list[Value]] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(part, bytearray):
            raise WireError("a literal without a line announcing it")
        tokens: list[tuple[str, object]] = []
        while True:
            literal = _tokens(part, tokens)
            i += 1
            if not literal:
                break
            payload = parts[i] if i < len(parts) else None
            if not isinstance(payload, bytearray):
                raise WireError("a literal was announced but not received")
            tokens.append(("literal", payload))
            i += 1
            nxt = parts[i] if i < len(parts) else None
            if not (isinstance(nxt, bytes) and nxt[:1] in (b" ", b")")):
                break
            part = nxt
        out.append(_build(tokens))
    return out
