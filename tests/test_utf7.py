"""IMAP modified UTF-7: the examples of RFC 3501 and docs/contract.md §4.2, malformed input,
properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legacyflo_daemon.imap.syntax import utf7

# (decoded, wire) — each must hold in both directions.
EXAMPLES = [
    ("", ""),
    ("INBOX", "INBOX"),
    ("Sent Items", "Sent Items"),
    ("Café & Co", "Caf&AOk- &- Co"),  # docs/contract.md §4.2
    ("03_März", "03_M&AOQ-rz"),  # imapsync#451, done right
    ("Réunions", "R&AOk-unions"),
    ("&", "&-"),
    ("&&", "&-&-"),
    ("a&b", "a&-b"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
    ("Caf\u00e9/\u00dcnter", "Caf&AOk-/&ANw-nter"),  # what Dovecot shows for doveadm's 'Café/Ünter'
    ("📧 Mail", "&2D3c5w- Mail"),  # U+1F4E7: a surrogate pair in UTF-16BE
    ("😀😀", "&2D3eANg93gA-"),
    ("Tâches", "T&AOI-ches"),
    ("Problèmes de synchronisation", "Probl&AOg-mes de synchronisation"),
    ("日本語", "&ZeVnLIqe-"),
    ("tab\there", "tab&AAk-here"),  # control characters are encoded, never sent raw
    ("del\x7f", "del&AH8-"),
    ("Ä&Ö", "&AMQ-&-&ANY-"),  # a run ends before '&', which is then written '&-'
    ("~!@#$%^*()_+-=[]{}|;:'\",.<>/? `", "~!@#$%^*()_+-=[]{}|;:'\",.<>/? `"),
]


@pytest.mark.parametrize(("decoded", "wire"), EXAMPLES)
def test_encode_examples(decoded: str, wire: str) -> None:
    assert utf7.encode(decoded) == wire


@pytest.mark.parametrize(("decoded", "wire"), EXAMPLES)
def test_decode_examples(decoded: str, wire: str) -> None:
    assert utf7.decode(wire) == decoded


@pytest.mark.parametrize(
    ("wire", "decoded"),
    [
        ("&AGEAYgBj-", "abc"),  # ASCII inside a run: not canonical, still one meaning
        ("&AOk-&AOk-", "éé"),  # two adjacent runs instead of one
        ("03_M&AMMApA-rz", "03_MÃ¤rz"),  # double-encoded UTF-8 (imapsync#451) is valid UTF-7
    ],
)
def test_decode_accepts_non_canonical_forms(wire: str, decoded: str) -> None:
    assert utf7.decode(wire) == decoded


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("Caf&AOk", "not terminated by '-'"),
        ("&", "not terminated by '-'"),
        ("Café", "non-ASCII character 'é'"),
        ("03_März", "non-ASCII character 'ä'"),  # UTF-8 where mUTF-7 is required
        ("a\tb", "control character"),
        ("nul\x00", "control character"),
        ("&AOk?-", "'?' is not allowed in a base64 run"),
        ("&AOk/-", "'/' is not allowed in a base64 run"),  # standard base64 '/', not ','
        ("&AOk=-", "'=' is not allowed in a base64 run"),
        ("&A-", "superfluous character"),
        ("&AOl-", "non-zero padding bits"),
        ("&AOkA-", "odd number of UTF-16 bytes"),
        ("&2D0-", "invalid UTF-16"),  # high surrogate without its low half
        ("&3gA-", "invalid UTF-16"),  # low surrogate alone
    ],
)
def test_decode_rejects_malformed(wire: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        utf7.decode(wire)


def test_decode_error_names_the_position() -> None:
    with pytest.raises(ValueError, match="at position 8"):
        utf7.decode("abc/&AOk?-")


def test_encode_rejects_lone_surrogate() -> None:
    with pytest.raises(ValueError, match="lone surrogate U\\+D800"):
        utf7.encode("a\ud800b")


# Printable ASCII without '&', plus runs: '&' followed by base64 and '-'.
_WIRE = re.compile(r"(?:[\x20-\x25\x27-\x7e]|&[A-Za-z0-9+,]*-)*")

names = st.text(st.characters(exclude_categories=["Cs"]))


@given(names)
def test_round_trip(name: str) -> None:
    assert utf7.decode(utf7.encode(name)) == name


@given(names)
def test_encoded_form_is_printable_ascii_with_ampersand_only_starting_runs(name: str) -> None:
    wire = utf7.encode(name)
    assert _WIRE.fullmatch(wire), wire


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="&")))
def test_printable_ascii_is_unchanged(name: str) -> None:
    assert utf7.encode(name) == name


@given(names, names)
def test_encoding_is_segment_wise(a: str, b: str) -> None:
    # Callers may encode path segments separately and join them with an ASCII delimiter.
    assert utf7.encode(a + "/" + b) == utf7.encode(a) + "/" + utf7.encode(b)
