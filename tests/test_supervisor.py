"""Supervised services: restarted after a crash, a bounded number of times, then a stop."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from legacyflo_daemon.daemon.supervisor import Supervisor


def make(stop: asyncio.Event, gave_up: list[str], **kw: float) -> Supervisor:
    return Supervisor(stop, gave_up.append, first_pause=0.001, max_pause=0.01, **kw)  # type: ignore[arg-type]


async def test_a_crashing_service_is_restarted_then_given_up() -> None:
    stop, gave_up, runs = asyncio.Event(), [], []

    async def service() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    with capture_logs() as events:
        await make(stop, gave_up, max_restarts=3).run("watcher", service)
    assert len(runs) == 4  # the first run and three restarts
    assert gave_up == ["watcher"]
    crashed = [e for e in events if e["event"] == "service_crashed"]
    assert [e["crashes"] for e in crashed] == [1, 2, 3, 4]
    assert all(e["exc_info"] is True and e["service"] == "watcher" for e in crashed)
    assert [e["event"] for e in events][-1] == "service_gave_up"


async def test_a_service_that_recovers_keeps_running() -> None:
    stop, gave_up, runs, healthy = asyncio.Event(), [], [], asyncio.Event()

    async def service() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ValueError("transient bug")
        healthy.set()
        await stop.wait()

    sup = make(stop, gave_up, max_restarts=3)
    task = asyncio.create_task(sup.run("scheduler", service))
    await asyncio.wait_for(healthy.wait(), 5.0)
    assert not task.done()
    stop.set()
    await task
    assert gave_up == [] and sup.crashes == {"scheduler": 2}


async def test_a_long_healthy_run_starts_a_new_count() -> None:
    stop, gave_up, runs, sixth = asyncio.Event(), [], [], asyncio.Event()

    async def service() -> None:
        runs.append(1)
        if len(runs) < 6:
            raise RuntimeError("crash after a healthy run")
        sixth.set()
        await stop.wait()

    sup = make(stop, gave_up, max_restarts=1, healthy_after=0.0)  # every run counts as healthy
    task = asyncio.create_task(sup.run("status", service))
    await asyncio.wait_for(sixth.wait(), 5.0)
    stop.set()
    await task
    assert gave_up == []


async def test_cancellation_is_never_caught() -> None:
    stop, gave_up = asyncio.Event(), []
    started = asyncio.Event()

    async def service() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(make(stop, gave_up).run("watcher", service))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gave_up == []


async def test_the_pause_between_restarts_wakes_on_stop() -> None:
    stop, gave_up = asyncio.Event(), []

    async def service() -> None:
        raise RuntimeError("boom")

    sup = Supervisor(stop, gave_up.append, first_pause=3600.0)
    task = asyncio.create_task(sup.run("watcher", service))
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert gave_up == []
