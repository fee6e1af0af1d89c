"""A private Courier-IMAP 5.0 instance for one test session (or one test): authdaemond with
userdb, ``couriertcpd`` on loopback, Maildir++ per user, a login log.

Owns: the instance directory (a fresh ``/tmp/lf-courier-*``), its STARTTLS port (TLS required:
``IMAP_TLS_REQUIRED=1``, no implicit-TLS port, as on the Courier servers the daemon meets), its
users (a private userdb with ``{SHA256}`` passwords, Maildirs owned by ``nobody``), and reading
its log: started without ``-pid``, couriertcpd stays in the foreground and it, imaplogin, imapd
and authdaemond log to its stderr (``courier.out``; no syslog needed): ``LOGIN``, ``LOGOUT``,
``LOGIN FAILED``, and ``ALERT: Maximum connection limit reached`` for ``-maxperip``. Must not:
change ``/etc/courier`` or talk to the system's authdaemond.

Why a private mount namespace: Courier's auth library connects to a compiled-in socket,
``/run/courier/authdaemon/socket``, and authdaemond reads the compiled-in
``/etc/courier/authdaemonrc`` and ``/etc/courier/userdb.dat``; none of them can be moved by
configuration. So the instance runs as ``unshare --mount sh run.sh``: inside, the instance's
``etc/`` is bind-mounted over ``/etc/courier`` and its ``authdaemon/`` over
``/run/courier/authdaemon``, then authdaemond (``authmodulelist="authuserdb"``) is started and
``couriertcpd`` exec'd. Nothing outside the namespace sees the mounts; they vanish with its
last process. Instances run side by side, and the system's files are never edited (the only
change: ``/run/courier/authdaemon`` is created if missing, as the package's tmpfiles.d does).
This needs root (CAP_SYS_ADMIN for the mount namespace), as the tests have; without it start()
fails with unshare's message rather than skipping.

Measured on 5.0.13 (Debian 12): personal namespace ``INBOX.`` with ``.``, shared ``#shared.``
and ``shared.``, no other users' namespace; STARTTLS only; before STARTTLS the capabilities
carry ``LOGINDISABLED`` and no ``AUTH=``; no ``MULTIAPPEND``, no ``LITERAL+``, no ``ID``
(``IMAP_CAPABILITY`` below is Debian's default); APPENDed mail is stored with LF line ends and
sent back with CRLF; ``-maxperip=N`` closes extra connections before the greeting (no BYE);
a failed login is answered (``NO Login failed.``) only after 5 s; before STARTTLS, LOGIN gets
``NO STARTTLS required``. ``IMAP_EMPTYTRASH`` is left unset: Debian's ``Trash:7`` would delete
old messages in Trash at logout. couriertls works without ``TLS_DHPARAMS``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # a test dependency without stubs

from testkit.imap import Security
from testkit.imapserver import ENV, PrivateImapServer, missing_files, servers_dir
from testkit.process import ServerProcess
from testkit.tlsca import TlsCa

__all__ = ["CourierLogin", "CourierServer", "missing_courier"]

AUTHDAEMOND = Path("/usr/lib/courier/courier-authlib/authdaemond")
COURIERTCPD = Path("/usr/sbin/couriertcpd")
COURIERTLS = Path("/usr/bin/couriertls")
MAKEUSERDB = Path("/usr/sbin/makeuserdb")
NOBODY = 65534  # nobody:nogroup owns the Maildirs (imapd runs as the user's uid)
CAPABILITY = (
    "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"
)
_USER_NAME = re.compile(r"[A-Za-z0-9_.@-]+")

RUN_SH = """\
#!/bin/sh
# Runs as `unshare --mount sh run.sh` (see testkit/courier.py): private /etc/courier and
# /run/courier/authdaemon for authdaemond and everything couriertcpd starts.
set -eu
mkdir -p /run/courier/authdaemon
mount --bind "$LF_ROOT/etc" /etc/courier
mount --bind "$LF_ROOT/authdaemon" /run/courier/authdaemon
{authdaemond} &
i=0
while [ ! -S /run/courier/authdaemon/socket ]; do
    i=$((i + 1))
    if [ "$i" -gt 1000 ]; then echo "authdaemond made no socket" >&2; exit 1; fi
    sleep 0.01
done
exec {couriertcpd} -address={host} -maxprocs={maxprocs} -maxperip={maxperip} \\
    -nodnslookup -noidentlookup \\
    {port} {imaplogin} {imapd} Maildir
"""


def imaplogin_path() -> Path:
    return servers_dir() / "usr/lib/courier/courier/imaplogin"


def imapd_path() -> Path:
    return servers_dir() / "usr/bin/imapd"


def missing_courier() -> str | None:
    """Why a private Courier cannot run here, or None when it can."""
    return missing_files(
        [
            AUTHDAEMOND,
            COURIERTCPD,
            COURIERTLS,
            MAKEUSERDB,
            "/usr/bin/unshare",
            imaplogin_path(),
            imapd_path(),
        ],
        "make deps installs it: testkit/install-servers.sh",
    )


@dataclass(frozen=True, slots=True)
class CourierLogin:
    """One authenticated session in Courier's log: the client's port, whether it has ended
    (LOGOUT, DISCONNECTED, TIMEOUT, ERROR or shutdown), whether the kit opened it."""

    user: str
    port: int
    ended: bool
    testkit: bool


_LOGIN = re.compile(r"^INFO: LOGIN, user=(?P<user>[^,]*), ip=\[[^\]]*\], port=\[(?P<port>\d+)\]")
_END = re.compile(
    r"^(?:INFO: (?:LOGOUT|DISCONNECTED|TIMEOUT)|ERROR|NOTICE: Disconnected during shutdown by "
    r"signal), user=(?P<user>[^,]*), ip=\[[^\]]*\], port=\[(?P<port>\d+)\]"
)


def _userdb_password(password: str) -> str:
    return "{SHA256}" + base64.b64encode(hashlib.sha256(password.encode()).digest()).decode()


class CourierServer(PrivateImapServer):
    """One ``couriertcpd`` with ``imaplogin``/``imapd`` on ``host``, STARTTLS port only.

    ``maxperip``: couriertcpd's per-IP connection limit (the tests connect from 127.0.0.1).
    ``env``: more ``IMAP_*`` settings for imapd (e.g. ``{"IMAP_EMPTYTRASH": "Trash:7"}``).
    """

    kind = "courier"
    port_names = ("plain",)
    default_security = Security.STARTTLS

    def __init__(
        self,
        tls: TlsCa,
        *,
        host: str = "127.0.0.1",
        maxperip: int = 40,
        maxprocs: int = 100,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(tls, host)
        self.maxperip = maxperip
        self.maxprocs = maxprocs
        self.extra_env = dict(env or {})
        self._started_at = 0  # where this start's part of the log begins

    @property
    def port_tls(self) -> int:
        raise RuntimeError("the Courier test server has no implicit-TLS port: use STARTTLS")

    @property
    def separator(self) -> str:
        return "."

    @property
    def prefix(self) -> str:
        return "INBOX."

    @property
    def userdb(self) -> Path:
        return self.root / "etc" / "userdb"

    def home(self, user: str) -> Path:
        return self.root / "mail" / user

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    # -- configuration -------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """What imaplogin and imapd read instead of /etc/courier/imapd and imapd-ssl."""
        return {
            **ENV,
            "LF_ROOT": str(self.root),
            "IMAP_CAPABILITY": CAPABILITY,
            "IMAP_CAPABILITY_TLS": CAPABILITY + " AUTH=PLAIN",
            "IMAP_STARTTLS": "YES",
            "IMAP_TLS_REQUIRED": "1",
            "COURIERTLS": str(COURIERTLS),
            "TLS_CERTFILE": str(self.root / "tls" / "imapd.pem"),
            "TLS_VERIFYPEER": "NONE",
            "IMAP_KEYWORDS": "1",
            "IMAP_ACL": "1",
            "IMAP_USELOCKS": "1",
            "IMAP_MAILBOX_SANITY_CHECK": "1",
            "IMAP_IDLE_TIMEOUT": "60",
            "IMAP_TRASHFOLDERNAME": "Trash",
            "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
            "MAILDIRPATH": "Maildir",
            **self.extra_env,
        }

    def _prepare(self, ports: Mapping[str, int]) -> ServerProcess:
        r = self.root
        for sub in ("etc", "authdaemon", "tls", "mail"):
            (r / sub).mkdir(exist_ok=True)
        shutil.chown(r / "authdaemon", "courier", "courier")
        (r / "etc").chmod(0o755)
        (r / "etc" / "authdaemonrc").write_text(
            'authmodulelist="authuserdb"\ndaemons=3\nauthdaemonvar=/run/courier/authdaemon\n'
            'DEBUG_LOGIN=0\nDEFAULTOPTIONS=""\nLOGGEROPTS=""\n'
        )
        pem = r / "tls" / "imapd.pem"  # couriertls wants key and certificate in one file
        pem.write_bytes(self.tls.key_file.read_bytes() + self.tls.cert_file.read_bytes())
        pem.chmod(0o600)
        shutil.chown(pem, "courier")
        if not self.userdb.exists():
            self.userdb.touch(mode=0o600)
            self._makeuserdb()
        (r / "run.sh").write_text(
            RUN_SH.format(
                authdaemond=AUTHDAEMOND,
                couriertcpd=COURIERTCPD,
                host=self.host,
                port=ports["plain"],
                maxprocs=self.maxprocs,
                maxperip=self.maxperip,
                imaplogin=imaplogin_path(),
                imapd=imapd_path(),
            )
        )
        out = r / "courier.out"  # appended to on a restart
        self._started_at = len(out.read_text(errors="replace")) if out.exists() else 0
        return ServerProcess(
            ["unshare", "--mount", "--propagation", "private", "sh", str(r / "run.sh")],
            out,
            self.environment(),
            cwd=r,
        )

    def _after_start(self) -> None:
        """Wait until the readiness probe's connection is over: couriertcpd counts its live
        children for ``-maxperip``, so a lingering probe would take one of the test's slots.
        The probe may still sit in the listen backlog, hence first its ``Disconnected`` line,
        then no child left but authdaemond."""
        assert self._process is not None and self._process.pid is not None
        tcpd = psutil.Process(self._process.pid)  # run.sh exec'd couriertcpd: same pid
        self.wait_for_log(lambda text: "DEBUG: Disconnected, " in text[self._started_at :])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if all(c.name() == "authdaemond" for c in tcpd.children()):
                    return
            except psutil.NoSuchProcess:
                continue  # a child exited while being looked at
            time.sleep(0.005)

    def _makeuserdb(self) -> None:
        proc = subprocess.run(
            [str(MAKEUSERDB), "-f", str(self.userdb)],
            capture_output=True,
            env=ENV,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"makeuserdb: {proc.stderr.decode(errors='replace')}")

    # -- users ---------------------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add a login with an empty Maildir; usable at once (authuserdb rereads userdb.dat
        when it changes)."""
        if not _USER_NAME.fullmatch(name):
            raise ValueError(f"unusable Courier test user name {name!r}")
        self._remember(name, password)
        home = self.home(name)
        for sub in ("cur", "new", "tmp"):
            (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
        for dirpath in (
            home,
            home / "Maildir",
            *((home / "Maildir" / s) for s in ("cur", "new", "tmp")),
        ):
            shutil.chown(dirpath, NOBODY, NOBODY)
        fields = f"uid={NOBODY}|gid={NOBODY}|home={home}|mail={home / 'Maildir'}"
        with self._lock:
            with self.userdb.open("a") as f:
                f.write(f"{name}\t{fields}|imappw={_userdb_password(password)}\n")
            self._makeuserdb()

    # -- log -----------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Courier's log: without ``-pid`` couriertcpd stays in the foreground and it, imaplogin,
        imapd and authdaemond log to stderr (no syslog needed)."""
        return self.output_text()

    def logins(self, user: str | None = None, include_testkit: bool = False) -> list[CourierLogin]:
        """Authenticated sessions in log order (all users if None); the kit's own (loading,
        snapshots: recognised by their client port) only if ``include_testkit``."""
        sessions: list[CourierLogin] = []
        open_at: dict[int, int] = {}  # client port -> index of its open session
        for line in self.log_text().splitlines():
            if m := _LOGIN.match(line):
                port = int(m["port"])
                open_at[port] = len(sessions)
                sessions.append(CourierLogin(m["user"], port, False, port in self._kit_ports))
            elif (m := _END.match(line)) and int(m["port"]) in open_at:
                i = open_at.pop(int(m["port"]))
                old = sessions[i]
                sessions[i] = CourierLogin(old.user, old.port, True, old.testkit)
        return [
            s
            for s in sessions
            if (user is None or s.user == user) and (include_testkit or not s.testkit)
        ]

    def failed_logins(self) -> int:
        """Failed authentications (all users: for AUTHENTICATE, Courier logs no user name)."""
        return self.log_text().count("INFO: LOGIN FAILED, ")

    def limit_refusals(self) -> int:
        """Connections couriertcpd closed before the greeting because of ``-maxperip``."""
        return self.log_text().count("ALERT: Maximum connection limit reached for ")

    def max_concurrent_sessions(
        self, user: str | None = None, include_testkit: bool = False
    ) -> int:
        """Peak of simultaneously open authenticated sessions, in log order."""
        peak = now = 0
        wanted = {s.port for s in self.logins(user, include_testkit)}
        live: set[int] = set()
        for line in self.log_text().splitlines():
            if (m := _LOGIN.match(line)) and int(m["port"]) in wanted:
                live.add(int(m["port"]))
            elif (m := _END.match(line)) and int(m["port"]) in live:
                live.discard(int(m["port"]))
            now = len(live)
            peak = max(peak, now)
        return peak

    def wait_for_log(self, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
        """Poll the log until ``predicate(text)`` holds (a session's end is logged just after
        the client has its LOGOUT answer); return the text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise TimeoutError(f"log condition not met in {timeout} s; log:\n{text[-3000:]}")
            time.sleep(0.02)
