"""What the private Cyrus and Courier test servers have in common: lifecycle, users' passwords,
logged-in connections, loading and snapshots over IMAP.

Owns: ``PrivateImapServer`` (a base class: the instance directory, picking ports, starting and
stopping the process group, timing the start, ``connect``/``load_messages``/``snapshot``) and
where the unpacked server packages live (``servers_dir()``). Must not: know a server's
configuration (``cyrus.py``, ``courier.py``) or parse IMAP (``imapmail.py``).
"""

from __future__ import annotations

import imaplib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit import imapmail
from testkit.imap import Security, ServerAccount, connect, login
from testkit.maildir import LoadedMessage, MailSpec
from testkit.master import free_port
from testkit.process import ServerProcess
from testkit.snapshot import MailboxSnapshot
from testkit.tlsca import TlsCa

REPO = Path(__file__).resolve().parent.parent
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TZ": "UTC"}
_counter = iter(range(1, 1_000_000))


def servers_dir() -> Path:
    """Where ``testkit/install-servers.sh`` unpacked cyrus-imapd and courier-imap
    (``make deps``: ``.servers/`` at the repository root; ``LEGACYFLO_SERVERS_DIR`` overrides)."""
    return Path(os.environ.get("LEGACYFLO_SERVERS_DIR", REPO / ".servers"))


def missing_files(paths: Sequence[Path | str], hint: str) -> str | None:
    """Why a server cannot run here (the first missing executable), or None."""
    for path in paths:
        if not os.access(path, os.X_OK):
            return f"{path} is missing ({hint})"
    return None


def unique_name(prefix: str) -> str:
    """A user name unique in this process (every instance has its own user database)."""
    return f"{prefix}{next(_counter)}"


class PrivateImapServer:
    """A server of ``kind`` on ``host``; subclasses write the configuration and the command.

    ``port_names`` are the ports a subclass needs, in the order it wants them.
    """

    kind = "imap"
    port_names: tuple[str, ...] = ("plain",)
    default_security = Security.TLS

    def __init__(self, tls: TlsCa, host: str) -> None:
        self.tls = tls
        self._host = host
        self.root = Path(tempfile.mkdtemp(prefix=f"lf-{self.kind}-"))
        self.root.chmod(0o755)  # the server's own users must traverse it
        self._ports: dict[str, int] | None = None
        self._passwords: dict[str, str] = {}
        self._lock = threading.Lock()
        self._process: ServerProcess | None = None
        self._kit_ports: set[int] = set()  # client ports of the kit's own connections
        self.start_seconds: float | None = None  # how long the last start() took

    # -- addresses -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    def _port(self, name: str) -> int:
        if self._ports is None:
            raise RuntimeError(f"{self.kind} server not started")
        return self._ports[name]

    @property
    def port_plain(self) -> int:
        """The 143-like port: STARTTLS, no login before it."""
        return self._port("plain")

    @property
    def port_tls(self) -> int:
        """The 993-like port: implicit TLS."""
        return self._port("tls")

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    @property
    def separator(self) -> str:
        raise NotImplementedError

    @property
    def prefix(self) -> str:
        """The personal namespace prefix (``INBOX.``)."""
        raise NotImplementedError

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._passwords)

    def password(self, user: str) -> str:
        return self._passwords[user]

    # -- lifecycle -----------------------------------------------------------------------------

    def _prepare(self, ports: Mapping[str, int]) -> ServerProcess:
        """Write the configuration for ``ports`` and return the (not started) process."""
        raise NotImplementedError

    def _after_start(self) -> None:
        """Runs once the ports accept (e.g. Cyrus creates its admin's session here)."""

    def start(self, timeout: float = 20.0) -> Self:
        """Start the instance and wait until its ports accept connections.

        On restart the ports stay the same; mail and users are kept.
        """
        if self.running:
            raise RuntimeError("already started")
        began = time.monotonic()
        for _attempt in range(1 if self._ports is not None else 3):
            ports = self._ports or self._pick_ports()
            process = self._prepare(ports)
            if process.start(self.host, list(ports.values()), timeout):
                self._ports, self._process = dict(ports), process
                self._after_start()
                self.start_seconds = time.monotonic() - began
                return self
        raise RuntimeError(f"{self.kind} did not start:\n{process.output_text()[-3000:]}")

    def _pick_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        for name in self.port_names:
            ports[name] = free_port((self.host,), set(ports.values()))
        return ports

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def output_text(self) -> str:
        """What the server process wrote to stdout/stderr."""
        return self._process.output_text() if self._process is not None else ""

    def terminate(self) -> None:
        """Ask the server to shut down without waiting (``stop()`` waits); lets a caller stop
        several instances in parallel."""
        if self._process is not None:
            self._process.terminate()

    def stop(self) -> None:
        """Stop every process of the instance and wait. Idempotent; ``start()`` brings the
        same server back (same ports, mail and users)."""
        if self._process is not None:
            self._process.stop()

    def remove(self) -> None:
        """Stop and delete the instance directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    # -- users ---------------------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        raise NotImplementedError

    def new_user(self, password: str, prefix: str = "u") -> str:
        """Add a user with a unique name (``prefix`` + digits) and return the name."""
        name = unique_name(prefix)
        self.add_user(name, password)
        return name

    def _remember(self, name: str, password: str) -> None:
        with self._lock:
            if name in self._passwords:
                raise ValueError(f"user {name!r} already exists")
            self._passwords[name] = password

    def account(self, user: str) -> ServerAccount:
        """``user`` as a ``ServerAccount`` (``.imap()``, ``.model()``)."""
        return ServerAccount(self, user, self._passwords[user])

    # -- IMAP ----------------------------------------------------------------------------------

    @contextmanager
    def connect(
        self, user: str, security: Security | None = None, password: str | None = None
    ) -> Iterator[imaplib.IMAP4]:
        """A connection logged in as ``user`` (TLS verified against the test CA), marked as the
        kit's own where the server offers ID; logged out at the end."""
        security = security or self.default_security
        port = self.port_tls if security is Security.TLS else self.port_plain
        conn = connect(self.host, port, security, self.tls.client_context())
        self._kit_ports.add(int(conn.sock.getsockname()[1]))
        try:
            login(conn, user, self._passwords[user] if password is None else password)
            imapmail.mark_session(conn)
            yield conn
        finally:
            try:
                conn.logout()
            except (imaplib.IMAP4.error, OSError):
                conn.shutdown()

    def create_folder(self, user: str, folder: str) -> None:
        """Create ``folder`` (full name: ``INBOX.a.b``) for ``user``, as ``user``. Idempotent."""
        with self.connect(user) as conn:
            imapmail.create_folder(conn, folder)

    def load_messages(
        self, user: str, folder: str, specs: Sequence[MailSpec]
    ) -> list[LoadedMessage]:
        """APPEND ``specs`` as ``user`` to ``folder`` (created if needed), with their flags and
        INTERNALDATE, in order (UIDs follow it)."""
        with self.connect(user) as conn:
            return imapmail.append_messages(conn, folder, specs)

    def snapshot(self, user: str) -> MailboxSnapshot:
        """``user``'s own folders, read as ``user`` without changing anything (EXAMINE,
        BODY.PEEK): the same types as ``snapshot.snapshot_mailbox`` gives for Dovecot."""
        with self.connect(user) as conn:
            return imapmail.read_mailbox(conn)

    def __repr__(self) -> str:
        state = f"{self.host}:{self._ports}" if self._ports else "not started"
        return f"<{type(self).__name__} {state} {self.root}>"
