"""From a request and the config to the two IMAP endpoints of a copy.

Pure apart from building ``ssl.SSLContext`` objects (which read CA files). Owns the rules of
SPEC §3/§7 for transport and login: port 993 is implicit TLS, any other source port is STARTTLS
(plain LOGIN only where ``hosts."x".allow_plaintext`` says so), the destination port comes from
config, and the login name follows the host's ``login_format``.
"""

from __future__ import annotations

from dataclasses import replace

from .config import Config, HostConfig
from .errors import PermanentError
from .imap import Endpoint, TlsMode, make_ssl_context
from .model import Account, Request


def login_name(account: Account, host: HostConfig) -> str:
    """The user name to send for ``account`` (``{user}``, ``{user}@{domain}``, ``DOM\\{user}``)."""
    try:
        return host.login_format.format(user=account.userid, domain=account.domain)
    except (KeyError, IndexError, ValueError) as exc:
        raise PermanentError(
            f"hosts.{account.server!r}.login_format {host.login_format!r} is not usable: {exc}",
            host=account.server,
        ) from exc


def endpoint(account: Account, port: int, host: HostConfig, cfg: Config) -> Endpoint:
    """The endpoint for ``account`` on ``port`` with the overrides of its host."""
    tls: TlsMode = "implicit"
    if not (host.tls == "implicit" or (host.tls == "auto" and port == 993)):
        tls = "starttls-or-plain" if host.allow_plaintext else "starttls"
    return Endpoint(
        host=account.server,
        port=port,
        tls=tls,
        ssl_context=make_ssl_context(host.ca_file, host.tls_verify, host.legacy_tls),
        user=login_name(account, host),
        password=account.password,
        timeout=cfg.imap.timeout,
        connect_timeout=cfg.imap.connect_timeout,
    )


def source_endpoint(req: Request, cfg: Config) -> Endpoint:
    host = cfg.host(req.source.server)
    return endpoint(req.source, req.source.port or 993, host, cfg)


def dest_port(req: Request, cfg: Config) -> int:
    """The destination port: the host's override, else ``imap.dest_port`` (not in the CSV)."""
    return cfg.host(req.dest.server).port or cfg.imap.dest_port


def with_dest_port(req: Request, cfg: Config) -> Request:
    """``req`` with its destination port filled in from the config (for results)."""
    return replace(req, dest=replace(req.dest, port=dest_port(req, cfg)))


def dest_endpoint(req: Request, cfg: Config) -> Endpoint:
    return endpoint(req.dest, dest_port(req, cfg), cfg.host(req.dest.server), cfg)
