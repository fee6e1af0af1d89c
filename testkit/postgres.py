"""A private PostgreSQL instance for one test session (or one test): initdb, start, databases,
stop.

Owns: the instance's directory (a fresh ``/tmp/lf-postgres-*``: data directory, Unix socket,
log), its loopback port, its one login role (password authentication, SCRAM), fresh databases.
The process itself is ``process.ServerProcess``'s (own process group, stopped at interpreter
exit). Must not: touch a system cluster (``/etc/postgresql``, ``/var/run/postgresql``).

PostgreSQL refuses to run as root, and the tests do run as root: the server then runs as
``nobody`` (its directory is made theirs), exactly as Dovecot's mail processes do. Not under
pytest's ``tmp_path`` for the same reason as Dovecot: that tree is 0700 for root.

``make deps`` installs Debian's ``postgresql`` (binaries under ``/usr/lib/postgresql/<major>/bin``);
``missing_postgres()`` says why a test must be skipped when it is not there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.master import free_port
from testkit.process import ServerProcess

__all__ = ["PostgresServer", "missing_postgres"]


def _bin() -> Path:
    """Where the server's programs are: ``LF_POSTGRES_BIN``, else the newest major version
    Debian installed (``/usr/lib/postgresql/<major>/bin``; 15 on Debian 12)."""
    if given := os.environ.get("LF_POSTGRES_BIN"):
        return Path(given)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _bin()
NOBODY = 65534
HOST = "127.0.0.1"
ROLE = "legacyflo"
_counter = iter(range(1, 1_000_000))


def missing_postgres() -> str | None:
    """Why PostgreSQL cannot be started here, or None."""
    for tool in ("initdb", "postgres"):
        if not (BIN / tool).is_file():
            return f"{BIN / tool} is missing: install Debian's postgresql (make deps)"
    return None


def _as_server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: ``nobody`` when we are root, else ourselves."""
    return (NOBODY, NOBODY) if os.geteuid() == 0 else None


class PostgresServer:
    """One PostgreSQL cluster on ``127.0.0.1:<free port>`` (and a Unix socket in its directory).

    ``password`` is the role's (SCRAM); ``url(database)`` a ``postgresql://`` URL with it;
    ``new_database()`` a fresh empty database owned by the role. Use as a context manager or
    call ``start()``/``stop()``.
    """

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lf-postgres-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_file = self.root / "postgres.log"
        # Characters a URL must escape, so a test sees that the daemon keeps the password whole
        # and never shows it.
        self.password = f"pg:{secrets.token_hex(6)}@/%é"
        self.settings = dict(settings or {})
        self.port = 0
        self._process: ServerProcess | None = None
        self._lock = threading.Lock()
        self._initdb()

    # -- set-up ----------------------------------------------------------------------------------

    def _chown(self, path: Path) -> None:
        ids = _as_server_user()
        if ids is not None:
            os.chown(path, *ids)

    def _run(self, argv: list[str], *, input_text: str | None = None) -> None:
        ids = _as_server_user()
        done = subprocess.run(
            argv,
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            user=ids[0] if ids else None,
            group=ids[1] if ids else None,
            extra_groups=[] if ids else None,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            cwd=self.root,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr}{done.stdout}")

    def _initdb(self) -> None:
        self.socket_dir.mkdir()
        self._chown(self.root)
        self._chown(self.socket_dir)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        pwfile.chmod(0o600)
        try:
            self._run(
                [
                    str(BIN / "initdb"),
                    "--pgdata", str(self.data),
                    "--username", ROLE,
                    "--pwfile", str(pwfile),
                    "--auth", "scram-sha-256",
                    "--encoding", "UTF8",
                    "--locale", "C.UTF-8",
                    "--no-sync",  # a test cluster: nothing to keep across a power cut
                ]
            )  # fmt: skip
        finally:
            pwfile.unlink()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start on a free loopback port (retried if the port was taken meanwhile)."""
        ids = _as_server_user()
        options = {
            "listen_addresses": HOST,
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "log_connections": "on",
            "log_disconnections": "on",
            **self.settings,
        }
        for _ in range(5):
            self.port = free_port((HOST,), set())
            argv = [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port)]
            for key, value in options.items():
                argv += ["-c", f"{key}={value}"]
            if ids is not None:
                # setpriv (util-linux): the server as nobody, no supplementary groups.
                argv = ["setpriv", f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups",
                        *argv]  # fmt: skip
            self._process = ServerProcess(
                argv,
                self.log_file,
                {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
                cwd=self.root,
            )
            if self._process.start(HOST, [self.port], timeout=60):
                # The port accepts while the cluster is still "starting up".
                self.wait_for_log(lambda t: "ready to accept connections" in t, timeout=60)
                return
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop(grace=10)
            self._process = None

    def crash(self) -> None:
        """SIGKILL the whole server (a power loss, a crash): every client's connection ends
        at once. ``stop`` (SIGTERM) would be PostgreSQL's "smart" shutdown, which waits for the
        clients to disconnect."""
        if self._process is not None and self._process.pid is not None:
            import signal

            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self.stop()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    # -- databases -------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``database`` with the role's password (escaped)."""
        from urllib.parse import quote

        return f"postgresql://{ROLE}:{quote(self.password, safe='')}@{HOST}:{self.port}/{database}"

    def new_database(self, prefix: str = "lf") -> str:
        """A fresh, empty database owned by the role; returns its URL."""
        with self._lock:
            name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement as the role (autocommit); the rows it returns."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return list(cur.fetchall()) if cur.description else []

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_for_log(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        """The log once ``predicate`` holds for it (``AssertionError`` after ``timeout``)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the PostgreSQL log never matched:\n{text[-2000:]}")
            time.sleep(0.05)
