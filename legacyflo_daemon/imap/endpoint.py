"""Where and how to reach an IMAP server, and what its failures mean for us.

Owns: ``Endpoint`` (host, port, TLS mode, credentials, timeouts), the rules that turn a request
and the config into the two endpoints of a copy: each side uses its host's settings for that
direction (``Config.host_for``: ``[hosts."x".source]``/``[hosts."x".dest]`` over
``[hosts."x"]``); the port follows the one rule of ``port_for`` (the CSV's port when it gives
one, else the host's ``port``, else 993 for the source and ``imap.dest_port`` for the
destination); port 993 is implicit TLS and any other port STARTTLS unless the host's ``tls``
says otherwise; plain LOGIN only where ``allow_plaintext`` says so; the login name follows the
host's ``login_format``; the host's ``auth`` picks the credentials (the row's password, an
administrator's impersonation ``Impersonation`` or an OAuth token ``Bearer``);
``make_ssl_context`` (the only place TLS settings are decided) and ``translate``/``chain``: the
one classification of foreign exceptions. Network, ``ssl``, unreadable-response and aioimaplib
protocol errors become ``TransientError``/``PermanentError``; any other exception is a bug and
becomes ``InternalError``, chained to the original so that its traceback survives.
Must not: open connections, log, or let a bug pass for network trouble (it would be retried).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from legacyflo_daemon.auth.admin import admin_password
from legacyflo_daemon.auth.oauth2 import TokenProvider, provider_for
from legacyflo_daemon.config.schema import Config, Direction, HostConfig
from legacyflo_daemon.errors import ImapError, InternalError, PermanentError, TransientError
from legacyflo_daemon.imap._aioimaplib.protocol import ProtocolError
from legacyflo_daemon.imap.syntax.wire import WireError
from legacyflo_daemon.model import Account, Request, Secret

TlsMode = Literal["implicit", "starttls", "starttls-or-plain", "plain"]
# OpenSSL's SSL_OP_LEGACY_SERVER_CONNECT; ssl exposes it only from Python 3.12.
_OP_LEGACY_SERVER_CONNECT = getattr(ssl, "OP_LEGACY_SERVER_CONNECT", 0x4)


@dataclass(frozen=True, slots=True)
class Impersonation:
    """``auth = "admin"``: ``Endpoint.password`` is the administrator ``admin``'s. With
    ``sasl``, AUTHENTICATE PLAIN as ``admin`` with ``Endpoint.user`` as authorization identity
    (RFC 4616); else LOGIN as ``Endpoint.user`` (its ``login_format`` holds the admin)."""

    admin: str
    sasl: bool


@dataclass(frozen=True, slots=True)
class Bearer:
    """``auth = "oauth2"``: an access token from ``provider`` for ``Endpoint.user``, sent as
    OAUTHBEARER when the server offers it, else XOAUTH2. ``Endpoint.password`` is empty."""

    provider: TokenProvider


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to log in. ``tls``: ``implicit`` (993), ``starttls`` (required),
    ``starttls-or-plain`` (when offered, else plaintext), ``plain`` (never TLS).

    ``timeout``: seconds of silence after which a command is given up; ``connect_timeout``:
    for TCP + TLS handshake + greeting. ``ssl_context`` None means a verifying default.
    ``auth``: None for the account's own password, else how to log in without it.
    """

    host: str
    port: int
    tls: TlsMode
    ssl_context: ssl.SSLContext | None
    user: str
    password: Secret
    timeout: float = 60.0
    connect_timeout: float = 30.0
    auth: Impersonation | Bearer | None = None


# Client contexts by setting (and CA file version): building one loads its CA certificates,
# ~20 ms of CPU on the event loop for the system store, which every connection paid (a request
# with four folder workers opens eight). A context is never changed once built, so connections
# share it; one is rebuilt when its CA file changes and at least every CONTEXT_SECONDS (the
# system store may be updated while the daemon runs).
_CONTEXTS: dict[tuple[object, ...], tuple[float, ssl.SSLContext]] = {}
_CONTEXTS_MAX = 64
CONTEXT_SECONDS = 300.0


def make_ssl_context(ca_file: Path | str | None, verify: bool, legacy_tls: bool) -> ssl.SSLContext:
    """A client context: verifies against ``ca_file`` (only it) or the system CAs.

    ``verify=False`` checks neither chain nor host name. ``legacy_tls`` (opt-in per host, e.g.
    Exchange 2010, which speaks only TLS 1.0) allows TLS 1.0 with OpenSSL security level 0
    (SHA-1 signatures) and servers without secure renegotiation.

    The context is shared (see ``_CONTEXTS``): callers must not change it. An unreadable
    ``ca_file`` raises as ``ssl.create_default_context`` does, every time.
    """
    name = str(ca_file) if ca_file is not None else None
    try:
        stamp = _file_stamp(name) if name is not None else None
    except OSError:
        stamp = None  # not cached: building it raises the error the caller reports
    key = (name, verify, legacy_tls, stamp)
    now = time.monotonic()
    found = _CONTEXTS.get(key)
    if found is not None and now - found[0] < CONTEXT_SECONDS:
        return found[1]
    ctx = _build_context(name, verify, legacy_tls)
    if name is None or stamp is not None:
        if len(_CONTEXTS) >= _CONTEXTS_MAX:
            _CONTEXTS.clear()
        _CONTEXTS[key] = (now, ctx)
    return ctx


def _file_stamp(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _build_context(ca_file: str | None, verify: bool, legacy_tls: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if legacy_tls:
        with warnings.catch_warnings():  # "ssl.TLSVersion.TLSv1 is deprecated"
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.options |= _OP_LEGACY_SERVER_CONNECT
    return ctx


def login_name(account: Account, host: HostConfig) -> str:
    """The user name to send for ``account`` (``{user}``, ``{user}@{domain}``, ``DOM\\{user}``,
    with ``auth = "admin"`` also ``{domain}\\{admin}\\{user}`` or ``{user}*{admin}``)."""
    try:
        return host.login_format.format(
            user=account.userid, domain=account.domain, admin=host.admin_user or ""
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise PermanentError(
            f"hosts.{account.server!r}.login_format {host.login_format!r} is not usable: {exc}",
            host=account.server,
        ) from exc


def endpoint(account: Account, port: int, host: HostConfig, cfg: Config) -> Endpoint:
    """The endpoint for ``account`` on ``port`` with the overrides of its host.

    With ``auth = "admin"`` the administrator's password file is read here (``PermanentError``
    naming the key when it cannot be); with ``"oauth2"`` the application's shared token
    provider is attached (no token is asked for before the login).
    """
    tls: TlsMode = "implicit"
    if not (host.tls == "implicit" or (host.tls == "auto" and port == 993)):
        tls = "starttls-or-plain" if host.allow_plaintext else "starttls"
    auth: Impersonation | Bearer | None = None
    password = account.password
    if host.auth == "admin":
        password = admin_password(host, account.server)
        auth = Impersonation(host.admin_user or "", host.sasl_authzid)
    elif host.auth == "oauth2":
        password, auth = Secret(""), Bearer(provider_for(host))
    return Endpoint(
        host=account.server,
        port=port,
        tls=tls,
        ssl_context=make_ssl_context(host.ca_file, host.tls_verify, host.legacy_tls),
        user=login_name(account, host),
        password=password,
        timeout=cfg.imap.timeout,
        connect_timeout=cfg.imap.connect_timeout,
        auth=auth,
    )


DEFAULT_SOURCE_PORT = 993


def port_for(account: Account, direction: Direction, cfg: Config) -> int:
    """The port of ``account`` used as ``direction``: the one port rule, the same both ways.

    1. the port in the CSV, when the CSV gives one (only the source has a port column,
       ``sourceserverport``; an empty cell gives none);
    2. else the host's ``port`` for that direction: ``[hosts."x".source]`` or
       ``[hosts."x".dest]``, else ``[hosts."x"]``;
    3. else the default: 993 for the source, ``imap.dest_port`` (993 unless set) for the
       destination.
    """
    if account.port is not None:
        return account.port
    configured = cfg.host_for(account.server, direction).port
    if configured is not None:
        return configured
    return DEFAULT_SOURCE_PORT if direction == "source" else cfg.imap.dest_port


def source_endpoint(req: Request, cfg: Config) -> Endpoint:
    """The source of ``req`` with the settings of its host as a source (``port_for``)."""
    host = cfg.host_for(req.source.server, "source")
    return endpoint(req.source, port_for(req.source, "source", cfg), host, cfg)


def dest_port(req: Request, cfg: Config) -> int:
    """The destination port (``port_for``; the CSV has no destination port)."""
    return port_for(req.dest, "dest", cfg)


def with_ports(req: Request, cfg: Config) -> Request:
    """``req`` with both ports filled in by ``port_for`` (for results)."""
    source = replace(req.source, port=port_for(req.source, "source", cfg))
    return replace(req, source=source, dest=replace(req.dest, port=dest_port(req, cfg)))


def dest_endpoint(req: Request, cfg: Config) -> Endpoint:
    """The destination of ``req`` with the settings of its host as a destination."""
    host = cfg.host_for(req.dest.server, "dest")
    return endpoint(req.dest, dest_port(req, cfg), host, cfg)


# What a network, TLS or server problem can raise here; ``translate`` classifies exactly these.
CLASSIFIED = (ImapError, OSError, ssl.SSLError, WireError, ProtocolError)


def translate(exc: Exception, host: str, what: str) -> ImapError | InternalError:
    """The ``errors`` exception for ``exc``, raised while doing ``what`` on ``host``.

    - an error of ours (``ImapError``, ``InternalError``) is returned as it is;
    - the classified conditions (``CLASSIFIED``: the ``OSError`` family with timeouts and
      ``ssl`` errors, ``WireError`` = an unreadable server response, aioimaplib's
      ``ProtocolError``) become ``TransientError`` or ``PermanentError``;
    - anything else is a bug: ``InternalError`` naming ``what`` and the exception's type.

    Raise the result ``from chain(exc)``. Never raises itself. Cancellation (``BaseException``)
    is never translated.
    """
    if isinstance(exc, ImapError | InternalError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        # getattr: an error made outside the ssl module lacks these, and translate must not fail.
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
        detail = detail or "unknown reason"
        return PermanentError(f"{what}: certificate verify failed: {detail}", host=host)
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return TransientError(f"{what}: TLS connection closed during the handshake", host=host)
    if isinstance(exc, ssl.SSLError):
        text = str(exc).upper()
        hint = " (legacy_tls allows TLS 1.0)" if "VERSION" in text or "PROTOCOL" in text else ""
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        return PermanentError(f"{what}: TLS handshake failed: {reason}{hint}", host=host)
    if isinstance(exc, socket.gaierror):
        if exc.errno == socket.EAI_NONAME:
            return PermanentError(f"{what}: unknown host name", host=host)
        return TransientError(f"{what}: name lookup failed: {exc.strerror}", host=host)
    if isinstance(exc, ConnectionRefusedError):
        return TransientError(f"{what}: connection refused", host=host)
    if isinstance(exc, TimeoutError):
        return TransientError(f"{what}: timed out", host=host)
    if isinstance(exc, OSError):
        return TransientError(
            f"{what}: network error: {exc.strerror or type(exc).__name__}", host=host
        )
    if isinstance(exc, WireError):
        return TransientError(f"{what}: unreadable server response: {exc}", host=host)
    if isinstance(exc, ProtocolError):
        return TransientError(f"{what}: IMAP protocol error ({type(exc).__name__})", host=host)
    # Only the type: the text of an arbitrary exception may quote data (commands, arguments).
    where = f"{host}: " if host else ""
    return InternalError(f"{where}{what}: internal error ({type(exc).__name__})")


def chain(exc: Exception) -> BaseException | None:
    """What to raise ``translate(exc)`` from: nothing for a classified condition (its text is
    in the message already), the original exception for a bug (so that its traceback
    survives), and for an error of ours the cause it already has."""
    if isinstance(exc, ImapError | InternalError):
        return exc.__cause__
    return None if isinstance(exc, CLASSIFIED) else exc


def is_bug(exc: BaseException) -> bool:
    """True when ``exc`` is neither a classified condition nor an error of ours."""
    return not isinstance(exc, (*CLASSIFIED, InternalError))
