"""A comparable picture of a whole mailbox, read with ``doveadm`` (no IMAP login).

Owns: ``snapshot_mailbox(server, user)``: every folder's name, UIDVALIDITY and messages (UID,
flags without ``\\Recent``, INTERNALDATE as epoch seconds, sha256 and size of the bytes an IMAP
``FETCH BODY[]`` returns). Must not: change the mailbox. doveadm does not set ``\\Seen`` and
does not take ``\\Recent`` (measured), and it never logs in, so ``count_logins`` and
``max_concurrent_sessions`` are not disturbed by taking snapshots.

Dovecot stores APPENDed mail with LF line ends and sends CRLF over IMAP, while the pre-loaded
corpus is stored with CRLF; hashing after turning every bare LF into CRLF gives, in both cases,
the hash of what IMAP clients see.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from testkit.dovecot import DovecotServer

Content = tuple[str, frozenset[str], int]  # (sha256, flags, internaldate)


@dataclass(frozen=True, slots=True)
class MessageState:
    uid: int
    flags: frozenset[str]
    internaldate: int  # seconds since the epoch
    sha256: str
    size: int

    @property
    def content(self) -> Content:
        return (self.sha256, self.flags, self.internaldate)


@dataclass(frozen=True, slots=True)
class FolderState:
    name: str
    uidvalidity: int
    messages: tuple[MessageState, ...]  # in UID order

    def contents(self) -> Counter[Content]:
        """The messages as a multiset of (sha256, flags, internaldate), UIDs ignored."""
        return Counter(m.content for m in self.messages)


@dataclass(frozen=True, slots=True)
class MailboxSnapshot:
    """Equal snapshots mean nothing changed: same folders, UIDVALIDITY, UIDs, flags, dates
    and bytes. ``noselect`` lists the hierarchy-only folders."""

    folders: dict[str, FolderState]
    noselect: frozenset[str]

    def contents(self) -> dict[str, Counter[Content]]:
        return {name: f.contents() for name, f in self.folders.items()}

    def under(self, prefix: str) -> dict[str, FolderState]:
        """Folders named ``prefix`` or below it (``prefix`` must end with the separator to
        exclude the folder itself)."""
        return {n: f for n, f in self.folders.items() if n == prefix or n.startswith(prefix)}


def imap_sha256(stored: bytes) -> tuple[str, int]:
    """sha256 and size of ``stored`` as IMAP sends it: bare LF becomes CRLF."""
    wire = stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return hashlib.sha256(wire).hexdigest(), len(wire)


def parse_fetch_pager(out: bytes) -> list[dict[str, bytes]]:
    """Parse ``doveadm -f pager fetch '... size.physical text'`` output.

    Records are ``key: value`` lines, then ``text:`` and exactly ``size.physical`` raw bytes,
    separated by a form feed line; reading by size keeps any byte sequence inside a message
    from being mistaken for a separator.
    """
    records: list[dict[str, bytes]] = []
    pos = 0
    while pos < len(out):
        record: dict[str, bytes] = {}
        while True:
            end = out.index(b"\n", pos)
            line = out[pos:end]
            pos = end + 1
            if line == b"text:":
                break
            key, _, value = line.partition(b": ")
            record[key.decode()] = value
        size = int(record["size.physical"])
        record["text"] = out[pos : pos + size]
        pos += size
        if out.startswith(b"\f\n", pos):
            pos += 2
        elif pos != len(out):
            raise ValueError(f"unexpected doveadm pager output at byte {pos}")
        records.append(record)
    return records


def snapshot_mailbox(server: DovecotServer, user: str) -> MailboxSnapshot:
    """Read every folder of ``user`` on ``server`` (running) into a ``MailboxSnapshot``."""
    # "*" alone matches nothing in a namespace with a prefix (measured on the DEST kind).
    masks = ("INBOX", f"{server.prefix}*") if server.prefix else ("*",)
    status = server.doveadm(
        "-f", "tab", "mailbox", "status", "-u", user, "uidvalidity", *masks
    ).stdout.decode()
    uidvalidity: dict[str, int] = {}
    for row in status.splitlines()[1:]:
        name, value = row.rsplit("\t", 1)
        uidvalidity[name] = int(value)
    listed = server.doveadm("mailbox", "list", "-u", user).stdout.decode().splitlines()
    fields = "mailbox uid flags date.received.unixtime size.physical text"
    out = server.doveadm("-f", "pager", "fetch", "-u", user, fields, "ALL").stdout
    messages: dict[str, list[MessageState]] = {name: [] for name in uidvalidity}
    for rec in parse_fetch_pager(out):
        sha, size = imap_sha256(rec["text"])
        flags = frozenset(rec["flags"].decode().split()) - {"\\Recent"}
        messages[rec["mailbox"].decode()].append(
            MessageState(
                uid=int(rec["uid"]),
                flags=flags,
                internaldate=int(rec["date.received.unixtime"]),
                sha256=sha,
                size=size,
            )
        )
    folders = {
        name: FolderState(name, uidvalidity[name], tuple(sorted(msgs, key=lambda m: m.uid)))
        for name, msgs in messages.items()
    }
    return MailboxSnapshot(folders, frozenset(listed) - set(folders))
