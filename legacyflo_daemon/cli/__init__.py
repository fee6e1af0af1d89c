"""The command line: ``legacyflo-daemon check|submit|run|status``.

The top layer: nothing imports it.

Importing it first imports structlog without ``rich`` (``_structlog_without_rich``).
"""

from __future__ import annotations

import sys


def _structlog_without_rich() -> None:
    """Import structlog as if ``rich`` were not installed, unless either is already loaded.

    Why: structlog imports ``rich`` at its own import whenever it is installed (a development
    install has it, through import-linter; the daemon's dependencies do not), which costs
    ~40 ms of every command's start-up (issue 14: ``run --once`` on small folders). The daemon
    never uses what ``rich`` adds: exceptions are rendered by our own processors
    (``runtime.log``: JSON frames without locals, or ``format_exc_info`` text on a console)
    before any structlog renderer sees them, so every line is the same with or without it.
    ``rich`` itself stays importable afterwards (the ``None`` entry is removed again).
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_structlog_without_rich()
