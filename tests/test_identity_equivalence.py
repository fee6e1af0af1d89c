"""The faster header reader and identity keys give exactly what the replaced ones gave.

Identity keys are stored in the databases of running migrations: a key that changes for some
header copies that message a second time. Every function is compared with its verbatim former
self (``frozen_reference``) on hostile header bytes: folding (CRLF, LF, CR-less, tabs),
8-bit and control bytes, duplicates, missing fields, case and blank variants of the names, an
mbox ``From `` line, lines that are not fields, CR and LF oddities, a body after the header.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from legacyflo_daemon.transfer import headers, identity
from tests import frozen_reference as old

_NAMES = [
    b"Message-ID", b"message-id", b"MESSAGE-ID", b"Message-Id", b"Date", b"DATE", b"From",
    b"from", b"To", b"to", b"tO", b"Subject", b"subject", b"SuBjEcT", b"X-Other", b"Sub ject",
    b"Message_ID", b"Tox", b"Fro", b"Resent-From", b"From ", b"To\t", b"Date \t ", b" Subject",
    b"\tFrom", b"", b"\xc3\xa9", b"To\r", b"\x00Date",
]  # fmt: skip
_VALUES = [
    b"", b" ", b"\t", b" <a@b.example>", b"<a@b.example>", b" <>", b"<>", b" < a@b >",
    b" <caf\xc3\xa9@x>", b" <\xe9@x>", b" <a\x00b@x>", b" <a\x7fb@x>", b" <a\x0bb@x>",
    b" Alice <alice@example.com>", b" =?utf-8?q?Caf=C3=A9?=", b" =?bogus?q?x?=", b" =?utf-8?b?",
    b" R\xe9union", b" \xff\xfe", b" a:b:c", b" \"Smith, John\" <j@x>", b" =SUM(A1)",
    b" Mon, 24 Sep 2018 23:59:00 +0000", b" x\ry", b" trailing\r", b" two\r\r", b"\r",
]  # fmt: skip
_BREAKS = [b"\r\n", b"\n", b"\r\r\n", b"\r", b"\n\r"]
_FOLDS = [b"\r\n ", b"\n\t", b"\r\n\t", b"\n ", b"\r\n  \t"]


@st.composite
def _header(draw: st.DrawFn) -> bytes:
    """A header block of hostile lines, sometimes with a body after it."""
    out = b""
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 9))
        if kind == 0:  # a line that is not a field
            line = draw(st.sampled_from([b"From someone Mon Jan 1", b"garbage", b":", b" ", b""]))
        elif kind == 1:  # a continuation line (of whatever came before)
            line = draw(st.sampled_from(_FOLDS)).lstrip(b"\r\n") + draw(st.sampled_from(_VALUES))
        else:
            line = draw(st.sampled_from(_NAMES)) + draw(st.sampled_from([b":", b" :", b"\t:"]))
            line += draw(st.sampled_from(_VALUES))
            for _ in range(draw(st.integers(0, 2))):  # folded
                line += draw(st.sampled_from(_FOLDS)) + draw(st.sampled_from(_VALUES)).lstrip()
        out += line + draw(st.sampled_from(_BREAKS))
    if draw(st.booleans()):
        out += draw(st.sampled_from([b"\r\n", b"\n"])) + b"Message-ID: <body@x>\r\nbody\r\n"
    return out


_HOSTILE = _header() | st.binary(max_size=400)
_WHEN = st.sampled_from(
    [
        dt.datetime(2018, 9, 24, 23, 59, tzinfo=dt.UTC),
        dt.datetime(2018, 9, 25, 5, 29, 59, 999_999, tzinfo=dt.timezone(dt.timedelta(hours=5.5))),
        dt.datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=dt.UTC),  # before the epoch
        dt.datetime(2038, 1, 19, 3, 14, 8, tzinfo=dt.timezone(-dt.timedelta(hours=11))),
    ]
)


@settings(max_examples=3000, deadline=None)
@given(_HOSTILE, _WHEN)
@example(b"Message-ID: <a@b>\r\n\r\n", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
@example(b"Subject: a\r\r\n b\r\r\n\r\n", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
@example(b"message-id:\r\n <a@b>\r\nMessage-ID: <c@d>\r\n", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
@example(b"X: y\r\n\tMessage-ID: <a@b>\r\nTo: t\r", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
@example(b"From x\nMessage-ID: <\x0c@b>\n", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
def test_fields_and_keys_are_what_they_were(data: bytes, when: dt.datetime) -> None:
    fields = headers.header_fields(data)
    assert fields == old.header_fields(data)
    assert headers.message_id(data) == fields.get(b"message-id")
    key = old.identity(data, when)
    assert identity.identity(data, when) == key
    assert identity.identity_of_fields(fields, when) == key
    for value in fields.values():
        assert headers.decode_text(value) == old.decode_text(value)


@given(_HOSTILE)
def test_a_bytearray_reads_as_bytes(data: bytes) -> None:
    fields = headers.header_fields(bytearray(data))
    assert fields == old.header_fields(data)
    assert all(type(v) is bytes for v in fields.values())
    found = headers.message_id(bytearray(data))
    assert found is None or type(found) is bytes


@settings(max_examples=2000)
@given(st.binary(max_size=200) | st.text(max_size=100).map(lambda t: t.encode("utf-8", "replace")))
@example("  a \u00a0 b\u2028c\x85  ".encode())
@example(b"=?utf-8?q?a__b?= =?utf-8?q?_?=")
def test_decode_text_is_what_it_was(value: bytes) -> None:
    assert headers.decode_text(value) == old.decode_text(value)


@pytest.mark.parametrize(
    "fields",
    [
        {b"message-id": b" <a@b>"},
        {b"message-id": b" <a\t@\r\n b>"},
        {b"message-id": b"<\xe9@x>"},
        {b"message-id": b"<\x0b@x>"},
        {b"message-id": b" <> "},
        {b"subject": b"s", b"from": b"f"},
        {},
    ],
)
def test_keys_of_given_fields_are_what_they_were(fields: dict[bytes, bytes]) -> None:
    when = dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC)
    assert identity.identity_of_fields(fields, when) == old.identity_of_fields(fields, when)


def test_a_naive_date_is_still_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        identity.identity(b"Message-ID: <a@b>\r\n", dt.datetime(2020, 1, 1))
