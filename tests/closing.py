"""Connections a test closed are closed before its event loop is: no stray ResourceWarning.

Owns: waiting, at the end of every asyncio test's body, until each socket transport of the test's
loop whose close has begun has actually closed its socket.
Must not: close anything itself (a connection nobody closed is not this module's to hide), or wait
for connections still in use (an async fixture may close them in its teardown).

Why: ``transport.close()`` does not close the socket at once. A plain transport closes it in a
later turn of the loop; a TLS transport first exchanges ``close_notify`` with the peer (up to
``ssl_shutdown_timeout``, 30 s). aiosmtplib's ``SMTP.close()`` (what ``outbox.deliver`` ends with)
and an IMAP session's close return before that. pytest-asyncio closes the loop right after the
test, so under load the socket was sometimes left open, and its ``ResourceWarning: unclosed
transport`` surfaced whenever the garbage collector next ran: as an error of some later,
unrelated test (e.g. ``test_outbox.py::test_failures_keep_the_mail_and_hide_the_password[
plain-none-False-True-535]`` after a TLS delivery test).
"""

from __future__ import annotations

import asyncio
from asyncio import sslproto
from typing import Any

from tests.e2ehelp import wait_until_async

CLOSE_TIMEOUT = 10.0  # seconds for a started close to finish, TLS close_notify included


def _socket_open(transport: Any) -> bool:
    return getattr(transport, "_sock", None) is not None


def _closing(transport: Any) -> bool:
    """Close begun, socket not yet closed: the transport's own close, or a TLS shutdown above it."""
    if not _socket_open(transport):
        return False
    if transport.is_closing():
        return True
    protocol = transport.get_protocol()
    if isinstance(protocol, sslproto.SSLProtocol):
        app = getattr(protocol, "_app_transport", None)
        return app is not None and app.is_closing()
    return False


def closing_transports(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """The socket transports of ``loop`` (a selector loop) that are closing but not closed."""
    transports = getattr(loop, "_transports", None)
    if transports is None:
        return []
    return [t for t in list(transports.values()) if _closing(t)]


def _describe(transport: Any) -> str:
    try:
        peer = transport.get_extra_info("peername")
    except Exception:
        peer = None
    return f"{type(transport).__name__} to {peer} ({type(transport.get_protocol()).__name__})"


async def settle() -> None:
    """Wait until no transport of the running loop is half-closed; fail naming those that stay."""
    loop = asyncio.get_running_loop()
    if not closing_transports(loop):
        return
    try:
        await wait_until_async(
            lambda: not closing_transports(loop), CLOSE_TIMEOUT, "closing connection to close"
        )
    except AssertionError:
        left = ", ".join(_describe(t) for t in closing_transports(loop))
        raise AssertionError(
            f"connections closed by the test were still not closed {CLOSE_TIMEOUT} s after it "
            f"ended: {left}"
        ) from None
