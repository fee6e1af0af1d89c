"""The state store: the daemon's durable state, in an embedded SQLite file (the default) or a
shared PostgreSQL database (``[state] url``; ``state.engine`` holds what differs).

Owns: claimed CSV files (with their crash counts), requests, the passwords of unfinished
requests, per-folder copy checkpoints, per-message failures and live progress. Every query is
written once, in the SQL both engines accept; callers do not know which engine runs.
Request *status* is written only through ``apply_transition``, which only ``state.lifecycle``
calls: that module owns the transition table.

Threads: one connection, guarded by a lock, so that the few heavy operations (recording a
50,000-row CSV, reading every row of a finished CSV for its summary) can run in a worker thread
(``runtime.bulk.in_thread``) while the event loop goes on. Heavy operations work in chunks and
let go of the lock (and of the interpreter lock) between them, so a call from the event loop
never waits more than one chunk.

Atomic intake: ``add_csv`` records a CSV in several transactions, the file's record marked
``loaded = 0`` until the last one; ``queued`` never returns the rows of such a file, and
``discard_unloaded`` (at start-up) removes what a crash left half-recorded.

Secrets: a request's passwords are stored only while it is queued or running and are erased
when it finishes. ``secure_delete`` makes SQLite overwrite freed content; ``purge_freed_pages``
truncates the WAL (the daemon calls it when no request runs, and at exit), after which no copy
of a finished request's password survives in the database or its WAL.

Must not: know spool paths, or talk to anything but its database.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import StateError
from legacyflo_daemon.model import MessageFailure, Request, Status
from legacyflo_daemon.runtime.bulk import let_loop_run
from legacyflo_daemon.runtime.secrets import scrub_text
from legacyflo_daemon.state.engine import Engine, Row, SqliteEngine, Tx
from legacyflo_daemon.state.schema import (
    META,
    MIGRATIONS,
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

Held = tuple[tuple[str, str], tuple[str, str], int]  # (hosts, logins, pairs) of a request
CHUNK = 1000  # rows per transaction (or per read) of the heavy operations
UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)


class StateStore:
    """One database (``state.engine``); safe to call from the event loop and from worker
    threads."""

    def __init__(self, target: Path | Engine, *, verify: bool = False) -> None:
        """Open (or create) the store and bring its schema up to date.

        ``target``: the SQLite file's path (the default engine), or an engine
        (``PostgresEngine`` for ``[state] url``; see ``open_store``).
        ``verify``: check the database first, before anything is written (the daemon's
        start); a damaged store raises ``StateUnusable`` and is left exactly as it was."""
        self._engine: Engine = SqliteEngine(target) if isinstance(target, Path) else target
        # The SQLite file (None for a database server); ``where`` names either in messages.
        self.path: Path | None = target if isinstance(target, Path) else None
        self.where = self._engine.where
        self.shared = self._engine.shared
        self._lock = self._engine.lock
        try:
            if verify:
                self.verify()
            self._migrate()
        except BaseException as exc:
            self._engine.close()
            translated = self._engine.error(exc, "cannot open the state store")
            if translated is not None:
                raise translated from exc
            raise

    def _migrate(self) -> None:
        with self._tx() as db:
            for statement in self._engine.statements(META):
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            found = SCHEMA_VERSION if row is None else int(row[0])
            if found > SCHEMA_VERSION:
                raise StateError(
                    f"{self.where}: state schema version {found} is newer than this daemon's "
                    f"({SCHEMA_VERSION}); run the newer version, or finish its requests first"
                )
            for statement in self._engine.statements(SCHEMA):  # what is missing (IF NOT EXISTS)
                db.execute(statement)
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in self._engine.statements(";\n".join(MIGRATIONS[version]) + ";"):
                    try:
                        db.execute(statement)
                    except Exception as exc:
                        # The table was missing and has just been made whole from SCHEMA.
                        if not self._engine.is_duplicate_column(exc):
                            raise
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def verify(self) -> None:
        """Raises ``StateUnusable`` (saying what to do) when the store is damaged (SQLite's
        ``quick_check``). The daemon calls it at start, before it trusts anything the store
        says."""
        self._engine.verify()

    def close(self) -> None:
        self._engine.close()

    @contextmanager
    def exclusive(self, key: str) -> Iterator[bool]:
        """Whether this daemon, alone among those sharing the store, may do ``key`` now (True
        for the only daemon of an SQLite store). Held until the block ends, or until this
        daemon dies: PostgreSQL releases a dead connection's advisory locks."""
        mine = self._engine.try_lock(key)
        try:
            yield mine
        finally:
            if mine:
                self._engine.unlock(key)

    def _tx(self) -> AbstractContextManager[Tx]:
        return self._engine.tx()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._engine.all(sql, params)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    # -- CSV files ---------------------------------------------------------------------------

    def add_csv(
        self,
        name: str,
        original: str,
        now: dt.datetime,
        good: Sequence[tuple[str, Request]] = (),
        rejected: Sequence[tuple[str, int, str, Mapping[str, Any]]] = (),
        *,
        csv_id: int | None = None,
    ) -> int:
        """Record a claimed CSV and its rows; all or nothing, whatever happens in between.

        ``csv_id``: the record ``begin_csv`` made before parsing (else one is made here).

        ``good``: (request_id, request) queued with their passwords; ``rejected``: (request_id,
        row, title, row_error_json) recorded as ``rejected`` at once. The rows are written
        ``CHUNK`` at a time, the file's record marked not loaded until the last chunk, so a
        call from a worker thread holds the lock for one chunk at a time; a crash in between
        leaves a record that ``discard_unloaded`` removes at the next start.
        """
        csv_id = self.begin_csv(name, original, now) if csv_id is None else csv_id
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM requests").fetchone()[0]
        rows = [self._queued_row(rid, req, now) for rid, req in good]
        rows += [self._rejected_row(*rej, now) for rej in rejected]
        for start in range(0, len(rows), CHUNK):
            let_loop_run()
            with self._tx() as db:
                db.executemany(
                    "INSERT INTO requests(id, csv_id, row, seq, status, title, request, secrets,"
                    " row_error, created_at, finished_at, error)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (rid, csv_id, row, seq + start + i + 1, *rest)
                        for i, (rid, row, *rest) in enumerate(rows[start : start + CHUNK])
                    ],
                )
        with self._tx() as db:
            db.execute("UPDATE csv_files SET loaded = 1 WHERE id = ?", (csv_id,))
        return csv_id

    @staticmethod
    def _queued_row(rid: str, req: Request, now: dt.datetime) -> tuple[Any, ...]:
        secrets = json.dumps([req.dest.password.reveal(), req.source.password.reveal()])
        return (rid, req.row, Status.QUEUED.value, req.title, request_to_json(req), secrets,
                None, iso(now), None, None)  # fmt: skip

    @staticmethod
    def _rejected_row(
        rid: str, row: int, title: str, err: Mapping[str, Any], now: dt.datetime
    ) -> tuple[Any, ...]:
        return (rid, row, Status.REJECTED.value, title, None, None, json.dumps(dict(err)),
                iso(now), iso(now), err.get("message"))  # fmt: skip

    def discard_unloaded(self) -> list[str]:
        """Remove the CSV records (and their rows) whose recording a crash cut short; returns
        their file names, still in ``processing/``, to be taken again."""
        records = self._all("SELECT id, name FROM csv_files WHERE loaded = 0")
        for record in records:
            with self._tx() as db:
                db.execute("DELETE FROM requests WHERE csv_id = ?", (record["id"],))
                db.execute("DELETE FROM csv_files WHERE id = ?", (record["id"],))
        return [r["name"] for r in records]

    def csv_by_name(self, name: str) -> CsvRecord | None:
        """The unfinished record for processing/``name``, if any."""
        row = self._one("SELECT * FROM csv_files WHERE name = ? AND finished_at IS NULL", (name,))
        return None if row is None else self._csv(row)

    def unfinished_csvs(self) -> list[CsvRecord]:
        rows = self._all("SELECT * FROM csv_files WHERE finished_at IS NULL ORDER BY id")
        return [self._csv(r) for r in rows]

    def csv(self, csv_id: int) -> CsvRecord:
        row = self._one("SELECT * FROM csv_files WHERE id = ?", (csv_id,))
        if row is None:
            raise StateError(f"no CSV record {csv_id}")
        return self._csv(row)

    def record_crash(self, csv_id: int) -> int:
        """Count one more daemon crash while ``csv_id`` was being processed; returns the count.

        Only a crash *without progress* counts: when the CSV's ``progress_mark`` grew since the
        last crash was counted, the count starts again at 0 (the work goes forward, the crashes
        are not the CSV's doing), and the new mark is kept. So ``max_crashes`` poisons a CSV
        that keeps taking the daemon down without getting anywhere."""
        mark = self.progress_mark(csv_id)
        with self._tx() as db:
            db.execute(
                "UPDATE csv_files SET crashes = CASE WHEN ? > crash_mark THEN 0"
                " ELSE crashes + 1 END,"
                " crash_mark = CASE WHEN ? > crash_mark THEN ? ELSE crash_mark END WHERE id = ?",
                (mark, mark, mark, csv_id),
            )
        return self.csv(csv_id).crashes

    def progress_mark(self, csv_id: int) -> int:
        """A number that grows whenever the CSV's work goes forward, across restarts: its
        finished requests, plus per folder checkpoint the messages found on the destination
        (copied + already present, both cumulative across runs) and whether it is done."""
        copied = self._engine.json_int("f.counts", "copied")
        present = self._engine.json_int("f.counts", "already_present")
        # The engine's JSON spelling is the only text put in: no input reaches the SQL.
        sql = (
            "SELECT (SELECT COUNT(*) FROM requests WHERE csv_id = ? AND status NOT IN (?, ?))"  # noqa: S608
            f" + (SELECT COALESCE(SUM(f.done + {copied} + {present}), 0)"
            "   FROM folders f JOIN requests r ON r.id = f.request_id WHERE r.csv_id = ?)"
        )
        row = self._one(
            sql,
            (csv_id, *UNFINISHED, csv_id),
        )
        return int(row[0]) if row is not None else 0

    def begin_csv(self, name: str, original: str, now: dt.datetime) -> int:
        """Record a claimed CSV *before* it is parsed (``loaded = 0``): a crash while it is
        parsed or recorded then counts against it (``unloaded_csvs`` at the next start), so a
        file that crashes the parser is set aside after ``max_crashes`` instead of looping."""
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO csv_files(name, original, claimed_at, loaded) VALUES (?, ?, ?, 0)"
                " RETURNING id",
                (name, original, iso(now)),
            ).fetchone()
            return int(row[0])

    def unloaded_csvs(self) -> list[CsvRecord]:
        """Records a crash left while their file was parsed or recorded (``begin_csv``)."""
        rows = self._all("SELECT * FROM csv_files WHERE loaded = 0 ORDER BY id")
        return [self._csv(r) for r in rows]

    def clear_rows(self, csv_id: int) -> None:
        """Remove the rows an interrupted recording of ``csv_id`` left (the record stays, with
        its crash count, for the file to be recorded again)."""
        with self._tx() as db:
            db.execute("DELETE FROM requests WHERE csv_id = ?", (csv_id,))

    def discard_csv(self, csv_id: int) -> None:
        """Forget a record that never finished loading, with its rows (its file was rejected
        as a whole or set aside)."""
        with self._tx() as db:
            db.execute("DELETE FROM requests WHERE csv_id = ?", (csv_id,))
            db.execute("DELETE FROM csv_files WHERE id = ? AND loaded = 0", (csv_id,))

    def finish_csv(self, csv_id: int, summary: Mapping[str, Any], now: dt.datetime) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE csv_files SET finished_at = ?, summary = ? WHERE id = ?",
                (iso(now), json.dumps(summary, sort_keys=True), csv_id),
            )

    def unfinished_count(self, csv_id: int) -> int:
        """How many requests of ``csv_id`` are still queued or running (an index lookup)."""
        row = self._one(
            "SELECT COUNT(*) FROM requests WHERE csv_id = ? AND status IN (?, ?)",
            (csv_id, *UNFINISHED),
        )
        return int(row[0]) if row is not None else 0

    @staticmethod
    def _csv(row: Row) -> CsvRecord:
        return CsvRecord(
            row["id"], row["name"], row["original"], row["crashes"], row["finished_at"] is not None
        )

    # -- requests: reads ---------------------------------------------------------------------

    def queued(self, per_csv: int | None = None) -> list[RequestRow]:
        """Queued requests in FIFO order (across CSVs), at most ``per_csv`` of each CSV (an
        index range per CSV, however long the queue); never those of a CSV whose recording is
        not complete."""
        if per_csv is None:
            rows = self._all(
                "SELECT r.* FROM requests r JOIN csv_files c ON c.id = r.csv_id"
                " WHERE r.status = ? AND c.loaded = 1 ORDER BY r.seq",
                (Status.QUEUED.value,),
            )
            return [self._req(r) for r in rows]
        csv_ids = self._all(
            "SELECT id FROM csv_files WHERE finished_at IS NULL AND loaded = 1 ORDER BY id"
        )
        out: list[RequestRow] = []
        for csv in csv_ids:
            rows = self._all(
                "SELECT * FROM requests WHERE csv_id = ? AND status = ? ORDER BY seq LIMIT ?",
                (csv["id"], Status.QUEUED.value, per_csv),
            )
            out += [self._req(r) for r in rows]
        out.sort(key=lambda r: r.seq)
        return out

    def unfinished_counts(self) -> dict[Status, int]:
        """How many requests are queued and running (an index lookup)."""
        rows = self._all(
            "SELECT status, COUNT(*) FROM requests WHERE status IN (?, ?) GROUP BY status",
            UNFINISHED,
        )
        counts = dict.fromkeys((Status.QUEUED, Status.RUNNING), 0)
        counts.update({Status(r[0]): int(r[1]) for r in rows})
        return counts

    def with_status(self, status: Status) -> list[RequestRow]:
        rows = self._all("SELECT * FROM requests WHERE status = ? ORDER BY seq", (status.value,))
        return [self._req(r) for r in rows]

    def requests(self, csv_id: int | None = None) -> list[RequestRow]:
        """Every request (of ``csv_id``). For a large CSV call it from a worker thread: it
        reads ``CHUNK`` rows at a time, letting go of the lock in between."""
        if csv_id is None:
            return [self._req(r) for r in self._all("SELECT * FROM requests ORDER BY seq")]
        out: list[RequestRow] = []
        last: tuple[int, int] = (-1, -1)
        while True:
            rows = self._all(
                "SELECT * FROM requests WHERE csv_id = ? AND (row, seq) > (?, ?)"
                " ORDER BY row, seq LIMIT ?",
                (csv_id, *last, CHUNK),
            )
            out += [self._req(r) for r in rows]
            if len(rows) < CHUNK:
                return out
            last = (rows[-1]["row"], rows[-1]["seq"])
            let_loop_run()

    def rejected_without_result(self, csv_id: int) -> list[str]:
        """Ids of the rejected rows of ``csv_id`` whose result was never written."""
        rows = self._all(
            "SELECT id FROM requests WHERE csv_id = ? AND status = ? AND result IS NULL"
            " ORDER BY row, seq",
            (csv_id, Status.REJECTED.value),
        )
        return [r[0] for r in rows]

    def request_row(self, request_id: str) -> RequestRow:
        row = self._one("SELECT * FROM requests WHERE id = ?", (request_id,))
        if row is None:
            raise StateError(f"unknown request {request_id}")
        return self._req(row)

    def status_of(self, request_id: str) -> Status | None:
        row = self._one("SELECT status FROM requests WHERE id = ?", (request_id,))
        return None if row is None else Status(row[0])

    def load_request(self, request_id: str) -> Request:
        """The full request with its passwords; only for queued/running requests."""
        row = self._one("SELECT request, secrets FROM requests WHERE id = ?", (request_id,))
        if row is None or row["request"] is None or row["secrets"] is None:
            raise StateError(f"request {request_id} has no stored credentials (finished?)")
        dest_pw, source_pw = json.loads(row["secrets"])
        return request_from_json(row["request"], dest_pw, source_pw)

    def row_error(self, request_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT row_error FROM requests WHERE id = ?", (request_id,))
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

    def result(self, request_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT result FROM requests WHERE id = ?", (request_id,))
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

    # -- requests: status (only state.lifecycle calls these) ------------------------------

    def apply_transition(
        self,
        request_id: str,
        expected: Collection[Status],
        new: Status,
        sets: Mapping[str, Any],
        *,
        without_result: bool = False,
        node: str | None = None,
        skip_locked: bool = False,
    ) -> bool:
        """``UPDATE … WHERE status IN expected``: True when the one row changed.

        ``sets``: other columns to write (names from this module's callers, never input);
        ``without_result``: also require that no result is recorded yet. A transition that
        erases the passwords (``secrets = None`` in ``sets``) is what makes a request's
        credentials unrecoverable from the main database file (``secure_delete``).

        A shared state (several daemons): ``node`` also requires that a *running* request is
        that node's (a node that lost its lease to another never requeues or finishes what the
        other now runs); ``skip_locked`` first locks the row with ``SELECT … FOR UPDATE SKIP
        LOCKED`` and gives up (False) at once when another node's transaction holds it, so
        that nodes claiming from one queue never wait for each other. SQLite has one writer
        (``BEGIN IMMEDIATE``): there the row needs no lock of its own."""
        columns = "".join(f", {name} = ?" for name in sets)
        marks = ", ".join("?" for _ in expected)
        extra = " AND result IS NULL" if without_result else ""
        owner: tuple[Any, ...] = ()
        if node is not None:
            extra += " AND (status <> ? OR node = ?)"
            owner = (Status.RUNNING.value, node)
        with self._tx() as db:
            if skip_locked and self.shared:
                found = db.execute(
                    f"SELECT id FROM requests WHERE id = ? AND status IN ({marks})"  # noqa: S608
                    " FOR UPDATE SKIP LOCKED",
                    (request_id, *(s.value for s in expected)),
                ).fetchone()
                if found is None:
                    return False
            cur = db.execute(
                f"UPDATE requests SET status = ?{columns}"  # noqa: S608 - column names are ours
                f" WHERE id = ? AND status IN ({marks}){extra}",
                (new.value, *sets.values(), request_id, *(s.value for s in expected), *owner),
            )
            return cur.rowcount == 1

    def apply_bulk_transition(
        self,
        expected: Status,
        new: Status,
        *,
        node: str | None = None,
        lease_before: int | None = None,
    ) -> list[tuple[str, int]]:
        """Requests in ``expected`` to ``new``, their (id, csv id): every one (the restart of
        the only daemon), or, in a shared state, those of ``node`` and those whose lease ended
        before ``lease_before`` (epoch seconds; a node that died). Their node is cleared. One
        statement: of several nodes taking over at once, each request goes to one."""
        where = "status = ?"
        params: list[Any] = [expected.value]
        owners = []
        if node is not None:
            owners.append("node = ?")
            params.append(node)
        if lease_before is not None:
            owners.append("lease_until < ?")
            params.append(lease_before)
        if owners:
            where += f" AND ({' OR '.join(owners)})"
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE requests SET status = ?, node = NULL WHERE {where}"  # noqa: S608
                " RETURNING id, csv_id",
                (new.value, *params),
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def renew_leases(self, node: str, until: int, ids: Collection[str]) -> set[str]:
        """Extend to ``until`` (epoch seconds) the leases of ``ids`` that ``node`` still holds;
        the ids renewed (one missing is no longer this node's). A request left running with
        no task behind it (its result could not be written) is not renewed: its lease runs
        out and another node runs it again."""
        if not ids:
            return set()
        marks = ", ".join("?" for _ in ids)
        with self._tx() as db:
            rows = db.execute(
                "UPDATE requests SET lease_until = ?"  # noqa: S608 - only placeholders
                f" WHERE status = ? AND node = ? AND id IN ({marks}) RETURNING id",
                (until, Status.RUNNING.value, node, *ids),
            ).fetchall()
        return {str(r[0]) for r in rows}

    def set_node(self, name: str, doc: Mapping[str, Any], seen_at: int) -> None:
        """A cluster node's heartbeat (``status`` lists the nodes and which are alive)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO nodes(name, doc, seen_at) VALUES (?, ?, ?) ON CONFLICT(name) DO"
                " UPDATE SET doc = excluded.doc, seen_at = excluded.seen_at",
                (name, json.dumps(dict(doc), sort_keys=True), seen_at),
            )

    def connections_elsewhere(self, node: str) -> list[Held]:
        """The IMAP connections the requests running on other nodes hold: per request, its
        (source, destination) servers and logins as ``daemon.pool.slot_for`` names them, and
        its connection pairs."""
        rows = self._all(
            "SELECT request, pairs FROM requests WHERE status = ? AND request IS NOT NULL"
            " AND (node IS NULL OR node <> ?)",
            (Status.RUNNING.value, node),
        )
        out = []
        for r in rows:
            d = json.loads(r[0])
            src, dst = d["source"], d["dest"]
            hosts = (str(src["server"]).lower(), str(dst["server"]).lower())
            logins = (
                f"{src['userid']}@{src['server']}".lower(),
                f"{dst['userid']}@{dst['server']}".lower(),
            )
            out.append((hosts, logins, int(r[1])))
        return out

    def set_pairs(self, request_id: str, pairs: int) -> None:
        """The connection pairs ``request_id`` holds now (the other nodes count them)."""
        with self._tx() as db:
            db.execute("UPDATE requests SET pairs = ? WHERE id = ?", (pairs, request_id))

    def learn_allowance(self, key: str, limit: int, now: int) -> None:
        """A server's refusal lowered ``key`` (a host, or "user@host") to ``limit``
        connections; the lowest learnt stands, for every node."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO allowances(key, lim, learnt_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET learnt_at = excluded.learnt_at,"
                " lim = CASE WHEN excluded.lim < allowances.lim THEN excluded.lim"
                " ELSE allowances.lim END",
                (key, limit, now),
            )

    def allowances(self, since: int) -> dict[str, int]:
        """key -> connections allowed, of the allowances learnt at ``since`` or later."""
        rows = self._all("SELECT key, lim FROM allowances WHERE learnt_at >= ?", (since,))
        return {str(r[0]): int(r[1]) for r in rows}

    def nodes(self) -> dict[str, dict[str, Any]]:
        """node name -> its last heartbeat document."""
        rows = self._all("SELECT name, doc FROM nodes ORDER BY name")
        return {str(r[0]): dict(json.loads(r[1])) for r in rows}

    def purge_freed_pages(self, *, wait: bool = False) -> bool:
        """Make erased passwords unrecoverable from the database's files (SQLite: fold the WAL
        into the main file, where ``secure_delete`` zeroed freed content, and truncate it;
        PostgreSQL: VACUUM). True when done.

        Without ``wait`` it gives up at once when a reader (``status --watch``) or a writer is
        busy, instead of blocking up to the busy timeout; the caller tries again later."""
        return self._engine.purge_freed_pages(wait=wait)

    @staticmethod
    def _req(r: Row) -> RequestRow:
        return RequestRow(
            id=r["id"],
            csv_id=r["csv_id"],
            row=r["row"],
            seq=r["seq"],
            status=Status(r["status"]),
            title=r["title"],
            created_at=r["created_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            error=r["error"],
            msgs_done=r["msgs_done"],
            msgs_total=r["msgs_total"],
            msgs_present=r["msgs_present"],
            bytes_done=r["bytes_done"],
            bytes_total=r["bytes_total"],
            progress_at=r["progress_at"],
            node=r["node"],
        )

    # -- checkpoints, progress and failures ----------------------------------------------------

    def set_progress(
        self,
        request_id: str,
        msgs: tuple[int, int],
        nbytes: tuple[int, int],
        now: dt.datetime,
        *,
        present: int = 0,
    ) -> None:
        """Live progress: (done, total) in-range messages (total: counted before the copy),
        (copied, found to copy so far) bytes, and how many of the done messages were already
        present."""
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET msgs_done = ?, msgs_total = ?, bytes_done = ?,"
                " bytes_total = ?, msgs_present = ?, progress_at = ? WHERE id = ?",
                (msgs[0], msgs[1], nbytes[0], nbytes[1], present, iso(now), request_id),
            )

    def folder_checkpoints(self, request_id: str) -> dict[str, FolderCheckpoint]:
        rows = self._all("SELECT * FROM folders WHERE request_id = ?", (request_id,))
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
                "INSERT INTO failures(request_id, folder, uid, date, subject, reason, kind)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(request_id, folder, uid) DO UPDATE"
                " SET date = excluded.date, subject = excluded.subject,"
                " reason = excluded.reason, kind = excluded.kind",
                (request_id, f.folder, f.uid, f.date, f.subject, scrub_text(f.reason), f.kind),
            )

    def add_altered_copy(
        self, dest: str, folder: str, stored_key: str, source_key: str, reason: str
    ) -> None:
        """Remember that ``dest``'s folder holds, under identity ``stored_key``, an altered copy
        of the source message ``source_key`` (``dest``: "user@server", any case)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO altered_copies(dest, folder, stored_key, source_key, reason)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(dest, folder, stored_key, source_key)"
                " DO UPDATE SET reason = excluded.reason",
                (dest.lower(), folder, stored_key, source_key, reason),
            )

    def altered_copies(self, dest: str, folder: str) -> dict[str, list[tuple[str, str]]]:
        """``stored_key -> [(source_key, reason), ...]`` of the altered copies in ``dest``'s
        folder (several source messages may have been altered into one identity)."""
        rows = self._all(
            "SELECT stored_key, source_key, reason FROM altered_copies"
            " WHERE dest = ? AND folder = ? ORDER BY stored_key, source_key",
            (dest.lower(), folder),
        )
        out: dict[str, list[tuple[str, str]]] = {}
        for r in rows:
            out.setdefault(r["stored_key"], []).append((r["source_key"], r["reason"]))
        return out

    def clear_failures(self, request_id: str, folder: str) -> None:
        """Forget a folder's failures before it is copied again (they are re-detected)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM failures WHERE request_id = ? AND folder = ?", (request_id, folder)
            )

    def failures(self, request_id: str) -> list[MessageFailure]:
        rows = self._all(
            "SELECT * FROM failures WHERE request_id = ? ORDER BY folder, uid", (request_id,)
        )
        return [
            MessageFailure(r["folder"], r["uid"], r["date"], r["subject"], r["reason"], r["kind"])
            for r in rows
        ]

    # -- what the running daemon says (status) -------------------------------------------------

    def request_keys(self) -> dict[str, str]:
        """request id -> ``schema.request_key`` of every request that has one (not rejected
        rows)."""
        out: dict[str, str] = {}
        for r in self._all("SELECT id, request FROM requests WHERE request IS NOT NULL"):
            d = json.loads(r["request"])
            src, dst = d["source"], d["dest"]
            out[r["id"]] = (
                f"{src['userid']}@{src['server']}>{dst['userid']}@{dst['server']}"
                f"/{d['dest_folder']}"
            ).lower()  # schema.request_key, read from the stored JSON
        return out

    def latest_by_key(self, rows: Sequence[RequestRow] | None = None) -> dict[str, RequestRow]:
        """``schema.request_key`` -> the latest request (highest ``seq``) with that key, among
        ``rows`` (default: every request)."""
        keys = self.request_keys()
        latest: dict[str, RequestRow] = {}
        for r in self.requests() if rows is None else rows:
            key = keys.get(r.id)
            if key is not None and (key not in latest or latest[key].seq < r.seq):
                latest[key] = r
        return latest

    def unfinished_of(self, target: str) -> list[str] | None:
        """The unfinished request ids ``target`` names: a request id, or a CSV by the name it
        was dropped as (or its claimed name); None when it names nothing."""
        row = self._one("SELECT id, status FROM requests WHERE id = ?", (target,))
        if row is not None:
            return [] if Status(row["status"]).finished else [row["id"]]
        rows = self._all(
            "SELECT r.id FROM requests r JOIN csv_files c ON r.csv_id = c.id"
            " WHERE (c.original = ? OR c.name = ?) AND r.status IN (?, ?) ORDER BY r.seq",
            (target, target, Status.QUEUED.value, Status.RUNNING.value),
        )
        if rows:
            return [r["id"] for r in rows]
        known = self._one(
            "SELECT 1 FROM csv_files WHERE original = ? OR name = ?", (target, target)
        )
        return [] if known is not None else None

    def status_counts(self) -> dict[str, int]:
        """Requests by status (every status present, 0 included)."""
        counts = {s.value: 0 for s in Status}
        for r in self._all("SELECT status, COUNT(*) AS n FROM requests GROUP BY status"):
            counts[r["status"]] = r["n"]
        return counts

    def set_heartbeat(self, doc: Mapping[str, Any]) -> None:
        """The daemon's heartbeat (pid, host, times, ``state``: running or stopped)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('heartbeat', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (json.dumps(dict(doc), sort_keys=True),),
            )

    def heartbeat(self) -> dict[str, Any] | None:
        row = self._one("SELECT value FROM meta WHERE key = 'heartbeat'")
        value = json.loads(row["value"]) if row is not None else None
        return value if isinstance(value, dict) else None

    def set_phase(self, request_id: str, phase: str, detail: str, now: dt.datetime) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO phases(request_id, phase, detail, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(request_id) DO UPDATE SET phase = excluded.phase,"
                " detail = excluded.detail, updated_at = excluded.updated_at",
                (request_id, phase, scrub_text(detail), iso(now)),
            )

    def clear_phase(self, request_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM phases WHERE request_id = ?", (request_id,))

    def phases(self) -> dict[str, tuple[str, str, str]]:
        """request id -> (phase, detail, updated_at) of the requests running now."""
        rows = self._all("SELECT * FROM phases")
        return {r["request_id"]: (r["phase"], r["detail"], r["updated_at"]) for r in rows}

    def add_command(self, kind: str, target: str, now: dt.datetime) -> None:
        """Leave a command (``cancel``) for the daemon; it applies it within seconds."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO commands(kind, target, created_at) VALUES (?, ?, ?)",
                (kind, target, iso(now)),
            )

    def pending_commands(self) -> list[tuple[int, str, str]]:
        """(id, kind, target) of the commands not applied yet, oldest first."""
        rows = self._all("SELECT id, kind, target FROM commands WHERE done_at IS NULL ORDER BY id")
        return [(r["id"], r["kind"], r["target"]) for r in rows]

    def command_done(self, command_id: int, now: dt.datetime) -> None:
        with self._tx() as db:
            db.execute("UPDATE commands SET done_at = ? WHERE id = ?", (iso(now), command_id))


def open_store(cfg: Config, *, verify: bool = False) -> StateStore:
    """The store the configuration names: the PostgreSQL database of ``[state] url`` (its
    password read now from ``password_file``/``password_env``), else the SQLite file
    ``daemon.state_path``. ``ConfigError`` when the password cannot be read."""
    if cfg.state.url is None:
        return StateStore(cfg.daemon.state_path, verify=verify)
    from legacyflo_daemon.state.engine import PostgresEngine

    password = cfg.state.password()
    engine = PostgresEngine(cfg.state.url, None if password is None else password.reveal())
    return StateStore(engine, verify=verify)
