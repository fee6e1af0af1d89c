"""Configuration: a TOML file into typed, frozen objects.

Owns: the schema, the defaults (which work on a fresh checkout: ``./spool``, state under the
spool), and validation. A bad file raises ``ConfigError`` whose one-line message names the file
and the key (``hosts."x".port: expected an integer``); the CLI prints it without a traceback.
Must not: touch the network or the spool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Per-server overrides, looked up by the host name as written in the CSV (case-insensitive)."""

    port: int | None = None  # destination port (the source port comes from the CSV)
    tls_verify: bool = True
    ca_file: Path | None = None
    allow_plaintext: bool = False  # LOGIN without TLS only when True
    legacy_tls: bool = False  # allow TLS 1.0 (Exchange 2010); never the default
    login_format: str = "{user}"  # also "{user}@{domain}" or "DOMAIN\\{user}"
    max_connections: int | None = None  # cap for this host (default: daemon.max_per_host)
    max_per_login: int | None = None  # cap per login on this host (default: imap.max_per_login)


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
    rescan_seconds: float = 60.0
    max_crashes: int = 3  # a CSV that crashed the daemon this often goes to failed/

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
    fetch_batch: int = 100  # UIDs per body FETCH (aioimaplib parsing is quadratic per command)
    fetch_batch_bytes: int = 8 * 1024 * 1024
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


@dataclass(frozen=True, slots=True)
class ReportConfig:
    from_address: str = "legacyflo-daemon@localhost"
    compress_listing_above_kb: int = 1024


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    log: LogConfig = field(default_factory=LogConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    smtp: SmtpConfig | None = None
    hosts: dict[str, HostConfig] = field(default_factory=dict)  # keys lower-cased
    path: Path | None = None  # the file it was read from, for messages

    def host(self, name: str) -> HostConfig:
        """The overrides for ``name`` (case-insensitive), or the defaults."""
        return self.hosts.get(name.lower(), HostConfig())
