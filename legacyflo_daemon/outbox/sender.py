"""The task that delivers pending report mails from the outbox, with per-mail backoff.

Owns: ``MailSender``: when to try which mail (periodically, on ``kick()``, after backoff), the
in-memory attempt counts and set-aside mails, and the ``report_sent`` / ``report_send_failed``
/ ``report_send_internal_error`` log events.
Errors: only ``SmtpError`` (what ``deliver`` makes of every SMTP, TLS, network and timeout
failure, and a mail file that cannot be read) is delivery trouble, retried with backoff. Any
other exception is a bug: logged once with its traceback, and that mail is set aside (it stays
in ``outbox/`` and is not tried again until the next start) while the others go on.
Daemons sharing a spool (a cluster): every node's sender sees every pending mail; a mail is
delivered only while its node holds the mail's lease (``exclusive``, a lock in the shared
database that the server releases when the node dies) and only if it is still pending once the
lease is held, so each mail goes out once across the nodes.

Must not: talk SMTP or write files (``outbox.smtp.deliver``, ``outbox.store.Outbox``), retry a
bug, or ever stop on a failing mail: ``run`` never raises, and mails wait in ``outbox/``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import structlog

from legacyflo_daemon.config.schema import SmtpConfig
from legacyflo_daemon.errors import SmtpError
from legacyflo_daemon.outbox.smtp import deliver, envelope
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.runtime.aio import wait_any


@dataclass(slots=True)
class _Attempts:
    count: int
    next_try: float  # loop.time() before which the mail is not tried again


class MailSender:
    """Delivers pending report mails, periodically and on ``kick()``, with per-mail backoff.

    After ``n`` failed attempts (``SmtpError``) a mail waits
    ``min(backoff_base * 2**(n-1), backoff_max)`` seconds. A mail whose attempt raised anything
    else (a bug) is set aside: not tried again by this process. The attempt counts and the
    set-aside mails live in memory only: after a restart every pending mail is simply tried
    again. With ``smtp`` None nothing is sent; mails wait in ``outbox/``.
    Logs ``report_sent``, ``report_send_failed`` (with ``request_id`` and ``error``) and, once
    per set-aside mail, ``report_send_internal_error`` (``request_id``, with the traceback).
    """

    def __init__(
        self,
        outbox: Outbox,
        smtp: SmtpConfig | None,
        *,
        interval: float = 60.0,
        backoff_base: float = 30.0,
        backoff_max: float = 3600.0,
        local_hostname: str | None = None,
        exclusive: Callable[[str], AbstractContextManager[bool]] | None = None,
    ) -> None:
        """``exclusive(key)``: the cluster's lease on ``key`` (True while this node holds it);
        None for the only daemon."""
        self.outbox = outbox
        self.exclusive = exclusive or (lambda key: contextlib.nullcontext(True))
        self.smtp = smtp
        self.interval = interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.local_hostname = local_hostname
        self._attempts: dict[str, _Attempts] = {}
        self._unaddressed: set[str] = set()  # names of mails without To: never tried
        self._set_aside: set[str] = set()  # names of mails whose attempt hit a bug: not retried
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._log = structlog.get_logger()

    def kick(self) -> None:
        """Try the pending mails now (e.g. a new report was just written)."""
        self._wake.set()

    def statistics(self) -> dict[str, int]:
        """A snapshot: mails failing at least once, mails never tried for lack of a To, and
        pending mails set aside after an internal error."""
        return {
            "retrying": len(self._attempts),
            "unaddressed": len(self._unaddressed),
            "set_aside": len(self._set_aside),
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set. Never raises (except cancellation)."""
        while not stop.is_set():
            self._wake.clear()  # before the pass: a kick during the pass triggers another
            await self.send_pending(stop)
            await wait_any((stop, self._wake), self._sleep_time())

    def _sleep_time(self) -> float:
        now = asyncio.get_running_loop().time()
        due = [a.next_try - now for a in self._attempts.values()]
        return max(0.0, min([self.interval, *due]))

    async def send_pending(self, stop: asyncio.Event | None = None) -> int:
        """One pass over the pending mails that are due; returns how many were delivered.

        With ``stop`` set the pass ends after the mail being delivered (never in the middle of
        one: a delivery cut after the server's 250 would be repeated by the next start)."""
        if self.smtp is None:
            return 0
        async with self._lock:
            try:
                pending = self.outbox.pending_mails()
            except OSError as exc:
                self._log.error("report_send_failed", request_id=None, error=str(exc))
                return 0
            names = {p.name for p in pending}
            for gone in set(self._attempts) - names:
                del self._attempts[gone]
            self._set_aside &= names
            sent = 0
            for path in pending:
                if stop is not None and stop.is_set():
                    break
                sent += await self._try(path, self.smtp)
            return sent

    async def _try(self, path: Path, smtp: SmtpConfig) -> int:
        loop = asyncio.get_running_loop()
        attempts = self._attempts.get(path.name)
        if path.name in self._unaddressed or path.name in self._set_aside:
            return 0
        if attempts and attempts.next_try > loop.time():
            return 0
        request_id = path.stem
        try:
            with self.exclusive(f"mail {path.name}") as mine:
                # Another node delivers it right now, or did since the pass listed it.
                if not mine or not await asyncio.to_thread(path.exists):
                    return 0
                if not await asyncio.to_thread(_has_recipient, path):
                    self._unaddressed.add(path.name)
                    self._log.info("report_not_addressed", request_id=request_id)
                    return 0
                await deliver(path, smtp, local_hostname=self.local_hostname)
        except SmtpError as exc:  # delivery trouble: try again after a while
            count = attempts.count + 1 if attempts else 1
            wait = min(self.backoff_base * 2 ** (count - 1), self.backoff_max)
            self._attempts[path.name] = _Attempts(count, loop.time() + wait)
            self._log.warning(
                "report_send_failed", request_id=request_id, error=str(exc), attempt=count,
                retry_in=round(wait, 3),
            )  # fmt: skip
            return 0
        except Exception:  # a bug: retrying cannot help; this task outlives it
            self._attempts.pop(path.name, None)
            self._set_aside.add(path.name)
            self._log.exception("report_send_internal_error", request_id=request_id)
            return 0
        self._attempts.pop(path.name, None)
        self._log.info("report_sent", request_id=request_id, to_host=smtp.host)
        return 1


def _has_recipient(path: Path) -> bool:
    """Whether the mail has a ``To`` address; ``SmtpError`` when it cannot be read (as in
    ``deliver``: the file may be gone or unreadable for now, which is no bug)."""
    try:
        with path.open("rb") as f:
            head = f.read(64 * 1024)  # our headers are far smaller
    except OSError as exc:
        raise SmtpError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    return bool(envelope(head).recipients)
