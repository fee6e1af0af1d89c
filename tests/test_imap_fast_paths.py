"""The fast paths of the metadata read (issue 14) give exactly what the general paths give.

- ``ImapProtocol._fast_fetch`` hands a whole FETCH response to its command in one step; the
  command must end up with the same lines, result and failure as when every response is read
  line by line (``fast_fetch = False``), whatever the responses and however the stream is cut
  into chunks.
- ``parse.metas_of`` converts the answers of one layout straight from their matched bytes; it
  must give ``meta_from`` of every ``fetch_items`` item, or the same ``WireError``.
Both are also checked to be taken at all for the common shape (else the comparisons could not
fail).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
from typing import Any

import pytest
from aioimaplib import aioimaplib as lib
from hypothesis import given, settings
from hypothesis import strategies as st

from legacyflo_daemon.imap._aioimaplib import protocol as protocol_module
from legacyflo_daemon.imap._aioimaplib.commands import _QUOTED, LinearFetchCommand
from legacyflo_daemon.imap._aioimaplib.protocol import LINE_MAX, ImapProtocol
from legacyflo_daemon.imap.syntax import parse, wire
from legacyflo_daemon.imap.syntax.parse import (
    fetch_items,
    message_from,
    messages_of,
    meta_from,
    metas_of,
    uid_size_from,
    uid_sizes_of,
)
from legacyflo_daemon.imap.syntax.wire import WireError
from legacyflo_daemon.request.dates import parse_date_time

HEADER = b"Message-ID: <a@b>\r\nSubject: Hi (there)\r\n\r\n"


def _meta_response(seq: int, uid: int, header: bytes = HEADER, date: bytes = b"") -> bytes:
    date = date or b"0%d-Feb-2015 10:11:12 +0100" % (seq % 9 + 1)
    return (
        b'* %d FETCH (UID %d FLAGS (\\Seen) INTERNALDATE "%s" RFC822.SIZE 2000 '
        b"BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)] {%d}\r\n%s)\r\n"
        % (seq, uid, date, len(header), header)
    )


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _protocol(fast: bool) -> tuple[ImapProtocol, LinearFetchCommand]:
    proto = ImapProtocol(asyncio.get_running_loop())
    proto.transport = _Transport()
    proto.state = lib.SELECTED
    proto.fast_fetch = fast
    cmd = LinearFetchCommand("T1", "1:*", "(UID)", prefix="UID", loop=proto.loop)
    proto.pending_async_commands["FETCH"] = cmd
    return proto, cmd


def _feed(fast: bool, data: bytes, cuts: list[int], limits: dict[int, int] | None = None) -> Any:
    """Feed ``data`` cut at ``cuts`` to a protocol reading a FETCH: what its command got."""
    return asyncio.run(_feed_async(fast, data, cuts, limits))


async def _feed_async(
    fast: bool, data: bytes, cuts: list[int], limits: dict[int, int] | None
) -> Any:
    proto, cmd = _protocol(fast)
    if limits is not None:
        proto.limit_literals(limits, max(limits.values()))
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        proto.data_received(data[a:b])
    lines = [(type(x).__name__, bytes(x)) for x in cmd.response.lines]
    return lines, cmd.response.result, proto.failure, dict(proto.oversized)


# Responses a server may send during a FETCH: the common shape, shapes the fast path must
# leave alone (nested lists, a literal inside the line, parentheses in quoted strings, escaped
# quotes, lower-case names, no literal), unsolicited responses, junk.
_response = st.one_of(
    st.builds(
        lambda seq, uid, header: _meta_response(seq, uid, header),
        st.integers(1, 99), st.integers(1, 10**6), st.binary(max_size=60),
    ),
    st.builds(
        lambda seq, body: b"* %d FETCH (UID 5 BODY[] {%d}\r\n%s)\r\n" % (seq, len(body), body),
        st.integers(1, 99), st.binary(max_size=40),
    ),
    st.sampled_from([
        b"* 3 FETCH (UID 7 RFC822.SIZE 10)\r\n",
        b"* 3 FETCH (FLAGS (\\Seen))\r\n",
        b'* 4 FETCH (UID 8 X-NOTE "a (b" BODY[] {3}\r\nabc)\r\n',
        b'* 4 FETCH (UID 8 X-NOTE "a ) \\" (" BODY[] {2}\r\nab)\r\n',
        b"* 5 FETCH (UID 9 BODYSTRUCTURE (\"TEXT\" \"PLAIN\" NIL) BODY[] {1}\r\nx)\r\n",
        b"* 5 FETCH (UID 9 BODY[] {1}\r\nx FLAGS (\\Seen))\r\n",
        b"* 6 FETCH (UID 1 BODY[HEADER] {2}\r\nab BODY[TEXT] {1}\r\nc)\r\n",
        b"* 6 fetch (UID 1 BODY[] {1}\r\nz)\r\n",
        b"* 7 FETCH (UID 2 BODY[] {5}\r\nab)\r\n)\r\n",
        b"* 8 FETCH (UID 3 BODY[] {0}\r\n)\r\n",
        b"* 9 FETCH (UID 4 BODY[] {2}\r\nab))\r\n",
        b"* 10 FETCH (UID 4 FLAGS (\\Seen)\r\n",
        b"* 11 EXPUNGE\r\n",
        b"* 12 EXISTS\r\n",
        b"* OK [ALERT] hello\r\n",
        b"* BYE shutting down\r\n",
    ]),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    responses=st.lists(_response, max_size=8),
    cuts=st.lists(st.integers(0, 10**4), max_size=6),
    tagged=st.sampled_from([b"T1 OK done\r\n", b"T1 NO [UNAVAILABLE] later\r\n", b""]),
)
def test_fast_fetch_gives_the_command_what_line_by_line_reading_gives(
    responses: list[bytes], cuts: list[int], tagged: bytes
) -> None:
    data = b"".join(responses) + tagged
    assert _feed(True, data, cuts) == _feed(False, data, cuts)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6),
    limit=st.integers(0, 40),
    cuts=st.lists(st.integers(0, 10**3), max_size=4),
)
def test_fast_fetch_keeps_the_literal_limits_of_a_body_fetch(
    sizes: list[int], limit: int, cuts: list[int]
) -> None:
    data = (
        b"".join(
            b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (i, 100 + i, n, b"x" * n)
            for i, n in enumerate(sizes, start=1)
        )
        + b"T1 OK done\r\n"
    )
    limits = {100 + i: limit for i in range(1, len(sizes) + 1)}
    fast, slow = _feed(True, data, cuts, limits), _feed(False, data, cuts, limits)
    assert fast == slow
    assert set(fast[3]) == {i for i, n in enumerate(sizes, start=1) if n > limit}


def test_fast_fetch_keeps_the_line_length_cap() -> None:
    line = b'* 1 FETCH (UID 1 X-NOTE "' + b"a" * LINE_MAX + b'" BODY[] {1}\r\nx)\r\nT1 OK\r\n'
    for fast in (True, False):
        _, _, failure, _ = _feed(fast, line, [])
        assert failure is not None and "could not be handled" in failure


async def test_fast_fetch_is_taken_for_the_common_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the tagged answer goes through the line-by-line dispatch."""
    proto, cmd = _protocol(True)
    seen: list[bytes] = []
    original = ImapProtocol._handle_line

    def counting(self: ImapProtocol, line: bytes, current: Any) -> Any:
        seen.append(line)
        return original(self, line, current)

    monkeypatch.setattr(ImapProtocol, "_handle_line", counting)
    proto.data_received(b"".join(_meta_response(i, 10 + i) for i in range(1, 101)) + b"T1 OK\r\n")
    assert seen == [b"T1 OK"]
    assert cmd.response.result == "OK" and len(cmd.response.lines) == 301
    assert protocol_module.LINE_MAX == LINE_MAX


# -- metas_of ------------------------------------------------------------------------------------


def _parts(responses: list[bytes]) -> list[bytes | bytearray]:
    """What ``Connection.run`` hands over for ``responses`` (``* `` removed, literals as
    ``bytearray``), read by the protocol itself, line by line."""

    async def read() -> list[bytes | bytearray]:
        proto, cmd = _protocol(False)
        proto.data_received(b"".join(responses) + b"T1 OK done\r\n")
        assert proto.failure is None
        return list(cmd.response.lines[:-1])

    return asyncio.run(read())


def _general(parts: list[bytes | bytearray]) -> object:
    try:
        return [meta_from(i) for i in fetch_items(parts)]
    except WireError:
        return WireError


def _fast(parts: list[bytes | bytearray]) -> object:
    try:
        return metas_of(parts)
    except WireError:
        return WireError


_dates = st.sampled_from([
    b"01-Feb-2015 10:11:12 +0100", b" 1-Feb-2015 10:11:12 -0230", b"1-FEB-2015 00:00:00 +0000",
    b"31-Feb-2015 10:11:12 +0000", b"01-Feb-2015 10:11:12 +9900", b"junk", b"",
    b"01-Feb-2015 10:11:12 +0000\\", b"\xd9\xa1-Feb-2015 10:11:12 +0000",
    b"01-Feb-2015 10:11:1\\2 +0000",
])  # fmt: skip
_uids = st.sampled_from([b"1", b"42", b"4294967295", b"NIL", b"nil", b"1_0", b"\xd9\xa1", b"x"])
_sizes = st.sampled_from([b"2000", b"0", b"NIL", b"\xd9\xa1\xd9\xa2", b"12a", None])
_flags = st.sampled_from([b"(\\Seen)", b"()", b"(\\Seen $Forwarded)", b"(NIL a)", b"NIL"])


@st.composite
def _meta_batch(draw: st.DrawFn) -> list[bytes]:
    """One metadata FETCH's answers: mostly one layout (in a drawn item order), some odd
    values, sometimes a second answer for one message or another layout."""
    order = draw(st.permutations(["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "HEADER"]))
    out = []
    for seq in range(1, draw(st.integers(1, 6)) + 1):
        header = draw(st.binary(max_size=30))
        size = draw(_sizes)
        values = {
            "UID": b"UID " + draw(_uids),
            "FLAGS": b"FLAGS " + draw(_flags),
            "INTERNALDATE": b'INTERNALDATE "' + draw(_dates) + b'"',
            "RFC822.SIZE": b"RFC822.SIZE " + size if size is not None else b"",
            "HEADER": b"BODY[HEADER.FIELDS (MESSAGE-ID DATE)] {%d}\r\n%s" % (len(header), header),
        }
        items = [values[k] for k in order if values[k] and k != "HEADER"]
        number = draw(st.sampled_from([seq, seq, seq, 1]))
        head = b"* %d FETCH (" % number + b" ".join(items)
        out.append(head + b" " + values["HEADER"] + b")\r\n")
    return out


@settings(max_examples=600, deadline=None)
@given(_meta_batch())
def test_metas_of_equals_meta_from_of_every_item(responses: list[bytes]) -> None:
    parts = _parts(responses)
    assert _fast(parts) == _general(parts)


@pytest.mark.usefixtures("fresh_layouts")
def test_metas_of_reads_the_common_layout_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _parts([_meta_response(i, 10 + i) for i in range(1, 50)])
    expected = [meta_from(i) for i in fetch_items(parts)]

    def general(_: object) -> None:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(parse, "fetch_items", general)
    got = metas_of(parts)
    assert got == expected
    assert [m.uid for m in got] == list(range(11, 60))
    assert got[0].header == HEADER and got[0].flags == ("\\Seen",) and got[0].size == 2000
    # equal flag sets are one tuple, as on the general path
    assert got[0].flags is got[1].flags


def test_dates_read_twice_are_parsed_once_and_the_cache_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both servers send the same INTERNALDATE text for a message in a delta pass: the second
    read takes the first's value (same instant, same zone); the cache never holds more than
    its bound (the older half goes), and what it gives equals a fresh parse."""
    monkeypatch.setattr(parse, "_DATES", {})
    monkeypatch.setattr(parse, "_DATES_MAX", 8)
    texts = [b"%02d-Mar-2019 10:11:12 +0100" % day for day in range(1, 21)]
    first = metas_of(_parts([_meta_response(i, i, date=t) for i, t in enumerate(texts, 1)]))
    again = metas_of(_parts([_meta_response(i, 100 + i, date=texts[-1]) for i in range(1, 3)]))
    assert again[0].internaldate is first[-1].internaldate  # parsed once
    assert len(parse._DATES) <= 8
    for meta, text in zip(first, texts, strict=True):
        assert meta.internaldate == parse_date_time(text.decode())
        assert meta.internaldate.utcoffset() == dt.timedelta(hours=1)


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.sampled_from([b'"', b"\\", b"(", b")", b"a", b" ", b"\r", b"\n", b'\\"', b"\\\\"]),
        max_size=24,
    ).map(b"".join)
)
def test_the_quoted_string_pattern_is_the_plain_one_unrolled(line: bytes) -> None:
    plain = re.compile(rb'"(?:[^"\\\r\n]|\\.)*"')
    assert _QUOTED.sub(b"", line) == plain.sub(b"", line)


@st.composite
def _size_batch(draw: st.DrawFn) -> list[bytes]:
    """One ``(UID RFC822.SIZE)`` FETCH's answers: mostly plain, some odd values or layouts."""
    flip = draw(st.booleans())
    out = []
    for seq in range(1, draw(st.integers(1, 6)) + 1):
        uid, size = draw(_uids), draw(_sizes) or b"7"
        items = [b"UID " + uid, b"RFC822.SIZE " + size]
        if flip:
            items.reverse()
        if draw(st.integers(0, 9)) == 0:
            items.append(draw(st.sampled_from([b"FLAGS (\\Seen)", b'X "a"', b"UID 3"])))
        number = draw(st.sampled_from([seq, seq, seq, 1]))
        out.append(b"* %d FETCH (" % number + b" ".join(items) + b")\r\n")
    return out


@settings(max_examples=600, deadline=None)
@given(_size_batch())
def test_uid_sizes_of_equals_uid_size_from_of_every_item(responses: list[bytes]) -> None:
    parts = _parts(responses)
    try:
        general: object = [uid_size_from(i) for i in fetch_items(parts)]
    except WireError:
        general = WireError
    fast = uid_sizes_of(parts)
    assert fast is None or fast == general


_bodies = st.sampled_from(
    [b"", b"x", b"Subject: Retrieval using the IMAP4 protocol failed\r\n\r\n"]
)


@st.composite
def _body_batch(draw: st.DrawFn) -> list[bytes]:
    """One body FETCH's answers: mostly one layout of UID FLAGS INTERNALDATE BODY[] (in a
    drawn order, the literal last), odd values, sometimes another layout."""
    order = draw(st.permutations(["UID", "FLAGS", "INTERNALDATE"]))
    out = []
    for seq in range(1, draw(st.integers(1, 5)) + 1):
        body = draw(st.one_of(_bodies, st.binary(max_size=30)))
        values = {
            "UID": b"UID " + draw(_uids),
            "FLAGS": b"FLAGS " + draw(_flags),
            "INTERNALDATE": b'INTERNALDATE "' + draw(_dates) + b'"',
        }
        items = [values[k] for k in order]
        if draw(st.integers(0, 9)) == 0:
            items.append(b"RFC822.SIZE 3")
        name = draw(st.sampled_from([b"BODY[]", b"BODY[]", b"BODY[]", b"BODY[]<0>", b"RFC822"]))
        number = draw(st.sampled_from([seq, seq, seq, 1]))
        line = b"* %d FETCH (" % number + b" ".join(items)
        out.append(line + b" %s {%d}\r\n%s)\r\n" % (name, len(body), body))
    return out


@settings(max_examples=600, deadline=None)
@given(_body_batch())
def test_messages_of_equals_message_from_of_every_item(responses: list[bytes]) -> None:
    parts = _parts(responses)
    try:
        general: object = [message_from(i) for i in fetch_items(parts)]
    except WireError:
        general = WireError
    fast = messages_of(parts)
    assert fast is None or fast == general


@pytest.fixture
def fresh_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty layout caches: other tests (hypothesis) fill them with odd layouts up to their
    bounds, after which a new layout is read by the general path (slower, same values)."""
    monkeypatch.setattr(wire, "_SHAPES", {})
    monkeypatch.setattr(wire, "_last", [])
    monkeypatch.setattr(parse, "_META_PLANS", {})


def test_layouts_are_kept_least_recently_used_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that has sent more layouts than the caches hold (items in varying order) still
    gets the fast path for the one it sends now: the least recently used layout is dropped,
    not the new one refused."""
    monkeypatch.setattr(wire, "_SHAPES", {})
    monkeypatch.setattr(wire, "_last", [])
    monkeypatch.setattr(parse, "_META_PLANS", {})
    odd = [b"X-ITEM%d" % k for k in range(wire._SHAPES_MAX + 5)]
    date = b'INTERNALDATE "01-Feb-2015 10:11:12 +0000"'
    for k, name in enumerate(odd):  # one new layout each, more than the bound
        metas_of(_parts([b"* 1 FETCH (UID %d %s %s 7)\r\n" % (k + 1, date, name)]))
    assert len(wire._SHAPES) == wire._SHAPES_MAX
    assert len(parse._META_PLANS) <= parse._META_PLANS_MAX
    parts = _parts([_meta_response(i, 10 + i) for i in range(1, 20)])
    expected = [meta_from(i) for i in fetch_items(parts)]

    def general(_: object) -> None:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(parse, "fetch_items", general)
    assert metas_of(parts) == expected
    assert len(wire._SHAPES) == wire._SHAPES_MAX
    # a layout used again is kept when others come: it moved to the most recent end
    assert list(wire._SHAPES)[-1][0][0] == b"UID"


@pytest.mark.usefixtures("fresh_layouts")
def test_the_usual_sizes_and_bodies_are_read_directly() -> None:
    sizes = _parts([b"* %d FETCH (UID %d RFC822.SIZE %d)\r\n" % (i, 10 + i, 99) for i in (1, 2)])
    assert uid_sizes_of(sizes) == [(11, 99), (12, 99)]
    body = _parts([b'* 1 FETCH (UID 5 FLAGS () INTERNALDATE "01-Feb-2015 10:11:12 +0000" '
                   b"BODY[] {3}\r\nabc)\r\n"])  # fmt: skip
    direct = messages_of(body)
    assert direct is not None and direct == [message_from(i) for i in fetch_items(body)]
    assert direct[0].body == bytearray(b"abc") and direct[0].uid == 5
