"""SASL messages for IMAP AUTHENTICATE: PLAIN (RFC 4616), XOAUTH2 and OAUTHBEARER (RFC 7628).

Owns: the initial client responses, base64-encoded as IMAP sends them, the answer that ends a
server's error challenge of each mechanism, and the decoding of such a challenge (a JSON
status) into words. Must not: do I/O. The strings built here hold secrets: never put them in a
message (``runtime.secrets`` scrubs them from logs by the token's and password's forms).
"""

from __future__ import annotations

import base64
import binascii
import json

# What a client sends to end an OAuth error challenge: XOAUTH2 takes an empty response,
# OAUTHBEARER a single %x01 (RFC 7628 §3.2.3), base64 "AQ==".
XOAUTH2_ABORT = b""
OAUTHBEARER_ABORT = b"AQ=="


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def plain(authcid: str, password: str, authzid: str = "") -> str:
    """PLAIN: ``authzid NUL authcid NUL password``; ``authzid`` is the identity to act as (an
    administrator ``authcid`` logging in to the mailbox ``authzid``), empty for oneself."""
    return _b64(b"\0".join(_utf8(s) for s in (authzid, authcid, password)))


def xoauth2(user: str, token: str) -> str:
    """XOAUTH2 (Google, Microsoft): ``user=<user>^Aauth=Bearer <token>^A^A``."""
    return _b64(b"user=" + _utf8(user) + b"\x01auth=Bearer " + _utf8(token) + b"\x01\x01")


def _saslname(text: str) -> str:
    return text.replace("=", "=3D").replace(",", "=2C")  # RFC 5801 §4


def oauthbearer(user: str, token: str, host: str, port: int) -> str:
    """OAUTHBEARER (RFC 7628 §3.1): ``n,a=<user>,^Ahost=<host>^Aport=<port>^Aauth=Bearer
    <token>^A^A``."""
    gs2 = f"n,a={_saslname(user)},"
    return _b64(
        _utf8(gs2)
        + _utf8(f"\x01host={host}\x01port={port}\x01auth=Bearer ")
        + _utf8(token)
        + b"\x01\x01"
    )


def challenge_status(data: bytes) -> str | None:
    """The error a server's OAuth challenge (the base64 JSON after ``+``) reports, in words:
    ``status 401, scheme bearer``; None when it carries none (not base64 or not JSON)."""
    try:
        decoded = json.loads(base64.b64decode(data.strip(), validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(decoded, dict):
        return None
    parts = []
    for key in ("status", "schemes", "scope"):
        value = decoded.get(key)
        if isinstance(value, str | int) and str(value).isprintable():
            parts.append(f"{key} {str(value)[:80]}")
    return ", ".join(parts) or None
