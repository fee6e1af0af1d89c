"""The listing CSV from recorded rows is byte for byte what the former pipeline wrote.

Before: the copier recorded JSON lines, the report read them back into ``ListingEntry`` values
and wrote them with ``csv.writer`` into a ``utf-8-sig`` text file (``errors="replace"``), then
gzip-compressed it in 1 MiB pieces. Now the recorded lines are the CSV rows
(``transfer.listing_csv``) and the report concatenates them. Both pipelines run here from the
same messages (``frozen_reference`` is the former one, verbatim) and must give the same
attachment: plain and compressed, with formula-like starts, NUL, lone surrogates, quotes,
commas, line breaks, RFC 2047 words and non-ASCII in every cell.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import gzip
import io
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from legacyflo_daemon.report.listing import Listing, write_listing
from legacyflo_daemon.transfer import listing_csv
from legacyflo_daemon.transfer.recorder import ListingEntry, ListingRecorder
from tests import frozen_reference as old

WHEN = dt.datetime(2017, 9, 25, 8, 30, 15, 120_000, tzinfo=dt.timezone(dt.timedelta(hours=5.5)))
TRICKY = [
    "=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tTab", "\rCR", "'quoted", "a,b",
    'say "hi"', "line\nbreak", "crlf\r\ninside", "nul\x00byte", "\x00", "lone \udcff surrogate",
    "\ud83d\ude00 a pair of surrogates", "Réunion 数据 😀", "", " ", "=", ",", '"', "\u2028",
    "trailing space ", "\x85next line",
]  # fmt: skip
HOSTILE_HEADERS = [
    b'From: =HYPERLINK("x")\r\nSubject: -1, "two"\r\nMessage-ID: <@a>\r\n\r\n',
    b"From: =?utf-8?q?=3Dcmd=7C?=\r\nSubject: =?utf-8?b?w6kgLSDDqQ==?=\r\n\r\n",
    b'Subject: folded,\r\n "quoted"\r\n\tagain\r\nFrom: R\xe9union <r@x>\r\n\r\n',
    b"Subject: \x00nul\x01ctl\r\nFrom: \xff\xfe\r\nMessage-ID: <\xc3\xa9@x>\r\n",
    b"Subject: =?bogus?q?x?=\nFrom: +33 1 23\n\n",
    b"Subject: =?unknown-8bit?q?=FF=FE?=\r\n\r\n",
    b"",
    b"Subject: " + b"x" * 600 + b"\r\n\r\n",
]


Attachment = tuple[bytes, str, int, int, int]  # bytes, filename, entries, folders, CSV size


def old_attachment(entries: Iterable[ListingEntry], tmp: Path, compress_above: int) -> Attachment:
    """What the former ``write_listing`` attached: (bytes, filename, entries, folders, size)."""
    plain = tmp / "old.csv"
    count, folders = old.write_csv(entries, plain)
    size = plain.stat().st_size
    if size <= compress_above:
        return plain.read_bytes(), "listing.csv", count, folders, size
    packed = tmp / "old.csv.gz"
    with (
        plain.open("rb") as src,
        packed.open("wb") as raw,
        gzip.GzipFile("listing.csv", "wb", compresslevel=6, fileobj=raw, mtime=0) as gz,
    ):
        shutil.copyfileobj(src, gz, 1024 * 1024)
    return packed.read_bytes(), "listing.csv.gz", count, folders, size


def as_recorded(entry: ListingEntry) -> ListingEntry:
    """``entry`` as the former pipeline's CSV writer got it: through a JSON line (written
    with ``json.dumps`` when it holds a surrogate, which ``orjson`` refuses)."""
    folder, _, sender, subject, _, message_id = json.loads(
        json.dumps([entry.folder, "", entry.sender, entry.subject, 0, entry.message_id])
    )
    return dataclasses.replace(
        entry, folder=folder, sender=sender, subject=subject, message_id=message_id
    )


def new_attachment(listing: Listing, tmp: Path, compress_above: int) -> Attachment:
    with write_listing(listing, tmpdir=tmp, compress_above=compress_above) as w:
        return w.path.read_bytes(), w.filename, w.entries, w.folders, w.csv_size


Message = tuple[str, dt.datetime, bytes, int]  # folder, INTERNALDATE, header, size


def both(messages: list[Message], tmp: Path, compress_above: int) -> tuple[Attachment, Attachment]:
    """The attachment of ``messages`` (recorded per folder, folders in name order) by the
    former pipeline and by the recorder + ``write_listing``."""
    old_dir, new_dir = tmp / "old", tmp / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    names = sorted({m[0] for m in messages})
    old_files = []
    for n, name in enumerate(names):
        path = old_dir / f"{n}.jsonl"
        path.write_bytes(
            b"".join(
                old.entry_line_of_fields(name, when, old.header_fields(header), size)
                for folder, when, header, size in messages
                if folder == name
            )
        )
        old_files.append(path)
    before = old_attachment(old.read_entries(old_files), old_dir, compress_above)

    rec = ListingRecorder(new_dir)
    for name in names:
        rows = [(when, header, size) for folder, when, header, size in messages if folder == name]
        asyncio.run(rec.record(name, name, rows))
    after = new_attachment(rec.listing(names), new_dir, compress_above)
    return before, after


def test_tricky_messages_give_the_same_csv(tmp_path: Path) -> None:
    messages = [
        (folder, WHEN + dt.timedelta(days=i), header, 1000 + i)
        for i, (folder, header) in enumerate((f, h) for f in TRICKY for h in HOSTILE_HEADERS)
    ]
    before, after = both(messages, tmp_path, compress_above=1 << 30)
    assert after == before
    assert after[1] == "listing.csv"
    assert after[0].startswith(b"\xef\xbb\xbffolder,received,from,subject,size,message_id\r\n")
    assert b"'=HYPERLINK" in after[0] and b"lone ? surrogate" in after[0]  # not vacuous
    assert after[2] == len(TRICKY) * len(HOSTILE_HEADERS) and after[3] == len(TRICKY)


def test_a_large_listing_compresses_to_the_same_bytes(tmp_path: Path) -> None:
    """Over several 1 MiB pieces and several files: the gzip stream is the same."""
    messages = [
        (
            f"INBOX.Data.{TRICKY[i % len(TRICKY)]}" if i % 3 else "INBOX.Data",
            WHEN + dt.timedelta(minutes=i),
            HOSTILE_HEADERS[i % len(HOSTILE_HEADERS)] + b"Subject: %d\r\n" % i,
            i,
        )
        for i in range(25_000)
    ]
    before, after = both(messages, tmp_path, compress_above=1000)
    assert before[4] > 2 * 1024 * 1024  # several pieces
    assert after[1] == "listing.csv.gz"
    assert after == before


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=()), max_size=12),
            st.binary(max_size=120)
            | st.lists(
                st.sampled_from([*HOSTILE_HEADERS, b"Subject: ", b"From:", b"\r\n"]), max_size=4
            ).map(b"".join),
            st.integers(0, 2**40),
        ),
        max_size=8,
    )
)
def test_any_messages_give_the_same_csv(items: list[tuple[str, bytes, int]]) -> None:
    messages = [(f, WHEN, h, n) for f, h, n in items]
    with tempfile.TemporaryDirectory() as tmp:
        before, after = both(messages, Path(tmp), compress_above=1 << 30)
    assert after == before


@given(
    st.lists(st.text(st.characters(blacklist_categories=())), min_size=6, max_size=6), st.integers()
)
@example(["=a", "\x00", "\udc80", 'q"', "a,b", "x\ry"], -5)
def test_a_row_is_what_csv_writer_wrote(cells: list[str], size: int) -> None:
    entry = ListingEntry(cells[0], WHEN, cells[1], cells[2], size, cells[3])
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(old.listing_row(as_recorded(entry)))
    assert entry.row() == out.getvalue().encode("utf-8", "replace")


def test_entries_made_in_memory_give_the_same_csv(tmp_path: Path) -> None:
    entries = [
        ListingEntry(f, WHEN + dt.timedelta(hours=i), s, s[::-1], i, s + "@x")
        for i, (f, s) in enumerate((f, s) for f in TRICKY for s in TRICKY)
    ]
    for compress_above in (1 << 30, 0):
        before = old_attachment(map(as_recorded, entries), tmp_path, compress_above)
        assert new_attachment(iter(entries), tmp_path, compress_above) == before


def test_lines_added_with_their_folder_count_it(tmp_path: Path) -> None:
    """``ListingFile.add_lines(lines, display)`` (the copier's call) counts rows and folders."""
    rec = ListingRecorder(tmp_path)
    for name in ('a,"b"', "=c", "d"):
        f = rec.start()
        f.add_lines([listing_csv.row(name, WHEN, "s", "t", 1, "<m>")] * 3, name)
        f.add_lines([], name)
        f.finish(name)
    listing = rec.listing(['a,"b"', "=c", "d"])
    assert (listing.entries, listing.folders) == (9, 3)
    assert rec.files["=c"].folders == {"=c"}
    assert rec.files['a,"b"'].folders == {'a,"b"'}


def test_an_empty_folder_is_not_counted(tmp_path: Path) -> None:
    rec = ListingRecorder(tmp_path)
    asyncio.run(rec.record("E", "E", []))
    asyncio.run(rec.record("F", "F", [(WHEN, b"Subject: x\r\n\r\n", 5)]))
    f = rec.start()
    f.add("G", [])
    f.finish("G")
    listing = rec.listing(["E", "F", "G"])
    assert (listing.entries, listing.folders) == (1, 1)
