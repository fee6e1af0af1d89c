"""End to end through the daemon: migrations whose CSV rows carry no source password.

The daemon runs as a child process (``e2ehelp``) against a private Dovecot source with master
users and an ``oauth2`` passdb that checks tokens at a local identity platform
(``testkit.identity``, msal's authority); the destination is the session's Dovecot. Each test
checks the copy message by message (``archive_problems``), the result, and every file the
daemon wrote (spool, ``done/``, state, logs, outbox) for every form of every secret: the
admin's password, the client secret, each token issued and their SASL strings.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.dovecot import DovecotServer
from testkit.dovecot_conf import ServerKind
from testkit.identity import IdentityPlatform
from testkit.imap import ServerAccount
from testkit.master import missing_dovecot
from testkit.proxy import FaultProxy
from testkit.snapshot import snapshot_mailbox
from testkit.tlsca import TlsCa
from tests.e2ehelp import (
    LogMark,
    Row,
    Work,
    archive_problems_of,
    drop_csv,
    files_containing,
    load_mailbox,
    mailbox_specs,
    request_csv,
    results,
    run_cli,
    wait_until,
)

pytestmark = [pytest.mark.servers, pytest.mark.slow]
ADMIN_PW = 'adm1n "master" \\ pässword'
CLIENT_SECRET = "Qx8~e2e.client_secret-VALUE"
NewAccount = Callable[..., ServerAccount]


@pytest.fixture(scope="module")
def identity(tls_ca: TlsCa) -> Iterator[IdentityPlatform]:
    with IdentityPlatform(tls_ca) as platform:
        yield platform


@pytest.fixture(scope="module")
def auth_source(tls_ca: TlsCa, identity: IdentityPlatform) -> Iterator[DovecotServer]:
    """An Exchange-like source with master users and tokens checked at ``identity``."""
    reason = missing_dovecot()
    if reason is not None:
        pytest.skip(reason)
    server = DovecotServer(
        ServerKind.SOURCE,
        tls_ca,
        master_users=True,
        oauth2_introspection_url=identity.introspection_url,
    )
    try:
        server.start()
        server.add_master_user("master", ADMIN_PW)
        yield server
    finally:
        server.remove()


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """The operator's secret files, outside the daemon's directory (which is searched)."""
    path = tmp_path / "etc"
    path.mkdir()
    (path / "admin").write_text(ADMIN_PW + "\n")
    (path / "client-secret").write_text(CLIENT_SECRET + "\n")
    return path


@pytest.fixture
def auth_work(tmp_path: Path, auth_source: DovecotServer, dest_server: DovecotServer) -> Work:
    root = tmp_path / "work"
    root.mkdir()
    return Work(root, auth_source, dest_server)


def source_accounts(server: DovecotServer, tag: str, n: int, folders: dict[str, int]) -> list:
    """``n`` source users with mail; their own passwords are never given to the daemon."""
    out = []
    for i in range(n):
        password = f"own-pw-{tag}-{i}-{time.monotonic_ns()}"
        account = ServerAccount(server, server.new_user(password, f"{tag}u"), password)
        load_mailbox(server, account.user, mailbox_specs(f"{tag}{i}", folders, seed=i * 50))
        out.append(account)
    time.sleep(1.1)  # Dovecot re-reads a passwd-file at most once a second
    return out


def sasl_forms(user: str, token: str, host: str, port: int) -> list[str]:
    """The base64 SASL strings a token travels in (computed here, not by the daemon)."""
    xoauth2 = f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    bearer = f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()
    return [base64.b64encode(raw).decode() for raw in (xoauth2, bearer, token.encode())]


def no_secret_written(work: Work, secrets: list[str]) -> None:
    found = files_containing(work.root, secrets)
    assert found == {}, found
    assert list(work.root.rglob("*")), "nothing written?"


@pytest.mark.parametrize(
    "keys",
    [{"login_format": "{user}*{admin}"}, {"sasl_authzid": True}],
    ids=["master-login-format", "sasl-plain-authzid"],
)
def test_master_user_migrates_mailboxes_without_their_passwords(
    auth_work: Work,
    auth_source: DovecotServer,
    new_dest_account: NewAccount,
    etc: Path,
    keys: dict[str, object],
) -> None:
    sources = source_accounts(auth_source, "m", 2, {"INBOX": 6, "Sent Items": 3, "INBOX/Sub": 2})
    dests = [new_dest_account() for _ in sources]
    before = {s.user: snapshot_mailbox(auth_source, s.user) for s in sources}
    rows = [Row(s, d, "Imported", source_password="") for s, d in zip(sources, dests, strict=True)]
    admin = {"auth": "admin", "admin_user": "master", "admin_password_file": etc / "admin"}
    auth_work.configure(hosts={auth_source.host: {**admin, **keys}})
    mark = LogMark(auth_source)
    drop_csv(auth_work.spool / "incoming", "admin.csv", request_csv(rows))
    with auth_work.daemon("run", once=True) as daemon:
        code = daemon.wait(90)
    assert code == 0, daemon.describe()
    found = results(auth_work.spool)
    assert sorted(r["status"] for r in found.values()) == ["succeeded", "succeeded"], found
    pairs = [(s, d, "Imported") for s, d in zip(sources, dests, strict=True)]
    assert archive_problems_of(pairs) == []
    for s in sources:
        assert snapshot_mailbox(auth_source, s.user) == before[s.user]
        assert mark.logins(s.user), f"{s.user} was never logged in to"
    plain = [
        base64.b64encode(f"{who}\0master\0{ADMIN_PW}".encode()).decode()
        for who in ("", *(s.user for s in sources))
    ]
    no_secret_written(auth_work, [ADMIN_PW, *plain, *(d.password for d in dests)])


def test_oauth2_tokens_with_one_expiring_during_a_long_copy(
    auth_work: Work,
    auth_source: DovecotServer,
    identity: IdentityPlatform,
    new_dest_account: NewAccount,
    fault_proxy: Callable[[str, int], FaultProxy],
    etc: Path,
    tls_ca: TlsCa,
) -> None:
    """The token lives 4 s. The copy is held up (the source stalled) until the first token has
    expired at the authority, then every source connection is cut: the daemon reconnects, and
    only a renewed token can log in again. Nothing is lost or duplicated."""
    (src,) = source_accounts(auth_source, "o", 1, {"INBOX": 60, "Sent Items": 30, "INBOX/Sub": 20})
    dst = new_dest_account()
    before = snapshot_mailbox(auth_source, src.user)
    client_id = f"e2e-{time.monotonic_ns()}"
    identity.add_app(client_id, secret=CLIENT_SECRET)
    proxy = fault_proxy(auth_source.host, auth_source.port_tls)
    oauth = {
        "auth": "oauth2",
        "tenant": "contoso",
        "client_id": client_id,
        "client_secret_file": etc / "client-secret",
        "authority": identity.authority,
        "authority_ca_file": tls_ca.ca_file,
    }
    auth_work.configure(
        hosts={auth_source.host: oauth}, imap={"fetch_batch": 5, "folder_workers": 2}
    )
    issued_before = len(identity.issued)
    identity.token_lifetime = 4.0
    try:
        row = Row(src, dst, "Cloud", source_password="", source_port=proxy.port)
        # Every source connection stops forwarding after 16 KiB from the server (TLS: the proxy
        # sees no commands; the login, listing and counting take a few KiB, the 110 messages
        # more): the copy cannot end before the token has expired (the pipelined copier moves
        # these small messages in well under a second).
        proxy.stall_after_server_bytes(16_384, once=False)
        drop_csv(auth_work.spool / "incoming", "oauth.csv", request_csv([row]))
        with auth_work.daemon("run", once=True) as daemon:
            wait_until(lambda: proxy.faults_fired or None, 30, "the source stalled", daemon)
            first = identity.issued[issued_before]
            wait_until(lambda: not identity.token_active(first) or None, 10, "token expiry")
            assert not any(e.get("event") == "request_finished" for e in daemon.events())
            proxy.clear_faults()
            proxy.drop_all()
            proxy.resume()
            code = daemon.wait(120)
    finally:
        identity.token_lifetime = 3599.0
    assert code == 0, daemon.describe()
    (result,) = results(auth_work.spool).values()
    assert result["status"] == "succeeded", result
    assert any(e.get("event") == "request_retry" for e in daemon.events())  # it reconnected
    tokens = identity.issued[issued_before:]
    assert len(tokens) >= 2  # renewed
    assert archive_problems_of([(src, dst, "Cloud")]) == []
    assert snapshot_mailbox(auth_source, src.user) == before
    secrets = [CLIENT_SECRET, dst.password, src.password]
    for token in tokens:
        secrets += [token, *sasl_forms(src.user, token, auth_source.host, proxy.port)]
    no_secret_written(auth_work, secrets)


def test_refusals_give_one_line_errors_that_name_the_fix_and_are_not_retried(
    auth_work: Work,
    auth_source: DovecotServer,
    identity: IdentityPlatform,
    new_dest_account: NewAccount,
    etc: Path,
    tls_ca: TlsCa,
) -> None:
    """Three names of the same source, each configured to fail another way: a wrong client
    secret (AADSTS7000215), an application without access to mailboxes (a valid token the
    IMAP server refuses), an administrator who may not impersonate (a plain user)."""
    sources = source_accounts(auth_source, "e", 3, {"INBOX": 2})
    dests = [new_dest_account() for _ in sources]
    wrong_secret = f"e2e-wrong-{time.monotonic_ns()}"
    identity.add_app(wrong_secret, secret="another secret")
    no_access = f"e2e-noaccess-{time.monotonic_ns()}"
    identity.add_app(no_access, secret=CLIENT_SECRET, imap_granted=False)
    oauth = {
        "auth": "oauth2",
        "tenant": "contoso",
        "client_secret_file": etc / "client-secret",
        "authority": identity.authority,
        "authority_ca_file": tls_ca.ca_file,
    }
    (etc / "not-master").write_text(sources[0].password + "\n")
    not_master = {
        "auth": "admin",
        "admin_user": sources[0].user,  # the right password, but not a master user
        "admin_password_file": etc / "not-master",
        "sasl_authzid": True,
    }
    auth_work.configure(
        hosts={
            "127.0.0.1": {**oauth, "client_id": wrong_secret},
            "localhost": {**oauth, "client_id": no_access},
            "127.0.0.2": not_master,
        }
    )
    names = ["127.0.0.1", "localhost", "127.0.0.2"]
    rows = [
        Row(s, d, "Err", source_password="", source_host=name)
        for s, d, name in zip(sources, dests, names, strict=True)
    ]
    mark = LogMark(auth_source)
    drop_csv(auth_work.spool / "incoming", "errors.csv", request_csv(rows))
    with auth_work.daemon("run", once=True) as daemon:
        code = daemon.wait(90)
    assert code != 0
    errors = {r["source"]["server"]: r for r in results(auth_work.spool).values()}
    assert {name: errors[name]["status"] for name in names} == dict.fromkeys(names, "failed")
    texts = {name: errors[name]["error"] for name in names}
    assert all("\n" not in text for text in texts.values()), texts
    assert "AADSTS7000215" in texts["127.0.0.1"] and "client_secret_file" in texts["127.0.0.1"]
    assert "IMAP.AccessAsApp" in texts["localhost"]
    assert "Add-MailboxPermission" in texts["localhost"]
    assert f"New-ServicePrincipal -AppId {no_access}" in texts["localhost"]
    assert f"administrator '{sources[0].user}' acting as '{sources[2].user}'" in texts["127.0.0.2"]
    # Never retried: one token request per application, one refused login per mailbox.
    assert identity.token_requests[wrong_secret] == 1
    assert identity.token_requests[no_access] == 1
    assert not any(e.get("event") == "request_retry" for e in daemon.events())
    mark.settled()
    assert mark.failed_logins(sources[1].user) == 1
    # Dovecot names the authentication identity of a refused SASL PLAIN with authzid.
    assert mark.failed_logins(sources[0].user) == 1, mark.text()
    tokens = identity.issued[-1:]
    no_secret_written(
        auth_work, [CLIENT_SECRET, sources[0].password, *tokens, *(d.password for d in dests)]
    )


def test_check_shows_and_check_connect_proves_each_sides_authentication(
    auth_work: Work,
    auth_source: DovecotServer,
    identity: IdentityPlatform,
    new_dest_account: NewAccount,
    etc: Path,
    tls_ca: TlsCa,
) -> None:
    """Two names of the source: one read with an OAuth token, one as a master user; the
    destination with the row's password. ``check`` says so per row, ``--connect`` logs in."""
    sources = source_accounts(auth_source, "c", 2, {"INBOX": 1})
    dests = [new_dest_account() for _ in sources]
    client_id = f"e2e-check-{time.monotonic_ns()}"
    identity.add_app(client_id, secret=CLIENT_SECRET)
    auth_work.configure(
        hosts={
            "127.0.0.1": {
                "auth": "oauth2",
                "tenant": "contoso",
                "client_id": client_id,
                "client_secret_file": etc / "client-secret",
                "authority": identity.authority,
                "authority_ca_file": tls_ca.ca_file,
            },
            "localhost": {
                "auth": "admin",
                "admin_user": "master",
                "admin_password_file": etc / "admin",
                "login_format": "{user}*{admin}",
            },
        }
    )
    rows = [
        Row(s, d, "Chk", source_password="", source_host=name)
        for s, d, name in zip(sources, dests, ("127.0.0.1", "localhost"), strict=True)
    ]
    csv_path = auth_work.root / "check.csv"
    csv_path.write_bytes(request_csv(rows))
    offline = run_cli("check", "--config", str(auth_work.config), str(csv_path))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    flat = " ".join(offline.stdout.split())  # the details are wrapped at 80 columns
    assert f"OAuth 2.0 token (auth oauth2) of application {client_id}" in flat
    assert f"(login {sources[1].user}*master), impersonated (auth admin)" in flat
    assert flat.count("password ********") == 2  # the destinations
    online = run_cli("check", "--connect", "--config", str(auth_work.config), str(csv_path))
    assert online.returncode == 0, online.stdout + online.stderr
    assert f"with an OAuth 2.0 token of application {client_id}: OK" in online.stdout
    assert "as administrator master (login " in online.stdout
    assert "4 login(s): 4 OK, 0 FAILED" in online.stdout
    for text in (offline.stdout, offline.stderr, online.stdout, online.stderr):
        assert CLIENT_SECRET not in text and ADMIN_PW not in text
        assert not any(token in text for token in identity.issued)
