"""IMAP wire syntax, UID sets and response parsing (``imap.syntax.wire``, ``.uidset``,
``.parse``): pure, no server."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legacyflo_daemon.imap.syntax.parse import (
    EMPTY_BODY,
    EXCHANGE_FAILED,
    NO_BODY,
    SEQUENCE_KEY,
    ListEntry,
    appenduid,
    capabilities,
    code_capabilities,
    exchange_substitute,
    fetch_items,
    message_from,
    meta_from,
    parse_list,
    parse_mailbox,
    parse_namespace,
    parse_search,
)
from legacyflo_daemon.imap.syntax.uidset import MAX_UID, expand_uid_set, uid_batches
from legacyflo_daemon.imap.syntax.wire import (
    Literal,
    WireError,
    astring,
    date_time_arg,
    flag_list,
    quoted,
    responses,
    search_args,
    split_args,
)

UTC = dt.UTC

# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", '"INBOX"'),
        ("Sent Items", '"Sent Items"'),
        ("", '""'),
        ('Quote"d', '"Quote\\"d"'),
        ("back\\slash", '"back\\\\slash"'),
        ("Brace{1}", '"Brace{1}"'),
        ("x* y %", '"x* y %"'),
        ('p@ss"w0rd\\%*{}', '"p@ss\\"w0rd\\\\%*{}"'),
    ],
)
def test_quoted_escapes_only_quote_and_backslash(text: str, wire: str) -> None:
    assert quoted(text) == wire


@pytest.mark.parametrize("text", ["é", "a\rb", "a\nb", "a\0b", "Caf\u00e9"])
def test_quoted_refuses_what_needs_a_literal(text: str) -> None:
    with pytest.raises(ValueError, match="literal"):
        quoted(text)


def test_astring_uses_a_literal_for_8bit_and_line_breaks() -> None:
    assert astring("plain") == '"plain"'
    lit = astring('p@ss"w0rd\\%*{} é')
    assert isinstance(lit, Literal)
    assert lit.data == 'p@ss"w0rd\\%*{} é'.encode()
    crlf = astring("a\r\nb")
    assert isinstance(crlf, Literal) and crlf.data == b"a\r\nb"
    # A name a server sent as raw 8-bit (decoded with surrogateescape) goes back byte for byte.
    raw = b"Caf\xe9".decode("utf-8", "surrogateescape")
    back = astring(raw)
    assert isinstance(back, Literal) and back.data == b"Caf\xe9"


def test_astring_refuses_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        astring("a\0b")


def test_literal_repr_never_shows_the_payload() -> None:
    assert repr(Literal(b"secret password")) == "Literal(15 bytes)"
    assert "secret" not in str(Literal(b"secret"))


@pytest.mark.parametrize(
    ("criteria", "wire"),
    [
        (["ALL"], ["ALL"]),
        (
            ["SINCE", "25-Sep-2017", "BEFORE", "25-Sep-2018"],
            ["SINCE", "25-Sep-2017", "BEFORE", "25-Sep-2018"],
        ),
        (["UID", "1:*"], ["UID", "1:*"]),
        (["HEADER", "Message-ID", "<a@b.example>"], ["HEADER", "Message-ID", "<a@b.example>"]),
        (["SUBJECT", "two words"], ["SUBJECT", '"two words"']),
        (["SUBJECT", 'say "hi"'], ["SUBJECT", '"say \\"hi\\""']),
    ],
)
def test_search_args(criteria: list[str], wire: list[str]) -> None:
    assert search_args(criteria) == wire


@pytest.mark.parametrize("criteria", [[], ["SUBJECT", "café"]])
def test_search_args_refuses(criteria: list[str]) -> None:
    with pytest.raises(ValueError):
        search_args(criteria)


@pytest.mark.parametrize(
    ("flags", "wire"),
    [
        ([], None),
        (["\\Recent"], None),
        (["\\Seen", "\\RECENT", "$Forwarded"], "(\\Seen $Forwarded)"),
        (["\\Seen", "\\seen", "\\Flagged"], "(\\Seen \\Flagged)"),
        (["$Label1", "bad flag", "(x)", "", 'q"'], "($Label1)"),
        (
            ["\\Answered", "\\Draft", "\\Deleted", "NonJunk"],
            "(\\Answered \\Draft \\Deleted NonJunk)",
        ),
    ],
)
def test_flag_list_drops_recent_duplicates_and_unsendable(
    flags: list[str], wire: str | None
) -> None:
    assert flag_list(flags) == wire


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        ("26-Nov-2025 17:30:21 +0000", '"26-Nov-2025 17:30:21 +0000"'),
        ('"26-Nov-2025 17:30:21 +0000"', '"26-Nov-2025 17:30:21 +0000"'),
        (" 6-Jan-2015 09:30:00 -0700", '" 6-Jan-2015 09:30:00 -0700"'),
        ("06-jan-2015 09:30:00 +0530", '"06-jan-2015 09:30:00 +0530"'),
    ],
)
def test_date_time_arg_passes_the_server_string_through(raw: str, wire: str) -> None:
    assert date_time_arg(raw) == wire


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "26-Foo-2025 17:30:21 +0000",
        "26-Nov-2025 17:30:21",
        "2025-11-26T17:30:21Z",
        "31-Feb-2025 17:30:21 +0000",
    ],
)
def test_date_time_arg_refuses_non_imap_dates(raw: str) -> None:
    with pytest.raises(ValueError):
        date_time_arg(raw)


@pytest.mark.parametrize(
    ("args", "first", "now", "sends"),
    [
        (['"a"', '"b"'], ['"a"', '"b"'], [], []),
        (['"u"', Literal(b"pw")], ['"u"', "{2}"], [], [[b"pw", b"\r\n"]]),
        ([Literal(b"u"), Literal(b"pw")], ["{1}"], [], [[b"u", b" {2}\r\n"], [b"pw", b"\r\n"]]),
        (
            ['"box"', "(\\Seen)", Literal(b"BODY"), "x", "y"],
            ['"box"', "(\\Seen)", "{4}"],
            [],
            [[b"BODY", b" x y\r\n"]],
        ),
        (['"box"', Literal(b"BODY", nonsync=True)], ['"box"', "{4+}"], [b"BODY", b"\r\n"], []),
        (
            ["a", Literal(b"1", nonsync=True), "b", Literal(b"22"), "c"],
            ["a", "{1+}"],
            [b"1", b" b {2}\r\n"],
            [[b"22", b" c\r\n"]],
        ),
    ],
)
def test_split_args_cuts_commands_at_literals(
    args: list[str | Literal], first: list[str], now: list[bytes], sends: list[list[bytes]]
) -> None:
    assert split_args(args) == (first, now, sends)


# -- UID sets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uids", "cap", "batches"),
    [
        ("1:250,300", 100, ["1:100", "101:200", "201:250,300"]),
        ("5", 100, ["5"]),
        ("9:7", 2, ["7:8", "9"]),
        ([1, 2, 3, 5, 7, 8, 9, 200], 3, ["1:3", "5,7:8", "9,200"]),
        ([3, 1, 2, 2], 10, ["1:3"]),
        ([], 10, []),
    ],
)
def test_uid_batches(uids: str | list[int], cap: int, batches: list[str]) -> None:
    assert uid_batches(uids, cap) == batches


@pytest.mark.parametrize("uids", ["1:*", "*", "a", "0:5", "1,,2", [0], [2**32]])
def test_uid_batches_refuses_unknown_sizes_and_bad_uids(uids: str | list[int]) -> None:
    with pytest.raises(ValueError):
        uid_batches(uids, 100)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 5000), max_size=400),
    st.integers(1, 120),
    st.integers(12, 200),
)
def test_uid_batches_cover_every_uid_once_within_limits(
    uids: list[int], cap: int, max_len: int
) -> None:
    batches = uid_batches(uids, cap, max_len)
    seen = [u for b in batches for u in expand_uid_set(b)]
    assert sorted(seen) == sorted(set(uids))
    assert len(seen) == len(set(seen))
    assert all(len(expand_uid_set(b)) <= cap and len(b) <= max_len for b in batches)
    # The same set written as a string gives batches no wider than cap either.
    if batches:
        text = ",".join(batches)
        again = uid_batches(text, cap)
        assert sorted(u for b in again for u in expand_uid_set(b)) == sorted(set(uids))
        assert all(len(expand_uid_set(b)) <= cap for b in again)


# -- UID sets without a count limit (what identity.uid_sets asks for) --------------------------


@pytest.mark.parametrize(
    ("uids", "max_len", "expected"),
    [
        ([], 8000, []),
        ([5], 8000, ["5"]),
        ([1, 2, 3, 4, 5, 7, 9, 10, 11, 12], 8000, ["1:5,7,9:12"]),
        ([12, 1, 3, 2, 3, 11], 8000, ["1:3,11:12"]),  # unsorted, duplicates
        ([1, 3], 8000, ["1,3"]),
        ([1, 3, 5, 7], 3, ["1,3", "5,7"]),  # exactly max_len fits
        ([1, 3, 5, 7], 4, ["1,3", "5,7"]),
        ([1, 2, 3, 10], 3, ["1:3", "10"]),
        ([4294967294, 4294967295], 21, ["4294967294:4294967295"]),
    ],
)
def test_uid_batches_by_length(uids: list[int], max_len: int, expected: list[str]) -> None:
    assert uid_batches(uids, MAX_UID, max_len) == expected


@pytest.mark.parametrize(
    ("uids", "max_len", "message"),
    [
        ([0, 1], 8000, "out of range"),
        ([2**32], 8000, "out of range"),
        ([-1], 8000, "out of range"),
        ([100, 102], 2, "too small"),
    ],
)
def test_uid_batches_errors(uids: list[int], max_len: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        uid_batches(uids, MAX_UID, max_len)


def test_uid_batches_default_fits_exchange_command_limit() -> None:
    uids = list(range(1_000_000, 1_040_000, 2))  # 20,000 UIDs, no two consecutive
    sets = uid_batches(uids, MAX_UID)
    assert len(sets) > 1
    assert all(len(s) <= 8000 for s in sets)
    # "UID FETCH <set> (UID FLAGS INTERNALDATE RFC822.SIZE)" stays under MaxCommandSize 10240.
    assert all(
        len(f"A001 UID FETCH {s} (UID FLAGS INTERNALDATE RFC822.SIZE)\r\n") < 10240 for s in sets
    )


def _expand(sets: list[str]) -> list[int]:
    out: list[int] = []
    for s in sets:
        for piece in s.split(","):
            lo, _, hi = piece.partition(":")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


@given(
    st.lists(st.integers(min_value=1, max_value=2000), max_size=300),
    st.integers(min_value=9, max_value=200),
)
def test_uid_batches_by_length_cover_exactly(uids: list[int], max_len: int) -> None:
    sets = uid_batches(uids, MAX_UID, max_len)
    assert all(len(s) <= max_len for s in sets)
    assert all(re.fullmatch(r"\d+(:\d+)?(,\d+(:\d+)?)*", s) for s in sets)
    assert _expand(sets) == sorted(set(uids))


# -- generic response values -------------------------------------------------------------------


def test_responses_reads_fetch_items_in_any_order_with_literals() -> None:
    parts = [
        b'1 FETCH (UID 1 FLAGS (\\Seen) INTERNALDATE "26-Nov-2025 17:30:22 +0000" '
        b"BODY[HEADER.FIELDS (MESSAGE-ID)] {3}",
        bytearray(b"abc"),
        b" BODY[] {2}",
        bytearray(b"xy"),
        b")",
        b"2 FETCH (BODY[] {1}",
        bytearray(b"z"),
        b" FLAGS (\\Seen $Label1) UID 10)",
    ]
    assert responses(parts) == [
        [
            "1",
            "FETCH",
            [
                "UID",
                "1",
                "FLAGS",
                ["\\Seen"],
                "INTERNALDATE",
                "26-Nov-2025 17:30:22 +0000",
                "BODY[HEADER.FIELDS (MESSAGE-ID)]",
                bytearray(b"abc"),
                "BODY[]",
                bytearray(b"xy"),
            ],
        ],
        ["2", "FETCH", ["BODY[]", bytearray(b"z"), "FLAGS", ["\\Seen", "$Label1"], "UID", "10"]],
    ]


def test_responses_list_with_literal_name_then_next_response() -> None:
    parts = [b'(\\HasNoChildren) "/" "q\\"d"', b'() "/" {4}', bytearray(b"a* b"), b"() NIL INBOX"]
    assert responses(parts) == [
        [["\\HasNoChildren"], "/", 'q"d'],
        [[], "/", bytearray(b"a* b")],
        [[], None, "INBOX"],
    ]


def test_responses_keeps_a_quoted_nil_as_text() -> None:
    assert responses([b'"NIL" NIL nil ""']) == [["NIL", None, None, ""]]


@pytest.mark.parametrize(
    "parts",
    [
        [b"1 FETCH (UID 1"],
        [b"1 FETCH UID 1)"],
        [b"1 FETCH (BODY[] {3}"],
        [b"1 FETCH (BODY[] {3}", b")"],
        [bytearray(b"orphan literal")],
        [b'1 FETCH (FLAGS "unterminated)'],
    ],
)
def test_responses_refuses_broken_syntax(parts: list[bytes | bytearray]) -> None:
    with pytest.raises(WireError):
        responses(parts)


def _render(seq: int, items: list[tuple[str, object]]) -> list[bytes | bytearray]:
    """A FETCH response as aioimaplib hands it over: literal lines, bytearrays, continuations."""
    parts: list[bytes | bytearray] = []
    line = b"%d FETCH (" % seq
    for i, (key, value) in enumerate(items):
        line += (b"" if i == 0 else b" ") + key.encode() + b" "
        if isinstance(value, bytes):
            parts += [line + b"{%d}" % len(value), bytearray(value)]
            line = b""
        elif isinstance(value, list):
            line += b"(" + b" ".join(v.encode() for v in value) + b")"
        else:
            line += str(value).encode()
    parts.append(line + b")")
    return parts


_flag = st.sampled_from(
    ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "$Label1", "$Forwarded"]
)


@settings(max_examples=150, deadline=None)
@given(
    uid=st.integers(1, 2**32 - 1),
    flags=st.lists(_flag, unique=True),
    header=st.binary(max_size=300),
    body=st.binary(min_size=1, max_size=2000),
    order=st.permutations(range(5)),
)
def test_fetch_items_any_order_round_trip(
    uid: int, flags: list[str], header: bytes, body: bytes, order: list[int]
) -> None:
    date = '"26-Nov-2025 17:30:22 +0000"'
    items = [
        ("UID", uid),
        ("FLAGS", flags),
        ("INTERNALDATE", date),
        ("BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]", header),
        ("BODY[]", body),
    ]
    parts = _render(7, [items[i] for i in order])
    (item,) = fetch_items(parts)
    assert item["UID"] == str(uid)
    assert item["FLAGS"] == flags
    assert item["INTERNALDATE"] == date.strip('"')
    assert item["BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]"] == bytearray(header)
    assert item["BODY[]"] == bytearray(body)


# -- typed results -----------------------------------------------------------------------------


def test_capabilities() -> None:
    assert capabilities("IMAP4rev1 auth=plain SASL-IR") == {"IMAP4REV1", "AUTH=PLAIN", "SASL-IR"}
    greeting = (
        "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
        "AUTH=PLAIN] Dovecot ready."
    )
    assert code_capabilities(greeting) == {
        "IMAP4REV1",
        "SASL-IR",
        "LOGIN-REFERRALS",
        "ID",
        "ENABLE",
        "IDLE",
        "LITERAL+",
        "STARTTLS",
        "AUTH=PLAIN",
    }
    assert code_capabilities("* OK IMAP4rev1 Service Ready") is None


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b'(("" "/")) NIL NIL'], ("", "/")),
        ([b'(("INBOX." ".")) NIL NIL'], ("INBOX.", ".")),
        ([b'(("" NIL)) NIL NIL'], ("", None)),
        ([b"NIL NIL NIL"], ("", None)),
        ([b'(("INBOX/" "/")("#shared/" "/")) NIL NIL'], ("INBOX/", "/")),
    ],
)
def test_parse_namespace(lines: list[bytes], expected: tuple[str, str | None]) -> None:
    assert parse_namespace(lines) == expected


@pytest.mark.parametrize("lines", [[], [b"(x) NIL NIL"], [b'(("only")) NIL NIL']])
def test_parse_namespace_refuses(lines: list[bytes]) -> None:
    with pytest.raises(WireError):
        parse_namespace(lines)


def test_parse_list() -> None:
    lines = [
        b'(\\HasNoChildren) "/" "Sent Items"',
        b'(\\HasChildren \\Noselect) "/" INBOX/Projects',
        b'(\\HasNoChildren) "." "q\\"d \\\\ x"',
        b"() NIL Flat",
        b'(\\HasNoChildren) "/" {4}',
        bytearray(b"x* y"),
        b'(\\HasNoChildren) "/" "Caf&AOk-"',
    ]
    assert parse_list(lines) == [
        ListEntry("Sent Items", "/", frozenset({"\\HasNoChildren"})),
        ListEntry("INBOX/Projects", "/", frozenset({"\\HasChildren", "\\Noselect"})),
        ListEntry('q"d \\ x', ".", frozenset({"\\HasNoChildren"})),
        ListEntry("Flat", None, frozenset()),
        ListEntry("x* y", "/", frozenset({"\\HasNoChildren"})),
        ListEntry("Caf&AOk-", "/", frozenset({"\\HasNoChildren"})),
    ]
    assert not parse_list(lines)[1].selectable and parse_list(lines)[0].selectable


@pytest.mark.parametrize("lines", [[b'"/" INBOX'], [b"(\\Noselect) NIL NIL"], [b"()"]])
def test_parse_list_refuses(lines: list[bytes]) -> None:
    with pytest.raises(WireError):
        parse_list(lines)


@pytest.mark.parametrize(
    ("lines", "uids"),
    [([b"1 2 3"], [1, 2, 3]), ([b""], []), ([], []), ([b"4 9 (MODSEQ 12)", b"11"], [4, 9, 11])],
)
def test_parse_search(lines: list[bytes], uids: list[int]) -> None:
    assert parse_search(lines) == uids


def test_parse_mailbox_dovecot_select() -> None:
    lines = [
        b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)",
        b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)] "
        b"Flags permitted.",
        b"24 EXISTS",
        b"0 RECENT",
        b"OK [UNSEEN 3] First unseen.",
        b"OK [UIDVALIDITY 1795720126] UIDs valid",
        b"OK [UIDNEXT 25] Predicted next UID",
        b"OK [HIGHESTMODSEQ 1] Highest",
    ]
    info = parse_mailbox("INBOX", lines, "[READ-WRITE] Select completed (0.001 secs).")
    assert (info.name, info.exists, info.uidvalidity, info.uidnext) == ("INBOX", 24, 1795720126, 25)
    assert "\\*" in (info.permanent_flags or set()) and "$Forwarded" in info.flags
    assert not info.read_only
    examined = parse_mailbox("INBOX", [b"0 EXISTS"], "[READ-ONLY] Examine completed.")
    assert examined.read_only and examined.permanent_flags is None and examined.uidnext is None


@pytest.mark.parametrize(
    ("text", "uid"),
    [("[APPENDUID 1795720126 42] Append completed.", 42), ("Append completed.", None)],
)
def test_appenduid(text: str, uid: int | None) -> None:
    assert appenduid(text) == uid


def test_fetch_items_merges_by_sequence_number_and_drops_unsolicited() -> None:
    parts = [
        b"3 FETCH (UID 30 FLAGS (\\Seen))",
        b"4 FETCH (FLAGS (\\Deleted))",  # unsolicited update without UID: not ours
        b'3 FETCH (INTERNALDATE "01-Jan-2020 00:00:00 +0000")',
    ]
    (item,) = fetch_items(parts)
    assert item == {
        SEQUENCE_KEY: "3",  # which message it was (the session matches oversized bodies by it)
        "UID": "30",
        "FLAGS": ["\\Seen"],
        "INTERNALDATE": "01-Jan-2020 00:00:00 +0000",
    }


@pytest.mark.parametrize(
    "parts",
    [[b"1 FETCH (UID)"], [b"1 FETCH (UID 1 FLAGS)"], [b"x FETCH (UID 1)"], [b"1 FETCH ((UID) 1)"]],
)
def test_fetch_items_refuses_malformed(parts: list[bytes]) -> None:
    with pytest.raises(WireError):
        fetch_items(parts)


HEADER = b"Message-ID: <a@b>\r\nSubject: hi\r\n\r\n"


def test_meta_from() -> None:
    item = {
        "UID": "7",
        "FLAGS": ["\\Seen", "\\Recent"],
        "INTERNALDATE": "26-Nov-2025 17:30:22 +0100",
        "RFC822.SIZE": "1234",
        "BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]": bytearray(HEADER),
    }
    meta = meta_from(item)
    assert (meta.uid, meta.flags, meta.size, meta.header) == (
        7,
        ("\\Seen", "\\Recent"),
        1234,
        HEADER,
    )
    assert meta.internaldate == dt.datetime(2025, 11, 26, 16, 30, 22, tzinfo=UTC)
    assert meta.internaldate_raw == "26-Nov-2025 17:30:22 +0100"
    assert isinstance(meta.header, bytes)


@pytest.mark.parametrize(("value", "header"), [("", b""), (None, b""), ("x", b"x")])
def test_meta_from_header_as_quoted_string_or_nil(value: str | None, header: bytes) -> None:
    item = {
        "UID": "1",
        "INTERNALDATE": "01-Jan-2020 00:00:00 +0000",
        "BODY[HEADER.FIELDS (DATE)]": value,
    }
    assert meta_from(item).header == header


@pytest.mark.parametrize(
    "item",
    [
        {"UID": "1"},
        {"UID": "1", "INTERNALDATE": "yesterday"},
        {"INTERNALDATE": "01-Jan-2020 00:00:00 +0000"},
    ],
)
def test_meta_from_refuses_missing_date_or_uid(item: dict) -> None:
    with pytest.raises(WireError):
        meta_from(item)


RETRIEVAL = b"Retrieval using the IMAP4 protocol failed for the following message"
SUBSTITUTE = (
    b"From: Microsoft Exchange Server\r\n"
    b"Subject: Retrieval using the IMAP4 protocol failed for the following message: 205\r\n"
    b"\r\nThe server couldn't retrieve the following message:\r\n"
)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (bytearray(b"Subject: x\r\n\r\nhello\r\n"), None),
        (None, NO_BODY),
        ("missing", NO_BODY),
        (bytearray(), EMPTY_BODY),
        (bytearray(SUBSTITUTE), EXCHANGE_FAILED),
        (bytearray(SUBSTITUTE.replace(b"Subject: ", b"subject:\t")), EXCHANGE_FAILED),
        (bytearray(b"Subject: Fwd: " + RETRIEVAL + b": 1\r\n\r\n"), None),
        (bytearray(b"Subject: report\r\n\r\nSubject: " + RETRIEVAL + b"\r\n"), None),
    ],
)
def test_message_from_body_trouble_is_a_per_message_error(body: object, error: str | None) -> None:
    item: dict = {"UID": "5", "FLAGS": ["\\Seen"], "INTERNALDATE": "26-Nov-2025 17:30:22 +0000"}
    if body != "missing":
        item["BODY[]"] = body
    msg = message_from(item)
    assert msg.uid == 5 and msg.flags == ("\\Seen",) and msg.error == error
    assert msg.internaldate_raw == "26-Nov-2025 17:30:22 +0000"
    if error is None:
        assert msg.body is body  # the literal itself: a 50 MB body is not copied
    else:
        assert msg.body is None


def test_exchange_substitute_only_looks_at_the_header() -> None:
    assert exchange_substitute(SUBSTITUTE)
    assert not exchange_substitute(b"Subject: ok\r\n\r\n" + SUBSTITUTE)


# -- the FETCH fast path reads exactly what the general tokenizer reads -------------------------


def _general_fetch_items(parts: list[bytes | bytearray]) -> list[dict[str, object]]:
    """``fetch_items`` as it was before ``wire.fetch_at``: the general tokenizer only."""
    merged: dict[str, dict[str, object]] = {}
    for resp in responses(parts):
        if len(resp) != 3 or not isinstance(resp[1], str) or resp[1].upper() != "FETCH":
            continue
        seq, items = resp[0], resp[2]
        if not isinstance(seq, str) or not seq.isdigit() or not isinstance(items, list):
            raise WireError("malformed FETCH response")
        if len(items) % 2:
            raise WireError("malformed FETCH response")
        entry = merged.setdefault(seq, {"#SEQ": seq})
        for k in range(0, len(items), 2):
            if not isinstance(items[k], str):
                raise WireError("malformed FETCH item name")
            entry[" ".join(items[k].upper().split())] = items[k + 1]
    return [e for e in merged.values() if isinstance(e.get("UID"), str)]


_piece = st.sampled_from(
    [b"UID", b" ", b"  ", b"1", b"42", b"FLAGS", b"(", b")", b"(\\Seen $X)", b"()", b"NIL",
     b"nil", b'"a b"', b'"q\\"x"', b'"(("', b'""', b"INTERNALDATE", b"RFC822.SIZE",
     b"BODY[HEADER.FIELDS (DATE FROM)]", b"BODY[]", b"BODY[]<0>", b"{3}", b"{0}", b"X-Y",
     b"\\Seen", b"[", b"]", b"{", b"*", b"%", b"\t", b"\xc3\xa9", b"FETCH", b"fetch"]
)  # fmt: skip


_names = st.sampled_from(
    [b"UID", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"BODY[HEADER.FIELDS (DATE FROM)]",
     b"BODY[]", b"BODY[]<0>", b"X-Y", b"uid", b"Body[]"]
)  # fmt: skip
_values = st.sampled_from(
    [b"1", b"42", b"NIL", b"nil", b"Nil", b'"NIL"', b'"a b"', b'"q\\"x"', b'"(("', b'""',
     b"(\\Seen $X)", b"()", b"(NIL a)", b"( a  b )", b"((a))", b"\xc3\xa9", b"a[b]", b"x<1.2>"]
)  # fmt: skip


@st.composite
def _fetch_parts(draw: st.DrawFn) -> list[bytes | bytearray]:
    """Several untagged responses: mostly well-formed FETCH responses with a UID and items of
    every value kind (NIL in any case, quoted strings with escapes, lists, literals anywhere),
    some with odd spacing or junk, some broken."""
    parts: list[bytes | bytearray] = []
    for seq in range(1, draw(st.integers(1, 4)) + 1):
        head = draw(st.sampled_from([b"FETCH", b"Fetch", b"FETCH ", b"X"]))
        line = b"%d %s (UID %d" % (seq, head, draw(st.integers(1, 99)))
        for _ in range(draw(st.integers(0, 5))):
            line += draw(st.sampled_from([b" ", b"  "])) + draw(_names) + b" "
            if draw(st.integers(0, 4)) == 0:
                data = draw(st.binary(max_size=8))
                parts += [line + b"{%d}" % len(data), bytearray(data)]
                line = b""
            else:
                line += draw(_values)
            if draw(st.integers(0, 9)) == 0:
                line += b"".join(draw(st.lists(_piece, max_size=3)))
        parts.append(line + draw(st.sampled_from([b")", b")", b")", b"", b"))", b") x"])))
    return parts


@settings(max_examples=600, deadline=None)
@given(_fetch_parts())
def test_fetch_items_equals_the_general_tokenizer(parts: list[bytes | bytearray]) -> None:
    try:
        expected: object = _general_fetch_items(parts)
    except WireError:
        expected = WireError
    try:
        got: object = fetch_items(parts)
    except WireError:
        got = WireError
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(1, 2**32 - 1),
            st.lists(_flag, unique=True),
            st.text(st.characters(codec="utf-8", exclude_characters='\r\n"\\'), max_size=20),
            st.binary(max_size=50),
            st.sampled_from([b")", b" X 1)", b"))"]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fetch_items_equal_across_responses_of_one_layout(
    rows: list[tuple[int, list[str], str, bytes, bytes]],
) -> None:
    """Responses of one layout (read by the remembered ``_Shape``) and ones that differ in a
    detail (read again item by item) give what the general tokenizer gives."""
    parts: list[bytes | bytearray] = []
    for seq, (uid, flags, text, header, tail) in enumerate(rows, start=1):
        line = b'%d FETCH (UID %d FLAGS (%s) X-NOTE "%s" BODY[HEADER] {%d}' % (
            seq, uid, " ".join(flags).encode(), text.encode(), len(header)
        )  # fmt: skip
        parts += [line, bytearray(header), tail]
    try:
        expected: object = _general_fetch_items(parts)
    except WireError:
        expected = WireError
    try:
        got: object = fetch_items(parts)
    except WireError:
        got = WireError
    assert got == expected
