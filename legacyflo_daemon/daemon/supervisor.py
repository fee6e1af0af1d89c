"""Supervised services: a crash is logged and the service restarted, a bounded number of times.

The daemon's long-running services (the watcher, the scheduler, the status reporter) each run
under ``Supervisor.run``. An exception in a service is logged once with its traceback
(``service_crashed``) and the service is started again after a pause that doubles each time;
after ``max_restarts`` crashes in a row the supervisor gives up (``service_gave_up``) and calls
``on_give_up`` — the daemon then stops gracefully: in-flight batches finish, unfinished
requests are re-queued, and nothing is lost. A ``StateUnusable`` (the state store damaged,
the disk full) is not a crash to retry: it goes to ``on_fatal`` at once. A service that ran
for ``healthy_after`` seconds before crashing starts a new count.

A service never takes the copies or the mail sender down with it: they live in scopes of their
own (see ``daemon.app``). Cancellation (the daemon's stop) is never caught here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from legacyflo_daemon.errors import StateUnusable
from legacyflo_daemon.runtime.aio import wait_any

log = structlog.get_logger("legacyflo_daemon.daemon.supervisor")

Service = Callable[[], Awaitable[None]]


class Supervisor:
    def __init__(
        self,
        stop: asyncio.Event,
        on_give_up: Callable[[str], None],
        *,
        max_restarts: int = 5,
        first_pause: float = 0.5,
        max_pause: float = 30.0,
        healthy_after: float = 300.0,
        on_fatal: Callable[[StateUnusable], None] | None = None,
    ) -> None:
        self.stop = stop
        self.on_give_up = on_give_up
        self.max_restarts = max_restarts
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.healthy_after = healthy_after
        self.on_fatal = on_fatal
        self.crashes: dict[str, int] = {}  # a snapshot for tests and status

    async def run(self, name: str, service: Service) -> None:
        """Run ``service`` until it returns or ``stop`` is set; never raises (except when
        cancelled)."""
        loop = asyncio.get_running_loop()
        crashes = 0
        while not self.stop.is_set():
            started = loop.time()
            try:
                await service()
                return
            except StateUnusable as exc:  # restarting cannot help: the daemon must stop
                if self.on_fatal is None:
                    raise
                self.on_fatal(exc)
                return
            except Exception:
                if loop.time() - started >= self.healthy_after:
                    crashes = 0
                crashes += 1
                self.crashes[name] = self.crashes.get(name, 0) + 1
                log.exception("service_crashed", service=name, crashes=crashes)
            if crashes > self.max_restarts:
                log.error("service_gave_up", service=name, crashes=crashes)
                self.on_give_up(name)
                return
            pause = min(self.max_pause, self.first_pause * 2 ** (crashes - 1))
            await wait_any((self.stop,), pause)
