"""Loading and reading a mailbox over IMAP, for the test servers that have no doveadm (Cyrus,
Courier): folders, APPEND with flags and INTERNALDATE, and read-only snapshots.

Owns: a small parser for IMAP responses as ``imaplib`` returns them (NAMESPACE, LIST, FETCH
with literals), modified UTF-7 names, and three operations on a logged-in ``imaplib``
connection: ``create_folder``, ``append_messages`` (one APPEND per message, synchronizing
literals: works on every server) and ``read_mailbox`` (EXAMINE and ``BODY.PEEK[]`` only, so
nothing in the mailbox changes: no ``\\Seen`` set, no ``\\Recent`` taken). Must not: know how a
server is started or where it keeps its files.

Snapshots have the same types as ``snapshot.py`` (``MailboxSnapshot``/``FolderState``/
``MessageState``), so a mailbox on Cyrus or Courier compares with one on Dovecot: folder names
decoded from modified UTF-7, flags without ``\\Recent``, INTERNALDATE as epoch seconds, sha256
and size of the ``BODY[]`` bytes. Only the personal namespace is read: other users' and shared
folders, which ``LIST "" "*"`` also returns on Cyrus, are left out.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import imaplib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from testkit.maildir import LoadedMessage, MailSpec, encode_mutf7
from testkit.snapshot import FolderState, MailboxSnapshot, MessageState

__all__ = [
    "Namespaces",
    "append_messages",
    "create_folder",
    "decode_mutf7",
    "folder_names",
    "namespaces",
    "parse_fetch",
    "parse_list",
    "parse_sexp",
    "quote",
    "read_mailbox",
]

# Marks the kit's own sessions (loading, snapshots) in per-user wire logs; sent with ID where
# the server offers ID (Cyrus), so that log readers can leave these sessions out.
TESTKIT_ID = "legacyflo-testkit"


class ImapError(RuntimeError):
    """A command of the test kit got NO or BAD."""


def _check(result: tuple[str, list[object]], what: str) -> list[object]:
    typ, data = result
    if typ != "OK":
        raise ImapError(f"{what}: {typ} {data!r}")
    return data


# -- names -------------------------------------------------------------------------------------


def decode_mutf7(name: str) -> str:
    """RFC 3501 modified UTF-7 to text: ``Caf&AOk- &- Co`` -> ``Café & Co``."""
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.index("-", i)
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            raw = chunk.replace(",", "/")
            raw += "=" * (-len(raw) % 4)
            out.append(base64.b64decode(raw).decode("utf-16-be"))
        i = end + 1
    return "".join(out)


def quote(name: str) -> str:
    """``name`` (text) as an IMAP quoted string in modified UTF-7."""
    wire = encode_mutf7(name)
    return '"' + wire.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- responses ---------------------------------------------------------------------------------


class Literal(bytes):
    """A ``{n}`` literal's bytes inside a parsed response."""


class Quoted(str):
    """A quoted string (as opposed to an atom) inside a parsed response."""


_OPEN, _CLOSE = object(), object()
_LITERAL_TAIL = re.compile(rb"\{\d+\+?\}$")
# An atom; a bracketed section (``BODY[HEADER.FIELDS (A B)]``) may hold spaces and parentheses.
_ATOM = re.compile(rb'(?:[^ ()"\[]|\[[^\]]*\])+')


def _tokens(chunks: Iterable[object]) -> Iterator[object]:
    for chunk in chunks:
        if isinstance(chunk, tuple):
            prefix, literal = chunk
            yield from _tokens([_LITERAL_TAIL.sub(b"", prefix)])
            yield Literal(literal)
            continue
        if not isinstance(chunk, bytes):
            raise TypeError(f"unexpected response element {chunk!r}")
        data, i = chunk, 0
        while i < len(data):
            c = data[i : i + 1]
            if c in (b" ", b"\r", b"\n"):
                i += 1
            elif c == b"(":
                yield _OPEN
                i += 1
            elif c == b")":
                yield _CLOSE
                i += 1
            elif c == b'"':
                j, buf = i + 1, bytearray()
                while data[j : j + 1] != b'"':
                    if data[j : j + 1] == b"\\":
                        j += 1
                    buf += data[j : j + 1]
                    j += 1
                yield Quoted(buf.decode("utf-8", errors="surrogateescape"))
                i = j + 1
            else:
                m = _ATOM.match(data, i)
                if m is None:
                    raise ValueError(f"cannot parse {data!r} at {i}")
                yield m.group().decode("utf-8", errors="surrogateescape")
                i = m.end()


def parse_sexp(chunks: Iterable[object]) -> list[object]:
    """imaplib response elements -> nested lists of atoms (``str``), ``Quoted``, ``Literal``;
    ``NIL`` stays the atom ``"NIL"``."""
    stack: list[list[object]] = [[]]
    for tok in _tokens(chunks):
        if tok is _OPEN:
            stack.append([])
        elif tok is _CLOSE:
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise ValueError("unbalanced parentheses in response")
    return stack[0]


@dataclass(frozen=True, slots=True)
class Namespaces:
    """RFC 2342: (prefix, separator) pairs of each kind; ``None`` separator for NIL."""

    personal: tuple[tuple[str, str | None], ...]
    other: tuple[tuple[str, str | None], ...]
    shared: tuple[tuple[str, str | None], ...]


def _namespace_kind(value: object) -> tuple[tuple[str, str | None], ...]:
    if value == "NIL":
        return ()
    assert isinstance(value, list)
    out = []
    for entry in value:
        assert isinstance(entry, list)
        prefix, sep = entry[0], entry[1]
        out.append((decode_mutf7(str(prefix)), None if sep == "NIL" else str(sep)))
    return tuple(out)


def namespaces(conn: imaplib.IMAP4) -> Namespaces:
    data = _check(conn.namespace(), "NAMESPACE")
    parts = parse_sexp(data)
    return Namespaces(*(_namespace_kind(p) for p in parts[:3]))


def parse_list(data: Sequence[object]) -> list[tuple[frozenset[str], str | None, str]]:
    """LIST response lines -> (attributes, separator, decoded name)."""
    out = []
    for item in data:
        if item is None:
            continue
        parsed = parse_sexp([item])
        attrs, sep, name = parsed[0], parsed[1], parsed[2]
        assert isinstance(attrs, list)
        if isinstance(name, Literal):
            name = name.decode("utf-8", errors="surrogateescape")
        out.append(
            (
                frozenset(str(a) for a in attrs),
                None if sep == "NIL" else str(sep),
                decode_mutf7(str(name)),
            )
        )
    return out


def parse_fetch(data: Sequence[object]) -> list[dict[str, object]]:
    """FETCH responses as imaplib returns them -> one dict per message, upper-case item
    names (``UID``, ``FLAGS``, ``INTERNALDATE``, ``BODY[]``...) to parsed values."""
    parsed = parse_sexp(item for item in data if item is not None)
    out = []
    for i in range(0, len(parsed), 2):
        items = parsed[i + 1]
        assert isinstance(items, list)
        out.append({str(items[j]).upper(): items[j + 1] for j in range(0, len(items), 2)})
    return out


def parse_internaldate(value: str) -> dt.datetime:
    """``" 4-Jul-2017 02:40:00 +0000"`` -> an aware datetime."""
    return dt.datetime.strptime(value.strip(), "%d-%b-%Y %H:%M:%S %z")


# -- operations --------------------------------------------------------------------------------


def mark_session(conn: imaplib.IMAP4) -> None:
    """Send ``ID ("name" "legacyflo-testkit")`` if the server offers ID (see TESTKIT_ID)."""
    if "ID" in conn.capabilities:
        conn.xatom("ID", f'("name" "{TESTKIT_ID}")')


def folder_names(conn: imaplib.IMAP4) -> dict[str, frozenset[str]]:
    """The user's own folders (personal namespace, INBOX included) -> LIST attributes."""
    ns = namespaces(conn)
    listed = parse_list(_check(conn.list('""', '"*"'), "LIST"))
    personal = [p for p, _sep in ns.personal]
    foreign = [p for p, _sep in ns.other + ns.shared if p]

    def own(name: str) -> bool:
        if name.upper() == "INBOX":
            return True
        if any(p and name.startswith(p) for p in personal):
            return True
        return "" in personal and not any(name.startswith(p) for p in foreign)

    return {name: attrs for attrs, _sep, name in listed if own(name)}


def create_folder(conn: imaplib.IMAP4, folder: str) -> None:
    """Create ``folder`` (full name, e.g. ``INBOX.a.b``) unless it exists."""
    if folder.upper() == "INBOX" or folder in folder_names(conn):
        return
    _check(conn.create(quote(folder)), f"CREATE {folder}")


def _check_crlf(spec: MailSpec) -> None:
    bare = spec.data.replace(b"\r\n", b"")
    if b"\n" in bare or b"\r" in bare:
        raise ValueError(f"{spec.label or 'message'}: bare CR or LF; test mail must use CRLF")


def append_messages(
    conn: imaplib.IMAP4, folder: str, specs: Sequence[MailSpec]
) -> list[LoadedMessage]:
    """APPEND ``specs`` to ``folder`` (created if needed) in order: UIDs follow that order."""
    create_folder(conn, folder)
    loaded = []
    for spec in specs:
        _check_crlf(spec)
        if "\\Recent" in spec.flags:
            raise ValueError("\\Recent cannot be stored")
        flags = "(" + " ".join(sorted(spec.flags)) + ")"
        date = imaplib.Time2Internaldate(spec.internaldate)
        _check(conn.append(quote(folder), flags, date, spec.data), f"APPEND to {folder}")
        loaded.append(
            LoadedMessage(
                folder=folder,
                label=spec.label,
                sha256=hashlib.sha256(spec.data).hexdigest(),
                size=len(spec.data),
                flags=spec.flags,
                internaldate=spec.internaldate,
            )
        )
    return loaded


def _folder_state(conn: imaplib.IMAP4, name: str) -> FolderState:
    typ, data = conn.select(quote(name), readonly=True)  # EXAMINE
    if typ != "OK":
        raise ImapError(f"EXAMINE {name}: {typ} {data!r}")
    exists = int(data[0] or 0)  # type: ignore[call-overload]
    _typ, validity = conn.response("UIDVALIDITY")
    uidvalidity = int(validity[-1])  # type: ignore[call-overload]
    messages = []
    if exists:
        fetched = _check(
            conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])"), f"FETCH {name}"
        )
        for rec in parse_fetch(fetched):
            if "BODY[]" not in rec:
                continue  # an unsolicited FETCH (a flag change by another session)
            body = rec["BODY[]"]
            assert isinstance(body, bytes)
            flags = rec["FLAGS"]
            assert isinstance(flags, list)
            messages.append(
                MessageState(
                    uid=int(str(rec["UID"])),
                    flags=frozenset(str(f) for f in flags) - {"\\Recent"},
                    internaldate=int(parse_internaldate(str(rec["INTERNALDATE"])).timestamp()),
                    sha256=hashlib.sha256(body).hexdigest(),
                    size=len(body),
                )
            )
    return FolderState(name, uidvalidity, tuple(sorted(messages, key=lambda m: m.uid)))


def read_mailbox(conn: imaplib.IMAP4) -> MailboxSnapshot:
    """Every folder of the logged-in user, read without changing anything (EXAMINE, PEEK)."""
    folders: dict[str, FolderState] = {}
    noselect: set[str] = set()
    for name, attrs in sorted(folder_names(conn).items()):
        lowered = {a.lower() for a in attrs}
        if "\\noselect" in lowered or "\\nonexistent" in lowered:
            noselect.add(name)
            continue
        folders[name] = _folder_state(conn, name)
    if conn.state == "SELECTED":
        conn.close()  # after EXAMINE: expunges nothing (RFC 3501 6.4.2)
    return MailboxSnapshot(folders, frozenset(noselect))
