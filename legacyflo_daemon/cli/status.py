"""``legacyflo-daemon status``: every request with its state and progress, as a table.

Reads the state store only (SQLite allows a reader beside the running daemon's writer), so it
works while the daemon runs. Must not: write anything.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import StateError
from legacyflo_daemon.report.mail import human_size
from legacyflo_daemon.state.store import RequestRow, StateStore


def _rate_eta(r: RequestRow, now: dt.datetime) -> tuple[str, str]:
    if r.started_at is None or r.bytes_done <= 0 or r.finished_at is not None:
        return "", ""
    started = dt.datetime.fromisoformat(r.started_at)
    seconds = max(1.0, (now - started).total_seconds())
    rate = r.bytes_done / seconds
    left = max(0, r.bytes_total - r.bytes_done)
    eta = f"{int(left / rate // 60)}m{int(left / rate % 60):02d}s" if rate > 0 else ""
    return f"{human_size(int(rate))}/s", eta


def table(rows: Sequence[RequestRow], now: dt.datetime) -> str:
    """A fixed-width table of ``rows``; the pure part of the command."""
    header = ("REQUEST", "STATE", "MESSAGES", "BYTES", "RATE", "ETA", "TITLE / ERROR")
    lines = [header]
    for r in rows:
        msgs = f"{r.msgs_done}/{r.msgs_total}" if r.msgs_total else ""
        nbytes = f"{human_size(r.bytes_done)}/{human_size(r.bytes_total)}" if r.bytes_total else ""
        rate, eta = _rate_eta(r, now)
        note = r.title if not r.error else f"{r.title}: {r.error}"
        lines.append((r.id, r.status.value, msgs, nbytes, rate, eta, note[:80]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no requests"
    return "\n".join([*out, "", summary]) + "\n"


def main(cfg: Config, *, watch: bool = False, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    path = cfg.daemon.state_path
    if not path.exists():
        print(f"no state store at {path}: the daemon has not run yet", file=sys.stderr)
        return 1
    try:
        while True:
            store = StateStore(path)
            try:
                text = table(store.requests(), dt.datetime.now(dt.UTC))
            finally:
                store.close()
            if watch:
                stream.write("\x1b[H\x1b[2J")
            stream.write(text)
            stream.flush()
            if not watch:
                return 0
            time.sleep(2.0)
    except StateError as exc:
        print(f"legacyflo-daemon status: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
