"""The listing of everything now under a request's destination folder, for its report.

SPEC §6 and the reference document promise that the report lists every message under the
destination folder tree, including mail imported there by earlier requests. This module logs
in to the destination, walks ``<root>.<destfolder>`` and its subfolders read-only (EXAMINE),
and streams one ``ListingEntry`` per message into a JSON-lines file under a temp directory,
so memory stays bounded for folders of 100,000+ messages. The report reads it back lazily.

Must not: change anything on the destination.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import folders, utf7
from .config import Config
from .copyfolder import read_identities
from .endpoints import dest_endpoint
from .headers import summarize
from .imap import Session, connect
from .listing import ListingEntry
from .model import Request
from .results import ListingSource


def _display(name: str, delimiter: str | None) -> str:
    parts = folders.split_wire(name, delimiter)
    decoded = []
    for p in parts:
        try:
            decoded.append(utf7.decode(p))
        except ValueError:
            decoded.append(p)
    return (delimiter or ".").join(decoded)


async def write_listing(session: Session, root: str, delimiter: str, out: Path) -> int:
    """Write the entries of folder ``root`` (wire name) and its subfolders to ``out``."""
    names = sorted(
        e.name
        for e in await session.list_folders()
        if (e.name == root or e.name.startswith(root + delimiter))
        and "\\noselect" not in {f.lower() for f in e.flags}
        and "\\nonexistent" not in {f.lower() for f in e.flags}
    )
    count = 0
    with out.open("w", encoding="utf-8") as fh:
        for name in names:
            display = _display(name, delimiter)
            info = await session.examine(name)
            if not info.exists:
                continue
            uids = await session.uid_search(["ALL"])
            for meta in await read_identities(session, uids):
                h = summarize(meta.header)
                row = [display, meta.internaldate.isoformat(), h.sender, h.subject, meta.size,
                       h.message_id]  # fmt: skip
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    return count


def read_listing(path: Path) -> Iterator[ListingEntry]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            folder, received, sender, subject, size, message_id = json.loads(line)
            yield ListingEntry(
                folder=folder,
                received=dt.datetime.fromisoformat(received),
                sender=sender,
                subject=subject,
                size=int(size),
                message_id=message_id,
            )


def listing_source(cfg: Config) -> ListingSource:
    """The ``Finisher``'s way to list a request's destination folder tree."""

    async def produce(request: Request, tmpdir: Path) -> Iterable[ListingEntry]:
        session = await connect(dest_endpoint(request, cfg))
        try:
            prefix, delimiter = await session.namespace()
            delim = delimiter or "."
            root_path = folders.root_path(cfg.imap.dest_root, prefix, delim)
            root = delim.join([*root_path, utf7.encode(request.dest_folder)])
            out = tmpdir / "listing.jsonl"
            await write_listing(session, root, delim, out)
        finally:
            await session.logout()
        return read_listing(out)

    return produce
