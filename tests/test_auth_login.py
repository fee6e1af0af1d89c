"""Logging in without the users' passwords, against real servers: OAuth 2.0 tokens from a local
identity platform (``testkit.identity``, msal pointed at it as its authority) checked by
Dovecot's ``oauth2`` passdb, and administrator impersonation with Dovecot master users
(``user*master`` and SASL PLAIN with an authorization identity).

Every error case is one line naming the fix, an ``AuthenticationFailed`` (never retried), and
holds no secret."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from legacyflo_daemon.auth import oauth2
from legacyflo_daemon.config.schema import Config, HostConfig
from legacyflo_daemon.errors import AuthenticationFailed, PermanentError, TransientError
from legacyflo_daemon.imap.endpoint import endpoint
from legacyflo_daemon.imap.session import connect
from legacyflo_daemon.imap.syntax import sasl
from legacyflo_daemon.model import Account, Secret
from legacyflo_daemon.runtime.secrets import scrub_text
from testkit.cyrus import CyrusServer
from testkit.dovecot import DovecotServer
from testkit.dovecot_conf import ServerKind
from testkit.identity import IdentityPlatform, make_client_certificate
from testkit.imap import ServerAccount
from testkit.master import missing_dovecot
from testkit.tlsca import TlsCa

pytestmark = pytest.mark.servers
SECRET = "c1ient~secret.V4lue_with=chars"
ADMIN_PW = 'm@ster "pw" \\ é'
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def identity(tls_ca: TlsCa) -> Iterator[IdentityPlatform]:
    with IdentityPlatform(tls_ca) as platform:
        yield platform


def _dovecot(tls_ca: TlsCa, **kwargs: object) -> Iterator[DovecotServer]:
    reason = missing_dovecot()
    if reason is not None:
        pytest.skip(reason)
    server = DovecotServer(ServerKind.SOURCE, tls_ca, **kwargs)  # type: ignore[arg-type]
    try:
        server.start()
        server.add_user("john", "johns-own-pw")
        server.add_user("mary", "marys-own-pw")
        server.add_master_user("master", ADMIN_PW) if kwargs.get("master_users") else None
        time.sleep(1.1)  # Dovecot re-reads a passwd-file at most once a second
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def auth_server(tls_ca: TlsCa, identity: IdentityPlatform) -> Iterator[DovecotServer]:
    """Master users, and tokens checked at ``identity`` (XOAUTH2 and OAUTHBEARER offered)."""
    yield from _dovecot(
        tls_ca, master_users=True, oauth2_introspection_url=identity.introspection_url
    )


@pytest.fixture(scope="module")
def xoauth2_server(tls_ca: TlsCa, identity: IdentityPlatform) -> Iterator[DovecotServer]:
    """Only XOAUTH2 offered, as Exchange Online does."""
    yield from _dovecot(
        tls_ca, oauth2_introspection_url=identity.introspection_url, oauth2_mechanisms="xoauth2"
    )


@pytest.fixture(autouse=True)
def fresh_providers() -> Iterator[None]:
    """Every test's tokens forgotten after it (each registered token makes the scrubbing
    pattern longer to compile)."""
    yield
    oauth2.discard_all()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "admin").write_text(ADMIN_PW + "\n")
    return tmp_path


def new_app(identity: IdentityPlatform, **kwargs: object) -> str:
    """A fresh app registration (a fresh client id: providers are shared per application)."""
    client_id = f"app-{next(_ids)}-{time.monotonic_ns()}"
    identity.add_app(client_id, **kwargs)  # type: ignore[arg-type]
    return client_id


def oauth_host(identity: IdentityPlatform, tls_ca: TlsCa, files: Path, **kw: object) -> HostConfig:
    values: dict[str, object] = {
        "tls": "implicit",
        "ca_file": tls_ca.ca_file,
        "auth": "oauth2",
        "tenant": "contoso",
        "client_secret_file": files / "secret",
        "authority": identity.authority,
        "authority_ca_file": tls_ca.ca_file,
        **kw,
    }
    return HostConfig(**values)  # type: ignore[arg-type]


def admin_host(tls_ca: TlsCa, files: Path, **kw: object) -> HostConfig:
    values: dict[str, object] = {
        "tls": "implicit",
        "ca_file": tls_ca.ca_file,
        "auth": "admin",
        "admin_user": "master",
        "admin_password_file": files / "admin",
        **kw,
    }
    return HostConfig(**values)  # type: ignore[arg-type]


async def login(server: DovecotServer, host: HostConfig, user: str = "john") -> list[str]:
    """Log in as ``user`` (no password of theirs), list the folders, log out."""
    account = Account(user, "contoso.com", Secret(""), server.host, server.port_tls)
    session = await connect(endpoint(account, server.port_tls, host, Config()))
    try:
        return [entry.name for entry in await session.list_folders()]
    finally:
        await session.logout()


async def refused(server: DovecotServer, host: HostConfig, kind: type[Exception]) -> str:
    with pytest.raises(kind) as info:
        await login(server, host)
    text = str(info.value)
    assert "\n" not in text
    for secret in (SECRET, ADMIN_PW, "johns-own-pw"):
        assert secret not in text
    return text


# -- OAuth 2.0 ---------------------------------------------------------------------------------


async def test_oauthbearer_when_offered_else_xoauth2(
    identity: IdentityPlatform,
    auth_server: DovecotServer,
    xoauth2_server: DovecotServer,
    tls_ca: TlsCa,
    files: Path,
) -> None:
    host = oauth_host(identity, tls_ca, files, client_id=new_app(identity, secret=SECRET))
    assert await login(auth_server, host) == ["INBOX"]
    assert await login(xoauth2_server, host) == ["INBOX"]
    assert auth_server.wait_for_log(lambda t: "user=<john>, method=OAUTHBEARER" in t)
    assert xoauth2_server.wait_for_log(lambda t: "user=<john>, method=XOAUTH2" in t)


async def test_one_token_shared_by_all_connections_until_renewal(
    identity: IdentityPlatform, auth_server: DovecotServer, tls_ca: TlsCa, files: Path
) -> None:
    client_id = new_app(identity, secret=SECRET)
    host = oauth_host(identity, tls_ca, files, client_id=client_id)
    provider = oauth2.provider_for(host)
    await asyncio.gather(*(login(auth_server, host, user) for user in ("john", "mary") * 3))
    assert provider.fetched == 1  # six logins (two mailboxes), one token
    assert oauth2.provider_for(host) is provider


async def test_an_expiring_token_is_renewed_and_the_next_login_uses_the_new_one(
    identity: IdentityPlatform, auth_server: DovecotServer, tls_ca: TlsCa, files: Path
) -> None:
    identity.token_lifetime = 3.0  # renewed 1 s before it ends
    try:
        host = oauth_host(identity, tls_ca, files, client_id=new_app(identity, secret=SECRET))
        provider = oauth2.provider_for(host)
        await login(auth_server, host)
        first = identity.issued[-1]
        await asyncio.sleep(2.2)
        await login(auth_server, host)
        second = identity.issued[-1]
        assert provider.fetched == 2 and second != first
        await asyncio.sleep(1.0)  # the first token has now expired at the authority
        assert not identity.token_active(first) and identity.token_active(second)
    finally:
        identity.token_lifetime = 3599.0


async def test_certificate_credential(
    identity: IdentityPlatform, auth_server: DovecotServer, tls_ca: TlsCa, files: Path
) -> None:
    cert = make_client_certificate(files)
    client_id = new_app(identity, certificate=cert.certificate)
    host = oauth_host(
        identity,
        tls_ca,
        files,
        client_id=client_id,
        client_secret_file=None,
        client_certificate_file=cert.pem,
    )
    assert await login(auth_server, host) == ["INBOX"]
    # A certificate Entra does not know: AADSTS700027, naming where to upload it.
    other = make_client_certificate(files, "other")
    host = oauth_host(
        identity,
        tls_ca,
        files,
        client_id=new_app(identity, certificate=cert.certificate),
        client_secret_file=None,
        client_certificate_file=other.pem,
    )
    text = await refused(auth_server, host, AuthenticationFailed)
    assert "AADSTS700027" in text and "Certificates & secrets" in text
    assert cert.key_pem.splitlines()[1] not in text


@pytest.mark.parametrize(
    ("change", "code", "fix"),
    [
        ({"tenant": "fabrikam"}, "AADSTS90002", "directory (tenant) ID"),
        ({"secret": "wrong"}, "AADSTS7000215", "put the secret's Value (not its Secret ID)"),
        ({"consent": False}, "AADSTS65001", "Grant admin consent"),
        ({"client_id": "unknown-app"}, "AADSTS700016", "check client_id"),
    ],
)
async def test_identity_platform_refusals_name_the_fix(
    identity: IdentityPlatform,
    auth_server: DovecotServer,
    tls_ca: TlsCa,
    files: Path,
    change: dict[str, object],
    code: str,
    fix: str,
) -> None:
    app_secret = str(change.get("secret", SECRET))
    client_id = new_app(identity, secret=app_secret, consent=change.get("consent", True))
    host = oauth_host(
        identity,
        tls_ca,
        files,
        client_id=change.get("client_id", client_id),
        tenant=change.get("tenant", "contoso"),
    )
    before = auth_server.log_text().count("Login:")
    text = await refused(auth_server, host, AuthenticationFailed)
    assert code in text and fix in text, text
    assert auth_server.log_text().count("Login:") == before


@pytest.mark.parametrize("server_fixture", ["auth_server", "xoauth2_server"])
async def test_a_valid_token_for_an_app_without_mailbox_access_names_what_to_grant(
    identity: IdentityPlatform,
    tls_ca: TlsCa,
    files: Path,
    server_fixture: str,
    request: pytest.FixtureRequest,
) -> None:
    """The server's error challenge (``+ <base64 JSON>``) is answered (empty line for XOAUTH2,
    ``AQ==`` for OAUTHBEARER): the refusal comes at once, not after a timeout."""
    server: DovecotServer = request.getfixturevalue(server_fixture)
    client_id = new_app(identity, secret=SECRET, imap_granted=False)
    host = oauth_host(identity, tls_ca, files, client_id=client_id)
    started = time.monotonic()
    text = await refused(server, host, AuthenticationFailed)
    assert time.monotonic() - started < 10
    assert "IMAP.AccessAsApp" in text and "Add-MailboxPermission -Identity john" in text
    assert f"New-ServicePrincipal -AppId {client_id}" in text
    # Decoded from the server's challenge (Dovecot's XOAUTH2 says 401, as Google and Microsoft).
    status = {"auth_server": "status invalid_token", "xoauth2_server": "status 401, schemes bearer"}
    assert status[server_fixture] in text
    # The refused token is not offered again: the next login asks for a new one.
    provider = oauth2.provider_for(host)
    first = identity.issued[-1]
    await refused(server, host, AuthenticationFailed)
    assert provider.fetched == 2 and identity.issued[-1] != first


async def test_an_unreachable_authority_is_transient(tls_ca: TlsCa, files: Path) -> None:
    host = HostConfig(
        auth="oauth2",
        tenant="contoso",
        client_id=f"nobody-{time.monotonic_ns()}",
        client_secret_file=files / "secret",
        authority="https://127.0.0.1:9",  # nothing listens on the discard port
    )
    with pytest.raises(
        TransientError, match=r"identity platform https://127\.0\.0\.1:9 unreachable"
    ):
        await oauth2.provider_for(host).token("imap.example")


async def test_an_untrusted_authority_certificate_is_permanent(
    identity: IdentityPlatform, files: Path
) -> None:
    host = HostConfig(
        auth="oauth2",
        tenant="contoso",
        client_id=new_app(identity, secret=SECRET),
        client_secret_file=files / "secret",
        authority=identity.authority,  # no authority_ca_file: the system's CAs refuse it
    )
    with pytest.raises(PermanentError, match=r"certificate verify failed.*authority_ca_file"):
        await oauth2.provider_for(host).token("imap.example")


async def test_the_token_request_never_blocks_the_event_loop(
    identity: IdentityPlatform, tls_ca: TlsCa, files: Path
) -> None:
    identity.token_delay = 0.8
    try:
        host = oauth_host(identity, tls_ca, files, client_id=new_app(identity, secret=SECRET))
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        await oauth2.provider_for(host).token("imap.example")
        assert time.monotonic() - started >= 0.8
        tick.cancel()
        assert len(gaps) > 20 and max(gaps) < 0.3
    finally:
        identity.token_delay = 0.0


async def test_tokens_and_the_client_secret_are_scrubbed_in_every_form(
    identity: IdentityPlatform, auth_server: DovecotServer, tls_ca: TlsCa, files: Path
) -> None:
    host = oauth_host(identity, tls_ca, files, client_id=new_app(identity, secret=SECRET))
    await login(auth_server, host)
    token = identity.issued[-1]
    for form in (
        token,
        SECRET,
        sasl.xoauth2("john", token),
        sasl.oauthbearer("john", token, auth_server.host, auth_server.port_tls),
        base64.b64encode(token.encode()).decode(),
        repr(token.encode()),
    ):
        scrubbed = scrub_text(f"before {form} after")
        assert token not in scrubbed and SECRET not in scrubbed
        assert scrubbed.startswith("before ") and "********" in scrubbed
        if form != token and form != SECRET:
            assert form not in scrubbed


# -- impersonation -------------------------------------------------------------------------------


async def test_master_user_with_login_format(
    auth_server: DovecotServer, tls_ca: TlsCa, files: Path
) -> None:
    host = admin_host(tls_ca, files, login_format="{user}*{admin}")
    assert await login(auth_server, host, "mary") == ["INBOX"]
    assert auth_server.wait_for_log(lambda t: "Login: user=<mary>, method=PLAIN" in t)


async def test_master_user_with_sasl_authzid(
    auth_server: DovecotServer, tls_ca: TlsCa, files: Path
) -> None:
    host = admin_host(tls_ca, files, sasl_authzid=True)
    assert await login(auth_server, host, "john") == ["INBOX"]
    # What a log could show of the SASL string: the identities' base64 (12 bytes "john\0master\0",
    # 16 characters), the password's part scrubbed.
    plain = sasl.plain("master", ADMIN_PW, "john")
    assert scrub_text(plain) == plain[:16] + "********"
    assert base64.b64decode(plain[:16]) == b"john\0master\0"


@pytest.mark.parametrize("how", [{"sasl_authzid": True}, {"login_format": "{user}*{admin}"}])
async def test_an_admin_that_may_not_impersonate_names_what_to_grant(
    auth_server: DovecotServer, tls_ca: TlsCa, files: Path, how: dict[str, object]
) -> None:
    # "mary" is a user, not a master user: her own password is right, the right is missing.
    (files / "mary").write_text("marys-own-pw\n")
    host = admin_host(tls_ca, files, admin_user="mary", admin_password_file=files / "mary", **how)
    text = await refused(auth_server, host, AuthenticationFailed)
    assert "administrator 'mary' acting as" in text and "marys-own-pw" not in text
    assert "Add-MailboxPermission" in text and "master = yes" in text


async def test_cyrus_admin_with_sasl_authzid(
    cyrus_server: CyrusServer, new_cyrus_account: Callable[..., ServerAccount], files: Path
) -> None:
    """Cyrus lets an account listed in ``admins`` act as any user (SASL PLAIN authzid)."""
    account = new_cyrus_account("marys-own-pw")
    (files / "cyrus-admin").write_text(cyrus_server.admin_password + "\n")
    host = HostConfig(
        tls="implicit",
        ca_file=cyrus_server.ca_file,
        auth="admin",
        admin_user=cyrus_server.admin_user,
        admin_password_file=files / "cyrus-admin",
        sasl_authzid=True,
    )
    acct = Account(account.user, "contoso.com", Secret(""), cyrus_server.host, None)
    session = await connect(endpoint(acct, cyrus_server.port_tls, host, Config()))
    try:
        names = [entry.name for entry in await session.list_folders()]
    finally:
        await session.logout()
    assert names == ["INBOX"]  # the user's own view, not the admin's (user.* of everyone)


async def test_oauth2_on_a_server_without_oauth_mechanisms_asks_for_no_token(
    identity: IdentityPlatform, source_server: DovecotServer, tls_ca: TlsCa, files: Path
) -> None:
    host = oauth_host(identity, tls_ca, files, client_id=new_app(identity, secret=SECRET))
    text = await refused(source_server, host, PermanentError)
    assert "neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER" in text
    assert oauth2.provider_for(host).fetched == 0
