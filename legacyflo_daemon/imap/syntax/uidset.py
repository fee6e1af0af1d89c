"""UID-set arithmetic: cutting what we fetch into small commands. Pure.

Owns: turning UIDs or a UID-set string into sets of at most ``cap`` UIDs and ``max_len``
characters each. Exchange refuses commands longer than its MaxCommandSize (10,240 bytes by
default), and aioimaplib keeps a whole FETCH response in memory, so both limits matter.
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


def _compact(uids: list[int]) -> list[str]:
    pieces: list[str] = []
    start = prev = uids[0]
    for uid in [*uids[1:], 0]:
        if uid == prev + 1:
            prev = uid
            continue
        pieces.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    return pieces


def uid_batches(uids: str | Iterable[int], cap: int, max_len: int = MAX_SET_LEN) -> list[str]:
    """UID sets of at most ``cap`` UIDs and ``max_len`` characters each, covering ``uids``.

    ``uids`` is a UID set string (``1:500,700``; ``*`` is refused because its size is unknown)
    or integers. A range wider than ``cap`` is cut, so no command can ask for more than ``cap``
    messages: aioimaplib keeps a whole response in memory and parses it in O(lines²).
    """
    if cap < 1:
        raise ValueError("cap must be at least 1")
    pieces: list[tuple[int, int]] = []
    if isinstance(uids, str):
        for lo, hi in _ranges(uids):
            pieces += [(a, min(a + cap - 1, hi)) for a in range(lo, hi + 1, cap)]
    else:
        ordered = sorted(set(uids))
        if ordered and (ordered[0] < 1 or ordered[-1] > MAX_UID):
            raise ValueError("UID out of range")
        for i in range(0, len(ordered), cap):
            chunk = ordered[i : i + cap]
            for p in _compact(chunk):
                lo_s, _, hi_s = p.partition(":")
                pieces.append((int(lo_s), int(hi_s or lo_s)))
            pieces.append((0, 0))  # batch boundary
    batches: list[str] = []
    current: list[str] = []
    count = length = 0
    for lo, hi in [*pieces, (0, 0)]:
        text = str(lo) if lo == hi else f"{lo}:{hi}"
        width = hi - lo + 1
        if lo == 0 or (current and (count + width > cap or length + len(text) + 1 > max_len)):
            if current:
                batches.append(",".join(current))
            current, count, length = [], 0, 0
            if lo == 0:
                continue
        current.append(text)
        count += width
        length += len(text) + 1
    return batches


def expand_uid_set(uid_set: str) -> list[int]:
    """Every UID a ``*``-free set names, ascending (for small sets only)."""
    return sorted({u for lo, hi in _ranges(uid_set) for u in range(lo, hi + 1)})
