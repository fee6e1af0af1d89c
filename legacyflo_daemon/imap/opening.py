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
- Impersonation (``endpoint.Impersonation``) with ``sasl``: ``AUTHENTICATE PLAIN`` with the
  mailbox as authorization identity, which needs ``AUTH=PLAIN``; without: as above.
- OAuth (``endpoint.Bearer``): ``AUTHENTICATE OAUTHBEARER`` when offered, else ``XOAUTH2``; a
  server's error challenge (``+ <base64 JSON>``) is answered as the mechanism wants (an empty
  line, ``AQ==``) and its status goes into the error. A refused token is dropped from the
  provider (the next login asks for a new one) but never retried here.
- A refusal under impersonation or OAuth names what to grant (``AuthenticationFailed``).
"""

from __future__ import annotations

import asyncio
import ssl

from legacyflo_daemon.errors import (
    AuthenticationFailed,
    ConnectionLimited,
    PermanentError,
    TransientError,
)
from legacyflo_daemon.imap._aioimaplib.protocol import AUTH, LOGOUT, NONAUTH, ImapProtocol
from legacyflo_daemon.imap.connection import Connection, Reply
from legacyflo_daemon.imap.endpoint import (
    Bearer,
    Endpoint,
    Impersonation,
    chain,
    make_ssl_context,
    translate,
)
from legacyflo_daemon.imap.syntax import responses, sasl
from legacyflo_daemon.imap.syntax.parse import code_capabilities
from legacyflo_daemon.imap.syntax.wire import CRLF, astring, decode
from legacyflo_daemon.model import Secret


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


async def _authenticate(conn: Connection, mechanism: str, data: str, abort: bytes) -> Reply:
    """``AUTHENTICATE mechanism`` with the initial response ``data`` (base64): in the command
    line with SASL-IR, else on the first continuation; a challenge after it gets ``abort``."""
    if "SASL-IR" in conn.capabilities:
        return await conn.run(
            "AUTHENTICATE", [mechanism, data], what="AUTHENTICATE", cancel=True, abort=abort
        )
    return await conn.run(
        "AUTHENTICATE",
        [mechanism],
        what="AUTHENTICATE",
        sends=[[data.encode("ascii") + CRLF]],
        cancel=True,
        abort=abort,
    )


async def _authenticate_plain(
    conn: Connection, user: str, password: str, authzid: str = ""
) -> Reply:
    return await _authenticate(conn, "PLAIN", sasl.plain(user, password, authzid), b"*")


async def _authenticate_bearer(conn: Connection, bearer: Bearer) -> tuple[Reply, str, Secret]:
    """One OAuth login: (reply, mechanism, the token sent). The mechanism is chosen before a
    token is asked for: a server that takes neither needs no token."""
    ep = conn.ep
    if "AUTH=OAUTHBEARER" in conn.capabilities:
        mechanism, abort = "OAUTHBEARER", sasl.OAUTHBEARER_ABORT
    elif "AUTH=XOAUTH2" in conn.capabilities:
        mechanism, abort = "XOAUTH2", sasl.XOAUTH2_ABORT
    else:
        raise PermanentError(
            'the server offers neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER: auth = "oauth2" '
            "cannot log in here (is it Exchange Online, outlook.office365.com?)",
            host=ep.host,
        )
    token = await bearer.provider.token(ep.host)
    if mechanism == "OAUTHBEARER":
        data = sasl.oauthbearer(ep.user, token.reveal(), ep.host, ep.port)
    else:
        data = sasl.xoauth2(ep.user, token.reveal())
    return await _authenticate(conn, mechanism, data, abort), mechanism, token


def _refused(ep: Endpoint, reply: Reply, mechanism: str) -> AuthenticationFailed:
    """The one-line error for a login refused under impersonation or OAuth: what to grant."""
    said = responses.one_line(reply.text, [ep.password]) or "(no text from the server)"
    if isinstance(ep.auth, Bearer):
        app = ep.auth.provider.app
        status = next((sasl.challenge_status(c) for c in reply.challenges), None)
        detail = f"{said}; {status}" if status else said
        return AuthenticationFailed(
            f"{mechanism} token of application {app.client_id} refused for {ep.user!r} "
            f"({detail}): the application needs the Office 365 Exchange Online application "
            "permission IMAP.AccessAsApp with admin consent, a service principal in Exchange "
            f"(New-ServicePrincipal -AppId {app.client_id} -ObjectId <its enterprise "
            "application's object ID>) and access to this mailbox (Add-MailboxPermission "
            f"-Identity {ep.user} -User <that service principal> -AccessRights FullAccess)",
            host=ep.host,
        )
    assert isinstance(ep.auth, Impersonation)
    admin = ep.auth.admin
    return AuthenticationFailed(
        f"authentication failed for administrator {admin!r} acting as {ep.user!r} ({said}): "
        f"either admin_password_file is wrong or {admin!r} may not open this mailbox; grant it "
        f"(Exchange: Add-MailboxPermission -Identity <mailbox> -User {admin} -AccessRights "
        "FullAccess; Dovecot: a master user in a passdb with master = yes; Cyrus: admins in "
        "imapd.conf)",
        host=ep.host,
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
        mechanism, token = "", None
        if isinstance(ep.auth, Bearer):
            reply, mechanism, token = await _authenticate_bearer(conn, ep.auth)
        elif isinstance(ep.auth, Impersonation) and ep.auth.sasl:
            if "AUTH=PLAIN" not in conn.capabilities:
                raise PermanentError(
                    "the server does not offer AUTHENTICATE PLAIN, which sasl_authzid needs: "
                    "use login_format with {admin} instead",
                    host=ep.host,
                )
            reply = await _authenticate_plain(conn, ep.auth.admin, password, authzid=user)
        elif "AUTH=PLAIN" in conn.capabilities:
            reply = await _authenticate_plain(conn, user, password)
        else:
            reply = await conn.run("LOGIN", [astring(user), astring(password)], what="LOGIN")
        outcome = responses.classify_login(reply.result, reply.text)
        if outcome == "auth" and ep.auth is not None:
            if isinstance(ep.auth, Bearer) and token is not None:
                ep.auth.provider.invalidate(token)
            raise _refused(ep, reply, mechanism)
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
