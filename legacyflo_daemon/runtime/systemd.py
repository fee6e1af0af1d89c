"""sd_notify(3) for the daemon: READY, STATUS, STOPPING and the watchdog ping.

Owns: the notification socket named by ``$NOTIFY_SOCKET`` (one ``AF_UNIX``/``SOCK_DGRAM``
``sendto`` per message, ``@`` meaning the abstract namespace) and the watchdog timing read from
``$WATCHDOG_USEC``/``$WATCHDOG_PID``. Without ``$NOTIFY_SOCKET`` every call is a no-op, so the
same code runs under systemd, in a terminal and in tests.

Must not: raise (a broken notification socket must never stop mail from being copied; the first
failure is logged once, later ones are only counted), block the event loop (the socket is
non-blocking), or ping from a thread (``watchdog_task`` runs inside the asyncio loop so a stuck
loop stops the pings and systemd restarts the daemon).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends sd_notify messages to ``address`` (a filesystem path, or ``@name`` for abstract)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.send_failures = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default: ``os.environ``).

        The watchdog is on only if ``WATCHDOG_USEC`` is a positive integer and ``WATCHDOG_PID`` is
        unset or equal to ``pid`` (default: ``os.getpid()``), as sd_watchdog_enabled(3) says.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec = _positive_int(env.get("WATCHDOG_USEC"))
        wd_pid = env.get("WATCHDOG_PID")
        if usec is not None and wd_pid and _positive_int(wd_pid) != (pid or os.getpid()):
            usec = None  # the watchdog belongs to another process (e.g. our parent)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self) -> None:
        """Tell systemd start-up is complete (call only after recovery)."""
        self.notify("READY=1")

    def status(self, text: str) -> None:
        """One line of free text shown by ``systemctl status``; newlines become spaces."""
        # A newline would start a new assignment: "x\nREADY=1" must not become a READY message.
        clean = "".join(" " if ch in "\r\n\0" else ch for ch in text)
        self.notify(f"STATUS={clean}")

    def stopping(self) -> None:
        """Tell systemd a clean shutdown has begun."""
        self.notify("STOPPING=1")

    def ping(self) -> None:
        """Keep-alive for ``WatchdogSec=``."""
        self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``), or None when no watchdog is set."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def notify(self, message: str) -> bool:
        """Send one datagram; True if it was sent. Never raises."""
        if self.address is None:
            return False
        try:
            # A socket per message, as libsystemd does: nothing to keep open or to close, and
            # at most a few messages a minute.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode("utf-8", "replace"), _sockaddr(self.address))
        except (OSError, ValueError) as exc:
            self.send_failures += 1
            if self.send_failures == 1:
                log.warning("sd_notify_failed", socket=self.address, error=repr(exc))
            return False
        return True


def _sockaddr(address: str) -> bytes:
    if address.startswith("@"):
        return b"\0" + os.fsencode(address[1:])
    if address.startswith("/"):
        return os.fsencode(address)
    raise ValueError("NOTIFY_SOCKET must be an absolute path or start with '@'")


def _positive_int(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number > 0 else None


async def watchdog_task(notifier: Notifier, healthy: Callable[[], bool]) -> None:
    """Ping every ``notifier.watchdog_interval()`` seconds while ``healthy()`` is true.

    Returns at once when no watchdog is configured; otherwise runs until cancelled. Pings are
    skipped while ``healthy()`` returns False or raises, so systemd restarts a daemon that stays
    unhealthy for ``WatchdogSec=``; a blocked event loop stops the pings the same way.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    was_healthy = True
    while True:
        try:
            ok = healthy()
        except Exception:
            log.exception("watchdog_health_check_failed")
            ok = False
        if ok:
            notifier.ping()
        elif was_healthy:
            log.warning("watchdog_unhealthy", interval=interval)
        was_healthy = ok
        await asyncio.sleep(interval)
