"""Finishing a request: its result JSON and report mail in the outbox, then its final status.

Owns: building every request's result, whatever ended it — a copy (``copied``), a failure
before or outside the copy (``failed``: an internal error, a poisoned CSV), a rejected row
(``rejected``) — and the order of the finishing writes, chosen for crash safety: the outbox
files first, the state store last. A crash in between leaves the request unfinished; the next
start runs it again (a delta pass that copies nothing) and writes the same files again, so
nothing is lost. The passwords are erased by that last write (``Lifecycle.finish``).

Building the mail (with a listing of possibly 100,000+ messages) and writing the files run in
a worker thread: the event loop is never blocked by them.

Must not: copy mail. The listing of the destination folder tree is produced by ``archive``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.imap.endpoint import with_ports
from legacyflo_daemon.model import Request, RequestResult, RowError, Status
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report.mail import build_mail
from legacyflo_daemon.report.result import result_json
from legacyflo_daemon.runtime.bulk import in_thread
from legacyflo_daemon.runtime.clock import utcnow
from legacyflo_daemon.runtime.secrets import scrub
from legacyflo_daemon.state.lifecycle import Lifecycle
from legacyflo_daemon.transfer.recorder import ListingRecorder, RecordedListing

log = structlog.get_logger("legacyflo_daemon.report.finisher")

# Produces the archive listing for a request (using what the copier recorded, if anything,
# and recording the rest into a temp dir).
ListingSource = Callable[[Request, Path, ListingRecorder | None], Awaitable[RecordedListing]]
_NO_LISTING = RecordedListing((), 0, 0)


@dataclass
class Finisher:
    config: Config
    lifecycle: Lifecycle
    outbox: Outbox
    listing: ListingSource
    on_mail: Callable[[], None] = lambda: None
    outcomes: list[Status] = field(default_factory=list)  # every final status, in order
    # Sums over the results written by this process: messages copied/already present/failed,
    # bytes (the summary of a ``run --once``).
    totals: Counter[str] = field(default_factory=Counter)

    async def copied(
        self,
        request_id: str,
        csv_name: str,
        request: Request,
        result: RequestResult,
        recorder: ListingRecorder | None = None,
    ) -> dict[str, Any]:
        """Finish a request the copier ran to its end (any status). Returns the result JSON.

        The destination folder is shown in the destination's own delimiter (the copier learnt
        it); when the copier never got that far, as configured (written with ``.``)."""
        dest_path = (
            result.destination_folder or f"{self.config.imap.dest_root}.{request.dest_folder}"
        )
        return await self._finish(request_id, csv_name, request, None, result, dest_path, recorder)

    async def failed(
        self, request_id: str, csv_name: str, request: Request | None, error: str
    ) -> dict[str, Any]:
        """Finish a queued or running request that cannot run to its end: ``error`` says why
        (an internal error and where to find it in the log, a poisoned CSV)."""
        now = utcnow()
        result = RequestResult(request_id, Status.FAILED, None, now, error=error)
        return await self._finish(request_id, csv_name, request, None, result, "", None)

    async def cancelled(self, request_id: str, csv_name: str, request: Request) -> dict[str, Any]:
        """Finish a queued request the administrator cancelled before it started."""
        now = utcnow()
        result = RequestResult(
            request_id, Status.CANCELLED, None, now,
            error="cancelled by the administrator before it started",
        )  # fmt: skip
        return await self._finish(request_id, csv_name, request, None, result, "", None)

    async def rejected(self, request_id: str, csv_name: str, row_error: RowError) -> dict[str, Any]:
        """Record the result of a row the intake rejected."""
        now = utcnow()
        result = RequestResult(request_id, Status.REJECTED, now, now, error=row_error.message)
        return await self._finish(request_id, csv_name, None, row_error, result, "", None)

    async def _finish(
        self,
        request_id: str,
        csv_name: str,
        request: Request | None,
        row_error: RowError | None,
        result: RequestResult,
        dest_folder_path: str,
        recorder: ListingRecorder | None,
    ) -> dict[str, Any]:
        # Scrubbed as a whole: server texts (errors, failure reasons) may quote a password
        # back, and the request's passwords are registered until it is finished.
        doc: dict[str, Any] = scrub(
            result_json(
                request_id,
                with_ports(request, self.config) if request is not None else None,
                row_error,
                result,
                csv_name=csv_name,
                dest_folder_path=dest_folder_path,
            )
        )
        to_addr = request.report_to if request is not None else (row_error and row_error.report_to)
        with tempfile.TemporaryDirectory(prefix=".work-report-", dir=self.outbox.dir) as tmp:
            listing = _NO_LISTING
            if request is not None and result.status not in (Status.FAILED, Status.CANCELLED):
                try:
                    listing = await self.listing(request, Path(tmp), recorder)
                except Exception as exc:  # the report still goes out, saying what is missing
                    log.warning("listing_failed", error=str(exc))
                    doc.setdefault("warnings", []).append(
                        f"the listing of the destination folder could not be read: {exc}"
                    )
            await in_thread(self._write, request_id, doc, listing, to_addr or None, Path(tmp))
        self.lifecycle.finish(request_id, result.status, doc, utcnow(), error=result.error)
        self.outcomes.append(result.status)
        for key in ("copied", "already_present", "failed", "bytes"):
            self.totals[key] += int((doc.get("totals") or {}).get(key, 0))
        self.on_mail()
        log.info("result_written", status=result.status.value, report_to=to_addr or None)
        return doc

    def _write(
        self,
        request_id: str,
        doc: dict[str, Any],
        listing: RecordedListing,
        to_addr: str | None,
        tmpdir: Path,
    ) -> None:
        """In a worker thread: build the mail (reading the listing), write both files."""
        eml = build_mail(
            doc,
            listing,
            from_addr=self.config.report.from_address,
            to_addr=to_addr,
            now=utcnow(),
            compress_above=self.config.report.compress_listing_above_kb * 1024,
            tmpdir=tmpdir,
        )
        self.outbox.write_result(request_id, doc)
        if self.config.report.per_account:
            self.outbox.write_mail(request_id, eml)
