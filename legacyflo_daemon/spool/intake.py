"""From a claimed CSV in ``processing/`` to queued requests, and back out to ``done/``.

Owns: request ids, turning a parsed file into state-store rows (all or nothing, see
``StateStore.add_csv``), and retiring a CSV once every one of its requests is finished (summary
first, then the redacted copy to ``done/``, then the state record — each step idempotent, so a
crash between them is repaired by repeating them at the next start).

``take`` and ``complete_if_finished`` are blocking (parsing a 50,000-row file takes seconds):
the daemon runs them in a worker thread.

Must not: copy mail or render reports (rejected rows are handed back to the caller, which
writes their results).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from legacyflo_daemon.errors import CsvFileError, SpoolError, StateError
from legacyflo_daemon.model import RowError, Status
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.request import csvfile
from legacyflo_daemon.runtime import files
from legacyflo_daemon.runtime.bulk import cooperative
from legacyflo_daemon.spool.directory import Spool, hard_link_warning, hard_links
from legacyflo_daemon.state.store import StateStore

log = structlog.get_logger("legacyflo_daemon.spool.intake")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def new_request_id(csv_name: str, row: int) -> str:
    """``<csv stem>-r<row>-<random>``: readable, unique across re-drops of the same file."""
    stem = _UNSAFE.sub("_", Path(csv_name).stem).strip("_")[:40] or "csv"
    return f"{stem}-r{row}-{secrets.token_hex(3)}"


def row_error_json(e: RowError) -> dict[str, Any]:
    return {
        "row": e.row,
        "field": e.field,
        "message": e.message,
        "title": e.title,
        "report_to": e.report_to,
    }


def row_error_from_json(d: dict[str, Any]) -> RowError:
    return RowError(d["row"], d["field"], d["message"], d.get("title", ""), d.get("report_to"))


@dataclass(frozen=True, slots=True)
class Taken:
    """A CSV recorded in the state store. ``rejected``: (request_id, RowError) to report now."""

    csv_id: int
    queued: int
    rejected: tuple[tuple[str, RowError], ...]
    warnings: tuple[str, ...]


def take(
    path: Path, spool: Spool, state: StateStore, now: dt.datetime, csv_id: int | None = None
) -> Taken | None:
    """Parse ``processing/<name>`` and record its rows; None if the file was rejected as a whole
    (it is then in ``failed/`` with an ``.error.txt``).

    The file is recorded (``StateStore.begin_csv``) *before* it is parsed, so that a crash
    while parsing or recording counts against it at the next start (``daemon.recovery``);
    ``csv_id`` is that record when recovery takes the file again. A file rejected as a whole,
    or an exception (a bug, set aside by the caller), forgets the record again."""
    if csv_id is None:
        csv_id = state.begin_csv(path.name, path.name, now)
    try:
        try:
            csvfile.check_size(path.stat().st_size, spool.limits)  # before reading it whole
            data = files.read_regular(path)
            parsed = csvfile.parse(data, spool.limits)
        except CsvFileError as exc:
            spool.reject_unusable(path, f"{path.name}: {exc}")
            log.warning("csv_rejected", file=path.name, error=str(exc))
            state.discard_csv(csv_id)
            return None
        except OSError as exc:
            spool.reject_unusable(path, f"{path.name}: cannot be read: {exc.strerror}")
            log.warning("csv_rejected", file=path.name, error=exc.strerror)
            state.discard_csv(csv_id)
            return None
        good = [(new_request_id(path.name, r.row), r) for r in parsed.requests]
        bad = [(new_request_id(path.name, e.row), e) for e in parsed.errors]
        state.add_csv(
            path.name,
            path.name,
            now,
            good,
            [(rid, e.row, e.title, row_error_json(e)) for rid, e in bad],
            csv_id=csv_id,
        )
    except Exception:
        # A bug (or a full disk): the caller sets the file aside; the record must not stay
        # behind as a crash to count. The state store's own failure stops the daemon anyway.
        with contextlib.suppress(StateError):
            state.discard_csv(csv_id)
        raise
    log.info("csv_taken", file=path.name, csv_id=csv_id, queued=len(good), rejected=len(bad),
             warnings=list(parsed.warnings), encoding=parsed.encoding)  # fmt: skip
    for e in parsed.errors:
        log.warning("row_rejected", file=path.name, row=e.row, field=e.field, error=e.message)
    return Taken(csv_id, len(good), tuple(bad), parsed.warnings)


def summary(state: StateStore, csv_id: int) -> dict[str, Any]:
    """One line per row of the CSV: row, request id, outcome (and why, when not succeeded)."""
    rows = []
    for r in cooperative(state.requests(csv_id)):
        entry: dict[str, Any] = {"row": r.row, "request_id": r.id, "outcome": r.status.value}
        if r.status is Status.REJECTED:
            err = state.row_error(r.id) or {}
            entry["field"] = err.get("field")
            entry["reason"] = err.get("message")
        elif r.error:
            entry["reason"] = r.error
        rows.append(entry)
    counts: dict[str, int] = {}
    for entry in rows:
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    return {"csv": state.csv(csv_id).name, "rows": rows, "counts": counts}


def complete_if_finished(
    csv_id: int, spool: Spool, state: StateStore, outbox: Outbox, now: dt.datetime
) -> bool:
    """If every request of ``csv_id`` is finished: write the summary, move the CSV to ``done/``
    (redacted), and close its record. True when the CSV is (now) complete."""
    record = state.csv(csv_id)
    if record.finished:
        return True
    if state.unfinished_count(csv_id):
        return False
    doc = summary(state, csv_id)
    path = spool.processing / record.name
    links = hard_links(path)
    if links > 1:
        doc["warnings"] = [hard_link_warning(record.name, links)]
    outbox.write_summary(record.name, doc)
    if path.exists():
        try:
            spool.finish(path, ok=True)
        except SpoolError as exc:
            log.error("csv_finish_failed", file=record.name, error=str(exc))
            return False
    state.finish_csv(csv_id, doc, now)
    log.info("csv_finished", file=record.name, counts=doc["counts"])
    return True
