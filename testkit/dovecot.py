"""A private Dovecot 2.3 instance for one test session (or one test): start, users, logs, stop.

Owns: the instance's directory (a fresh ``/tmp/lf-dovecot-*``), its ports, its users (one
passwd-file each), ``doveadm`` and reading its log. The process itself is ``master.py``'s.
Must not: touch the system Dovecot (``/etc/dovecot``, ``/run/dovecot``) or outlive the Python
process: every started instance is also killed at interpreter exit.

The instance directory is not under pytest's ``tmp_path`` on purpose: that tree is mode 0700
for root, and the mail processes run as ``nobody`` (Dovecot refuses uid 0 for mail).
"""

from __future__ import annotations

import base64
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit import dovelog
from testkit.dovecot_conf import (
    DEFAULT_ADDRESSES,
    PREFIX,
    SEPARATOR,
    DovecotSettings,
    RunAs,
    ServerAddresses,
    ServerKind,
    render_config,
    render_oauth2_conf,
)
from testkit.master import ENV, MasterProcess, free_port, missing_dovecot
from testkit.tlsca import TlsCa

__all__ = ["DovecotServer", "missing_dovecot"]

NOBODY = 65534  # nobody:nogroup, the mail owner when the tests run as root
_counter = iter(range(1, 1_000_000))


class DovecotServer:
    """One Dovecot instance of ``kind`` using the certificate of ``tls``.

    Use as a context manager or call ``start()``/``stop()``. Properties are valid after start.
    """

    def __init__(
        self,
        kind: ServerKind,
        tls: TlsCa,
        *,
        addresses: ServerAddresses | None = None,
        max_userip_connections: int = 1000,
        extra_conf: str = "",
        master_users: bool = False,
        oauth2_introspection_url: str | None = None,
        oauth2_mechanisms: str = "xoauth2 oauthbearer",
    ) -> None:
        """``master_users``: a master passdb (``add_master_user``); ``oauth2_introspection_url``:
        an oauth2 passdb that checks tokens there (``testkit.identity``), offered as
        ``oauth2_mechanisms`` ("xoauth2", "oauthbearer" or both)."""
        self.kind = kind
        self.tls = tls
        self.addresses = addresses or DEFAULT_ADDRESSES[kind]
        self.max_userip_connections = max_userip_connections
        self.extra_conf = extra_conf
        self.master_users = master_users
        self.oauth2_introspection_url = oauth2_introspection_url
        self.oauth2_mechanisms = oauth2_mechanisms
        self.name = f"lf-{kind.value}-{os.getpid()}-{next(_counter)}"
        self.root = Path(tempfile.mkdtemp(prefix=f"lf-dovecot-{kind.value}-"))
        self.root.chmod(0o755)  # the mail processes (nobody) must traverse it
        self._master = MasterProcess(self.root / "dovecot.conf", self.root / "dovecot.out")
        self._ports: tuple[int, int] | None = None
        self._users: set[str] = set()
        self._lock = threading.Lock()
        if os.geteuid() == 0:
            self.mail_uid, self.mail_gid, self._run_as = NOBODY, NOBODY, None
        else:
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
            self._run_as = RunAs(
                pwd.getpwuid(self.mail_uid).pw_name,
                grp.getgrgid(self.mail_gid).gr_name,
                self.mail_uid,
            )

    # -- addresses and layout ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.addresses.host

    @property
    def insecure_host(self) -> str:
        return self.addresses.insecure_host

    @property
    def notls_host(self) -> str:
        return self.addresses.notls_host

    @property
    def port_plain(self) -> int:
        """The 143-like port: STARTTLS offered (except on ``notls_host``)."""
        if self._ports is None:
            raise RuntimeError("server not started")
        return self._ports[0]

    @property
    def port_tls(self) -> int:
        """The 993-like port: implicit TLS."""
        if self._ports is None:
            raise RuntimeError("server not started")
        return self._ports[1]

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    @property
    def separator(self) -> str:
        return SEPARATOR[self.kind]

    @property
    def prefix(self) -> str:
        return PREFIX[self.kind]

    @property
    def conf_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._users)

    def home(self, user: str) -> Path:
        return self.root / "mail" / user

    def maildir(self, user: str) -> Path:
        """The user's INBOX maildir (``mail_location = maildir:~/Maildir``)."""
        return self.home(user) / "Maildir"

    # -- lifecycle -----------------------------------------------------------------------------

    def _settings(self, ports: tuple[int, int]) -> DovecotSettings:
        return DovecotSettings(
            name=self.name,
            kind=self.kind,
            root=self.root,
            base_dir=self.root / "run",
            log_path=self.log_path,
            addresses=self.addresses,
            port_plain=ports[0],
            port_tls=ports[1],
            cert_file=self.tls.cert_file,
            key_file=self.tls.key_file,
            mail_uid=self.mail_uid,
            mail_gid=self.mail_gid,
            max_userip_connections=self.max_userip_connections,
            run_as=self._run_as,
            extra=self.extra_conf,
            master_users_file=self.root / "masters" if self.master_users else None,
            oauth2_conf=self.root / "dovecot-oauth2.conf.ext"
            if self.oauth2_introspection_url is not None
            else None,
            oauth2_mechanisms=self.oauth2_mechanisms,
        )

    def start(self, timeout: float = 10.0) -> Self:
        """Start the instance and wait until both ports accept connections.

        On restart the ports stay the same (clients keep their config); ``base_dir`` is always
        recreated, because a stale anvil socket stalls the first login for 5 s.
        """
        if self._master.running:
            raise RuntimeError("already started")
        (self.root / "state").mkdir(exist_ok=True)
        mail = self.root / "mail"
        mail.mkdir(exist_ok=True)
        os.chown(mail, self.mail_uid, self.mail_gid)
        self.users_dir.mkdir(exist_ok=True)
        for _attempt in range(1 if self._ports is not None else 3):
            ports = self._ports or self._pick_ports()
            shutil.rmtree(self.root / "run", ignore_errors=True)
            (self.root / "run").mkdir()
            settings = self._settings(ports)
            if settings.master_users_file is not None and not settings.master_users_file.exists():
                settings.master_users_file.write_text("")
            if settings.oauth2_conf is not None and self.oauth2_introspection_url is not None:
                ca = self.root / "oauth2-ca.pem"  # readable by the auth process's user
                ca.write_bytes(self.tls.ca_file.read_bytes())
                ca.chmod(0o644)
                settings.oauth2_conf.write_text(
                    render_oauth2_conf(self.oauth2_introspection_url, ca)
                )
            self.conf_path.write_text(render_config(settings))
            if self._master.start(self.host, ports, timeout):
                self._ports = ports
                return self
        raise RuntimeError(f"dovecot did not start:\n{self._master.startup_output()}")

    def _pick_ports(self) -> tuple[int, int]:
        hosts = self.addresses.all()
        plain = free_port(hosts, set())
        return plain, free_port(hosts, {plain})

    @property
    def running(self) -> bool:
        return self._master.running

    def terminate(self) -> None:
        """Ask the master to shut down without waiting; lets a caller stop several instances
        in parallel. ``stop()`` waits."""
        self._master.terminate()

    def stop(self) -> None:
        """Stop the master and its children and wait. Idempotent. Mail, log and ports stay:
        ``start()`` again brings the same server back."""
        self._master.stop()

    def remove(self) -> None:
        """Stop and delete the instance directory (mail, log, config)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    # -- users ---------------------------------------------------------------------------------

    @property
    def users_dir(self) -> Path:
        return self.root / "users.d"

    def add_user(self, name: str, password: str) -> None:
        """Add a login, usable at once. Any password works (stored as {PLAIN.b64})."""
        if not name or any(c in name for c in ":\n\r\0/") or name.startswith("."):
            raise ValueError(f"unusable test user name {name!r}")
        encoded = base64.b64encode(password.encode()).decode()
        with self._lock:
            if name in self._users:
                raise ValueError(f"user {name!r} already exists")
            tmp = self.users_dir / f".{name}.tmp"
            tmp.write_text(f"{name}:{{PLAIN.b64}}{encoded}\n")
            tmp.rename(self.users_dir / name)  # never seen half-written
            self._users.add(name)

    def add_master_user(self, name: str, password: str) -> None:
        """Add a master user (needs ``master_users=True``): it logs in as any user ``u`` with
        ``u*name`` and its own password, or with SASL PLAIN and authzid ``u``. Dovecot re-reads
        the file at most once per second: wait a second before relying on a change."""
        encoded = base64.b64encode(password.encode()).decode()
        with self._lock, open(self.root / "masters", "a") as fp:
            fp.write(f"{name}:{{PLAIN.b64}}{encoded}\n")

    def new_user(self, password: str, prefix: str = "u") -> str:
        """Add a user with a name unique in this process and return the name."""
        name = f"{prefix}{next(_counter)}"
        self.add_user(name, password)
        return name

    def chown_home(self, user: str) -> None:
        """Give the user's home to the mail uid (after writing files into it directly)."""
        home = self.home(user)
        for dirpath, _dirs, files in os.walk(home):
            os.chown(dirpath, self.mail_uid, self.mail_gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), self.mail_uid, self.mail_gid)

    # -- doveadm -------------------------------------------------------------------------------

    def doveadm(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``doveadm -c <conf> *args``; raise with its stderr when it fails and ``check``."""
        proc = subprocess.run(
            ["doveadm", "-c", str(self.conf_path), *args],
            input=input,
            capture_output=True,
            env=ENV,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"doveadm {' '.join(args)} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def kick(self, user: str) -> None:
        """Disconnect every session of ``user`` (server sends BYE and closes)."""
        self.doveadm("kick", user)

    # -- log -----------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logins(self, user: str | None = None) -> list[dovelog.Login]:
        return dovelog.logins(self.log_text(), user)

    def count_logins(self, user: str) -> dovelog.LoginCounts:
        return dovelog.count_logins(self.log_text(), user)

    def max_concurrent_sessions(self, user: str | None = None) -> int:
        """Peak of simultaneously logged-in sessions of ``user`` (all users if None)."""
        return dovelog.max_concurrent_sessions(self.log_text(), user)

    def open_sessions(self, user: str | None = None) -> int:
        return dovelog.open_sessions(self.log_text(), user)

    def wait_for_log(self, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
        """Poll the log until ``predicate(log_text)`` holds; return the text. Lines are written
        by Dovecot's log process asynchronously, a few ms after the event."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise TimeoutError(f"log condition not met in {timeout} s; log:\n{text[-3000:]}")
            time.sleep(0.02)

    def __repr__(self) -> str:
        state = f"{self.host}:{self._ports}" if self._ports else "not started"
        return f"<DovecotServer {self.kind.value} {state} {self.root}>"
