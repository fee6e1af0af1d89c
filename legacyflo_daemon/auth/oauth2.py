"""Access tokens of the Microsoft identity platform for IMAP: OAuth 2.0 client credentials.

Owns: ``TokenProvider`` (one per application: authority, tenant, client and credential; shared
by every connection through ``provider_for``), the renewal rule, the reading of the client
secret or certificate files, and the translation of the identity platform's errors (AADSTS
codes) into one-line errors that name the fix.
Must not: log; block the event loop (``msal`` and ``requests`` are blocking: every call into
them runs in a worker thread, ``asyncio.to_thread``); let a secret or a token reach a message.

Rules:
- A token is used until ``margin`` seconds before it expires (300 s, or a third of its
  lifetime for short-lived tokens), then a new one is obtained; connections that are already
  logged in keep their session (IMAP checks a token at login only), a reconnect logs in with
  the new token. ``msal``'s cache is emptied before each request, so that a renewal (or the
  replacement of a token a server refused) always gets a new token, never the old one.
- Every token, the client secret and the certificate's private key are registered with
  ``runtime.secrets`` the moment they are read or obtained (the last ``KEEP_TOKENS`` tokens stay
  registered: a session logged in with an older one stopped using it at its login).
- The identity platform's refusals (wrong tenant, client, secret or certificate, no consent)
  are ``AuthenticationFailed``: never retried. A network problem reaching it is
  ``TransientError``; an authority whose certificate fails verification ``PermanentError``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legacyflo_daemon.config.schema import HostConfig
from legacyflo_daemon.errors import AuthenticationFailed, PermanentError, TransientError
from legacyflo_daemon.model import Secret
from legacyflo_daemon.runtime.secrets import forget_secret, forget_secrets, register_secret

OWNER = "auth.oauth2"
# Tokens kept registered for scrubbing, the current one included: the one before it may still be
# in flight in a login. Each registered token costs ~7 ms of regex compilation at every change
# of the registry (runtime.secrets), so the list stays short.
KEEP_TOKENS = 2
MAX_MARGIN = 300.0  # seconds before expiry when a token is renewed
HTTP_TIMEOUT = 30.0  # seconds for one request to the identity platform
_AADSTS = re.compile(r"AADSTS(\d+)")


@dataclass(frozen=True, slots=True)
class Application:
    """What identifies one application at one authority: the key of the shared providers."""

    authority: str  # e.g. https://login.microsoftonline.com, without the tenant
    tenant: str
    client_id: str
    scope: str
    client_secret_file: Path | None
    client_certificate_file: Path | None
    client_certificate_thumbprint: str | None
    authority_ca_file: Path | None

    @classmethod
    def of(cls, host: HostConfig) -> Application:
        """The application of a host with ``auth = "oauth2"`` (the loader checked its keys)."""
        if host.tenant is None or host.client_id is None:
            raise ValueError('auth = "oauth2" needs tenant and client_id')
        return cls(
            authority=host.authority.rstrip("/"),
            tenant=host.tenant,
            client_id=host.client_id,
            scope=host.scope,
            client_secret_file=host.client_secret_file,
            client_certificate_file=host.client_certificate_file,
            client_certificate_thumbprint=host.client_certificate_thumbprint,
            authority_ca_file=host.authority_ca_file,
        )

    @property
    def authority_url(self) -> str:
        return f"{self.authority}/{self.tenant}"

    def describe(self) -> str:
        """How ``check`` names it: ``client 1111… at https://…/tenant``, nothing secret."""
        how = "certificate" if self.client_certificate_file is not None else "client secret"
        return f"application {self.client_id} of tenant {self.tenant} ({how}, {self.authority})"


def _margin(lifetime: float) -> float:
    return min(MAX_MARGIN, max(lifetime, 0.0) / 3)


class TokenProvider:
    """Tokens for one ``Application``; use ``provider_for`` to share one per application.

    ``token()`` is safe to await from any number of tasks (and event loops): the current
    token is one tuple, replaced whole (read without a lock, so the event loop never waits for
    a worker thread); at most one worker thread asks the identity platform at a time, under a
    thread lock, and the others then find its fresh token.
    """

    def __init__(self, app: Application) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._client: Any = None  # msal.ConfidentialClientApplication, made at first use
        self._current: tuple[str, float] | None = None  # the token, time.time() to renew it
        self._issued: deque[str] = deque()
        self._secrets: list[str] = []  # the client secret or key material registered
        self.fetched = 0  # tokens obtained from the identity platform (for tests, metrics)

    async def token(self, server: str) -> Secret:
        """A valid access token, renewed when due. Errors (see module docstring) name
        ``server``, the IMAP host the token is for."""
        current = self._current
        if current is not None and time.time() < current[1]:
            return Secret(current[0])
        return Secret(await asyncio.to_thread(self._fetch, server))

    def close(self) -> None:
        """Forget every token and secret this provider registered (after ``discard_all``)."""
        with self._lock:
            forget_secrets((*self._issued, *self._secrets), owner=OWNER)
            self._issued.clear()
            self._secrets.clear()
            self._current, self._client = None, None

    def invalidate(self, token: Secret) -> None:
        """Forget ``token`` as the current one (the server refused it): the next ``token()``
        asks the identity platform again."""
        current = self._current
        if current is not None and current[0] == token.reveal():
            self._current = None

    # -- in a worker thread ----------------------------------------------------------------------

    def _fetch(self, server: str) -> str:
        # Here, in the worker thread, not at the top: see msal_client's docstring.
        from legacyflo_daemon.auth import msal_client

        with self._lock:
            current = self._current
            if current is not None and time.time() < current[1]:
                return current[0]  # another thread renewed it meanwhile
            started = time.time()
            try:
                if self._client is None:
                    self._client = msal_client.make_client(self.app, server, self._secrets)
                # Our own rule decides that a new token is due (or that the server refused the
                # current one): msal's cache must not hand the old one back.
                msal_client.clear_cache(self._client)
                result = self._client.acquire_token_for_client(scopes=[self.app.scope])
            except msal_client.SSLError:
                raise PermanentError(
                    f"identity platform {self.app.authority}: certificate verify failed (give "
                    "its CA in authority_ca_file)",
                    host=server,
                ) from None
            except msal_client.RequestException as exc:
                raise TransientError(
                    f"identity platform {self.app.authority} unreachable ({type(exc).__name__})",
                    host=server,
                ) from None
            except ValueError as exc:  # msal: the authority's discovery document was refused
                raise _discovery_error(str(exc), self.app, server) from None
            if not isinstance(result, dict) or "access_token" not in result:
                raise token_error(result if isinstance(result, dict) else {}, self.app, server)
            token = str(result["access_token"])
            register_secret(token, owner=OWNER)
            self._issued.append(token)
            while len(self._issued) > KEEP_TOKENS:
                forget_secret(self._issued.popleft(), owner=OWNER)
            lifetime = float(result.get("expires_in", 3600))
            self._current = (token, started + lifetime - _margin(lifetime))
            self.fetched += 1
            return token


# AADSTS code -> (what is wrong, what to do). The codes of the Microsoft identity platform's
# error reference; each message names the key or the portal page to fix.
_FIXES: dict[int, str] = {
    90002: "tenant {tenant!r} not found: set tenant to the directory (tenant) ID or primary "
    "domain shown in Entra ID > Overview",
    900023: "tenant {tenant!r} is not a valid tenant ID or domain: set tenant to the directory "
    "(tenant) ID shown in Entra ID > Overview",
    700016: "application {client} not found in tenant {tenant!r}: check client_id (the "
    "Application (client) ID of the app registration) and tenant",
    7000215: "invalid client secret for application {client}: put the secret's Value (not its "
    "Secret ID) from Entra ID > App registrations > Certificates & secrets into "
    "client_secret_file",
    7000222: "the client secret of application {client} has expired: create a new one in "
    "Entra ID > App registrations > Certificates & secrets and put its Value into "
    "client_secret_file",
    700027: "the certificate of application {client} is not accepted: upload it to Entra ID > "
    "App registrations > Certificates & secrets (client_certificate_file, thumbprint "
    "{thumbprint})",
    65001: "application {client} has no admin consent in tenant {tenant!r}: an administrator "
    "must grant it (Entra ID > App registrations > API permissions > Office 365 Exchange "
    "Online IMAP.AccessAsApp > Grant admin consent)",
    7000229: "application {client} has no service principal in tenant {tenant!r}: an "
    "administrator must grant admin consent for IMAP.AccessAsApp (Entra ID > App "
    "registrations > API permissions > Grant admin consent)",
    500011: "the resource of scope {scope!r} is not in tenant {tenant!r}: check scope (Exchange "
    "Online: https://outlook.office365.com/.default) and that the tenant has Exchange Online",
    1002012: "scope {scope!r} is not valid for client credentials: it must end in /.default "
    "(Exchange Online: https://outlook.office365.com/.default)",
    70011: "scope {scope!r} is not valid: Exchange Online's is "
    "https://outlook.office365.com/.default",
}


def _aadsts(text: str) -> int | None:
    match = _AADSTS.search(text)
    return int(match.group(1)) if match else None


def _message(code: int | None, error: str, app: Application) -> str:
    thumbprint = app.client_certificate_thumbprint or "computed from the file"
    where = f"token from {app.authority_url} for application {app.client_id}"
    if code in _FIXES:
        fix = _FIXES[code].format(
            tenant=app.tenant, client=app.client_id, scope=app.scope, thumbprint=thumbprint
        )
        return f"{where}: AADSTS{code}: {fix}"
    said = f"AADSTS{code}" if code is not None else (error or "no token in the answer")
    return f"{where}: refused ({said}); check tenant, client_id and the client's credential"


def token_error(result: dict[str, Any], app: Application, server: str) -> AuthenticationFailed:
    """The one-line error for msal's answer without a token (``error``, ``error_description``,
    ``error_codes``). Only the code and our own words reach the message: the description may
    quote what was sent."""
    codes = result.get("error_codes") or []
    code = int(codes[0]) if codes else _aadsts(str(result.get("error_description", "")))
    error = str(result.get("error", ""))
    if not re.fullmatch(r"[a-z_]{1,40}", error):
        error = ""
    return AuthenticationFailed(_message(code, error, app), host=server)


def _discovery_error(text: str, app: Application, server: str) -> AuthenticationFailed:
    code = _aadsts(text)
    if code is None:
        code = 90002 if "HTTP status: 400" in text or "tenant" in text.lower() else None
    return AuthenticationFailed(_message(code, "discovery refused", app), host=server)


_PROVIDERS: dict[Application, TokenProvider] = {}
_PROVIDERS_LOCK = threading.Lock()


def provider_for(host: HostConfig) -> TokenProvider:
    """The one ``TokenProvider`` of the application ``host`` (``auth = "oauth2"``) names,
    shared by every connection and request of this process."""
    app = Application.of(host)
    with _PROVIDERS_LOCK:
        provider = _PROVIDERS.get(app)
        if provider is None:
            provider = _PROVIDERS[app] = TokenProvider(app)
        return provider


def discard_all() -> None:
    """Drop every provider and forget what they registered for scrubbing: for a process that
    reloads its configuration, and for tests (each makes its own applications)."""
    with _PROVIDERS_LOCK:
        providers = list(_PROVIDERS.values())
        _PROVIDERS.clear()
    for provider in providers:
        provider.close()
