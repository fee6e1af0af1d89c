"""The ``imap`` boundary against the real test servers (Dovecot SOURCE and DEST, testkit).

Login over every transport, the hostile password, one attempt only for a wrong password,
certificate checks, folders on both servers, read-only fetching byte for byte, APPEND
round-trips, folder creation, and network faults injected with the fault proxy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from legacyflo_daemon.errors import AuthenticationFailed, PermanentError, TransientError
from legacyflo_daemon.imap import opening as imap_open
from legacyflo_daemon.imap import session as imap
from legacyflo_daemon.imap.session import Endpoint, Session, make_ssl_context
from legacyflo_daemon.imap.syntax.utf7 import encode as mutf7
from legacyflo_daemon.model import Secret
from legacyflo_daemon.request.dates import parse_date_time
from testkit.corpus import MAIL_FOLDERS, load_exchange_corpus
from testkit.imap import ServerAccount
from testkit.maildir import MailSpec, create_folder, load_messages
from testkit.mailgen import load_big_message, make_big_message, make_message, utc
from testkit.proxy import FaultProxy
from testkit.snapshot import snapshot_mailbox
from testkit.tlsca import TlsCa, make_tls_ca
from tests.conftest import DEST_PASSWORD, HOSTILE_PASSWORD
from tests.test_imap_defects import FakeImap

ProxyFactory = Callable[[str, int], FaultProxy]


def endpoint(acct: ServerAccount, **kw: Any) -> Endpoint:
    """Implicit TLS verifying the test CA, unless ``kw`` says otherwise."""
    args: dict[str, Any] = {
        "host": acct.host,
        "port": acct.port_tls,
        "tls": "implicit",
        "ssl_context": make_ssl_context(acct.ca_file, True, False),
        "user": acct.user,
        "password": Secret(acct.password),
        "timeout": 5.0,
        "connect_timeout": 5.0,
    }
    args.update(kw)
    return Endpoint(**args)


def sha(body: bytes | bytearray | None) -> str:
    assert body is not None
    return hashlib.sha256(body).hexdigest()


# -- login and transport -------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_login_over_tls_verifying_the_test_ca(
    source_account: ServerAccount, tls: str
) -> None:
    port = source_account.port_tls if tls == "implicit" else source_account.port_plain
    async with await imap.connect(endpoint(source_account, tls=tls, port=port)) as session:
        assert session.tls and session.alive and "IMAP4REV1" in session.capabilities
        assert "STARTTLS" not in session.capabilities  # capabilities re-read after TLS
    (login,) = source_account.server.logins(source_account.user)
    assert login.tls and login.local_port == port


@pytest.mark.parametrize(
    ("remove", "password"),
    [
        (set(), HOSTILE_PASSWORD),  # AUTHENTICATE PLAIN with SASL-IR
        ({"SASL-IR"}, HOSTILE_PASSWORD),  # AUTHENTICATE PLAIN, token after the continuation
        ({"AUTH=PLAIN"}, HOSTILE_PASSWORD),  # LOGIN, password as a literal (non-ASCII)
        ({"AUTH=PLAIN"}, 'p@ss"w0rd\\%*{} )('),  # LOGIN, password as a quoted string
    ],
)
async def test_any_password_logs_in_every_way(
    new_source_account: Callable[..., ServerAccount], remove: set[str], password: str
) -> None:
    acct = new_source_account(password)
    conn = await imap_open.start(endpoint(acct))
    conn.capabilities -= remove  # steer the login onto one path
    await imap_open.login(conn)
    async with Session(conn) as session:
        assert (await session.namespace()) == ("", "/")
    assert acct.server.count_logins(acct.user).succeeded == 1


async def test_dest_password_with_colon_and_parentheses(dest_account: ServerAccount) -> None:
    assert dest_account.password == DEST_PASSWORD
    async with await imap.connect(endpoint(dest_account)) as session:
        assert session.alive


async def test_wrong_password_is_exactly_one_failed_attempt(source_account: ServerAccount) -> None:
    ep = endpoint(source_account, password=Secret("wrong " + HOSTILE_PASSWORD))
    with pytest.raises(AuthenticationFailed, match="authentication failed") as info:
        await imap.connect(ep)
    assert source_account.host in str(info.value)
    assert "wrong" not in str(info.value) and HOSTILE_PASSWORD not in str(info.value)
    server, user = source_account.server, source_account.user
    # Dovecot logs the failure when the connection closes; keep the event loop running.
    await asyncio.to_thread(server.wait_for_log, lambda _: server.count_logins(user).failed >= 1)
    await asyncio.sleep(0.3)  # a second attempt, if there were one, would be logged by now
    counts = server.count_logins(user)
    assert (counts.succeeded, counts.failed, counts.refused_by_limit) == (0, 1, 0)


async def test_nul_in_the_password_is_refused_before_anything_is_sent(
    source_account: ServerAccount,
) -> None:
    with pytest.raises(PermanentError, match="NUL"):
        await imap.connect(endpoint(source_account, password=Secret("a\0b")))
    assert source_account.server.count_logins(source_account.user).attempts == 0


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_unverifiable_certificate_is_permanent(
    source_account: ServerAccount, tls: str, tmp_path: Path
) -> None:
    port = source_account.port_tls if tls == "implicit" else source_account.port_plain
    other_ca: TlsCa = make_tls_ca(tmp_path)
    for ctx in (
        None,
        make_ssl_context(None, True, False),
        make_ssl_context(other_ca.ca_file, True, False),
    ):
        with pytest.raises(PermanentError, match="certificate verify failed") as info:
            await imap.connect(endpoint(source_account, tls=tls, port=port, ssl_context=ctx))
        assert str(info.value).startswith(f"{source_account.host}: ")
    async with await imap.connect(
        endpoint(
            source_account, tls=tls, port=port, ssl_context=make_ssl_context(None, False, False)
        )
    ) as s:
        assert s.tls  # verify=False: encrypted, not verified (an explicit per-host choice)
    assert source_account.server.count_logins(source_account.user).succeeded == 1


async def test_tls_client_to_a_plaintext_port_is_permanent(source_account: ServerAccount) -> None:
    with pytest.raises(PermanentError, match="TLS handshake failed"):
        await imap.connect(endpoint(source_account, port=source_account.port_plain))


async def test_plaintext_only_where_the_endpoint_allows_it(source_account: ServerAccount) -> None:
    server = source_account.server
    notls = {"host": server.notls_host, "port": server.port_plain}
    with pytest.raises(PermanentError, match="does not offer STARTTLS"):
        await imap.connect(endpoint(source_account, tls="starttls", **notls))
    async with await imap.connect(endpoint(source_account, tls="starttls-or-plain", **notls)) as s:
        assert not s.tls
    async with await imap.connect(
        endpoint(
            source_account,
            tls="starttls-or-plain",
            host=server.insecure_host,
            port=server.port_plain,
        )
    ) as s:
        assert s.tls  # offered, so used
    logins = server.logins(source_account.user)
    assert [x.tls for x in logins] == [False, True]


def test_legacy_tls_is_opt_in() -> None:
    default = make_ssl_context(None, True, False)
    legacy = make_ssl_context(None, True, True)
    assert default.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert legacy.minimum_version == ssl.TLSVersion.TLSv1
    assert legacy.verify_mode == ssl.CERT_REQUIRED and legacy.check_hostname  # still verifies
    unverified = make_ssl_context(None, False, False)
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname


async def test_legacy_tls_reaches_a_tls_1_0_only_server(tls_ca: TlsCa) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_ca.cert_file, tls_ca.key_file)
    with pytest.warns(DeprecationWarning):
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.warns(DeprecationWarning):
        server_ctx.maximum_version = ssl.TLSVersion.TLSv1
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    async with FakeImap(tls=server_ctx) as srv:
        ep = Endpoint(
            "127.0.0.1",
            srv.port,
            "implicit",
            make_ssl_context(tls_ca.ca_file, True, False),
            "user",
            Secret("pw"),
            timeout=2,
            connect_timeout=2,
        )
        with pytest.raises((PermanentError, TransientError)):
            await imap.connect(ep)
        legacy = make_ssl_context(tls_ca.ca_file, True, True)
        session = await imap.connect(
            Endpoint(
                "127.0.0.1",
                srv.port,
                "implicit",
                legacy,
                "user",
                Secret("pw"),
                timeout=2,
                connect_timeout=2,
            )
        )
        assert session.tls
        session.abort()


async def test_refused_connection_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = Endpoint("127.0.0.1", port, "plain", None, "u", Secret("p"), timeout=2, connect_timeout=2)
    with pytest.raises(TransientError, match="connection refused"):
        await imap.connect(ep)


def test_endpoint_repr_hides_the_password() -> None:
    ep = Endpoint("h", 993, "implicit", None, "u", Secret("hunter2"))
    assert "hunter2" not in repr(ep) and "********" in repr(ep)


# -- folders -------------------------------------------------------------------------------------


async def test_namespace_and_list_on_the_source(source_account: ServerAccount) -> None:
    load_exchange_corpus(source_account.server, source_account.user)
    async with await imap.connect(endpoint(source_account)) as session:
        assert await session.namespace() == ("", "/")
        entries = {e.name: e for e in await session.list_folders()}
        for folder in MAIL_FOLDERS:
            assert mutf7(folder) in entries, folder
        assert not entries["INBOX/Projects"].selectable and entries["INBOX"].selectable
        assert {e.delimiter for e in entries.values()} == {"/"}
        assert "Caf&AOk- &- R&AOk-unions" in entries


async def test_namespace_and_list_on_the_dest(dest_account: ServerAccount) -> None:
    async with await imap.connect(endpoint(dest_account)) as session:
        assert await session.namespace() == ("INBOX.", ".")
        entries = await session.list_folders()
        assert [(e.name, e.delimiter) for e in entries] == [("INBOX", ".")]


async def test_namespace_without_the_namespace_capability(dest_account: ServerAccount) -> None:
    async with await imap.connect(endpoint(dest_account)) as session:
        session._conn.capabilities -= {"NAMESPACE"}
        assert await session.namespace() == ("", ".")


async def test_create_and_subscribe_nested_names_on_the_dest(dest_account: ServerAccount) -> None:
    names = [
        "INBOX.historical_data",
        "INBOX.historical_data.Data",
        "INBOX.historical_data.Data.Inbox.Projects.2018",  # parents come with it
        "INBOX.historical_data.Data.Sent Items",
        "INBOX.historical_data.Data." + mutf7("Café & Réunions"),
        'INBOX.historical_data.Data.Mr_ Smith "q"',
    ]
    async with await imap.connect(endpoint(dest_account)) as session:
        for name in names:
            await session.create(name)
            await session.create(name)  # already exists: fine
            await session.subscribe(name)
        listed = {e.name for e in await session.list_folders()}
        assert set(names) | {"INBOX.historical_data.Data.Inbox"} <= listed
        with pytest.raises(PermanentError, match="CREATE"):
            await session.create("INBOX.historical_data.a/b")  # Dovecot: no '/' in Maildir++
        assert session.alive
    with dest_account.imap() as c:
        typ, data = c.lsub('""', "*")
        assert typ == "OK"
        subscribed = b"\n".join(d for d in data if isinstance(d, bytes))
        assert b"Sent Items" in subscribed and b"Caf&AOk- &- R&AOk-unions" in subscribed


# -- reading the source --------------------------------------------------------------------------


async def test_fetch_is_read_only_and_byte_identical(source_account: ServerAccount) -> None:
    server, user = source_account.server, source_account.user
    manifest = load_exchange_corpus(server, user)
    before = snapshot_mailbox(server, user)
    async with await imap.connect(endpoint(source_account)) as session:
        for folder in MAIL_FOLDERS:
            wire = mutf7(folder)
            info = await session.examine(wire)
            assert info.read_only and info.exists == len(manifest.messages(folder))
            uids = await session.uid_search(["ALL"])
            metas = await session.fetch_meta(uids)
            bodies = await session.fetch_bodies(uids)
            expected = manifest.messages(folder)
            assert [sha(m.body) for m in bodies] == [m.sha256 for m in expected], folder
            assert all(isinstance(m.body, bytearray) and m.error is None for m in bodies)
            for meta, body, loaded in zip(metas, bodies, expected, strict=True):
                assert meta.uid == body.uid
                assert set(meta.flags) - {"\\Recent"} == loaded.flags
                assert set(body.flags) - {"\\Recent"} == loaded.flags
                assert meta.internaldate == loaded.internaldate == body.internaldate
                assert meta.size == loaded.size
                assert meta.header.endswith(b"\r\n\r\n")
                assert b"Subject:" in meta.header and b"Received" not in meta.header
    after = snapshot_mailbox(server, user)
    assert after == before  # no \Seen, no flag, no message changed by EXAMINE + BODY.PEEK
    unseen = manifest.by_label("flagged-unseen")
    assert "\\Seen" not in unseen.flags


async def test_uid_search_by_received_date(source_account: ServerAccount) -> None:
    manifest = load_exchange_corpus(source_account.server, source_account.user)
    wanted = manifest.in_range(dt.date(2017, 9, 25), dt.date(2018, 9, 24)).messages("INBOX")
    async with await imap.connect(endpoint(source_account)) as session:
        await session.examine("INBOX")
        uids = await session.uid_search(["SINCE", "25-Sep-2017", "BEFORE", "25-Sep-2018"])
        bodies = await session.fetch_bodies(uids)
    assert sorted(sha(m.body) for m in bodies) == sorted(m.sha256 for m in wanted)
    assert len(wanted) >= 4  # the boundary messages are in the corpus


async def test_fetch_in_batches_of_2000_messages(source_account: ServerAccount) -> None:
    specs = [
        MailSpec(
            make_message(subject=f"n{i}", date=utc(2019, 1, 1), message_id=f"<n{i}@x>", body="x\n"),
            frozenset({"\\Seen"}),
            utc(2019, 1, 1),
        )
        for i in range(2000)
    ]
    # Test data written off the event loop (2,000 files: not what is measured here).
    await asyncio.to_thread(
        load_messages, source_account.server, source_account.user, "INBOX", specs
    )
    async with await imap.connect(endpoint(source_account, timeout=10)) as session:
        assert (await session.examine("INBOX")).exists == 2000
        start = time.monotonic()
        uids = await session.uid_search(["ALL"])
        metas = await session.fetch_meta(uids)
        bodies = await session.fetch_bodies("1:2000")
        assert time.monotonic() - start < 10
    assert [m.uid for m in metas] == uids == list(range(1, 2001))
    assert len(bodies) == 2000 and all(b.error is None for b in bodies)


# -- writing the destination ---------------------------------------------------------------------


async def test_append_round_trip(dest_account: ServerAccount) -> None:
    body = make_message(
        subject="Réunion über Café",
        date=utc(2018, 9, 24, 23, 59, 59),
        message_id="<rt@x>",
        sender="Zoë <z@example.com>",
        body="8-bit: é\n",
    )
    flags = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "$Forwarded", "$Label1", "\\Recent"]
    date = "24-Sep-2018 23:59:59 -0700"
    folder = "INBOX.historical_data.Data.Inbox"
    async with await imap.connect(endpoint(dest_account)) as session:
        await session.create(folder)
        info = await session.select(folder)
        assert (
            info.exists == 0 and info.permanent_flags is not None and "\\*" in info.permanent_flags
        )
        uid = await session.append(folder, bytearray(body), flags, date)
        uid2 = await session.append(folder, make_big_message(1_000_000), [], None)
        assert uid == 1 and uid2 == 2  # APPENDUID (UIDPLUS)
        (msg,) = await session.fetch_bodies([uid])
    assert msg.body == body
    assert set(msg.flags) - {"\\Recent"} == set(flags) - {"\\Recent"}
    assert (
        msg.internaldate
        == parse_date_time(date)
        == dt.datetime(2018, 9, 25, 6, 59, 59, tzinfo=dt.UTC)
    )


async def test_small_appends_do_not_wait_for_the_go_ahead(
    source_account: ServerAccount, fault_proxy: ProxyFactory
) -> None:
    proxy = fault_proxy(source_account.host, source_account.port_plain)
    ep = endpoint(source_account, host=proxy.host, port=proxy.port, tls="plain")
    message = b"Subject: small\r\n\r\n" + b"x" * 10_000 + b"\r\n"
    async with await imap.connect(ep) as session:
        assert "LITERAL+" in session.capabilities
        proxy.latency = 0.2  # 0.4 s per round trip
        start = time.monotonic()
        await session.append("INBOX", message)  # {n+}: one round trip
        nonsync = time.monotonic() - start
        session._conn.capabilities -= {"LITERAL+"}
        start = time.monotonic()
        await session.append("INBOX", message)  # {n}: wait for "+", then send: two
        sync = time.monotonic() - start
    assert nonsync < 0.6 <= sync
    with source_account.imap() as c:
        assert c.select("INBOX", readonly=True)[1] == [b"2"]


async def test_refused_append_keeps_the_session(dest_account: ServerAccount) -> None:
    async with await imap.connect(endpoint(dest_account)) as session:
        with pytest.raises(PermanentError, match=r"APPEND to 'INBOX\.nope'"):
            await session.append("INBOX.nope", b"Subject: x\r\n\r\nx\r\n")
        assert session.alive
        assert await session.append("INBOX", b"Subject: y\r\n\r\ny\r\n") == 1


# -- faults --------------------------------------------------------------------------------------


async def test_cut_in_the_middle_of_a_fetch_literal_fails_fast(
    source_account: ServerAccount, fault_proxy: ProxyFactory
) -> None:
    load_big_message(source_account.server, source_account.user, 2 * 1024 * 1024)
    proxy = fault_proxy(source_account.host, source_account.port_plain)
    proxy.cut_after_server_bytes(100_000, after=b"BODY[] {")
    ep = endpoint(source_account, host=proxy.host, port=proxy.port, tls="plain", timeout=10)
    async with await imap.connect(ep) as session:
        await session.examine("INBOX")
        start = time.monotonic()
        with pytest.raises(TransientError, match="connection was lost"):
            await session.fetch_bodies([1])
        assert time.monotonic() - start < 2.0  # well under the 10 s timeout
        assert proxy.faults_fired == 1 and not session.alive
        with pytest.raises(TransientError, match="no longer usable"):
            await session.examine("INBOX")


async def test_stalled_server_times_out_at_the_timeout(
    source_account: ServerAccount, fault_proxy: ProxyFactory
) -> None:
    load_messages(
        source_account.server,
        source_account.user,
        "INBOX",
        [
            MailSpec(
                make_message(subject="s", date=utc(2020, 1, 1), message_id="<s@x>"),
                frozenset(),
                utc(2020, 1, 1),
            )
        ],
    )
    proxy = fault_proxy(source_account.host, source_account.port_plain)
    proxy.stall_after_server_bytes(10, after=b"BODY[] {")
    ep = endpoint(source_account, host=proxy.host, port=proxy.port, tls="plain", timeout=0.8)
    async with await imap.connect(ep) as session:
        await session.examine("INBOX")
        start = time.monotonic()
        with pytest.raises(TransientError, match=r"no answer for 0\.8 s"):
            await session.fetch_bodies([1])
        assert 0.75 <= time.monotonic() - start < 2.5
        assert not session.alive
        session.abort()
        session.abort()  # idempotent, never raises
        await session.logout()  # never raises on a dead session


async def test_kick_makes_the_session_transient(source_account: ServerAccount) -> None:
    async with await imap.connect(endpoint(source_account)) as session:
        await session.examine("INBOX")
        await asyncio.to_thread(source_account.server.kick, source_account.user)
        for _ in range(100):
            if not session.alive:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(TransientError, match=r"closed the connection|no longer usable"):
            await session.examine("INBOX")


async def test_logout_closes_the_session(source_account: ServerAccount) -> None:
    session = await imap.connect(endpoint(source_account))
    await session.logout()
    assert not session.alive
    with pytest.raises(TransientError):
        await session.list_folders()
    await session.logout()  # twice is fine
    server, user = source_account.server, source_account.user
    await asyncio.to_thread(server.wait_for_log, lambda _: server.open_sessions(user) == 0)


async def test_folder_names_that_cannot_be_sent_are_permanent(
    source_account: ServerAccount,
) -> None:
    create_folder(source_account.server, source_account.user, "Box")
    async with await imap.connect(endpoint(source_account)) as session:
        with pytest.raises(PermanentError, match="NUL"):
            await session.examine("a\0b")
        with pytest.raises(PermanentError, match="UID set"):
            await session.fetch_bodies("1:*")
        with pytest.raises(PermanentError, match=r"non-ASCII|literal"):
            await session.uid_search(["SUBJECT", "café"])
        assert session.alive
