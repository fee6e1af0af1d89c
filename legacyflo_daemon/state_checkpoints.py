"""The state store's copy checkpoints, live progress and per-message failures (part of
``StateStore``).

A mixin of ``state.StateStore``, split out to keep each module around one concept: what a
restarted copier needs to resume a request (per source folder: UIDVALIDITY, done, counters)
and the messages that could not be copied. Must not: open the database (``StateStore`` does).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from contextlib import AbstractContextManager

from .model import MessageFailure
from .state_types import FolderCheckpoint, iso


class CheckpointsMixin:
    """Checkpoints and failures; ``_db`` and ``_tx`` come from ``StateStore``."""

    _db: sqlite3.Connection

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by StateStore

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
