"""Reading a Dovecot 2.3 log: logins, failed logins, limit refusals and concurrent sessions.

Owns: the line formats below (measured on 2.3.19.1 with the ``login_log_format_elements`` of
``dovecot_conf.py``) and pure functions over the log text. Must not: read files or talk to a
server, so every rule here is testable on literal lines.

    ... imap-login: Info: Login: user=<u>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1,
        lport=993, mpid=8895, TLS, session=<LDZHYzJhlI5/AAAB>
    ... imap(u)<8895><LDZHYzJhlI5/AAAB>: Info: Disconnected: Logged out in=29 out=559 ...
    ... imap-login: Info: Disconnected: Connection closed (auth failed, 1 attempts in 0 secs):
        user=<u>, method=PLAIN, rip=..., session=<...>      (also "Aborted login ...")
    ... imap-login: Info: Disconnected: Maximum number of connections from user+IP exceeded
        (mail_max_userip_connections=2): user=<u>, ...

Every end of an authenticated session (LOGOUT, client EOF, kick, shutdown) is an
``imap(user)<pid><session>: Info: Disconnected: ...`` line, so a session is the span between its
Login line and that line, matched by session id.

Concurrency is measured in log order. The log process receives the Login line (from imap-login)
and the Disconnected line (from the imap process) on different pipes; a client that opens a new
connection the instant after LOGOUT's tagged OK could in theory see the new Login logged before
the old Disconnected. In practice the new TLS handshake and authentication take milliseconds
while the Disconnected line is written microseconds after the OK, so the order holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LOGIN = re.compile(
    r"imap-login: Info: Login: user=<(?P<user>.*?)>, method=(?P<method>[^,]*), "
    r"rip=(?P<rip>[^,]*), lip=(?P<lip>[^,]*), lport=(?P<lport>\d+), mpid=\d+, "
    r"(?P<flags>.*?)session=<(?P<session>[^>]*)>"
)
_FAILED = re.compile(
    r"imap-login: Info: .*\(auth failed, (?P<attempts>\d+) attempts? in \d+ secs?\): "
    r"user=<(?P<user>.*?)>,"
)
_LIMIT = re.compile(
    r"imap-login: Info: .*Maximum number of connections from user\+IP exceeded.*?: "
    r"user=<(?P<user>.*?)>,"
)
_END = re.compile(r"imap\((?P<user>.*)\)<\d+><(?P<session>[^>]*)>: Info: Disconnected")


@dataclass(frozen=True, slots=True)
class Login:
    """One successful login. ``tls`` is True for implicit TLS and after STARTTLS."""

    user: str
    session: str
    method: str
    local_ip: str
    local_port: int
    tls: bool


@dataclass(frozen=True, slots=True)
class LoginCounts:
    succeeded: int
    failed: int  # failed authentication attempts (wrong password, unknown user, plaintext refused)
    refused_by_limit: int  # rejected by mail_max_userip_connections after a correct password

    @property
    def attempts(self) -> int:
        return self.succeeded + self.failed + self.refused_by_limit


def logins(log: str, user: str | None = None) -> list[Login]:
    """Successful logins in log order, of ``user`` or of everyone when ``user`` is None."""
    found = []
    for line in log.splitlines():
        m = _LOGIN.search(line)
        if m and (user is None or m["user"] == user):
            found.append(
                Login(
                    user=m["user"],
                    session=m["session"],
                    method=m["method"],
                    local_ip=m["lip"],
                    local_port=int(m["lport"]),
                    tls="TLS" in m["flags"].split(", "),
                )
            )
    return found


def count_logins(log: str, user: str) -> LoginCounts:
    """How many times ``user`` logged in, failed to, and was refused for too many connections."""
    failed = limited = 0
    for line in log.splitlines():
        if (m := _FAILED.search(line)) and m["user"] == user:
            failed += int(m["attempts"])
        elif (m := _LIMIT.search(line)) and m["user"] == user:
            limited += 1
    return LoginCounts(len(logins(log, user)), failed, limited)


def max_concurrent_sessions(log: str, user: str | None = None) -> int:
    """The highest number of authenticated sessions of ``user`` (everyone if None) open at once.

    A session counts from its Login line to its ``Disconnected`` line; one still open at the end
    of the log counts as open.
    """
    open_sessions: set[str] = set()
    peak = 0
    for line in log.splitlines():
        if (m := _LOGIN.search(line)) is not None:
            if user is None or m["user"] == user:
                open_sessions.add(m["session"])
                peak = max(peak, len(open_sessions))
        elif (m := _END.search(line)) is not None:
            open_sessions.discard(m["session"])
    return peak


def open_sessions(log: str, user: str | None = None) -> int:
    """Sessions logged in and not yet disconnected at the end of the log."""
    started = {x.session for x in logins(log, user)}
    ended = {m["session"] for line in log.splitlines() if (m := _END.search(line))}
    return len(started - ended)
