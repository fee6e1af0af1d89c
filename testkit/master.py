"""One Dovecot master process: started in the foreground as our child, always stoppable.

Owns: launching ``dovecot -F -c <conf>``, waiting until its ports accept connections, the fast
and the forced shutdown, killing whatever is still running at interpreter exit, and picking free
ports. Must not: know about users, mail or logs (``dovecot.py``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # a test dependency without stubs

# Dovecot imports TZ: UTC makes INTERNALDATEs and doveadm's dates come out in UTC.
ENV = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "TZ": "UTC"}
_running: set[MasterProcess] = set()


def missing_dovecot() -> str | None:
    """Why the real-server tests cannot run here, or None when they can."""
    for tool in ("dovecot", "doveadm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install dovecot-imapd)"
    return None


def free_port(hosts: tuple[str, ...], taken: set[int]) -> int:
    """A port free on every one of ``hosts`` right now and not in ``taken`` (tiny race)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        if port in taken:
            continue
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _only_log_process_left(pid: int) -> bool:
    alive: list[str] = []
    try:
        for child in psutil.Process(pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped
                    alive.append(" ".join(child.cmdline()))
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
    except psutil.Error:
        return False
    return len(alive) <= 1 and all(name.endswith("/log") for name in alive)


class MasterProcess:
    """``dovecot -F -c conf_path``; its output goes to ``output``."""

    def __init__(self, conf_path: Path, output: Path) -> None:
        self.conf_path = conf_path
        self.output = output
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, host: str, ports: tuple[int, ...], timeout: float) -> bool:
        """Start and wait until every port accepts on ``host``; False if it exited (e.g. a port
        was taken meanwhile) or did not get ready within ``timeout``."""
        with self.output.open("wb") as out:
            self._proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.conf_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ENV,
                start_new_session=True,  # a Ctrl-C in the terminal must not hit it first
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                return False
            if all(_accepts(host, port) for port in ports):
                return True
            time.sleep(0.01)
        self.stop()
        return False

    def startup_output(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def terminate(self) -> None:
        """Ask the master to shut down, without waiting; ``stop()`` waits."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, wait (SIGKILL to the whole process group after 5 s). Idempotent."""
        self.terminate()
        proc, self._proc = self._proc, None
        _running.discard(self)
        if proc is None:
            return
        deadline = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < deadline:
            if _only_log_process_left(proc.pid):
                # The master waits ~1 s for its log process after everything else has exited;
                # nothing is left that could write mail or log lines, so don't wait.
                time.sleep(0.05)
                break
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@atexit.register
def _stop_all_at_exit() -> None:
    for master in list(_running):
        master.stop()
