"""The Exchange-like front itself (``testkit/exchange_front.py``), driven with the stdlib
``imaplib`` against the front before the real source Dovecot: it forwards IMAP faithfully, and
each Exchange behaviour, once switched on, is what a client sees on the wire.
"""

from __future__ import annotations

import hashlib
import imaplib
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from testkit.dovecot import DovecotServer
from testkit.exchange_front import (
    BYE_TEXT,
    SUBSTITUTE_SUBJECT,
    THROTTLE_TEXT,
    TOO_LONG_TEXT,
    USER_LIMIT_TEXT,
    ExchangeFront,
)
from testkit.imap import ServerAccount, login
from testkit.maildir import LoadedMessage, MailSpec, load_messages
from testkit.mailgen import lorem, make_message, utc
from testkit.snapshot import snapshot_mailbox
from testkit.tlsca import TlsCa

NewAccount = Callable[..., ServerAccount]


def _load(server: DovecotServer, user: str, n: int = 3) -> list[LoadedMessage]:
    specs = [
        MailSpec(
            make_message(
                subject=f"front test {i}",
                date=utc(2019, 3, 1 + i, 12),
                message_id=f"<front-{i}@exchange.example>",
                body=lorem(i, 60) + "\n",
            ),
            frozenset({"\\Seen"}),
            utc(2019, 3, 1 + i, 12),
            f"m{i}",
        )
        for i in range(n)
    ]
    return load_messages(server, user, "INBOX", specs)


def _connect(front: ExchangeFront, tls_ca: TlsCa) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(
        front.host, front.port, ssl_context=tls_ca.client_context(), timeout=10
    )


@contextmanager
def _session(
    front: ExchangeFront, tls_ca: TlsCa, account: ServerAccount
) -> Iterator[imaplib.IMAP4]:
    conn = _connect(front, tls_ca)
    try:
        login(conn, account.user, account.password)
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK", data
        yield conn
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            conn.shutdown()


def _bodies(conn: imaplib.IMAP4, uids: str = "1:*") -> dict[int, bytes]:
    typ, data = conn.uid("FETCH", uids, "(UID BODY.PEEK[])")
    assert typ == "OK", data
    out = {}
    for item in data:
        if isinstance(item, tuple):
            m = re.search(rb"UID (\d+)", item[0])
            assert m is not None, item
            out[int(m.group(1))] = item[1]
    return out


def _sizes(conn: imaplib.IMAP4) -> dict[int, int]:
    typ, data = conn.uid("FETCH", "1:*", "(UID RFC822.SIZE)")
    assert typ == "OK", data
    found = (re.search(rb"UID (\d+) RFC822\.SIZE (\d+)", d) for d in data if isinstance(d, bytes))
    return {int(m.group(1)): int(m.group(2)) for m in found if m}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed(conn: imaplib.IMAP4) -> bool:
    """The front hung up: the next read meets the end of the stream (or a reset)."""
    sock = conn.socket()
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


# -- a faithful proxy when nothing is switched on -------------------------------------------------


def test_the_front_forwards_imap_faithfully_over_its_own_tls(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
) -> None:
    loaded = _load(source_server, source_account.user)
    new = make_message(
        subject="appended through the front {5}", date=utc(2020, 1, 2), message_id="<ap@x>"
    )
    conn = _connect(exchange_front, tls_ca)
    try:
        assert "STARTTLS" not in conn.capabilities and "LITERAL+" in conn.capabilities
        # AUTHENTICATE PLAIN without an initial response (imaplib waits for "+"): the SASL
        # line goes through as such, with the hostile password.
        login(conn, source_account.user, source_account.password)
        assert exchange_front.peak_sessions[source_account.user] == 1
        typ, data = conn.append("INBOX", "(\\Flagged)", None, new)  # a synchronizing literal
        assert typ == "OK", data
        conn.select("INBOX", readonly=True)
        bodies = _bodies(conn)
        assert sorted(map(_sha, bodies.values())) == sorted(
            [m.sha256 for m in loaded] + [_sha(new)]
        )
        assert _sizes(conn) == {uid: len(body) for uid, body in bodies.items()}
    finally:
        conn.logout()
    snap = snapshot_mailbox(source_server, source_account.user)
    assert sorted(m.sha256 for m in snap.folders["INBOX"].messages) == sorted(
        [m.sha256 for m in loaded] + [_sha(new)]
    )
    assert exchange_front.command_names["APPEND"] == 1
    assert (exchange_front.throttled, exchange_front.byes, exchange_front.too_long) == (0, 0, 0)
    exchange_front.wait_for_sessions(source_account.user, 0)  # released at logout


def test_a_login_with_literals_is_forwarded_and_counted_per_user(
    exchange_front: ExchangeFront, tls_ca: TlsCa, new_source_account: NewAccount
) -> None:
    account = new_source_account("plain-pw")
    conn = _connect(exchange_front, tls_ca)
    try:
        conn.literal = account.password.encode()  # type: ignore[assignment]
        typ, data = conn._simple_command("LOGIN", account.user)  # LOGIN user {8}
        assert typ == "OK", data
        assert exchange_front.sessions[account.user] == 1
    finally:
        conn.logout()


# -- 1. throttling ---------------------------------------------------------------------------


def test_throttling_answers_no_with_the_suggested_backoff_then_lets_commands_through(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
) -> None:
    loaded = _load(source_server, source_account.user)
    exchange_front.throttle(after=1, times=2, backoff_ms=250, command="FETCH")
    with _session(exchange_front, tls_ca, source_account) as conn:
        results = [conn.uid("FETCH", "1:*", "(UID)") for _ in range(4)]
        assert [typ for typ, _ in results] == ["OK", "NO", "NO", "OK"]
        expected = THROTTLE_TEXT.format(ms=250).encode()
        assert results[1][1] == [expected] == results[2][1]
        assert len(_bodies(conn)) == len(loaded)
    assert exchange_front.throttled == 2


def test_throttling_can_drop_the_connection_as_exchange_online_does(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
) -> None:
    _load(source_server, source_account.user)
    exchange_front.throttle(after=1, times=1, backoff_ms=5000, then_close=True)  # after SELECT
    with _session(exchange_front, tls_ca, source_account) as conn:
        typ, data = conn.noop()
        assert (typ, data) == ("NO", [THROTTLE_TEXT.format(ms=5000).encode()])
        assert _closed(conn)
    assert exchange_front.throttled == 1


# -- 2. BYE under load ------------------------------------------------------------------------


def test_bye_after_n_commands_closes_the_session_without_forwarding_the_command(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
) -> None:
    _load(source_server, source_account.user)
    exchange_front.bye(after=2, command="FETCH")
    with _session(exchange_front, tls_ca, source_account) as conn:
        assert conn.uid("FETCH", "1:*", "(UID)")[0] == "OK"
        assert conn.uid("FETCH", "1:*", "(UID)")[0] == "OK"
        with pytest.raises(imaplib.IMAP4.abort, match=re.escape(BYE_TEXT)):
            conn.uid("FETCH", "1:*", "(UID)")
        assert _closed(conn)
    assert exchange_front.byes == 1
    assert exchange_front.command_names["FETCH"] == 3
    # A new session is served again (the rule fired its one time).
    with _session(exchange_front, tls_ca, source_account) as conn:
        assert conn.uid("FETCH", "1:*", "(UID)")[0] == "OK"


def test_bye_all_ends_every_logged_in_session_mid_session(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
) -> None:
    _load(source_server, source_account.user)
    with (
        _session(exchange_front, tls_ca, source_account) as one,
        _session(exchange_front, tls_ca, source_account) as two,
    ):
        exchange_front.bye_all()
        for conn in (one, two):
            with pytest.raises(imaplib.IMAP4.abort, match=re.escape(BYE_TEXT)):
                conn.noop()
    assert exchange_front.byes == 2


# -- 3. per-user connection limit ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["LOGIN", "AUTHENTICATE"])
def test_the_connection_over_the_per_user_limit_is_refused_and_others_are_not(
    exchange_front: ExchangeFront, tls_ca: TlsCa, new_source_account: NewAccount, how: str
) -> None:
    account = new_source_account("limit-pw")
    other = new_source_account("other-pw")
    exchange_front.limit_per_user(2)

    def log_in(conn: imaplib.IMAP4, who: ServerAccount) -> None:
        if how == "LOGIN":
            conn.login(who.user, who.password)
        else:
            login(conn, who.user, who.password)

    conns = [_connect(exchange_front, tls_ca) for _ in range(4)]
    try:
        log_in(conns[0], account)
        log_in(conns[1], account)
        with pytest.raises(imaplib.IMAP4.error, match=re.escape(USER_LIMIT_TEXT)):
            log_in(conns[2], account)
        log_in(conns[3], other)  # counted per login name
        assert conns[2].noop()[0] == "OK"  # still connected, not logged in
        conns[0].logout()
        exchange_front.wait_for_sessions(account.user, 1)
        log_in(conns[2], account)  # a place became free
        assert conns[2].select("INBOX", readonly=True)[0] == "OK"
    finally:
        for conn in conns[1:]:
            conn.logout()
    assert exchange_front.user_limit_refusals == 1
    assert exchange_front.peak_sessions[account.user] == 2
    exchange_front.wait_for_sessions(account.user, 0)


# -- 4. the command size limit ---------------------------------------------------------------


def test_a_command_longer_than_the_limit_is_refused_and_not_forwarded(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
) -> None:
    _load(source_server, source_account.user)
    exchange_front.max_command_size(10240)
    with _session(exchange_front, tls_ca, source_account) as conn:

        def fixed() -> int:  # "<next tag> UID FETCH <set> (UID)" without the set
            return len(conn.tagpre) + len(str(conn.tagnum)) + len(" UID FETCH  (UID)")

        def uid_set(length: int) -> str:
            text = ",".join(["1"] * (length // 2 + 1))
            return text[:length].rstrip(",").ljust(length, "1")

        at_limit = uid_set(10240 - fixed())
        typ, _data = conn.uid("FETCH", at_limit, "(UID)")
        assert typ == "OK"
        assert exchange_front.longest_command == 10240
        with pytest.raises(imaplib.IMAP4.error, match=re.escape(TOO_LONG_TEXT)):
            conn.uid("FETCH", uid_set(10241 - fixed()), "(UID)")
        assert exchange_front.longest_command == 10241
        # Not forwarded, nothing left half-sent: the session goes on.
        assert conn.noop()[0] == "OK"
        assert len(_bodies(conn)) == 3
    assert exchange_front.too_long == 1


def test_literal_payloads_do_not_count_but_a_long_line_before_a_literal_does(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
) -> None:
    exchange_front.max_command_size(1024)
    big = make_message(
        subject="big", date=utc(2020, 1, 1), message_id="<big@x>", body=lorem(1, 4000) + "\n"
    )
    assert len(big) > 10 * 1024
    with _session(exchange_front, tls_ca, source_account) as conn:
        assert conn.append("INBOX", None, None, big)[0] == "OK"
        long_name = '"' + "x" * 1100 + '"'
        # Refused before the payload: no "+", so imaplib never sends the literal.
        with pytest.raises(imaplib.IMAP4.error, match=re.escape(TOO_LONG_TEXT)):
            conn.append(long_name, None, None, big)
        assert conn.noop()[0] == "OK"
    snap = snapshot_mailbox(source_server, source_account.user)
    assert [m.sha256 for m in snap.folders["INBOX"].messages] == [_sha(big)]
    assert exchange_front.too_long == 1


def test_a_too_long_command_with_a_non_synchronizing_literal_is_drained(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_account: ServerAccount,
) -> None:
    exchange_front.max_command_size(100)
    ctx = tls_ca.client_context()
    with (
        socket.create_connection((exchange_front.host, exchange_front.port), 10) as raw,
        ctx.wrap_socket(raw, server_hostname=exchange_front.host) as sock,
    ):
        f = sock.makefile("rb")
        assert f.readline().startswith(b"* OK")
        payload = b"y" * 50
        sock.sendall(b"a1 NOOP " + b"x" * 200 + b" {50+}\r\n" + payload + b" tail\r\na2 NOOP\r\n")
        assert f.readline() == f"a1 BAD {TOO_LONG_TEXT}\r\n".encode()
        assert f.readline().startswith(b"a2 OK")
        sock.sendall(b"a3 LOGOUT\r\n")
        assert f.readline().startswith(b"* BYE")
    assert exchange_front.too_long == 1


# -- 5. estimated sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(("percent", "fixed"), [(-10.0, 0), (5.0, 0), (0.0, -100), (0.0, 37)])
def test_rfc822_size_is_reported_off_by_the_chosen_amount(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
    percent: float,
    fixed: int,
) -> None:
    loaded = _load(source_server, source_account.user)
    exchange_front.size_delta(percent=percent, fixed=fixed)
    with _session(exchange_front, tls_ca, source_account) as conn:
        sizes = _sizes(conn)
        bodies = _bodies(conn)  # the bytes themselves are untouched
    real = {m.size for m in loaded}
    assert sorted(len(b) for b in bodies.values()) == sorted(real)
    assert {sha for sha in map(_sha, bodies.values())} == {m.sha256 for m in loaded}
    assert sorted(sizes.values()) == sorted(
        max(0, round(s * (1 + percent / 100)) + fixed) for s in real
    )
    assert sorted(sizes.values()) != sorted(real)
    assert exchange_front.sizes_rewritten == len(loaded)


# -- 6. the substitute message --------------------------------------------------------------------


@pytest.mark.parametrize("by", ["uid", "message-id"])
def test_a_chosen_message_comes_back_as_exchanges_substitute_with_fetch_ok(
    exchange_front: ExchangeFront,
    tls_ca: TlsCa,
    source_server: DovecotServer,
    source_account: ServerAccount,
    by: str,
) -> None:
    loaded = _load(source_server, source_account.user)
    if by == "uid":
        exchange_front.substitute(uids=[2])
    else:
        exchange_front.substitute(message_ids=["<front-1@exchange"])
    with _session(exchange_front, tls_ca, source_account) as conn:
        bodies = _bodies(conn, "1:3")  # FETCH answers OK (checked there)
    assert {uid: _sha(b) for uid, b in bodies.items() if uid != 2} == {
        1: loaded[0].sha256,
        3: loaded[2].sha256,
    }
    substitute = bodies[2]
    head = substitute.split(b"\r\n\r\n", 1)[0]
    assert f"Subject: {SUBSTITUTE_SUBJECT}: 2".encode() in head.split(b"\r\n")
    assert b'Subject: "front test 1"' in substitute  # names the original
    assert b"<front-1@exchange.example>" not in substitute
    assert exchange_front.substituted == [2]
