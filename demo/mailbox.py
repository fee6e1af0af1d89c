"""What ``make demo`` migrates: the sample mailbox, the request CSV, the daemon's config.

Owns: the demo's accounts and throwaway passwords, the sample Exchange-like mailbox (~40
messages over 2016-2019 in a few folders, including ``Sent Items``, ``Café & Réunions`` and a
non-mail ``Calendar``), what the destination must hold afterwards, and the text of the request
CSV and of ``config.toml``. Everything here is a pure function of its arguments: the same call
gives the same bytes. Must not: start servers or touch files (``demo.env`` and ``demo`` do).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from testkit.maildir import MailSpec
from testkit.mailgen import Attachment, lorem, make_message, utc
from testkit.snapshot import Content, MailboxSnapshot

# The header line of the reference document's CSV, verbatim (reference/legacyflo-exchange-imap.txt).
CSV_HEADER = (
    "jobtype", "jobtitle", "destuserid", "destdomain", "destuserpasswd", "destServer",
    "destfolder", "sendreportid", "sourceuserid", "sourcedomainname", "sourceuserpassword",
    "sourceserver", "sourceserverport", "since", "before",
)  # fmt: skip
PASSWORD_FIELDS = ("destuserpasswd", "sourceuserpassword")


@dataclass(frozen=True, slots=True)
class DemoAccounts:
    """The two logins of the demo. The passwords carry characters the reference forbids."""

    source_user: str = "john"
    source_domain: str = "exchange.example"
    source_password: str = 'Ex"change, 100% {sure} \\ é'
    dest_user: str = "john"
    dest_domain: str = "archive.example"
    dest_password: str = "Arch:ive (p@ss) wörd*"
    report_to: str = "postmaster@exchange.example"
    dest_folder: str = "Import2017-2018"
    since: dt.date = dt.date(2017, 1, 1)
    before: dt.date = dt.date(2018, 12, 31)

    @property
    def passwords(self) -> tuple[str, str]:
        return (self.source_password, self.dest_password)


# (folder on the source with its "/" separator, is it mail?, subjects). Calendar is an Exchange
# non-mail folder: an EXCHANGEIMAP request skips it, which the demo shows.
_FOLDERS: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("INBOX", True, (
        "Welcome to the team", "Quarterly figures", "Server maintenance window",
        "Lunch on Friday?", "Invoice 2017-031", "Your parcel has shipped", "Re: budget draft",
        "Board meeting minutes", "New office keys", "Holiday schedule", "Invoice 2018-112",
        "Re: migration plan", "Security update", "Happy new year",
    )),
    ("INBOX/Projects", True, (
        "Project kickoff", "Milestone 1 done", "Risk register", "Project closure",
    )),
    ("Sent Items", True, (
        "Re: Welcome to the team", "Figures attached", "Re: Lunch on Friday?",
        "Contract signed", "Re: Board meeting minutes", "Travel request", "Re: Invoice 2018-112",
        "Out of office", "Re: Security update",
    )),
    ("Café & Réunions", True, (
        "Réunion de lundi", "Café à 10h", "Compte rendu", "Déjeuner d'équipe",
        "Ordre du jour", "Salle réservée", "Réunion annulée",
    )),
    ("Deleted Items", True, ("Newsletter #12", "Newsletter #27")),
    ("Calendar", False, ("Team meeting", "Review", "Offsite", "1:1")),
)  # fmt: skip
_PEOPLE = (
    "Alice Martin <alice@exchange.example>",
    "Bruno Costa <bruno@exchange.example>",
    "Chloé Durand <chloe@exchange.example>",
    "Dev Patel <dev@partner.example>",
)
_ICS = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:{}\nEND:VEVENT\nEND:VCALENDAR\n"
_FIRST_MONTH = dt.date(2016, 1, 1)
_MONTHS = 48  # 2016-01 .. 2019-12


def _received(k: int, position: int, size: int, folder_index: int) -> dt.datetime:
    """INTERNALDATE of message ``k`` (the ``position``-th of ``size`` in its folder): each folder
    is spread over 2016-2019, with its own offset; the same on every run."""
    month = (position * _MONTHS // size + 5 * folder_index) % _MONTHS
    year, month0 = divmod(_FIRST_MONTH.month - 1 + month, 12)
    return utc(_FIRST_MONTH.year + year, month0 + 1, 1 + (k * 7) % 27, 8 + k % 10, (k * 13) % 60)


def _flags(k: int, folder: str) -> frozenset[str]:
    if folder == "Sent Items":
        return frozenset({"\\Seen"})
    flags = {"\\Seen"} if k % 5 else set()
    if k % 7 == 3:
        flags.add("\\Answered")
    if k % 11 == 4:
        flags.add("\\Flagged")
    if k % 13 == 6:
        flags.add("$Forwarded")
    return frozenset(flags)


def sample_mailbox(accounts: DemoAccounts | None = None) -> dict[str, list[MailSpec]]:
    """The source mailbox: folder (source name, ``/`` separator) -> messages in UID order."""
    me = f"John Smith <{(accounts or DemoAccounts()).source_user}@exchange.example>"
    out: dict[str, list[MailSpec]] = {}
    k = 0
    for folder_index, (folder, is_mail, subjects) in enumerate(_FOLDERS):
        specs = []
        for position, subject in enumerate(subjects):
            when = _received(k, position, len(subjects), folder_index)
            other = _PEOPLE[k % len(_PEOPLE)]
            sender, to = (me, other) if folder == "Sent Items" else (other, me)
            attachments: tuple[Attachment, ...] = ()
            if "igures" in subject:
                attachments = (
                    Attachment("figures.csv", "text/csv", b"quarter,total\r\nQ1,42\r\n"),
                )
            data = make_message(
                subject=subject,
                date=when,
                message_id=f"<demo-{k}@exchange.example>",
                sender=sender,
                to=to,
                body=_ICS.format(subject) if not is_mail else f"{lorem(k, 40)}\n",
                attachments=attachments,
                boundary_seed=f"demo{k}",
            )
            specs.append(MailSpec(data, _flags(k, folder), when, label=f"demo-{k}"))
            k += 1
        out[folder] = specs
    return out


def is_mail_folder(folder: str) -> bool:
    return any(is_mail for name, is_mail, _ in _FOLDERS if name == folder)


def dest_folder_name(source_folder: str, dest_root: str, dest_folder: str) -> str:
    """Where docs/contract.md §4 puts a source folder on the archive: ``INBOX/Projects`` ->
    ``<root>.<dest_folder>.Inbox.Projects`` (INBOX becomes Inbox, ``/`` becomes ``.``)."""
    parts = source_folder.split("/")
    if parts[0].upper() == "INBOX":
        parts[0] = "Inbox"
    return ".".join([dest_root, dest_folder, *parts])


def expected_archive(
    source: MailboxSnapshot, accounts: DemoAccounts, dest_root: str
) -> dict[str, Counter[Content]]:
    """Destination folder -> the messages it must hold after the request, as a multiset of
    (sha256 of the bytes, flags, INTERNALDATE): the source's mail folders, only messages whose
    INTERNALDATE falls on a UTC day within the inclusive range."""
    out: dict[str, Counter[Content]] = {}
    for name, folder in source.folders.items():
        if not is_mail_folder(name):
            continue
        kept = [
            m.content
            for m in folder.messages
            if accounts.since
            <= dt.datetime.fromtimestamp(m.internaldate, dt.UTC).date()
            <= accounts.before
        ]
        out[dest_folder_name(name, dest_root, accounts.dest_folder)] = Counter(kept)
    return out


def request_csv(accounts: DemoAccounts, source_port: int, dest_server: str) -> bytes:
    """The request in the reference document's format: its header, every field quoted."""
    row = {
        "jobtype": "EXCHANGEIMAP",
        "jobtitle": "Demo: John Smith 2017-2018",
        "destuserid": accounts.dest_user,
        "destdomain": accounts.dest_domain,
        "destuserpasswd": accounts.dest_password,
        "destServer": dest_server,
        "destfolder": accounts.dest_folder,
        "sendreportid": accounts.report_to,
        "sourceuserid": accounts.source_user,
        "sourcedomainname": accounts.source_domain,
        "sourceuserpassword": accounts.source_password,
        "sourceserver": "127.0.0.1",
        "sourceserverport": str(source_port),
        "since": accounts.since.isoformat(),
        "before": accounts.before.strftime("%d-%b-%Y"),  # both formats of the reference
    }
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    writer.writerow([row[name] for name in CSV_HEADER])
    return buf.getvalue().encode("utf-8")


def _toml(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def config_toml(
    *, spool: Path, ca_file: Path, dest_port: int, smtp_port: int, hosts: tuple[str, ...]
) -> str:
    """``config.toml`` for the demo daemon (every key is explained in config.example.toml)."""
    host_tables = "".join(
        f"\n[hosts.{_toml(host)}]\nca_file = {_toml(ca_file)}  # the demo's throwaway CA\n"
        for host in hosts
    )
    return f"""\
# legacyflo-daemon configuration written by `make demo`; config.example.toml explains every key.

[daemon]
spool = {_toml(spool)}
# `submit` drops files atomically, so the daemon need not wait for them to stop growing.
stable_seconds = 0.0

[imap]
# The demo archive's port. Not 993, so the daemon uses STARTTLS (only 993 is implicit TLS).
dest_port = {dest_port}
connect_timeout = 10.0
timeout = 20.0
retries = 2
backoff_base = 0.5
backoff_max = 2.0

[log]
format = "json"  # one JSON object per line: the demo reads them

[report]
from_address = "legacyflo-demo@localhost"

[smtp]  # a local SMTP server started by the demo, which shows what it receives
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
timeout = 10.0
{host_tables}"""
