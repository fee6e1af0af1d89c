"""The outbox files: results, per-CSV summaries and report mails, pending or sent.

Owns: ``outbox/`` and ``outbox/sent/`` (created 0700; every file appears atomically, 0600), the
file names, which mails are pending, and the move of a delivered mail into ``sent/``.
Must not: render anything (``report`` does), talk SMTP (``outbox.smtp`` does) or decide when to
send (``outbox.sender``'s ``MailSender`` does).

A mail whose ``.eml`` has a namesake in ``sent/`` is never pending again, even when its ``.eml``
is written anew (a request reported twice after a crash); see ``outbox.smtp`` for why a mail
may still, in one narrow window, be sent twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from legacyflo_daemon.runtime.files import atomic_write, move, short_name

SENT = "sent"


def _checked_name(name: str) -> str:
    """``name`` if it is a plain, visible file name; ``ValueError`` otherwise."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\0" in name:
        raise ValueError(f"not a usable outbox file name: {name!r}")
    return name


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def move_to_sent(path: Path) -> Path:
    """Move the mail ``path`` of an outbox into its ``sent/`` (atomic rename, both directories
    fsynced); the new path."""
    target = path.parent / SENT / path.name
    move(path, target)
    return target


class Outbox:
    """The files of one ``outbox/`` directory (created 0700 with ``sent/`` inside)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.sent_dir = directory / SENT
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sent_dir.mkdir(mode=0o700, exist_ok=True)

    def write_result(self, request_id: str, result_json: Mapping[str, Any]) -> Path:
        """Write ``<request_id>.json`` (sorted keys, indent 2, UTF-8), replacing an older one."""
        path = self.dir / _checked_name(f"{request_id}.json")
        atomic_write(path, _json_bytes(result_json))
        return path

    def write_summary(self, csv_name: str, data: Mapping[str, Any]) -> Path:
        """Write ``<csv name>.summary.json`` (the name shortened by ``short_name`` when long,
        as the spool claims it: the summary's name always fits)."""
        path = self.dir / _checked_name(f"{short_name(csv_name)}.summary.json")
        atomic_write(path, _json_bytes(data))
        return path

    def write_mail(self, request_id: str, eml: bytes) -> Path:
        """Write ``<request_id>.eml``; it is pending until delivered (unless already in sent/)."""
        path = self.dir / _checked_name(f"{request_id}.eml")
        atomic_write(path, eml)
        return path

    def pending_mails(self) -> list[Path]:
        """``.eml`` files of ``outbox/`` not yet delivered (no namesake in ``sent/``), sorted."""
        sent = {p.name for p in self.sent_dir.iterdir()}
        return sorted(
            p
            for p in self.dir.iterdir()
            if p.suffix == ".eml" and not p.name.startswith(".") and p.name not in sent
        )
