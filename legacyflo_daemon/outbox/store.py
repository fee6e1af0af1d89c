"""The outbox: result, summary and report-mail files, and the delivery of the mails over SMTP.

Owns: ``outbox/`` and ``outbox/sent/`` (every file appears atomically, 0600), and ``deliver``:
the translation of aiosmtplib/ssl/OSError/timeouts into ``errors.SmtpError`` (the one SMTP
boundary). The ``MailSender`` task that retries pending mails with backoff is ``mailsender``'s
(still importable from here).
Must not: render anything (``report`` does), block or fail copying (``MailSender.run`` never
raises; mails wait in ``outbox/``), or let the SMTP password reach a message, log or file.

Exactly once: a mail is moved to ``sent/`` right after the server's 250 reply to DATA, before
QUIT. A crash (or the rename failing) in the microseconds between that 250 and the rename makes
the mail be sent once more after the restart; SMTP itself cannot close that window (RFC 1047).
A mail whose ``.eml`` has a namesake in ``sent/`` is never sent again.
Mails without a ``To`` header (no ``sendreportid``) are written for the record only: they stay
in ``outbox/`` and are never tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path
from typing import Any

import aiosmtplib

from legacyflo_daemon.config.schema import SmtpConfig
from legacyflo_daemon.errors import ConfigError, SmtpError
from legacyflo_daemon.model import REDACTED, Secret
from legacyflo_daemon.runtime.files import atomic_write, move, read_regular

SENT = "sent"
_MIN_RATE = 100_000  # bytes/s: below this a DATA transfer counts as stuck (outer deadline)


def _checked_name(name: str) -> str:
    """``name`` if it is a plain, visible file name; ``ValueError`` otherwise."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\0" in name:
        raise ValueError(f"not a usable outbox file name: {name!r}")
    return name


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def _move_to_sent(path: Path) -> Path:
    target = path.parent / SENT / path.name
    move(path, target)
    return target


class Outbox:
    """The files of one ``outbox/`` directory (created 0700 with ``sent/`` inside)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.sent_dir = directory / SENT
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sent_dir.mkdir(mode=0o700, exist_ok=True)

    def write_result(self, request_id: str, result_json: Mapping[str, Any]) -> Path:
        """Write ``<request_id>.json`` (sorted keys, indent 2, UTF-8), replacing an older one."""
        path = self.dir / _checked_name(f"{request_id}.json")
        atomic_write(path, _json_bytes(result_json))
        return path

    def write_summary(self, csv_name: str, data: Mapping[str, Any]) -> Path:
        """Write ``<csv name>.summary.json``."""
        path = self.dir / _checked_name(f"{csv_name}.summary.json")
        atomic_write(path, _json_bytes(data))
        return path

    def write_mail(self, request_id: str, eml: bytes) -> Path:
        """Write ``<request_id>.eml``; it is pending until delivered (unless already in sent/)."""
        path = self.dir / _checked_name(f"{request_id}.eml")
        atomic_write(path, eml)
        return path

    def pending_mails(self) -> list[Path]:
        """``.eml`` files of ``outbox/`` not yet delivered (no namesake in ``sent/``), sorted."""
        sent = {p.name for p in self.sent_dir.iterdir()}
        return sorted(
            p
            for p in self.dir.iterdir()
            if p.suffix == ".eml" and not p.name.startswith(".") and p.name not in sent
        )

    def mark_sent(self, path: Path) -> Path:
        """Move a delivered mail into ``sent/`` (atomic rename, both directories fsynced)."""
        if path.parent != self.dir:
            raise ValueError(f"{path} is not in {self.dir}")
        return _move_to_sent(path)


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
        sent = _move_to_sent(path)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        what = "delivered, but not moved to sent/" if delivered else type(exc).__name__
        raise SmtpError(_scrub(f"{where}: {what}: {exc}", password)) from None
    finally:
        if delivered:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(smtp.timeout):
                    await client.quit()
        client.close()
    if refused:
        detail = ", ".join(f"{rcpt}: {resp.code} {resp.message}" for rcpt, resp in refused.items())
        raise SmtpError(_scrub(f"{where}: delivered, but recipients refused: {detail}", password))
    return sent


def _scrub(message: str, password: Secret | None) -> str:
    # Belt and braces: no known aiosmtplib error quotes the password, but a server reply might.
    if password and password.reveal() in message:
        return message.replace(password.reveal(), REDACTED)
    return message
