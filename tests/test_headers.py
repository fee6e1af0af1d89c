"""Header fields read raw (for identity) and summarised (for failures and report listings)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legacyflo_daemon.transfer.headers import HeaderSummary, decode_text, header_fields, summarize


def test_header_fields_parse() -> None:
    data = (
        b"From x\r\nSubject: a\r\n\tb\r\nTo: t\r\nto: second\r\n"
        b"X-Folded: x\r\n y\r\n\r\nDate: in body\r\n"
    )
    assert header_fields(data) == {b"subject": b" a\tb", b"to": b" t"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Weekly report", "Weekly report"),
        (b"=?utf-8?q?Caf=C3=A9?= ouvert", "Café ouvert"),
        (b"=?ISO-8859-1?B?SuRyZ2Vu?=", "Järgen"),
        ("Réunion über Café".encode(), "Réunion über Café"),  # raw 8-bit UTF-8
        (b"R\xe9union", "Réunion"),  # not UTF-8: Latin-1
        (b"tab\there\x01and  spaces", "tab here and spaces"),
        (b"=?bogus-charset?q?x?=", "=?bogus-charset?q?x?="),  # undecodable: shown as written
        (b"", ""),
        (b"x" * 500, "x" * 300),
    ],
)
def test_decode_text(raw: bytes, expected: str) -> None:
    assert decode_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"Subject: Hello\r\n world\r\nFrom: A <a@x>\r\nMessage-ID: <1@x>\r\n"
            b"Date: Mon, 24 Sep 2018 23:59:00 +0000\r\n\r\nSubject: body, not a header\r\n",
            HeaderSummary("Hello world", "A <a@x>", "<1@x>", "Mon, 24 Sep 2018 23:59:00 +0000"),
        ),
        (b"subject: first\nSUBJECT: second\n\n", HeaderSummary("first", "", "", "")),
        (b"no colon line\nFrom: b@x\n", HeaderSummary("", "b@x", "", "")),
        (b"", HeaderSummary("", "", "", "")),
    ],
)
def test_summarize(raw: bytes, expected: HeaderSummary) -> None:
    assert summarize(raw) == expected


@given(st.binary(max_size=2000))
def test_summarize_never_fails_and_is_printable(raw: bytes) -> None:
    s = summarize(raw)
    for text in (s.subject, s.sender, s.message_id, s.date):
        assert text.isprintable() and len(text) <= 300
