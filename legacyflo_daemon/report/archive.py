"""The listing of everything now under a request's destination folder, for its report.

docs/contract.md §6.3 and the reference document promise that the report lists every message
under the destination folder tree, including mail imported there by earlier requests. This
module logs in to the destination, walks ``<root>.<destfolder>`` and its subfolders read-only
(EXAMINE), and streams each message's listing row into a file per folder under a temp
directory (``transfer.recorder``, the same rows the copier records), so memory stays bounded for
folders of 100,000+ messages; folders the copier recorded during the run are not read again.
The report concatenates the files.

Must not: change anything on the destination.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.imap.endpoint import dest_endpoint
from legacyflo_daemon.imap.session import Session, connect
from legacyflo_daemon.model import Request
from legacyflo_daemon.report.finisher import ListingSource
from legacyflo_daemon.transfer import folders
from legacyflo_daemon.transfer.recorder import (
    ListingRecorder,
    RecordedListing,
    request_top,
    selectable_under,
)


def _display(name: str, delimiter: str | None) -> str:
    """The folder as people read it: segments decoded, joined with the delimiter."""
    return (delimiter or ".").join(folders.source_path(name, delimiter))


async def read_folders(
    session: Session, names: Iterable[str], delimiter: str, recorder: ListingRecorder
) -> None:
    """Read the folders ``names`` (wire names) from the server into ``recorder``."""
    for name in names:
        info = await session.examine(name)
        uids = await session.uid_search(["ALL"]) if info.exists else []
        metas = await session.fetch_meta(uids)
        await recorder.record(
            name, _display(name, delimiter), ((m.internaldate, m.header, m.size) for m in metas)
        )


def listing_source(cfg: Config) -> ListingSource:
    """The ``Finisher``'s way to list a request's destination folder tree.

    Folders the copier recorded in this run are taken from its ``ListingRecorder``; only the
    others are read from the destination (EXAMINE, metadata only). When the recorder knows the
    whole tree and recorded all of it, no connection is made at all.
    """

    async def produce(
        request: Request, tmpdir: Path, recorder: ListingRecorder | None
    ) -> RecordedListing:
        rec = recorder or ListingRecorder(tmpdir)
        names = rec.tree
        if names is None or not names <= rec.files.keys():
            session = await connect(dest_endpoint(request, cfg))
            try:
                prefix, delimiter = await session.namespace()
                delim = delimiter or "."
                root_path = folders.root_path(cfg.imap.dest_root, prefix, delim)
                top = request_top(root_path, request.dest_folder, delim)
                if names is None:
                    listed = await session.list_folders()
                    names = selectable_under(((e.name, e.flags) for e in listed), top, delim)
                await read_folders(session, sorted(names - rec.files.keys()), delim, rec)
            finally:
                await session.logout()
        return rec.listing(sorted(names))

    return produce
