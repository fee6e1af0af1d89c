"""ByteBudget and KeyedLimiter: caps, oversized admission, FIFO fairness, cancellation safety.

Everything runs on the event loop with ``asyncio.sleep(0)`` steps, never wall-clock sleeps, so
the randomised workloads are fast and deterministic for a given hypothesis example.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legacyflo_daemon.transfer.limits import (
    BudgetStatistics,
    ByteBudget,
    KeyedLimiter,
    KeyStatistics,
)

MB = 1024 * 1024


async def settle(rounds: int = 10) -> None:
    """Let every runnable task run until it blocks."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Holder:
    """A task that enters a reservation/slot and stays inside until released."""

    def __init__(self, cm: AbstractAsyncContextManager[None], name: str, log: list[str]) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.name = name
        self.log = log
        self.task = asyncio.create_task(self._run(cm))

    async def _run(self, cm: AbstractAsyncContextManager[None]) -> None:
        async with cm:
            self.log.append(self.name)
            self.entered.set()
            await self.release.wait()

    async def finish(self) -> None:
        self.release.set()
        await self.task


# --------------------------------------------------------------------------------- ByteBudget


async def test_reserve_within_capacity_is_immediate_and_released() -> None:
    budget = ByteBudget(100)
    async with budget.reserve(60):
        assert budget.in_use == 60
        async with budget.reserve(40):
            assert budget.in_use == 100
            assert budget.statistics() == BudgetStatistics(
                capacity=100, in_use=100, holders=2, waiting=0, waiting_bytes=0, peak_in_use=100
            )
    assert budget.in_use == 0
    assert budget.statistics().holders == 0


async def test_waits_until_the_bytes_fit() -> None:
    budget = ByteBudget(100)
    log: list[str] = []
    a = Holder(budget.reserve(70), "a", log)
    await settle()
    b = Holder(budget.reserve(40), "b", log)
    await settle()
    assert log == ["a"]
    assert budget.statistics().waiting == 1
    assert budget.statistics().waiting_bytes == 40
    await a.finish()
    await settle()
    assert log == ["a", "b"]
    assert budget.in_use == 40
    await b.finish()
    assert budget.in_use == 0


async def test_oversized_request_is_admitted_alone_when_idle() -> None:
    budget = ByteBudget(32 * MB)
    async with asyncio.timeout(1), budget.reserve(50 * MB):
        assert budget.in_use == 50 * MB
        assert budget.statistics().peak_in_use == 50 * MB
    assert budget.in_use == 0


async def test_oversized_request_waits_for_every_holder_and_then_excludes_others() -> None:
    budget = ByteBudget(32 * MB)
    log: list[str] = []
    small = Holder(budget.reserve(1), "small", log)
    await settle()
    big = Holder(budget.reserve(50 * MB), "big", log)
    await settle()
    assert log == ["small"], "an oversized request must not join other holders"
    await small.finish()
    await settle()
    assert log == ["small", "big"]
    late = Holder(budget.reserve(1), "late", log)
    await settle()
    assert log == ["small", "big"], "nothing may join an oversized holder"
    await big.finish()
    await settle()
    assert log == ["small", "big", "late"]
    await late.finish()
    assert budget.in_use == 0


async def test_fifo_a_big_request_is_not_starved_by_small_ones() -> None:
    budget = ByteBudget(10)
    log: list[str] = []
    first = Holder(budget.reserve(6), "first", log)
    await settle()
    big = Holder(budget.reserve(10), "big", log)
    await settle()
    # 4 bytes are free, but the small ones queue behind the big one.
    smalls = [Holder(budget.reserve(1), f"s{i}", log) for i in range(3)]
    await settle()
    assert log == ["first"]
    await first.finish()
    await settle()
    assert log == ["first", "big"]
    await big.finish()
    await settle()
    assert log == ["first", "big", "s0", "s1", "s2"]
    for s in smalls:
        await s.finish()
    assert budget.statistics().in_use == 0


async def test_cancelled_waiter_leaks_nothing() -> None:
    budget = ByteBudget(10)
    log: list[str] = []
    holder = Holder(budget.reserve(10), "holder", log)
    await settle()
    waiter = Holder(budget.reserve(5), "waiter", log)
    await settle()
    waiter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    assert budget.statistics().waiting == 0
    await holder.finish()
    assert budget.statistics() == BudgetStatistics(10, 0, 0, 0, 0, 10)
    async with budget.reserve(10):  # the whole capacity is available again
        assert budget.in_use == 10


async def test_cancelling_the_head_waiter_admits_those_behind_it() -> None:
    budget = ByteBudget(10)
    log: list[str] = []
    holder = Holder(budget.reserve(5), "holder", log)
    await settle()
    big = Holder(budget.reserve(10), "big", log)
    small = Holder(budget.reserve(3), "small", log)
    await settle()
    assert log == ["holder"]
    big.task.cancel()
    await settle()
    assert log == ["holder", "small"]
    assert budget.in_use == 8
    await small.finish()
    await holder.finish()
    assert budget.in_use == 0


async def test_cancel_between_grant_and_resume_gives_the_grant_back() -> None:
    budget = ByteBudget(10)
    log: list[str] = []
    held = budget.reserve(10)
    await held.__aenter__()
    waiter = Holder(budget.reserve(10), "waiter", log)
    await settle()
    # __aexit__ never suspends: the release grants the bytes to the waiter, and the waiter is
    # cancelled before it ever runs again.
    await held.__aexit__(None, None, None)
    assert budget.in_use == 10
    waiter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    assert log == []
    assert budget.in_use == 0
    assert budget.statistics().holders == 0


async def test_timeout_while_waiting_and_error_in_body_release() -> None:
    budget = ByteBudget(10)
    async with budget.reserve(10):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01), budget.reserve(1):
                pytest.fail("must not be admitted")
    assert budget.in_use == 0
    with pytest.raises(RuntimeError, match="boom"):
        async with budget.reserve(7):
            raise RuntimeError("boom")
    assert budget.in_use == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ByteBudget(0), "positive"),
        (lambda: ByteBudget(-5), "positive"),
        (lambda: ByteBudget(10).reserve(-1), "negative"),
        (lambda: KeyedLimiter(0), "at least 1"),
        (lambda: KeyedLimiter(2, {"h": 0}), "'h'"),
    ],
)
def test_invalid_arguments(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


async def test_a_handle_cannot_be_entered_twice() -> None:
    budget = ByteBudget(10)
    handle = budget.reserve(1)
    async with handle:
        with pytest.raises(RuntimeError, match="already held"):
            await handle.__aenter__()
    assert budget.in_use == 0


def run_budget_workload(
    capacity: int, jobs: list[tuple[int, int, int | None]]
) -> tuple[list[str], BudgetStatistics]:
    """Run jobs (bytes, steps held, cancel after N steps or None); return violations, stats."""
    violations: list[str] = []

    async def scenario() -> BudgetStatistics:
        budget = ByteBudget(capacity)
        holding: list[int] = []

        async def job(nbytes: int, steps: int) -> None:
            async with budget.reserve(nbytes):
                holding.append(nbytes)
                try:
                    if sum(holding) > capacity and len(holding) > 1:
                        violations.append(f"{holding} over {capacity}")
                    # Grants are counted at release time, so in_use may run ahead of the
                    # bodies entered so far, but never beyond the capacity (one oversized
                    # holder alone excepted).
                    stats = budget.statistics()
                    if stats.in_use < sum(holding):
                        violations.append(f"in_use {stats.in_use} < {sum(holding)}")
                    if stats.in_use > capacity and stats.holders > 1:
                        violations.append(f"in_use {stats.in_use} by {stats.holders} holders")
                    for _ in range(steps):
                        await asyncio.sleep(0)
                finally:
                    holding.remove(nbytes)

        async def cancel_later(task: asyncio.Task[None], steps: int) -> None:
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()

        tasks = [asyncio.create_task(job(n, steps)) for n, steps, _ in jobs]
        cancellers = [
            asyncio.create_task(cancel_later(t, c))
            for t, (_, _, c) in zip(tasks, jobs, strict=True)
            if c is not None
        ]
        async with asyncio.timeout(10):  # a deadlock fails instead of hanging
            results = await asyncio.gather(*tasks, *cancellers, return_exceptions=True)
        for job_spec, result in zip(jobs, results, strict=False):
            if job_spec[2] is None and result is not None:
                violations.append(f"uncancelled job {job_spec} ended with {result!r}")
        return budget.statistics()

    stats = asyncio.run(scenario())
    return violations, stats


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 50),
    jobs=st.lists(
        st.tuples(st.integers(0, 80), st.integers(0, 5), st.none() | st.integers(0, 8)),
        max_size=25,
    ),
)
def test_budget_randomised_workload_never_exceeds_capacity(
    capacity: int, jobs: list[tuple[int, int, int | None]]
) -> None:
    violations, stats = run_budget_workload(capacity, jobs)
    assert violations == []
    assert (stats.in_use, stats.holders, stats.waiting, stats.waiting_bytes) == (0, 0, 0, 0)


# ------------------------------------------------------------------------------- KeyedLimiter


async def test_limiter_caps_each_key_and_keys_are_independent() -> None:
    limiter = KeyedLimiter(2, {"slow.example": 1})
    log: list[str] = []
    a1 = Holder(limiter.acquire("slow.example"), "a1", log)
    a2 = Holder(limiter.acquire("slow.example"), "a2", log)
    b1 = Holder(limiter.acquire("other"), "b1", log)
    b2 = Holder(limiter.acquire("other"), "b2", log)
    b3 = Holder(limiter.acquire("other"), "b3", log)
    await settle()
    assert sorted(log) == ["a1", "b1", "b2"]
    assert limiter.statistics().keys == {
        "slow.example": KeyStatistics(limit=1, holders=1, waiting=1),
        "other": KeyStatistics(limit=2, holders=2, waiting=1),
    }
    await a1.finish()
    await b1.finish()
    await settle()
    assert sorted(log) == ["a1", "a2", "b1", "b2", "b3"]
    for h in (a2, b2, b3):
        await h.finish()
    assert limiter.statistics().keys == {}, "idle keys must be forgotten"


async def test_limiter_keys_are_case_insensitive() -> None:
    limiter = KeyedLimiter(5, {"Mail.Example.COM": 1})
    assert limiter.limit("mail.example.com") == 1
    log: list[str] = []
    first = Holder(limiter.acquire("mail.example.com"), "first", log)
    second = Holder(limiter.acquire("MAIL.example.com"), "second", log)
    await settle()
    assert log == ["first"]
    await first.finish()
    await second.finish()
    assert log == ["first", "second"]


async def test_limiter_is_fifo_per_key() -> None:
    limiter = KeyedLimiter(1)
    log: list[str] = []
    holders = [Holder(limiter.acquire("k"), f"h{i}", log) for i in range(5)]
    await settle()
    for h in holders:
        await h.finish()
    assert log == ["h0", "h1", "h2", "h3", "h4"]


async def test_limiter_cancelled_waiter_leaks_no_slot() -> None:
    limiter = KeyedLimiter(1)
    log: list[str] = []
    holder = Holder(limiter.acquire("k"), "holder", log)
    waiter = Holder(limiter.acquire("k"), "waiter", log)
    await settle()
    waiter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    assert limiter.statistics().keys["k"] == KeyStatistics(limit=1, holders=1, waiting=0)
    await holder.finish()
    assert limiter.statistics().keys == {}
    # Granted-then-cancelled: the slot goes back too.
    held = limiter.acquire("k")
    await held.__aenter__()
    waiter = Holder(limiter.acquire("k"), "waiter2", log)
    await settle()
    await held.__aexit__(None, None, None)  # grants the slot to the waiter without suspending
    assert limiter.statistics().keys["k"].holders == 1
    waiter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    assert "waiter2" not in log
    assert limiter.statistics().keys == {}
    async with asyncio.timeout(1), limiter.acquire("k"):
        assert limiter.statistics().keys["k"].holders == 1


async def test_handle_created_before_its_key_was_forgotten_still_shares_the_cap() -> None:
    limiter = KeyedLimiter(1)
    early = limiter.acquire("k")  # created now, entered later
    async with limiter.acquire("k"):
        pass  # the key becomes idle and is forgotten here
    log: list[str] = []
    other = Holder(limiter.acquire("k"), "other", log)
    await settle()
    entered_early = asyncio.create_task(early.__aenter__())
    await settle()
    assert not entered_early.done(), "a second gate for the same key would double its cap"
    await other.finish()
    await entered_early
    await early.__aexit__(None, None, None)
    assert limiter.statistics().keys == {}


@settings(max_examples=60, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.sampled_from(["a", "A", "b", "c", "C"]),
            st.integers(0, 5),
            st.none() | st.integers(0, 8),
        ),
        max_size=30,
    )
)
def test_limiter_randomised_workload_never_exceeds_limits(
    jobs: list[tuple[str, int, int | None]],
) -> None:
    limits = {"a": 1, "b": 2}
    default = 3
    violations: list[str] = []

    async def scenario() -> dict[str, KeyStatistics]:
        limiter = KeyedLimiter(default, limits)
        holding: Counter[str] = Counter()

        async def job(key: str, steps: int) -> None:
            norm = key.lower()
            async with limiter.acquire(key):
                holding[norm] += 1
                try:
                    if holding[norm] > limits.get(norm, default):
                        violations.append(f"{norm}: {holding[norm]} holders")
                    counted = limiter.statistics().keys[norm].holders
                    if not holding[norm] <= counted <= limits.get(norm, default):
                        violations.append(f"{norm}: {counted} counted, {holding[norm]} inside")
                    for _ in range(steps):
                        await asyncio.sleep(0)
                finally:
                    holding[norm] -= 1

        async def cancel_later(task: asyncio.Task[None], steps: int) -> None:
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()

        tasks = [asyncio.create_task(job(k, steps)) for k, steps, _ in jobs]
        cancellers = [
            asyncio.create_task(cancel_later(t, c))
            for t, (_, _, c) in zip(tasks, jobs, strict=True)
            if c is not None
        ]
        async with asyncio.timeout(10):
            results = await asyncio.gather(*tasks, *cancellers, return_exceptions=True)
        for job_spec, result in zip(jobs, results, strict=False):
            if job_spec[2] is None and result is not None:
                violations.append(f"uncancelled job {job_spec} ended with {result!r}")
        return limiter.statistics().keys

    keys_left = asyncio.run(scenario())
    assert violations == []
    assert keys_left == {}
