"""The state store's database engines: an embedded SQLite file, or a shared PostgreSQL.

Owns: opening the connection, transactions, reading rows, the few SQL spellings the two
databases do not share, the engine's own checks (SQLite's ``quick_check``) and purge of erased
secrets, and turning each database's errors into ``StateError``/``StateUnusable`` with one line
saying what to do. ``StateStore`` writes every query once, in the common SQL both accept, with
``?`` parameters; ``PostgresEngine`` turns them into psycopg's ``%s``.

What differs, and why it is here and nowhere else:

- Types: SQLite's ``INTEGER`` is 64-bit, PostgreSQL's is 32-bit: the PostgreSQL schema uses
  ``BIGINT`` (byte counts of a 5 GB mailbox pass 2^31), and an identity column for SQLite's
  ``INTEGER PRIMARY KEY AUTOINCREMENT`` (``postgres_ddl``).
- JSON: ``json_int(column, key)`` reads an integer member of a JSON text column.
- Concurrency: SQLite has one writer (``BEGIN IMMEDIATE``); PostgreSQL runs each transaction
  at READ COMMITTED, and the schema migration takes a transaction-level advisory lock so that
  several daemons starting together migrate once.
- Secrets: SQLite's ``secure_delete`` plus a truncated WAL leave no erased password in any
  file; PostgreSQL keeps dead row versions until VACUUM, which ``purge_freed_pages`` runs. Its
  WAL and data files may still hold old bytes until they are reused: the database server must
  be protected like the daemon's own state directory (README, "Deployment").

Threads: one connection per engine, guarded by a re-entrant lock, as before.
Must not: know the tables (``schema``) or the queries (``store``).
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from legacyflo_daemon.errors import StateError, StateUnusable
from legacyflo_daemon.runtime.files import ensure_private_dir


class Row(Protocol):
    """A result row: by column name or by position (``sqlite3.Row`` and ``PgRow`` both)."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Result(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """What a transaction offers: ``execute`` and ``executemany`` with ``?`` parameters."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Result: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any: ...


class Engine(Protocol):
    """One database connection (see the module docstring)."""

    where: str  # for messages: the file's path, or the URL without its password
    shared: bool  # True when other daemons may use the same database (PostgreSQL)
    lock: threading.RLock

    def tx(self) -> AbstractContextManager[Tx]: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def json_int(self, column: str, key: str) -> str: ...

    def error(self, exc: BaseException, doing: str = "") -> StateError | None: ...

    def statements(self, script: str) -> list[str]: ...

    def is_duplicate_column(self, exc: Exception) -> bool: ...

    def verify(self) -> None: ...

    def try_lock(self, key: str) -> bool: ...

    def unlock(self, key: str) -> None: ...

    def purge_freed_pages(self, *, wait: bool) -> bool: ...

    def close(self) -> None: ...


def split_statements(script: str) -> list[str]:
    """The SQL statements of ``script`` (comments may hold ``;``); ``executescript`` would
    commit the transaction they must run in."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    return out


# -- SQLite ------------------------------------------------------------------------------------

_FULL = {"SQLITE_FULL"}
_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def sqlite_error(path: Path, exc: sqlite3.Error, doing: str = "") -> StateError:
    """The ``StateError`` for ``exc``: ``StateUnusable`` (one line saying what to do) when the
    store cannot be used at all — damaged, disk full, an I/O error — else a plain one."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    base = "_".join(name.split("_")[:2])  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
    where = f"{path}: {doing}: " if doing else f"{path}: "
    if base in _FULL or "disk is full" in str(exc) or (base == "SQLITE_IOERR" and _no_space(path)):
        return StateUnusable(
            f"{where}the disk is full ({exc}); nothing was lost: free space on the file system "
            f"holding {path.parent}, then start the daemon again"
        )
    if base in _DAMAGED or "malformed" in str(exc) or "not a database" in str(exc):
        return damaged(path, str(exc))
    if base == "SQLITE_IOERR":
        return StateUnusable(
            f"{where}I/O error ({exc}); check the disk and the file system holding it "
            "(dmesg), then start the daemon again"
        )
    return StateError(f"{where}{exc}")


def _no_space(path: Path) -> bool:
    """Whether the file system of ``path`` is (nearly) full: SQLite reports a full disk met
    while growing its shared-memory file as an I/O error."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def damaged(path: Path, detail: str) -> StateUnusable:
    return StateUnusable(
        f"{path}: the state store is damaged ({detail}); stop every legacyflo-daemon, keep a copy "
        "of it (with its -wal file), then restore it from a backup, or move it aside to start "
        "with an empty one and submit the CSVs of processing/ again (a re-run copies only "
        "what is missing)"
    )


def _private_files(path: Path) -> None:
    """The state store's directory (0700 when created) and files (0600) private to us,
    whatever the umask: the store holds passwords. SQLite creates ``-wal`` and ``-shm`` with
    the database file's mode, so the file is created 0600 *before* SQLite opens it; files of an
    older install are made 0600 too."""
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.chmod(path.with_name(path.name + suffix), 0o600)


class SqliteEngine:
    """The embedded default: one SQLite file (WAL, ``secure_delete``), private to the daemon."""

    shared = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self.lock = threading.RLock()
        try:
            _private_files(path)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StateUnusable(
                    f"{path}: cannot create the state store: the disk is full; free space on "
                    f"the file system holding {path.parent}, then start the daemon again"
                ) from exc
            raise StateError(f"{path}: cannot create the state store: {exc.strerror}") from exc
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=10.0, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA secure_delete = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise sqlite_error(path, exc, "cannot open the state store") from exc

    def error(self, exc: BaseException, doing: str = "") -> StateError | None:
        """The ``StateError`` for a database error, None for any other exception."""
        return sqlite_error(self.path, exc, doing) if isinstance(exc, sqlite3.Error) else None

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self.lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from exc

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from exc

    def json_int(self, column: str, key: str) -> str:
        return f"COALESCE(json_extract({column}, '$.{key}'), 0)"

    def statements(self, script: str) -> list[str]:
        return split_statements(script)

    def is_duplicate_column(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "duplicate column name" in str(exc)

    def verify(self) -> None:
        """``PRAGMA quick_check``: raises ``StateUnusable`` (saying what to do) when the file is
        damaged."""
        try:
            rows = self.all("PRAGMA quick_check")
        except StateUnusable:
            raise
        except StateError as exc:
            raise damaged(self.path, str(exc).removeprefix(f"{self.path}: ")) from exc
        # One row may hold many lines; the first names the problem, the count tells its extent.
        problems = [
            line
            for r in rows
            if r[0] != "ok"
            for line in str(r[0]).splitlines()
            if line.strip() and not line.startswith("***")
        ]
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise damaged(self.path, f"quick_check: {problems[0]}{more}")

    def try_lock(self, key: str) -> bool:
        """The only daemon (the spool's lock file proves it) needs no lock of its own."""
        del key
        return True

    def unlock(self, key: str) -> None:
        del key

    def purge_freed_pages(self, *, wait: bool) -> bool:
        """Fold the WAL into the main file (where ``secure_delete`` zeroed freed content) and
        truncate it to zero bytes. Without ``wait`` it gives up at once when a reader or a
        writer is busy."""
        with self.lock:
            try:
                if not wait:
                    self._db.execute("PRAGMA busy_timeout = 0")
                row = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from exc
            finally:
                self._db.execute("PRAGMA busy_timeout = 10000")
        return row is not None and row[0] == 0

    def close(self) -> None:
        with self.lock:
            self._db.close()


# -- PostgreSQL --------------------------------------------------------------------------------

_IDENTITY = re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b")
_INTEGER = re.compile(r"\bINTEGER\b")
_MIGRATION_LOCK = 0x6C666C6F  # "lflo": the advisory lock the schema migration holds


def postgres_ddl(statement: str) -> str:
    """A schema statement written for SQLite, in PostgreSQL's spelling (see the module
    docstring: 64-bit integers, identity columns)."""
    statement = _IDENTITY.sub("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", statement)
    statement = _INTEGER.sub("BIGINT", statement)
    return statement.replace("ADD COLUMN ", "ADD COLUMN IF NOT EXISTS ")


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class PgRow(tuple[Any, ...]):
    """A PostgreSQL row by position and by column name, like ``sqlite3.Row``."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> PgRow:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)


class _PgTx:
    """A transaction's statements with ``?`` parameters on a psycopg connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cur: Result = self._conn.execute(_pg_sql(sql), tuple(params))
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), [tuple(r) for r in rows])


def _pg_sql(sql: str) -> bytes:
    # The queries are ours: no literal '?' or '%' in them, so this is a plain substitution.
    return sql.replace("%", "%%").replace("?", "%s").encode()


class PostgresEngine:
    """A shared PostgreSQL database (``[state] url``): several daemons use one.

    ``password``: given apart from the URL (``[state] password_file``/``password_env``); never
    in a message. A connection lost (server restart, network cut) is opened again at the next
    call; the call that met the loss raises ``StateError``."""

    shared = True

    def __init__(self, url: str, password: str | None = None, *, connect_timeout: int = 10):
        import psycopg  # only a PostgreSQL deployment needs it loaded

        self._psycopg = psycopg
        self.url = url
        self.where = redact_url(url)
        self.lock = threading.RLock()
        self._password = password
        self._timeout = connect_timeout
        self._conn: Any = None
        with self.lock:
            self._connect()

    def _connect(self) -> Any:
        psycopg = self._psycopg
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        # TCP keepalives: a database cut off without a reset is noticed in about 25 s instead
        # of the kernel's retransmission timeout (many minutes with the event loop waiting).
        extra: dict[str, Any] = {
            "application_name": "legacyflo-daemon",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        if self._password is not None:
            extra["password"] = self._password
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self._timeout,
                row_factory=_pg_row_factory,
                **extra,
            )
        except psycopg.Error as exc:
            raise self._error(exc, "cannot connect") from None
        self._conn = conn
        return conn

    def _error(self, exc: BaseException, doing: str = "") -> StateError:
        psycopg = self._psycopg
        # libpq's message may quote the connection string's parts, never the password; the
        # password given apart is scrubbed all the same.
        text = " ".join(str(exc).split())
        if self._password:
            text = text.replace(self._password, "***")
        where = f"{self.where}: {doing}: " if doing else f"{self.where}: "
        if isinstance(exc, psycopg.OperationalError):
            return StateUnusable(
                f"{where}{text}; check that the PostgreSQL server runs and is reachable from "
                "this machine, and [state] url and its password, then start the daemon again"
            )
        if isinstance(exc, psycopg.errors.DiskFull):
            return StateUnusable(f"{where}the database server's disk is full ({text})")
        return StateError(f"{where}{text}")

    def error(self, exc: BaseException, doing: str = "") -> StateError | None:
        return self._error(exc, doing) if isinstance(exc, self._psycopg.Error) else None

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        psycopg = self._psycopg
        with self.lock:
            try:
                conn = self._connect()
                with conn.transaction():
                    yield _PgTx(conn)
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        psycopg = self._psycopg
        with self.lock:
            try:
                conn = self._connect()
                rows: list[Row] = conn.execute(_pg_sql(sql), tuple(params)).fetchall()
                return rows
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def json_int(self, column: str, key: str) -> str:
        return f"COALESCE(CAST(CAST({column} AS jsonb) ->> '{key}' AS BIGINT), 0)"

    def statements(self, script: str) -> list[str]:
        out = [postgres_ddl(s) for s in split_statements(script)]
        # Several daemons may start at once: one migrates, the others wait for it.
        return [f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})", *out]

    def is_duplicate_column(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.errors.DuplicateColumn)

    def verify(self) -> None:
        """PostgreSQL checks its own pages; a reachable server is all this asks."""
        self.all("SELECT 1")

    def try_lock(self, key: str) -> bool:
        """Take the session-level advisory lock named ``key`` if no other node holds it; it is
        released by ``unlock``, or by the server when this node's connection ends (kill -9,
        power loss), so a dead node never keeps it."""
        rows = self.all("SELECT pg_try_advisory_lock(hashtext(?))", (key,))
        return bool(rows[0][0])

    def unlock(self, key: str) -> None:
        self.all("SELECT pg_advisory_unlock(hashtext(?))", (key,))

    def purge_freed_pages(self, *, wait: bool) -> bool:
        """VACUUM the tables that held passwords, so no dead row version keeps one (see the
        module docstring for what remains the server's to protect)."""
        del wait  # VACUUM never waits for readers
        psycopg = self._psycopg
        with self.lock:
            try:
                conn = self._connect()
                conn.execute(b"VACUUM requests")
            except psycopg.Error as exc:
                raise self._error(exc) from exc
        return True

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()


def _pg_row_factory(cursor: Any) -> Any:
    names = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, names)
