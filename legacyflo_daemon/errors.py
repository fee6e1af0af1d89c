"""The one exception hierarchy of legacyflo-daemon.

Shaped by what the caller must do, not by where the error came from:

- ``AuthenticationFailed``: permanent; never retried (account lockout).
- ``TransientError``: retry with backoff (disconnect, timeout, throttling, ``NO [UNAVAILABLE]``).
- ``MessageRejected``: one message could not be read or stored; record it, the request goes on
  and ends ``partial``.
- ``PermanentError``: the request cannot go on (TLS verification failed, plaintext refused,
  a folder the destination will not create); fail it without retrying.
- ``InternalError``: a bug in this program. Never retried, never mistaken for network trouble;
  it is chained (``raise InternalError(...) from exc``) to the exception that revealed the bug,
  so that its traceback survives until it is logged once (the daemon's per-request boundary).

Foreign exceptions (aioimaplib, ssl, OSError, aiosmtplib) are translated into these at exactly
one boundary each (``imap``, ``outbox``); only the conditions a boundary classifies (network,
TLS, server replies) become the errors above, anything else is an ``InternalError``. No message
here may ever contain a password: build messages from host names, user ids and server text only.

A bad CSV row is a value (``model.RowError``), not an exception; ``CsvFileError`` is for a file
that cannot be read as a request CSV at all.
"""

from __future__ import annotations


class LegacyfloError(Exception):
    """Base of every error this package raises on purpose."""


class InternalError(LegacyfloError):
    """A bug in this program: never retried; its traceback is logged once.

    The message says briefly what was being done (host, command; never a password or message
    content) and names the type of the original exception, which is its ``__cause__``.
    """


class ConfigError(LegacyfloError):
    """The configuration file is unreadable or a key has a bad value.

    ``str()`` is one line naming the file and the key, e.g.
    ``config.toml: hosts."x".port: expected an integer``.
    """

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(f"{where}{message}")


class CsvFileError(LegacyfloError):
    """The whole file cannot be used as a request CSV (not text, no usable header, empty)."""


class SpoolError(LegacyfloError):
    """A spool operation failed (permissions, a name that is not a regular file, ...)."""


class AlreadyRunning(LegacyfloError):
    """Another daemon holds the exclusive lock of this spool or state store (``runtime.lock``).

    ``str()`` is one line naming the lock file and the holder's pid (when it wrote one).
    """

    def __init__(self, lock_file: str, pid: int | None) -> None:
        self.lock_file = lock_file
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "a process that has not written its pid"
        super().__init__(
            f"{lock_file}: another legacyflo-daemon ({holder}) is already running on this "
            "spool or state store; stop it first, or give this one another spool"
        )


class StateError(LegacyfloError):
    """The state store is unusable (corrupt, locked, wrong schema version)."""


class StateUnusable(StateError):
    """The state store cannot be used at all: damaged, the disk full, an I/O error.

    Nothing can be recorded safely, so the daemon stops (exit 1) instead of failing requests:
    ``str()`` is one line naming the file and what the operator should do. Nothing is lost: the
    CSVs stay in ``processing/`` and ``incoming/``, and the store keeps what it had.
    """


class ImapError(LegacyfloError):
    """An IMAP operation failed; ``host`` names the server (never credentials)."""

    def __init__(self, message: str, *, host: str = "") -> None:
        self.host = host
        super().__init__(f"{host}: {message}" if host else message)


class AuthenticationFailed(ImapError):
    """The server refused the credentials. Never retried."""


class PermanentError(ImapError):
    """The request cannot go on; retrying will not help."""


class FolderRefused(PermanentError):
    """The server refused to CREATE a folder (typically its name): another name may work."""


class TransientError(ImapError):
    """Worth retrying after a pause; ``retry_after`` (seconds) is the server's own hint, if any."""

    def __init__(self, message: str, *, host: str = "", retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, host=host)


class ConnectionLimited(TransientError):
    """The server refused one more connection: "too many connections" as a NO to LOGIN (with
    or without ``[LIMIT]``), a BYE greeting saying so, or a connection closed before its
    greeting. A pace, never a verdict: fewer connections to that host and login for the rest
    of the run, and never an authentication failure."""


class AppendDesync(TransientError):
    """The server answered BAD to an APPEND whose data was already streamed (non-synchronizing
    literals): it may read the rest of the data as commands, so the connection was dropped.
    Retry with synchronizing literals, one message at a time (``cautious`` appends)."""


class MessageRejected(ImapError):
    """One message could not be fetched or appended; the request goes on."""


class SmtpError(LegacyfloError):
    """A report mail could not be delivered now; it stays in the outbox and is retried."""
