"""Metadata FETCHes join units of ``META_BATCH`` while their answers stay small (issue 14).

``_units_after`` decides from the batch just read how many units the next FETCH takes (up to
``META_MERGE``, fewer when header fields are large, so the memory a batch holds stays near
``META_BATCH_BYTES``); ``_joined`` writes them as one set list within Exchange's command size.
Against the real source server: a folder read with joined FETCHes gives exactly what one
unit per FETCH gives, and the joined sets were really sent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from legacyflo_daemon.imap import session as imap
from legacyflo_daemon.imap.session import Session, _joined, _units_after
from legacyflo_daemon.imap.syntax.parse import MessageMeta
from legacyflo_daemon.imap.syntax.uidset import MAX_SET_LEN
from legacyflo_daemon.imap.syntax.utf7 import encode as mutf7
from testkit.corpus import MAIL_FOLDERS, load_exchange_corpus
from testkit.imap import ServerAccount
from tests.test_imap import endpoint

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


def _metas(count: int, header_bytes: int) -> list[MessageMeta]:
    return [MessageMeta(i, (), NOW, "", 2000, b"x" * header_bytes) for i in range(1, count + 1)]


def test_the_next_fetch_joins_units_while_the_headers_are_small() -> None:
    assert _units_after(None) == 1  # nothing read yet: one unit
    assert _units_after([]) == 1
    assert _units_after(_metas(1000, 250)) == imap.META_MERGE  # the usual few hundred bytes
    assert _units_after(_metas(10, 250)) == imap.META_MERGE  # judged per message, not per batch
    # ~1.1 KB a message: 4 MiB / 1.1 MB per unit -> 3 units
    assert _units_after(_metas(1000, 1000)) == 3
    # a To: of a few hundred recipients: one unit, as before joining existed
    assert _units_after(_metas(1000, 12_000)) == 1


def test_joined_sets_are_one_set_list_of_one_kind_within_the_command_size() -> None:
    seq = [("1:1000", False), ("1001:2000", False), ("2001:2500", False)]
    assert _joined(seq, 0, 4) == ("1:1000,1001:2000,2001:2500", False, 3)
    assert _joined(seq, 0, 2) == ("1:1000,1001:2000", False, 2)
    assert _joined(seq, 1, 1) == ("1001:2000", False, 1)
    assert _joined(seq, 2, 4) == ("2001:2500", False, 1)
    # UIDs and sequence numbers never share a FETCH
    assert _joined([("5:9", True), ("10:12", False)], 0, 4) == ("5:9", True, 1)
    # long UID sets: joined only while the whole stays within MAX_SET_LEN
    half = ",".join(str(u) for u in range(100_000, 100_000 + MAX_SET_LEN // 12))
    assert len(half) * 2 + 1 > MAX_SET_LEN >= len(half)
    assert _joined([(half, True), (half, True)], 0, 4) == (half, True, 1)


@pytest.mark.servers
async def test_a_folder_read_with_joined_fetches_is_read_exactly(
    source_account: ServerAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_exchange_corpus(source_account.server, source_account.user)
    monkeypatch.setattr(imap, "META_BATCH", 2)  # units of 2 messages: the corpus spans many
    sent: list[str] = []  # the sequence-number sets of the FETCHes (fetch_meta_all's)
    fetch_metas = Session._fetch_metas

    async def spy(self: Session, uid_set: str, items: str, **kwargs: Any) -> list[MessageMeta]:
        if not kwargs.get("by_uid", True):
            sent.append(uid_set)
        return await fetch_metas(self, uid_set, items, **kwargs)

    monkeypatch.setattr(Session, "_fetch_metas", spy)
    read: dict[str, dict[int, list[MessageMeta]]] = {}
    for merge in (1, imap.META_MERGE):
        monkeypatch.setattr(imap, "META_MERGE", merge)
        async with await imap.connect(endpoint(source_account)) as s:
            for folder in MAIL_FOLDERS:
                info = await s.examine(mutf7(folder))
                read.setdefault(folder, {})[merge] = await s.fetch_meta_all(info.exists)
                if info.exists:
                    uids = await s.uid_search(["ALL"])
                    assert await s.fetch_meta(uids) == read[folder][merge], folder
        if merge == 1:
            assert sent and not any("," in uid_set for uid_set in sent)
            sent.clear()
    assert any(uid_set.count(",") == imap.META_MERGE - 1 for uid_set in sent), sent
    for folder, by_merge in read.items():
        assert by_merge[1] == by_merge[imap.META_MERGE], folder
        assert [m.uid for m in by_merge[1]] == sorted(m.uid for m in by_merge[1])
    assert sum(len(by_merge[1]) for by_merge in read.values()) > 4 * imap.META_MERGE
