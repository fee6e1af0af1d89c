"""Finishing a request: result JSON, report mail, outbox, then the state store.

Owns the order of the finishing writes, chosen for crash safety: the outbox files first, the
state store last. A crash in between leaves the request ``running``; the next start re-runs it
(a delta pass that copies nothing) and writes the same files again, so nothing is lost. The
passwords are erased from the state store by its last write.

Must not: copy mail. The listing of the destination folder tree is produced by ``archive``.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.imap.endpoint import with_dest_port
from legacyflo_daemon.model import Request, RequestResult, RowError, Status
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report.mail import build_mail
from legacyflo_daemon.report.result import result_json
from legacyflo_daemon.state.store import StateStore
from legacyflo_daemon.transfer.recorder import ListingEntry, ListingRecorder

log = structlog.get_logger("legacyflo_daemon.report.finisher")

# Produces the archive listing for a request (using what the copier recorded, if anything)
# into a temp dir; returns an iterable over it.
ListingSource = Callable[[Request, Path, ListingRecorder | None], Awaitable[Iterable[ListingEntry]]]


@dataclass
class Finisher:
    config: Config
    state: StateStore
    outbox: Outbox
    listing: ListingSource
    on_mail: Callable[[], None] = lambda: None

    async def finish(
        self,
        request_id: str,
        csv_name: str,
        request: Request | None,
        row_error: RowError | None,
        result: RequestResult,
        dest_folder_path: str,
        now: dt.datetime,
        recorder: ListingRecorder | None = None,
    ) -> dict[str, Any]:
        """Write ``<id>.json`` and ``<id>.eml``, then record the final status. Returns the JSON."""
        doc = result_json(
            request_id,
            with_dest_port(request, self.config) if request is not None else None,
            row_error,
            result,
            csv_name=csv_name,
            dest_folder_path=dest_folder_path,
        )
        to_addr = request.report_to if request is not None else (row_error and row_error.report_to)
        with tempfile.TemporaryDirectory(prefix=".work-report-", dir=self.outbox.dir) as tmp:
            entries: Iterable[ListingEntry] = ()
            if request is not None and result.status is not Status.FAILED:
                try:
                    entries = await self.listing(request, Path(tmp), recorder)
                except Exception as exc:  # the report still goes out, saying what is missing
                    log.warning("listing_failed", error=str(exc))
                    doc.setdefault("warnings", []).append(
                        f"the listing of the destination folder could not be read: {exc}"
                    )
            eml = build_mail(
                doc,
                entries,
                from_addr=self.config.report.from_address,
                to_addr=to_addr or None,
                now=now,
                compress_above=self.config.report.compress_listing_above_kb * 1024,
                tmpdir=Path(tmp),
            )
        self.outbox.write_result(request_id, doc)
        self.outbox.write_mail(request_id, eml)
        self.state.finish_request(request_id, result.status, doc, now, error=result.error)
        self.on_mail()
        log.info("result_written", status=result.status.value, report_to=to_addr or None)
        return doc
