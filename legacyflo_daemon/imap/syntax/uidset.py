"""UID sets: the one place that writes UIDs as IMAP sets and cuts them into small commands. Pure.

Owns: compressing UIDs into sets (``1:5,7,9:12``), reading ``*``-free sets back, and cutting
them into batches of at most ``cap`` UIDs and ``max_len`` characters each. Exchange refuses
commands longer than its MaxCommandSize (10,240 bytes by default), and aioimaplib keeps a whole
FETCH response in memory, so both limits matter (docs/imap-interop.md §2.2, §1.11).
Must not: know about sessions or servers.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_UID = 2**32 - 1
MAX_SET_LEN = 8000  # leaves room for the rest of the command under Exchange's 10,240 bytes


def _ranges(uid_set: str) -> list[tuple[int, int]]:
    out = []
    for piece in uid_set.split(","):
        lo_s, _, hi_s = piece.partition(":")
        try:
            lo, hi = int(lo_s), int(hi_s or lo_s)
        except ValueError:
            raise ValueError(f"not a UID set without '*': {uid_set!r}") from None
        lo, hi = min(lo, hi), max(lo, hi)
        if lo < 1 or hi > MAX_UID:
            raise ValueError(f"UID out of range in {uid_set!r}")
        out.append((lo, hi))
    return out


def _runs(uids: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of the distinct ``uids``, ascending: ``[1, 2, 3, 7]`` → (1, 3), (7, 7)."""
    ordered = sorted(set(uids))
    if ordered and (ordered[0] < 1 or ordered[-1] > MAX_UID):
        raise ValueError(f"UID out of range 1..{MAX_UID}: {ordered[0]}..{ordered[-1]}")
    runs: list[tuple[int, int]] = []
    for uid in ordered:
        if runs and uid == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], uid)
        else:
            runs.append((uid, uid))
    return runs


def uid_batches(uids: str | Iterable[int], cap: int, max_len: int = MAX_SET_LEN) -> list[str]:
    """UID sets of at most ``cap`` UIDs and ``max_len`` characters each, covering ``uids``.

    ``uids`` is a UID set string (``1:500,700``; ``*`` is refused because its size is unknown)
    or integers (duplicates dropped, any order; consecutive UIDs become ranges). Each batch is
    filled up to ``cap``, cutting a range where needed, so no command asks for more than
    ``cap`` messages. Raises ``ValueError`` for a UID outside 1..2**32-1, ``cap`` below 1, or a
    ``max_len`` too small for a single range.
    """
    if cap < 1:
        raise ValueError("cap must be at least 1")
    ranges = _ranges(uids) if isinstance(uids, str) else _runs(uids)
    batches: list[str] = []
    current: list[str] = []
    count = length = 0
    for lo, hi in ranges:
        while lo <= hi:
            end = min(hi, lo + (cap - count) - 1)
            text = str(lo) if lo == end else f"{lo}:{end}"
            if len(text) > max_len:
                raise ValueError(f"max_len={max_len} is too small for the range {text!r}")
            if current and length + 1 + len(text) > max_len:
                batches.append(",".join(current))
                current, count, length = [], 0, 0
                continue  # the same range again, now against an empty batch
            length += len(text) + (1 if current else 0)
            current.append(text)
            count += end - lo + 1
            lo = end + 1
            if count == cap:
                batches.append(",".join(current))
                current, count, length = [], 0, 0
    if current:
        batches.append(",".join(current))
    return batches


def expand_uid_set(uid_set: str) -> list[int]:
    """Every UID a ``*``-free set names, ascending (for small sets only)."""
    return sorted({u for lo, hi in _ranges(uid_set) for u in range(lo, hi + 1)})
