"""The CA files a CSV's requests will use, tried before anything is shown or connected.

Owns: building, once per distinct setting, the SSL context the daemon will build for each
host and direction a request uses (``imap.endpoint.make_ssl_context``, the one place TLS
settings are decided), and turning a failure into one line naming the file and the key.
Why: ``config.load`` checks only that a ``ca_file`` is a readable file; a file that is not a
PEM certificate (a key, a DER file, a typo'd path to another file) fails only when a context is
built, where ``ssl.SSLError`` would otherwise surface as a traceback (``check --connect``).
Must not: connect.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from legacyflo_daemon.config.schema import Config, Direction
from legacyflo_daemon.imap.endpoint import make_ssl_context
from legacyflo_daemon.model import Request


class CaFileError(Exception):
    """A CA file cannot be used; the message is one line naming the file and what to do."""


def _key(cfg: Config, server: str, direction: Direction) -> str:
    """The config key that set the CA file: the direction's sub-table when it has its own."""
    sub = getattr(cfg.host(server), direction)
    base = f'hosts."{server.lower()}"'
    if sub is not None and sub.ca_file != cfg.host(server).ca_file:
        return f"{base}.{direction}.ca_file"
    return f"{base}.ca_file"


def check_ca_files(requests: Iterable[Request], cfg: Config) -> None:
    """Build the SSL context of every (host, direction) the requests use that has a
    ``ca_file``; raises ``CaFileError`` for the first one that cannot be used. Each distinct
    (file, verify, legacy_tls) setting is tried once."""
    tried: set[tuple[Path, bool, bool]] = set()
    for req in requests:
        sides: tuple[tuple[str, Direction], ...] = (
            (req.source.server, "source"),
            (req.dest.server, "dest"),
        )
        for server, direction in sides:
            host = cfg.host_for(server, direction)
            if host.ca_file is None:
                continue
            setting = (host.ca_file, host.tls_verify, host.legacy_tls)
            if setting in tried:
                continue
            tried.add(setting)
            try:
                make_ssl_context(*setting)
            except OSError as exc:  # ssl.SSLError is an OSError; so is a file gone meanwhile
                reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
                reason = reason.replace("_", " ").lower()  # NO_CERTIFICATE_OR_CRL_FOUND
                raise CaFileError(
                    f"{host.ca_file}: not a usable CA certificate file "
                    f"({_key(cfg, server, direction)}: {reason}); "
                    "give the PEM file of the CA that signed the server's certificate"
                ) from None
