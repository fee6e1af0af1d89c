"""The standard Exchange-like source mailbox and its manifest.

Owns: which folders and messages the corpus has, and the ``Manifest`` that tests compare a
destination snapshot against. Must not: change once other tests rely on a label (add, don't
rename). ``scale`` > 1 adds filler messages to every mail folder for volume tests.

What is in it (53 messages), so each rule of the spec has a case:
- folders: INBOX, INBOX/Projects/2018 (its parent INBOX/Projects is \\Noselect), Sent Items,
  Deleted Items, Junk Email, Drafts, "Mr. Smith" ('.' in a name), "Café & Réunions" (non-ASCII
  and '&'), Empty (no messages), and the non-mail Calendar, Contacts, Tasks, Sync Issues,
  Sync Issues/Conflicts (each with mail, so their exclusion is visible);
- multipart with attachments, multipart/alternative, raw 8-bit UTF-8 headers, RFC 2047
  headers, a raw Latin-1 (not UTF-8) header, a folded header, two messages without
  Message-ID, two different messages sharing one Message-ID,
  two byte-identical messages (same INTERNALDATE too) in one folder, one \\Deleted message;
- every flag (\\Seen \\Answered \\Flagged \\Draft) and the keywords $Forwarded and $Label1;
- INTERNALDATEs over 2015-2020 and the range boundaries, labelled ``edge-...``:
  2017-09-24 23:59:59, 2017-09-25 00:00:00, 2018-09-24 23:59:00, 2018-09-24 23:59:59 and
  2018-09-25 00:00:00 (all +0000).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from testkit.dovecot import DovecotServer
from testkit.maildir import LoadedMessage, MailSpec, create_folder, load_messages
from testkit.mailgen import Attachment, lorem, make_message, utc

SEEN, ANSWERED, FLAGGED, DRAFT, DELETED = (
    "\\Seen",
    "\\Answered",
    "\\Flagged",
    "\\Draft",
    "\\Deleted",
)
FORWARDED, LABEL1 = "$Forwarded", "$Label1"

MAIL_FOLDERS = (
    "INBOX",
    "INBOX/Projects/2018",
    "Sent Items",
    "Deleted Items",
    "Junk Email",
    "Drafts",
    "Mr. Smith",
    "Café & Réunions",
    "Empty",
)
NON_MAIL_FOLDERS = ("Calendar", "Contacts", "Tasks", "Sync Issues", "Sync Issues/Conflicts")
NOSELECT_FOLDERS = ("INBOX/Projects",)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a corpus loader put into one account. ``folders`` has every selectable folder (also
    empty ones) in load order, messages in UID order; ``noselect`` the implied parents."""

    user: str
    folders: dict[str, tuple[LoadedMessage, ...]]
    noselect: tuple[str, ...] = ()

    def messages(self, folder: str | None = None) -> list[LoadedMessage]:
        if folder is not None:
            return list(self.folders[folder])
        return [m for msgs in self.folders.values() for m in msgs]

    def contents(
        self, folder: str, *, drop_flags: frozenset[str] = frozenset()
    ) -> Counter[tuple[str, frozenset[str], int]]:
        """``folder`` as the multiset ``FolderState.contents()`` gives for a snapshot:
        (sha256, flags minus ``drop_flags``, INTERNALDATE epoch)."""
        return Counter(
            (m.sha256, m.flags - drop_flags, int(m.internaldate.timestamp()))
            for m in self.folders[folder]
        )

    def by_label(self, label: str) -> LoadedMessage:
        found = [m for m in self.messages() if m.label == label]
        if len(found) != 1:
            raise KeyError(f"{len(found)} messages labelled {label!r}")
        return found[0]

    def in_range(self, since: dt.date | None, before: dt.date | None) -> Manifest:
        """Only messages whose INTERNALDATE (UTC day) is within the inclusive day range."""

        def keep(m: LoadedMessage) -> bool:
            day = m.internaldate.astimezone(dt.UTC).date()
            return (since is None or day >= since) and (before is None or day <= before)

        kept = {f: tuple(m for m in msgs if keep(m)) for f, msgs in self.folders.items()}
        return Manifest(self.user, kept, self.noselect)


def _spec(label: str, data: bytes, date: dt.datetime, *flags: str) -> MailSpec:
    return MailSpec(data=data, flags=frozenset(flags), internaldate=date, label=label)


def _simple(
    label: str, date: dt.datetime, *flags: str, subject: str = "", mid: bool = True
) -> MailSpec:
    data = make_message(
        subject=subject or f"Corpus message {label}",
        date=date,
        message_id=f"<{label}@corpus.example.com>" if mid else None,
        body=f"Message {label}.\n\n{lorem(hash_seed(label), 60)}\n",
    )
    return _spec(label, data, date, *flags)


def hash_seed(label: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate(label))  # stable, unlike hash()


def _inbox() -> list[MailSpec]:
    pdf = Attachment("report.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(range(256)) * 8)
    png = Attachment("pixel.png", "image/png", bytes.fromhex("89504e470d0a1a0a") + b"\0" * 64)
    twin = _simple("twin", utc(2017, 3, 3, 10), SEEN)
    specs = [
        _simple("plain-seen", utc(2015, 1, 5, 9, 30), SEEN),
        _spec(
            "attachments",
            make_message(
                subject="Quarterly report with attachments",
                date=utc(2015, 6, 1, 8),
                message_id="<attachments@corpus.example.com>",
                body="Two files attached.\n",
                attachments=[pdf, png],
                boundary_seed="att",
            ),
            utc(2015, 6, 1, 8),
            SEEN,
            FLAGGED,
        ),
        _spec(
            "alternative",
            make_message(
                subject="HTML newsletter",
                date=utc(2015, 11, 11, 11),
                message_id="<alternative@corpus.example.com>",
                body="Plain version.\n",
                html="<p>HTML <b>version</b></p>\n",
                boundary_seed="alt",
            ),
            utc(2015, 11, 11, 11),
        ),
        _spec(
            "raw-utf8-header",
            make_message(
                subject="Réunion über Café — 会议",
                date=utc(2016, 2, 29, 12),
                message_id="<raw-utf8-header@corpus.example.com>",
                sender="Zoë Müller <zoe@example.com>",
                body="Entête brute en UTF-8.\n",
            ),
            utc(2016, 2, 29, 12),
            SEEN,
            ANSWERED,
        ),
        _spec(
            "rfc2047-header",
            make_message(
                subject="=?UTF-8?B?UsOpdW5pb24gw7xiZXIgQ2Fmw6k=?= =?ISO-8859-1?Q?d=E9j=E0?=",
                date=utc(2016, 7, 14, 14),
                message_id="<rfc2047-header@corpus.example.com>",
                sender="=?UTF-8?Q?Ren=C3=A9e?= <renee@example.com>",
            ),
            utc(2016, 7, 14, 14),
            SEEN,
            FORWARDED,
        ),
        _spec(
            "raw-latin1-header",
            make_message(
                subject="@@LATIN1@@",
                date=utc(2016, 3, 3, 9),
                message_id="<raw-latin1-header@corpus.example.com>",
                body="Not UTF-8 headers.\n",
            ).replace(b"@@LATIN1@@", "Café crème à la carte".encode("latin-1")),
            utc(2016, 3, 3, 9),
            SEEN,
        ),
        _spec(
            "folded-header",
            make_message(
                subject="A very long subject line that an old client folded\n onto a second line",
                date=utc(2016, 4, 4, 4),
                message_id="<folded-header@corpus.example.com>",
            ),
            utc(2016, 4, 4, 4),
            ANSWERED,
        ),
        _simple("no-mid-1", utc(2016, 9, 1, 7), SEEN, subject="No Message-ID one", mid=False),
        _simple("no-mid-2", utc(2016, 9, 1, 8), subject="No Message-ID two", mid=False),
        _spec(
            "shared-mid-1",
            make_message(
                subject="Same Message-ID, first",
                date=utc(2016, 12, 24, 18),
                message_id="<shared@corpus.example.com>",
                body="First body.\n",
            ),
            utc(2016, 12, 24, 18),
            SEEN,
        ),
        _spec(
            "shared-mid-2",
            make_message(
                subject="Same Message-ID, second",
                date=utc(2019, 12, 24, 18),
                message_id="<shared@corpus.example.com>",
                body="Second, different body.\n",
            ),
            utc(2019, 12, 24, 18),
            SEEN,
            LABEL1,
        ),
        twin,
        MailSpec(twin.data, twin.flags, twin.internaldate, "twin-copy"),
        _simple("all-flags", utc(2017, 5, 5, 5), SEEN, ANSWERED, FLAGGED, DRAFT),
        _simple("keywords", utc(2017, 6, 6, 6), SEEN, FORWARDED, LABEL1),
        _simple("flagged-unseen", utc(2017, 7, 7, 7), FLAGGED, LABEL1),
        _simple("deleted", utc(2017, 8, 8, 8), SEEN, DELETED),
        _simple("edge-2017-09-24T23:59:59", utc(2017, 9, 24, 23, 59, 59), SEEN),
        _simple("edge-2017-09-25T00:00:00", utc(2017, 9, 25), SEEN),
        _simple("mid-range", utc(2018, 1, 15, 10), SEEN, ANSWERED),
        _simple("edge-2018-09-24T23:59:00", utc(2018, 9, 24, 23, 59), SEEN),
        _simple("edge-2018-09-24T23:59:59", utc(2018, 9, 24, 23, 59, 59)),
        _simple("edge-2018-09-25T00:00:00", utc(2018, 9, 25), SEEN),
        _simple("late-2020", utc(2020, 12, 31, 23, 59, 59), SEEN),
    ]
    return specs


def _corpus() -> dict[str, list[MailSpec]]:
    ics = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:Standup\nEND:VEVENT\nEND:VCALENDAR\n"
    vcf = "BEGIN:VCARD\nVERSION:3.0\nFN:Bob Example\nEND:VCARD\n"
    return {
        "INBOX": _inbox(),
        "INBOX/Projects/2018": [
            _simple(f"project-{i}", utc(2018, i * 2, 3, 9), SEEN, *([LABEL1] if i % 2 else []))
            for i in range(1, 5)
        ],
        "Sent Items": [
            _simple(f"sent-{i}", utc(2015 + i, 3, 10, 16), SEEN, *([ANSWERED] if i % 2 else []))
            for i in range(6)
        ],
        "Deleted Items": [_simple(f"trash-{i}", utc(2016 + i, 4, 1), SEEN) for i in range(3)],
        "Junk Email": [_simple(f"junk-{i}", utc(2019, 1 + i, 2)) for i in range(2)],
        "Drafts": [_simple(f"draft-{i}", utc(2020, 5, 1 + i), SEEN, DRAFT) for i in range(2)],
        "Mr. Smith": [_simple(f"smith-{i}", utc(2017, 10, 1 + i), SEEN) for i in range(3)],
        "Café & Réunions": [
            _simple(f"cafe-{i}", utc(2018, 5, 1 + i), SEEN, subject=f"Café n°{i}") for i in range(3)
        ],
        "Empty": [],
        "Calendar": [
            _spec(f"calendar-{i}", make_message(
                subject=f"Meeting {i}", date=utc(2018, 6, 1 + i),
                message_id=f"<calendar-{i}@corpus.example.com>", body=ics,
            ), utc(2018, 6, 1 + i), SEEN) for i in range(2)
        ],
        "Contacts": [
            _spec("contact-0", make_message(
                subject="Bob Example", date=utc(2018, 6, 5),
                message_id="<contact-0@corpus.example.com>", body=vcf,
            ), utc(2018, 6, 5), SEEN),
        ],
        "Tasks": [_simple("task-0", utc(2018, 6, 6), SEEN)],
        "Sync Issues": [_simple("sync-0", utc(2018, 6, 7), SEEN)],
        "Sync Issues/Conflicts": [_simple("conflict-0", utc(2018, 6, 8), SEEN)],
    }  # fmt: skip


def exchange_corpus(scale: int = 1) -> dict[str, list[MailSpec]]:
    """The corpus as specs (no server needed). ``scale`` n adds (n-1)*10 fillers per mail folder
    (Empty stays empty), dated over 2015-2020."""
    corpus = _corpus()
    for index, folder in enumerate(MAIL_FOLDERS):
        if folder == "Empty":
            continue
        for i in range((scale - 1) * 10):
            n = index * 1_000_000 + i
            date = utc(2015, 1, 1) + dt.timedelta(minutes=(n * 7919) % (6 * 365 * 24 * 60))
            corpus[folder].append(_simple(f"filler-{folder}-{i}", date, *([SEEN] if i % 3 else [])))
    return corpus


def load_exchange_corpus(server: DovecotServer, user: str, *, scale: int = 1) -> Manifest:
    """Load the corpus into ``user`` on a SOURCE server; return what was loaded."""
    if server.separator != "/":
        raise ValueError("the Exchange corpus uses '/' folder names: load it on a SOURCE server")
    folders: dict[str, tuple[LoadedMessage, ...]] = {}
    for folder, specs in exchange_corpus(scale).items():
        create_folder(server, user, folder)
        folders[folder] = tuple(load_messages(server, user, folder, specs))
    return Manifest(user, folders, NOSELECT_FOLDERS)
