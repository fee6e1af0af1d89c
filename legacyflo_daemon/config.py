"""Configuration: a TOML file into typed, frozen objects.

Owns: the schema, the defaults (which work on a fresh checkout: ``./spool``, state under the
spool), and validation. A bad file raises ``ConfigError`` whose one-line message names the file
and the key (``hosts."x".port: expected an integer``); the CLI prints it without a traceback.
Must not: touch the network or the spool.

The schema *is* the dataclasses below: ``load_config`` reads each table into its dataclass by
field name and annotation, so a new field is loadable (and must be documented in
``config.example.toml``, which a test checks). Unknown keys are errors, never ignored: a typo
in a limit must not silently leave the default in force.

Relative paths (``spool``, ``state_file``, ``log.file``, ``ca_file``, ``password_file``) are
relative to the directory of the config file; without a config file they stay relative to the
working directory (the defaults: ``./spool``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def password(self) -> Secret | None:
        """The SMTP password from ``password_file`` (one line) or ``password_env``; None if neither.

        Read at the moment of use, never stored in the config object. Raises ``ConfigError``
        naming the key when the file cannot be read or the variable is not set; the daemon calls
        this once at start so that a bad setting fails early.
        """
        if self.password_file is not None:
            try:
                text = self.password_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(
                    str(self.password_file), "smtp.password_file", f"cannot read: {reason}"
                ) from None
            return Secret(text.rstrip("\r\n"))
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    "environment", "smtp.password_env", f"variable {self.password_env} is not set"
                )
            return Secret(value)
        return None


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


# -- loading -----------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # a value -> None if fine, else what is wrong


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low:g}, got {v:g}"


def _between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be {low:g} to {high:g}, got {v:g}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _no_control(v: str) -> str | None:
    return "must not contain control characters" if any(ord(c) < 32 for c in v) else None


def _not_blank(v: str) -> str | None:
    return "must not be empty" if not v.strip() else _no_control(v)


def _dest_root(v: str) -> str | None:
    if not v or any(not seg.strip() for seg in v.split(".")):
        return "must be a '.'-separated folder path without empty parts, e.g. INBOX.historical_data"
    if "*" in v or "%" in v:
        return "must not contain '*' or '%'"
    return _no_control(v)


def _address(v: str) -> str | None:
    local, at, domain = v.rpartition("@")
    if not at or not local or not domain or any(c.isspace() or c in "<>" for c in v):
        return f"must be a mail address like legacyflo@example.com, got {v!r}"
    return None


def _login_format(v: str) -> str | None:
    try:
        v.format(user="u", domain="d")
    except (KeyError, IndexError, ValueError) as exc:
        return f"only {{user}} and {{domain}} may be used ({exc!s})"
    return None if "{user}" in v else "must contain {user}"


def _folders(v: tuple[str, ...]) -> str | None:
    return "must not contain empty names" if any(not f.strip() for f in v) else None


_PORT = _between(1, 65535)
_POSITIVE = _at_least(1)

# "<section>.<field>" (hosts: "hosts.<field>") -> extra checks after the type check.
_CHECKS: dict[str, Check] = {
    "daemon.max_jobs": _POSITIVE,
    "daemon.max_per_host": _POSITIVE,
    "daemon.byte_budget_mb": _POSITIVE,
    "daemon.grace_seconds": _at_least(0),
    "daemon.poll_delay_ms": _between(10, 60_000),
    "daemon.stable_seconds": _at_least(0),
    "daemon.rescan_seconds": _at_least(1),
    "daemon.max_crashes": _POSITIVE,
    "imap.dest_port": _PORT,
    "imap.dest_root": _dest_root,
    "imap.timeout": _at_least(1),
    "imap.connect_timeout": _at_least(1),
    "imap.max_per_login": _POSITIVE,
    "imap.retries": _at_least(0),
    "imap.backoff_base": _at_least(0.01),
    "imap.backoff_max": _at_least(0.01),
    "imap.fetch_batch": _between(1, 1000),
    "imap.fetch_batch_bytes": _at_least(64 * 1024),
    "imap.exclude_folders": _folders,
    "log.level": _one_of("debug", "info", "warning", "error", "critical"),
    "log.format": _one_of("auto", "json", "console"),
    "smtp.host": _not_blank,
    "smtp.port": _PORT,
    "smtp.tls": _one_of("starttls", "implicit", "none"),
    "smtp.username": _not_blank,
    "smtp.password_env": _not_blank,
    "smtp.timeout": _at_least(1),
    "report.from_address": _address,
    "report.compress_listing_above_kb": _at_least(0),
    "hosts.port": _PORT,
    "hosts.login_format": _login_format,
    "hosts.max_connections": _POSITIVE,
    "hosts.max_per_login": _POSITIVE,
}
_LOWERCASE = {"log.level", "log.format", "smtp.tls"}
_REJECTED = {
    "smtp.password": "a password is not accepted in the config file (it is often readable by "
    "others and ends up in backups): use password_file or password_env",
}
_SECTIONS: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "imap": ImapConfig,
    "log": LogConfig,
    "report": ReportConfig,
    "smtp": SmtpConfig,
}


class _Reader:
    """Reads one parsed TOML document; every error names ``path`` and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = Path(os.path.abspath(path.parent))

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(str(self.path), key, message)

    def table(self, cls: type[Any], raw: object, key: str, checks: str) -> Any:
        """An instance of dataclass ``cls`` from ``raw``; ``checks`` prefixes ``_CHECKS`` keys."""
        if not isinstance(raw, dict):
            raise self.fail(key, "expected a table")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in raw.items():
            where = f"{key}.{name}"
            if f"{checks}.{name}" in _REJECTED:
                raise self.fail(where, _REJECTED[f"{checks}.{name}"])
            if name not in fields:
                known = ", ".join(fields)
                raise self.fail(where, f"unknown key (known keys: {known})")
            converted = self.value(hints[name], value, where)
            if f"{checks}.{name}" in _LOWERCASE:
                converted = converted.lower()
            check = _CHECKS.get(f"{checks}.{name}")
            problem = check(converted) if check is not None else None
            if problem:
                raise self.fail(where, problem)
            values[name] = converted
        for name, f in fields.items():
            if (
                name not in values
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                raise self.fail(f"{key}.{name}", "missing (this key is required)")
        return cls(**values)

    def value(self, hint: Any, value: object, where: str) -> Any:
        """``value`` converted to the annotation ``hint`` (``X | None`` reads as ``X``)."""
        if isinstance(hint, types.UnionType):
            (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
        if hint is bool:
            if not isinstance(value, bool):
                raise self.fail(where, "expected true or false")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(where, "expected an integer")
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(where, "expected a number")
            if not math.isfinite(value):
                raise self.fail(where, "expected a finite number")
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise self.fail(where, "expected a string")
            return value
        if hint is Path:
            if not isinstance(value, str) or not value.strip():
                raise self.fail(where, "expected a path (a non-empty string)")
            return self.base / Path(value).expanduser()
        if typing.get_origin(hint) is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.fail(where, "expected a list of strings")
            return tuple(value)
        raise TypeError(f"config field {where} has an unsupported type {hint!r}")

    def config(self, doc: Mapping[str, object]) -> Config:
        values: dict[str, Any] = {}
        for name, raw in doc.items():
            if name == "hosts":
                values["hosts"] = self.hosts(raw)
            elif name in _SECTIONS:
                values[name] = self.table(_SECTIONS[name], raw, name, name)
            else:
                raise self.fail(name, f"unknown section (known: {', '.join(_SECTIONS)}, hosts)")
        cfg = Config(**values, path=self.path)
        if not cfg.daemon.spool.is_absolute():  # the default: relative to the file too
            daemon = dataclasses.replace(cfg.daemon, spool=self.base / cfg.daemon.spool)
            cfg = dataclasses.replace(cfg, daemon=daemon)
        self.cross_checks(cfg)
        return cfg

    def hosts(self, raw: object) -> dict[str, HostConfig]:
        if not isinstance(raw, dict):
            raise self.fail("hosts", 'expected tables like [hosts."mail.example.com"]')
        hosts: dict[str, HostConfig] = {}
        for name, table in raw.items():
            quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            key = f"hosts.{quoted}"
            if not name.strip() or any(c.isspace() for c in name):
                raise self.fail(key, "a host name must not be empty or contain spaces")
            if name.lower() in hosts:
                raise self.fail(key, "listed twice (host names are case-insensitive)")
            hosts[name.lower()] = self.table(HostConfig, table, key, "hosts")
        return hosts

    def cross_checks(self, cfg: Config) -> None:
        if cfg.imap.backoff_max < cfg.imap.backoff_base:
            raise self.fail("imap.backoff_max", "must not be smaller than imap.backoff_base")
        files: list[tuple[str, Path | None]] = [
            (f'hosts."{n}".ca_file', h.ca_file) for n, h in cfg.hosts.items()
        ]
        smtp = cfg.smtp
        if smtp is not None:
            files += [("smtp.ca_file", smtp.ca_file), ("smtp.password_file", smtp.password_file)]
            if smtp.password_file is not None and smtp.password_env is not None:
                raise self.fail("smtp.password_env", "give password_file or password_env, not both")
            has_password = smtp.password_file is not None or smtp.password_env is not None
            if has_password and smtp.username is None:
                raise self.fail("smtp.username", "missing: a password is set but no username")
            if smtp.username is not None and not has_password:
                raise self.fail("smtp.username", "needs password_file or password_env")
        for key, file in files:
            if file is not None and not file.is_file():
                raise self.fail(key, f"{file} is not a readable file")


def load_config(path: Path | None) -> Config:
    """The configuration in ``path`` (TOML), or the defaults when ``path`` is None.

    Raises ``ConfigError`` (one line naming the file and the key) for an unreadable file,
    invalid TOML, an unknown key, a wrong type, an out-of-range value or a missing file it names.
    """
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fp:
            doc = tomllib.load(fp)
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None
    return _Reader(path).config(doc)
