"""Loading the configuration: a TOML file read and validated into ``config.schema``'s dataclasses.

Owns: ``load_config``: reading the file, the conversion of each table into its dataclass by
field name and annotation, the merging of a host's ``source``/``dest`` sub-tables over its base
keys, the value checks (ranges, choices, formats), the cross-key checks and the one-line
``ConfigError`` messages naming the file and the key.
Must not: define the schema or the defaults (the dataclasses in ``config.schema`` do), touch the
network or the spool.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from legacyflo_daemon.config.schema import (
    AUTH_MODES,
    DIRECTIONS,
    Config,
    CsvConfig,
    DaemonConfig,
    HostConfig,
    ImapConfig,
    LogConfig,
    MetricsConfig,
    ReportConfig,
    SmtpConfig,
    StateConfig,
)
from legacyflo_daemon.errors import ConfigError

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


def _node_name(v: str) -> str | None:
    if not v or len(v) > 64 or not all(c.isalnum() or c in "._-" for c in v):
        return "must be 1 to 64 letters, digits, '.', '_' or '-' (it names files in the spool)"
    return None


def _database_url(v: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("postgresql", "postgres"):
        return "must be a PostgreSQL URL like postgresql://legacyflo@db.example.com/legacyflo"
    if parts.password is not None:
        return (
            "must not contain the password (URLs end up in messages and logs): use "
            "state.password_file or state.password_env"
        )
    if not parts.hostname and "host=" not in parts.query:
        return "must name the database server, e.g. postgresql://legacyflo@db.example.com/legacyflo"
    return _no_control(v)


def _login_format(v: str) -> str | None:
    try:
        v.format(user="u", domain="d", admin="a")
    except (KeyError, IndexError, ValueError) as exc:
        return f"only {{user}}, {{domain}} and {{admin}} may be used ({exc!s})"
    return None if "{user}" in v else "must contain {user}"


def _https_url(v: str) -> str | None:
    rest = v.removeprefix("https://")
    if rest == v or not rest or any(c.isspace() for c in v) or "?" in v or "#" in v:
        return f"must be an https:// URL like https://login.microsoftonline.com, got {v!r}"
    return None


def _thumbprint(v: str) -> str | None:
    bare = v.replace(":", "")
    if len(bare) != 40 or any(c not in "0123456789abcdefABCDEF" for c in bare):
        return "must be the certificate's SHA-1 thumbprint: 40 hexadecimal digits"
    return None


def _folders(v: tuple[str, ...]) -> str | None:
    return "must not contain empty names" if any(not f.strip() for f in v) else None


_PORT = _between(1, 65535)
_POSITIVE = _at_least(1)


def _listen(v: str) -> str | None:
    host, colon, port = v.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"must be host:port, e.g. 127.0.0.1:9464, got {v!r}"
    return None


# "<section>.<field>" (hosts and their source/dest sub-tables: "hosts.<field>") -> extra checks
# after the type check.
_CHECKS: dict[str, Check] = {
    "metrics.listen": _listen,
    "report.batch_to": lambda v: next((e for a in v if (e := _address(a))), None),
    "daemon.max_jobs": _POSITIVE,
    "daemon.max_per_host": _POSITIVE,
    "daemon.byte_budget_mb": _POSITIVE,
    "daemon.grace_seconds": _at_least(0),
    "daemon.poll_delay_ms": _between(10, 60_000),
    "daemon.stable_seconds": _at_least(0),
    "daemon.incomplete_seconds": _at_least(1),
    "daemon.rescan_seconds": _at_least(1),
    "daemon.max_crashes": _POSITIVE,
    "csv.max_bytes": _POSITIVE,
    "csv.max_rows": _POSITIVE,
    "csv.max_title_chars": _POSITIVE,
    "csv.max_userid_chars": _POSITIVE,
    "csv.max_password_bytes": _POSITIVE,
    "csv.max_folder_chars": _POSITIVE,
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
    "imap.folder_workers": _between(1, 16),
    "imap.max_message_mb": _between(1, 4096),
    "imap.exclude_folders": _folders,
    "log.level": _one_of("debug", "info", "warning", "error", "critical"),
    "log.format": _one_of("auto", "json", "console"),
    "smtp.host": _not_blank,
    "smtp.port": _PORT,
    "smtp.tls": _one_of("starttls", "implicit", "none"),
    "smtp.username": _not_blank,
    "smtp.password_env": _not_blank,
    "smtp.timeout": _at_least(1),
    "smtp.retry_base": _at_least(0.1),
    "smtp.retry_max": _at_least(0.1),
    "smtp.scan_interval": _at_least(0.1),
    "state.url": _database_url,
    "state.password_env": _not_blank,
    "state.node": _node_name,
    "state.lease_seconds": _at_least(3),
    "report.from_address": _address,
    "report.compress_listing_above_kb": _at_least(0),
    "hosts.port": _PORT,
    "hosts.login_format": _login_format,
    "hosts.tls": _one_of("auto", "implicit", "starttls"),
    "hosts.max_connections": _POSITIVE,
    "hosts.max_per_login": _POSITIVE,
    "hosts.auth": _one_of(*AUTH_MODES),
    "hosts.tenant": _not_blank,
    "hosts.client_id": _not_blank,
    "hosts.client_certificate_thumbprint": _thumbprint,
    "hosts.authority": _https_url,
    "hosts.scope": _not_blank,
    "hosts.admin_user": _not_blank,
}
_LOWERCASE = {"log.level", "log.format", "smtp.tls", "hosts.tls", "hosts.auth"}
_REJECTED = {
    "smtp.password": "a password is not accepted in the config file (it is often readable by "
    "others and ends up in backups): use password_file or password_env",
    "hosts.client_secret": "a secret is not accepted in the config file (it is often readable "
    "by others and ends up in backups): put it in a file and give client_secret_file",
    "hosts.admin_password": "a password is not accepted in the config file (it is often "
    "readable by others and ends up in backups): use admin_password_file",
}
# A host's keys naming files that must exist (checked for the base table and each sub-table).
_HOST_FILES = (
    "ca_file", "client_secret_file", "client_certificate_file", "authority_ca_file",
    "admin_password_file",
)  # fmt: skip
_SECTIONS: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "csv": CsvConfig,
    "imap": ImapConfig,
    "log": LogConfig,
    "report": ReportConfig,
    "smtp": SmtpConfig,
    "state": StateConfig,
    "metrics": MetricsConfig,
}


class _Reader:
    """Reads one parsed TOML document; every error names ``path`` and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = Path(os.path.abspath(path.parent))

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(str(self.path), key, message)

    def table(
        self, cls: type[Any], raw: object, key: str, checks: str, skip: tuple[str, ...] = ()
    ) -> Any:
        """An instance of dataclass ``cls`` from ``raw``; ``checks`` prefixes ``_CHECKS`` keys.

        The fields named in ``skip`` are not keys of this table (an unknown key if given).
        """
        if not isinstance(raw, dict):
            raise self.fail(key, "expected a table")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
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
            hosts[name.lower()] = self.host(table, key)
        return hosts

    def host(self, raw: object, key: str) -> HostConfig:
        """One ``[hosts."x"]`` table (``key``) with its optional ``source``/``dest`` sub-tables,
        each read and checked like the base keys, then merged over them."""
        if not isinstance(raw, dict):
            raise self.fail(key, "expected a table")
        base_raw = {k: v for k, v in raw.items() if k not in DIRECTIONS}
        base: HostConfig = self.table(HostConfig, base_raw, key, "hosts")
        sides: dict[str, Any] = {}
        for direction in DIRECTIONS:
            if direction in raw:
                sub = raw[direction]
                where = f"{key}.{direction}"
                given = self.table(HostConfig, sub, where, "hosts", skip=DIRECTIONS)
                sides[direction] = dataclasses.replace(
                    base, **{name: getattr(given, name) for name in sub}
                )
        return dataclasses.replace(base, **sides)

    def cross_checks(self, cfg: Config) -> None:
        if cfg.imap.backoff_max < cfg.imap.backoff_base:
            raise self.fail("imap.backoff_max", "must not be smaller than imap.backoff_base")
        files: list[tuple[str, Path | None]] = []
        for n, h in cfg.hosts.items():
            for name in _HOST_FILES:
                files.append((f'hosts."{n}".{name}', getattr(h, name)))
                for direction in DIRECTIONS:
                    given = getattr(h.side(direction), name)
                    if given != getattr(h, name):  # given in the sub-table
                        files.append((f'hosts."{n}".{direction}.{name}', given))
            for direction in DIRECTIONS:
                side = h.side(direction)
                where = f'hosts."{n}"' + (f".{direction}" if side is not h else "")
                self.auth_checks(side, where)
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
        state = cfg.state
        files.append(("state.password_file", state.password_file))
        if state.password_file is not None and state.password_env is not None:
            raise self.fail("state.password_env", "give password_file or password_env, not both")
        if state.url is None and (state.password_file or state.password_env):
            raise self.fail("state.url", "missing: a password is set but no database URL")
        if state.url is None and state.node is not None:
            raise self.fail("state.node", "needs state.url: only a shared database has nodes")
        if state.url is None and not cfg.daemon.intake:
            raise self.fail(
                "daemon.intake", "false needs state.url: a worker serves a shared queue"
            )
        for key, file in files:
            if file is not None and not file.is_file():
                raise self.fail(key, f"{file} is not a readable file")

    def auth_checks(self, h: HostConfig, where: str) -> None:
        """The keys ``auth`` needs for one direction of a host (``where`` names its table)."""
        if h.auth == "oauth2":
            for name in ("tenant", "client_id"):
                if getattr(h, name) is None:
                    raise self.fail(f"{where}.{name}", 'missing: auth = "oauth2" needs it')
            secret, cert = h.client_secret_file, h.client_certificate_file
            if (secret is None) == (cert is None):
                raise self.fail(
                    f"{where}.client_secret_file",
                    'auth = "oauth2" needs exactly one of client_secret_file and '
                    "client_certificate_file",
                )
        elif h.auth == "admin":
            for name in ("admin_user", "admin_password_file"):
                if getattr(h, name) is None:
                    raise self.fail(f"{where}.{name}", 'missing: auth = "admin" needs it')
            has_admin = "{admin}" in h.login_format
            if h.sasl_authzid and has_admin:
                raise self.fail(
                    f"{where}.login_format",
                    "with sasl_authzid the login name is the mailbox's only (authorization "
                    "identity): remove {admin}",
                )
            if not h.sasl_authzid and not has_admin:
                raise self.fail(
                    f"{where}.login_format",
                    "auth = \"admin\" needs {admin} in it (e.g. '{domain}\\{admin}\\{user}' "
                    "for Exchange, '{user}*{admin}' for Dovecot master users) or "
                    "sasl_authzid = true",
                )
        elif "{admin}" in h.login_format:
            raise self.fail(f"{where}.login_format", '{admin} needs auth = "admin"')


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
