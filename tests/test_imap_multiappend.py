"""``Session.append_many``: MULTIAPPEND + LITERAL+ stores a batch in one round trip; a refused
message fails alone (MULTIAPPEND is atomic, so the batch is then retried one by one)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pytest

from legacyflo_daemon.errors import AppendDesync
from legacyflo_daemon.imap import session as imap
from legacyflo_daemon.imap.syntax.utf7 import encode as mutf7
from legacyflo_daemon.request.dates import parse_date_time
from testkit.corpus import MAIL_FOLDERS, load_exchange_corpus
from testkit.imap import ServerAccount
from testkit.mailgen import make_message, utc
from testkit.proxy import FaultProxy
from tests.test_imap import endpoint

ProxyFactory = Callable[[str, int], FaultProxy]


def batch(n: int) -> list[tuple[bytes, list[str], str]]:
    return [
        (
            make_message(subject=f"m{i}", date=utc(2018, 1, i + 1), message_id=f"<m{i}@x>"),
            ["\\Seen", "$Label1"] if i % 2 else [],
            f"{i + 1:02d}-Jan-2018 10:00:00 +0100",
        )
        for i in range(n)
    ]


def stored(acct: ServerAccount, folder: str) -> list[tuple[str, bytes]]:
    with acct.imap() as c:
        c.select(folder, readonly=True)
        _, data = c.uid("fetch", "1:*", "(INTERNALDATE BODY.PEEK[])")
    out = []
    for item in data:
        if isinstance(item, tuple):
            meta = item[0].decode()
            out.append((meta[meta.index('"') + 1 : meta.index('"') + 27], item[1]))
    return out


async def test_a_batch_costs_one_round_trip(
    dest_account: ServerAccount, fault_proxy: ProxyFactory
) -> None:
    proxy = fault_proxy(dest_account.host, dest_account.port_tls)
    messages = batch(6)
    async with await imap.connect(endpoint(dest_account, host=proxy.host, port=proxy.port)) as s:
        assert {"MULTIAPPEND", "LITERAL+"} <= s.capabilities
        proxy.latency = 0.2  # 0.4 s per round trip
        start = time.monotonic()
        assert await s.append_many("INBOX", messages) == [None] * 6
        elapsed = time.monotonic() - start
    assert elapsed < 0.8, elapsed  # six sequential APPENDs would need at least 2.4 s
    got = stored(dest_account, "INBOX")
    assert [hashlib.sha256(b).hexdigest() for _, b in got] == [
        hashlib.sha256(m[0]).hexdigest() for m in messages
    ]
    assert [parse_date_time(d) for d, _ in got] == [parse_date_time(m[2]) for m in messages]


async def test_without_multiappend_each_message_is_appended(dest_account: ServerAccount) -> None:
    messages = batch(3)
    async with await imap.connect(endpoint(dest_account)) as s:
        s._conn.capabilities -= {"MULTIAPPEND"}
        assert await s.append_many("INBOX", messages) == [None] * 3
    assert [b for _, b in stored(dest_account, "INBOX")] == [m[0] for m in messages]


async def test_bad_after_streamed_data_drops_the_connection(dest_account: ServerAccount) -> None:
    """Dovecot answers BAD to an invalid system flag and then parses the rest of the streamed
    literals as commands ("Too many invalid IMAP commands"): the boundary must not go on."""
    messages = batch(3)
    bad = (messages[1][0], ["\\Forwarded"], messages[1][2])
    async with await imap.connect(endpoint(dest_account)) as s:
        with pytest.raises(AppendDesync, match="BAD"):
            await s.append_many("INBOX", [messages[0], bad, messages[2]])
        assert not s.alive
    assert stored(dest_account, "INBOX") == []  # MULTIAPPEND is all or nothing


async def test_cautious_mode_lets_a_refused_message_fail_alone(
    dest_account: ServerAccount,
) -> None:
    messages = batch(3)
    bad = (messages[1][0], ["\\Forwarded"], messages[1][2])
    async with await imap.connect(endpoint(dest_account)) as s:
        outcome = await s.append_many("INBOX", [messages[0], bad, messages[2]], cautious=True)
        assert s.alive
    assert outcome[0] is None and outcome[2] is None
    assert outcome[1] is not None and "APPEND" in outcome[1]
    assert [b for _, b in stored(dest_account, "INBOX")] == [messages[0][0], messages[2][0]]


async def test_metadata_of_a_whole_folder_by_sequence_numbers(
    source_account: ServerAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fetch_meta_all`` (no UID SEARCH) returns what UID SEARCH ALL + ``fetch_meta`` do,
    across several batches."""
    manifest = load_exchange_corpus(source_account.server, source_account.user)
    monkeypatch.setattr(imap, "META_BATCH", 3)
    async with await imap.connect(endpoint(source_account)) as s:
        for folder in MAIL_FOLDERS:
            info = await s.examine(mutf7(folder))
            by_seq = await s.fetch_meta_all(info.exists)
            by_uid = await s.fetch_meta(await s.uid_search(["ALL"])) if info.exists else []
            assert by_seq == by_uid, folder
            assert len(by_seq) == len(manifest.messages(folder))
