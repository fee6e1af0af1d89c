"""The SASL messages of ``imap.syntax.sasl``, byte for byte as the RFCs and Microsoft give them."""

from __future__ import annotations

import base64

from legacyflo_daemon.imap.syntax import sasl


def test_plain_with_and_without_authorization_identity() -> None:
    assert base64.b64decode(sasl.plain("admin", "pw")) == b"\0admin\0pw"
    assert base64.b64decode(sasl.plain("admin", "pw", "john")) == b"john\0admin\0pw"  # RFC 4616


def test_xoauth2_as_microsoft_documents_it() -> None:
    raw = base64.b64decode(
        sasl.xoauth2("john@contoso.com", "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA")
    )
    assert (
        raw
        == b"user=john@contoso.com\x01auth=Bearer EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA\x01\x01"
    )


def test_oauthbearer_as_rfc_7628_gives_it() -> None:
    raw = base64.b64decode(
        sasl.oauthbearer("user@example.com", "vF9dft4qmT", "server.example.com", 143)
    )
    assert raw == (  # RFC 7628 §4.1, with our user in the GS2 header
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmT\x01\x01"
    )
    assert base64.b64decode(sasl.oauthbearer("a,b=c", "t", "h", 1)).startswith(b"n,a=a=2Cb=3Dc,")


def test_error_challenges_in_words() -> None:
    dovecot = b"eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0="
    assert sasl.challenge_status(dovecot) == "status 401, schemes bearer, scope mail"
    assert sasl.challenge_status(b"") is None
    assert sasl.challenge_status(b"not base64!") is None
    assert sasl.challenge_status(base64.b64encode(b"[1, 2]")) is None
    odd = base64.b64encode(b'{"status": "x\\u0007y", "scope": "' + b"s" * 200 + b'"}')
    assert sasl.challenge_status(odd) == "scope " + "s" * 80  # unprintable and long values cut
