"""One daemon per spool and per state store: exclusive ``flock`` on a lock file.

Owns: taking and releasing the daemon's exclusive locks (docs/contract.md §7.1). A lock is
``fcntl.flock(LOCK_EX | LOCK_NB)`` on a file (``<spool>/.lock``, and ``<state file>.lock`` when
the state store lives outside the spool) that holds the holder's pid. The kernel releases it
when the process ends in any way (``kill -9`` included), so a stale lock file never blocks a
start: only a *living* holder does.

Readers (``status``) and writers that do not run requests (``submit``, ``check``) never take
it: they must keep working while the daemon runs.

Must not: know the spool layout beyond the path it is given, or log.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from legacyflo_daemon.errors import AlreadyRunning

LOCK_MODE = 0o600


class ExclusiveLock:
    """An exclusive lock held on ``path`` until ``release`` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> ExclusiveLock:
        """Take the lock of ``path`` (created 0600 if missing) and write our pid into it.

        Never waits: raises ``AlreadyRunning`` naming the holder's pid when another process
        holds it, ``OSError`` when the file cannot be opened.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, LOCK_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(str(path), holder) from None
            raise
        try:
            os.fchmod(fd, LOCK_MODE)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Let go of the lock (the file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, if any (it may not have written it yet)."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    return None


def lock_paths(spool: Path, state_file: Path | None) -> list[Path]:
    """The lock files of a daemon on ``spool`` with ``state_file``: ``<spool>/.lock``, plus
    ``<state file>.lock`` when the state file is not directly in the spool (another daemon may
    share that state store with a different spool); None: a database server, no file."""
    paths = [spool / ".lock"]
    if state_file is not None and state_file.parent.resolve() != spool.resolve():
        paths.append(state_file.with_name(state_file.name + ".lock"))
    return paths
