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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

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
        values, i = response_at(parts, i)
        out.append(values)
    return out


def response_at(parts: Sequence[bytes | bytearray], i: int) -> tuple[list[Value], int]:
    """The response starting at ``parts[i]`` (see ``responses``) and the index after it."""
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
    return _build(tokens), i


# -- FETCH fast path ---------------------------------------------------------------------------
# Nearly every FETCH response the copier reads has one shape: ``<seq> FETCH (`` then items
# whose values are atoms, quoted strings, flat lists of atoms or a literal, one space apart,
# and all the answers to one command name the same items in the same order. ``fetch_at`` reads
# such a response with one regex match per item, and remembers its layout (``_Shape``: the item
# names and value kinds) as one compiled regex: the next response of that layout is read with a
# single match (measured: 20 -> ~3 us per metadata response; this parsing was a third of the
# daemon's CPU above the reference's). Anything else (nesting, odd spacing, a broken
# response) gets ``None`` and is read by the general tokenizer, which also produces every
# error. All paths give identical values: the fragments below are the tokenizer's own.
_ATOM = rb'[^\x00-\x20()"{\[\]\x7f]'
_NAME = rb"(?:" + _ATOM + rb"|\[[^\]]*\])+(?:<[0-9.]+>)?"
_VALUES = {
    "atom": rb"(" + _ATOM + rb"+)",
    "quoted": rb'"((?:[^"\\]|\\.)*)"',
    "list": rb'\(([^\x00-\x1f()"{\[\]\x7f]*)\)',
    "literal": rb"\{([0-9]+)\+?\}",
}
_HEAD = rb"([0-9]+) (?i:FETCH) \("
_FETCH_HEAD = re.compile(_HEAD)
_ITEM = re.compile(
    rb"("
    + _NAME
    + rb") (?:"
    + rb"|".join(_VALUES[k] for k in ("atom", "quoted", "list", "literal"))
    + rb")"
)
_KINDS = ("atom", "quoted", "list", "literal")  # the order of _ITEM's value groups
_NAMES: dict[bytes, str] = {}  # item name as sent -> its key (a few distinct names per server)
_NAMES_MAX = 256


@dataclass(frozen=True, slots=True)
class _Shape:
    """The layout of a FETCH response: its item names (as sent) and value kinds, in order;
    a literal only as the last item of the line, followed by a part that is just ``)``."""

    regex: re.Pattern[bytes]
    keys: tuple[str, ...]
    kinds: tuple[str, ...]


_SHAPES: dict[tuple[tuple[bytes, str], ...], _Shape] = {}  # least recently used first
_SHAPES_MAX = 64
K = TypeVar("K")
V = TypeVar("V")
_last: list[_Shape] = []  # the layout of the last response read (tried first)


def lru_lookup(cache: dict[K, V], key: K, make: Callable[[K], V], limit: int) -> V:
    """``cache[key]``, made with ``make(key)`` when missing; at most ``limit`` entries, the
    least recently used dropped first (a dict keeps insertion order: a hit moves its key to
    the end). A server that sends many layouts (items in varying order) keeps the fast paths
    for the ones it uses now, instead of filling a fixed table once and for all."""
    if key in cache:
        value = cache.pop(key)
    else:
        if len(cache) >= limit:
            del cache[next(iter(cache))]
        value = make(key)
    cache[key] = value
    return value


def _new_shape(layout: tuple[tuple[bytes, str], ...]) -> _Shape:
    items = b" ".join(re.escape(name) + b" " + _VALUES[kind] for name, kind in layout)
    end = b"" if layout[-1][1] == "literal" else rb"\)"
    keys = tuple(_name_key(name) for name, _ in layout)
    kinds = tuple(kind for _, kind in layout)
    return _Shape(re.compile(_HEAD + items + end), keys, kinds)


def _shape(layout: tuple[tuple[bytes, str], ...]) -> _Shape:
    return lru_lookup(_SHAPES, layout, _new_shape, _SHAPES_MAX)


def item_key(name: str) -> str:
    """A FETCH item name as a dict key: upper-cased, whitespace runs made single spaces."""
    return " ".join(name.upper().split())


def _name_key(raw: bytes) -> str:
    key = _NAMES.get(raw)
    if key is None:
        key = item_key(decode(raw))
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[raw] = key
    return key


def _atom_value(raw: bytes) -> str | None:
    text = raw.decode("utf-8", "surrogateescape")
    return None if text.upper() == "NIL" else text  # as the tokenizer's ``_build``


def list_atoms(raw: bytes) -> list[Value]:
    """The values of a flat list's content (``\\Seen $Forwarded``) as the tokenizer gives them."""
    return [_atom_value(a) for a in raw.split(b" ") if a]


def _value(kind: str, raw: bytes) -> Value:
    if kind == "atom":
        return _atom_value(raw)
    if kind == "list":
        return list_atoms(raw)
    return decode(_UNESCAPE.sub(rb"\1", raw) if b"\\" in raw else raw)  # quoted


def _by_shape(
    shape: _Shape, parts: Sequence[bytes | bytearray], i: int
) -> tuple[str, dict[str, Value], int] | None:
    m = shape.regex.fullmatch(parts[i])
    if m is None:
        return None
    seq, *raw = m.groups()
    items: dict[str, Value] = {}
    for key, kind, value in zip(shape.keys, shape.kinds, raw, strict=True):
        if kind == "atom":  # inlined ``_atom_value``: most values are atoms (UID, sizes)
            text = value.decode("utf-8", "surrogateescape")
            items[key] = None if text.upper() == "NIL" else text
            continue
        if kind != "literal":
            items[key] = _value(kind, value)
            continue
        if i + 2 >= len(parts) or parts[i + 2] != b")":
            return None
        payload = parts[i + 1]
        if not isinstance(payload, bytearray) or type(parts[i + 2]) is not bytes:
            return None
        items[key] = payload
        return seq.decode("ascii"), items, i + 3
    return seq.decode("ascii"), items, i + 1


def fetch_at(
    parts: Sequence[bytes | bytearray], i: int
) -> tuple[str, dict[str, Value], int] | None:
    """The FETCH response at ``parts[i]`` if it has the common shape (see above): its sequence
    number, its items by ``item_key`` (a later item of the same name wins, as when merged) and
    the index after it; ``None`` for anything else (then use ``response_at``)."""
    part = parts[i]
    if type(part) is not bytes:
        return None
    if _last and (found := _by_shape(_last[0], parts, i)) is not None:
        return found
    head = _FETCH_HEAD.match(part)
    if head is None:
        return None
    items: dict[str, Value] = {}
    layout: list[tuple[bytes, str]] = []
    simple = True  # a layout ``_Shape`` can read: no literal but one at the end of the line
    pos = head.end()
    n = len(parts)
    while True:
        m = _ITEM.match(part, pos)
        if m is None:
            return None
        name, *values = m.groups()
        kind = next(k for k, v in zip(_KINDS, values, strict=True) if v is not None)
        key = _name_key(name)
        pos = m.end()
        if kind == "literal":
            if pos != len(part) or i + 2 >= n:
                return None
            payload, nxt = parts[i + 1], parts[i + 2]
            if not isinstance(payload, bytearray) or type(nxt) is not bytes:
                return None
            simple = simple and not any(k == "literal" for _, k in layout) and nxt == b")"
            items[key] = payload
            i += 2
            part, pos = nxt, 0
        else:
            items[key] = _value(kind, values[_KINDS.index(kind)])
        layout.append((name, kind))
        if pos < len(part) and part[pos] == 0x20:  # another item follows
            pos += 1
            continue
        if pos == len(part) - 1 and part[pos] == 0x29:  # ")" ends the response
            if simple:
                _last[:] = [_shape(tuple(layout))]
            return head[1].decode("ascii"), items, i + 1
        return None


def fetch_rows(
    parts: Sequence[bytes | bytearray],
) -> tuple[tuple[str, ...], tuple[str, ...], list[tuple[bytes | bytearray, ...]]] | None:
    """The answers of one FETCH command, unconverted, when every one of them has the same
    common-shape layout (see above) and names its own message: ``(keys, kinds, rows)``, each
    row the raw matched values — sequence number first, then one per key: an atom's or a
    list's bytes, a quoted string's bytes still escaped, a literal's payload. ``None`` for
    anything else (an item of another layout, a second answer for one message, an unsolicited
    response): then ``fetch_at``/``response_at`` must read them, which also gives every error.

    For a caller that turns many answers of one layout into its own values directly (the
    metadata of a 200,000-message folder): one regex match per answer, no dict per message.
    """
    n = len(parts)
    if not n or fetch_at(parts, 0) is None or not _last:
        return None
    shape = _last[0]
    literal = shape.kinds[-1] == "literal"
    step = 3 if literal else 1
    if n % step:
        return None
    match = shape.regex.fullmatch
    rows: list[tuple[bytes | bytearray, ...]] = []
    for i in range(0, n, step):
        part = parts[i]
        if type(part) is not bytes or (m := match(part)) is None:
            return None
        if literal:
            payload, close = parts[i + 1], parts[i + 2]
            if not isinstance(payload, bytearray) or type(close) is not bytes or close != b")":
                return None
            rows.append((*m.groups()[:-1], payload))
        else:
            rows.append(m.groups())
    if len({row[0] for row in rows}) != len(rows):
        return None
    return shape.keys, shape.kinds, rows
