"""Read-back: did the destination store what we appended? Pure (docs/contract.md §5).

Owns the comparison of one appended batch with what the destination holds afterwards (read with
``UID FETCH <uidnext>:*`` of the same identity items as any folder read), and the words that
explain a difference to a person. An APPEND OK is not proof of a faithful copy: Cyrus's default
``munge8bit`` replaces raw 8-bit header bytes with ``X``, other servers re-fold headers or add
fields. Such a copy is stored, so it counts as copied (counts are per stored message), but it
is reported "altered by the destination" and its stored identity is remembered as an alias of
the source's, so that no later pass appends the message again.

Matching (decision): first by (identity, size, identity header bytes) as a multiset, so exact
copies are confirmed whatever order the server assigned UIDs in; what is left is paired in UID
order (servers give appended messages ascending UIDs in append order); an appended message with
nothing left to pair with is "not stored" (the server said OK but the folder does not hold it);
stored messages left over were put there by someone else and are ignored. A message whose header
holds raw 8-bit bytes is also compared by its whole header block: a rewrite of such bytes keeps
sizes and may spare the identity fields. The copier reads back every ``READ_BACK_BYTES``
appended and at the end of a folder: the sizes of the new UIDs (one FETCH without literals),
then size, date and whole header only of the copies that need a closer look (a size that
differs, a header with 8-bit bytes); when the new UIDs are not one per message sent, everything
new is matched by identity (``compare``).
Must not: talk to a server, or use a size as identity (only an exact copy may confirm by size).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from legacyflo_daemon.transfer.headers import header_fields

_FIELDS = ((b"message-id", "Message-ID"), (b"date", "Date"), (b"from", "From"),
           (b"to", "To"), (b"subject", "Subject"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Appended:
    """One message we appended: its source UID, identity key, size and identity headers, and
    its whole header block when that holds raw 8-bit bytes (else None)."""

    uid: int
    key: str
    size: int
    header: bytes
    header_block: bytes | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """One message the destination holds after the batch: its UID there, key, size, headers."""

    uid: int
    key: str
    size: int
    header: bytes


@dataclass(frozen=True, slots=True)
class Altered:
    """An appended message stored differently: ``stored`` None means not stored at all."""

    appended: Appended
    stored: Stored | None
    difference: str  # what differs, for people ("size 1,234 → 1,230 bytes; Subject")
    cause: str  # the likely cause, for people ("" when we cannot tell)


Pair = tuple[Appended, Stored | None]

# Messages a destination must have stored faithfully (in this request) before its read-backs
# are skipped: all messages, and those whose header has raw 8-bit bytes.
PROBATION = 200
PROBATION_8BIT = 20


@dataclass
class Trust:
    """What one destination has shown during one request, shared by its folder copies.

    Altering mail is a server's setting (munge8bit, a header it adds), not chance: once a
    destination has stored ``PROBATION`` messages (``PROBATION_8BIT`` with raw 8-bit headers)
    exactly and altered none, reading back costs a round trip per folder for nothing, and is
    skipped for the rest of the request; 8-bit messages keep being read back until they have
    proven themselves too. A destination that altered anything is read back to the end.
    """

    faithful: int = 0
    faithful_8bit: int = 0
    altered: bool = False
    altered_8bit: bool = False

    def skip(self, eight_bit: int) -> bool:
        """Whether a read-back of messages (``eight_bit`` of them with 8-bit headers) may be
        skipped."""
        sizes = not self.altered and self.faithful >= PROBATION
        bits = eight_bit == 0 or (not self.altered_8bit and self.faithful_8bit >= PROBATION_8BIT)
        return sizes and bits

    def learn(self, sent: list[Appended], changes: list[Altered]) -> None:
        """Count what a read-back of ``sent`` found."""
        changed = {c.appended.uid for c in changes}
        for a in sent:
            eight_bit = a.header_block is not None
            if a.uid in changed:  # an 8-bit header's change says nothing about other mail
                if eight_bit:
                    self.altered_8bit = True
                else:
                    self.altered = True
            else:
                self.faithful += 1
                self.faithful_8bit += int(eight_bit)


_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


def eight_bit_header(message: bytes | bytearray) -> bytes | None:
    """The header block of ``message`` (blank line included) if it holds raw 8-bit bytes, else
    None. Such headers are the ones servers rewrite without changing sizes (Cyrus
    ``munge8bit``), so only their copies are compared byte for byte."""
    end = message.find(b"\r\n\r\n")
    end = end + 4 if end >= 0 else len(message)
    if _EIGHT_BIT.search(message, 0, end) is None:  # the usual case: no copy of the header
        return None
    return bytes(message[:end])


def _fields(header: bytes) -> tuple[bytes | None, ...]:
    found = header_fields(header)
    return tuple(found.get(name) for name, _label in _FIELDS)


def pair(appended: list[Appended], stored: list[Stored]) -> list[Pair]:
    """Each appended message with the stored message that is its copy (None: not stored), in
    ``appended`` order (see the module docstring: matching). Headers are compared by their
    identity fields: the appended side has those alone, the stored side its whole header."""
    exact: defaultdict[tuple[str, int, tuple[bytes | None, ...]], list[Stored]] = defaultdict(list)
    ordered = sorted(stored, key=lambda s: s.uid)
    for s in ordered:
        exact[(s.key, s.size, _fields(s.header))].append(s)
    used: set[int] = set()
    found: dict[int, Stored] = {}
    for i, a in enumerate(appended):
        candidates = exact.get((a.key, a.size, _fields(a.header)))
        if candidates:
            s = candidates.pop(0)
            used.add(s.uid)
            found[i] = s
    rest = iter([s for s in ordered if s.uid not in used])
    return [(a, found[i] if i in found else next(rest, None)) for i, a in enumerate(appended)]


def judge(pairs: list[Pair]) -> list[Altered]:
    """The appended messages the destination did not store exactly, in ``pairs`` order: not
    stored, another size or identity, or (for a header with raw 8-bit bytes) another header
    block. ``Stored.header`` must be the whole stored header block."""
    out: list[Altered] = []
    for a, s in pairs:
        if s is None:
            out.append(Altered(a, None, "not found in the folder after the server said OK",
                               "the destination dropped it after accepting it"))  # fmt: skip
            continue
        same = (a.key, a.size, _fields(a.header)) == (s.key, s.size, _fields(s.header))
        if same and (a.header_block is None or a.header_block == s.header):
            continue
        before = a.header_block if a.header_block is not None else a.header
        out.append(Altered(a, s, describe(a, s), likely_cause(before, s.header)))
    return out


def compare(appended: list[Appended], stored: list[Stored]) -> list[Altered]:
    """``judge(pair(appended, stored))``."""
    return judge(pair(appended, stored))


def describe(appended: Appended, stored: Stored) -> str:
    """What differs between an appended message and its stored copy, in words."""
    parts = []
    if appended.size != stored.size:
        parts.append(f"size {appended.size:,} → {stored.size:,} bytes")
    src, dst = header_fields(appended.header), header_fields(stored.header)
    changed = [label for name, label in _FIELDS if src.get(name) != dst.get(name)]
    if changed:
        parts.append("header " + ", ".join(changed) + " changed")
    return "; ".join(parts) or "header bytes changed"


def likely_cause(source_header: bytes, stored_header: bytes) -> str:
    """A likely reason for the change, from the headers of both (whole blocks or identity
    fields; ``""``: unknown)."""
    candidates = [(source_header, stored_header)]
    src, dst = header_fields(source_header), header_fields(stored_header)
    candidates += [(src.get(name, b""), dst.get(name, b"")) for name, _label in _FIELDS]
    for before, after in candidates:
        if before == after or len(before) != len(after):
            continue
        eight_bit = [i for i, c in enumerate(before) if c >= 0x80]
        if eight_bit and all(after[i] == ord("X") for i in eight_bit):
            return (
                "the destination replaced raw 8-bit header bytes with 'X' "
                "(Cyrus IMAP's munge8bit setting)"
            )
    if any(c >= 0x80 for c in source_header):
        return "the destination rewrote header bytes that are not ASCII"
    return ""


def reason(altered: Altered) -> str:
    """The one-line reason recorded for an altered message (result, report)."""
    text = f"altered by the destination: {altered.difference}"
    return f"{text} ({altered.cause})" if altered.cause else text
