"""The state store: an embedded SQLite file, the only writer of request status.

Owns: claimed CSV files (with their crash counts), requests and their status, the passwords of
unfinished requests, per-folder copy checkpoints, per-message failures and live progress. Kept
behind this one class so that a shared database can later replace SQLite without touching the
callers.

Secrets: a request's passwords are stored only while it is queued or running and are erased
when it finishes. ``secure_delete`` makes SQLite overwrite freed content, and the WAL is
checkpointed and truncated after every erasure, so no copy of a password survives in the
database or its WAL once the requests that used it are finished.

Must not: do network I/O or know spool paths. Calls are short synchronous transactions (a few
milliseconds); the daemon calls them from the event loop.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from legacyflo_daemon.errors import StateError
from legacyflo_daemon.model import MessageFailure, Request, Status
from legacyflo_daemon.state.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    CsvRecord,
    FolderCheckpoint,
    RequestRow,
    iso,
    request_from_json,
    request_to_json,
)

__all__ = ["CsvRecord", "FolderCheckpoint", "RequestRow", "StateStore", "request_to_json"]


class StateStore:
    """One SQLite database. Not thread-safe: use it from the event loop thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA secure_delete = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row["value"]) != SCHEMA_VERSION:
                raise StateError(
                    f"{path}: state schema version {row['value']}, this daemon knows "
                    f"{SCHEMA_VERSION}; finish the running requests with the old version first"
                )
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the state store: {exc}") from exc
        with suppress(OSError):
            path.chmod(0o600)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc

    # -- CSV files ---------------------------------------------------------------------------

    def add_csv(
        self,
        name: str,
        original: str,
        now: dt.datetime,
        good: list[tuple[str, Request]] | None = None,
        rejected: list[tuple[str, int, str, dict[str, Any]]] | None = None,
    ) -> int:
        """Record a claimed CSV and its rows in ONE transaction (a crash leaves all or nothing).

        ``good``: (request_id, request) queued with their passwords; ``rejected``: (request_id,
        row, title, row_error_json) recorded as ``rejected`` at once.
        """
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO csv_files(name, original, claimed_at) VALUES (?, ?, ?)",
                (name, original, iso(now)),
            )
            assert cur.lastrowid is not None
            self._insert_requests(db, cur.lastrowid, good or [], rejected or [], now)
            return cur.lastrowid

    def csv_by_name(self, name: str) -> CsvRecord | None:
        """The unfinished record for processing/``name``, if any."""
        row = self._db.execute(
            "SELECT * FROM csv_files WHERE name = ? AND finished_at IS NULL", (name,)
        ).fetchone()
        return None if row is None else self._csv(row)

    def unfinished_csvs(self) -> list[CsvRecord]:
        rows = self._db.execute(
            "SELECT * FROM csv_files WHERE finished_at IS NULL ORDER BY id"
        ).fetchall()
        return [self._csv(r) for r in rows]

    def csv(self, csv_id: int) -> CsvRecord:
        row = self._db.execute("SELECT * FROM csv_files WHERE id = ?", (csv_id,)).fetchone()
        if row is None:
            raise StateError(f"no CSV record {csv_id}")
        return self._csv(row)

    def record_crash(self, csv_id: int) -> int:
        """Count one more daemon crash while ``csv_id`` was being processed; returns the count."""
        with self._tx() as db:
            db.execute("UPDATE csv_files SET crashes = crashes + 1 WHERE id = ?", (csv_id,))
        return self.csv(csv_id).crashes

    def finish_csv(self, csv_id: int, summary: dict[str, Any], now: dt.datetime) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE csv_files SET finished_at = ?, summary = ? WHERE id = ?",
                (iso(now), json.dumps(summary, sort_keys=True), csv_id),
            )

    @staticmethod
    def _csv(row: sqlite3.Row) -> CsvRecord:
        return CsvRecord(
            row["id"], row["name"], row["original"], row["crashes"], row["finished_at"] is not None
        )

    # -- requests ----------------------------------------------------------------------------

    @staticmethod
    def _insert_requests(
        db: sqlite3.Connection,
        csv_id: int,
        good: list[tuple[str, Request]],
        rejected: list[tuple[str, int, str, dict[str, Any]]],
        now: dt.datetime,
    ) -> None:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM requests").fetchone()[0]
        for rid, req in good:
            seq += 1
            secrets = json.dumps([req.dest.password.reveal(), req.source.password.reveal()])
            db.execute(
                "INSERT INTO requests(id, csv_id, row, seq, status, title, request, secrets,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rid,
                    csv_id,
                    req.row,
                    seq,
                    Status.QUEUED.value,
                    req.title,
                    request_to_json(req),
                    secrets,
                    iso(now),
                ),
            )
        for rid, row, title, err in rejected:
            seq += 1
            db.execute(
                "INSERT INTO requests(id, csv_id, row, seq, status, title, row_error,"
                " created_at, finished_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rid,
                    csv_id,
                    row,
                    seq,
                    Status.REJECTED.value,
                    title,
                    json.dumps(err),
                    iso(now),
                    iso(now),
                    err.get("message"),
                ),
            )

    def requeue_running(self) -> int:
        """After a restart: every ``running`` request goes back to ``queued``. Returns the count."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE requests SET status = ? WHERE status = ?",
                (Status.QUEUED.value, Status.RUNNING.value),
            )
            return cur.rowcount

    def queued(self) -> list[RequestRow]:
        """Queued requests in FIFO order (across CSVs)."""
        rows = self._db.execute(
            "SELECT * FROM requests WHERE status = ? ORDER BY seq", (Status.QUEUED.value,)
        ).fetchall()
        return [self._req(r) for r in rows]

    def requests(self, csv_id: int | None = None) -> list[RequestRow]:
        if csv_id is None:
            rows = self._db.execute("SELECT * FROM requests ORDER BY seq").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM requests WHERE csv_id = ? ORDER BY row, seq", (csv_id,)
            ).fetchall()
        return [self._req(r) for r in rows]

    def request_row(self, request_id: str) -> RequestRow:
        row = self._db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise StateError(f"unknown request {request_id}")
        return self._req(row)

    def load_request(self, request_id: str) -> Request:
        """The full request with its passwords; only for queued/running requests."""
        row = self._db.execute(
            "SELECT request, secrets FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None or row["request"] is None or row["secrets"] is None:
            raise StateError(f"request {request_id} has no stored credentials (finished?)")
        dest_pw, source_pw = json.loads(row["secrets"])
        return request_from_json(row["request"], dest_pw, source_pw)

    def row_error(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT row_error FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        return None if row is None or row["row_error"] is None else dict(json.loads(row[0]))

    def mark_running(self, request_id: str, now: dt.datetime) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET status = ?, started_at = COALESCE(started_at, ?) WHERE id = ?",
                (Status.RUNNING.value, iso(now), request_id),
            )

    def finish_request(
        self,
        request_id: str,
        status: Status,
        result: dict[str, Any],
        now: dt.datetime,
        error: str | None = None,
    ) -> None:
        """Record the final status and result, and erase the request's passwords for good."""
        if not status.finished:
            raise ValueError(f"not a final status: {status}")
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET status = ?, finished_at = ?, result = ?, error = ?,"
                " secrets = NULL WHERE id = ?",
                (status.value, iso(now), json.dumps(result, sort_keys=True), error, request_id),
            )
        self._purge_freed_pages()

    def result(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT result FROM requests WHERE id = ?", (request_id,)).fetchone()
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

    def _purge_freed_pages(self) -> None:
        # The WAL still holds the page images written before the erasure; fold them into the
        # main file (where secure_delete zeroed the old content) and truncate the WAL to zero.
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc

    @staticmethod
    def _req(r: sqlite3.Row) -> RequestRow:
        return RequestRow(
            id=r["id"],
            csv_id=r["csv_id"],
            row=r["row"],
            status=Status(r["status"]),
            title=r["title"],
            created_at=r["created_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            error=r["error"],
            msgs_done=r["msgs_done"],
            msgs_total=r["msgs_total"],
            bytes_done=r["bytes_done"],
            bytes_total=r["bytes_total"],
            progress_at=r["progress_at"],
        )

    # -- checkpoints, progress and failures ----------------------------------------------------

    def set_progress(
        self, request_id: str, msgs: tuple[int, int], nbytes: tuple[int, int], now: dt.datetime
    ) -> None:
        """Live progress: (done, total) messages and bytes."""
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET msgs_done = ?, msgs_total = ?, bytes_done = ?,"
                " bytes_total = ?, progress_at = ? WHERE id = ?",
                (msgs[0], msgs[1], nbytes[0], nbytes[1], iso(now), request_id),
            )

    def folder_checkpoints(self, request_id: str) -> dict[str, FolderCheckpoint]:
        rows = self._db.execute(
            "SELECT * FROM folders WHERE request_id = ?", (request_id,)
        ).fetchall()
        return {
            r["source"]: FolderCheckpoint(
                r["source"], r["uidvalidity"], bool(r["done"]), dict(json.loads(r["counts"]))
            )
            for r in rows
        }

    def save_folder(self, request_id: str, cp: FolderCheckpoint) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO folders(request_id, source, uidvalidity, done, counts)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(request_id, source) DO UPDATE SET"
                " uidvalidity = excluded.uidvalidity, done = excluded.done,"
                " counts = excluded.counts",
                (
                    request_id,
                    cp.source,
                    cp.uidvalidity,
                    int(cp.done),
                    json.dumps(cp.counts, sort_keys=True),
                ),
            )

    def add_failure(self, request_id: str, f: MessageFailure) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO failures(request_id, folder, uid, date, subject, reason)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, f.folder, f.uid, f.date, f.subject, f.reason),
            )

    def clear_failures(self, request_id: str, folder: str) -> None:
        """Forget a folder's failures before it is copied again (they are re-detected)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM failures WHERE request_id = ? AND folder = ?", (request_id, folder)
            )

    def failures(self, request_id: str) -> list[MessageFailure]:
        rows = self._db.execute(
            "SELECT * FROM failures WHERE request_id = ? ORDER BY folder, uid", (request_id,)
        ).fetchall()
        return [
            MessageFailure(r["folder"], r["uid"], r["date"], r["subject"], r["reason"])
            for r in rows
        ]
