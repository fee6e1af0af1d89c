"""Helpers for the report end-to-end tests: SMTP catching, report-mail and listing checks.

Owns: a real aiosmtpd SMTP server on a chosen port (``SmtpServer``), a daemon config with a
``[report]`` table (``configure``), reading a report mail with the stdlib ``email`` package
(``parse_mail``, ``mail_problems``, ``listing_rows``), the listing the tests expect from the
mail they loaded (``expected_listing``), the destination tree as the server itself holds it
(``tree_counts``, ``tree_messages``), validating result JSON against the product's schema
(``schema_errors``), and the small steps every test repeats: a source with mail
(``source_with_mail``), one ``run --once`` (``run_once``), the one request of a CSV
(``only_request``), and the checks every outbox must pass (``outbox_problems``).

Must not: import ``legacyflo_daemon`` (the daemon is a subprocess; the schema is read as a file
of the checkout), or relax a check to make a test pass. Every check returns the list of
problems found, so a test asserts ``== []`` and a failure names every problem at once.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import default
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

from testkit.imap import ServerAccount
from testkit.maildir import MailSpec
from testkit.snapshot import FolderState, MailboxSnapshot
from tests.e2ehelp import (
    DEST_ROOT,
    MailCatcher,
    Work,
    dest_name,
    files_containing,
    load_mailbox,
    mailbox_specs,
    results,
    summary,
)

FROM_ADDRESS = "migration-reports@archive.example"
LISTING_COLUMNS = ["folder", "received", "from", "subject", "size", "message_id"]
LISTING_NAMES = ("listing.csv", "listing.csv.gz")
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "legacyflo_daemon" / "result.schema.json"
_MSGID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


# -- config and SMTP ---------------------------------------------------------------------------


def configure(work: Work, *, smtp_port: int, compress_kb: int | None = None) -> Path:
    """``work.configure(smtp_port=...)`` plus ``[report] from_address`` (and the listing
    compression threshold when given: 0 forces ``listing.csv.gz``)."""
    path = work.configure(smtp_port=smtp_port)
    report = f'\n[report]\nfrom_address = "{FROM_ADDRESS}"\n'
    if compress_kb is not None:
        report += f"compress_listing_above_kb = {compress_kb}\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(report)
    return path


class SmtpServer:
    """A real aiosmtpd server (in its own thread) on 127.0.0.1:``port`` keeping every mail."""

    def __init__(self, port: int) -> None:
        self.catcher = MailCatcher()
        self.controller = Controller(self.catcher, hostname="127.0.0.1", port=port)
        self.port = port

    @property
    def mails(self) -> list[tuple[str, tuple[str, ...], bytes]]:
        """(envelope sender, recipients, data) of each per-account report received, in order."""
        return self.catcher.mails

    @property
    def batch_mails(self) -> list[tuple[str, tuple[str, ...], bytes]]:
        """The batch reports received (one per finished CSV)."""
        return self.catcher.batch_mails

    def start(self) -> Self:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- running a request ------------------------------------------------------------------------


def source_with_mail(
    new_source_account: Callable[..., ServerAccount],
    tag: str,
    folders: dict[str, int],
    seed: int = 0,
) -> tuple[ServerAccount, dict[str, list[MailSpec]]]:
    """A fresh source account (a hostile password of its own) with ``folders`` of mail
    (name -> count, see ``mailbox_specs``), and what was loaded."""
    src = new_source_account(f'{tag} p@ss"w,\\%*{{}} é')
    specs = mailbox_specs(src.user, folders, seed=seed)
    load_mailbox(src.server, src.user, specs)
    return src, specs


def run_once(work: Work, name: str, expect: int) -> list[dict[str, object]]:
    """One ``run --once`` to completion, which must exit with ``expect``; its log events."""
    with work.daemon(name, once=True) as daemon:
        assert daemon.wait(40) == expect, daemon.describe()
    return daemon.events()


def only_request(work: Work, csv_name: str) -> str:
    """The request id of the one row of ``csv_name`` (from its summary)."""
    doc = summary(work.spool, csv_name)
    assert doc is not None, f"no summary for {csv_name}"
    (row,) = doc["rows"]
    rid = row["request_id"]
    assert isinstance(rid, str)
    return rid


def outbox_problems(work: Work, secrets: list[str], smtp_data: list[bytes]) -> list[str]:
    """Issue 5 item 5 over everything written and sent: each result valid against the schema,
    each ``.eml`` (pending or sent) well formed and addressed to its ``report_to``, distinct
    Message-IDs, no password in any file under the test directory or in any mail sent.
    Meant for outboxes whose every request has a ``report_to``."""
    found = results(work.spool)
    problems = [f"{rid}.json: {e}" for rid, doc in found.items() for e in schema_errors(doc)]
    ids = []
    for path in sorted((work.spool / "outbox").rglob("*.eml")):
        msg = parse_mail(path.read_bytes())
        ids.append(str(msg["Message-ID"]))
        if path.name.endswith(".batch.eml"):  # the batch report: checked by its own tests
            continue
        to = found[path.stem]["report_to"]
        problems += [f"{path.name}: {p}" for p in mail_problems(msg, to=str(to))]
    problems += [f"Message-ID {i} used {n} times" for i, n in Counter(ids).items() if n > 1]
    problems += [f"{p}: {hits}" for p, hits in files_containing(work.root, secrets).items()]
    problems += [
        f"sent mail #{n} holds a password"
        for n, data in enumerate(smtp_data)
        if any(s.encode() in data for s in secrets)
    ]
    return problems


# -- result JSON -------------------------------------------------------------------------------


def schema_errors(doc: Mapping[str, Any]) -> list[str]:
    """Why ``doc`` does not conform to ``result.schema.json`` (formats checked too)."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


# -- report mails ------------------------------------------------------------------------------


def parse_mail(data: bytes) -> EmailMessage:
    """``data`` parsed with the stdlib parser and ``email.policy.default``."""
    msg = message_from_bytes(data, policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


def _listing_part(msg: EmailMessage) -> Message | None:
    for part in msg.walk():
        if part.get_filename() in LISTING_NAMES:
            return part
    return None


def attachment_names(msg: EmailMessage) -> list[str]:
    """File names of every part that has one (attachments), in order."""
    return [name for part in msg.walk() if (name := part.get_filename()) is not None]


def body_text(msg: EmailMessage, subtype: str) -> str:
    """The decoded ``text/<subtype>`` body of the report."""
    part = msg.get_body((subtype,))
    assert isinstance(part, EmailMessage), f"no text/{subtype} body"
    content = part.get_content()
    assert isinstance(content, str)
    return content


def mail_problems(msg: EmailMessage, *, to: str) -> list[str]:
    """What is wrong with a report mail against docs/contract.md §6.3 and issue 5: defects, Date,
    Message-ID, From = ``FROM_ADDRESS``, To = ``to``, and a multipart/alternative holding
    exactly text/plain then text/html."""
    problems = [f"{p.get_content_type()}: defects {p.defects}" for p in msg.walk() if p.defects]
    date = msg["Date"]
    if date is None or getattr(date, "datetime", None) is None:
        problems.append(f"Date missing or unparsable: {date!r}")
    elif date.datetime.tzinfo is None:
        problems.append(f"Date without a time zone: {date!r}")
    message_id = msg["Message-ID"]
    if message_id is None or not _MSGID.match(str(message_id).strip()):
        problems.append(f"Message-ID missing or malformed: {message_id!r}")
    for name, want in (("From", FROM_ADDRESS), ("To", to)):
        header = msg[name]
        got = [a.addr_spec for a in getattr(header, "addresses", ())]
        if got != [want]:
            problems.append(f"{name}: {got} instead of [{want!r}]")
    alternatives = [p for p in msg.walk() if p.get_content_type() == "multipart/alternative"]
    if len(alternatives) != 1:
        problems.append(f"{len(alternatives)} multipart/alternative parts instead of 1")
    else:
        inner = [p.get_content_type() for p in alternatives[0].iter_parts()]
        if inner != ["text/plain", "text/html"]:
            problems.append(f"alternatives are {inner}, not text/plain + text/html")
    return problems


def listing_rows(msg: EmailMessage) -> list[dict[str, str]] | None:
    """The rows of the listing attachment (gunzipped when ``.gz``), None without one.

    The header row must be exactly ``LISTING_COLUMNS`` (checked here)."""
    part = _listing_part(msg)
    if part is None:
        return None
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    if part.get_filename() == "listing.csv.gz":
        assert data[:2] == b"\x1f\x8b", "listing.csv.gz is not gzip data"
        data = gzip.decompress(data)
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    header, *rows = list(reader)
    assert header == LISTING_COLUMNS, f"listing columns {header}"
    return [dict(zip(header, row, strict=True)) for row in rows]


# -- what the listing must say -----------------------------------------------------------------


def _header(data: bytes, name: bytes) -> str:
    found = re.search(rb"(?im)^" + name + rb":[ \t]*(.*?)\r?$", data.split(b"\r\n\r\n", 1)[0])
    assert found is not None, f"test message without {name!r}"
    return found.group(1).decode("utf-8")


def expected_listing(
    specs: Mapping[str, Sequence[MailSpec]], dest_folder: str
) -> Counter[tuple[str, str, str]]:
    """(destination folder, subject, Message-ID) of every loaded message, placed as
    docs/contract.md §4 says."""
    return Counter(
        (
            dest_name(folder, dest_folder),
            _header(s.data, b"Subject"),
            _header(s.data, b"Message-ID"),
        )
        for folder, folder_specs in specs.items()
        for s in folder_specs
    )


def listed(rows: Iterable[Mapping[str, str]]) -> Counter[tuple[str, str, str]]:
    """The listing rows in ``expected_listing``'s form."""
    return Counter((r["folder"], r["subject"], r["message_id"]) for r in rows)


def listed_messages(rows: Iterable[Mapping[str, str]]) -> Counter[tuple[str, int, int]]:
    """The listing rows as (folder, INTERNALDATE epoch, size), as ``tree_messages`` gives them."""
    return Counter(
        (r["folder"], int(dt.datetime.fromisoformat(r["received"]).timestamp()), int(r["size"]))
        for r in rows
    )


def _tree(snapshot: MailboxSnapshot, dest_folder: str) -> dict[str, FolderState]:
    root = f"{DEST_ROOT}.{dest_folder}"
    return {n: f for n, f in snapshot.folders.items() if n == root or n.startswith(root + ".")}


def tree_counts(snapshot: MailboxSnapshot, dest_folder: str) -> dict[str, int]:
    """Messages per folder under ``<root>.<dest_folder>`` on the server (empty folders left out)."""
    return {n: len(f.messages) for n, f in _tree(snapshot, dest_folder).items() if f.messages}


def tree_messages(snapshot: MailboxSnapshot, dest_folder: str) -> Counter[tuple[str, int, int]]:
    """(folder, INTERNALDATE epoch, IMAP size) of every message under ``<root>.<dest_folder>``."""
    return Counter(
        (name, m.internaldate, m.size)
        for name, f in _tree(snapshot, dest_folder).items()
        for m in f.messages
    )


def account_files(work: Work, sub: str) -> list[str]:
    """``work.files(sub)`` without the batch reports (``csv-<csv id>.batch.eml``)."""
    return [name for name in work.files(sub) if not name.endswith(".batch.eml")]
