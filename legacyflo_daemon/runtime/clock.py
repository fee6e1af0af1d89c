"""The clock: the one place the daemon reads the time of day (UTC).

Pure modules never read it; callers pass ``now`` in.
"""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Now, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)
