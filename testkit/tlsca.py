"""A throwaway certificate authority for the test servers.

Owns: creating, at test time, a private CA and one server certificate signed by it (EC P-256, so
generation takes milliseconds) with the openssl command-line tool, and the client-side
``ssl.SSLContext`` that trusts only that CA. Must not: touch any system trust store, or be used
outside tests (keys are unencrypted and live in the test's temporary directory).

The certificates carry the extensions that strict verifiers (Python 3.13's VERIFY_X509_STRICT)
insist on: basicConstraints, keyUsage, subjectKeyIdentifier, authorityKeyIdentifier, and a
subjectAltName listing every name and loopback address the test servers answer on.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Every address a test server may listen on (see dovecot.ServerAddresses), plus the names.
DEFAULT_NAMES: tuple[str, ...] = (
    "localhost",
    "127.0.0.1",
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
)

_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True, slots=True)
class TlsCa:
    """Paths of the CA certificate and of the server certificate/key it signed (all PEM)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that verifies the server against this CA only (hostname checked)."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))


def _san(names: tuple[str, ...]) -> str:
    parts = []
    for name in names:
        kind = "IP" if name.replace(".", "").isdigit() or ":" in name else "DNS"
        parts.append(f"{kind}:{name}")
    return ",".join(parts)


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.decode(errors='replace')}")


def make_tls_ca(directory: Path, names: tuple[str, ...] = DEFAULT_NAMES) -> TlsCa:
    """Create ``ca.pem``, ``server.pem`` and ``server.key`` in ``directory`` and return them.

    The server certificate is valid for ``names`` (DNS names and IP addresses) for 2 days.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    _openssl(
        "req", "-x509", *_EC, "-days", "2", "-subj", "/CN=legacyflo test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        "-keyout", str(ca_key), "-out", str(ca_cert),
    )  # fmt: skip
    _openssl("req", "-new", *_EC, "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={_san(names)}\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    return TlsCa(ca_file=ca_cert, cert_file=cert, key_file=key)
