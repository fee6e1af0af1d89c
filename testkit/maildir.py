"""Pre-loading a test server's mail by writing maildir files directly (no IMAP, no doveadm).

Owns: where a folder lives on disk for each server kind, IMAP modified UTF-7 for the on-disk
names, the maildir file name (flag letters, keyword letters), INTERNALDATE as the file's mtime,
and ownership. Must not: talk to the server; Dovecot discovers the files on the next access and
assigns UIDs 1..N in file-name order (the names carry a sequence number for that reason).

Layouts (Dovecot 2.3, names stored in modified UTF-7 on disk):
- SOURCE ``maildir:~/Maildir:LAYOUT=fs``, separator ``/``: INBOX is ``Maildir/``, ``Sent Items``
  is ``Maildir/Sent Items/``, children of INBOX are under ``Maildir/INBOX/``.
- DEST ``maildir:~/Maildir`` (Maildir++), prefix ``INBOX.``: INBOX is ``Maildir/``,
  ``INBOX.a.b`` is ``Maildir/.a.b/`` with an empty ``maildirfolder`` file.
Keywords: letters ``a``..``z`` in a file name index the lines of the folder's
``dovecot-keywords`` file (``0 $Forwarded``...).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from testkit.dovecot import DovecotServer
from testkit.dovecot_conf import ServerKind

# IMAP system flag -> maildir info letter; the letters must be written in ASCII order.
FLAG_LETTERS: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}


@dataclass(frozen=True, slots=True)
class MailSpec:
    """A message to load: exact bytes (CRLF), IMAP flags/keywords, INTERNALDATE (aware)."""

    data: bytes
    flags: frozenset[str]
    internaldate: dt.datetime
    label: str = ""  # a name tests can look the message up by


@dataclass(frozen=True, slots=True)
class LoadedMessage:
    """What was loaded; ``sha256``/``size`` are of the bytes an IMAP FETCH BODY[] returns."""

    folder: str
    label: str
    sha256: str
    size: int
    flags: frozenset[str]
    internaldate: dt.datetime


def encode_mutf7(name: str) -> str:
    """RFC 3501 modified UTF-7: ``Café & Co`` -> ``Caf&AOk- &- Co``."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def folder_dir(server: DovecotServer, user: str, folder: str) -> Path:
    """The directory holding ``cur/`` of ``folder`` (IMAP name, decoded, server's separator)."""
    root = server.maildir(user)
    if folder == "INBOX":
        return root
    if server.kind is ServerKind.SOURCE:
        return root.joinpath(*(encode_mutf7(part) for part in folder.split("/")))
    if not folder.startswith(server.prefix):
        raise ValueError(f"destination folders live under {server.prefix!r}: {folder!r}")
    rest = folder[len(server.prefix) :].split(".")
    return root / ("." + ".".join(encode_mutf7(part) for part in rest))


def create_folder(server: DovecotServer, user: str, folder: str) -> Path:
    """Create ``folder`` (selectable, empty) and return its directory. Idempotent."""
    path = folder_dir(server, user, folder)
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    if server.kind is ServerKind.DEST and folder != "INBOX":
        (path / "maildirfolder").touch()
    return path


def _keyword_letters(path: Path, keywords: set[str]) -> dict[str, str]:
    """Read/extend the folder's ``dovecot-keywords`` so every keyword has a letter."""
    file = path / "dovecot-keywords"
    known: list[str] = []
    if file.exists():
        known = [line.split(" ", 1)[1] for line in file.read_text().splitlines() if " " in line]
    for kw in sorted(keywords - set(known)):
        known.append(kw)
    if len(known) > 26:
        raise ValueError("maildir supports at most 26 keywords per folder")
    if known:
        file.write_text("".join(f"{i} {kw}\n" for i, kw in enumerate(known)))
    return {kw: chr(ord("a") + i) for i, kw in enumerate(known)}


def info_suffix(flags: frozenset[str], letters: dict[str, str]) -> str:
    """The ``:2,<letters>`` part of a maildir file name for ``flags``."""
    unknown = {f for f in flags if f.startswith("\\") and f not in FLAG_LETTERS}
    if unknown:
        raise ValueError(f"not storable in maildir: {sorted(unknown)}")
    system = sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS)
    keywords = sorted(letters[f] for f in flags if not f.startswith("\\"))
    return ":2," + "".join(system + keywords)


def load_messages(
    server: DovecotServer, user: str, folder: str, specs: list[MailSpec]
) -> list[LoadedMessage]:
    """Append ``specs`` to ``folder`` (created if needed) in order, then fix ownership.

    Safe to call again for the same folder, but only before Dovecot has assigned UIDs to the
    earlier files if the UID order matters; new files always get higher sequence numbers.
    """
    path = create_folder(server, user, folder)
    letters = _keyword_letters(path, {f for s in specs for f in s.flags if not f.startswith("\\")})
    start = sum(1 for _ in (path / "cur").iterdir()) + sum(1 for _ in (path / "new").iterdir())
    loaded = []
    for seq, spec in enumerate(specs, start=start):
        if b"\n" in spec.data.replace(b"\r\n", b""):
            raise ValueError(f"{spec.label or 'message'}: bare LF; test mail must use CRLF")
        # The leading number orders the files: Dovecot assigns UIDs in file-name order.
        name = (
            f"{1_000_000_000 + seq}.M{seq}P{os.getpid()}.lftest{info_suffix(spec.flags, letters)}"
        )
        file = path / "cur" / name
        file.write_bytes(spec.data)
        stamp = spec.internaldate.timestamp()
        os.utime(file, (stamp, stamp))  # INTERNALDATE is the mtime
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
    server.chown_home(user)
    return loaded
