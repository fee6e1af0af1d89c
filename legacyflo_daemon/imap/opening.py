"""Opening an IMAP connection: TCP, TLS (implicit or STARTTLS), greeting, capabilities, login.

Owns: the order of these steps and their rules. ``start()`` gives an unauthenticated connection
(TLS decided), ``login()`` makes exactly one authentication attempt; ``open_connection()`` is
both. Must not: retry anything (a second wrong password counts against lockout) or log.
Errors are classified by ``endpoint.translate``: a bug anywhere in these steps (also in the
protocol's handling of the greeting) is ``InternalError`` chained to the original exception.

Rules:
- ``implicit``: TLS from the first byte. ``starttls``: STARTTLS required (aioimaplib has no
  STARTTLS; done here with ``loop.start_tls``), capabilities re-read after it.
  ``starttls-or-plain``: STARTTLS when offered, else plaintext. ``plain``: never TLS.
- The greeting is awaited under ``connect_timeout`` and the transport is aborted when it does
  not come (aioimaplib's own greeting wait can hang forever, issue #128).
- Never authenticate while the server says ``LOGINDISABLED``.
- ``AUTHENTICATE PLAIN`` when ``AUTH=PLAIN`` is offered (carries any user name and password,
  SASL-IR in one line when offered, an unexpected challenge is cancelled with ``*``); else
  ``LOGIN`` with quoted strings, or literals for what a quoted string cannot carry.
"""

from __future__ import annotations

import asyncio
import base64
import ssl

from legacyflo_daemon.errors import ConnectionLimited, PermanentError, TransientError
from legacyflo_daemon.imap._aioimaplib.protocol import AUTH, LOGOUT, NONAUTH, ImapProtocol
from legacyflo_daemon.imap.connection import Connection, Reply
from legacyflo_daemon.imap.endpoint import Endpoint, chain, make_ssl_context, translate
from legacyflo_daemon.imap.syntax import responses
from legacyflo_daemon.imap.syntax.parse import code_capabilities
from legacyflo_daemon.imap.syntax.wire import CRLF, astring, decode


def _context(ep: Endpoint) -> ssl.SSLContext:
    return ep.ssl_context or make_ssl_context(None, verify=True, legacy_tls=False)


async def _greeting(conn: Connection) -> None:
    ep, proto = conn.ep, conn.proto
    ctx = _context(ep) if ep.tls == "implicit" else None
    where = f"connect to port {ep.port}"
    try:
        async with asyncio.timeout(ep.connect_timeout):
            await proto.loop.create_connection(
                lambda: proto,
                ep.host,
                ep.port,
                ssl=ctx,
                ssl_handshake_timeout=ep.connect_timeout if ctx else None,
            )
            await asyncio.wait((proto.greeting, proto.lost), return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise TransientError(
            f"{where}: no greeting within {ep.connect_timeout:g} s", host=ep.host
        ) from None
    except (ssl.SSLEOFError, ConnectionResetError) as exc:
        # Accepted, then closed at once: how Courier's -maxperip (and many per-address limits
        # behind TLS) refuse one connection too many.
        raise ConnectionLimited(
            f"{where}: closed by the server before the greeting (a connection limit?)",
            host=ep.host,
        ) from chain(exc)
    except (OSError, ssl.SSLError) as exc:
        raise translate(exc, ep.host, where) from chain(exc)
    if not proto.greeting.done():
        if proto.error is not None:  # the greeting could not be handled: a bug or garbage
            raise translate(proto.error, ep.host, where) from chain(proto.error)
        raise ConnectionLimited(
            f"{where}: closed by the server before the greeting (a connection limit?)",
            host=ep.host,
        )
    greeting = decode(proto.greeting.result())
    if proto.state == LOGOUT:  # "* BYE Too many connections" and the like
        limited = responses.classify_response("other", "BYE", greeting) == "limited"
        raise (ConnectionLimited if limited else TransientError)(
            f"{where}: refused: {responses.one_line(greeting)}",
            host=ep.host,
            retry_after=responses.suggested_backoff(greeting),
        )
    conn.capabilities = code_capabilities(greeting) or await conn.capability()


async def _starttls(conn: Connection) -> None:
    ep, proto = conn.ep, conn.proto
    if ep.tls not in ("starttls", "starttls-or-plain"):
        return
    if "STARTTLS" not in conn.capabilities:
        if ep.tls == "starttls":
            raise PermanentError(
                f"port {ep.port} does not offer STARTTLS, and plaintext is not allowed for "
                "this host",
                host=ep.host,
            )
        return
    if proto.state != NONAUTH:
        raise PermanentError("the server logged us in before STARTTLS (PREAUTH)", host=ep.host)
    proto.silent_after_tagged = True
    reply = await conn.run("STARTTLS", what="STARTTLS")
    if reply.result != "OK":
        raise PermanentError(f"STARTTLS refused: {responses.one_line(reply.text)}", host=ep.host)
    if proto.incomplete_line or proto.failure is not None:
        # Bytes after the OK, complete lines included, would be read as if they had come
        # through TLS (the STARTTLS command injection of CVE-2011-0411): never go on.
        raise PermanentError("the server sent data right after STARTTLS", host=ep.host)
    proto.silent_after_tagged = proto.tagged_seen = False
    try:
        async with asyncio.timeout(ep.connect_timeout):
            proto.transport = await proto.loop.start_tls(
                proto.transport,
                proto,
                _context(ep),
                server_hostname=ep.host,
                ssl_handshake_timeout=ep.connect_timeout,
            )
    except TimeoutError:
        raise TransientError("STARTTLS: TLS handshake timed out", host=ep.host) from None
    except (OSError, ssl.SSLError) as exc:
        raise translate(exc, ep.host, "STARTTLS") from chain(exc)
    conn.tls = True
    await conn.capability()  # RFC 3501: forget everything the server said in clear


async def start(ep: Endpoint) -> Connection:
    """A connected, not yet authenticated connection, with TLS as ``ep.tls`` says.

    Errors as ``open_connection``; on failure nothing is left open.
    """
    conn = Connection(ep, ImapProtocol(asyncio.get_running_loop()))
    try:
        await _greeting(conn)
        await _starttls(conn)
    except Exception as exc:
        conn.kill("connect failed")
        raise translate(exc, ep.host, "connect") from chain(exc)
    except BaseException:
        conn.kill("connect cancelled")
        raise
    return conn


async def _authenticate_plain(conn: Connection, user: str, password: str) -> Reply:
    raw = b"\0".join(s.encode("utf-8", "surrogateescape") for s in ("", user, password))
    token = base64.b64encode(raw).decode("ascii")
    if "SASL-IR" in conn.capabilities:
        return await conn.run("AUTHENTICATE", ["PLAIN", token], what="AUTHENTICATE", cancel=True)
    return await conn.run(
        "AUTHENTICATE",
        ["PLAIN"],
        what="AUTHENTICATE",
        sends=[[token.encode("ascii") + CRLF]],
        cancel=True,
    )


async def login(conn: Connection) -> None:
    """One authentication attempt with the endpoint's credentials (see module docstring).

    ``AuthenticationFailed`` ("authentication failed for 'user'") when the server refuses the
    credentials; the connection is then closed. ``PermanentError`` for ``LOGINDISABLED`` or a
    NUL in the credentials (nothing is sent).
    """
    ep, proto = conn.ep, conn.proto
    try:
        if proto.state == AUTH:  # PREAUTH greeting: nothing to send
            return
        if "LOGINDISABLED" in conn.capabilities:
            raise PermanentError(
                "the server refuses to log in without TLS (LOGINDISABLED)", host=ep.host
            )
        user, password = ep.user, ep.password.reveal()
        if "\0" in user or "\0" in password:
            raise PermanentError(
                "the user name or password contains a NUL character, which IMAP cannot send",
                host=ep.host,
            )
        if "AUTH=PLAIN" in conn.capabilities:
            reply = await _authenticate_plain(conn, user, password)
        else:
            reply = await conn.run("LOGIN", [astring(user), astring(password)], what="LOGIN")
        outcome = responses.classify_login(reply.result, reply.text)
        if outcome != "ok":
            what = f"authentication failed for {user!r}" if outcome == "auth" else "login"
            raise responses.error_for(
                outcome, ep.host, reply.text, what=what, secrets=[ep.password]
            )
        proto.state = AUTH
        conn.capabilities = code_capabilities(reply.text) or await conn.capability()
    except Exception as exc:
        conn.kill("login failed")
        raise translate(exc, ep.host, "login") from chain(exc)
    except BaseException:
        conn.kill("login cancelled")
        raise


async def open_connection(ep: Endpoint) -> Connection:
    """Connect, TLS (implicit or STARTTLS), capabilities, one login attempt.

    Raises ``AuthenticationFailed`` (wrong credentials; never retry), ``PermanentError``
    (certificate verify failed, TLS handshake failure, no STARTTLS where required,
    LOGINDISABLED, NUL in credentials, unknown host), ``TransientError`` (network, timeouts,
    greeting ``BYE``, throttling with ``retry_after``) or ``InternalError`` (a bug, chained to
    the original exception). On failure nothing is left open.
    """
    conn = await start(ep)
    await login(conn)
    return conn
