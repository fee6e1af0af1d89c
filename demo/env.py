"""The demo's moving parts: two Dovecot servers, an SMTP catcher, the daemon as a subprocess.

Owns: starting and always stopping the servers (``DemoServers`` is a context manager that
stops everything on error and on Ctrl-C), the throwaway CA under the work dir, the mail the
SMTP server received, and running one ``legacyflo-daemon`` command while handing each of its
stdout lines to a callback. Must not: decide what to print (``demo``/``demo.show`` do) or edit
the daemon's files.

The daemon is run as ``python -m legacyflo_daemon.cli`` with this interpreter, which is what the
``legacyflo-daemon`` script does, so the demo works from a checkout without PATH changes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller

from testkit.dovecot import DovecotServer, missing_dovecot
from testkit.dovecot_conf import ServerKind
from testkit.tlsca import TlsCa, make_tls_ca

DAEMON = (sys.executable, "-m", "legacyflo_daemon.cli.main")


class DemoError(Exception):
    """Something the demo needs did not work; the message says what, in one line."""


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes


class MailCatcher:
    """An aiosmtpd handler that accepts every mail and keeps it (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mails: list[ReceivedMail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content or b""
        data = content if isinstance(content, bytes) else str(content).encode("utf-8")
        mail = ReceivedMail(str(envelope.mail_from), tuple(envelope.rcpt_tos), data)
        with self._lock:
            self._mails.append(mail)
        return "250 OK: accepted by the demo"

    @property
    def mails(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._mails)

    def wait_for(self, count: int, timeout: float) -> list[ReceivedMail]:
        """The mails received, once there are ``count`` of them or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while len(self.mails) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.mails


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class DemoServers:
    """Source (Exchange-like) and destination (archive-like) Dovecot, plus the SMTP catcher."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.catcher = MailCatcher()
        self.tls: TlsCa | None = None
        self.source: DovecotServer | None = None
        self.dest: DovecotServer | None = None
        self.smtp: Controller | None = None
        self.smtp_port = 0

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        reason = missing_dovecot()
        if reason is not None:
            raise DemoError(f"{reason}; `make deps` installs it")
        self.tls = make_tls_ca(self.workdir / "tls")
        self.source = DovecotServer(ServerKind.SOURCE, self.tls).start()
        self.dest = DovecotServer(ServerKind.DEST, self.tls).start()
        self.smtp_port = free_port()
        self.smtp = Controller(self.catcher, hostname="127.0.0.1", port=self.smtp_port)
        self.smtp.start()

    def close(self) -> None:
        """Stop everything that was started; safe to call more than once."""
        servers = [s for s in (self.source, self.dest) if s is not None]
        for server in servers:
            server.terminate()  # both shut down in parallel
        if self.smtp is not None:
            with contextlib.suppress(Exception):
                self.smtp.stop()
            self.smtp = None
        for server in servers:
            server.remove()
        self.source = self.dest = None

    @property
    def running(self) -> tuple[DovecotServer, DovecotServer]:
        if self.source is None or self.dest is None:
            raise DemoError("the servers are not running")
        return self.source, self.dest


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def run_cli(args: Sequence[str], timeout: float = 30.0) -> CommandResult:
    """Run ``legacyflo-daemon *args`` to completion and capture its output."""
    try:
        proc = subprocess.run(
            [*DAEMON, *args], capture_output=True, text=True, timeout=timeout, env=_env()
        )
    except subprocess.TimeoutExpired as exc:
        return CommandResult(-1, _text(exc.stdout), _text(exc.stderr), timed_out=True)
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def stream_cli(
    args: Sequence[str],
    on_line: Callable[[str], None],
    *,
    stderr_file: Path,
    timeout: float,
) -> CommandResult:
    """Run ``legacyflo-daemon *args``, calling ``on_line`` for each stdout line as it comes.

    Killed after ``timeout`` seconds (``timed_out`` is then set). On Ctrl-C the daemon (which
    gets the same SIGINT from the terminal) is given a few seconds to stop, then killed.
    """
    with stderr_file.open("w+", encoding="utf-8", errors="replace") as err:
        proc = subprocess.Popen(
            [*DAEMON, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=_env(),
        )
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        err.seek(0)
        return CommandResult(returncode, "", err.read(), timed_out=expired.is_set())


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LEGACYFLO_CONFIG"}
    env["PYTHONUNBUFFERED"] = "1"  # log lines arrive as they are written
    return env


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value or ""
