"""A local stand-in for the Microsoft identity platform, over HTTPS, for the OAuth 2.0 tests.

Owns: ``IdentityPlatform``, a thread serving (with the test CA's certificate, ``tlsca``):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the discovery document msal reads
  (an unknown tenant: 400 with ``AADSTS90002``, as Entra answers);
- ``POST /{tenant}/oauth2/v2.0/token``: the client-credentials grant with a client secret or a
  certificate ``client_assertion`` (a JWT whose RS256/PS256 signature is verified with the
  registered certificate's public key, ``x5t`` = its SHA-1 thumbprint, ``aud`` = this
  endpoint); Entra's error bodies (``error``, ``error_description`` starting ``AADSTSnnnn:``,
  ``error_codes``) for an unknown client, a wrong secret or certificate, a missing consent;
  tokens live ``token_lifetime`` seconds;
- ``POST /introspect`` (RFC 7662, what Dovecot's ``oauth2`` passdb asks with
  ``introspection_mode = post``): ``active`` is true for a token it issued, not expired, of an
  application whose mailbox access was granted (``App.imap_granted``: Exchange's
  ``IMAP.AccessAsApp`` + ``Add-MailboxPermission``); ``username`` is always ``APP_USER`` (a
  client-credentials token is the application's, not a user's: see ``dovecot_conf``).

Every token issued is kept in ``issued`` (tests search written files for them); ``requests``
counts the calls per path, ``token_requests`` the token requests per client id.
Must not: be used outside tests.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from testkit.tlsca import TlsCa

APP_USER = "app"  # the introspection's username for every token (see module docstring)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class App:
    """One app registration: its credential (a secret, or a certificate's public key), whether
    an admin consented to its permissions and whether it may open mailboxes over IMAP."""

    client_id: str
    secret: str | None = None
    certificate: x509.Certificate | None = None
    consent: bool = True
    imap_granted: bool = True

    @property
    def thumbprint(self) -> bytes | None:
        return self.certificate.fingerprint(hashes.SHA1()) if self.certificate else None


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """An app's certificate: ``pem`` holds the private key and the certificate (what the
    daemon's ``client_certificate_file`` holds); ``thumbprint`` in hex."""

    pem: Path
    certificate: x509.Certificate
    thumbprint: str
    key_pem: str


def make_client_certificate(directory: Path, name: str = "app") -> ClientCertificate:
    """A self-signed RSA certificate for an app registration, written to ``<name>.pem``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"legacyflo test {name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    path = directory / f"{name}.pem"
    path.write_text(key_pem + cert.public_bytes(serialization.Encoding.PEM).decode())
    return ClientCertificate(path, cert, cert.fingerprint(hashes.SHA1()).hex(), key_pem)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class _Token:
    client_id: str
    expires: float


@dataclass
class IdentityPlatform:
    """Start with ``start()`` (or as a context manager); ``authority`` is what the daemon's
    ``authority`` key takes, ``introspection_url`` what Dovecot's oauth2 passdb takes."""

    tls: TlsCa
    host: str = "127.0.0.1"
    tenants: set[str] = field(default_factory=lambda: {"contoso"})
    token_lifetime: float = 3599.0
    token_delay: float = 0.0  # seconds the token endpoint takes to answer (a slow network)
    apps: dict[str, App] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    token_requests: dict[str, int] = field(default_factory=dict)  # by client_id, refused too
    _tokens: dict[str, _Token] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- setup -----------------------------------------------------------------------------------

    def add_app(self, client_id: str, **kwargs: Any) -> App:
        app = App(client_id, **kwargs)
        self.apps[client_id] = app
        return app

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def authority(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def introspection_url(self) -> str:
        return f"{self.authority}/introspect"

    def start(self) -> IdentityPlatform:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                platform._handle(self, "GET")

            def do_POST(self) -> None:
                platform._handle(self, "POST")

        server = ThreadingHTTPServer((self.host, 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> IdentityPlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def token_active(self, token: str) -> bool:
        found = self._tokens.get(token)
        return found is not None and found.expires > time.time()

    # -- HTTP ------------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        parts = [p for p in url.path.split("/") if p]
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length).decode() if length else ""
        form = {k: v[0] for k, v in parse_qs(body).items()}
        with self._lock:
            key = f"{method} /" + "/".join(parts[1:] if len(parts) > 1 else parts)
            self.requests[key] = self.requests.get(key, 0) + 1
        try:
            if method == "GET" and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                status, answer = self._discovery(parts[0])
            elif method == "POST" and parts[1:] == ["oauth2", "v2.0", "token"]:
                status, answer = self._token(parts[0], form)
            elif method == "POST" and parts == ["introspect"]:
                status, answer = self._introspect(form)
            else:
                status, answer = 404, {"error": "not_found"}
        except Exception as exc:  # a test kit bug: say so to the client
            status, answer = 500, {"error": "server_error", "error_description": repr(exc)}
        data = json.dumps(answer).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _aad_error(self, status: int, error: str, code: int, text: str) -> tuple[int, Any]:
        return status, {
            "error": error,
            "error_description": f"AADSTS{code}: {text} Trace ID: {secrets.token_hex(8)}",
            "error_codes": [code],
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        }

    def _discovery(self, tenant: str) -> tuple[int, Any]:
        if tenant not in self.tenants:
            return self._aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{self.authority}/{tenant}"
        return 200, {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{base}/v2.0",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "response_types_supported": ["code", "token"],
            "tenant_region_scope": "EU",
        }

    def _token(self, tenant: str, form: dict[str, str]) -> tuple[int, Any]:
        time.sleep(self.token_delay)
        if tenant not in self.tenants:
            return self._aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        with self._lock:
            client = form.get("client_id", "")
            self.token_requests[client] = self.token_requests.get(client, 0) + 1
        if form.get("grant_type") != "client_credentials":
            return self._aad_error(400, "unsupported_grant_type", 70003, "Unsupported grant.")
        app = self.apps.get(form.get("client_id", ""))
        if app is None:
            return self._aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')}' was not found.",
            )
        if "client_secret" in form:
            if app.secret is None or not secrets.compare_digest(form["client_secret"], app.secret):
                return self._aad_error(
                    401, "invalid_client", 7000215, "Invalid client secret provided."
                )
        elif form.get("client_assertion_type") == ASSERTION_TYPE:
            problem = self._assertion_problem(app, tenant, form.get("client_assertion", ""))
            if problem:
                return self._aad_error(401, "invalid_client", 700027, problem)
        else:
            return self._aad_error(401, "invalid_client", 7000218, "No client credential.")
        if form.get("scope") != "https://outlook.office365.com/.default":
            return self._aad_error(400, "invalid_scope", 1002012, "The scope is not valid.")
        if not app.consent:
            return self._aad_error(
                400,
                "invalid_grant",
                65001,
                "The user or administrator has not consented to use the application.",
            )
        token = self._new_token()
        with self._lock:
            self._tokens[token] = _Token(app.client_id, time.time() + self.token_lifetime)
            self.issued.append(token)
        return 200, {
            "token_type": "Bearer",
            "expires_in": int(self.token_lifetime),
            "ext_expires_in": int(self.token_lifetime),
            "access_token": token,
        }

    @staticmethod
    def _new_token() -> str:
        """A JWT-shaped token as long as Entra's (~1,500 characters)."""
        header = _b64url(json.dumps({"typ": "JWT", "alg": "RS256", "x5t": "test"}).encode())
        claims = {"aud": "https://outlook.office365.com", "roles": ["IMAP.AccessAsApp"]}
        claims["nonce"] = secrets.token_urlsafe(600)
        payload = _b64url(json.dumps(claims).encode())
        return f"{header}.{payload}.{secrets.token_urlsafe(256)}"

    def _assertion_problem(self, app: App, tenant: str, assertion: str) -> str | None:
        """Why the client assertion JWT is not acceptable, None when it is."""
        if app.certificate is None:
            return "The application has no certificate."
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(sig_b64)
        except ValueError:
            return "Client assertion is not a JWT."
        if _b64url_decode(header.get("x5t", "")) != app.thumbprint:
            return "Client assertion contains an unknown certificate thumbprint (x5t)."
        public = app.certificate.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        signed = f"{head_b64}.{claims_b64}".encode()
        scheme: padding.AsymmetricPadding
        if header.get("alg") == "RS256":
            scheme = padding.PKCS1v15()
        elif header.get("alg") == "PS256":
            scheme = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        else:
            return f"Unsupported signing algorithm {header.get('alg')!r}."
        try:
            public.verify(signature, signed, scheme, hashes.SHA256())
        except Exception:
            return "Client assertion failed signature validation."
        audience = f"{self.authority}/{tenant}/oauth2/v2.0/token"
        if claims.get("aud") != audience:
            return f"Client assertion audience claim does not match {audience}."
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return "Client assertion issuer or subject is not the client."
        if float(claims.get("exp", 0)) < time.time():
            return "Client assertion is expired."
        return None

    def _introspect(self, form: dict[str, str]) -> tuple[int, Any]:
        token = self._tokens.get(form.get("token", ""))
        app = self.apps.get(token.client_id) if token is not None else None
        active = (
            token is not None
            and token.expires > time.time()
            and app is not None
            and app.imap_granted
        )
        return 200, {"active": "true" if active else "false", "username": APP_USER}
