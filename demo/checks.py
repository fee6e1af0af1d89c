"""What ``make demo`` verifies after the run, beyond the daemon's own word.

Owns: the list of checks and their verdicts (``Checks``), and the independent checks read from
the servers and the work dir: the source is unchanged (read-only), the archive holds exactly
the in-range mail byte for byte with flags and dates in the right folders, and no file under
the work dir holds a password. Must not: print (``demo`` does) or change anything it checks.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from demo import mailbox
from testkit.snapshot import Content, MailboxSnapshot


class Checks:
    """What the demo verified; printed at the end, any failure makes the exit code 1."""

    def __init__(self) -> None:
        self.items: list[tuple[bool, str]] = []

    def add(self, ok: bool, text: str) -> bool:
        self.items.append((ok, text))
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.items) and all(ok for ok, _ in self.items)


def files_containing(root: Path, secrets: tuple[str, ...]) -> list[Path]:
    """Files under ``root`` holding any of ``secrets`` (as UTF-8, CSV-quoted or JSON-escaped)."""
    needles = set()
    for secret in secrets:
        for form in (secret, secret.replace('"', '""'), json.dumps(secret)[1:-1]):
            needles.add(form.encode("utf-8"))
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(n in data for n in needles):
            found.append(path)
    return found


def archive_problems(
    source: MailboxSnapshot,
    dest: MailboxSnapshot,
    accounts: mailbox.DemoAccounts,
    dest_root: str,
) -> tuple[int, list[str]]:
    """(messages expected on the archive, destination folders whose content differs).

    Compared as multisets of (sha256 of the bytes, flags, INTERNALDATE), folder by folder,
    under ``<dest_root>.<dest folder>.``; empty folders on either side do not count.
    """
    expected = mailbox.expected_archive(source, accounts, dest_root)
    prefix = f"{dest_root}.{accounts.dest_folder}."
    got: dict[str, Counter[Content]] = {
        name: folder.contents() for name, folder in dest.under(prefix).items() if folder.messages
    }
    want = {name: c for name, c in expected.items() if c}
    total = sum(sum(c.values()) for c in want.values())
    names = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
    return total, names
