"""Small asyncio helpers shared by the daemon's service loops. No I/O."""

from __future__ import annotations

import asyncio


async def wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    """Return when one of ``events`` is set or after ``seconds``; leaves no task behind."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
