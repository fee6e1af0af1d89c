"""The Cyrus IMAP and Courier-IMAP test servers behave as measured (testkit/cyrus.py,
testkit/courier.py, docs/imap-interop.md §3): pure helpers first, then the live servers."""

from __future__ import annotations

import datetime as dt
import hashlib
import imaplib
import socket
import ssl
import time
from collections.abc import Callable

import pytest

from testkit.courier import CourierServer
from testkit.cyrus import CyrusServer
from testkit.dovecot import DovecotServer
from testkit.imap import HOSTILE_PASSWORD, Security, ServerAccount, connect, login
from testkit.imapmail import (
    Literal,
    Quoted,
    decode_mutf7,
    parse_fetch,
    parse_list,
    parse_sexp,
    quote,
)
from testkit.maildir import MailSpec, encode_mutf7, load_messages
from testkit.mailgen import make_big_message, make_message, utc
from testkit.snapshot import MailboxSnapshot, snapshot_mailbox
from testkit.tlsca import TlsCa

# -- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["INBOX", "Mr. Smith", "Café & Réunions", "~peter/mail/台北/日本語", "&&", "Ünter", "😀 x"],
)
def test_mutf7_round_trip(name: str) -> None:
    assert decode_mutf7(encode_mutf7(name)) == name


def test_quote_escapes_and_encodes() -> None:
    assert quote('a"b\\c é') == '"a\\"b\\\\c &AOk-"'


def test_parse_fetch_with_literals_in_any_order() -> None:
    # As imaplib returns it: a literal splits a response into (prefix, bytes) and a tail.
    data: list[object] = [
        (b'1 (FLAGS (\\Seen $Label1) UID 7 INTERNALDATE " 4-Jul-2017 02:40:00 +0200" '
         b"BODY[] {5}", b"ab)(\r"),
        b" RFC822.SIZE 5)",
        (b"2 (UID 9 BODY[] {0}", b""),
        b' FLAGS () INTERNALDATE "14-Jul-2017 02:40:00 +0000")',
    ]  # fmt: skip
    first, second = parse_fetch(data)
    assert first["UID"] == "7" and first["BODY[]"] == b"ab)(\r"
    assert first["FLAGS"] == ["\\Seen", "$Label1"]
    assert first["INTERNALDATE"] == " 4-Jul-2017 02:40:00 +0200"
    assert first["RFC822.SIZE"] == "5"
    assert second == {
        "UID": "9",
        "BODY[]": b"",
        "FLAGS": [],
        "INTERNALDATE": "14-Jul-2017 02:40:00 +0000",
    }
    assert isinstance(first["BODY[]"], Literal)


def test_parse_list_quoted_atom_and_literal_names() -> None:
    listed = parse_list(
        [
            b'(\\HasNoChildren) "." INBOX.Sent',
            b'(\\Noselect \\HasChildren) "/" "Caf&AOk-/a \\"b\\""',
            (b"() NIL {7}", b"Mr. Sm}"),
        ]
    )
    assert listed == [
        (frozenset({"\\HasNoChildren"}), ".", "INBOX.Sent"),
        (frozenset({"\\Noselect", "\\HasChildren"}), "/", 'Café/a "b"'),
        (frozenset(), None, "Mr. Sm}"),
    ]


def test_parse_sexp_namespace() -> None:
    parsed = parse_sexp([b'(("INBOX." ".")) NIL (("#shared." ".")("shared." "."))'])
    assert parsed == [[["INBOX.", "."]], "NIL", [["#shared.", "."], ["shared.", "."]]]
    assert isinstance(parsed[0][0][0], Quoted)  # type: ignore[index]


# -- shared checks -----------------------------------------------------------------------------

EIGHT_BIT = "Subject: Réunion à Zürich\r\n".encode()


def _specs() -> list[MailSpec]:
    """Every flag kind, keywords, dates from 1999 to 2020 with odd seconds, a 1 MB message."""
    plain = make_message(subject="plain", date=utc(2016, 1, 1), message_id="<p@lf>")
    return [
        MailSpec(plain, frozenset(), utc(1999, 12, 31, 23, 59, 59), "plain"),
        MailSpec(
            make_message(subject="all flags", date=utc(2017, 7, 4), message_id="<f@lf>"),
            frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"}),
            utc(2017, 7, 4, 2, 40, 1),
            "flags",
        ),
        MailSpec(
            make_message(subject="keywords", date=utc(2018, 2, 28), message_id="<k@lf>"),
            frozenset({"\\Seen", "$Forwarded", "$Label1"}),
            utc(2018, 2, 28, 12, 0, 7),
            "keywords",
        ),
        MailSpec(plain, frozenset({"\\Seen"}), utc(2020, 2, 29, 0, 0, 1), "twin"),
        MailSpec(make_big_message(1_000_000), frozenset(), utc(2019, 6, 1, 8, 30), "big"),
    ]


def _expected(specs: list[MailSpec]) -> dict[tuple[str, frozenset[str], int], int]:
    out: dict[tuple[str, frozenset[str], int], int] = {}
    for s in specs:
        key = (hashlib.sha256(s.data).hexdigest(), s.flags, int(s.internaldate.timestamp()))
        out[key] = out.get(key, 0) + 1
    return out


def _round_trip(server: CyrusServer | CourierServer, user: str) -> MailboxSnapshot:
    specs = _specs()
    folder = server.prefix + "Projekte Café"
    loaded = server.load_messages(user, folder, specs)
    server.load_messages(user, "INBOX", specs[:1])
    assert [m.label for m in loaded] == [s.label for s in specs]
    snap = server.snapshot(user)
    assert set(snap.folders) == {"INBOX", folder}
    assert dict(snap.folders[folder].contents()) == _expected(specs)
    msgs = snap.folders[folder].messages
    assert [m.uid for m in msgs] == sorted(m.uid for m in msgs)  # UIDs follow load order
    assert [m.size for m in msgs] == [len(s.data) for s in specs]
    assert [m.internaldate for m in msgs] == [int(s.internaldate.timestamp()) for s in specs]
    assert server.snapshot(user) == snap  # reading changed nothing, \Seen included
    return snap


def _capabilities_after_login(account: ServerAccount) -> set[str]:
    with account.imap() as conn:
        typ, data = conn.capability()
        assert typ == "OK"
        return set(data[0].decode().upper().split())


# -- Cyrus -------------------------------------------------------------------------------------


def test_cyrus_tls_login_verified_against_test_ca(
    cyrus_server: CyrusServer, cyrus_account: ServerAccount, tls_ca: TlsCa
) -> None:
    assert cyrus_server.start_seconds is not None and cyrus_server.start_seconds < 10
    conn = connect(cyrus_server.host, cyrus_server.port_tls, Security.TLS, tls_ca.client_context())
    assert b"Cyrus IMAP 3.6.1" in conn.welcome
    login(conn, cyrus_account.user, HOSTILE_PASSWORD)
    conn.logout()
    with cyrus_account.imap(Security.STARTTLS) as conn:
        assert conn.sock.version() is not None  # type: ignore[attr-defined]
    # A client that trusts only the system CAs refuses the test certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(
            cyrus_server.host, cyrus_server.port_tls, Security.TLS, ssl.create_default_context()
        )


def test_cyrus_requires_tls_before_login(
    cyrus_server: CyrusServer, cyrus_account: ServerAccount
) -> None:
    conn = imaplib.IMAP4(cyrus_server.host, cyrus_server.port_plain, timeout=10)
    try:
        assert "LOGINDISABLED" in conn.capabilities and "STARTTLS" in conn.capabilities
        assert not any(c.startswith("AUTH=") for c in conn.capabilities)
        with pytest.raises(imaplib.IMAP4.error, match="Login only available under a layer"):
            conn.login(cyrus_account.user, "x")
    finally:
        conn.shutdown()


def test_cyrus_namespaces_and_others_folders_listed_not_snapshotted(
    cyrus_server: CyrusServer,
    new_cyrus_account: Callable[..., ServerAccount],
) -> None:
    me, other = new_cyrus_account(), new_cyrus_account()
    cyrus_server.create_folder(me.user, "INBOX.Sent")
    seen_as = cyrus_server.share_folder(other.user, "INBOX.Team", me.user, "lr")
    assert seen_as == f"user.{other.user}.Team"
    public = f"Public{me.user}"
    cyrus_server.create_shared_folder(public, {me.user: "lr"})
    with me.imap() as conn:
        assert conn.namespace() == ("OK", [b'(("INBOX." ".")) (("user." ".")) (("" "."))'])
        listed = {name for _a, sep, name in parse_list(conn.list('""', '"*"')[1])}
        assert {sep for _a, sep, _n in parse_list(conn.list('""', '"*"')[1])} == {"."}
    assert {"INBOX", "INBOX.Sent", seen_as, public} <= listed
    assert set(cyrus_server.snapshot(me.user).folders) == {"INBOX", "INBOX.Sent"}


def test_cyrus_unix_separator(cyrus_factory: Callable[..., CyrusServer]) -> None:
    server = cyrus_factory(separator="/")
    assert (server.separator, server.prefix) == ("/", "INBOX/")
    user = server.new_user("pw", "cyr")
    with server.connect(user) as conn:
        assert conn.namespace() == ("OK", [b'(("INBOX/" "/")) (("user/" "/")) (("" "/"))'])
        assert conn.create('"INBOX/a^b"') == ("NO", [b"Invalid mailbox name"])
    server.create_folder(user, "INBOX/Mr. Smith")
    assert set(server.snapshot(user).folders) == {"INBOX", "INBOX/Mr. Smith"}
    assert server.mailbox_of(user, "INBOX/x") == f"user/{user}/x"


@pytest.mark.parametrize("name", ["INBOX.a%b", 'INBOX.a"b', "INBOX.a\\b"])
def test_cyrus_refuses_names(cyrus_account: ServerAccount, name: str) -> None:
    with cyrus_account.imap() as conn:
        assert conn.create(quote(name)) == ("NO", [b"Invalid mailbox name"])


def test_cyrus_load_and_snapshot_round_trip(
    cyrus_server: CyrusServer, cyrus_account: ServerAccount
) -> None:
    snap = _round_trip(cyrus_server, cyrus_account.user)
    folder = snap.folders["INBOX.Projekte Café"]
    assert folder.uidvalidity > 0 and [m.uid for m in folder.messages] == [1, 2, 3, 4, 5]


def test_cyrus_offers_multiappend_and_literal_plus(cyrus_account: ServerAccount) -> None:
    assert {"MULTIAPPEND", "LITERAL+", "UIDPLUS", "NAMESPACE"} <= _capabilities_after_login(
        cyrus_account
    )


def _eight_bit_spec() -> MailSpec:
    data = EIGHT_BIT + b"From: a@example.test\r\nMessage-ID: <8@lf>\r\n\r\nbody \xc3\xa9\r\n"
    return MailSpec(data, frozenset(), utc(2016, 5, 5), "8bit")


def test_cyrus_munge8bit_on_by_default_rewrites_header_bytes(
    cyrus_server: CyrusServer, cyrus_account: ServerAccount
) -> None:
    spec = _eight_bit_spec()
    cyrus_server.load_messages(cyrus_account.user, "INBOX", [spec])
    with cyrus_account.imap() as conn:
        conn.select("INBOX", readonly=True)
        _typ, data = conn.fetch("1", "(BODY.PEEK[])")
    stored = data[0][1]  # type: ignore[index]
    assert stored.startswith(b"Subject: RXXunion XX ZXXrich\r\n")  # one X per byte
    assert len(stored) == len(spec.data)
    assert stored.endswith(b"body \xc3\xa9\r\n")  # the body is left alone


def test_cyrus_munge8bit_off_keeps_bytes(cyrus_factory: Callable[..., CyrusServer]) -> None:
    server = cyrus_factory(munge8bit=False)
    user = server.new_user("pw", "cyr")
    spec = _eight_bit_spec()
    server.load_messages(user, "INBOX", [spec])
    (msg,) = server.snapshot(user).folders["INBOX"].messages
    assert msg.sha256 == hashlib.sha256(spec.data).hexdigest()


def test_cyrus_maxlogins_per_user_refusal_text(
    cyrus_factory: Callable[..., CyrusServer], tls_ca: TlsCa
) -> None:
    server = cyrus_factory(maxlogins_per_user=2)
    user = server.new_user(HOSTILE_PASSWORD, "cyr")
    conns = []
    try:
        for _ in range(2):
            conn = connect(server.host, server.port_tls, Security.TLS, tls_ca.client_context())
            conns.append(conn)
            login(conn, user, HOSTILE_PASSWORD)
        third = connect(server.host, server.port_tls, Security.TLS, tls_ca.client_context())
        conns.append(third)
        with pytest.raises(imaplib.IMAP4.error) as refused:
            login(third, user, HOSTILE_PASSWORD)
        assert str(refused.value) == f"Too many open connections (2 of 2 for {user})"
        assert third.noop()[0] == "OK"  # a plain NO: the connection stays, unauthenticated
    finally:
        for conn in conns:
            conn.shutdown()
    assert len(server.sessions(user)) == 2  # the refused login is not in the wire log


def test_cyrus_quota(cyrus_server: CyrusServer, cyrus_account: ServerAccount) -> None:
    cyrus_server.set_quota(cyrus_account.user, 1)
    with cyrus_account.imap() as conn:
        big = b"Subject: q\r\n\r\n" + b"x" * 3000 + b"\r\n"
        assert conn.append("INBOX", None, None, big) == ("NO", [b"Over quota"])


def test_cyrus_wire_log_records_sessions_except_the_kits(
    cyrus_server: CyrusServer, cyrus_account: ServerAccount
) -> None:
    cyrus_server.load_messages(cyrus_account.user, "INBOX", _specs()[:1])
    cyrus_server.snapshot(cyrus_account.user)
    assert cyrus_server.sessions(cyrus_account.user) == []
    with cyrus_account.imap() as conn:
        conn.select("INBOX")
    (session,) = cyrus_server.sessions(cyrus_account.user)
    assert session.startswith(f"---------- {cyrus_account.user} ")
    assert "SELECT INBOX" in session and "LOGOUT" in session
    assert len(cyrus_server.sessions(cyrus_account.user, include_testkit=True)) == 3


# -- Courier -----------------------------------------------------------------------------------


def test_courier_starttls_login_verified_against_test_ca(
    courier_server: CourierServer, courier_account: ServerAccount, tls_ca: TlsCa
) -> None:
    assert courier_server.start_seconds is not None and courier_server.start_seconds < 10
    conn = connect(
        courier_server.host, courier_server.port_plain, Security.STARTTLS, tls_ca.client_context()
    )
    assert b"Courier-IMAP ready" in conn.welcome
    login(conn, courier_account.user, HOSTILE_PASSWORD)
    conn.logout()
    with pytest.raises(RuntimeError, match="no implicit-TLS port"):
        _ = courier_server.port_tls
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(
            courier_server.host,
            courier_server.port_plain,
            Security.STARTTLS,
            ssl.create_default_context(),
        )
    courier_server.wait_for_log(lambda text: text.count("INFO: LOGOUT, user=") >= 1)
    logins = courier_server.logins(courier_account.user)
    assert [(s.user, s.ended) for s in logins] == [(courier_account.user, True)]


def test_courier_requires_starttls_before_login(
    courier_server: CourierServer, courier_account: ServerAccount
) -> None:
    conn = imaplib.IMAP4(courier_server.host, courier_server.port_plain, timeout=10)
    try:
        assert "LOGINDISABLED" in conn.capabilities and "STARTTLS" in conn.capabilities
        assert not any(c.startswith("AUTH=") for c in conn.capabilities)
        with pytest.raises(imaplib.IMAP4.error, match="STARTTLS required"):
            conn.login(courier_account.user, "x")
    finally:
        conn.shutdown()


def test_courier_namespace_and_list(
    courier_server: CourierServer, courier_account: ServerAccount
) -> None:
    courier_server.create_folder(courier_account.user, "INBOX.Sent")
    with courier_account.imap() as conn:
        assert conn.namespace() == (
            "OK",
            [b'(("INBOX." ".")) NIL (("#shared." ".")("shared." "."))'],
        )
        listed = parse_list(conn.list('""', '"*"')[1])
    assert {(sep, name) for _a, sep, name in listed} == {(".", "INBOX"), (".", "INBOX.Sent")}


def test_courier_offers_no_multiappend_no_literal_plus(
    courier_server: CourierServer, courier_account: ServerAccount
) -> None:
    conn = imaplib.IMAP4(courier_server.host, courier_server.port_plain, timeout=10)
    before = set(conn.capabilities)
    conn.shutdown()
    after = _capabilities_after_login(courier_account)
    for caps in (before, after):
        assert not {"MULTIAPPEND", "LITERAL+", "LITERAL-", "ID"} & caps
    assert "AUTH=PLAIN" in after and "UIDPLUS" in after


def test_courier_load_and_snapshot_round_trip(
    courier_server: CourierServer, courier_account: ServerAccount
) -> None:
    snap = _round_trip(courier_server, courier_account.user)
    assert [m.uid for m in snap.folders["INBOX.Projekte Café"].messages] == [1, 2, 3, 4, 5]
    # Stored with LF line ends (the CRLF bytes above come back from imapd's conversion).
    stored = next((courier_server.maildir(courier_account.user) / "cur").iterdir())
    assert b"\r\n" not in stored.read_bytes()


def test_courier_maxperip_closes_before_greeting(
    courier_factory: Callable[..., CourierServer],
) -> None:
    server = courier_factory(maxperip=2)
    socks = [socket.create_connection((server.host, server.port_plain), 5) for _ in range(3)]
    try:
        for s in socks:
            s.settimeout(5)
        assert socks[0].recv(100).startswith(b"* OK [CAPABILITY IMAP4rev1")
        assert socks[1].recv(100).startswith(b"* OK [CAPABILITY IMAP4rev1")
        assert socks[2].recv(100) == b""  # closed, no greeting, no BYE
    finally:
        for s in socks:
            s.close()
    server.wait_for_log(lambda text: "ALERT: Maximum connection limit reached for" in text)
    assert server.limit_refusals() == 1


def test_courier_failed_login_is_answered_after_5_seconds(
    courier_server: CourierServer, courier_account: ServerAccount
) -> None:
    before = courier_server.failed_logins()
    began = time.monotonic()
    with (
        pytest.raises(imaplib.IMAP4.error, match="Login failed"),
        courier_server.connect(courier_account.user, password="wrong"),
    ):
        pass
    assert time.monotonic() - began > 4.5  # imaplogin's fixed delay: a daemon's timeout must wait
    courier_server.wait_for_log(lambda _t: courier_server.failed_logins() == before + 1)


def test_courier_concurrent_sessions(
    courier_server: CourierServer, new_courier_account: Callable[..., ServerAccount]
) -> None:
    account = new_courier_account()
    with account.imap(), account.imap():
        pass
    courier_server.wait_for_log(
        lambda _t: all(s.ended for s in courier_server.logins(account.user))
    )
    assert len(courier_server.logins(account.user)) == 2
    assert courier_server.max_concurrent_sessions(account.user) == 2


# -- across server kinds -----------------------------------------------------------------------


def test_snapshots_compare_across_dovecot_cyrus_and_courier(
    dest_server: DovecotServer,
    dest_account: ServerAccount,
    cyrus_server: CyrusServer,
    cyrus_account: ServerAccount,
    courier_server: CourierServer,
    courier_account: ServerAccount,
) -> None:
    specs = _specs()
    load_messages(dest_server, dest_account.user, "INBOX.X", specs)
    cyrus_server.load_messages(cyrus_account.user, "INBOX.X", specs)
    courier_server.load_messages(courier_account.user, "INBOX.X", specs)
    dovecot = snapshot_mailbox(dest_server, dest_account.user).folders["INBOX.X"]
    cyrus = cyrus_server.snapshot(cyrus_account.user).folders["INBOX.X"]
    courier = courier_server.snapshot(courier_account.user).folders["INBOX.X"]
    assert dovecot.contents() == cyrus.contents() == courier.contents()
    assert [m.uid for m in dovecot.messages] == [m.uid for m in cyrus.messages]
    assert [m.uid for m in cyrus.messages] == [m.uid for m in courier.messages]


def test_internaldate_keeps_offset_instant(
    cyrus_server: CyrusServer, cyrus_account: ServerAccount
) -> None:
    plus2 = dt.datetime(2017, 7, 4, 4, 40, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    spec = MailSpec(_specs()[0].data, frozenset(), plus2, "tz")
    cyrus_server.load_messages(cyrus_account.user, "INBOX", [spec])
    (msg,) = cyrus_server.snapshot(cyrus_account.user).folders["INBOX"].messages
    assert msg.internaldate == int(utc(2017, 7, 4, 2, 40, 1).timestamp())


def test_restart_keeps_ports_users_and_mail(
    cyrus_factory: Callable[..., CyrusServer], courier_factory: Callable[..., CourierServer]
) -> None:
    for server in (cyrus_factory(), courier_factory()):
        user = server.new_user(HOSTILE_PASSWORD, "r")
        server.load_messages(user, "INBOX", _specs()[:2])
        before, ports = server.snapshot(user), server.port_plain
        server.stop()
        assert not server.running
        server.start()
        assert server.port_plain == ports
        assert server.snapshot(user) == before
