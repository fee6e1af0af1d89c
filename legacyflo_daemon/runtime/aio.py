"""Small asyncio helpers shared by the daemon's service loops. No I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

A = TypeVar("A")
B = TypeVar("B")


async def wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    """Return when one of ``events`` is set or after ``seconds``; leaves no task behind."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Run two awaitables concurrently; their results, or the first error raised.

    Unlike ``asyncio.gather``, a failure cancels the other one (and waits for it to end), so
    no command is left running on a connection the caller is about to close. Unlike a
    ``TaskGroup``, the error is raised as it is, not wrapped in an ``ExceptionGroup``: the
    callers' retry logic depends on its type.
    """
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def all_or_first_error(*aws: Awaitable[None]) -> None:
    """Run ``aws`` concurrently until all end; on the first error cancel the rest (waiting for
    them) and raise that error unwrapped."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def settled(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` to end and raise its error (its cancellation as CancelledError).
    Unlike awaiting it, a cancellation of the waiter does not cancel ``future``: a folder
    waiting for the previous one must not stop that one mid-APPEND when it is cancelled."""
    await asyncio.wait((future,))
    future.result()
