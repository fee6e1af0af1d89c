"""Helpers for the end-to-end tests: the daemon as a subprocess against the real test servers.

Owns: writing a daemon config for the two Dovecot test servers (implicit TLS, the test CA), the
request CSV in the reference document's column set, dropping a CSV into ``incoming/`` without
ever leaving a copy of its passwords elsewhere, running ``legacyflo-daemon`` (``run``,
``status``) as a child process whose JSON log lines the test can wait for, loading test
mailboxes, and the independent checks: the archive holds every source message exactly once,
no written file holds a password, the servers' own logs bound the concurrent sessions.

Must not: import the daemon's internals to drive it (the daemon is only ever a subprocess
here; ``legacyflo_daemon`` is not imported at all), or relax a check to make a test pass.
The checks read the servers with ``doveadm`` and their log files, never with an IMAP login, so
that they do not disturb the session counts they measure.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from testkit import dovelog
from testkit.dovecot import DovecotServer
from testkit.imap import ServerAccount
from testkit.maildir import MailSpec, folder_dir, load_messages
from testkit.mailgen import lorem, make_message, utc
from testkit.snapshot import Content, MailboxSnapshot, snapshot_mailbox

DAEMON = (sys.executable, "-m", "legacyflo_daemon.cli.main")
DEST_ROOT = "INBOX.historical_data"
HEADER = (
    "jobtype", "jobtitle", "destuserid", "destdomain", "destuserpasswd", "destServer",
    "destfolder", "sendreportid", "sourceuserid", "sourcedomainname", "sourceuserpassword",
    "sourceserver", "sourceserverport", "since", "before",
)  # fmt: skip
# Events emitted inside a request's task: each must carry that request's id (docs/contract.md §7.4).
REQUEST_EVENTS = frozenset({
    "request_started", "folder_started", "folder_copied", "request_progress",
    "request_finished", "message_failed", "result_written", "request_retry",
    "request_interrupted", "request_crashed",
})  # fmt: skip
Event = dict[str, Any]
T = TypeVar("T")


# -- config and CSV ----------------------------------------------------------------------------


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a TOML basic string is a JSON string for our values
    raise TypeError(f"no TOML form for {value!r}")


def _table(name: str, values: Mapping[str, object]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


def write_config(
    path: Path,
    *,
    spool: Path,
    source: DovecotServer,
    dest: DovecotServer,
    daemon: Mapping[str, object] | None = None,
    imap: Mapping[str, object] | None = None,
    log_file: Path | None = None,
    smtp_port: int | None = None,
    hosts: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """A config for the test servers: both hosts implicit TLS verified with the test CA, the
    destination's implicit-TLS port, JSON logs, quick intake and retries; ``daemon``/``imap``
    override or add keys of those tables; ``hosts`` (host name -> keys) adds keys to a server's
    ``[hosts."x"]`` table, or tables for other names (implicit TLS with the source's CA)."""
    daemon_table: dict[str, object] = {
        "spool": spool,
        "max_jobs": 3,
        "max_per_host": 3,
        "grace_seconds": 10.0,
        "stable_seconds": 0.3,
        "rescan_seconds": 1.0,
        **(daemon or {}),
    }
    imap_table: dict[str, object] = {
        "dest_port": dest.port_tls,
        "connect_timeout": 10.0,
        "timeout": 20.0,
        "retries": 3,
        "backoff_base": 0.2,
        "backoff_max": 1.0,
        **(imap or {}),
    }
    log_table: dict[str, object] = {"format": "json"}
    if log_file is not None:
        log_table["file"] = log_file
    parts = [_table("daemon", daemon_table), _table("imap", imap_table), _table("log", log_table)]
    if smtp_port is not None:
        parts.append(_table("smtp", {"host": "127.0.0.1", "port": smtp_port, "tls": "none"}))
    extra = dict(hosts or {})
    for server in (source, dest):
        host = {"tls": "implicit", "ca_file": server.ca_file, **extra.pop(server.host, {})}
        parts.append(_table(f'hosts."{server.host}"', host))
    for name, keys in extra.items():
        parts.append(
            _table(f'hosts."{name}"', {"tls": "implicit", "ca_file": source.ca_file, **keys})
        )
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Row:
    """One request row: ``source`` copied into ``dest`` under ``folder``.

    ``source_port`` defaults to the source's implicit-TLS port (a proxy's port can be given);
    ``source_password`` overrides the real one (a wrong-password row, an empty one);
    ``source_host`` another name of the source server (``localhost``, another address).
    """

    source: ServerAccount
    dest: ServerAccount
    folder: str
    source_port: int | None = None
    source_password: str | None = field(default=None, repr=False)
    source_host: str | None = None  # another name of the source server (its own config)
    report_to: str = ""
    jobtype: str = "EXCHANGEIMAP"
    title: str = ""
    since: str = ""
    before: str = ""

    def values(self) -> dict[str, str]:
        return {
            "jobtype": self.jobtype,
            "jobtitle": self.title or f"e2e {self.source.user} -> {self.dest.user}/{self.folder}",
            "destuserid": self.dest.user,
            "destdomain": self.dest.domain,
            "destuserpasswd": self.dest.password,
            "destServer": self.dest.host,
            "destfolder": self.folder,
            "sendreportid": self.report_to,
            "sourceuserid": self.source.user,
            "sourcedomainname": self.source.domain,
            "sourceuserpassword": (
                self.source.password if self.source_password is None else self.source_password
            ),
            "sourceserver": self.source_host or self.source.host,
            "sourceserverport": str(self.source_port or self.source.port_tls),
            "since": self.since,
            "before": self.before,
        }


def request_csv(rows: Iterable[Row], extra_lines: Sequence[str] = ()) -> bytes:
    """The CSV (CRLF, every field quoted) of ``rows``, then ``extra_lines`` verbatim."""
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(HEADER)
    for row in rows:
        values = row.values()
        writer.writerow([values[name] for name in HEADER])
    for line in extra_lines:
        buf.write(line + "\r\n")
    return buf.getvalue().encode("utf-8")


def drop_csv(incoming: Path, name: str, data: bytes) -> Path:
    """Put ``data`` into ``incoming/<name>`` atomically (a dot-name the daemon ignores, then a
    rename), mode 0600, and nowhere else: the only copy of the passwords is the daemon's."""
    tmp = incoming / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    target = incoming / name
    tmp.rename(target)
    return target


def write_slowly(path: Path, data: bytes, *, seconds: float, chunks: int) -> None:
    """Write ``data`` into ``path`` (its final name) in ``chunks`` pieces over ``seconds``,
    flushing each piece, so that a reader sees it grow."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    step = -(-len(data) // chunks)
    with os.fdopen(fd, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start : start + step])
            f.flush()
            os.fsync(f.fileno())
            if start + step < len(data):
                time.sleep(seconds / chunks)


# -- the daemon as a child process -------------------------------------------------------------


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a daemon child: no inherited config or systemd
    variables (only what a test sets on purpose, in ``extra``), unbuffered output."""
    unwanted = {"LEGACYFLO_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
    env = {k: v for k, v in os.environ.items() if k not in unwanted}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class DaemonProcess:
    """``legacyflo-daemon run --config CONFIG [--once]`` with stdout and stderr in files under
    ``workdir`` (``<name>.stdout``/``.stderr``). As a context manager it is killed at the end
    if still running, so a failing test never leaves a daemon behind."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        name: str,
        once: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        args = [*DAEMON, "run", "--config", str(config), *(["--once"] if once else [])]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=err, env=dict(env) if env is not None else daemon_env()
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[str]:
        """Complete stdout lines so far (a line being written is left out)."""
        text = self.stdout_path.read_bytes().decode("utf-8", errors="replace")
        return text.split("\n")[:-1]

    def events(self) -> list[Event]:
        """The stdout lines that are JSON objects (``check_log_lines`` checks all of them)."""
        found = []
        for line in self.lines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
        return found

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float, what: str) -> Event:
        """The first event satisfying ``predicate``; fails if the daemon exits or time runs out."""
        return wait_until(lambda: next((e for e in self.events() if predicate(e)), None),
                          timeout, what, self)  # fmt: skip

    def wait_for_event(self, name: str, timeout: float) -> Event:
        return self.wait_for(lambda e: e.get("event") == name, timeout, f"event {name}")

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test (after killing it) if it runs longer than ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the daemon did not exit within {timeout} s\n{self.describe()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL (``kill -9``) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def describe(self) -> str:
        tail = "\n".join(self.lines()[-15:])
        return f"last log lines:\n{tail}\nstderr:\n{self.stderr()[-3000:]}"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


class Work:
    """A test's directory: ``spool/``, ``config.toml``, the daemon's output files."""

    def __init__(self, root: Path, source: DovecotServer, dest: DovecotServer) -> None:
        self.root = root
        self.spool = root / "spool"
        self.config = root / "config.toml"
        self.log_file = root / "daemon.log"
        self.source = source
        self.dest = dest
        for sub in ("", "incoming"):
            (self.spool / sub).mkdir(mode=0o700, exist_ok=True)

    def configure(
        self,
        *,
        daemon: Mapping[str, object] | None = None,
        imap: Mapping[str, object] | None = None,
        smtp_port: int | None = None,
        hosts: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Path:
        """(Re)write ``config.toml`` (see ``write_config``), logging to ``daemon.log`` too."""
        return write_config(
            self.config,
            spool=self.spool,
            source=self.source,
            dest=self.dest,
            daemon=daemon,
            imap=imap,
            log_file=self.log_file,
            smtp_port=smtp_port,
            hosts=hosts,
        )

    def daemon(
        self, name: str, *, once: bool = False, env: Mapping[str, str] | None = None
    ) -> DaemonProcess:
        """Start ``legacyflo-daemon run`` on this config; output in ``<name>.stdout``."""
        return DaemonProcess(self.config, self.root, name=name, once=once, env=env)

    def files(self, sub: str) -> list[str]:
        path = self.spool / sub
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    daemon: DaemonProcess | None = None,
    interval: float = 0.05,
) -> T:
    """Poll ``probe`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if daemon is not None and daemon.proc.poll() is not None:
            raise AssertionError(
                f"the daemon exited ({daemon.proc.returncode}) before {what}\n{daemon.describe()}"
            )
        if time.monotonic() > deadline:
            detail = f"\n{daemon.describe()}" if daemon is not None else ""
            raise AssertionError(f"no {what} within {timeout} s{detail}")
        time.sleep(interval)


async def wait_until_async(
    probe: Callable[[], T | None], seconds: float, what: str, interval: float = 0.01
) -> T:
    """``wait_until`` for a coroutine: the event loop keeps running between the probes (a
    blocking ``wait_until`` there would stall the very thing being waited for)."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {seconds} s")
        await asyncio.sleep(interval)


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``legacyflo-daemon *args`` to completion, output captured as text."""
    return subprocess.run(
        [*DAEMON, *args], capture_output=True, text=True, timeout=timeout, env=daemon_env()
    )


def check_log_lines(lines: Sequence[str], request_ids: Iterable[str] = ()) -> list[str]:
    """Problems with the log: every line a JSON object with ``event``, ``level`` and
    ``timestamp`` (UTC, ``Z``); every request event with a ``request_id`` (one of
    ``request_ids`` when given). Empty when all is well."""
    known = set(request_ids)
    problems = []
    for n, line in enumerate(lines, start=1):
        try:
            event = json.loads(line)
        except ValueError:
            problems.append(f"line {n} is not JSON: {line[:200]!r}")
            continue
        if not isinstance(event, dict):
            problems.append(f"line {n} is not a JSON object: {line[:200]!r}")
            continue
        missing = [k for k in ("event", "level", "timestamp") if not event.get(k)]
        if missing:
            problems.append(f"line {n} lacks {missing}: {line[:200]!r}")
            continue
        if not str(event["timestamp"]).endswith("Z"):
            problems.append(f"line {n}: timestamp not UTC: {event['timestamp']!r}")
        if event["event"] in REQUEST_EVENTS:
            rid = event.get("request_id")
            if not rid or (known and rid not in known):
                problems.append(f"line {n}: {event['event']} with request_id {rid!r}")
    return problems


# -- spool and results -------------------------------------------------------------------------


def results(spool: Path) -> dict[str, Event]:
    """``outbox/<request_id>.json`` by request id (summaries left out)."""
    out = {}
    for path in (spool / "outbox").glob("*.json"):
        if not path.name.endswith(".summary.json"):
            out[path.name.removesuffix(".json")] = json.loads(path.read_text(encoding="utf-8"))
    return out


def summary(spool: Path, csv_name: str) -> Event | None:
    path = spool / "outbox" / f"{csv_name}.summary.json"
    if not path.exists():
        return None
    value: Event = json.loads(path.read_text(encoding="utf-8"))
    return value


def secret_forms(secret: str) -> set[bytes]:
    """How a password could be written: raw UTF-8, JSON-escaped (raw and ``\\uXXXX`` for
    non-ASCII), CSV-quoted, IMAP-quoted."""
    forms = {
        secret,
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret, ensure_ascii=True)[1:-1],
        secret.replace('"', '""'),
        secret.replace("\\", "\\\\").replace('"', '\\"'),
    }
    return {f.encode("utf-8") for f in forms}


def files_containing(root: Path, secrets: Iterable[str]) -> dict[Path, list[str]]:
    """Every file under ``root`` holding one of ``secrets`` in any of its ``secret_forms``,
    with which ones (shown masked: only their length)."""
    needles = [(s, secret_forms(s)) for s in secrets]
    found: dict[Path, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits = [
            f"<{len(s)}-char password>" for s, forms in needles if any(f in data for f in forms)
        ]
        if hits:
            found[path] = hits
    return found


# -- mailboxes ---------------------------------------------------------------------------------


def mailbox_specs(
    tag: str, folders: Mapping[str, int], *, body_words: int = 40, seed: int = 0
) -> dict[str, list[MailSpec]]:
    """``folders`` (source name -> count) filled with distinct, deterministic messages whose
    Message-IDs carry ``tag``; dates spread over 2015-2020; some flags."""
    out: dict[str, list[MailSpec]] = {}
    k = seed
    for folder, count in folders.items():
        specs = []
        for i in range(count):
            when = utc(2015 + k % 6, 1 + k % 12, 1 + k % 28, k % 24, k % 60)
            flags = {"\\Seen"} if k % 3 else set()
            if k % 7 == 2:
                flags.add("\\Flagged")
            data = make_message(
                subject=f"{tag} {folder} #{i}",
                date=when,
                message_id=f"<{tag}-{k}@e2e.example>",
                body=lorem(k, body_words) + "\n",
            )
            specs.append(MailSpec(data, frozenset(flags), when, label=f"{tag}-{k}"))
            k += 1
        out[folder] = specs
    return out


def load_mailbox(server: DovecotServer, user: str, specs: Mapping[str, list[MailSpec]]) -> int:
    """Load ``specs`` into ``user``'s mailbox; the number of messages loaded."""
    for folder, folder_specs in specs.items():
        load_messages(server, user, folder, folder_specs)
    return sum(len(s) for s in specs.values())


def dest_name(source_folder: str, dest_folder: str, source_sep: str = "/") -> str:
    """docs/contract.md §4.2 for our two servers:
    ``INBOX/Sub`` -> ``<root>.<dest_folder>.Inbox.Sub``."""
    parts = source_folder.split(source_sep)
    if parts[0].upper() == "INBOX":
        parts[0] = "Inbox"
    return ".".join([DEST_ROOT, dest_folder, *parts])


def dest_count(dest: DovecotServer, user: str, folder: str) -> int:
    """Messages in a destination folder, counted from its maildir files (no login, no lock)."""
    path = folder_dir(dest, user, folder)
    return sum(1 for sub in ("cur", "new") if (path / sub).is_dir() for _ in (path / sub).iterdir())


def archive_problems(source: MailboxSnapshot, dest: MailboxSnapshot, dest_folder: str) -> list[str]:
    """Why the archive under ``<root>.<dest_folder>`` is not exactly the source's mail.

    Compared folder by folder as multisets of (sha256 of the bytes, flags, INTERNALDATE): a
    message missing, duplicated, altered, or in the wrong folder is a problem. Folders empty on
    both sides do not count. Meant for sources without non-mail folders and open date ranges.
    """
    want = {dest_name(name, dest_folder): f.contents() for name, f in source.folders.items()}
    got = {name: f.contents() for name, f in dest.under(f"{DEST_ROOT}.{dest_folder}.").items()}
    problems = []
    for name in sorted(set(want) | set(got)):
        w, g = want.get(name, Counter[Content]()), got.get(name, Counter[Content]())
        if w == g:
            continue
        extra, lost = g - w, w - g
        problems.append(
            f"{name}: {sum(w.values())} expected, {sum(g.values())} found "
            f"({sum(lost.values())} missing, {sum(extra.values())} extra or altered)"
        )
    return problems


def archive_problems_of(
    pairs: Iterable[tuple[ServerAccount, ServerAccount, str]],
) -> list[tuple[str, list[str]]]:
    """``archive_problems`` for each (source, dest, folder); only the ones with problems."""
    out = []
    for src, dst, folder in pairs:
        problems = archive_problems(
            snapshot_mailbox(src.server, src.user), snapshot_mailbox(dst.server, dst.user), folder
        )
        if problems:
            out.append((f"{src.user} -> {dst.user}/{folder}", problems))
    return out


# -- report mails -----------------------------------------------------------------------------


BATCH_HEADER = b"\r\nX-Legacyflo-Batch: "  # only batch reports carry it


class MailCatcher:
    """An aiosmtpd handler keeping every mail it accepts (the SMTP server runs in a thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mails: list[tuple[str, tuple[str, ...], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content or b""
        with self._lock:
            self._mails.append((str(envelope.mail_from), tuple(envelope.rcpt_tos), bytes(content)))
        return "250 OK"

    @property
    def mails(self) -> list[tuple[str, tuple[str, ...], bytes]]:
        """(envelope sender, recipients, data) of each per-account report received, in order
        (batch reports are in ``batch_mails``)."""
        with self._lock:
            return [m for m in self._mails if BATCH_HEADER not in m[2]]

    @property
    def batch_mails(self) -> list[tuple[str, tuple[str, ...], bytes]]:
        """The batch reports received (one per finished CSV), in order."""
        with self._lock:
            return [m for m in self._mails if BATCH_HEADER in m[2]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the servers' logs -------------------------------------------------------------------------


class LogMark:
    """A position in a Dovecot log: what the server logged since then."""

    def __init__(self, server: DovecotServer) -> None:
        self.server = server
        self.offset = server.log_path.stat().st_size if server.log_path.exists() else 0

    def text(self) -> str:
        with self.server.log_path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", errors="replace")

    def logins(self, user: str | None = None) -> list[dovelog.Login]:
        return dovelog.logins(self.text(), user)

    def failed_logins(self, user: str) -> int:
        """Failed authentication attempts of ``user`` since the mark."""
        return dovelog.count_logins(self.text(), user).failed

    def settled(self, timeout: float = 5.0) -> str:
        """The log since the mark once every session that logged in since has disconnected."""

        def probe() -> str | None:
            text = self.text()
            return text if dovelog.open_sessions(text) == 0 else None

        return wait_until(probe, timeout, f"every session on {self.server.host} to end")

    def max_concurrent(self, user: str | None = None) -> int:
        return dovelog.max_concurrent_sessions(self.settled(), user)
