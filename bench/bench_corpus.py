"""The benchmark corpus: a deterministic mailbox plan, its message bytes, loading, expectations.

Owns: which folders, sizes, flags and dates a benchmark mailbox has (all drawn from one seeded
``random.Random``, so the same ``CorpusSpec`` always gives the same bytes), rendering a planned
message, and loading a plan straight into a SOURCE test server's maildir with the test helpers'
fast path (``testkit.maildir.load_messages``: INTERNALDATE = mtime, flags in file names).
Must not: talk IMAP or measure anything.

The mailbox looks like a real one: sizes log-normal around a median of ~20 KB (mean ~47 KB,
capped at 4 MB), plus one 5-25 MB attachment per 4,000 messages (at least one); folders with
Exchange-like names (a non-ASCII one, a two-level Archive tree); dates over 2012-2020; ~85 %
\\Seen, some \\Answered, \\Flagged, $Forwarded, $Label1, \\Draft only in Drafts; never \\Deleted
(the daemon drops it by design, which would make "destination equals source" untrue). Bodies
above ~12 KB carry a base64 attachment of pseudo-random bytes, so nothing compresses.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import Counter
from dataclasses import dataclass

from testkit.dovecot import DovecotServer
from testkit.maildir import MailSpec, create_folder, load_messages
from testkit.mailgen import Attachment, lorem, make_message

Content = tuple[str, frozenset[str], int]  # (sha256 of the IMAP bytes, flags, INTERNALDATE epoch)

FOLDERS: tuple[tuple[str, float], ...] = (
    ("INBOX", 0.35),
    ("Sent Items", 0.18),
    ("Deleted Items", 0.04),
    ("Drafts", 0.005),
    ("Archive/2014", 0.05),
    ("Archive/2015", 0.05),
    ("Archive/2016", 0.05),
    ("Archive/2017", 0.05),
    ("Archive/2018", 0.05),
    ("Archive/2019", 0.05),
    ("Projects/Alpha", 0.04),
    ("Projects/Beta", 0.03),
    ("Newsletters", 0.04),
    ("Réunions", 0.015),
)
MEDIAN = 20_000
SIGMA = 1.3  # with the 4 MB cap: mean ~47 KB, so 20,000 messages + 5 big ones are ~1 GB
SMALL_RANGE = (1_500, 4 * 1024 * 1024)
BIG_RANGE = (5 * 1024 * 1024, 25 * 1024 * 1024)
BIG_EVERY = 4_000  # messages per 5-25 MB attachment
FIRST_DAY = dt.datetime(2012, 1, 1, tzinfo=dt.UTC)
SPAN_SECONDS = 9 * 365 * 86_400
LOAD_CHUNK_BYTES = 64 * 1024 * 1024  # messages held in memory per load_messages call


@dataclass(frozen=True, slots=True)
class CorpusSpec:
    """One mailbox: ``messages`` in total, of which ``big`` are 5-25 MB; ``seed`` picks all."""

    messages: int
    big: int
    seed: int

    @classmethod
    def sized(cls, messages: int, seed: int) -> CorpusSpec:
        return cls(messages, max(1, round(messages / BIG_EVERY)), seed)


@dataclass(frozen=True, slots=True)
class Planned:
    folder: str
    index: int  # unique within the mailbox
    size: int  # target size; the rendered message is within a few KB of it
    flags: frozenset[str]
    date: dt.datetime


@dataclass
class Expected:
    """What a loaded mailbox holds, per source folder (every folder, empty ones too)."""

    folders: dict[str, Counter[Content]]
    messages: int = 0
    bytes: int = 0


def _flags(rng: random.Random, folder: str) -> frozenset[str]:
    flags = set()
    if rng.random() < 0.85:
        flags.add("\\Seen")
    if rng.random() < 0.15:
        flags.add("\\Answered")
    if rng.random() < 0.05:
        flags.add("\\Flagged")
    if rng.random() < 0.03:
        flags.add("$Forwarded")
    if rng.random() < 0.01:
        flags.add("$Label1")
    if folder == "Drafts":
        flags.add("\\Draft")
    return frozenset(flags)


def plan(spec: CorpusSpec) -> list[Planned]:
    """The mailbox's messages, in load order (by folder, then by date within the folder)."""
    rng = random.Random(spec.seed)
    names = [f for f, _ in FOLDERS]
    weights = [w for _, w in FOLDERS]
    big_at = set(rng.sample(range(spec.messages), min(spec.big, spec.messages)))
    out: list[Planned] = []
    for i in range(spec.messages):
        folder = rng.choices(names, weights)[0]
        if i in big_at:
            size = rng.randint(*BIG_RANGE)
        else:
            size = round(rng.lognormvariate(math.log(MEDIAN), SIGMA))
            size = min(max(size, SMALL_RANGE[0]), SMALL_RANGE[1])
        date = FIRST_DAY + dt.timedelta(seconds=rng.randrange(SPAN_SECONDS))
        out.append(Planned(folder, i, size, _flags(rng, folder), date))
    order = {name: n for n, name in enumerate(names)}
    return sorted(out, key=lambda p: (order[p.folder], p.date, p.index))


_TEXT = lorem(2024, 2_000)  # ~14 KB of filler, sliced per message


def render(p: Planned, seed: int) -> bytes:
    """The CRLF bytes of ``p``: the same ``(p, seed)`` always gives the same bytes."""
    rng = random.Random(seed * 1_000_003 + p.index)
    start = rng.randrange(len(_TEXT) // 2)
    text_len = min(p.size - 800, 12_000)
    body = "Hello,\n\n" + _TEXT[start : start + max(text_len, 200)] + "\n\nRegards\n"
    subject = f"Bench message {p.index} " + ("Réunion budget" if p.index % 20 == 0 else "status")
    attachments = []
    rest = p.size - len(body) - 1_000
    if rest > 2_000:
        raw = rng.randbytes(rest * 3 // 4)
        attachments.append(Attachment(f"file{p.index}.bin", "application/octet-stream", raw))
    return make_message(
        subject=subject,
        date=p.date,
        message_id=f"<bench-{seed}-{p.index}@bench.example.com>",
        body=body,
        attachments=attachments,
        boundary_seed=f"b{seed}x{p.index}",
    )


def load_mailbox(server: DovecotServer, user: str, spec: CorpusSpec) -> Expected:
    """Write ``spec``'s mailbox into ``user`` on a SOURCE server (every folder is created, even
    one that gets no message) and return what is in it."""
    expected = Expected({name: Counter() for name, _ in FOLDERS})
    for name, _ in FOLDERS:
        create_folder(server, user, name)
    batch: list[MailSpec] = []
    batch_bytes = 0
    folder = ""
    for p in [*plan(spec), None]:
        if batch and (p is None or p.folder != folder or batch_bytes > LOAD_CHUNK_BYTES):
            for m in load_messages(server, user, folder, batch):
                epoch = int(m.internaldate.timestamp())
                expected.folders[folder][(m.sha256, m.flags, epoch)] += 1
                expected.messages += 1
                expected.bytes += m.size
            batch, batch_bytes = [], 0
        if p is None:
            break
        folder = p.folder
        data = render(p, spec.seed)
        batch.append(MailSpec(data, p.flags, p.date))
        batch_bytes += len(data)
    return expected


# -- the large-folder series (issue 14) --------------------------------------------------------

LARGE_FOLDER = "Large Folder"  # the one folder of a scaling mailbox
SMALL_SIZE = 2_000  # bytes per message of the scaling series, about
SMALL_CHUNK = 20_000  # messages rendered and loaded per load_messages call


def render_small(index: int, seed: int) -> tuple[bytes, frozenset[str], dt.datetime]:
    """Message ``index`` of a scaling mailbox: ~2 KB of plain text, its flags and INTERNALDATE.
    Deterministic for ``(index, seed)``; built from a template, so 200,000 take seconds."""
    rng = random.Random(seed * 1_000_003 + index)
    date = FIRST_DAY + dt.timedelta(seconds=rng.randrange(SPAN_SECONDS))
    start = rng.randrange(len(_TEXT) // 2)
    flags = {"\\Seen"} if rng.random() < 0.85 else set()
    if rng.random() < 0.05:
        flags.add("\\Flagged")
    if rng.random() < 0.03:
        flags.add("$Forwarded")
    subject = f"Small message {index} " + ("Réunion" if index % 20 == 0 else "status")
    head = (
        f"From: Alice Example <alice@example.com>\r\nTo: Bob Example <bob@example.com>\r\n"
        f"Subject: {subject}\r\nDate: {date:%a, %d %b %Y %H:%M:%S +0000}\r\n"
        f"Message-ID: <small-{seed}-{index}@bench.example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode()
    text = _TEXT[start : start + SMALL_SIZE - len(head) - 20].replace("\n", "\r\n")
    return head + b"Hello,\r\n\r\n" + text.encode() + b"\r\n", frozenset(flags), date


def load_large_folder(server: DovecotServer, user: str, messages: int, seed: int) -> Expected:
    """Write one folder (``LARGE_FOLDER``) of ``messages`` small messages into ``user`` on a
    SOURCE server, in date order, and return what is in it."""
    expected = Expected({LARGE_FOLDER: Counter()})
    planned = sorted((render_small(i, seed) for i in range(messages)), key=lambda m: (m[2], m[0]))
    for first in range(0, len(planned), SMALL_CHUNK):
        specs = [
            MailSpec(data, flags, date)
            for data, flags, date in planned[first : first + SMALL_CHUNK]
        ]
        for m in load_messages(server, user, LARGE_FOLDER, specs):
            epoch = int(m.internaldate.timestamp())
            expected.folders[LARGE_FOLDER][(m.sha256, m.flags, epoch)] += 1
            expected.messages += 1
            expected.bytes += m.size
    return expected
