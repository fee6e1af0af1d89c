"""The listing CSV attached to a report mail: every message now under the destination folder.

Owns: the CSV columns, spreadsheet-formula neutralisation, and writing the CSV (gzip-compressed
when large) into a private temporary directory. The entries are ``transfer.recorder``'s
``ListingEntry`` values, read back from what the copier and ``report.archive`` recorded.
Must not: hold the whole listing in memory (a mailbox may have 100,000+ messages; entries are
consumed one at a time from an iterator), talk to any server, or read the clock.
"""

from __future__ import annotations

import csv
import gzip
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from legacyflo_daemon.transfer.recorder import ListingEntry

COLUMNS = ("folder", "received", "from", "subject", "size", "message_id")

# A cell starting with one of these is a formula (or becomes one) in Excel, LibreOffice and
# Google Sheets; a leading apostrophe makes the spreadsheet show it as text (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class ListingFile:
    """A listing written to disk: attach ``path`` under the name ``filename``."""

    path: Path
    filename: str  # "listing.csv" or "listing.csv.gz"
    content_type: str  # "text/csv" or "application/gzip"
    entries: int
    folders: int  # number of distinct folders listed
    csv_size: int  # bytes of the uncompressed CSV


def neutralise(value: str) -> str:
    """``value`` made safe to open in a spreadsheet: a formula-like start gets a leading ``'``.

    NUL characters (which no spreadsheet shows and some CSV readers choke on) become U+FFFD.
    """
    if "\0" in value:
        value = value.replace("\0", "\ufffd")
    if value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def listing_row(entry: ListingEntry) -> list[str]:
    """The CSV cells for one entry, in ``COLUMNS`` order, every text cell neutralised."""
    return [
        neutralise(entry.folder),
        entry.received.isoformat(),
        neutralise(entry.sender),
        neutralise(entry.subject),
        str(entry.size),
        neutralise(entry.message_id),
    ]


@contextmanager
def write_listing(
    entries: Iterable[ListingEntry], *, tmpdir: Path, compress_above: int
) -> Iterator[ListingFile]:
    """Write ``entries`` as CSV into a private directory under ``tmpdir``; yield the result.

    The CSV is UTF-8 with a BOM (so Excel shows accents correctly), CRLF line ends, a header
    row of ``COLUMNS``. When it is larger than ``compress_above`` bytes it is gzip-compressed
    (streamed, chunk by chunk) and named ``listing.csv.gz``. Memory use does not depend on the
    number of entries. The files are removed when the context exits.
    """
    with tempfile.TemporaryDirectory(prefix=".listing-", dir=tmpdir) as work:
        plain = Path(work) / "listing.csv"
        count = 0
        folders: set[str] = set()  # distinct folder names: a few hundred at most, not messages
        # errors="replace": a decoded header may carry lone surrogates, which UTF-8 cannot encode.
        with plain.open("w", encoding="utf-8-sig", errors="replace", newline="") as out:
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(COLUMNS)
            for entry in entries:
                writer.writerow(listing_row(entry))
                folders.add(entry.folder)
                count += 1
        size = plain.stat().st_size
        if size <= compress_above:
            yield ListingFile(plain, "listing.csv", "text/csv", count, len(folders), size)
            return
        packed = Path(work) / "listing.csv.gz"
        # mtime=0 and a fixed inner name: the same listing always compresses to the same bytes.
        with (
            plain.open("rb") as src,
            packed.open("wb") as raw,
            gzip.GzipFile("listing.csv", "wb", compresslevel=6, fileobj=raw, mtime=0) as gz,
        ):
            shutil.copyfileobj(src, gz, 1024 * 1024)
        plain.unlink()
        yield ListingFile(packed, "listing.csv.gz", "application/gzip", count, len(folders), size)
