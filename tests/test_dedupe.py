"""Message identity, the multiset copy plan, UID sets and batches (docs/contract.md §5.3)."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legacyflo_daemon.transfer.identity import Matcher, batches, identity, missing

UTC = dt.UTC
T0 = dt.datetime(2020, 1, 1, 0, 0, 0, tzinfo=UTC)  # epoch 1577836800
E0 = 1577836800
KEY_RE = re.compile(r"(id -?\d+ [\x21-\x7e]+|(idh|hdr) -?\d+ [0-9a-f]{64})")


def key_of(headers: bytes, when: dt.datetime = T0) -> str:
    return identity(headers, when)


# --- identity with a Message-ID ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"Message-ID: <abc@example.com>\r\n\r\n", f"id {E0} <abc@example.com>"),
        (b"Message-ID: <abc@example.com>\n\n", f"id {E0} <abc@example.com>"),  # LF only
        (b"message-id: <abc@example.com>\r\n", f"id {E0} <abc@example.com>"),  # no blank line
        (b"MESSAGE-ID:<abc@example.com>\r\n\r\n", f"id {E0} <abc@example.com>"),
        (b"Message-Id:   <abc@example.com>   \r\n\r\n", f"id {E0} <abc@example.com>"),
        (b"Message-ID:\r\n <abc@example.com>\r\n\r\n", f"id {E0} <abc@example.com>"),  # folded
        (
            b"Message-ID: <very-long-id\r\n\t@example.com>\r\n",
            f"id {E0} <very-long-id@example.com>",
        ),
        (b"Message-ID : <abc@example.com>\r\n\r\n", f"id {E0} <abc@example.com>"),  # obs-syntax
        (b"Message-ID: abc@example.com\r\n\r\n", f"id {E0} abc@example.com"),  # brackets as sent
        (b"Message-ID: <ABC@Example.COM>\r\n\r\n", f"id {E0} <ABC@Example.COM>"),  # case kept
        (  # duplicate header: the first wins
            b"Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n\r\n",
            f"id {E0} <first@x>",
        ),
        (  # the fields of a HEADER.FIELDS fetch, in any order
            b"Subject: hi\r\nFrom: a@b\r\nMessage-ID: <abc@x>\r\nDate: Wed, 1 Jan 2020\r\n\r\n",
            f"id {E0} <abc@x>",
        ),
        (  # a whole message: the header ends at the first empty line
            b"Message-ID: <head@x>\r\nSubject: s\r\n\r\nMessage-ID: <body@x>\r\n",
            f"id {E0} <head@x>",
        ),
        (  # an mbox separator line and garbage lines are ignored
            b"From someone@x Wed Jan  1 00:00:00 2020\r\ngarbage\r\nMessage-ID: <m@x>\r\n\r\n",
            f"id {E0} <m@x>",
        ),
    ],
)
def test_identity_with_message_id(headers: bytes, expected: str) -> None:
    assert key_of(headers) == expected


def test_message_id_is_case_sensitive() -> None:
    assert key_of(b"Message-ID: <ABC@x>\r\n") != key_of(b"Message-ID: <abc@x>\r\n")


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(2020, 1, 1, 0, 0, 0, tzinfo=UTC),
        dt.datetime(2020, 1, 1, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime(2019, 12, 31, 19, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(2020, 1, 1, 0, 0, 0, 900000, tzinfo=UTC),  # IMAP has whole seconds
    ],
)
def test_internaldate_is_an_instant(when: dt.datetime) -> None:
    assert key_of(b"Message-ID: <a@x>\r\n", when) == f"id {E0} <a@x>"


def test_internaldate_is_part_of_the_identity() -> None:
    later = T0 + dt.timedelta(seconds=1)
    assert key_of(b"Message-ID: <a@x>\r\n", later) != key_of(b"Message-ID: <a@x>\r\n")
    assert key_of(b"Subject: s\r\n", later) != key_of(b"Subject: s\r\n")


def test_internaldate_before_1970_rounds_down() -> None:
    when = dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)
    assert key_of(b"Message-ID: <a@x>\r\n", when) == "id -1 <a@x>"


def test_naive_internaldate_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        identity(b"Message-ID: <a@x>\r\n", dt.datetime(2020, 1, 1))


def test_bytearray_input_as_aioimaplib_returns_it() -> None:
    data = bytearray(b"Message-ID: <a@x>\r\n\r\nbody")
    assert identity(data, T0) == f"id {E0} <a@x>"


def test_eight_bit_message_id_gives_an_ascii_key() -> None:
    key = key_of("Message-ID: <café@x>\r\n".encode())
    assert key.startswith(f"idh {E0} ")
    assert key.isascii()
    assert key != key_of(b"Message-ID: <cafe@x>\r\n")


def test_size_and_body_are_not_part_of_the_identity() -> None:
    head = b"Message-ID: <a@x>\r\nSubject: s\r\n\r\n"
    assert key_of(head + b"short") == key_of(head + b"x" * 100_000)
    nohead = b"Subject: s\r\nFrom: a@b\r\n\r\n"
    assert key_of(nohead + b"short") == key_of(nohead + b"x" * 100_000)


# --- identity without a Message-ID ---------------------------------------------------------

BASE = (
    b"Date: Wed, 1 Jan 2020 00:00:00 +0000\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: Quarterly report\r\n\r\n"
)


@pytest.mark.parametrize(
    "headers",
    [
        BASE,
        BASE.replace(b"\r\n", b"\n"),
        b"Message-ID: \r\n" + BASE,  # empty Message-ID counts as absent
        b"Message-ID: <>\r\n" + BASE,
        b"Message-ID:   \r\n  \r\n" + BASE,
        BASE.replace(b"Subject: Quarterly report", b"Subject: Quarterly\r\n  report"),
        BASE.replace(b"Subject: Quarterly report", b"SUBJECT:   Quarterly \t report  "),
        b"Received: from x\r\nX-Other: y\r\n" + BASE,  # other fields do not count
        b"To: bob@example.com\r\nSubject: Quarterly report\r\n"  # field order does not count
        b"From: Alice <alice@example.com>\r\nDate: Wed, 1 Jan 2020 00:00:00 +0000\r\n\r\n",
        BASE + b"Subject: a second subject is ignored\r\n",
    ],
)
def test_header_hash_is_stable_under_formatting(headers: bytes) -> None:
    key = key_of(headers)
    assert key.startswith(f"hdr {E0} ")
    assert key == key_of(BASE)


@pytest.mark.parametrize(
    "headers",
    [
        BASE.replace(b"Quarterly report", b"Quarterly Report"),
        BASE.replace(b"bob@example.com", b"carol@example.com"),
        BASE.replace(b"alice@example.com", b"alice@example.org"),
        BASE.replace(b"1 Jan 2020 00:00:00", b"1 Jan 2020 00:00:01"),
        BASE.replace(b"Subject: Quarterly report\r\n", b""),
        BASE.replace(b"Subject: Quarterly report", b"Subject: =?utf-8?q?Quarterly_report?="),
        b"\r\n" + BASE,  # a message that starts with an empty line has no header
    ],
)
def test_header_hash_changes_with_content(headers: bytes) -> None:
    assert key_of(headers) != key_of(BASE)


def test_header_hash_fields_cannot_shift_into_each_other() -> None:
    assert key_of(b"From: a\r\nTo: \r\n") != key_of(b"From: \r\nTo: a\r\n")


def test_header_hash_takes_eight_bit_and_encoded_words() -> None:
    raw = "Subject: Réunion\r\nFrom: Zoë <z@x>\r\n\r\n".encode()
    latin = "Subject: Réunion\r\nFrom: Zoë <z@x>\r\n\r\n".encode("latin-1")
    assert key_of(raw).startswith("hdr ")
    assert key_of(raw) != key_of(latin)  # raw bytes, not a guessed decoding
    assert key_of(raw) == key_of(raw.replace(b"\r\n", b"\n"))


_FIELD_NAMES = st.sampled_from(
    [b"Message-ID", b"message-id", b"Date", b"From", b"To", b"Subject", b"X-Other", b" ", b""]
)
_HEADER_LINES = st.lists(
    st.tuples(_FIELD_NAMES, st.sampled_from([b":", b" :", b""]), st.binary(max_size=40)),
    max_size=8,
)


@given(
    _HEADER_LINES,
    st.sampled_from([b"\r\n", b"\n"]),
    st.binary(max_size=50),
    st.integers(min_value=-(2**31), max_value=2**33),
)
def test_identity_never_fails_and_is_ascii(
    lines: list[tuple[bytes, bytes, bytes]], eol: bytes, tail: bytes, epoch: int
) -> None:
    data = eol.join(name + colon + value for name, colon, value in lines) + eol + tail
    key = identity(data, dt.datetime.fromtimestamp(epoch, UTC))
    assert key.isascii()
    assert KEY_RE.fullmatch(key), key
    assert key.split(" ")[1] == str(epoch)
    # Only the header counts: whatever follows the first empty line changes nothing.
    assert identity(data + eol + eol + b"Message-ID: <x@y>" + eol, T0) == identity(data, T0)


# --- missing: the multiset copy plan -------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        ([], [], []),
        ([(1, "a"), (2, "b")], [], [1, 2]),  # first run
        ([(1, "a"), (2, "b")], ["a", "b"], []),  # re-run adds nothing
        ([(1, "a"), (2, "b"), (3, "c")], ["b"], [1, 3]),  # partial prior copy
        ([(1, "a"), (2, "a"), (3, "a")], [], [1, 2, 3]),  # genuine duplicates all arrive
        ([(1, "a"), (2, "a"), (3, "a")], ["a"], [2, 3]),  # k - j copies, the last UIDs
        ([(3, "a"), (1, "a"), (2, "a")], ["a", "a"], [3]),  # UID order, not input order
        ([(1, "a"), (2, "a")], ["a", "a", "a"], []),  # more in dest than in source
        ([(1, "a")], ["x", "y", "a", "z"], []),  # dest extras ignored
        ([(1, "a"), (2, "b")], ["x"], [1, 2]),
        ([(9, "b"), (4, "a"), (7, "b"), (2, "a")], ["a", "b"], [4, 9]),  # result ascending
    ],
)
def test_missing(source: list[tuple[int, str]], dest: list[str], expected: list[int]) -> None:
    assert missing(source, dest) == expected


def test_missing_accepts_any_iterable_of_dest_keys() -> None:
    assert missing([(1, "a"), (2, "b")], (k for k in ["a"])) == [2]


_KEYS = st.sampled_from(["a", "b", "c", "d"])


@given(
    st.lists(_KEYS, max_size=30),
    st.lists(_KEYS, max_size=30),
)
def test_missing_copies_exactly_the_multiset_difference(
    src_keys: list[str], dest: list[str]
) -> None:
    source = list(enumerate(src_keys, start=1))
    todo = missing(source, dest)
    assert todo == sorted(set(todo))
    by_uid = dict(source)
    added = Counter(by_uid[u] for u in todo)
    want = Counter(src_keys) - Counter(dest)
    assert added == want
    # After copying them, a re-run finds nothing.
    assert missing(source, dest + [by_uid[u] for u in todo]) == []


@given(
    st.lists(_KEYS, max_size=30),
    st.lists(_KEYS, max_size=30),
    st.lists(st.booleans(), max_size=60),
)
def test_matcher_finds_what_missing_finds_in_any_interleaving(
    src_keys: list[str], dest: list[str], order: list[bool]
) -> None:
    """The streaming comparison (source in UID order, the destination in any order, the two
    interleaved as the servers answer) picks exactly the UIDs ``missing`` picks, and leaves
    over exactly the destination keys no source message has."""
    source = list(enumerate(src_keys, start=1))
    matcher: Matcher[int] = Matcher()
    s_iter, d_iter = iter(source), iter(dest)
    for take_source in [*order, *([True] * len(source)), *([False] * len(dest))]:
        if take_source:
            if (nxt := next(s_iter, None)) is not None:
                matcher.add_source(nxt[1], nxt[0])
        elif (key := next(d_iter, None)) is not None:
            matcher.add_dest(key)
    todo = missing(source, dest)
    assert sorted(uid for _, uid in matcher.missing()) == todo
    assert all(dict(source)[uid] == key for key, uid in matcher.missing())
    assert matcher.source == len(source)
    assert matcher.present == len(source) - len(todo)
    assert matcher.left() == Counter(dest) - Counter(src_keys)


# --- batches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "max_count", "max_bytes", "expected"),
    [
        ([], 10, 100, []),
        ([(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)], 2, 100, [[1, 2], [3, 4], [5]]),
        ([(1, 3), (2, 3), (3, 3)], 10, 6, [[1, 2], [3]]),  # exactly max_bytes fits
        ([(1, 3), (2, 4)], 10, 6, [[1], [2]]),
        ([(1, 10), (2, 1)], 10, 5, [[1], [2]]),  # an oversized message alone
        ([(1, 1), (2, 10), (3, 1)], 10, 5, [[1], [2], [3]]),
        ([(9, 1), (3, 1), (5, 1)], 2, 100, [[9, 3], [5]]),  # order kept
        ([(1, 0), (2, 0), (3, 0)], 2, 1, [[1, 2], [3]]),
        ([(1, -5), (2, 5)], 10, 5, [[1, 2]]),  # a nonsense negative estimate counts as 0
    ],
)
def test_batches(
    items: list[tuple[int, int]], max_count: int, max_bytes: int, expected: list[list[int]]
) -> None:
    assert batches(items, max_count, max_bytes) == expected


@pytest.mark.parametrize(("max_count", "max_bytes"), [(0, 10), (10, 0), (-1, -1)])
def test_batches_bad_limits(max_count: int, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        batches([(1, 1)], max_count, max_bytes)


@given(
    st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 1000)), max_size=100),
    st.integers(1, 10),
    st.integers(1, 2000),
)
def test_batches_properties(items: list[tuple[int, int]], max_count: int, max_bytes: int) -> None:
    out = batches(items, max_count, max_bytes)
    assert [u for b in out for u in b] == [u for u, _ in items]
    sizes = iter(s for _, s in items)
    for batch in out:
        total = sum(next(sizes) for _ in batch)
        assert 1 <= len(batch) <= max_count
        assert total <= max_bytes or len(batch) == 1
