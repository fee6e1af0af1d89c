"""Delivery of one report mail over SMTP (aiosmtplib).

Owns: ``deliver`` and everything it needs: the envelope taken from the mail's headers, the SMTP
password (read at the moment of use), TLS options, the HELO name, and the translation of
aiosmtplib/ssl/OSError/timeouts into ``errors.SmtpError`` (the one SMTP boundary).
Must not: decide when to send or retry (``outbox.sender``'s ``MailSender`` does), write files
other than the move into ``sent/`` (``outbox.store``), or let the SMTP password reach a message,
log or file.

Exactly once: a mail is moved to ``sent/`` right after the server's 250 reply to DATA, before
QUIT. A crash (or the rename failing) in the microseconds between that 250 and the rename makes
the mail be sent once more after the restart; SMTP itself cannot close that window (RFC 1047).
Mails without a ``To`` header (no ``sendreportid``) are written for the record only: ``deliver``
refuses them and ``MailSender`` never tries them.

``aiosmtplib`` is imported by the first delivery, not with this module (a daemon without
``[smtp]`` never loads it: issue 14, start-up time); a daemon with ``[smtp]`` calls
``require_aiosmtplib`` at its start, so that a missing package stops it with one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import ssl
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path
from typing import Any

from legacyflo_daemon.config.packages import require_package
from legacyflo_daemon.config.schema import SmtpConfig
from legacyflo_daemon.errors import ConfigError, SmtpError
from legacyflo_daemon.model import Secret
from legacyflo_daemon.outbox.store import move_to_sent
from legacyflo_daemon.runtime.files import read_regular
from legacyflo_daemon.runtime.secrets import redact

_MIN_RATE = 100_000  # bytes/s: below this a DATA transfer counts as stuck (outer deadline)


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    recipients: tuple[str, ...]


def envelope(eml: bytes) -> Envelope:
    """MAIL FROM and RCPT TO of a mail: the address of ``From`` and those of ``To``."""
    headers = BytesHeaderParser(policy=default).parsebytes(eml)
    sender = headers["From"]
    senders = getattr(sender, "addresses", ()) if sender is not None else ()
    to = headers["To"]
    recipients = tuple(a.addr_spec for a in getattr(to, "addresses", ()) if a.addr_spec)
    return Envelope(senders[0].addr_spec if senders else "", recipients)


def smtp_password(smtp: SmtpConfig) -> Secret | None:
    """``SmtpConfig.password()`` (file or environment variable), its ``ConfigError`` as an
    ``SmtpError``: at send time a missing password is a delivery failure, retried later.
    Errors name the file or the variable, never the value."""
    try:
        return smtp.password()
    except ConfigError as exc:
        raise SmtpError(str(exc)) from None


def require_aiosmtplib(config_path: str) -> None:
    """Import ``aiosmtplib`` now (``deliver`` needs it); ``ConfigError`` naming the package if
    it is not installed."""
    require_package(
        lambda: importlib.import_module("aiosmtplib"), config_path, "smtp",
        "sending report mails", ", or remove [smtp]",
    )  # fmt: skip


def _tls_options(smtp: SmtpConfig) -> dict[str, Any]:
    if smtp.tls == "none":
        return {"use_tls": False, "start_tls": False}
    if smtp.tls not in ("starttls", "implicit"):
        raise SmtpError(f"smtp.tls: unknown mode {smtp.tls!r}")
    cafile = str(smtp.ca_file) if smtp.ca_file is not None else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise SmtpError(f"smtp.ca_file {smtp.ca_file}: {exc}") from None
    return {"use_tls": smtp.tls == "implicit", "start_tls": smtp.tls == "starttls",
            "tls_context": context}  # fmt: skip


def _helo_name(sender: str) -> str:
    # Never socket.getfqdn(): it can hang on DNS. The sender's domain is what relays expect.
    domain = sender.rpartition("@")[2]
    return domain if "." in domain else socket.gethostname()


async def deliver(path: Path, smtp: SmtpConfig, *, local_hostname: str | None = None) -> Path:
    """Send the mail ``path`` to the addresses of its ``To`` header; move it to ``sent/``.

    Returns the new path in ``sent/``. Raises ``SmtpError`` (message without the password) for
    every failure; the file then stays where it is. If the server accepts DATA but has refused
    some recipients, the mail still moves to ``sent/`` (resending would duplicate it for the
    others) and ``SmtpError`` names the refused ones.
    """
    try:
        eml = await asyncio.to_thread(read_regular, path)
    except OSError as exc:
        raise SmtpError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    env = envelope(eml)
    if not env.recipients:
        raise SmtpError(f"{path.name}: no To address; the mail is kept for the record only")
    password = smtp_password(smtp) if smtp.username else None
    if smtp.username and not password:
        raise SmtpError("smtp.username is set but neither password_file nor password_env is")
    where = f"{smtp.host}:{smtp.port}"
    import aiosmtplib  # see the module docstring

    client = aiosmtplib.SMTP(
        hostname=smtp.host,
        port=smtp.port,
        username=smtp.username,
        password=password.reveal() if password else None,
        local_hostname=local_hostname or _helo_name(env.sender),
        timeout=smtp.timeout,
        **_tls_options(smtp),
    )
    delivered = False
    try:
        async with asyncio.timeout(smtp.timeout * 3 + len(eml) / _MIN_RATE):
            await client.connect()
            refused, _ = await client.sendmail(env.sender, list(env.recipients), eml)
        delivered = True
        # 250 to DATA received: the mail is the server's now. Record that before anything else
        # (QUIT included) so that no later failure can make us send it twice.
        sent = move_to_sent(path)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        what = "delivered, but not moved to sent/" if delivered else type(exc).__name__
        # No known aiosmtplib error quotes the password, but a server reply might (also as
        # the base64 of AUTH PLAIN/LOGIN): belt and braces.
        message = redact(f"{where}: {what}: {exc}", password, user=smtp.username)
        raise SmtpError(message) from None
    finally:
        if delivered:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(smtp.timeout):
                    await client.quit()
        client.close()
    if refused:
        detail = ", ".join(f"{rcpt}: {resp.code} {resp.message}" for rcpt, resp in refused.items())
        message = f"{where}: delivered, but recipients refused: {detail}"
        raise SmtpError(redact(message, password, user=smtp.username))
    return sent
