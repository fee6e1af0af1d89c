"""Configuration: a TOML file into typed, frozen objects.

Owns: the schema and the defaults (which work on a fresh checkout: ``./spool``, state under the
spool). ``config.load.load_config`` reads a file into it and raises ``ConfigError`` for a bad
one, whose one-line message names the file and the key (``hosts."x".port: expected an
integer``); the CLI prints it without a traceback.
Must not: touch the network or the spool.

The schema *is* the dataclasses below: ``load_config`` reads each table into its dataclass by
field name and annotation, so a new field is loadable (and must be documented in
``config.example.toml``, which a test checks). Unknown keys are errors, never ignored: a typo
in a limit must not silently leave the default in force. The one exception to "a table is a
dataclass": ``[hosts."x".source]`` and ``[hosts."x".dest]`` take the keys of ``[hosts."x"]``
and are merged over them into ``HostConfig.source``/``HostConfig.dest``.

Relative paths (``spool``, ``state_file``, ``log.file``, ``ca_file``, ``password_file`` and the
hosts' ``client_secret_file``, ``client_certificate_file``, ``authority_ca_file``,
``admin_password_file``) are
relative to the directory of the config file; without a config file they stay relative to the
working directory (the defaults: ``./spool``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from legacyflo_daemon.errors import ConfigError
from legacyflo_daemon.model import Secret

DEFAULT_EXCLUDED_FOLDERS: tuple[str, ...] = (
    "Calendar",
    "Contacts",
    "Tasks",
    "Notes",
    "Journal",
    "Sync Issues",
    "Conversation Action Settings",
    "Quick Step Settings",
    "Outbox",
    "Files",
)


Direction = Literal["source", "dest"]
DIRECTIONS: tuple[Direction, ...] = ("source", "dest")

AUTH_MODES = ("password", "oauth2", "admin")
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
EXCHANGE_ONLINE_SCOPE = "https://outlook.office365.com/.default"


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Per-server settings, looked up by the host name as written in the CSV (case-insensitive).

    The keys of ``[hosts."x"]`` apply whether the server is the source or the destination of a
    copy; ``[hosts."x".source]`` and ``[hosts."x".dest]`` may override any of them for that
    direction only. ``source``/``dest`` hold the *complete* settings of that direction (the
    loader merges the sub-table over the base keys), None when the sub-table is absent; use
    ``side`` (or ``Config.host_for``) rather than reading a key of the base directly.
    """

    # The port, when the CSV gives none (see imap/endpoint.py for the one port rule).
    port: int | None = None
    tls_verify: bool = True
    ca_file: Path | None = None
    allow_plaintext: bool = False  # LOGIN without TLS only when True
    legacy_tls: bool = False  # allow TLS 1.0 (Exchange 2010); never the default
    # "auto": 993 is implicit TLS, other ports STARTTLS; "implicit" forces TLS from the first
    # byte on any port (e.g. 9993); "starttls" forces STARTTLS even on 993.
    tls: str = "auto"
    login_format: str = "{user}"  # also "{user}@{domain}", "DOMAIN\\{user}", "{user}*{admin}"
    # How to log in (``auth``): "password" (the CSV's password; the default), "oauth2" (an
    # access token of the Microsoft identity platform, client-credentials flow: SASL XOAUTH2
    # or OAUTHBEARER) or "admin" (impersonation with the administrator below: SASL PLAIN with
    # the row's user as authorization identity when ``sasl_authzid``, else LOGIN with the
    # ``login_format`` name, which then holds ``{admin}``, and the admin's password).
    auth: str = "password"
    tenant: str | None = None  # oauth2: directory (tenant) ID or primary domain
    client_id: str | None = None  # oauth2: application (client) ID
    client_secret_file: Path | None = None  # oauth2: the secret's value, one line
    client_certificate_file: Path | None = None  # oauth2: PEM with private key and certificate
    client_certificate_thumbprint: str | None = None  # oauth2: SHA-1 hex; None: from the file
    authority: str = DEFAULT_AUTHORITY  # oauth2: https://login.microsoftonline.us (GCC High)
    authority_ca_file: Path | None = None  # oauth2: CA bundle for the authority's certificate
    scope: str = EXCHANGE_ONLINE_SCOPE  # oauth2
    admin_user: str | None = None  # admin: the administrator's login name
    admin_password_file: Path | None = None  # admin: its password, one line
    sasl_authzid: bool = False  # admin: AUTHENTICATE PLAIN with authzid = the row's login
    max_connections: int | None = None  # cap for this host (default: daemon.max_per_host)
    max_per_login: int | None = None  # cap per login on this host (default: imap.max_per_login)
    source: HostConfig | None = None  # the settings as a source: base keys + [..source]
    dest: HostConfig | None = None  # the settings as a destination: base keys + [..dest]

    def side(self, direction: Direction) -> HostConfig:
        """The effective settings for ``direction``: the keys of its sub-table, else the base
        keys; the result has no ``source``/``dest`` of its own."""
        merged = self.source if direction == "source" else self.dest
        if merged is not None:
            return merged
        if self.source is None and self.dest is None:
            return self
        return replace(self, source=None, dest=None)

    @property
    def needs_password(self) -> bool:
        """Whether the CSV must give this account's password (``auth = "password"``)."""
        return self.auth == "password"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    spool: Path = Path("spool")
    state_file: Path | None = None  # None: <spool>/state.sqlite3
    max_jobs: int = 4
    max_per_host: int = 8
    byte_budget_mb: int = 64
    grace_seconds: float = 30.0
    force_polling: bool = False
    poll_delay_ms: int = 300
    stable_seconds: float = 1.0  # a plain file is taken only once its size stopped changing
    incomplete_seconds: float = 3600.0  # an unfinished last line this long: set aside in failed/
    rescan_seconds: float = 60.0
    max_crashes: int = 3  # a CSV that crashed the daemon this often goes to failed/
    intake: bool = True  # false: a pure worker of a cluster, never takes files from incoming/

    @property
    def state_path(self) -> Path:
        return self.state_file if self.state_file is not None else self.spool / "state.sqlite3"


@dataclass(frozen=True, slots=True)
class ImapConfig:
    dest_port: int = 993
    dest_root: str = "INBOX.historical_data"  # written with '.', mapped to the real delimiter
    timeout: float = 60.0
    connect_timeout: float = 30.0
    max_per_login: int = 4  # Exchange allows 16 per user by default; stay well below
    retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    fetch_batch: int = 400  # messages per body FETCH (and per MULTIAPPEND)
    fetch_batch_bytes: int = 8 * 1024 * 1024
    folder_workers: int = 4  # connection pairs per request copying folders side by side
    read_back: bool = True  # compare what the destination stored after each batch (readback)
    # A body larger than 4 x its announced size and larger than this is not accepted (a server
    # that sends more than it said must not be able to exhaust memory).
    max_message_mb: int = 150
    exclude_folders: tuple[str, ...] = DEFAULT_EXCLUDED_FOLDERS


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    file: Path | None = None
    format: str = "auto"  # "auto" (console on a TTY, else JSON), "json", "console"


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int = 587
    tls: str = "starttls"  # "starttls", "implicit", "none"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    timeout: float = 30.0
    retry_base: float = 30.0  # first retry of a failed mail after this many seconds, doubling
    retry_max: float = 3600.0  # ... up to this
    scan_interval: float = 60.0  # look for pending mails at least this often

    def password(self) -> Secret | None:
        """The SMTP password from ``password_file`` (one line) or ``password_env``; None if neither.

        Read at the moment of use, never stored in the config object. Raises ``ConfigError``
        naming the key when the file cannot be read or the variable is not set; the daemon calls
        this once at start so that a bad setting fails early.
        """
        return read_password("smtp", self.password_file, self.password_env)


def read_password(section: str, file: Path | None, env: str | None) -> Secret | None:
    """The password of ``[section]`` from ``file`` (its first line) or the variable ``env``;
    None if neither is set. ``ConfigError`` names the key when it cannot be read."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                str(file), f"{section}.password_file", f"cannot read: {reason}"
            ) from None
        return Secret(text.rstrip("\r\n"))
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(
                "environment", f"{section}.password_env", f"variable {env} is not set"
            )
        return Secret(value)
    return None


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where the state lives. Without ``url``: the embedded SQLite file
    (``daemon.state_file``), for one daemon. With ``url``: a PostgreSQL database that several
    daemons on several machines share (one queue, README "Deployment"); its password is given
    apart, never in the URL (which appears in messages)."""

    url: str | None = None  # "postgresql://legacyflo@db.example.com:5432/legacyflo"
    password_file: Path | None = None
    password_env: str | None = None
    node: str | None = None  # this daemon's name in the cluster; None: "<host name>-<pid>"
    lease_seconds: float = 60.0  # a dead node's requests are taken over after this long

    def password(self) -> Secret | None:
        """The database password (``password_file`` or ``password_env``), read at use."""
        return read_password("state", self.password_file, self.password_env)


@dataclass(frozen=True, slots=True)
class ReportConfig:
    from_address: str = "legacyflo-daemon@localhost"
    compress_listing_above_kb: int = 1024
    per_account: bool = True  # a report mail per request (its .eml); false: results only
    batch_to: tuple[str, ...] = ()  # batch report recipients; empty: the rows' report addresses


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str | None = None  # "127.0.0.1:9464": serve Prometheus metrics there; None: off


@dataclass(frozen=True, slots=True)
class CsvConfig:
    """Limits on one request CSV (docs/contract.md §3.7), all inclusive maxima.

    The CSV reader takes them as ``request.csvfile.Limits`` (same field names and defaults;
    ``Limits.of(config.csv, config.passwordless())`` converts): ``config`` and ``request`` are
    sibling layers that do not import each other.
    """

    max_bytes: int = 64 * 1024 * 1024  # the whole file; larger goes to failed/ unread
    max_rows: int = 100_000  # data rows (blank lines not counted)
    max_title_chars: int = 200  # jobtitle: it ends up in mail subjects and log lines
    max_userid_chars: int = 255  # destuserid, sourceuserid
    max_password_bytes: int = 1000  # destuserpasswd, sourceuserpassword, as UTF-8
    max_folder_chars: int = 255  # destfolder


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    csv: CsvConfig = field(default_factory=CsvConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    log: LogConfig = field(default_factory=LogConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    smtp: SmtpConfig | None = None
    state: StateConfig = field(default_factory=StateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    hosts: dict[str, HostConfig] = field(default_factory=dict)  # keys lower-cased
    path: Path | None = None  # the file it was read from, for messages

    def host(self, name: str) -> HostConfig:
        """The ``[hosts."name"]`` table for ``name`` (case-insensitive), or the defaults.

        Its keys are the base ones; to connect, use ``host_for``, which applies the
        ``source``/``dest`` sub-table of the direction.
        """
        return self.hosts.get(name.lower(), HostConfig())

    def host_for(self, name: str, direction: Direction) -> HostConfig:
        """The effective settings of host ``name`` used as ``direction`` ("source"/"dest"):
        the ``[hosts."name".<direction>]`` keys, else the ``[hosts."name"]`` keys, else the
        defaults. The result's own ``source``/``dest`` are None."""
        return self.host(name).side(direction)

    def passwordless(self) -> frozenset[tuple[Direction, str]]:
        """(direction, host name lower-cased) of every host whose accounts need no password in
        the CSV for that direction (``auth`` is "oauth2" or "admin"); what the CSV reader
        takes as ``request.rows.Limits.passwordless``."""
        return frozenset(
            (direction, name)
            for name, host in self.hosts.items()
            for direction in DIRECTIONS
            if not host.side(direction).needs_password
        )
