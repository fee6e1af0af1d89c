"""What ``check`` prints for a good row: every value the daemon will use for it.

Owns: the per-request detail block of ``check``/``submit`` (job type and title, report
address, both accounts with their login name, server, port and where the port came from, TLS
mode and certificate checking, how each side authenticates (``auth``), the destination folder
path, the date range in words), wrapped
to ``WIDTH`` columns, passwords always shown as ``********``; and ``tls_mode``, the TLS mode a
connection will use.
Must not: open a file or a connection. The port comes from ``imap.endpoint.port_for`` and the
per-direction host settings from ``Config.host_for``, exactly what the daemon calls.
``tls_mode`` restates the three-line rule inside ``imap.endpoint.endpoint`` because that
function also builds an SSL context (reading CA files, loading the system's CAs: slow for a
500-row file, and failing on a bad CA file before anything is shown); tests/test_check_details.py
compares the two over every combination so that they cannot drift apart.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable

from legacyflo_daemon.config.schema import Config, Direction, HostConfig
from legacyflo_daemon.errors import ImapError
from legacyflo_daemon.imap.endpoint import TlsMode, login_name, port_for
from legacyflo_daemon.model import REDACTED, Account, Request
from legacyflo_daemon.request import dates

WIDTH = 80
LABEL = 15  # width of the label column ("  destination  ")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
TLS_WORDS: dict[TlsMode, str] = {
    "implicit": "implicit TLS",
    "starttls": "STARTTLS (required)",
    "starttls-or-plain": "STARTTLS when offered, else PLAIN TEXT (allow_plaintext)",
    "plain": "PLAIN TEXT, no TLS",
}


def tls_mode(host: HostConfig, port: int) -> TlsMode:
    """The TLS mode of a connection to ``port`` with ``host``'s settings for that direction:
    ``implicit`` on 993 (or with ``tls = "implicit"``), else ``starttls``, or
    ``starttls-or-plain`` when the host has ``allow_plaintext`` (same rule as
    ``imap.endpoint.endpoint``)."""
    if host.tls == "implicit" or (host.tls == "auto" and port == 993):
        return "implicit"
    return "starttls-or-plain" if host.allow_plaintext else "starttls"


def _clean(text: str) -> str:
    return _CONTROL.sub("?", text)


def _port_origin(account: Account, direction: Direction, cfg: Config) -> str:
    """Which step of ``port_for``'s rule gave the port (its value comes from ``port_for``)."""
    if account.port is not None:
        return "from the CSV"
    if cfg.host_for(account.server, direction).port is not None:
        return f'hosts."{account.server.lower()}".port'
    return "default" if direction == "source" else "imap.dest_port"


def _certificate(host: HostConfig, mode: TlsMode) -> str:
    if not host.tls_verify:
        return "certificate NOT verified (tls_verify = false)"
    where = f"CA file {host.ca_file}" if host.ca_file is not None else "the system's CAs"
    checked = f"certificate verified with {where}"
    return checked if mode != "starttls-or-plain" else f"when TLS: {checked}"


def auth_words(host: HostConfig) -> str:
    """How an account of ``host`` (settings of one direction) authenticates, in words: the
    row's password, an OAuth 2.0 token (which application) or an administrator's
    impersonation (how). Nothing secret, no file read."""
    if host.auth == "oauth2":
        how = "certificate" if host.client_certificate_file is not None else "client secret"
        return (
            f"OAuth 2.0 token (auth oauth2) of application {host.client_id}, tenant "
            f"{host.tenant}, {how}, from {host.authority.rstrip('/')}; XOAUTH2 or OAUTHBEARER"
        )
    if host.auth == "admin":
        if host.sasl_authzid:
            return (
                f"impersonated (auth admin) by administrator {host.admin_user}: SASL PLAIN "
                "with the login as authorization identity, password from admin_password_file"
            )
        return (
            f"impersonated (auth admin) by administrator {host.admin_user}: the login name "
            "above, password from admin_password_file"
        )
    return f"password {REDACTED}"


def account_lines(account: Account, direction: Direction, cfg: Config) -> list[str]:
    """Three values: ``user@domain (login NAME), <how it authenticates>`` (``auth_words``:
    ``password ********``, an OAuth token, an administrator), ``server port N (origin)`` and
    ``TLS mode, certificate checking``."""
    host = cfg.host_for(account.server, direction)
    try:
        login = login_name(account, host)
    except ImapError as exc:  # an unusable login_format: shown, and --connect reports it
        login = f"<{exc}>"
    who = account.address if login == account.userid else f"{account.address} (login {login})"
    port = port_for(account, direction, cfg)
    mode = tls_mode(host, port)
    how = [TLS_WORDS[mode]]
    if mode != "plain":
        how.append(_certificate(host, mode))
    if host.legacy_tls:
        how.append("TLS 1.0 allowed (legacy_tls)")
    return [
        _clean(f"{who}, {auth_words(host)}"),
        _clean(f"{account.server} port {port} ({_port_origin(account, direction, cfg)})"),
        _clean(", ".join(how)),
    ]


def dest_path(req: Request, cfg: Config) -> str:
    """``<imap.dest_root>.<destfolder>`` written with ``.`` (mapped to the server's
    separator, and put under its personal namespace when needed, at copy time)."""
    root = cfg.imap.dest_root
    return f"{root}.{req.dest_folder}" if root else req.dest_folder


def _field(label: str, values: Iterable[str]) -> list[str]:
    """``  label       value`` wrapped at ``WIDTH``; continuation lines under the value."""
    out: list[str] = []
    first = f"  {label:<{LABEL - 2}}"
    for value in values:
        out += textwrap.wrap(
            value,
            WIDTH,
            initial_indent=first if not out else " " * LABEL,
            subsequent_indent=" " * LABEL,
            break_on_hyphens=False,
        ) or [first.rstrip()]
    return out


def describe_details(req: Request, cfg: Config) -> list[str]:
    """The detail block of one good row (no trailing blank line)."""
    title = _clean(req.title) if req.title else "(no title)"
    head = textwrap.wrap(
        f'Row {req.row}: {req.jobtype.value} "{title}"',
        WIDTH,
        subsequent_indent=" " * LABEL,
    )
    report = _clean(req.report_to) if req.report_to else "nobody (no report mail is sent)"
    return [
        *head,
        *_field("report to", [report]),
        *_field("source", account_lines(req.source, "source", cfg)),
        *_field("destination", account_lines(req.dest, "dest", cfg)),
        *_field(
            "into folder",
            [f'{_clean(dest_path(req, cfg))} ("." = the server\'s separator)'],
        ),
        *_field("dates", [dates.describe(req.dates)]),
    ]


def render_details(requests: Iterable[Request], cfg: Config) -> str:
    """Every good row's detail block, under a ``Requests:`` heading; "" when there is none."""
    blocks = [describe_details(req, cfg) for req in requests]
    if not blocks:
        return ""
    lines = ["", "Requests (every value the daemon will use; passwords are never shown):"]
    for block in blocks:
        lines += ["", *block]
    return "\n".join(lines) + "\n"
