"""Read-back judgement (transfer/readback.py): pure, no server."""

from __future__ import annotations

from legacyflo_daemon.transfer.readback import (
    Appended,
    Stored,
    compare,
    eight_bit_header,
    judge,
    likely_cause,
    pair,
    reason,
)

H = b"Message-ID: <a@x>\r\nSubject: R\xc3\xa9union\r\n"
H_MUNGED = b"Message-ID: <a@x>\r\nSubject: RXXunion\r\n"


def app(uid: int, key: str, size: int = 100, header: bytes = b"Subject: s\r\n",
        block: bytes | None = None) -> Appended:  # fmt: skip
    return Appended(uid, key, size, header, block)


def st(uid: int, key: str, size: int = 100, header: bytes = b"Subject: s\r\n") -> Stored:
    return Stored(uid, key, size, header)


def test_exact_copies_are_confirmed_whatever_uid_order() -> None:
    sent = [app(1, "k1"), app(2, "k2"), app(3, "k1")]
    stored = [st(12, "k2"), st(10, "k1"), st(11, "k1")]
    assert compare(sent, stored) == []


def test_a_changed_size_or_identity_is_altered_and_paired_in_uid_order() -> None:
    sent = [app(1, "k1"), app(2, "k2", size=50), app(3, "k3")]
    stored = [st(10, "k1"), st(11, "k2", size=48), st(12, "k3-other")]
    changes = compare(sent, stored)
    assert [(c.appended.uid, c.stored.uid if c.stored else None) for c in changes] == [
        (2, 11),
        (3, 12),
    ]
    assert changes[0].difference == "size 50 → 48 bytes"


def test_a_message_missing_after_ok_is_reported_not_stored() -> None:
    (change,) = compare([app(1, "k1"), app(2, "k2")], [st(10, "k1")])
    assert change.appended.uid == 2 and change.stored is None
    assert reason(change).startswith("altered by the destination: not found in the folder")


def test_stored_messages_of_someone_else_are_ignored() -> None:
    assert compare([app(1, "k1")], [st(9, "other"), st(10, "k1")]) == []


def test_munge8bit_is_recognised_in_identity_fields() -> None:
    (change,) = compare([app(1, "k", header=H)], [st(5, "k", header=H_MUNGED)])
    assert change.difference == "header Subject changed"
    assert "munge8bit" in change.cause
    assert "munge8bit" in reason(change)


def test_eight_bit_headers_are_judged_by_their_whole_block() -> None:
    body = b"X-Note: \xc3\xbc\r\nSubject: plain\r\n\r\nbody \xc3\xbc\r\n"
    block = eight_bit_header(body)
    assert block == b"X-Note: \xc3\xbc\r\nSubject: plain\r\n\r\n"
    assert eight_bit_header(b"Subject: plain\r\n\r\nbody \xc3\xbc") is None  # body bytes: no
    sent = app(1, "k", header=b"Subject: plain\r\n", block=block)
    # The stored side is the whole header block (BODY.PEEK[HEADER]); the identity fields of
    # both sides are what is compared, whatever else the block holds.
    assert judge(pair([sent], [st(7, "k", header=block)])) == []  # identical block: faithful
    munged = block.replace(b"\xc3\xbc", b"XX")
    (change,) = judge(pair([sent], [st(7, "k", header=munged)]))
    assert change.difference == "header bytes changed"
    assert "munge8bit" in change.cause


def test_likely_cause_unknown_for_other_rewrites() -> None:
    assert likely_cause(b"Subject: a\r\n", b"Subject: b\r\n") == ""
    assert "not ASCII" in likely_cause(b"Subject: \xc3\xa9\r\n", b"Subject: =?utf-8?q?=C3=A9?=\r\n")


def test_trust_is_earned_per_kind_and_lost_for_good_by_one_alteration() -> None:
    from legacyflo_daemon.transfer.readback import PROBATION, PROBATION_8BIT, Altered, Trust

    trust = Trust()
    plain = [app(i, f"k{i}") for i in range(PROBATION)]
    assert not trust.skip(0)
    trust.learn(plain[:-1], [])
    assert not trust.skip(0)  # one short of the probation
    trust.learn(plain[-1:], [])
    assert trust.skip(0) and not trust.skip(1)  # 8-bit mail has not proven itself yet
    eight = [app(1000 + i, f"e{i}", block=b"S: \xc3\xa9\r\n\r\n") for i in range(PROBATION_8BIT)]
    trust.learn(eight, [])
    assert trust.skip(3)
    cyrus = Trust()
    cyrus.learn(plain, [])
    cyrus.learn(eight, [Altered(eight[0], None, "x", "")])  # munged once: 8-bit never skipped
    assert cyrus.skip(0) and not cyrus.skip(1)
    bad = Trust()
    bad.learn(plain, [Altered(plain[0], None, "x", "")])
    assert not bad.skip(0)
