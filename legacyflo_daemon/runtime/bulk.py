"""Bulk work (parsing a CSV, building a report) off the event loop: ``in_thread``, ``cooperative``.

It runs in a worker thread, with Python's cyclic garbage collector paused meanwhile, and its
loops hand the interpreter lock over to the event loop every few items (``cooperative``).

Why the hand-over: measured here, a worker thread looping over 100,000 listing entries
(json, csv, str work) kept the event loop waiting for the lock 20 to 120 ms at a time although
the switch interval is 5 ms; a ``time.sleep(0)`` every 200 items (it releases the lock) brought
the worst wait to 2.5 ms at no measurable cost.

Why: the event loop and the worker threads share one interpreter lock, and a full (oldest
generation) collection holds it for as long as it takes to walk every tracked object — 60 to
260 ms, and growing, while a 50,000-row CSV is being tokenized into ~1 million small objects.
Those pauses land on whichever thread triggered them and stop the event loop just the same.
The bulk work creates no reference cycles (its objects are freed by reference counting when it
returns), so the collector is paused for its duration: the loop then gets the lock back every
switch interval (5 ms).

The pause is process-wide; ``paused()`` counts its users, so overlapping pauses end with the
last one, and the collector is enabled again afterwards only if it was enabled before.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_users = 0
_was_enabled = True


@contextmanager
def paused() -> Iterator[None]:
    """No automatic cyclic collection while the block runs (in any thread)."""
    global _users, _was_enabled
    with _lock:
        if _users == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _was_enabled:
                gc.enable()


def _paused_call(call: Callable[[], T]) -> T:
    with paused():
        return call()


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread (``asyncio.to_thread``: the caller's context
    variables, such as the bound ``request_id``, go along), the collector paused meanwhile."""
    return await asyncio.to_thread(_paused_call, functools.partial(fn, *args, **kwargs))


def let_loop_run() -> None:
    """Release the interpreter lock for a moment (from a worker thread)."""
    time.sleep(0)


def cooperative(items: Iterable[T], every: int = 200) -> Iterator[T]:
    """``items``, releasing the interpreter lock every ``every`` items."""
    for n, item in enumerate(items, start=1):
        if n % every == 0:
            let_loop_run()
        yield item
