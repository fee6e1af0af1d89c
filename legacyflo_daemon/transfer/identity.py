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
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from legacyflo_daemon.transfer.headers import header_fields, message_id

T = TypeVar("T")
_HASHED_FIELDS = (b"date", b"from", b"to", b"subject")
_WSP_RUN = re.compile(rb"[ \t\r\n]+")
_WSP = b" \t\r\n"


def _normalise(value: bytes) -> bytes:
    return _WSP_RUN.sub(b" ", value).strip(b" ")


def _epoch(internaldate: dt.datetime) -> int:
    # utcoffset() is None exactly when the datetime is naive (no tzinfo, or one that gives
    # no offset).
    if internaldate.utcoffset() is None:
        raise ValueError("INTERNALDATE must be a timezone-aware datetime")
    return math.floor(internaldate.timestamp())


def identity(header_bytes: bytes | bytearray, internaldate: dt.datetime) -> str:
    """The identity key of a message (see the module docstring for the format).

    ``header_bytes`` is the ``BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]``
    literal or a whole message; ``internaldate`` must be timezone-aware (else ``ValueError``).
    A Message-ID that is empty, blank or ``<>`` counts as absent.
    """
    epoch = _epoch(internaldate)
    # The Message-ID alone is read first: the other fields only when it is absent (rare).
    key = _id_key(epoch, message_id(header_bytes) or b"")
    return key if key is not None else _hdr_key(epoch, header_fields(header_bytes))


def identity_of_fields(fields: dict[bytes, bytes], internaldate: dt.datetime) -> str:
    """``identity`` of a message whose ``headers.header_fields`` are already at hand (a
    caller that needs them for something else too parses the header once)."""
    epoch = _epoch(internaldate)
    key = _id_key(epoch, fields.get(b"message-id", b""))
    return key if key is not None else _hdr_key(epoch, fields)


def _id_key(epoch: int, raw_mid: bytes) -> str | None:
    """The ``id``/``idh`` key of a message with this Message-ID (raw, unfolded); None when
    it counts as absent."""
    mid = raw_mid.translate(None, _WSP)  # every space, tab, CR, LF: folding may insert them
    if not mid.strip(b"<>"):
        return None
    # Printable ASCII (spaces are gone) is kept as it is; anything else is hashed.
    if mid.isascii():
        text = mid.decode("ascii")
        if text.isprintable():
            return f"id {epoch} {text}"
    return f"idh {epoch} {hashlib.sha256(mid).hexdigest()}"


def _hdr_key(epoch: int, fields: dict[bytes, bytes]) -> str:
    """The ``hdr`` key: a hash of Date, From, To and Subject."""
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


class Matcher(Generic[T]):
    """The multiset comparison of ``missing``, done while the two sides are read.

    Feed it the source's messages in ascending UID order (``add_source``: key and whatever the
    caller needs of a message that may have to be copied) and the destination's keys in any
    order (``add_dest``), interleaved as the two servers answer. A destination key takes the
    earliest source message of that key not taken yet, so, as in ``missing``, of k source
    messages with a key of which the destination holds j, the first j (by UID) are present and
    the last k - j missing. Only what is not matched yet is held: during a delta pass, where
    both sides hold the same messages, that is what one side has read ahead of the other,
    not the folder.
    """

    def __init__(self) -> None:
        self._left: dict[str, int] = {}  # destination keys no source message has taken yet
        self._first: dict[str, T] = {}  # per key, its earliest source message not taken yet
        self._more: dict[str, list[T]] = {}  # per key, the later ones (duplicates), by UID
        self.source = 0  # source messages added
        self.present = 0  # source messages a destination message took

    def add_source(self, key: str, item: T) -> None:
        self.source += 1
        n = self._left.get(key)
        if n:
            if n == 1:
                del self._left[key]
            else:
                self._left[key] = n - 1
            self.present += 1
        elif key in self._first:
            self._more.setdefault(key, []).append(item)
        else:
            self._first[key] = item

    def add_dest(self, key: str) -> None:
        if key in self._first:
            more = self._more.get(key)
            if more:
                self._first[key] = more.pop(0)
                if not more:
                    del self._more[key]
            else:
                del self._first[key]
            self.present += 1
        else:
            self._left[key] = self._left.get(key, 0) + 1

    def missing(self) -> Iterator[tuple[str, T]]:
        """(key, item) of every source message no destination message took (once both sides
        are read: the messages to copy), by key, each key's in UID order."""
        for key, item in self._first.items():
            yield key, item
            for later in self._more.get(key, ()):
                yield key, later

    def clear(self) -> None:
        """Let go of everything held (the counts stay): once ``missing`` has been taken."""
        self._left, self._first, self._more = {}, {}, {}

    def left(self) -> Counter[str]:
        """Destination keys no source message took (once both sides are read)."""
        return Counter(self._left)


def batches(items: Iterable[tuple[int, int]], max_count: int, max_bytes: int) -> list[list[int]]:
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
