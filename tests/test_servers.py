"""The real-server test infrastructure works: pure helpers first, then the live servers."""

from __future__ import annotations

import datetime as dt
import hashlib
import imaplib
import re
import socket
import ssl
import time
from collections.abc import Callable

import aioimaplib
import pytest

from testkit import dovelog
from testkit.corpus import (
    MAIL_FOLDERS,
    NON_MAIL_FOLDERS,
    exchange_corpus,
    load_exchange_corpus,
)
from testkit.dovecot import DovecotServer
from testkit.dovecot_conf import ServerKind
from testkit.imap import HOSTILE_PASSWORD, Security, ServerAccount, connect, login
from testkit.maildir import MailSpec, encode_mutf7, folder_dir, info_suffix, load_messages
from testkit.mailgen import make_big_message, make_message, utc
from testkit.proxy import FaultProxy
from testkit.snapshot import parse_fetch_pager, snapshot_mailbox
from testkit.tlsca import TlsCa

# -- pure helpers ------------------------------------------------------------------------------

LOG = """\
2026-01-01 10:00:00.000001 imap-login: Info: Login: user=<a>, method=PLAIN, rip=127.0.0.1, \
lip=127.0.0.1, lport=993, mpid=10, TLS, session=<S1>
2026-01-01 10:00:00.000002 imap-login: Info: Login: user=<a>, method=PLAIN, rip=127.0.0.1, \
lip=127.0.0.1, lport=143, mpid=11, secured, session=<S2>
2026-01-01 10:00:00.000003 imap-login: Info: Login: user=<b>, method=PLAIN, rip=127.0.0.1, \
lip=127.0.0.1, lport=993, mpid=12, TLS, session=<S3>
2026-01-01 10:00:00.000004 imap(a)<10><S1>: Info: Disconnected: Logged out in=1 out=2
2026-01-01 10:00:00.000005 imap-login: Info: Disconnected: Connection closed (auth failed, \
2 attempts in 0 secs): user=<a>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, session=<S4>
2026-01-01 10:00:00.000006 imap-login: Info: Disconnected: Aborted login by logging out (auth \
failed, 1 attempts in 0 secs): user=<b>, method=PLAIN, rip=127.0.0.1, session=<S5>
2026-01-01 10:00:00.000007 imap-login: Info: Disconnected: Maximum number of connections from \
user+IP exceeded (mail_max_userip_connections=2): user=<a>, method=PLAIN, session=<S6>
2026-01-01 10:00:00.000008 imap-login: Info: Login: user=<a>, method=PLAIN, rip=127.0.0.1, \
lip=127.0.0.1, lport=993, mpid=13, TLS, session=<S7>
2026-01-01 10:00:00.000009 imap(a)<11><S2>: Info: Disconnected: Connection closed (UID FETCH \
finished 0.1 secs ago) in=1 out=2
2026-01-01 10:00:00.000010 imap-login: Info: Disconnected: Connection closed (no auth attempts \
in 0 secs): user=<>, rip=127.0.0.1, lip=127.0.0.1, session=<S8>
"""


@pytest.mark.parametrize(
    ("user", "counts", "peak", "still_open"),
    [
        ("a", dovelog.LoginCounts(3, 2, 1), 2, 1),
        ("b", dovelog.LoginCounts(1, 1, 0), 1, 1),
        ("nobody", dovelog.LoginCounts(0, 0, 0), 0, 0),
    ],
)
def test_log_parsing(user: str, counts: dovelog.LoginCounts, peak: int, still_open: int) -> None:
    assert dovelog.count_logins(LOG, user) == counts
    assert dovelog.max_concurrent_sessions(LOG, user) == peak
    assert dovelog.open_sessions(LOG, user) == still_open


def test_log_parsing_all_users_and_tls() -> None:
    assert dovelog.max_concurrent_sessions(LOG) == 3
    assert [(x.session, x.local_port, x.tls) for x in dovelog.logins(LOG, "a")] == [
        ("S1", 993, True),
        ("S2", 143, False),
        ("S7", 993, True),
    ]


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("Mr. Smith", "Mr. Smith"),
        ("Café & Réunions", "Caf&AOk- &- R&AOk-unions"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 example
        ("&&", "&-&-"),
        ("Ünter", "&ANw-nter"),
    ],
)
def test_encode_mutf7(name: str, encoded: str) -> None:
    assert encode_mutf7(name) == encoded


@pytest.mark.parametrize(
    ("flags", "suffix"),
    [
        (set(), ":2,"),
        ({"\\Seen"}, ":2,S"),
        ({"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"}, ":2,DFRST"),
        ({"$Label1", "\\Seen", "$Forwarded"}, ":2,Sab"),
    ],
)
def test_info_suffix(flags: set[str], suffix: str) -> None:
    assert info_suffix(frozenset(flags), {"$Forwarded": "a", "$Label1": "b"}) == suffix


def test_info_suffix_rejects_unknown_system_flag() -> None:
    with pytest.raises(ValueError, match="Recent"):
        info_suffix(frozenset({"\\Recent"}), {})


def test_messages_are_deterministic_crlf() -> None:
    def build() -> bytes:
        return make_message(subject="Réunion", date=utc(2016, 1, 1), message_id="<x@y>")

    data = build()
    assert data == build()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert "Subject: Réunion\r\n".encode() in data  # raw 8-bit header, not re-encoded
    big = make_big_message(1_000_000)
    assert len(big) >= 1_000_000 and big == make_big_message(1_000_000)
    assert b"\n" not in big.replace(b"\r\n", b"")


def test_corpus_has_every_case() -> None:
    corpus = exchange_corpus()
    labels = [s.label for specs in corpus.values() for s in specs]
    assert len(labels) == len(set(labels))
    assert len(labels) == 53  # as the corpus docstring says
    assert set(corpus) == set(MAIL_FOLDERS) | set(NON_MAIL_FOLDERS)
    assert corpus["Empty"] == []
    inbox = {s.label: s for s in corpus["INBOX"]}
    assert inbox["twin"].data == inbox["twin-copy"].data
    assert b"\r\nMessage-ID:" not in inbox["no-mid-1"].data
    assert inbox["shared-mid-1"].data != inbox["shared-mid-2"].data
    flags = set().union(*(s.flags for specs in corpus.values() for s in specs))
    assert flags == {"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"} | {
        "$Forwarded",
        "$Label1",
    }
    years = {s.internaldate.year for specs in corpus.values() for s in specs}
    assert years == set(range(2015, 2021))
    assert sum(len(v) for v in exchange_corpus(scale=3).values()) == len(labels) + 2 * 10 * 8


def test_parse_fetch_pager_reads_by_size() -> None:
    out = (
        b"mailbox: A\nuid: 1\nsize.physical: 9\ntext:\nx\f\nab\r\n\f\n\f\n"
        b"mailbox: B/C\nuid: 7\nsize.physical: 3\ntext:\nend"
    )
    recs = parse_fetch_pager(out)
    assert [(r["mailbox"], r["uid"], r["text"]) for r in recs] == [
        (b"A", b"1", b"x\f\nab\r\n\f\n"),
        (b"B/C", b"7", b"end"),
    ]


# -- live servers ------------------------------------------------------------------------------


@pytest.mark.parametrize("security", [Security.TLS, Security.STARTTLS])
@pytest.mark.parametrize("which", ["source", "dest"])
def test_login_verifies_certificate(
    which: str, security: Security, source_account: ServerAccount, dest_account: ServerAccount
) -> None:
    account = source_account if which == "source" else dest_account
    with account.imap(security) as conn:
        assert conn.state == "AUTH"
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    port = account.port_tls if security is Security.TLS else account.port_plain
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(account.host, port, security, ssl.create_default_context())


async def test_hostile_password_logs_in_with_login_command(source_account: ServerAccount) -> None:
    """The daemon's way: LOGIN with the user and password as quoted strings (aioimaplib)."""
    assert source_account.password == HOSTILE_PASSWORD
    imap = aioimaplib.IMAP4_SSL(
        source_account.host,
        source_account.port_tls,
        ssl_context=source_account.server.tls.client_context(),
    )
    try:
        await imap.wait_hello_from_server()
        response = await imap.login(aioimaplib.quoted(source_account.user), HOSTILE_PASSWORD)
        await imap.logout()
    finally:
        # The bare library's logout does not always close its transport (when the server's
        # close comes first): closed here, so no "unclosed transport" surfaces in a later test.
        transport = imap.protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()
    assert response.result == "OK"


def test_source_list_and_corpus(
    source_server: DovecotServer, source_account: ServerAccount
) -> None:
    manifest = load_exchange_corpus(source_server, source_account.user)
    with source_account.imap() as conn:
        typ, lines = conn.list()
        assert typ == "OK"
        listed = {}
        for raw in lines:
            assert isinstance(raw, bytes)
            m = re.fullmatch(rb'\((.*?)\) "(.)" (.*)', raw)
            assert m is not None, raw
            assert m[2] == b"/"
            listed[m[3].strip(b'"').decode()] = m[1].decode()
        assert "Mr. Smith" in listed and "Caf&AOk- &- R&AOk-unions" in listed
        assert "\\Noselect" in listed["INBOX/Projects"]
        assert set(listed) == {encode_mutf7(f) for f in manifest.folders} | {"INBOX/Projects"}
        for folder, expected in manifest.folders.items():
            typ, _ = conn.select(f'"{encode_mutf7(folder)}"', readonly=True)
            assert typ == "OK", folder
            if not expected:
                continue
            typ, data = conn.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
            got = [item for item in data if isinstance(item, tuple)]
            assert len(got) == len(expected), folder
            for (meta, body), want in zip(got, expected, strict=True):
                assert hashlib.sha256(body).hexdigest() == want.sha256, want.label
                flags = set(imaplib.ParseFlags(meta)) - {b"\\Recent"}
                assert flags == {f.encode() for f in want.flags}, want.label
                when = imaplib.Internaldate2tuple(meta)
                assert when is not None
                assert time.mktime(when) == want.internaldate.timestamp(), want.label
    snap = snapshot_mailbox(source_server, source_account.user)
    assert snap.noselect == {"INBOX/Projects"}
    for folder, expected in manifest.folders.items():
        state = snap.folders[folder].messages
        assert [(m.sha256, m.flags, m.internaldate) for m in state] == [
            (w.sha256, w.flags, int(w.internaldate.timestamp())) for w in expected
        ]
    assert snap.folders["INBOX"].contents() == manifest.contents("INBOX")
    # reading over IMAP (EXAMINE + BODY.PEEK) and with doveadm changed nothing
    assert snapshot_mailbox(source_server, source_account.user) == snap


def test_manifest_in_range_is_inclusive(
    source_server: DovecotServer, source_account: ServerAccount
) -> None:
    manifest = load_exchange_corpus(source_server, source_account.user)
    kept = {
        m.label for m in manifest.in_range(dt.date(2017, 9, 25), dt.date(2018, 9, 24)).messages()
    }
    assert "edge-2017-09-25T00:00:00" in kept and "edge-2018-09-24T23:59:59" in kept
    assert "edge-2018-09-24T23:59:00" in kept
    assert "edge-2017-09-24T23:59:59" not in kept and "edge-2018-09-25T00:00:00" not in kept


@pytest.mark.parametrize(
    ("which", "folder"),
    [
        ("source", "INBOX/Projects/2018"),
        ("source", "Café & Réunions"),
        ("source", "Sync Issues/Conflicts"),
        ("dest", "INBOX.historical_data.Caf&é.Inbox"),
        ("dest", "INBOX.x"),
    ],
)
def test_folder_dir_matches_doveadm(
    which: str, folder: str, source_account: ServerAccount, dest_account: ServerAccount
) -> None:
    account = source_account if which == "source" else dest_account
    path = account.server.doveadm("mailbox", "path", "-u", account.user, folder).stdout
    assert path.decode().strip() == str(folder_dir(account.server, account.user, folder))


def test_dest_namespace_and_preload(
    dest_server: DovecotServer, dest_account: ServerAccount
) -> None:
    data = make_message(subject="pre", date=utc(2018, 1, 1), message_id="<pre@x>")
    spec = MailSpec(data, frozenset({"\\Seen", "$Label1"}), utc(2018, 1, 1), "pre")
    load_messages(dest_server, dest_account.user, "INBOX.historical_data.Data.Inbox", [spec])
    appended = b"Subject: appended\r\n\r\nbody\r\n"
    with dest_account.imap(Security.STARTTLS) as conn:
        typ, ns = conn.namespace()
        assert (typ, ns) == ("OK", [b'(("INBOX." ".")) NIL NIL'])
        typ, _ = conn.append("INBOX.historical_data.Data.Inbox", None, None, appended)
        assert typ == "OK"
    snap = snapshot_mailbox(dest_server, dest_account.user)
    assert snap.noselect == {"INBOX.historical_data", "INBOX.historical_data.Data"}
    msgs = snap.folders["INBOX.historical_data.Data.Inbox"].messages
    assert [m.sha256 for m in msgs] == [hashlib.sha256(x).hexdigest() for x in (data, appended)]
    assert msgs[0].flags == {"\\Seen", "$Label1"}


def test_plaintext_refused_on_insecure_host_and_allowed_on_notls_host(
    source_account: ServerAccount,
) -> None:
    server = source_account.server
    ctx = server.tls.client_context()
    conn = connect(server.insecure_host, server.port_plain, Security.PLAIN, ctx)
    try:
        assert "LOGINDISABLED" in conn.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            login(conn, source_account.user, source_account.password)
    finally:
        conn.shutdown()
    conn = connect(server.notls_host, server.port_plain, Security.PLAIN, ctx)
    try:
        assert "STARTTLS" not in conn.capabilities
        login(conn, source_account.user, source_account.password)
        assert conn.state == "AUTH"
    finally:
        conn.logout()


def test_count_logins_and_concurrency(source_account: ServerAccount) -> None:
    server, user = source_account.server, source_account.user
    conn = connect(
        source_account.host, source_account.port_tls, Security.TLS, server.tls.client_context()
    )
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        login(conn, user, "wrong")
    conn.logout()
    with source_account.imap(), source_account.imap(), source_account.imap():
        pass
    with source_account.imap(Security.STARTTLS):
        pass
    server.wait_for_log(
        lambda log: (
            dovelog.count_logins(log, user).attempts >= 5 and dovelog.open_sessions(log, user) == 0
        )
    )
    assert server.count_logins(user) == dovelog.LoginCounts(
        succeeded=4, failed=1, refused_by_limit=0
    )
    assert server.max_concurrent_sessions(user) == 3
    assert {x.local_port for x in server.logins(user)} == {server.port_tls, server.port_plain}


def test_connection_limit_is_enforced_and_logged(
    dovecot_factory: Callable[..., DovecotServer], tls_ca: TlsCa
) -> None:
    server = dovecot_factory(ServerKind.SOURCE, max_userip_connections=2)
    account = ServerAccount(server, server.new_user("pw"), "pw")
    with (
        account.imap(),
        account.imap(),
        pytest.raises(imaplib.IMAP4.error, match="LIMIT"),
        account.imap(),
    ):
        pass
    server.wait_for_log(
        lambda log: (
            dovelog.count_logins(log, account.user).attempts >= 3
            and dovelog.open_sessions(log, account.user) == 0
        )
    )
    assert server.count_logins(account.user).refused_by_limit == 1
    assert server.max_concurrent_sessions(account.user) == 2


def test_kick_and_restart_keep_ports_and_mail(
    dovecot_factory: Callable[..., DovecotServer],
) -> None:
    server = dovecot_factory(ServerKind.DEST)
    account = ServerAccount(server, server.new_user("pw"), "pw")
    load_messages(
        server,
        account.user,
        "INBOX",
        [MailSpec(b"Subject: k\r\n\r\nk\r\n", frozenset(), utc(2019, 1, 1))],
    )
    with account.imap() as conn:
        conn.select("INBOX")
        server.kick(account.user)
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            conn.noop()
            conn.noop()
    before = snapshot_mailbox(server, account.user)
    ports = (server.port_plain, server.port_tls)
    server.stop()
    server.start()
    assert (server.port_plain, server.port_tls) == ports
    assert snapshot_mailbox(server, account.user) == before


# -- fault proxy -------------------------------------------------------------------------------


def _fetch_first_body(account: ServerAccount, proxy: FaultProxy, security: Security) -> bytes:
    ctx = account.server.tls.client_context()
    conn = connect(proxy.host, proxy.port, security, ctx, timeout=5)
    try:
        login(conn, account.user, account.password)
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK"
        item = data[0]
        assert isinstance(item, tuple)
        body: bytes = item[1]
        return body
    finally:
        conn.shutdown()


def test_proxy_cuts_inside_fetch_literal_once(
    source_server: DovecotServer,
    source_account: ServerAccount,
    fault_proxy: Callable[[str, int], FaultProxy],
) -> None:
    data = make_big_message(200_000)
    load_messages(
        source_server, source_account.user, "INBOX", [MailSpec(data, frozenset(), utc(2018, 1, 1))]
    )
    proxy = fault_proxy(source_server.host, source_server.port_plain)
    proxy.cut_after_server_bytes(50_000, after=b"BODY[] {")
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        _fetch_first_body(source_account, proxy, Security.PLAIN)
    assert proxy.faults_fired == 1
    assert _fetch_first_body(source_account, proxy, Security.PLAIN) == data  # once: next is clean
    assert proxy.connections_total == 2


def test_proxy_passes_tls_and_cuts_by_bytes(
    source_server: DovecotServer,
    source_account: ServerAccount,
    fault_proxy: Callable[[str, int], FaultProxy],
) -> None:
    data = make_big_message(100_000)
    load_messages(
        source_server, source_account.user, "INBOX", [MailSpec(data, frozenset(), utc(2018, 1, 1))]
    )
    proxy = fault_proxy(source_server.host, source_server.port_tls)
    assert _fetch_first_body(source_account, proxy, Security.TLS) == data
    proxy.cut_after_server_bytes(60_000, once=False)
    for _ in range(2):
        with pytest.raises((imaplib.IMAP4.abort, OSError, ssl.SSLError)):
            _fetch_first_body(source_account, proxy, Security.TLS)
    assert proxy.faults_fired == 2


def test_proxy_latency_and_stall(
    source_server: DovecotServer, fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    proxy = fault_proxy(source_server.host, source_server.port_plain)
    proxy.latency = 0.15
    start = time.monotonic()
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        lines = sock.makefile("rb")
        assert lines.readline().startswith(b"* OK")  # greeting: one trip server->client
        sock.sendall(b"a NOOP\r\n")
        assert lines.readline().startswith(b"a OK")
    assert time.monotonic() - start >= 0.45  # 1 one-way + 1 round trip
    proxy.latency = 0.0
    proxy.stall()
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # a hung server: connected, but no greeting
        proxy.resume()
        sock.settimeout(5)
        assert sock.makefile("rb").readline().startswith(b"* OK")
    assert proxy.connections_total == 2


def test_big_message_loads(source_server: DovecotServer, source_account: ServerAccount) -> None:
    from testkit.mailgen import load_big_message

    loaded = load_big_message(source_server, source_account.user, 5 * 1024 * 1024)
    snap = snapshot_mailbox(source_server, source_account.user)
    (msg,) = snap.folders["INBOX"].messages
    assert (msg.sha256, msg.size) == (loaded.sha256, loaded.size)
    assert loaded.size >= 5 * 1024 * 1024


def test_proxy_cuts_inside_append_upload(
    dest_server: DovecotServer,
    dest_account: ServerAccount,
    fault_proxy: Callable[[str, int], FaultProxy],
) -> None:
    # TLS: only byte counts can be used (the next test matches a pattern in plaintext).
    proxy = fault_proxy(dest_server.host, dest_server.port_tls)
    conn = connect(
        proxy.host, proxy.port, Security.TLS, dest_server.tls.client_context(), timeout=5
    )
    login(conn, dest_account.user, dest_account.password)
    proxy.cut_after_client_bytes(20_000)  # counted from connection start: inside the literal
    with pytest.raises((imaplib.IMAP4.abort, OSError, ssl.SSLError)):
        conn.append("INBOX", None, None, make_big_message(200_000))
    conn.shutdown()
    assert proxy.faults_fired == 1
    assert snapshot_mailbox(dest_server, dest_account.user).folders["INBOX"].messages == ()


def test_proxy_cut_after_client_pattern(
    source_server: DovecotServer,
    source_account: ServerAccount,
    fault_proxy: Callable[[str, int], FaultProxy],
) -> None:
    proxy = fault_proxy(source_server.host, source_server.port_plain)
    proxy.cut_after_client_bytes(5_000, after=b"APPEND")
    conn = connect(proxy.host, proxy.port, Security.PLAIN, source_server.tls.client_context())
    login(conn, source_account.user, source_account.password)
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        conn.append("INBOX", None, None, make_big_message(100_000))
    conn.shutdown()
    assert proxy.faults_fired == 1
    assert snapshot_mailbox(source_server, source_account.user).folders["INBOX"].messages == ()


def test_proxy_stalls_mid_literal(
    source_server: DovecotServer,
    source_account: ServerAccount,
    fault_proxy: Callable[[str, int], FaultProxy],
) -> None:
    data = make_big_message(300_000)
    spec = MailSpec(data, frozenset(), utc(2018, 1, 1))
    load_messages(source_server, source_account.user, "INBOX", [spec])
    proxy = fault_proxy(source_server.host, source_server.port_plain)
    proxy.stall_after_server_bytes(10_000, after=b"BODY[] {")
    conn = connect(proxy.host, proxy.port, Security.PLAIN, source_server.tls.client_context())
    try:
        login(conn, source_account.user, source_account.password)
        conn.select("INBOX", readonly=True)
        conn.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn.uid("FETCH", "1", "(BODY.PEEK[])")  # a hung server: the literal never ends
    finally:
        conn.shutdown()
    assert proxy.faults_fired == 1
    assert _fetch_first_body(source_account, proxy, Security.PLAIN) == data
