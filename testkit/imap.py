"""Test-side IMAP access with the stdlib ``imaplib``: test accounts, connecting, logging in.

Owns: ``ServerAccount`` (a login on a test server, password hidden from repr), connecting with
implicit TLS / STARTTLS / plaintext while verifying the test CA, and a login that works for any
password (AUTHENTICATE PLAIN; ``imaplib.login`` cannot send non-ASCII). Must not: be used by
the product code, which has its own IMAP layer; this is the independent check against it.
"""

from __future__ import annotations

import contextlib
import imaplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from legacyflo_daemon.model import Account, Secret
from testkit.tlsca import TlsCa

# Every character the reference document forbids and more: quote, backslash, IMAP wildcards,
# literal braces, space, non-ASCII. Every ``source_account`` logs in with it.
HOSTILE_PASSWORD = 'p@ss"w0rd\\%*{} é'
# Different from the source one, so that mixing the two up fails; ':' tests the passwd-file.
DEST_PASSWORD = "dest:Pa55 wörd)("


class Security(StrEnum):
    TLS = "tls"  # implicit TLS on port_tls
    STARTTLS = "starttls"  # port_plain, then STARTTLS
    PLAIN = "plain"  # port_plain, no TLS


def connect(
    host: str, port: int, security: Security, context: ssl.SSLContext, timeout: float = 10.0
) -> imaplib.IMAP4:
    """An unauthenticated connection; certificates are verified against ``context``."""
    if security is Security.TLS:
        return imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
    conn = imaplib.IMAP4(host, port, timeout=timeout)
    if security is Security.STARTTLS:
        try:
            conn.starttls(context)
        except BaseException:
            with contextlib.suppress(OSError):  # the failed handshake closed the socket itself
                conn.shutdown()  # but imaplib's reader file stays open
            raise
    return conn


def login(conn: imaplib.IMAP4, user: str, password: str) -> None:
    """AUTHENTICATE PLAIN: any user name and password bytes (UTF-8) go through unquoted."""
    token = b"\0" + user.encode() + b"\0" + password.encode()
    conn.authenticate("PLAIN", lambda _challenge: token)


class AccountServer(Protocol):
    """What an account needs of its server: ``DovecotServer``, ``CyrusServer``,
    ``CourierServer``."""

    @property
    def host(self) -> str: ...
    @property
    def port_tls(self) -> int: ...
    @property
    def port_plain(self) -> int: ...
    @property
    def ca_file(self) -> Path: ...
    @property
    def tls(self) -> TlsCa: ...


@dataclass(frozen=True)
class ServerAccount:
    """A user created for one test on one of the test servers."""

    server: AccountServer
    user: str
    password: str = field(repr=False)
    domain: str = "example.test"

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port_tls(self) -> int:
        return self.server.port_tls

    @property
    def port_plain(self) -> int:
        return self.server.port_plain

    @property
    def ca_file(self) -> str:
        return str(self.server.ca_file)

    def model(self, port: int | None = None) -> Account:
        """This login as the product's ``model.Account`` (``port`` None as for a destination)."""
        return Account(self.user, self.domain, Secret(self.password), self.host, port)

    @contextmanager
    def imap(
        self, security: Security | None = None, host: str | None = None
    ) -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib connection, logged out at the end. ``security`` defaults to the
        server's ``default_security`` (TLS; STARTTLS on Courier, which has no TLS port)."""
        if security is None:
            security = getattr(self.server, "default_security", Security.TLS)
        port = self.port_tls if security is Security.TLS else self.port_plain
        conn = connect(host or self.host, port, security, self.server.tls.client_context())
        try:
            login(conn, self.user, self.password)
            yield conn
        finally:
            try:
                conn.logout()
            except (imaplib.IMAP4.error, OSError):
                conn.shutdown()
