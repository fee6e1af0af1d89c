"""Rendering of request outcomes: the result JSON, the per-CSV summary, the report mail.

Owns: the shape of ``outbox/<request_id>.json`` (described exactly by ``result.schema.json``)
and of ``outbox/<csv name>.summary.json``. The mail itself is built in ``report_mail`` and the
listing attachment in ``listing``; both are re-exported here so callers import one module.
Must not: do I/O (the outbox module writes files), read the clock (callers pass ``now``), or
ever put a password in its output — accounts are rendered field by field, never as a whole.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
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
from legacyflo_daemon.report.mail import build_mail
from legacyflo_daemon.request.dates import describe
from legacyflo_daemon.transfer.recorder import ListingEntry

__all__ = [
    "RESULT_VERSION",
    "ListingEntry",
    "build_mail",
    "iso_time",
    "result_json",
    "summary_json",
    "utf8_safe",
]

RESULT_VERSION = 1

_COUNTS = ("in_range", "copied", "already_present", "failed", "bytes", "deleted_dropped")


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
    return out


def _failure(failure: MessageFailure) -> dict[str, Any]:
    return {
        "folder": utf8_safe(failure.folder),
        "uid": failure.uid,
        "date": failure.date,
        "subject": utf8_safe(failure.subject),
        "reason": utf8_safe(failure.reason),
    }


def _totals(folders: tuple[FolderResult, ...]) -> dict[str, int]:
    totals = {name: sum(getattr(f, name) for f in folders) for name in _COUNTS}
    totals["folders"] = len(folders)
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
    }


def summary_json(
    csv_name: str,
    rows: Iterable[tuple[Request | RowError, RequestResult | None]],
    *,
    warnings: Iterable[str] = (),
) -> dict[str, Any]:
    """The per-CSV summary: one entry per row, in row order, plus counts per outcome.

    Each item pairs a row (a ``Request`` or a ``RowError``) with its result, or ``None`` when no
    result exists (a rejected row that got no request id; a request not finished yet, shown as
    its status ``queued``). ``outcome`` is the result status, or ``rejected`` with ``field`` and
    ``reason`` for a rejected row; ``reason`` of a failed request is its error.
    """
    entries: list[dict[str, Any]] = []
    for item, result in rows:
        entry: dict[str, Any] = {
            "row": item.row,
            "request_id": result.request_id if result else None,
            "jobtitle": utf8_safe(item.title),
        }
        if isinstance(item, RowError):
            entry |= {
                "outcome": str(Status.REJECTED),
                "field": item.field,
                "reason": utf8_safe(item.message),
            }
        else:
            status = result.status if result else Status.QUEUED
            error = result.error if result else None
            entry |= {
                "outcome": str(status),
                "field": None,
                "reason": utf8_safe(error) if error is not None else None,
            }
        entries.append(entry)
    entries.sort(key=lambda e: int(e["row"]))
    counts = {str(s): 0 for s in Status}
    for entry in entries:
        counts[entry["outcome"]] += 1
    return {
        "version": RESULT_VERSION,
        "csv": csv_name,
        "rows": entries,
        "counts": counts,
        "warnings": [utf8_safe(w) for w in warnings],
    }
