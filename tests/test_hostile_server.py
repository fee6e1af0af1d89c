"""A server that lies or attacks cannot exhaust memory, inject commands or leak a password
(issue 11 items 4, 5 and 13), with the scripted server of ``testkit.scripted`` on loopback:
real servers do not misbehave this way on request.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from legacyflo_daemon.errors import PermanentError, TransientError
from legacyflo_daemon.imap import session as imap
from legacyflo_daemon.imap.session import Endpoint
from legacyflo_daemon.model import Secret
from testkit.imap import ServerAccount
from testkit.mailgen import make_message
from testkit.scripted import ScriptedServer

from .e2ehelp import DaemonProcess, Row, _table, drop_csv, files_containing, request_csv, results

pytestmark = pytest.mark.timeout(90)

PASSWORD = 'pw "with" quotes\\ and ü'


def _messages(n: int) -> list[bytes]:
    return [
        make_message(
            subject=f"m{i}", date=dt.datetime(2020, 1, 1 + i, tzinfo=dt.UTC),
            message_id=f"<m{i}@scripted>",
        )
        for i in range(n)
    ]  # fmt: skip


def _endpoint(server: ScriptedServer, **kw: object) -> Endpoint:
    args: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "tls": "plain",
        "ssl_context": None,
        "user": "alice",
        "password": Secret(PASSWORD),
        "timeout": 5.0,
        "connect_timeout": 5.0,
    }
    args.update(kw)
    return Endpoint(**args)  # type: ignore[arg-type]


# -- bounded responses ---------------------------------------------------------------------------

_CHILD = r"""
import asyncio, json, resource, sys
from legacyflo_daemon.imap import session as imap
from legacyflo_daemon.imap.session import Endpoint
from legacyflo_daemon.model import Secret

port = int(sys.argv[1])
async def main():
    ep = Endpoint("127.0.0.1", port, "plain", None, "alice", Secret("x"), 20.0, 5.0)
    session = await imap.connect(ep)
    await session.examine("INBOX")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    got = await session.fetch_bodies([1, 2, 3], limits={2: 1 << 20}, default_limit=1 << 20)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    await session.logout()
    return {"peak": peak, "base": base,
            "got": [[m.uid, m.error, len(m.body or b"")] for m in got]}
print(json.dumps(asyncio.run(main())))
"""


def test_a_body_far_larger_than_announced_is_dropped_as_it_arrives() -> None:
    """The server announces 300 MB for a message whose limit is 1 MB: the child process reads
    them off the wire without keeping them (its peak memory grows by far less), reports that
    message with the reason, and still gets the messages before and after it."""
    with ScriptedServer(_messages(3)) as server:
        server.oversize = {2: 300 * 1024 * 1024}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(server.port)],
            capture_output=True,
            text=True,
            timeout=80,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (one, two, three) = report["got"]
    assert one[1] is None and three[1] is None and one[2] > 0 and three[2] > 0
    assert two[2] == 0 and "sent 314,572,800 bytes" in two[1] and "1,048,576" in two[1]
    assert report["peak"] - report["base"] < 64 * 1024 * 1024, report


async def test_a_response_line_that_never_ends_fails_the_command_quickly() -> None:
    with ScriptedServer(_messages(1)) as server:
        server.endless_line = "LIST"
        session = await imap.connect(_endpoint(server))
        began = time.monotonic()
        with pytest.raises(TransientError, match="longer than 64 KiB"):
            await session.list_folders()
        session.abort()
        assert time.monotonic() - began < 5
        # Aborted after about the cap: not after megabytes (the server writes until it fails).
        sent = server.bytes_sent
    assert sent < 8 * 1024 * 1024, sent


# -- STARTTLS injection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "injected",
    [
        b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected before TLS\r\n",
        b"A0002 OK LOGIN completed\r\n",  # a forged answer to our next command
        b"* BYE",  # an incomplete line
    ],
)
async def test_bytes_after_the_starttls_answer_abort_before_tls(injected: bytes) -> None:
    with ScriptedServer(_messages(1)) as server:
        server.starttls_injection = injected
        with pytest.raises(PermanentError, match="sent data right after STARTTLS"):
            await imap.connect(_endpoint(server, tls="starttls"))
        await asyncio.sleep(0.1)
        assert "LOGIN" not in server.commands  # the password was never sent


# -- a password echoed back ---------------------------------------------------------------------


def _echo(user: str, password: str) -> bytes:
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    b64 = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return f'NO bad credentials: "{user}" "{quoted}" raw={password} sasl={b64}'.encode()


def test_a_password_the_server_echoes_reaches_no_file(
    tmp_path: Path, new_dest_account: Callable[..., ServerAccount]
) -> None:
    dest = new_dest_account()
    with ScriptedServer(_messages(1)) as server:
        server.login_reply = _echo
        spool = tmp_path / "spool"
        (spool / "incoming").mkdir(parents=True, mode=0o700)
        config = tmp_path / "config.toml"
        config.write_text(
            "\n".join(
                [
                    _table("daemon", {"spool": spool, "stable_seconds": 0.2}),
                    _table("log", {"format": "json", "file": tmp_path / "daemon.log"}),
                    _table(f'hosts."{server.host}"', {"allow_plaintext": True}),
                    _table(
                        f'hosts."{dest.host}"',
                        {"ca_file": dest.ca_file, "tls": "implicit", "port": dest.port_tls},
                    ),
                ]
            ),
            encoding="utf-8",
        )
        source = ServerAccount(server, "alice", PASSWORD)  # type: ignore[arg-type]
        row = Row(source, dest, "Data", source_port=server.port, jobtype="IMAP")
        drop_csv(spool / "incoming", "echo.csv", request_csv([row]))
        with DaemonProcess(config, tmp_path, name="echo", once=True) as daemon:
            assert daemon.wait(60) == 1
    (doc,) = results(spool).values()
    assert doc["status"] == "failed"
    assert "authentication failed" in doc["error"] and "bad credentials" in doc["error"]
    assert "********" in doc["error"]
    leaks = files_containing(tmp_path, [PASSWORD, dest.password])
    b64 = base64.b64encode(f"\0alice\0{PASSWORD}".encode())
    leaks.update(
        {p: ["sasl"] for p in tmp_path.rglob("*") if p.is_file() and b64 in p.read_bytes()}
    )
    assert leaks == {}, leaks
