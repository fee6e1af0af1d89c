"""Retry pacing: exponential backoff with full jitter, honouring a server's own hint. Pure.

The rules are docs/contract.md §5.5; the hint is Exchange's "Suggested Backoff Time"
(``imap.syntax.responses.suggested_backoff``).

Must not: sleep, read the clock or draw random numbers (callers pass ``rand``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HINT_CAP = 900.0  # a server hint above 15 minutes is obeyed only up to 15 minutes


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter.

    ``attempt`` counts retries already made, from 0: the first retry waits ``delay(0, ...)``.
    ``exhausted(attempt)`` is True once ``max_attempts`` retries were made (config
    ``imap.retries``), so an operation runs at most ``max_attempts + 1`` times.
    """

    base: float
    cap: float
    max_attempts: int

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.max_attempts < 0:
            raise ValueError("Backoff: base, cap and max_attempts must not be negative")

    def delay(self, attempt: int, rand: float, hint: float | None = None) -> float:
        """Seconds to wait: ``rand * min(cap, base * 2**attempt)``, never below the hint.

        ``rand`` is a uniform draw in [0, 1] from the caller. ``hint`` (the server's own
        suggestion, seconds) is honoured up to ``HINT_CAP``, even above ``cap``.
        """
        if attempt < 0:
            raise ValueError(f"attempt must not be negative, got {attempt}")
        if not 0.0 <= rand <= 1.0:
            raise ValueError(f"rand must be in [0, 1], got {rand}")
        # 2**64 * base is far above any cap; bounding the exponent avoids float overflow.
        wait = rand * min(self.cap, self.base * 2.0 ** min(attempt, 64))
        if hint is not None and math.isfinite(hint) and hint > 0:
            wait = max(wait, min(hint, HINT_CAP))
        return wait

    def exhausted(self, attempt: int) -> bool:
        """True when ``attempt`` retries were already made and no more are allowed."""
        return attempt >= self.max_attempts
