"""A private Cyrus IMAP 3.6 instance for one test session (or one test): config, users, admin
work, wire logs.

Owns: the instance directory (a fresh ``/tmp/lf-cyrus-*``: ``imapd.conf``, ``cyrus.conf``,
config directory, partition, sasldb, TLS files, all owned by ``cyrus:mail``), its two ports on
loopback (implicit TLS and STARTTLS; ``allowplaintext: no``, so no login before TLS), its users
(``saslpasswd2`` into a private sasldb; the admin creates each user's INBOX), the admin's work
(other users' and shared folders with rights, quotas) and reading the per-user wire logs.
Must not: touch the system Cyrus (``/etc/imapd.conf``, ``/var/lib/cyrus``, ``/run/cyrus``).

Binaries: ``master`` and the tools from the ``cyrus-common`` package, ``imapd`` unpacked from
``cyrus-imapd`` into ``.servers/`` by ``make deps`` (the package conflicts with Dovecot).

Measured on 3.6.1 (Debian 12), some different from what one might expect:
- Debian's build defaults to ``altnamespace: yes`` and ``unixhierarchysep: yes`` (personal
  prefix ``""``, separator ``/``). The kit always sets ``altnamespace: no``, so the personal
  namespace is ``INBOX.`` with ``separator="."`` (``unixhierarchysep: no``, the default here) or
  ``INBOX/`` with ``separator="/"``. NAMESPACE then also lists ``user.`` (other users) and ``""``
  (shared); ``LIST "" "*"`` returns those folders too when the user has rights on them.
- ``munge8bit: yes`` (default) rewrites every raw 8-bit header byte to ``X`` on APPEND, size
  unchanged. ``munge8bit=False`` stores the bytes as sent.
- Seen state is per user: only the owner's own session reports the owner's ``\\Seen``, so
  snapshots are taken as the user (marked with ``ID``, see ``sessions``), not as the admin.
- A new mailbox takes its parent's ACL.
- Before STARTTLS the plain port offers ``LOGINDISABLED`` and no ``AUTH=``; LOGIN gets
  ``NO Login only available under a layer``.
- ``maxlogins_per_user: N``: the login over the limit gets ``NO Too many open connections
  (N of N for <user>)`` (no response code; the connection stays open, unauthenticated).
- Every authenticated session of a user with a directory ``<configdirectory>/log/<user>/`` is
  written there (one file per imapd process, each session starting ``---------- user date``):
  ``new_user`` creates it, ``sessions()`` reads it. Failed and refused logins are not in it.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from testkit import imapmail
from testkit.imap import Security, connect, login
from testkit.imapserver import ENV, PrivateImapServer, missing_files, servers_dir
from testkit.process import ServerProcess
from testkit.tlsca import TlsCa

__all__ = ["CyrusServer", "missing_cyrus"]

CYRUS_BIN = Path("/usr/lib/cyrus/bin")
ADMIN = "lfadmin"
SERVERNAME = "lf-cyrus"  # also the SASL realm of every user
_USER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def imapd_path() -> Path:
    return servers_dir() / "usr/lib/cyrus/bin/imapd"


def missing_cyrus() -> str | None:
    """Why a private Cyrus cannot run here, or None when it can."""
    return missing_files(
        [CYRUS_BIN / "master", CYRUS_BIN / "ctl_cyrusdb", "/usr/sbin/saslpasswd2", imapd_path()],
        "make deps installs it: testkit/install-servers.sh",
    )


def _cyrus_ids() -> tuple[int, int]:
    return pwd.getpwnam("cyrus").pw_uid, grp.getgrnam("mail").gr_gid


class CyrusServer(PrivateImapServer):
    """One Cyrus ``master`` with an ``imap`` (STARTTLS) and an ``imaps`` service on ``host``.

    ``separator``: ``"."`` (``INBOX.`` personal namespace) or ``"/"`` (``unixhierarchysep``).
    ``munge8bit``: Cyrus's default is on. ``maxlogins_per_user``: 0 = no limit.
    ``extra_conf``: more ``imapd.conf`` lines. Use as a context manager or ``start()``/``stop()``.
    """

    kind = "cyrus"
    port_names = ("plain", "tls")
    default_security = Security.TLS

    def __init__(
        self,
        tls: TlsCa,
        *,
        host: str = "127.0.0.1",
        separator: str = ".",
        munge8bit: bool = True,
        maxlogins_per_user: int = 0,
        extra_conf: str = "",
    ) -> None:
        if separator not in (".", "/"):
            raise ValueError(f"Cyrus separator is '.' or '/', not {separator!r}")
        super().__init__(tls, host)
        self._separator = separator
        self.munge8bit = munge8bit
        self.maxlogins_per_user = maxlogins_per_user
        self.extra_conf = extra_conf
        self.admin_user = ADMIN
        self.admin_password = secrets.token_urlsafe(12)
        self.uid, self.gid = _cyrus_ids()

    # -- layout --------------------------------------------------------------------------------

    @property
    def separator(self) -> str:
        return self._separator

    @property
    def prefix(self) -> str:
        return "INBOX" + self._separator

    @property
    def conf_path(self) -> Path:
        return self.root / "imapd.conf"

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def sasldb(self) -> Path:
        return self.root / "sasldb2"

    def mailbox_of(self, user: str, folder: str = "INBOX") -> str:
        """``folder`` of ``user`` as the admin and other users name it: ``user.bob`` for
        ``INBOX``, ``user.bob.Projects`` for ``INBOX.Projects`` (``/`` with that separator)."""
        sep = self._separator
        base = f"user{sep}{user}"
        if folder == "INBOX":
            return base
        if not folder.startswith(self.prefix):
            raise ValueError(f"personal folders start with {self.prefix!r}: {folder!r}")
        return base + sep + folder[len(self.prefix) :]

    # -- configuration -------------------------------------------------------------------------

    def render_imapd_conf(self) -> str:
        r = self.root
        lines = [
            f"configdirectory: {self.config_dir}",
            f"partition-default: {r / 'partition'}",
            f"proc_path: {r / 'proc'}",
            f"mboxname_lockpath: {r / 'lock'}",
            f"idlesocket: {r / 'socket' / 'idle'}",
            f"notifysocket: {r / 'socket' / 'notify'}",
            f"lmtpsocket: {r / 'socket' / 'lmtp'}",
            f"servername: {SERVERNAME}",
            f"tls_server_cert: {r / 'tls' / 'server.pem'}",
            f"tls_server_key: {r / 'tls' / 'server.key'}",
            "allowplaintext: no",
            "sasl_pwcheck_method: auxprop",
            "sasl_auxprop_plugin: sasldb",
            f"sasl_sasldb_path: {self.sasldb}",
            "sasl_mech_list: PLAIN LOGIN",
            f"admins: {ADMIN}",
            "altnamespace: no",
            f"unixhierarchysep: {'yes' if self._separator == '/' else 'no'}",
            f"munge8bit: {'yes' if self.munge8bit else 'no'}",
            f"maxlogins_per_user: {self.maxlogins_per_user}",
            "syslog_prefix: lf-cyrus",
        ]
        return "\n".join(lines) + "\n" + self.extra_conf + ("\n" if self.extra_conf else "")

    def render_cyrus_conf(self, ports: Mapping[str, int]) -> str:
        conf, imapd = self.conf_path, imapd_path()
        return (
            "START {\n"
            f'  recover cmd="{CYRUS_BIN / "ctl_cyrusdb"} -r -C {conf}"\n'
            "}\n"
            "SERVICES {\n"
            f'  imap cmd="{imapd} -C {conf}" listen="{self.host}:{ports["plain"]}"'
            " prefork=0 maxchild=200\n"
            f'  imaps cmd="{imapd} -s -C {conf}" listen="{self.host}:{ports["tls"]}"'
            " prefork=0 maxchild=200\n"
            "}\n"
            "EVENTS {\n"
            "}\n"
        )

    def _chown(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)

    def _prepare(self, ports: Mapping[str, int]) -> ServerProcess:
        r = self.root
        for sub in ("conf", "conf/log", "partition", "proc", "lock", "socket", "tls"):
            (r / sub).mkdir(exist_ok=True)
            self._chown(r / sub)
        # The test CA's directory is root-only: Cyrus (uid cyrus) reads its own copies.
        for src, name in ((self.tls.cert_file, "server.pem"), (self.tls.key_file, "server.key")):
            shutil.copyfile(src, r / "tls" / name)
            (r / "tls" / name).chmod(0o600)
            self._chown(r / "tls" / name)
        self.conf_path.write_text(self.render_imapd_conf())
        (r / "cyrus.conf").write_text(self.render_cyrus_conf(ports))
        if not self.sasldb.exists():
            self._saslpasswd(ADMIN, self.admin_password)
        return ServerProcess(
            [
                str(CYRUS_BIN / "master"),
                "-C",
                str(self.conf_path),
                "-M",
                str(r / "cyrus.conf"),
                "-p",
                str(r / "master.pid"),
            ],
            r / "master.out",
            ENV,
            cwd=r,
        )

    def _saslpasswd(self, name: str, password: str) -> None:
        proc = subprocess.run(
            ["saslpasswd2", "-p", "-c", "-u", SERVERNAME, "-f", str(self.sasldb), name],
            input=password.encode(),
            capture_output=True,
            env=ENV,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"saslpasswd2 {name}: {proc.stderr.decode(errors='replace')}")
        self.sasldb.chmod(0o640)
        self._chown(self.sasldb)

    # -- users and the admin -------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add a login with an empty INBOX and a wire-log directory; usable at once."""
        if not _USER_NAME.fullmatch(name):
            raise ValueError(f"unusable Cyrus test user name {name!r}")
        self._remember(name, password)
        self._saslpasswd(name, password)
        log_dir = self.config_dir / "log" / name
        log_dir.mkdir(exist_ok=True)
        self._chown(log_dir)
        with self.admin() as conn:
            self._admin_ok(conn.create(imapmail.quote(self.mailbox_of(name))), "CREATE")

    @contextmanager
    def admin(self) -> Iterator[imaplib.IMAP4]:
        """A connection logged in as the Cyrus admin (implicit TLS), logged out at the end."""
        conn = connect(self.host, self.port_tls, Security.TLS, self.tls.client_context())
        try:
            login(conn, ADMIN, self.admin_password)
            yield conn
        finally:
            try:
                conn.logout()
            except (imaplib.IMAP4.error, OSError):
                conn.shutdown()

    @staticmethod
    def _admin_ok(result: tuple[str, list[object]], what: str) -> None:
        if result[0] != "OK":
            raise imapmail.ImapError(f"admin {what}: {result[0]} {result[1]!r}")

    def grant(self, mailbox: str, user: str, rights: str = "lr") -> None:
        """SETACL ``mailbox`` (admin's name, see ``mailbox_of``) ``user`` ``rights``."""
        with self.admin() as conn:
            self._admin_ok(conn.setacl(imapmail.quote(mailbox), user, rights), "SETACL")

    def share_folder(self, owner: str, folder: str, grantee: str, rights: str = "lr") -> str:
        """Create ``folder`` of ``owner`` if needed and give ``grantee`` ``rights`` on it.
        Returns the name ``grantee`` sees it under (other users' namespace, ``user.owner.x``)."""
        if folder != "INBOX":
            self.create_folder(owner, folder)
        mailbox = self.mailbox_of(owner, folder)
        self.grant(mailbox, grantee, rights)
        return mailbox

    def create_shared_folder(self, name: str, rights: Mapping[str, str]) -> str:
        """Create the shared folder ``name`` (top level, e.g. ``Public``, or below one) as the
        admin and give each user its rights (``{"u1": "lr"}``). Returns ``name``."""
        with self.admin() as conn:
            self._admin_ok(conn.create(imapmail.quote(name)), f"CREATE {name}")
            for user, r in rights.items():
                self._admin_ok(conn.setacl(imapmail.quote(name), user, r), "SETACL")
        return name

    def set_quota(self, user: str, storage_kib: int) -> None:
        """Quota root on ``user``'s INBOX (and below): ``STORAGE`` in KiB."""
        with self.admin() as conn:
            root = imapmail.quote(self.mailbox_of(user))
            self._admin_ok(conn.setquota(root, f"(STORAGE {storage_kib})"), "SETQUOTA")

    # -- wire logs -----------------------------------------------------------------------------

    def wire_log(self, user: str) -> str:
        """Everything Cyrus recorded of ``user``'s authenticated sessions (one file per imapd
        process, in order of their last write)."""
        log_dir = self.config_dir / "log" / user
        if not log_dir.is_dir():
            return ""
        files = sorted(log_dir.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return "".join(f.read_text(errors="replace") for f in files)

    def sessions(self, user: str, include_testkit: bool = False) -> list[str]:
        """``user``'s authenticated sessions, each a transcript (``<`` client, ``>`` server).
        The kit's own sessions (loading, snapshots; marked with ``ID``) are left out unless
        ``include_testkit``."""
        parts = re.split(r"(?m)^(?=---------- )", self.wire_log(user))
        found = [p for p in parts if p.startswith("---------- ")]
        if include_testkit:
            return found
        return [p for p in found if imapmail.TESTKIT_ID not in p]
