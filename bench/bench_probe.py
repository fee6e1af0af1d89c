"""What the source server takes before any copier can append its first message. Not a test.

``first_body`` opens a fresh session the way every copier must (TCP, STARTTLS, LOGIN), EXAMINEs
the folder and fetches the first message's body, and returns the seconds from the connect to the
body. On the test source (Dovecot, maildir) this is not a few round trips: a session's first
EXAMINE reads the folder's uidlist and index, and its first body FETCH rescans the whole ``cur/``
directory (the uidlist names a file without its ``:2,<flags>`` suffix; see bench/README.md), so
the time grows with the folder's size. No copier appends anything before it, so it bounds what a
copier's message rate can be on a short run (``without_wait``).

Owns: that probe (Python's ``imaplib``, nothing of the daemon) and the bound derived from it.
Must not: run while a measured copier runs (it loads the source); the series runs it after the
copies of a size.
"""

from __future__ import annotations

import contextlib
import imaplib
import ssl
import time
from collections.abc import Mapping

from bench.bench_env import SOURCE_PASSWORD, Address, BenchEnv


def first_body(env: BenchEnv, source: Address, user: str, folder: str) -> float:
    """Seconds from connecting to ``source`` to holding the body of ``folder``'s first message,
    in a new session. Raises ``RuntimeError`` when the server refuses a step."""
    context = ssl.create_default_context(cafile=str(env.ca_file))
    started = time.perf_counter()
    conn = imaplib.IMAP4(source.host, source.port)
    try:
        conn.starttls(context)
        conn.login(user, SOURCE_PASSWORD)
        status, _ = conn.select(f'"{folder}"', readonly=True)  # EXAMINE: the source stays as is
        if status != "OK":
            raise RuntimeError(f"EXAMINE {folder!r}: {status}")
        status, data = conn.fetch("1", "(BODY.PEEK[])")
        if status != "OK" or not data or not isinstance(data[0], tuple):
            raise RuntimeError(f"FETCH 1 BODY.PEEK[] in {folder!r}: {status}")
        return time.perf_counter() - started
    finally:
        # The figure is taken (or the error raised): a failed LOGOUT changes nothing of it.
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.logout()


def without_wait(
    first_body_s: Mapping[int, float], walls: Mapping[int, float | None]
) -> tuple[float, dict[int, float]] | None:
    """The daemon's message rate per size with the source's wait taken out of its median wall
    time (``n / (wall - wait)``), and the spread of those rates (slowest / fastest): what the
    series would show if the source answered a new session's first body FETCH at once and
    nothing else changed. The wait is serial in a copy (no body, nothing to append), so this
    only assumes that nothing of the daemon's own work overlaps it but its start-up, which
    makes the figure, if anything, slightly too good. Returns None without the figures."""
    rates: dict[int, float] = {}
    for n, wait in first_body_s.items():
        wall = walls.get(n)
        if wall is None or wall <= wait:
            return None
        rates[n] = n / (wall - wait)
    if not rates:
        return None
    return min(rates.values()) / max(rates.values()), rates
