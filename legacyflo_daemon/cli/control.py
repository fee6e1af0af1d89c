"""``legacyflo-daemon cancel`` and ``retry``: steering a migration while it runs.

Owns: turning an administrator's target into state-store commands (``cancel``) and a batch's
original CSV into a new drop holding only the rows that did not succeed (``retry``).

- ``cancel <request-id>|<csv name>`` leaves one ``cancel`` command per unfinished request in the
  state store; the running daemon applies it within a second: a running request stops at its
  next batch boundary (nothing half-written) and finishes ``cancelled`` with what it copied; a
  queued one finishes ``cancelled`` at once. With the daemon down, it applies them at its next
  start. The daemon is the only writer of request status: this module only leaves commands.
- ``retry FILE.csv``: passwords are erased from the state when a request ends, so a retry needs
  the administrator's CSV again. Every row whose latest request (same source account,
  destination account and folder, any CSV) succeeded is left out; the others are written, with
  the header, to a new file dropped into ``incoming/`` (``<name>-retry.csv``) like ``submit``.
  Succeeded rows are neither copied nor mailed again.

Must not: change a request's status, or write anything when there is nothing to do.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sys
from pathlib import Path

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import CsvFileError, StateError
from legacyflo_daemon.model import Status
from legacyflo_daemon.request import csvfile
from legacyflo_daemon.runtime import files
from legacyflo_daemon.spool.directory import Spool
from legacyflo_daemon.state.schema import request_key
from legacyflo_daemon.state.store import StateStore, open_store

PROG = "legacyflo-daemon"


class ControlError(Exception):
    """The command cannot do its job; the message is one line saying what to do."""


def _store(cfg: Config) -> StateStore:
    path = cfg.daemon.state_path
    if cfg.state.url is None and not path.exists():
        raise ControlError(f"no state store at {path}: the daemon has not run with this config yet")
    try:
        return open_store(cfg)
    except StateError as exc:
        raise ControlError(str(exc)) from None


def cancel(cfg: Config, target: str, now: dt.datetime | None = None) -> str:
    """Leave cancel commands for what ``target`` names; returns the message for the admin."""
    store = _store(cfg)
    try:
        ids = store.unfinished_of(target)
        if ids is None:
            raise ControlError(f"no request and no CSV named {target!r} (see: {PROG} status)")
        if not ids:
            return f"nothing to cancel: {target} has finished"
        when = now or dt.datetime.now(dt.UTC)
        for rid in ids:
            store.add_command("cancel", rid, when)
        beat = store.heartbeat() or {}
    finally:
        store.close()
    later = (
        "the daemon stops each at its next batch boundary and writes a 'cancelled' result"
        if beat.get("state") == "running"
        else "the daemon is not running: it cancels them when it starts"
    )
    return f"cancel requested for {len(ids)} request(s) of {target}; {later}"


def _rows_by_line(data: bytes, encoding: str) -> tuple[list[str], dict[int, list[str]]]:
    """The header and each data row by the line it starts on (as ``csvfile`` numbers rows)."""
    reader = csv.reader(io.StringIO(data.decode(encoding, "replace"), newline=""))
    header = next(reader, [])
    rows: dict[int, list[str]] = {}
    start = reader.line_num + 1
    for cells in reader:
        if any(c.strip() for c in cells):
            rows[start] = cells
        start = reader.line_num + 1
    return header, rows


def retry_csv(
    data: bytes, store: StateStore, limits: csvfile.Limits = csvfile.DEFAULT_LIMITS
) -> tuple[bytes | None, int, int]:
    """``data`` with only its rows that did not succeed: (new file or None when nothing is
    left, rows kept, rows left out because they succeeded). Rows the reader rejects are kept:
    the daemon rejects them again, each with its reason, as for any drop."""
    try:
        parsed = csvfile.parse(data, limits)
    except CsvFileError as exc:
        raise ControlError(f"rejected as a whole: {exc}") from None
    latest = store.latest_by_key()
    succeeded = {
        req.row
        for req in parsed.requests
        if (last := latest.get(request_key(req))) is not None and last.status is Status.SUCCEEDED
    }
    header, rows = _rows_by_line(data, parsed.encoding)
    kept = [cells for line, cells in sorted(rows.items()) if line not in succeeded]
    if not kept:
        return None, 0, len(succeeded)
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(kept)
    return out.getvalue().encode("utf-8"), len(kept), len(succeeded)


def retry(cfg: Config, path: str, drop_name: str) -> str:
    """Drop the rows of ``path`` that did not succeed as ``drop_name`` into ``incoming/``."""
    try:
        data = files.read_regular(Path(path))
    except OSError as exc:
        raise ControlError(f"{path}: cannot read: {exc.strerror or exc}") from None
    store = _store(cfg)
    try:
        new, kept, done = retry_csv(data, store, csvfile.Limits.of(cfg.csv, cfg.passwordless()))
    finally:
        store.close()
    if new is None:
        return f"nothing to retry: all {done} row(s) of {path} succeeded"
    spool = Spool(cfg.daemon.spool)
    try:
        target = files.write_new(spool.incoming, drop_name, new, 0o600)
    except OSError as exc:
        raise ControlError(f"{spool.incoming}: cannot write: {exc.strerror or exc}") from None
    return f"retrying {kept} row(s) of {path} as {target} ({done} succeeded, left out)"


def main_cancel(cfg: Config, target: str) -> int:
    try:
        print(cancel(cfg, target))
    except ControlError as exc:
        print(f"{PROG} cancel: {exc}", file=sys.stderr)
        return 2
    return 0


def main_retry(cfg: Config, path: str, drop_name: str) -> int:
    try:
        print(retry(cfg, path, drop_name))
    except ControlError as exc:
        print(f"{PROG} retry: {exc}", file=sys.stderr)
        return 2
    return 0
