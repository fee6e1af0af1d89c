"""The optional Python packages a configuration needs, loaded only by the daemons that use them
(issue 14: ``prometheus_client``, ``aiosmtplib`` and ``watchfiles`` cost start-up time a
``run --once`` without metrics, SMTP or watching does not spend).

Owns: the one error a missing package gives at start: a ``ConfigError`` naming the config key
that asks for it and the package, with the remedy.
Must not: import any of the packages at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from legacyflo_daemon.errors import ConfigError

T = TypeVar("T")


def require_package(
    load: Callable[[], T], config_path: str, key: str, needed_for: str, otherwise: str
) -> T:
    """``load()`` (which imports what ``key`` needs); when an import in it finds no module,
    ``ConfigError(config_path, key, ...)`` saying that ``needed_for`` needs that package, how
    to install it, and ``otherwise`` (the other way out, from its first character on)."""
    try:
        return load()
    except ModuleNotFoundError as exc:
        raise ConfigError(
            config_path,
            key,
            f"{needed_for} needs the Python package {exc.name!r}, which is not installed: "
            f"reinstall legacyflo-daemon with its dependencies (pip install legacyflo-daemon)"
            f"{otherwise}",
        ) from None
