"""One foreground server process group (Cyrus ``master``, Courier's ``couriertcpd``): started as
our child, waited for until its ports accept, always stoppable.

Owns: launching a command in a new session (its own process group), waiting until its ports
accept connections, stopping the whole group (SIGTERM, then SIGKILL), and killing whatever is
still running at interpreter exit. Must not: know about users, mail or configuration
(``cyrus.py``, ``courier.py``). Dovecot has its own, ``master.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # a test dependency without stubs

_running: set[ServerProcess] = set()


def accepts(host: str, port: int) -> bool:
    """True when something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group. Zombies are ignored: those
    re-parented to init are reaped when init gets to it (seconds in a container)."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


class ServerProcess:
    """``argv`` run in its own session with ``env``; stdout and stderr go to ``output``."""

    def __init__(
        self, argv: Sequence[str], output: Path, env: Mapping[str, str], cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.output = output
        self.env = dict(env)
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, host: str, ports: Sequence[int], timeout: float) -> bool:
        """Start and wait until every port accepts on ``host``; False (and stopped) if it exited
        (e.g. a port was taken meanwhile) or did not get ready within ``timeout``."""
        if self.running:
            raise RuntimeError("already started")
        with self.output.open("ab") as out:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() reaches every child
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                return False
            if all(accepts(host, port) for port in ports):
                return True
            time.sleep(0.01)
        self.stop()
        return False

    def output_text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the whole process group, without waiting; ``stop()`` waits."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGTERM)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the group, wait until every member is gone (SIGKILL after ``grace``).
        Idempotent."""
        self.terminate()
        proc, self._proc = self._proc, None
        _running.discard(self)
        if proc is None:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not _group_alive(proc.pid):
                break
            time.sleep(0.01)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_running):
        server.stop()
