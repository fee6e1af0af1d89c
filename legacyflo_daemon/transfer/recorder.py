"""What the copier saw of the destination, kept for the report's listing; the destination tree.

At the end of each folder pass the copier knows the destination folder's exact content: the
messages it read for the identity comparison plus the ones it appended. Recording them here
(one JSON-lines file per folder, streamed, so memory stays bounded) lets the report list those
folders without reading them from the server again — for a 20,000-message mailbox that is a
third of all the metadata traffic of a run. Folders the copier did not pass through in this
run (finished before a restart, or created by earlier requests) are still read by
``report.archive``.

Also owns the one definition of a request's destination tree (``request_top``,
``selectable_under``), which the copier and ``report.archive`` share, and ``ListingEntry``, the
value every listing line becomes.
Must not: talk to a server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from legacyflo_daemon.imap.syntax import utf7
from legacyflo_daemon.imap.syntax.parse import selectable
from legacyflo_daemon.transfer.headers import decode_text, header_fields

RECORD_SLICE = 500  # listing lines written between two turns of the event loop (~4 ms)


@dataclass(frozen=True, slots=True)
class ListingEntry:
    """One message found under the destination folder (produced by the copier)."""

    folder: str  # decoded display path, e.g. "INBOX.historical_data.Data.Inbox"
    received: dt.datetime  # INTERNALDATE, timezone-aware
    sender: str  # decoded From header
    subject: str  # decoded Subject header
    size: int  # RFC822.SIZE as the destination reports it
    message_id: str


class ListingRecorder:
    """Per destination folder (wire name): a JSON-lines file of its messages."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, Path] = {}
        self._written = 0  # files started: each ``record`` writes a file of its own
        # Every selectable folder under the request's destination folder, when known: the
        # destination's LIST before copying plus the folders the copier created.
        self.tree: set[str] | None = None

    async def record(
        self, wire_name: str, display: str, messages: Iterable[tuple[dt.datetime, bytes, int]]
    ) -> None:
        """The folder ``wire_name`` now holds exactly ``messages`` (INTERNALDATE, header
        fields, size).

        Summarising costs ~7 us a message, so a folder of 200,000 would hold the event loop
        for over a second: the lines are written in slices of ``RECORD_SLICE`` with a turn of
        the loop between them. Folders are recorded side by side (the copier passes through
        several at once), so each call writes a file of its own, named before the first
        await; the folder is registered (replacing an earlier recording) once it is complete.
        """
        listing = self.start()
        await listing.extend(display, messages)
        listing.finish(wire_name)

    def start(self) -> ListingFile:
        """A listing written piece by piece (``ListingFile``), for a copier that writes each
        batch's lines as it reads the batch instead of keeping the folder's messages."""
        path = self.directory / f"folder-{self._written:05d}.jsonl"
        self._written += 1
        path.write_bytes(b"")
        return ListingFile(self, path)


class ListingFile:
    """One folder's listing being written: ``add`` lines as messages are found, ``finish``
    once the folder's content is complete (only then does it count as the folder's listing;
    an unfinished one, say of an interrupted pass, is never read)."""

    def __init__(self, recorder: ListingRecorder, path: Path) -> None:
        self._recorder = recorder
        self.path = path

    def add(self, display: str, messages: Iterable[tuple[dt.datetime, bytes, int]]) -> None:
        """Append the lines of ``messages`` (INTERNALDATE, header fields, size): one batch
        (~7 us a message, so callers pass at most a metadata batch at a time)."""
        with self.path.open("ab") as fh:
            fh.writelines(entry_line(display, r, h, n) for r, h, n in messages)

    def add_lines(self, lines: Iterable[bytes]) -> None:
        """Append lines made with ``entry_line``/``entry_line_of_fields`` (one batch)."""
        with self.path.open("ab") as fh:
            fh.writelines(lines)

    async def extend(
        self, display: str, messages: Iterable[tuple[dt.datetime, bytes, int]]
    ) -> None:
        """``add`` any number of messages, ``RECORD_SLICE`` at a time with a turn of the event
        loop between slices."""
        with self.path.open("ab") as fh:
            for n, (received, header, size) in enumerate(messages, start=1):
                fh.write(entry_line(display, received, header, size))
                if n % RECORD_SLICE == 0:
                    await asyncio.sleep(0)

    def finish(self, wire_name: str) -> None:
        """The folder ``wire_name`` now holds exactly the messages added (replacing an earlier
        recording of it)."""
        self._recorder.files[wire_name] = self.path


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
    """One JSON line (UTF-8) of a listing file: ``[folder, received, from, subject, size,
    message_id]``."""
    # what ``summarize`` reads, without the Date a listing omits
    return entry_line_of_fields(display, received, header_fields(header), size)


def entry_line_of_fields(
    display: str, received: dt.datetime, f: dict[bytes, bytes], size: int
) -> bytes:
    """``entry_line`` of a message whose ``headers.header_fields`` are already at hand."""
    row = [
        display,
        received.isoformat(),
        decode_text(f.get(b"from", b"")),
        decode_text(f.get(b"subject", b"")),
        size,
        decode_text(f.get(b"message-id", b"")),
    ]
    try:
        return orjson.dumps(row) + b"\n"  # 25x faster than json.dumps; same JSON
    except orjson.JSONEncodeError:  # a lone surrogate (an undecodable folder name): escaped
        return json.dumps(row).encode("ascii") + b"\n"


def read_entries(paths: Iterable[Path]) -> Iterator[ListingEntry]:
    for path in paths:
        with path.open("rb") as fh:
            for line in fh:
                folder, received, sender, subject, size, message_id = _loads(line)
                yield ListingEntry(
                    folder=folder,
                    received=dt.datetime.fromisoformat(received),
                    sender=sender,
                    subject=subject,
                    size=int(size),
                    message_id=message_id,
                )


def _loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:  # written by the fallback above (escaped lone surrogates)
        return json.loads(line)
