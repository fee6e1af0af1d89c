"""Admission control for the copiers: a byte budget and per-key concurrency caps.

Owns: ``ByteBudget`` (message bytes in flight across all copiers, so memory stays bounded
whatever the mailbox) and ``KeyedLimiter`` (concurrent holders per key: per host, per login).
Both are FIFO: a request that cannot be admitted blocks everyone behind it, so a big request is
never starved by a stream of small ones. Both are cancellation-safe: a waiter cancelled while
queued, or cancelled in the instant between being granted and resuming, gives back what it was
granted, and the waiters behind it are re-examined.

Must not: do I/O, sleep, or know what the keys or bytes mean. Single event loop only (no locks:
every method runs on the loop thread).
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    capacity: int
    in_use: int
    holders: int
    waiting: int
    waiting_bytes: int
    peak_in_use: int


@dataclass(frozen=True, slots=True)
class KeyStatistics:
    limit: int
    holders: int
    waiting: int


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    default_limit: int
    keys: dict[str, KeyStatistics]  # only keys with holders or waiters


class _FifoGate:
    """A FIFO weighted semaphore. A request larger than the capacity is admitted alone."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.holders = 0
        self.peak_in_use = 0
        self.waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, amount: int) -> bool:
        return self.holders == 0 or self.in_use + amount <= self.capacity

    def _grant(self, amount: int) -> None:
        self.in_use += amount
        self.holders += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)

    async def acquire(self, amount: int) -> None:
        if not self.waiters and self._fits(amount):
            self._grant(amount)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (amount, fut)
        self.waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # Granted by a release, then cancelled before this task resumed: the grant was
                # already counted, so hand it back (this also wakes whoever is next).
                self.release(amount)
            else:
                # _wake may already have dropped our cancelled entry.
                if entry in self.waiters:
                    self.waiters.remove(entry)
                # If we were the head, the ones behind us may fit now.
                self._wake()
            raise

    def release(self, amount: int) -> None:
        self.in_use -= amount
        self.holders -= 1
        self._wake()

    def _wake(self) -> None:
        # Grants are counted here, not when the waiter resumes, so no third task can slip in
        # between the release and the wake-up.
        while self.waiters:
            amount, fut = self.waiters[0]
            if fut.done():  # cancelled while queued; its cleanup tolerates the removal
                self.waiters.popleft()
                continue
            if not self._fits(amount):
                return
            self.waiters.popleft()
            self._grant(amount)
            fut.set_result(None)

    @property
    def idle(self) -> bool:
        return self.holders == 0 and not self.waiters


class _Held:
    """``async with`` handle: acquires on enter, releases on exit (also on error or cancel)."""

    __slots__ = ("_amount", "_gate")

    def __init__(self, amount: int) -> None:
        self._amount = amount
        self._gate: _FifoGate | None = None

    def _resolve(self) -> _FifoGate:
        raise NotImplementedError

    def _after(self, gate: _FifoGate) -> None:
        """Called after every release and every failed acquire."""

    async def __aenter__(self) -> None:
        if self._gate is not None:
            raise RuntimeError("this handle is already held; call reserve()/acquire() again")
        gate = self._resolve()
        try:
            await gate.acquire(self._amount)
        except BaseException:
            self._after(gate)
            raise
        self._gate = gate

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release(self._amount)
            self._after(gate)


class _Reservation(_Held):
    __slots__ = ("_budget_gate",)

    def __init__(self, gate: _FifoGate, amount: int) -> None:
        super().__init__(amount)
        self._budget_gate = gate

    def _resolve(self) -> _FifoGate:
        return self._budget_gate


class _Slot(_Held):
    __slots__ = ("_key", "_limiter")

    def __init__(self, limiter: KeyedLimiter, key: str) -> None:
        super().__init__(1)
        self._limiter = limiter
        self._key = key

    def _resolve(self) -> _FifoGate:
        # Looked up at enter time, not when acquire() was called: an idle gate may have been
        # forgotten in between, and two live gates for one key would double its cap.
        return self._limiter._gate(self._key)

    def _after(self, gate: _FifoGate) -> None:
        self._limiter._forget_if_idle(self._key, gate)


class ByteBudget:
    """At most ``capacity`` bytes reserved at once, except one oversized request held alone.

    ``async with budget.reserve(n):`` waits (FIFO) until ``n`` bytes fit. A request bigger than
    the capacity is admitted when nothing else is reserved and keeps everyone else waiting until
    it is released, so a 50 MB message passes a 32 MB budget without deadlock.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"byte budget capacity must be positive, got {capacity}")
        self._gate = _FifoGate(capacity)

    @property
    def capacity(self) -> int:
        return self._gate.capacity

    @property
    def in_use(self) -> int:
        return self._gate.in_use

    def reserve(self, nbytes: int) -> AbstractAsyncContextManager[None]:
        """An ``async with`` handle that holds ``nbytes`` of the budget for its block."""
        if nbytes < 0:
            raise ValueError(f"cannot reserve a negative number of bytes ({nbytes})")
        return _Reservation(self._gate, nbytes)

    def statistics(self) -> BudgetStatistics:
        gate = self._gate
        return BudgetStatistics(
            capacity=gate.capacity,
            in_use=gate.in_use,
            holders=gate.holders,
            waiting=sum(1 for _, f in gate.waiters if not f.done()),
            waiting_bytes=sum(n for n, f in gate.waiters if not f.done()),
            peak_in_use=gate.peak_in_use,
        )


class KeyedLimiter:
    """At most ``limits.get(key, default_limit)`` concurrent holders per key, FIFO per key.

    Keys are compared case-insensitively (``str.lower``): host names are case-insensitive, and
    for logins sharing one cap is the safe direction. Idle keys are forgotten, so memory does not
    grow with the number of distinct keys ever seen.
    """

    def __init__(self, default_limit: int, limits: dict[str, int] | None = None) -> None:
        lowered = {k.lower(): v for k, v in (limits or {}).items()}
        for key, value in [("default", default_limit), *lowered.items()]:
            if value < 1:
                raise ValueError(f"limit for {key!r} must be at least 1, got {value}")
        self.default_limit = default_limit
        self._limits = lowered
        self._gates: dict[str, _FifoGate] = {}

    def limit(self, key: str) -> int:
        return self._limits.get(key.lower(), self.default_limit)

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        """An ``async with`` handle that holds one slot of ``key`` for its block."""
        return _Slot(self, key.lower())

    def _gate(self, key: str) -> _FifoGate:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _FifoGate(self.limit(key))
        return gate

    def _forget_if_idle(self, key: str, gate: _FifoGate) -> None:
        if gate.idle and self._gates.get(key) is gate:
            del self._gates[key]

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            default_limit=self.default_limit,
            keys={
                key: KeyStatistics(
                    limit=gate.capacity,
                    holders=gate.holders,
                    waiting=sum(1 for _, f in gate.waiters if not f.done()),
                )
                for key, gate in self._gates.items()
            },
        )
