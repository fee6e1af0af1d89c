"""The listing CSV attached to a report mail: every message now under the destination folder.

Owns: writing the CSV (gzip-compressed when large) into a private temporary directory. The
rows are made by ``transfer.listing_csv`` (which owns the columns and the formula
neutralisation) as the copier and ``report.archive`` record each folder
(``transfer.recorder``): for such a ``RecordedListing`` the CSV is the header row followed by
the recorded files, concatenated as they are. A listing of ``ListingEntry`` values (made in
memory) is written row by row with the same ``listing_csv.row``.
Must not: hold the whole listing in memory (a mailbox may have 100,000+ messages: files are
copied 1 MiB at a time, entries consumed one at a time from an iterator), talk to any server,
or read the clock.
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from legacyflo_daemon.transfer.listing_csv import HEAD
from legacyflo_daemon.transfer.recorder import ListingEntry, RecordedListing

# What a report lists: what the recorder recorded, or entries made in memory.
Listing = RecordedListing | Iterable[ListingEntry]

_CHUNK = 1024 * 1024  # bytes of a recorded file copied at a time


@dataclass(frozen=True, slots=True)
class ListingFile:
    """A listing written to disk: attach ``path`` under the name ``filename``."""

    path: Path
    filename: str  # "listing.csv" or "listing.csv.gz"
    content_type: str  # "text/csv" or "application/gzip"
    entries: int
    folders: int  # number of distinct folders listed
    csv_size: int  # bytes of the uncompressed CSV


@contextmanager
def write_listing(listing: Listing, *, tmpdir: Path, compress_above: int) -> Iterator[ListingFile]:
    """Write ``listing`` as CSV into a private directory under ``tmpdir``; yield the result.

    The CSV is UTF-8 with a BOM (so Excel shows accents correctly), CRLF line ends, a header
    row of ``listing_csv.COLUMNS``. When it is larger than ``compress_above`` bytes it is
    gzip-compressed (streamed, chunk by chunk) and named ``listing.csv.gz``. Memory use does
    not depend on the number of entries. The files are removed when the context exits.
    """
    with tempfile.TemporaryDirectory(prefix=".listing-", dir=tmpdir) as work:
        if isinstance(listing, RecordedListing):
            recorded = listing
        else:  # rows made here, into a file like the recorder's
            recorded = _record(listing, Path(work) / "entries.csv")
        size = len(HEAD) + sum(p.stat().st_size for p in recorded.paths)
        counts = (recorded.entries, recorded.folders, size)
        if size <= compress_above:
            plain = Path(work) / "listing.csv"
            with plain.open("wb") as out:
                for piece in _pieces(recorded.paths):
                    out.write(piece)
            yield ListingFile(plain, "listing.csv", "text/csv", *counts)
            return
        packed = Path(work) / "listing.csv.gz"
        # mtime=0 and a fixed inner name: the same listing always compresses to the same bytes.
        with (
            packed.open("wb") as raw,
            gzip.GzipFile("listing.csv", "wb", compresslevel=6, fileobj=raw, mtime=0) as gz,
        ):
            for piece in _pieces(recorded.paths):
                gz.write(piece)
        yield ListingFile(packed, "listing.csv.gz", "application/gzip", *counts)


def _pieces(paths: Iterable[Path]) -> Iterator[bytes]:
    """The CSV: ``HEAD``, then the files' bytes, ``_CHUNK`` at a time. (How the pieces are
    cut does not change the gzip stream: zlib's output depends only on the bytes.)"""
    yield HEAD
    for path in paths:
        with path.open("rb") as fh:
            while piece := fh.read(_CHUNK):
                yield piece


def _record(entries: Iterable[ListingEntry], path: Path) -> RecordedListing:
    count = 0
    folders: set[str] = set()  # distinct folder names: a few hundred at most, not messages
    with path.open("wb") as out:  # buffered: one write call per 8 KiB, not per row
        for entry in entries:
            out.write(entry.row())
            folders.add(entry.folder)
            count += 1
    return RecordedListing((path,), count, len(folders))
