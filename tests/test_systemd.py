"""sd_notify helper against real datagram sockets, and the unit files against systemd's tools.

PID 1 here is not systemd, so ``Type=notify`` is tested the way systemd sees it: a bound
``AF_UNIX``/``SOCK_DGRAM`` socket with ``SO_PASSCRED`` whose ``SCM_CREDENTIALS`` give the
sender's pid. The unit is checked with ``systemd-analyze verify`` / ``security --offline``, the
sysusers.d and tmpfiles.d files by applying them to a scratch root, and the sandbox's seccomp
parts (``SystemCallFilter=``, ``MemoryDenyWriteExecute=``, ``RestrictAddressFamilies=``) by
loading the same filters with libseccomp into a Python process that exercises our dependencies.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import itertools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from legacyflo_daemon.config.schema import DaemonConfig
from legacyflo_daemon.runtime.systemd import Notifier, watchdog_task

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "legacyflo-daemon.service"
SYSUSERS = ROOT / "systemd" / "legacyflo-daemon.sysusers.conf"
TMPFILES = ROOT / "systemd" / "legacyflo-daemon.tmpfiles.conf"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian package 'systemd')",
)
CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


# ------------------------------------------------------------------------------ fake systemd


class FakeSystemd:
    """A bound notification socket; ``address`` is what goes into ``$NOTIFY_SOCKET``."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def receive(self, timeout: float = 2.0) -> tuple[str, int]:
        """One message and the sender's pid (from SCM_CREDENTIALS)."""
        self.sock.settimeout(timeout)
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDS.size))
        pids = [
            CREDS.unpack(cdata[: CREDS.size])[0]
            for level, ctype, cdata in ancdata
            if level == socket.SOL_SOCKET and ctype == socket.SCM_CREDENTIALS
        ]
        assert len(pids) == 1, "SO_PASSCRED must yield exactly one SCM_CREDENTIALS"
        return data.decode(), pids[0]

    def assert_silent(self) -> None:
        self.sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            self.sock.recv(4096)


def _bind(address: bytes | str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


@pytest.fixture(params=["path", "abstract"])
def fake_systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        sock, address = _bind(path), path
    else:
        name = f"legacyflo-test-{uuid.uuid4().hex}"
        sock, address = _bind("\0" + name), "@" + name
    with sock:
        yield FakeSystemd(sock, address)


# ------------------------------------------------------------------------------ Notifier


@pytest.mark.parametrize(
    ("env", "enabled", "interval"),
    [
        ({}, False, None),
        ({"NOTIFY_SOCKET": ""}, False, None),
        ({"NOTIFY_SOCKET": "/run/x"}, True, None),
        ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "60000000"}, True, 30.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, False, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4243"}, False, None),  # another process
        ({"WATCHDOG_USEC": "0"}, False, None),
        ({"WATCHDOG_USEC": "-5"}, False, None),
        ({"WATCHDOG_USEC": "soon"}, False, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, False, None),
    ],
)
def test_from_env(env: dict[str, str], enabled: bool, interval: float | None) -> None:
    notifier = Notifier.from_env(env, pid=4242)
    assert notifier.enabled is enabled
    assert notifier.watchdog_interval() == interval


def test_from_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@from-os-environ")
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_env()
    assert notifier.address == "@from-os-environ"
    assert notifier.watchdog_interval() == 2.0


def test_messages_arrive_from_our_pid(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": fake_systemd.address})
    notifier.ready()
    notifier.status("copying 3 requests")
    notifier.ping()
    notifier.stopping()
    received = [fake_systemd.receive() for _ in range(4)]
    assert received == [
        ("READY=1", os.getpid()),
        ("STATUS=copying 3 requests", os.getpid()),
        ("WATCHDOG=1", os.getpid()),
        ("STOPPING=1", os.getpid()),
    ]
    assert notifier.send_failures == 0


def test_status_cannot_inject_other_assignments(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier(fake_systemd.address)
    notifier.status("evil.csv\nREADY=1\rMAINPID=1\0x")
    assert fake_systemd.receive()[0] == "STATUS=evil.csv READY=1 MAINPID=1 x"
    fake_systemd.assert_silent()


def test_subprocess_notifies_from_its_main_pid(fake_systemd: FakeSystemd) -> None:
    # What NotifyAccess=main requires: the message comes from the service's own pid.
    code = "from legacyflo_daemon.runtime.systemd import Notifier; Notifier.from_env().ready()"
    env = {**os.environ, "NOTIFY_SOCKET": fake_systemd.address}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        message, pid = fake_systemd.receive(timeout=10)
    finally:
        assert proc.wait(timeout=10) == 0
    assert (message, pid) == ("READY=1", proc.pid)


def test_no_op_without_notify_socket(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env({})
    assert notifier.notify("READY=1") is False
    notifier.ready()
    notifier.status("x")
    notifier.ping()
    notifier.stopping()
    assert notifier.send_failures == 0
    fake_systemd.assert_silent()


@pytest.mark.parametrize("address", ["/nonexistent/dir/notify", "relative/notify", "@"])
def test_send_errors_are_swallowed_and_logged_once(address: str) -> None:
    notifier = Notifier(address)
    with capture_logs() as logs:
        assert notifier.notify("READY=1") is False
        notifier.ping()
        notifier.stopping()
    assert notifier.send_failures == 3
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    assert logs[0]["socket"] == address


# ------------------------------------------------------------------------------ watchdog


class Receiver(threading.Thread):
    """Records (monotonic time, message) from a thread, so a blocked loop cannot hide pings."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.sock.settimeout(0.02)
        self.stop = threading.Event()
        self.got: list[tuple[float, str]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))
        # A datagram sent before stop() is already queued here (an AF_UNIX send is synchronous):
        # take the rest without waiting, so the caller need not give this thread time to catch up.
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            self.got.append((time.monotonic(), data.decode()))

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()

    def ping_times(self) -> list[float]:
        return [t for t, m in self.got if m == "WATCHDOG=1"]


def _watchdog_notifier(fake: FakeSystemd, usec: int) -> Notifier:
    return Notifier.from_env(
        {
            "NOTIFY_SOCKET": fake.address,
            "WATCHDOG_USEC": str(usec),
            "WATCHDOG_PID": str(os.getpid()),
        }
    )


async def test_watchdog_pings_at_half_the_interval(fake_systemd: FakeSystemd) -> None:
    notifier = _watchdog_notifier(fake_systemd, 200_000)  # pings every 0.1 s
    with Receiver(fake_systemd.sock) as receiver:
        task = asyncio.create_task(watchdog_task(notifier, lambda: True))
        await asyncio.sleep(0.55)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    times = receiver.ping_times()
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert 5 <= len(times) <= 7, times
    assert min(gaps) >= 0.09
    assert gaps[len(gaps) // 2] <= 0.15


async def test_watchdog_stops_when_the_loop_is_blocked(fake_systemd: FakeSystemd) -> None:
    notifier = _watchdog_notifier(fake_systemd, 100_000)  # pings every 0.05 s
    with Receiver(fake_systemd.sock) as receiver:
        task = asyncio.create_task(watchdog_task(notifier, lambda: True))
        await asyncio.sleep(0.2)
        blocked_from = time.monotonic()
        time.sleep(0.5)  # noqa: ASYNC251 - this is the stuck event loop under test
        blocked_to = time.monotonic()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    times = receiver.ping_times()
    # Margins for the receiver thread's latency; the window still spans ~9 ping intervals.
    assert [t for t in times if blocked_from + 0.05 < t < blocked_to - 0.01] == []
    assert any(t < blocked_from for t in times), "pings before the block"
    assert any(t > blocked_to for t in times), "pings resume after the block"


async def test_watchdog_skips_pings_while_unhealthy(fake_systemd: FakeSystemd) -> None:
    notifier = _watchdog_notifier(fake_systemd, 40_000)  # pings every 0.02 s
    state = {"healthy": False, "calls": 0}

    def healthy() -> bool:
        state["calls"] += 1
        if state["calls"] == 2:
            raise RuntimeError("health check crashed")
        return bool(state["healthy"])

    with Receiver(fake_systemd.sock) as receiver, capture_logs() as logs:
        task = asyncio.create_task(watchdog_task(notifier, healthy))
        await asyncio.sleep(0.15)
        unhealthy_pings = len(receiver.ping_times())
        state["healthy"] = True
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert unhealthy_pings == 0
    assert len(receiver.ping_times()) >= 3
    events = [e["event"] for e in logs]
    assert events.count("watchdog_unhealthy") == 1  # once per transition, not per tick
    assert events.count("watchdog_health_check_failed") == 1


async def test_watchdog_task_returns_at_once_without_a_watchdog(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier(fake_systemd.address)  # notifications on, watchdog off
    async with asyncio.timeout(1):
        await watchdog_task(notifier, lambda: True)
    fake_systemd.assert_silent()


# ------------------------------------------------------------------------------ unit files


def unit_settings(path: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    section, out = "", []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_value(key: str) -> str:
    values = [v for _s, k, v in unit_settings() if k == key]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/usr/local/bin/legacyflo-daemon run --config /etc/legacyflo/config.toml"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("WatchdogSec", "60"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("User", "legacyflo"),
        ("Group", "legacyflo"),
        ("ReadWritePaths", "/var/spool/legacyflo"),
        ("ProtectSystem", "strict"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("DeviceAllow", ""),
        ("MemoryHigh", "768M"),
        ("MemoryMax", "1G"),
        ("TasksMax", "64"),
        ("PrivateUsers", "yes"),
        ("SyslogIdentifier", "legacyflo-daemon"),
    ],
)
def test_unit_settings(key: str, expected: str) -> None:
    assert unit_value(key) == expected


def test_stop_timeout_covers_the_grace_period() -> None:
    assert int(unit_value("TimeoutStopSec")) >= DaemonConfig().grace_seconds + 10


def test_spool_paths_agree_across_files() -> None:
    spool = unit_value("ReadWritePaths")
    tmpfiles = [line.split() for line in TMPFILES.read_text().splitlines() if line[:1] == "d"]
    assert ["d", spool, "2750", "legacyflo", "legacyflo", "-"] in tmpfiles
    assert ["d", f"{spool}/incoming", "2770", "legacyflo", "legacyflo", "-"] in tmpfiles
    assert spool in SYSUSERS.read_text()


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # The real ExecStart binary is not installed here, and verify rejects a missing one. So
    # verify a copy that differs only in the ExecStart program (same arguments); every other
    # line, ExecReload=/bin/kill included, is checked as written. verify exits 0 even for
    # unknown keys (it only prints them), hence the assertion on empty output.
    true = shutil.which("true")
    assert true is not None
    text = UNIT.read_text()
    original = "ExecStart=/usr/local/bin/legacyflo-daemon "
    assert text.count(original) == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(original, f"ExecStart={true} "))
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_systemd_analyze_verify_catches_a_bad_key(tmp_path: Path) -> None:
    # The check above is only meaningful if verify reports problems in this environment.
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nProtectSytem=strict\n")
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Unknown key 'ProtectSytem'" in result.stdout + result.stderr


@needs_analyze
def test_systemd_analyze_security_rates_the_unit_ok() -> None:
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match is not None, result.stdout
    assert float(match[1]) <= 1.5, result.stdout
    assert match[2] == "OK"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package 'systemd')")
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles must chown: needs root")
def test_sysusers_and_tmpfiles_create_user_and_spool(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for src, conf_dir in [(SYSUSERS, "sysusers.d"), (TMPFILES, "tmpfiles.d")]:
        target = root / "usr/lib" / conf_dir / "legacyflo-daemon.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(src, target)
    for command in (
        [_tool("systemd-sysusers"), f"--root={root}"],
        [_tool("systemd-tmpfiles"), f"--root={root}", "--create"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    def entries(name: str) -> dict[str, list[str]]:
        rows = (line.split(":") for line in (root / "etc" / name).read_text().splitlines())
        return {row[0]: row for row in rows}

    users, groups = entries("passwd"), entries("group")
    user = users["legacyflo"]
    uid, gid = int(user[2]), int(user[3])
    assert 0 < uid < 1000, "a system user"
    assert user[6] == "/usr/sbin/nologin"
    assert int(groups["legacyflo"][2]) == gid
    spool = (root / "var/spool/legacyflo").stat()
    assert (oct(spool.st_mode & 0o7777), spool.st_uid, spool.st_gid) == ("0o2750", uid, gid)
    incoming = (root / "var/spool/legacyflo/incoming").stat()
    assert (oct(incoming.st_mode & 0o7777), incoming.st_uid, incoming.st_gid) == (
        "0o2770",
        uid,
        gid,
    )
    etc = (root / "etc/legacyflo").stat()
    assert (oct(etc.st_mode & 0o7777), etc.st_uid, etc.st_gid) == ("0o750", 0, gid)


# ------------------------------------------------------------------------------ sandbox

SANDBOX_WORKLOAD = r"""
import ctypes, ctypes.util, json, sys

allowed, eperm, af_allowed, cert, key, workdir = json.loads(sys.argv[1])
lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(ArgCmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_release.argtypes = [ctypes.c_void_p]
KILL_PROCESS, ALLOW = 0x80000000, 0x7FFF0000
ERRNO = lambda e: 0x00050000 | e
EQ, GE, MASKED_EQ = 4, 5, 7


def load(default, rules):
    # One filter per feature, stacked, as systemd installs them.
    ctx = lib.seccomp_init(default)
    assert ctx
    for action, name, cmps in rules:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not a syscall on this architecture
        arr = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        assert rc == 0, (name, rc)
    assert lib.seccomp_load(ctx) == 0
    lib.seccomp_release(ctx)


EPERM, EAFNOSUPPORT, W, X, SHM_EXEC = 1, 97, 2, 4, 0o100000
# MemoryDenyWriteExecute=yes, as systemd's seccomp_memory_deny_write_execute() does it.
load(ALLOW, [
    (ERRNO(EPERM), "mmap", [(2, MASKED_EQ, W | X, W | X)]),
    (ERRNO(EPERM), "mprotect", [(2, MASKED_EQ, X, X)]),
    (ERRNO(EPERM), "pkey_mprotect", [(2, MASKED_EQ, X, X)]),
    (ERRNO(EPERM), "shmat", [(2, MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
])
# RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
load(ALLOW, [(ERRNO(EAFNOSUPPORT), "socket", [(0, EQ, af, 0)])
             for af in range(46) if af not in af_allowed]
            + [(ERRNO(EAFNOSUPPORT), "socket", [(0, GE, 46, 0)])])
# SystemCallFilter=@system-service ~@privileged @resources (anything else kills the process,
# stricter than the unit's SystemCallErrorNumber=EPERM, so nothing can fail silently here).
# Loaded last: seccomp() itself is not on the list (systemd installs it before exec).
load(KILL_PROCESS, [(ALLOW, name, []) for name in allowed]
                   + [(ERRNO(EPERM), name, []) for name in eperm])

# ---- from here on, everything runs inside the sandbox ----
import asyncio, email, errno, hashlib, mmap, os, socket, sqlite3, ssl

import aioimaplib, aiosmtplib, orjson, structlog, watchfiles

from legacyflo_daemon.transfer.limits import ByteBudget
from legacyflo_daemon.runtime.systemd import Notifier

try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("a writable+executable mapping was allowed: the filter is not active")
except PermissionError:
    pass
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    sys.exit("AF_NETLINK was allowed: the filter is not active")
except OSError as exc:
    assert exc.errno == errno.EAFNOSUPPORT, exc


async def main():
    loop = asyncio.get_running_loop()
    # TLS over loopback, name resolution in the default executor (threads).
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def echo(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    assert await loop.getaddrinfo("localhost", port)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl.create_default_context(cafile=cert),
        server_hostname="localhost")
    writer.write(b"hello\n")
    assert await reader.readline() == b"HELLO\n"
    writer.close()
    server.close()
    await server.wait_closed()
    # SQLite with WAL, as the state store uses it.
    db = sqlite3.connect(os.path.join(workdir, "state.sqlite3"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (?)", (orjson.dumps({"a": 1}),))
    db.commit()
    assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)
    db.close()
    # watchfiles (a Rust thread with inotify).
    stop = asyncio.Event()
    seen = False
    async with asyncio.timeout(10):
        async for changes in watchfiles.awatch(workdir, stop_event=stop, rust_timeout=200,
                                               yield_on_timeout=True):
            if not changes:
                with open(os.path.join(workdir, "a.csv"), "w") as f:
                    f.write("x")
            elif any(p.endswith("a.csv") for _, p in changes):
                seen = True
                stop.set()
    assert seen
    async with ByteBudget(10).reserve(20):
        pass
    assert email.message_from_bytes(b"Subject: x\r\n\r\nbody")["Subject"] == "x"
    hashlib.sha256(b"x").hexdigest()
    structlog.get_logger().info("sandbox_workload", n=1)
    Notifier.from_env().ready()


asyncio.run(main())
print("sandbox-ok")
"""


def expand_syscall_group(group: str, seen: set[str] | None = None) -> set[str]:
    """The system call names in a systemd ``@group``, nested groups expanded."""
    assert SYSTEMD_ANALYZE is not None
    seen = set() if seen is None else seen
    seen.add(group)
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                names |= expand_syscall_group(item, seen)
        else:
            names.add(item)
    return names


@needs_analyze
def test_python_and_our_dependencies_work_inside_the_seccomp_sandbox(
    tmp_path: Path, fake_systemd: FakeSystemd
) -> None:
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp not installed (Debian package 'libseccomp2', a systemd dependency)")
    filters = [v for _s, k, v in unit_settings() if k == "SystemCallFilter"]
    assert filters == ["@system-service", "~@privileged @resources"], "update this test"
    allowed = expand_syscall_group("@system-service")
    denied = expand_syscall_group("@privileged") | expand_syscall_group("@resources")
    assert "setuid" in denied and "setrlimit" in denied and "read" in allowed
    families = {"AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6, "AF_UNIX": socket.AF_UNIX}
    af_allowed = [int(families[f]) for f in unit_value("RestrictAddressFamilies").split()]

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    workdir = tmp_path / "work"
    workdir.mkdir()
    # Running as root, SQLite fchown()s each new journal to the database's owner and ignores a
    # failure; as the unit's non-root user it never calls it. So as root, and only then, the
    # @chown calls get the unit's EPERM instead of killing the workload.
    eperm = expand_syscall_group("@chown") if os.geteuid() == 0 else set()
    arg = json.dumps(
        [sorted(allowed - denied), sorted(eperm), af_allowed, str(cert), str(key), str(workdir)]
    )
    env = {**os.environ, "NOTIFY_SOCKET": fake_systemd.address}
    proc = subprocess.Popen(
        [sys.executable, "-c", SANDBOX_WORKLOAD, arg],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout.splitlines()[-1:]) == (0, ["sandbox-ok"]), stderr
    assert fake_systemd.receive() == ("READY=1", proc.pid)
