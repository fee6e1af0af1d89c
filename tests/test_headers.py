"""Header fields read raw (for identity) and summarised (for failures and report listings)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
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


# The reader as it was until the per-line regex was replaced (identity keys are built from its
# output, so the two must agree on every input: a changed key copies mail twice).
_OLD_FIELD = re.compile(rb"([^\x00-\x20\x7f:]+)[ \t]*:(.*)", re.DOTALL)


def _old_header_fields(data: bytes) -> dict[bytes, bytes]:
    if data[:2] == b"\r\n" or data[:1] == b"\n":
        return {}
    ends = [i for i in (data.find(b"\n\r\n"), data.find(b"\n\n")) if i >= 0]
    block = bytes(data[: min(ends) + 1]) if ends else bytes(data)
    parts: dict[bytes, list[bytes]] = {}
    current: list[bytes] | None = None
    for raw_line in block.split(b"\n"):
        line = raw_line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        current = None
        m = _OLD_FIELD.fullmatch(line)
        if m is None:
            continue
        name = m.group(1).lower()
        if name in {b"message-id", b"date", b"from", b"to", b"subject"} and name not in parts:
            current = parts[name] = [m.group(2)]
    return {name: b"".join(chunks) for name, chunks in parts.items()}


_header_piece = st.sampled_from(
    [b"Subject", b"subject", b"SUBJECT", b"From", b"To", b"Date", b"Message-ID", b"X-Other",
     b"Sub ject", b"To\r", b"From ", b"Date\t", b":", b": ", b" ", b"\t", b"\r\n", b"\n", b"\r",
     b"\x00", b"\x7f", b"\xc3\xa9", b"value", b"<a@b>", b"From x"]
)  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(_header_piece, max_size=30).map(b"".join) | st.binary(max_size=300))
def test_header_fields_reads_what_the_former_regex_reader_read(data: bytes) -> None:
    assert header_fields(data) == _old_header_fields(data)
