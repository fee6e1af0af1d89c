"""The blocking side of OAuth 2.0: msal's client, its HTTP session, the credential files.

Imported only in the worker thread that first asks for a token (``oauth2.TokenProvider``):
``msal``, ``requests`` and ``cryptography`` cost ~85 ms of start-up that every CLI command and
every daemon without ``auth = "oauth2"`` would otherwise pay.
Must not: be imported at module level by anything that runs on the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from legacyflo_daemon.auth.oauth2 import HTTP_TIMEOUT, OWNER, Application
from legacyflo_daemon.errors import PermanentError
from legacyflo_daemon.runtime.secrets import register_secret, register_secrets

SSLError = requests.exceptions.SSLError
RequestException = requests.exceptions.RequestException


def clear_cache(client: Any) -> None:
    """Empty ``client``'s access-token cache (see ``oauth2``: a renewal must get a new token)."""
    cache = client.token_cache
    for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
        cache.remove_at(entry)


def make_client(app: Application, server: str, registered: list[str]) -> Any:
    """msal's client for ``app`` with its credential read from its file (each secret form
    appended to ``registered`` after registering it for scrubbing)."""
    credential: str | dict[str, str]
    if app.client_secret_file is not None:
        credential = _read(app.client_secret_file, "client_secret_file", server).strip()
        if not credential:
            raise PermanentError(
                f"client_secret_file {app.client_secret_file} is empty: put the client "
                "secret's value into it",
                host=server,
            )
        register_secret(credential, owner=OWNER)
        registered.append(credential)
    elif app.client_certificate_file is not None:
        credential = _certificate(app, server, registered)
    else:
        raise PermanentError("oauth2 needs client_secret_file or client_certificate_file")
    return msal.ConfidentialClientApplication(
        app.client_id,
        client_credential=credential,
        authority=app.authority_url,
        # Discovery only at the authority itself: never a call to another host (the
        # instance-discovery endpoint of login.microsoftonline.com) for a configured one.
        instance_discovery=False,
        http_client=_HttpClient(app.authority_ca_file),
        token_cache=msal.TokenCache(),
    )


class _HttpClient(requests.Session):
    """msal's HTTP client: every request verifies the authority with ``ca_file`` (else the
    system's CAs) and has a timeout.

    Why not msal's ``verify=`` (which sets ``Session.verify``): requests lets the environment's
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override a session's ``verify`` (only a
    per-request ``verify`` wins over them), so a configured ``authority_ca_file`` would be
    silently ignored wherever those are set. Proxies from the environment still apply.
    """

    def __init__(self, ca_file: Path | None) -> None:
        super().__init__()
        self._ca_file = str(ca_file) if ca_file is not None else None

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        if self._ca_file is not None:
            kwargs["verify"] = self._ca_file
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return super().request(method, url, *args, **kwargs)


def _read(path: Path, key: str, server: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PermanentError(f"{key} {path}: cannot read: {reason}", host=server) from None


def _certificate(app: Application, server: str, registered: list[str]) -> dict[str, str]:
    """msal's certificate credential from ``client_certificate_file``: the private key (PEM)
    and the SHA-1 thumbprint, given or computed from the certificate in the file."""
    path = app.client_certificate_file
    assert path is not None
    text = _read(path, "client_certificate_file", server)
    data = text.encode()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PermanentError(
            f"client_certificate_file {path}: no unencrypted private key in PEM form",
            host=server,
        ) from None
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key_forms = [key_pem, *_pem_lines(text), *_pem_lines(key_pem)]
    register_secrets(key_forms, owner=OWNER)
    registered.extend(key_forms)
    thumbprint = app.client_certificate_thumbprint
    if thumbprint is None:
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise PermanentError(
                f"client_certificate_file {path}: no certificate in it; add it, or give "
                "client_certificate_thumbprint",
                host=server,
            ) from None
        thumbprint = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - the x5t Entra uses
    return {"private_key": key_pem, "thumbprint": thumbprint.replace(":", "").upper()}


def _pem_lines(pem: str) -> list[str]:
    """The base64 lines of the private-key blocks of ``pem`` (scrubbed one by one)."""
    lines, inside = [], False
    for line in pem.splitlines():
        if line.startswith("-----BEGIN") and "PRIVATE KEY" in line:
            inside = True
        elif line.startswith("-----END"):
            inside = False
        elif inside and line.strip():
            lines.append(line.strip())
    return lines
