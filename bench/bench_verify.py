"""Checking a benchmark copy: the destination tree must hold exactly the source's messages.

Owns: reading a whole account with ``doveadm fetch`` as a stream (one message in memory at a
time; ``testkit.snapshot`` holds the whole account, too much for 1 GB), and comparing per
folder the multiset of (sha256 of the IMAP bytes, flags, INTERNALDATE) with the corpus's
expectation mapped to destination names. Must not: log in over IMAP (doveadm sets no \\Seen and
takes no \\Recent), change a mailbox, or know how the copy was made.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections import Counter
from typing import IO

from bench.bench_corpus import Content, Expected
from bench.rawcopy import dest_name
from testkit.dovecot import DovecotServer

FIELDS = "mailbox flags date.received.unixtime size.physical text"
_ENV = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "TZ": "UTC"}


def _records(out: IO[bytes]) -> tuple[str, Content] | None:
    """The next (mailbox, content) of ``doveadm -f pager fetch`` output, or None at the end.
    The text is read by ``size.physical``, so no byte of a message is taken for a separator."""
    fields: dict[str, bytes] = {}
    while True:
        line = out.readline()
        if not line:
            if fields:
                raise ValueError("doveadm output ended inside a record")
            return None
        line = line.rstrip(b"\n")
        if line == b"\f" and not fields:
            continue
        if line == b"text:":
            break
        key, _, value = line.partition(b": ")
        fields[key.decode()] = value
    text = out.read(int(fields["size.physical"]))
    # Dovecot stores APPENDed mail with LF and sends CRLF: hash what IMAP clients see.
    wire = text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    flags = frozenset(fields["flags"].decode().split()) - {"\\Recent"}
    content = (hashlib.sha256(wire).hexdigest(), flags, int(fields["date.received.unixtime"]))
    return fields["mailbox"].decode(), content


def account_contents(server: DovecotServer, user: str) -> dict[str, Counter[Content]]:
    """Every folder of ``user`` (empty ones too) -> the multiset of its messages."""
    listed = server.doveadm("mailbox", "list", "-u", user).stdout.decode().splitlines()
    folders: dict[str, Counter[Content]] = {name: Counter() for name in listed}
    cmd = ["doveadm", "-c", str(server.conf_path), "-f", "pager", "fetch", "-u", user]
    with subprocess.Popen([*cmd, FIELDS, "ALL"], stdout=subprocess.PIPE, env=_ENV) as proc:
        assert proc.stdout is not None
        while (rec := _records(proc.stdout)) is not None:
            folders.setdefault(rec[0], Counter())[rec[1]] += 1
    if proc.returncode != 0:
        raise RuntimeError(f"doveadm fetch -u {user} exited {proc.returncode}")
    return folders


def expected_at_dest(
    expected: Expected, root: str, dest_folder: str, src_sep: str = "/", dst_sep: str = "."
) -> dict[str, Counter[Content]]:
    """The corpus's folders under their destination names (``dest_name``'s mapping)."""
    return {
        dest_name(name, src_sep, root, dest_folder, dst_sep): msgs
        for name, msgs in expected.folders.items()
    }


def compare(
    want: dict[str, Counter[Content]], got: dict[str, Counter[Content]], tree: str | None
) -> list[str]:
    """What differs, as short lines (empty: exactly right). Every folder of ``want`` must exist
    with exactly its messages; any other folder under ``tree`` (parents; None: anywhere) must be
    empty."""
    problems: list[str] = []
    for name, msgs in want.items():
        if name not in got:
            problems.append(f"{name}: missing ({sum(msgs.values())} messages expected)")
            continue
        have = got[name]
        if have != msgs:
            lost, extra = msgs - have, have - msgs
            problems.append(
                f"{name}: {sum(have.values())} messages, expected {sum(msgs.values())} "
                f"({sum(lost.values())} missing or different, {sum(extra.values())} unexpected)"
            )
    for name, have in got.items():
        inside = tree is None or name == tree or name.startswith(tree + ".")
        if name not in want and inside and have:
            problems.append(f"{name}: {sum(have.values())} unexpected messages")
    return problems


def verify_source(server: DovecotServer, user: str, expected: Expected) -> list[str]:
    """Compare a freshly loaded source account with its corpus (and warm Dovecot's index)."""
    return compare(expected.folders, account_contents(server, user), None)


def verify_copy(
    server: DovecotServer, user: str, expected: Expected, root: str, dest_folder: str
) -> list[str]:
    """Compare ``user``'s destination tree ``<root>.<dest_folder>`` with ``expected``."""
    want = expected_at_dest(expected, root, dest_folder, dst_sep=server.separator)
    return compare(want, account_contents(server, user), f"{root}.{dest_folder}")
