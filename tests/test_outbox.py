"""Tests for outbox: files of outbox/, SMTP delivery against a real aiosmtpd server, MailSender."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
import stat
import subprocess
import traceback
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP, default
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from structlog.testing import capture_logs

from legacyflo_daemon.config.schema import LogConfig, SmtpConfig
from legacyflo_daemon.errors import SmtpError
from legacyflo_daemon.model import Status
from legacyflo_daemon.outbox.sender import MailSender
from legacyflo_daemon.outbox.smtp import deliver, envelope, smtp_password
from legacyflo_daemon.outbox.store import Outbox, move_to_sent
from legacyflo_daemon.report.mail import build_mail
from legacyflo_daemon.runtime.log import configure_logging, reset_logging
from legacyflo_daemon.state.engine import PostgresEngine
from legacyflo_daemon.state.store import StateStore
from testkit.postgres import PostgresServer
from tests.test_report import NOW, attachment, entries, make_json

PASSWORD = 'sm"tp p@ss\\wörd'
USER = "reporter"
REFUSED = "nobody@refused.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address == REFUSED:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 queued"


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


Server = Callable[..., tuple[Recorder, int]]


@pytest.fixture
def server(cert: tuple[Path, Path]) -> Iterator[Server]:
    """Start aiosmtpd servers: ``server(mode)``, mode "plain", "starttls" or "implicit"."""
    started: list[Controller] = []

    def start(
        mode: str = "plain", port: int | None = None, auth: bool = True
    ) -> tuple[Recorder, int]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*cert)
        rec, port = Recorder(), port or free_port()
        kw: dict[str, Any] = {"authenticator": authenticator, "auth_required": auth}
        if mode == "starttls":
            kw |= {"tls_context": ctx, "require_starttls": True, "auth_require_tls": True}
        elif mode == "implicit":
            kw |= {"ssl_context": ctx, "auth_require_tls": False}
        else:
            kw |= {"auth_require_tls": False}
        c = Controller(rec, hostname="127.0.0.1", port=port, **kw)
        c.start()
        started.append(c)
        return rec, port

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    p = tmp_path / "smtp.pw"
    p.write_text(PASSWORD + "\n", encoding="utf-8")
    return p


def config(
    port: int, tls: str, pwfile: Path | None, cert: tuple[Path, Path] | None, **kw: Any
) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1", port=port, tls=tls, username=USER if pwfile else None,
        password_file=pwfile, ca_file=cert[0] if cert else None, timeout=5.0, **kw,
    )  # fmt: skip


def eml(to: str | None = "admin@example.com", subject: str = "report") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "legacyflo@reports.example.com"
    if to:
        msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}@reports.example.com>"
    msg.set_content("line one\n.line starting with a dot\n")
    return msg.as_bytes()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox")


def assert_clean(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc)
    assert PASSWORD not in text and "p@ss" not in text


# --- files ------------------------------------------------------------------------------------


def test_outbox_files(outbox: Outbox) -> None:
    assert stat.S_IMODE(outbox.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(outbox.sent_dir.stat().st_mode) == 0o700
    p = outbox.write_result("r1", {"b": 1, "a": "é"})
    assert p.name == "r1.json" and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert p.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    s = outbox.write_summary("batch 1.csv", {"rows": []})
    assert s.name == "batch 1.csv.summary.json" and json.loads(s.read_text()) == {"rows": []}
    m1, m2 = outbox.write_mail("r2", eml()), outbox.write_mail("r1", eml())
    (outbox.dir / ".lfd-r3.eml.1234.tmp").write_bytes(b"half")
    (outbox.dir / ".r4.eml").write_bytes(b"hidden")
    assert outbox.pending_mails() == [m2, m1]
    moved = move_to_sent(m2)
    assert moved == outbox.sent_dir / "r1.eml" and moved.read_bytes() == eml()
    assert outbox.pending_mails() == [m1]
    outbox.write_mail("r1", eml())  # re-written after delivery: never sent twice
    assert outbox.pending_mails() == [m1]
    assert [p.name for p in outbox.dir.iterdir() if p.name.startswith(".lfd")] == [
        ".lfd-r3.eml.1234.tmp"
    ]


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "nul\0"])
def test_bad_names_are_refused(outbox: Outbox, name: str) -> None:
    with pytest.raises(ValueError):
        outbox.write_mail(name, b"x")


def test_envelope() -> None:
    env = envelope(eml("A <a@example.com>, b@example.com"))
    assert env.sender == "legacyflo@reports.example.com"
    assert env.recipients == ("a@example.com", "b@example.com")
    assert envelope(eml(None)).recipients == ()


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b" spaced pw \r\n")
    pw = smtp_password(SmtpConfig(host="h", password_file=f))
    assert pw is not None and pw.reveal() == " spaced pw "
    monkeypatch.setenv("LFD_SMTP_PW", PASSWORD)
    pw = smtp_password(SmtpConfig(host="h", password_env="LFD_SMTP_PW"))
    assert pw is not None and pw.reveal() == PASSWORD
    with pytest.raises(SmtpError, match="LFD_MISSING"):
        smtp_password(SmtpConfig(host="h", password_env="LFD_MISSING"))
    f.write_bytes(PASSWORD.encode("latin-1", "replace") + b"\xff")
    with pytest.raises(SmtpError, match="not UTF-8") as info:
        smtp_password(SmtpConfig(host="h", password_file=f))
    assert_clean(info.value)


# --- delivery ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "starttls", "implicit"])
async def test_deliver_with_auth(
    mode: str, server: Server, outbox: Outbox, pwfile: Path, cert: tuple[Path, Path]
) -> None:
    rec, port = server(mode)
    path = outbox.write_mail("r1", eml())
    tls = {"plain": "none", "starttls": "starttls", "implicit": "implicit"}[mode]
    sent = await deliver(path, config(port, tls, pwfile, cert))
    assert sent == outbox.sent_dir / "r1.eml" and not path.exists()
    ((mail_from, rcpts, content),) = rec.messages
    assert mail_from == "legacyflo@reports.example.com" and rcpts == ["admin@example.com"]
    got = message_from_bytes(content, policy=default)
    assert got["Message-ID"] == "<report@reports.example.com>"
    assert ".line starting with a dot" in str(got.get_content())


async def test_password_from_environment(
    server: Server, outbox: Outbox, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    rec, port = server("starttls")
    monkeypatch.setenv("LFD_SMTP_PW", PASSWORD)
    smtp = SmtpConfig(host="127.0.0.1", port=port, tls="starttls", username=USER,
                      password_env="LFD_SMTP_PW", ca_file=cert[0], timeout=5.0)  # fmt: skip
    await deliver(outbox.write_mail("r1", eml()), smtp)
    assert len(rec.messages) == 1


@pytest.mark.parametrize(
    ("mode", "tls", "use_ca", "wrong_pw", "match"),
    [
        ("plain", "none", False, True, "535"),  # bad credentials
        ("starttls", "starttls", False, False, "CERTIFICATE_VERIFY_FAILED"),  # unknown CA
        ("plain", "starttls", True, False, "STARTTLS"),  # STARTTLS required, not offered
        ("implicit", "implicit", True, True, "535"),
    ],
)
async def test_failures_keep_the_mail_and_hide_the_password(
    mode: str, tls: str, use_ca: bool, wrong_pw: bool, match: str,
    server: Server, outbox: Outbox, tmp_path: Path, pwfile: Path, cert: tuple[Path, Path],
) -> None:  # fmt: skip
    rec, port = server(mode)
    if wrong_pw:
        await asyncio.to_thread(pwfile.write_text, PASSWORD + "x\n", encoding="utf-8")
    path = outbox.write_mail("r1", eml())
    with pytest.raises(SmtpError, match=match) as info:
        await deliver(path, config(port, tls, pwfile, cert if use_ca else None))
    assert_clean(info.value)
    assert path.exists() and outbox.pending_mails() == [path] and rec.messages == []


async def test_server_down_keeps_the_mail(outbox: Outbox, pwfile: Path) -> None:
    path = outbox.write_mail("r1", eml())
    with pytest.raises(SmtpError, match=r"127\.0\.0\.1") as info:
        await deliver(path, config(free_port(), "none", pwfile, None))
    assert_clean(info.value)
    assert outbox.pending_mails() == [path]


async def test_all_recipients_refused_keeps_the_mail(server: Server, outbox: Outbox) -> None:
    rec, port = server("plain", auth=False)
    path = outbox.write_mail("r1", eml(REFUSED))
    with pytest.raises(SmtpError, match="550"):
        await deliver(path, config(port, "none", None, None))
    assert path.exists() and rec.messages == []


async def test_partly_refused_is_delivered_once_and_reported(
    server: Server, outbox: Outbox
) -> None:
    rec, port = server("plain", auth=False)
    path = outbox.write_mail("r1", eml(f"ok@example.com, {REFUSED}"))
    with pytest.raises(SmtpError, match=f"delivered, but recipients refused: {REFUSED}: 550"):
        await deliver(path, config(port, "none", None, None))
    assert not path.exists() and (outbox.sent_dir / "r1.eml").exists()
    assert [r for _, r, _ in rec.messages] == [["ok@example.com"]]


async def test_a_real_report_arrives_intact(server: Server, outbox: Outbox, tmp_path: Path) -> None:
    rec, port = server("plain", auth=False)
    raw = build_mail(
        make_json(Status.PARTIAL), entries(50), from_addr="lfd@reports.example.com",
        to_addr="postmaster@baya.com", now=NOW, compress_above=1000, tmpdir=tmp_path,
    )  # fmt: skip
    await deliver(outbox.write_mail("req-1", raw), config(port, "none", None, None))
    ((_, rcpts, content),) = rec.messages
    assert rcpts == ["postmaster@baya.com"]
    got = message_from_bytes(content, policy=default)
    assert isinstance(got, EmailMessage)
    name, rows = attachment(got)
    assert name == "listing.csv.gz" and len(rows) == 51


# --- MailSender -------------------------------------------------------------------------------


async def wait_for(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        # Polling on purpose: the conditions are files and a server thread, not asyncio events.
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_smtp_down_then_up_delivers_exactly_once(
    server: Server, outbox: Outbox, pwfile: Path
) -> None:
    port = free_port()
    sender = MailSender(outbox, config(port, "none", pwfile, None), interval=0.05,
                        backoff_base=0.05, backoff_max=0.2)  # fmt: skip
    path = outbox.write_mail("r1", eml())
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sender.run(stop))
            await wait_for(lambda: any(e["event"] == "report_send_failed" for e in logs))
            assert path.exists() and sender.statistics()["retrying"] == 1
            rec, _ = server("plain", port=port)
            sender.kick()
            await wait_for(lambda: not path.exists())
            await asyncio.sleep(0.3)  # several more passes: nothing is sent again
            stop.set()
    assert len(rec.messages) == 1
    assert (outbox.sent_dir / "r1.eml").read_bytes() == eml()
    assert outbox.pending_mails() == [] and sender.statistics()["retrying"] == 0
    failed = [e for e in logs if e["event"] == "report_send_failed"]
    assert failed[0]["request_id"] == "r1" and "127.0.0.1" in failed[0]["error"]
    assert [e["request_id"] for e in logs if e["event"] == "report_sent"] == ["r1"]
    assert PASSWORD not in repr(logs)


async def test_restart_picks_up_pending_mails(server: Server, outbox: Outbox, pwfile: Path) -> None:
    port = free_port()
    first = MailSender(outbox, config(port, "none", pwfile, None), backoff_base=3600)
    path = outbox.write_mail("r1", eml())
    assert await first.send_pending() == 0  # server down: stays, retry in an hour
    assert await first.send_pending() == 0  # not due yet: not even tried
    rec, _ = server("plain", port=port)
    assert await first.send_pending() == 0 and rec.messages == []
    restarted = MailSender(outbox, config(port, "none", pwfile, None))  # memory lost
    assert await restarted.send_pending() == 1
    assert await restarted.send_pending() == 0
    assert await MailSender(outbox, config(port, "none", pwfile, None)).send_pending() == 0
    assert len(rec.messages) == 1 and not path.exists()


async def test_refused_recipient_stays_and_is_logged(server: Server, outbox: Outbox) -> None:
    rec, port = server("plain", auth=False)
    path = outbox.write_mail("r9", eml(REFUSED))
    sender = MailSender(outbox, config(port, "none", None, None), backoff_base=3600)
    with capture_logs() as logs:
        assert await sender.send_pending() == 0
    (event,) = logs
    assert event["event"] == "report_send_failed" and event["request_id"] == "r9"
    assert "550" in event["error"] and event["attempt"] == 1
    assert path.exists() and rec.messages == []


async def test_mail_without_recipient_is_never_tried(server: Server, outbox: Outbox) -> None:
    rec, port = server("plain", auth=False)
    path = outbox.write_mail("r1", eml(None))
    sender = MailSender(outbox, config(port, "none", None, None))
    with capture_logs() as logs:
        assert await sender.send_pending() == 0
        assert await sender.send_pending() == 0
    assert [e["event"] for e in logs] == ["report_not_addressed"]
    assert path.exists() and rec.messages == [] and sender.statistics()["unaddressed"] == 1


async def test_kick_sends_at_once(server: Server, outbox: Outbox) -> None:
    rec, port = server("plain", auth=False)
    sender = MailSender(outbox, config(port, "none", None, None), interval=3600)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(sender.run(stop))
        await asyncio.sleep(0.05)  # the first (empty) pass is over: now sleeping for an hour
        outbox.write_mail("r1", eml())
        sender.kick()
        await wait_for(lambda: len(rec.messages) == 1, 5)
        stop.set()


async def test_without_smtp_nothing_is_sent(outbox: Outbox) -> None:
    path = outbox.write_mail("r1", eml())
    sender = MailSender(outbox, None, interval=0.01)
    stop = asyncio.Event()
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        tg.create_task(sender.run(stop))
        await asyncio.sleep(0.1)
        stop.set()
    assert path.exists()


async def test_a_bug_while_sending_is_logged_once_and_that_mail_set_aside(
    server: Server, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything but ``SmtpError`` from a delivery is a bug: logged once with its traceback, the
    mail stays in outbox/ and is not tried again by this process; the others still go out."""
    rec, port = server("plain", auth=False)
    calls: list[str] = []

    async def broken_for_r1(path: Path, smtp: SmtpConfig, **kw: Any) -> Path:
        calls.append(path.stem)
        if path.stem == "r1":
            raise KeyError("Message-ID")  # e.g. a slip in building the envelope
        return await deliver(path, smtp, **kw)

    monkeypatch.setattr("legacyflo_daemon.outbox.sender.deliver", broken_for_r1)
    out = io.BytesIO()
    configure_logging(LogConfig(format="json"), stream=out)
    try:
        r1 = outbox.write_mail("r1", eml(subject="bug"))
        outbox.write_mail("r2", eml(subject="second"))
        sender = MailSender(outbox, config(port, "none", None, None), interval=0.02,
                            backoff_base=0.01, backoff_max=0.01)  # fmt: skip
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sender.run(stop))
            await wait_for(lambda: len(rec.messages) == 1)
            outbox.write_mail("r3", eml(subject="third"))  # the loop still runs after the bug
            sender.kick()
            await wait_for(lambda: len(rec.messages) == 2)
            await asyncio.sleep(0.2)  # several more passes: r1 is not tried again
            stop.set()
    finally:
        reset_logging()
    assert calls.count("r1") == 1 and sorted(set(calls)) == ["r1", "r2", "r3"]
    assert r1.exists() and outbox.pending_mails() == [r1]  # kept for the next start
    assert sender.statistics() == {"retrying": 0, "unaddressed": 0, "set_aside": 1}
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    (bug,) = [r for r in records if r["event"] == "report_send_internal_error"]
    assert bug["request_id"] == "r1" and bug["level"] == "error"
    (exc,) = bug["exception"]
    assert exc["exc_type"] == "KeyError"
    assert exc["frames"][-1]["name"] == "broken_for_r1"  # the traceback, down to the bug
    assert not [r for r in records if r["event"] == "report_send_failed"]
    assert [r["request_id"] for r in records if r["event"] == "report_sent"] == ["r2", "r3"]

    # A new process (memory lost) tries the mail again.
    monkeypatch.setattr("legacyflo_daemon.outbox.sender.deliver", deliver)
    assert await MailSender(outbox, config(port, "none", None, None)).send_pending() == 1
    assert not r1.exists() and len(rec.messages) == 3


async def test_senders_of_several_nodes_on_one_outbox_deliver_each_mail_once(
    server: Server, outbox: Outbox, pwfile: Path, postgres_server: PostgresServer
) -> None:
    """A cluster: three nodes' senders on one shared outbox, passing over the same pending
    mails at the same moment; each mail's lease (a lock in the shared database) lets one
    deliver it."""
    rec, port = server("plain")
    url = postgres_server.new_database()
    # Three nodes, three sessions; opened off the loop (connecting is blocking I/O).
    stores = await asyncio.to_thread(lambda: [StateStore(PostgresEngine(url)) for _ in range(3)])
    senders = [
        MailSender(outbox, config(port, "none", pwfile, None), exclusive=s.exclusive)
        for s in stores
    ]
    for i in range(12):
        outbox.write_mail(f"r{i}", eml(subject=f"s{i}"))
    with capture_logs() as logs:
        delivered = await asyncio.gather(*(s.send_pending() for s in senders))
    subjects = sorted(message_from_bytes(data)["Subject"] for _f, _t, data in rec.messages)
    assert subjects == sorted(f"s{i}" for i in range(12))  # each once
    assert sum(delivered) == 12 and outbox.pending_mails() == []
    assert [e for e in logs if e["event"] == "report_send_failed"] == []
    for store in stores:
        store.close()
