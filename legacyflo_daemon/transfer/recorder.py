"""What the copier saw of the destination, kept for the report's listing; the destination tree.

At the end of each folder pass the copier knows the destination folder's exact content: the
messages it read for the identity comparison plus the ones it appended. Recording them here
(one file per folder, streamed, so memory stays bounded) lets the report list those folders
without reading them from the server again — for a 20,000-message mailbox that is a third of
all the metadata traffic of a run. Folders the copier did not pass through in this run
(finished before a restart, or created by earlier requests) are still read by
``report.archive``, into files of the same kind.

A folder's file holds its rows of the report's listing CSV, final (``transfer.listing_csv``):
the report concatenates the files (``RecordedListing``), it parses and formats nothing again.

Also owns the one definition of a request's destination tree (``request_top``,
``selectable_under``), which the copier and ``report.archive`` share, and ``ListingEntry``, a
listing row as values (for a listing made in memory, say a test's).
Must not: talk to a server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from legacyflo_daemon.imap.syntax import utf7
from legacyflo_daemon.imap.syntax.parse import selectable
from legacyflo_daemon.transfer import listing_csv
from legacyflo_daemon.transfer.headers import decode_text, header_fields

RECORD_SLICE = 500  # listing rows written between two turns of the event loop (~3 ms)


@dataclass(frozen=True, slots=True)
class ListingEntry:
    """One message under the destination folder, as values (a listing made in memory)."""

    folder: str  # decoded display path, e.g. "INBOX.historical_data.Data.Inbox"
    received: dt.datetime  # INTERNALDATE, timezone-aware
    sender: str  # decoded From header
    subject: str  # decoded Subject header
    size: int  # RFC822.SIZE as the destination reports it
    message_id: str

    def row(self) -> bytes:
        """Its row of the listing CSV (``listing_csv.row``)."""
        return listing_csv.row(
            self.folder, self.received, self.sender, self.subject, self.size, self.message_id
        )


@dataclass(frozen=True, slots=True)
class RecordedListing:
    """Recorded folders, for the report: their files of listing rows in listing order, how
    many rows they hold and how many distinct folders have rows."""

    paths: tuple[Path, ...]
    entries: int
    folders: int


class ListingRecorder:
    """Per destination folder (wire name): a file of its listing rows."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, ListingFile] = {}  # the finished recording of each folder
        self._written = 0  # files started: each ``record`` writes a file of its own
        # Every selectable folder under the request's destination folder, when known: the
        # destination's LIST before copying plus the folders the copier created.
        self.tree: set[str] | None = None

    async def record(
        self, wire_name: str, display: str, messages: Iterable[tuple[dt.datetime, bytes, int]]
    ) -> None:
        """The folder ``wire_name`` now holds exactly ``messages`` (INTERNALDATE, header
        fields, size).

        A row costs ~5 us a message, so a folder of 200,000 would hold the event loop for
        a second: the rows are written in slices of ``RECORD_SLICE`` with a turn of
        the loop between them. Folders are recorded side by side (the copier passes through
        several at once), so each call writes a file of its own, named before the first
        await; the folder is registered (replacing an earlier recording) once it is complete.
        """
        listing = self.start()
        await listing.extend(display, messages)
        listing.finish(wire_name)

    def start(self) -> ListingFile:
        """A listing written piece by piece (``ListingFile``), for a copier that writes each
        batch's rows as it reads the batch instead of keeping the folder's messages."""
        path = self.directory / f"folder-{self._written:05d}.csv"
        self._written += 1
        path.write_bytes(b"")
        return ListingFile(self, path)

    def listing(self, names: Iterable[str]) -> RecordedListing:
        """The recorded folders ``names`` (wire names, each recorded), in that order."""
        files = [self.files[name] for name in names]
        folders: set[str] = set().union(*(f.folders for f in files))
        return RecordedListing(
            tuple(f.path for f in files), sum(f.rows for f in files), len(folders)
        )


class ListingFile:
    """One folder's listing being written: ``add`` rows as messages are found, ``finish``
    once the folder's content is complete (only then does it count as the folder's listing;
    an unfinished one, say of an interrupted pass, is never read)."""

    def __init__(self, recorder: ListingRecorder, path: Path) -> None:
        self._recorder = recorder
        self.path = path
        self.rows = 0
        self.folders: set[str] = set()  # the folder names of its rows (one, in practice)

    def add(self, display: str, messages: Iterable[tuple[dt.datetime, bytes, int]]) -> None:
        """Append the rows of ``messages`` (INTERNALDATE, header fields, size): one batch
        (~5 us a message, so callers pass at most a metadata batch at a time)."""
        self._append([entry_line(display, r, h, n) for r, h, n in messages], display)

    def add_lines(self, lines: list[bytes], display: str) -> None:
        """Append rows made with ``entry_line``/``entry_line_of_fields`` for the folder
        ``display`` (one batch)."""
        self._append(lines, display)

    def _append(self, rows: list[bytes], display: str) -> None:
        if not rows:
            return
        with self.path.open("ab") as fh:
            fh.writelines(rows)
        self.rows += len(rows)
        self.folders.add(display)

    async def extend(
        self, display: str, messages: Iterable[tuple[dt.datetime, bytes, int]]
    ) -> None:
        """``add`` any number of messages, ``RECORD_SLICE`` at a time with a turn of the event
        loop between slices."""
        with self.path.open("ab") as fh:
            for n, (received, header, size) in enumerate(messages, start=1):
                fh.write(entry_line(display, received, header, size))
                self.rows += 1
                if n % RECORD_SLICE == 0:
                    await asyncio.sleep(0)
        if self.rows:
            self.folders.add(display)

    def finish(self, wire_name: str) -> None:
        """The folder ``wire_name`` now holds exactly the messages added (replacing an earlier
        recording of it)."""
        self._recorder.files[wire_name] = self


def request_top(root_path: tuple[str, ...], dest_folder: str, delimiter: str) -> str:
    """The wire name of a request's destination folder: ``<root>.<destfolder>`` (mUTF-7)."""
    return delimiter.join([*root_path, utf7.encode(dest_folder)])


def selectable_under(
    listed: Iterable[tuple[str, Iterable[str]]], top: str, delimiter: str
) -> set[str]:
    """Names (from LIST: name, flags) of ``top`` and below it that can hold mail."""
    return {
        name
        for name, flags in listed
        if (name == top or name.startswith(top + delimiter)) and selectable(flags)
    }


def entry_line(display: str, received: dt.datetime, header: bytes, size: int) -> bytes:
    """One row of the listing CSV (``listing_csv.row``, UTF-8): folder ``display``,
    ``received``, From, Subject, ``size``, Message-ID."""
    return entry_line_of_fields(display, received, header_fields(header), size)


def entry_line_of_fields(
    display: str, received: dt.datetime, f: dict[bytes, bytes], size: int
) -> bytes:
    """``entry_line`` of a message whose ``headers.header_fields`` are already at hand."""
    return listing_csv.row(
        display,
        received,
        decode_text(f.get(b"from", b"")),
        decode_text(f.get(b"subject", b"")),
        size,
        decode_text(f.get(b"message-id", b"")),
    )
