"""Message identity and the copy plan: what is missing, and how to fetch it (docs/contract.md §5.3).

Owns: the identity key of a message (Message-ID + INTERNALDATE, or a hash of Date/From/To/
Subject + INTERNALDATE), the multiset comparison that decides which source UIDs still have to
be copied, and batching them by count and bytes (writing UIDs as IMAP sets is
``imap.syntax.uidset``'s).
Must not: fetch anything, look at the clock, or use RFC822.SIZE as identity (Exchange reports
estimates; sizes are only used to bound memory per batch).

Keys are plain ASCII strings (safe to store in SQLite and to log), one of::

    id <epoch> <message-id>       Message-ID present and printable ASCII
    idh <epoch> <sha256 hex>      Message-ID present but with 8-bit or control bytes
    hdr <epoch> <sha256 hex>      no Message-ID: hash of Date, From, To, Subject

``<epoch>`` is INTERNALDATE as whole UTC seconds, so the same instant written with different
zones is one key. The Message-ID is compared exactly (case-sensitive, as RFC 5322 gives no
case rule for it) after unfolding and removing whitespace, which folding may have inserted.
Field values are the raw bytes ``headers.header_fields`` finds: keys must never change between
runs, so that parser's behaviour is part of the key format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from legacyflo_daemon.transfer.headers import header_fields

_HASHED_FIELDS = (b"date", b"from", b"to", b"subject")
_WSP_RUN = re.compile(rb"[ \t\r\n]+")
_PRINTABLE = re.compile(rb"[\x21-\x7e]*")  # printable ASCII, no space


def _normalise(value: bytes) -> bytes:
    return _WSP_RUN.sub(b" ", value).strip(b" ")


def _epoch(internaldate: dt.datetime) -> int:
    if internaldate.tzinfo is None or internaldate.utcoffset() is None:
        raise ValueError("INTERNALDATE must be a timezone-aware datetime")
    return math.floor(internaldate.timestamp())


def identity(header_bytes: bytes | bytearray, internaldate: dt.datetime) -> str:
    """The identity key of a message (see the module docstring for the format).

    ``header_bytes`` is the ``BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]``
    literal or a whole message; ``internaldate`` must be timezone-aware (else ``ValueError``).
    A Message-ID that is empty, blank or ``<>`` counts as absent.
    """
    epoch = _epoch(internaldate)
    fields = header_fields(header_bytes)
    mid = _WSP_RUN.sub(b"", fields.get(b"message-id", b""))
    if mid.strip(b"<>"):
        if _PRINTABLE.fullmatch(mid):
            return f"id {epoch} {mid.decode('ascii')}"
        return f"idh {epoch} {hashlib.sha256(mid).hexdigest()}"
    h = hashlib.sha256()
    for name in _HASHED_FIELDS:
        value = _normalise(fields.get(name, b""))
        # Length-prefixed so that no field's content can shift into the next one.
        h.update(b"%s:%d:" % (name, len(value)))
        h.update(value)
    return f"hdr {epoch} {h.hexdigest()}"


def missing(source: list[tuple[int, str]], dest_keys: Iterable[str]) -> list[int]:
    """Source UIDs still to copy, ascending.

    Identity is a multiset: a key found k times in ``source`` (``(uid, key)`` pairs) and j times
    in ``dest_keys`` means the last k - j source UIDs of that key (in UID order) are missing.
    Genuine duplicates in the source all arrive; a re-run adds nothing; destination messages
    with keys the source does not have are ignored.
    """
    have = Counter(dest_keys)
    by_key: defaultdict[str, list[int]] = defaultdict(list)
    for uid, key in source:
        by_key[key].append(uid)
    out: list[int] = []
    for key, uids in by_key.items():
        uids.sort()
        j = have.get(key, 0)
        if j < len(uids):
            out.extend(uids[j:])
    out.sort()
    return out


def batches(items: list[tuple[int, int]], max_count: int, max_bytes: int) -> list[list[int]]:
    """Split ``(uid, size)`` pairs, in the given order, into UID batches.

    Each batch has at most ``max_count`` UIDs and at most ``max_bytes`` total size, except that
    a single message larger than ``max_bytes`` forms a batch of its own. Sizes are estimates
    on Exchange; they bound memory, they are not checked against what arrives.
    """
    if max_count < 1 or max_bytes < 1:
        raise ValueError("max_count and max_bytes must be at least 1")
    out: list[list[int]] = []
    batch: list[int] = []
    total = 0
    for uid, size in items:
        size = max(size, 0)
        if batch and (len(batch) >= max_count or total + size > max_bytes):
            out.append(batch)
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        out.append(batch)
    return out
