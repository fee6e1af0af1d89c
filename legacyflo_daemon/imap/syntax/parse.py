"""Typed results of IMAP responses: folders, mailbox status, search hits, fetched messages. Pure.

Owns: the result dataclasses the ``imap`` boundary returns and the functions that build them from
aioimaplib's raw response lines (``bytes`` text with ``* `` removed, ``bytearray`` literals).
FETCH items are read by name in whatever order the server sends them, and several FETCH
responses for one message are merged. Must not: do I/O or raise anything but ``WireError``
(malformed responses) and ``ValueError`` (bad arguments).

Per-message trouble is a value, not an exception: ``FetchedMessage.error`` says why a message
cannot be copied (no body, empty body, Exchange's substitute "Retrieval using the IMAP4
protocol failed" message; docs/imap-interop.md §2.5), so one bad message never hides the others
of its batch. INTERNALDATE is read with ``request.dates.parse_date_time``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from legacyflo_daemon.imap.syntax.wire import (
    Value,
    WireError,
    decode,
    fetch_at,
    fetch_rows,
    item_key,
    list_atoms,
    lru_lookup,
    response_at,
    responses,
)
from legacyflo_daemon.request.dates import parse_date_time

Parts = Sequence[bytes | bytearray]

NO_BODY = "the server returned no body"
EMPTY_BODY = "the server returned an empty body"
EXCHANGE_FAILED = "the server could not deliver it (Exchange: Retrieval using IMAP4 failed)"
_EXCHANGE_SUBSTITUTE = re.compile(
    rb"(?im)^subject:[ \t]*retrieval using the imap4 protocol failed for the following message"
)


# LIST attributes of a name that holds no mail (RFC 3501 \Noselect, RFC 5258 \NonExistent).
NOT_SELECTABLE = frozenset({"\\noselect", "\\nonexistent"})


def selectable(flags: Iterable[str]) -> bool:
    """Whether a folder with these LIST attributes (any case) can hold mail."""
    return not any(f.lower() in NOT_SELECTABLE for f in flags)


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One LIST answer: the wire name (modified UTF-7, unquoted), delimiter, attributes."""

    name: str
    delimiter: str | None
    flags: frozenset[str]

    @property
    def selectable(self) -> bool:
        """False for a name that holds no mail (``\\Noselect``, ``\\NonExistent``)."""
        return selectable(self.flags)


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    """SELECT/EXAMINE result. ``uidvalidity`` 0 means the server did not say (it must).

    ``permanent_flags`` is None when the server sent no PERMANENTFLAGS (then every flag in
    ``flags`` is permanent, RFC 3501 §7.1); ``\\*`` in it means new keywords are accepted.
    """

    name: str
    exists: int
    uidvalidity: int
    uidnext: int | None
    flags: frozenset[str]
    permanent_flags: frozenset[str] | None
    read_only: bool


@dataclass(slots=True)
class MessageMeta:
    """What identifies a message: UID, flags, INTERNALDATE (raw and aware), size, headers.

    ``size`` is RFC822.SIZE, an estimate on Exchange: never use it as identity.
    ``header`` holds the requested header fields (Message-ID, Date, From, To, Subject).
    A value: never changed once made. Not ``frozen``, only because a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__`` (0.86 us instead of 0.18): one
    is made for every message of both servers, 400,000 in a delta pass over 200,000.
    """

    uid: int
    flags: tuple[str, ...]
    internaldate: dt.datetime
    internaldate_raw: str
    size: int
    header: bytes


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """One message's content. ``body`` is the server's ``bytearray`` (not copied); when
    ``error`` is set, ``body`` is None and the message must be recorded as failed."""

    uid: int
    flags: tuple[str, ...]
    internaldate_raw: str
    internaldate: dt.datetime | None
    body: bytearray | None
    error: str | None = None


def capabilities(text: str) -> frozenset[str]:
    """``IMAP4rev1 AUTH=PLAIN ...`` → upper-cased names."""
    return frozenset(word.upper() for word in text.split())


_CODE_CAPS = re.compile(r"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)


def code_capabilities(text: str) -> frozenset[str] | None:
    """Capabilities from a ``[CAPABILITY ...]`` response code in ``text``, or None."""
    m = _CODE_CAPS.search(text)
    return capabilities(m[1]) if m else None


def _text(value: Value) -> str | None:
    if isinstance(value, bytearray):
        return decode(value)
    if value is None or isinstance(value, str):
        return value
    raise WireError("a list where a string was expected")


@dataclass(frozen=True, slots=True)
class Namespaces:
    """A NAMESPACE answer (RFC 2342): ``(prefix, delimiter)`` pairs per kind, in server order.

    ``personal`` is never empty: a server without NAMESPACE (or answering NIL) has one personal
    namespace with prefix ``""``.
    """

    personal: tuple[tuple[str, str | None], ...]
    other_users: tuple[tuple[str, str | None], ...] = ()
    shared: tuple[tuple[str, str | None], ...] = ()

    @property
    def prefix(self) -> str:
        """The first personal namespace's prefix (``""``, ``"INBOX."``)."""
        return self.personal[0][0]

    @property
    def delimiter(self) -> str | None:
        """The first personal namespace's hierarchy delimiter."""
        return self.personal[0][1]


def _namespace_group(value: Value) -> tuple[tuple[str, str | None], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(e, list) for e in value):
        raise WireError("malformed NAMESPACE response")
    out = []
    for entry in value:
        assert isinstance(entry, list)
        if len(entry) < 2:
            raise WireError("malformed NAMESPACE entry")
        out.append((_text(entry[0]) or "", _text(entry[1])))
    return tuple(out)


def parse_namespaces(lines: Parts) -> Namespaces:
    """The three groups of a NAMESPACE answer (``(("INBOX." ".")) NIL (("#shared." "."))``)."""
    for resp in responses(lines):
        groups = [_namespace_group(v) for v in resp[:3]]
        groups += [()] * (3 - len(groups))
        return Namespaces(groups[0] or (("", None),), groups[1], groups[2])
    raise WireError("no NAMESPACE response")


def parse_namespace(lines: Parts) -> tuple[str, str | None]:
    """The first personal namespace of a NAMESPACE answer (``(("INBOX." ".")) NIL NIL``)."""
    ns = parse_namespaces(lines)
    return ns.prefix, ns.delimiter


def parse_list(lines: Parts) -> list[ListEntry]:
    """LIST answers (``(\\HasNoChildren) "/" "Sent Items"``, names also as atoms/literals)."""
    out = []
    for resp in responses(lines):
        if len(resp) < 3 or not isinstance(resp[0], list):
            raise WireError("malformed LIST response")
        flags = frozenset(f for f in resp[0] if isinstance(f, str))
        name = _text(resp[2])
        if name is None:
            raise WireError("LIST response without a name")
        out.append(ListEntry(name, _text(resp[1]), flags))
    return out


def parse_search(lines: Parts) -> list[int]:
    """UIDs of ``* SEARCH 1 2 3`` answers (aioimaplib gives the text after SEARCH)."""
    uids: list[int] = []
    for line in lines:
        if isinstance(line, bytes):
            uids += [int(w) for w in line.split() if w.isdigit()]
    return uids


_EXISTS = re.compile(rb"([0-9]+) EXISTS\b", re.IGNORECASE)
_UIDVALIDITY = re.compile(rb"OK \[UIDVALIDITY ([0-9]+)\]", re.IGNORECASE)
_UIDNEXT = re.compile(rb"OK \[UIDNEXT ([0-9]+)\]", re.IGNORECASE)
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)", re.IGNORECASE)
_PERMANENT = re.compile(rb"OK \[PERMANENTFLAGS \(([^)]*)\)\]", re.IGNORECASE)


def parse_mailbox(name: str, lines: Parts, tagged_text: str) -> MailboxInfo:
    """SELECT/EXAMINE untagged lines (``* `` removed) and the tagged OK text."""
    exists, uidvalidity, uidnext = 0, 0, None
    flags: frozenset[str] = frozenset()
    permanent: frozenset[str] | None = None
    for line in lines:
        if not isinstance(line, bytes):
            continue
        if m := _EXISTS.match(line):
            exists = int(m[1])
        elif m := _UIDVALIDITY.match(line):
            uidvalidity = int(m[1])
        elif m := _UIDNEXT.match(line):
            uidnext = int(m[1])
        elif m := _PERMANENT.match(line):
            permanent = frozenset(decode(m[1]).split())
        elif m := _FLAGS.match(line):
            flags = frozenset(decode(m[1]).split())
    read_only = "[READ-ONLY]" in tagged_text.upper()
    return MailboxInfo(name, exists, uidvalidity, uidnext, flags, permanent, read_only)


_APPENDUID = re.compile(r"\[APPENDUID [0-9]+ ([0-9]+)\]", re.IGNORECASE)


def appenduid(tagged_text: str) -> int | None:
    """The new UID from ``[APPENDUID <uidvalidity> <uid>]`` (UIDPLUS), if present."""
    m = _APPENDUID.search(tagged_text)
    return int(m[1]) if m else None


# The key under which ``fetch_items`` keeps each answer's message sequence number.
SEQUENCE_KEY = "#SEQ"


def fetch_items(lines: Parts) -> list[dict[str, Value]]:
    """FETCH answers as dicts ``{"UID": "7", "FLAGS": [...], "BODY[]": bytearray, ...}``.

    Keys are upper-cased (``BODY[HEADER.FIELDS (MESSAGE-ID ...)]``); responses for the same
    message sequence number are merged; answers without a UID (unsolicited flag updates) are
    dropped. Order: as the server sent the messages. Responses of the common shape are read by
    ``wire.fetch_at``, the others by the general tokenizer (same values either way).
    """
    merged: dict[str, dict[str, Value]] = {}
    i, n = 0, len(lines)
    while i < n:
        fast = fetch_at(lines, i)
        if fast is not None:
            seq, found, i = fast
            entry = merged.get(seq)
            if entry is None:
                found[SEQUENCE_KEY] = seq
                merged[seq] = found
            else:
                entry.update(found)
            continue
        resp, i = response_at(lines, i)
        if len(resp) != 3 or not isinstance(resp[1], str) or resp[1].upper() != "FETCH":
            continue  # not a FETCH response (aioimaplib only routes FETCH here, but be sure)
        number, items = resp[0], resp[2]
        if (
            not isinstance(number, str)
            or not number.isdigit()
            or not isinstance(items, list)
            or len(items) % 2
        ):
            raise WireError("malformed FETCH response")
        entry = merged.setdefault(number, {SEQUENCE_KEY: number})
        for k in range(0, len(items), 2):
            key = items[k]
            if not isinstance(key, str):
                raise WireError("malformed FETCH item name")
            entry[item_key(key)] = items[k + 1]
    return [e for e in merged.values() if isinstance(e.get("UID"), str)]


def _uid(item: dict[str, Value]) -> int:
    value = item.get("UID")
    if not isinstance(value, str) or not value.isdigit():
        raise WireError("FETCH response without a numeric UID")
    return int(value)


# Flag sets seen, each kept once: a mailbox has a few dozen distinct ones, and a folder of
# 200,000 messages would otherwise hold 200,000 equal tuples of equal strings (~100 bytes each).
_FLAG_SETS: dict[tuple[str, ...], tuple[str, ...]] = {}
_FLAG_SETS_MAX = 4096


def _flags(item: dict[str, Value]) -> tuple[str, ...]:
    value = item.get("FLAGS")
    if not isinstance(value, list):
        return ()
    flags = tuple(f for f in value if isinstance(f, str))
    shared = _FLAG_SETS.get(flags)
    if shared is None and len(_FLAG_SETS) < _FLAG_SETS_MAX:
        shared = _FLAG_SETS[flags] = flags
    return shared or flags


def _header_section(item: dict[str, Value]) -> Value:
    for key, value in item.items():
        if key.startswith("BODY[HEADER") or key == "RFC822.HEADER":
            return value
    return None


def _bytes(value: Value | None) -> bytearray | None:
    if isinstance(value, bytearray):
        return value
    if isinstance(value, str):  # a small section may come as a quoted string
        return bytearray(value.encode("utf-8", "surrogateescape"))
    return None


def uid_size_from(item: dict[str, Value]) -> tuple[int, int]:
    """(UID, RFC822.SIZE) of one FETCH item dict; ``WireError`` without a numeric size."""
    size = item.get("RFC822.SIZE")
    if not isinstance(size, str) or not size.isdigit():
        raise WireError(f"FETCH response for UID {_uid(item)} without RFC822.SIZE")
    return _uid(item), int(size)


def uid_sizes_of(parts: Parts) -> list[tuple[int, int]] | None:
    """``uid_size_from`` of every ``fetch_items`` item of ``parts`` (the answers of one
    ``(UID RFC822.SIZE)`` FETCH, the read-back's first look), in the order sent, when they all
    have the plain layout of just those two items and ASCII digits: read straight from their
    matched bytes (~1 us a message; a read-back at the end of a large folder looks at tens of
    thousands). None for anything else: then ``fetch_items`` + ``uid_size_from`` read them
    (same values, and the errors)."""
    found = fetch_rows(parts)
    if found is None or sorted(found[0]) != ["RFC822.SIZE", "UID"] or found[1] != ("atom",) * 2:
        return None
    keys, _, rows = found
    iu, isize = (1, 2) if keys[0] == "UID" else (2, 1)
    if not all(row[iu].isdigit() and row[isize].isdigit() for row in rows):
        return None
    return [(int(row[iu]), int(row[isize])) for row in rows]


def meta_from(item: dict[str, Value]) -> MessageMeta:
    """A ``MessageMeta`` from one FETCH item dict; ``WireError`` without UID or INTERNALDATE."""
    raw = item.get("INTERNALDATE")
    if not isinstance(raw, str):
        raise WireError(f"FETCH response for UID {_uid(item)} without INTERNALDATE")
    try:
        when = parse_date_time(raw)
    except ValueError as exc:
        raise WireError(str(exc)) from None
    size = item.get("RFC822.SIZE")
    header = _bytes(_header_section(item)) or bytearray()
    return MessageMeta(
        uid=_uid(item),
        flags=_flags(item),
        internaldate=when,
        internaldate_raw=raw,
        size=int(size) if isinstance(size, str) and size.isdigit() else 0,
        header=bytes(header),
    )


# Per FETCH layout (item keys and value kinds): where ``metas_of`` finds each item, or None
# when the layout is not one it converts directly.
_Plan = tuple[int, int, int, int, int]
_META_PLANS: dict[tuple[tuple[str, ...], tuple[str, ...]], _Plan | None] = {}
_META_PLANS_MAX = 64
_FLAGS_BY_RAW: dict[bytes, tuple[str, ...]] = {}  # a FLAGS list as sent -> its shared tuple


def _meta_plan_of(layout: tuple[tuple[str, ...], tuple[str, ...]]) -> _Plan | None:
    return _meta_plan(*layout)


def _meta_plan(keys: tuple[str, ...], kinds: tuple[str, ...]) -> _Plan | None:
    """Indices (into a ``wire.fetch_rows`` row) of UID, FLAGS, INTERNALDATE, RFC822.SIZE (0:
    absent) and the header section, for a layout ``metas_of`` reads directly; else None."""
    found = {key: k for k, key in enumerate(keys, start=1)}
    if len(found) != len(keys):
        return None  # an item named twice: the general path's "later one wins"
    headers = [
        k for key, k in found.items() if key.startswith("BODY[HEADER") or key == "RFC822.HEADER"
    ]
    wanted = {"UID": "atom", "FLAGS": "list", "INTERNALDATE": "quoted"}
    if len(headers) != 1 or kinds[headers[0] - 1] != "literal":
        return None
    if any(kinds[found[key] - 1] != kind for key, kind in wanted.items() if key in found):
        return None
    if "UID" not in found or "FLAGS" not in found or "INTERNALDATE" not in found:
        return None
    size = found.get("RFC822.SIZE", 0)
    if size and kinds[size - 1] != "atom":
        return None
    return found["UID"], found["FLAGS"], found["INTERNALDATE"], size, headers[0]


def metas_of(parts: Parts) -> list[MessageMeta]:
    """``meta_from`` of every ``fetch_items`` item of ``parts`` (the answers of one metadata
    FETCH), in the order the server sent them: the same values and the same errors.

    Answers of one common layout (``wire.fetch_rows``) are converted straight from their
    matched bytes (~4 us a message instead of ~9: no item dict, flags looked up by their raw
    bytes); anything unusual in a batch sends the whole batch through the general path."""
    found = fetch_rows(parts)
    if found is not None:
        keys, kinds, rows = found
        plan = lru_lookup(_META_PLANS, (keys, kinds), _meta_plan_of, _META_PLANS_MAX)
        if plan is not None:
            metas = _metas_by_plan(plan, rows)
            if metas is not None:
                return metas
    return [meta_from(item) for item in fetch_items(parts)]


def _raw_flags(raw: bytes | bytearray) -> tuple[str, ...]:
    """``_flags`` of a FLAGS list's content as sent (a ``wire.fetch_rows`` value), looked up
    by those bytes: a mailbox has a few dozen distinct lists."""
    key = raw if type(raw) is bytes else bytes(raw)
    flags = _FLAGS_BY_RAW.get(key)
    if flags is None:
        flags = _flags({"FLAGS": list_atoms(key)})
        if len(_FLAGS_BY_RAW) < _FLAG_SETS_MAX:
            _FLAGS_BY_RAW[key] = flags
    return flags


# INTERNALDATE text -> its parsed value, for the metadata read: in a delta pass both servers
# send the same text for the same message, within a few batches of each other (both are read
# at once, in UID order), so the second side's dates are not parsed again (~2 us each).
# Bounded: when full, the older half is dropped (a dict keeps insertion order).
_DATES: dict[str, dt.datetime] = {}
_DATES_MAX = 1 << 16


def _date_of(text: str) -> dt.datetime:
    """``parse_date_time(text)``, from ``_DATES`` when seen lately (its ``ValueError`` too)."""
    when = _DATES.get(text)
    if when is None:
        when = parse_date_time(text)
        if len(_DATES) >= _DATES_MAX:
            for old in list(itertools.islice(_DATES, _DATES_MAX // 2)):
                _DATES.pop(old, None)
        _DATES[text] = when
    return when


def _metas_by_plan(
    plan: _Plan, rows: list[tuple[bytes | bytearray, ...]]
) -> list[MessageMeta] | None:
    iu, ifl, idate, isize, ihead = plan
    out: list[MessageMeta] = []
    for row in rows:
        uid, raw_flags, raw_date, header = row[iu], row[ifl], row[idate], row[ihead]
        size = row[isize] if isize else b""
        # What the general path would read differently is left to it: a UID that is not
        # ASCII digits (NIL drops the item, str.isdigit takes other scripts' digits), a size
        # in other scripts' digits, a date parse_date_time refuses (then its error; a date
        # with an escape is one: the raw bytes still hold the backslash).
        if not uid.isdigit() or not size.isascii():
            return None
        flags = _raw_flags(raw_flags)
        text = raw_date.decode("utf-8", "surrogateescape")
        try:
            when = _date_of(text)
        except ValueError:
            return None
        # positional: a third cheaper than by keyword, for every message read
        size_value = int(size) if size.isdigit() else 0
        out.append(MessageMeta(int(uid), flags, when, text, size_value, bytes(header)))
    return out


def exchange_substitute(body: bytes | bytearray) -> bool:
    """True for Exchange's synthetic "Retrieval using the IMAP4 protocol failed" message: its
    Subject says so, within the header (up to the first empty line, in the first 16 KiB)."""
    end = body.find(b"\r\n\r\n", 0, 16384)
    end = 16384 if end < 0 else end
    # A plain search for the phrase first (5x faster than the regex on every message); the
    # regex only where the phrase is (both fold ASCII case only).
    if b"imap4 protocol failed" not in body[:end].lower():
        return False
    return _EXCHANGE_SUBSTITUTE.search(body, 0, end) is not None


def messages_of(parts: Parts) -> list[FetchedMessage] | None:
    """``message_from`` of every ``fetch_items`` item of ``parts`` (the answers of one body
    FETCH), in the order sent, when they all have one layout of exactly UID, FLAGS,
    INTERNALDATE and ``BODY[]`` (a literal): read straight from their matched bytes, no item
    dict. None for anything else: then ``fetch_items`` + ``message_from`` read them (same
    values, and the errors)."""
    found = fetch_rows(parts)
    if found is None:
        return None
    keys, kinds, rows = found
    where = {key: k for k, key in enumerate(keys, start=1)}
    wanted = {"UID": "atom", "FLAGS": "list", "INTERNALDATE": "quoted", "BODY[]": "literal"}
    if len(keys) != len(wanted) or any(
        key not in where or kinds[where[key] - 1] != kind for key, kind in wanted.items()
    ):
        return None
    iu, ifl, idate, ibody = (where[key] for key in ("UID", "FLAGS", "INTERNALDATE", "BODY[]"))
    if not all(row[iu].isdigit() for row in rows):
        return None
    out: list[FetchedMessage] = []
    for row in rows:
        if b"\\" in row[idate]:  # an escape in the quoted date: the general path unescapes it
            return None
        flags, body = _raw_flags(row[ifl]), row[ibody]
        text = row[idate].decode("utf-8", "surrogateescape")
        try:
            when = parse_date_time(text) if text else None
        except ValueError:
            when = None
        error = None
        if not body:
            error = EMPTY_BODY
        elif exchange_substitute(body):
            error = EXCHANGE_FAILED
        assert isinstance(body, bytearray)  # a literal's payload (wire.fetch_rows)
        out.append(FetchedMessage(int(row[iu]), flags, text, when, None if error else body, error))
    return out


def message_from(item: dict[str, Value]) -> FetchedMessage:
    """A ``FetchedMessage`` from one FETCH item dict; body trouble goes into ``error``."""
    raw = item.get("INTERNALDATE")
    raw_text = raw if isinstance(raw, str) else ""
    try:
        when = parse_date_time(raw_text) if raw_text else None
    except ValueError:
        when = None
    body = _bytes(item.get("BODY[]", item.get("RFC822")))
    error = None
    if body is None:
        error = NO_BODY
    elif not body:
        error = EMPTY_BODY
    elif exchange_substitute(body):
        error = EXCHANGE_FAILED
    if error is not None:
        body = None
    return FetchedMessage(_uid(item), _flags(item), raw_text, when, body, error)
