"""The result document of one request: ``outbox/<request_id>.json``.

Owns: its shape (described exactly by ``legacyflo_daemon/result.schema.json``) and making every
text in it encodable as UTF-8. The report mail is built from this document by ``report.mail``;
the per-CSV summary (``outbox/<csv name>.summary.json``) is ``spool.intake``'s.
Must not: do I/O (``outbox.store`` writes the file), read the clock (callers pass the times in
``RequestResult``), or ever put a password in its output — accounts are rendered field by
field, never as a whole.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from legacyflo_daemon.model import (
    Account,
    DateRange,
    FolderResult,
    MessageFailure,
    Request,
    RequestResult,
    RowError,
    Status,
)
from legacyflo_daemon.request.dates import describe

RESULT_VERSION = 1

_COUNTS = (
    "in_range",
    "copied",
    "already_present",
    "failed",
    "bytes",
    "deleted_dropped",
    "altered",
)


def utf8_safe(value: str) -> str:
    """``value`` with lone surrogates (from undecodable headers) replaced by ``?``, so that it
    encodes as UTF-8 (the outbox writes JSON as UTF-8 bytes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def iso_time(value: dt.datetime | None) -> str | None:
    """An aware datetime as ISO 8601 in UTC with a ``Z`` suffix; naive datetimes are a bug."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware datetime")
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _account(account: Account) -> dict[str, Any]:
    # Field by field on purpose: never serialise the Account (it holds the password).
    return {
        "userid": account.userid,
        "domain": account.domain,
        "server": account.server,
        "port": account.port,
    }


def _date_range(dates: DateRange) -> dict[str, Any]:
    return {
        "since": dates.since.isoformat() if dates.since else None,
        "before": dates.before.isoformat() if dates.before else None,
        "description": describe(dates),
    }


def _folder(folder: FolderResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "source": utf8_safe(folder.source),
        "destination": utf8_safe(folder.destination),
    }
    out.update({name: getattr(folder, name) for name in _COUNTS})
    out["note"] = utf8_safe(folder.note)
    out["error"] = utf8_safe(folder.error) if folder.error is not None else None
    return out


def _failure(failure: MessageFailure) -> dict[str, Any]:
    return {
        "folder": utf8_safe(failure.folder),
        "uid": failure.uid,
        "date": failure.date,
        "subject": utf8_safe(failure.subject),
        "reason": utf8_safe(failure.reason),
        "kind": failure.kind,
    }


def _totals(folders: tuple[FolderResult, ...]) -> dict[str, int]:
    totals = {name: sum(getattr(f, name) for f in folders) for name in _COUNTS}
    totals["folders"] = len(folders)
    totals["folders_failed"] = sum(1 for f in folders if f.error is not None)
    return totals


def result_json(
    request_id: str,
    request: Request | None,
    row_error: RowError | None,
    result: RequestResult,
    *,
    csv_name: str,
    dest_folder_path: str,
) -> dict[str, Any]:
    """The result document of one request (or one rejected row), as ``result.schema.json`` says.

    Exactly one of ``request`` and ``row_error`` is given; a rejected row must have status
    ``rejected``. ``dest_folder_path`` is the destination folder as the user sees it (e.g.
    ``INBOX.historical_data.Data27092018``); empty when unknown. Passwords never appear.
    """
    if (request is None) == (row_error is None):
        raise ValueError("pass exactly one of request and row_error")
    if (row_error is not None) != (result.status is Status.REJECTED):
        raise ValueError(f"status {result.status} does not match row_error={row_error!r}")
    if request is not None:
        row, title, report_to = request.row, request.title, request.report_to
    else:
        assert row_error is not None
        row, title, report_to = row_error.row, row_error.title, row_error.report_to
    return {
        "version": RESULT_VERSION,
        "request_id": request_id,
        "csv": {"name": csv_name, "row": row},
        "jobtype": str(request.jobtype) if request else None,
        "jobtitle": utf8_safe(title),
        "report_to": report_to,
        "source": _account(request.source) if request else None,
        "destination": _account(request.dest) if request else None,
        "destination_folder": dest_folder_path or None,
        "date_range": _date_range(request.dates) if request else None,
        "status": str(result.status),
        "started": iso_time(result.started),
        "finished": iso_time(result.finished),
        "folders": [_folder(f) for f in result.folders],
        "totals": _totals(result.folders),
        "failures": [_failure(f) for f in result.failures],
        "error": utf8_safe(result.error) if result.error is not None else None,
        "rejection": (
            {"field": row_error.field, "message": utf8_safe(row_error.message)}
            if row_error
            else None
        ),
        "warnings": [utf8_safe(w) for w in result.warnings],
        "skipped_folders": [
            {"folder": utf8_safe(folder), "reason": reason} for folder, reason in result.skipped
        ],
    }
