"""Pipelined commands (issue 14) against the real servers: several commands sent at once and
answered in order, on Dovecot, Cyrus and Courier.

What the copier relies on: the counts of ``count_messages`` (STATUS, EXAMINE + UID SEARCH
RETURN (COUNT), plain UID SEARCH) are the folders' real in-range counts; ``open_folder`` reads
exactly what a step-by-step EXAMINE + FETCH reads, whatever count it was told (right, too high
after an expunge, too low after new mail, unknown); ``create_folders`` and ``open_folder(create=
True)`` create, subscribe and select in one round trip and name a refused folder; a server that
answers out of order kills the connection instead of mixing answers up.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from legacyflo_daemon.errors import FolderRefused, TransientError
from legacyflo_daemon.imap import connection
from legacyflo_daemon.imap import session as imap
from legacyflo_daemon.imap._aioimaplib.commands import PipelineCommand
from legacyflo_daemon.imap.session import Endpoint, Session, make_ssl_context
from legacyflo_daemon.imap.syntax.utf7 import encode as mutf7
from legacyflo_daemon.model import Secret
from testkit.corpus import MAIL_FOLDERS, load_exchange_corpus
from testkit.imap import ServerAccount
from testkit.mailgen import make_message, utc
from tests.test_imap import endpoint

SINCE, BEFORE = dt.date(2017, 9, 25), dt.date(2018, 9, 24)
RANGE = ["SINCE", "25-Sep-2017", "BEFORE", "25-Sep-2018"]  # BEFORE is exclusive: day after


async def _step_by_step(session: Session, name: str) -> list[tuple[int, bytes]]:
    info = await session.examine(name)
    metas = await session.fetch_meta_all(info.exists) if info.exists else []
    return sorted((m.uid, bytes(m.header)) for m in metas)


@pytest.mark.parametrize("esearch", [True, False], ids=["esearch-count", "plain-search"])
async def test_counts_are_the_folders_in_range_messages(
    source_account: ServerAccount, esearch: bool
) -> None:
    manifest = load_exchange_corpus(source_account.server, source_account.user)
    names = [mutf7(f) for f in MAIL_FOLDERS]
    async with await imap.connect(endpoint(source_account)) as session:
        if not esearch:
            session._conn.capabilities -= {"ESEARCH"}
        else:
            assert "ESEARCH" in session.capabilities
        every = await session.count_messages(names, ["ALL"])
        in_range = await session.count_messages(names, RANGE)
        unknown = await session.count_messages([*names[:1], "No such folder"], ["ALL"])
    assert every == {mutf7(f): len(manifest.messages(f)) for f in MAIL_FOLDERS}
    wanted = manifest.in_range(SINCE, BEFORE)
    assert in_range == {mutf7(f): len(wanted.messages(f)) for f in MAIL_FOLDERS}
    assert sum(in_range.values()) > 0 and in_range != every  # the range does select
    assert unknown == {names[0]: every[names[0]], "No such folder": None}


@pytest.mark.parametrize("told", ["right", "too-high", "too-low", "unknown", "zero"])
async def test_open_folder_reads_what_is_there_whatever_count_it_was_told(
    source_account: ServerAccount, told: str
) -> None:
    load_exchange_corpus(source_account.server, source_account.user)
    async with await imap.connect(endpoint(source_account)) as session:
        want = await _step_by_step(session, "INBOX")
        n = len(want)
        expected = {"right": n, "too-high": n + 5, "too-low": n - 2, "unknown": None}
        info, metas = await session.open_folder(
            "INBOX", examine=True, criteria=["ALL"], expected=expected.get(told, 0)
        )
        assert info.read_only and info.exists == n > 2
        assert sorted((m.uid, bytes(m.header)) for m in metas) == want
        ranged_info, ranged = await session.open_folder(
            "INBOX", examine=True, criteria=RANGE, expected=expected.get(told, 0)
        )
        await session.examine("INBOX")
        assert [m.uid for m in ranged] == await session.uid_search(RANGE) != []
        assert ranged_info.exists == n
        assert session.alive


def _starttls(account: ServerAccount) -> Endpoint:
    """STARTTLS on the 143-like port (Courier's test server has no implicit-TLS port)."""
    return Endpoint(
        host=account.host,
        port=account.port_plain,
        tls="starttls",
        ssl_context=make_ssl_context(account.ca_file, True, False),
        user=account.user,
        password=Secret(account.password),
        timeout=5.0,
        connect_timeout=5.0,
    )


async def _create_count_and_open(ep: Endpoint) -> None:
    async with await imap.connect(ep) as session:
        prefix, delim = await session.namespace()
        assert delim is not None
        top = f"{prefix}Pipe"
        names = [top, f"{top}{delim}A", f"{top}{delim}B"]
        assert await session.create_folders(names) == {}
        message = make_message(subject="one", date=utc(2018, 1, 2), message_id="<p1@x>")
        await session.append(names[1], message)
        await session.append(names[1], message.replace(b"one", b"two"))
        counts = await session.count_messages(names[1:], ["ALL"])
        assert counts == {names[1]: 2, names[2]: 0}
        info, metas = await session.open_folder(
            names[1], examine=False, criteria=["ALL"], expected=counts[names[1]]
        )
        assert info.exists == 2 and len(metas) == 2 and not info.read_only
        new = f"{top}{delim}C"
        info, metas = await session.open_folder(
            new, examine=False, criteria=["ALL"], expected=0, create=True
        )
        assert info.exists == 0 and metas == []
        listed = {e.name for e in await session.list_folders()}
        assert set(names) | {new} <= listed
        assert session.alive


async def test_create_count_and_open_on_dovecot(dest_account: ServerAccount) -> None:
    await _create_count_and_open(endpoint(dest_account))


async def test_create_count_and_open_on_cyrus(cyrus_account: ServerAccount) -> None:
    await _create_count_and_open(endpoint(cyrus_account))


async def test_create_count_and_open_on_courier(courier_account: ServerAccount) -> None:
    await _create_count_and_open(_starttls(courier_account))


async def test_a_refused_creation_is_named_and_the_session_goes_on(
    dest_account: ServerAccount,
) -> None:
    bad = "INBOX.historical_data.a/b"  # Dovecot: no '/' in Maildir++ names
    async with await imap.connect(endpoint(dest_account)) as session:
        refused = await session.create_folders(["INBOX.historical_data", bad])
        assert list(refused) == [bad] and "CREATE" in refused[bad]
        with pytest.raises(FolderRefused, match="CREATE"):
            await session.open_folder(bad, examine=False, criteria=["ALL"], create=True)
        assert session.alive
        assert (await session.count_messages(["INBOX"], ["ALL"]))["INBOX"] == 0


async def test_a_tagged_answer_out_of_order_kills_the_connection(
    source_account: ServerAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server must answer pipelined commands that depend on each other in order; one that
    does not (simulated: the client expects the answers in the reverse of the order it sent
    the commands) must not get its answers mixed up: the connection dies, the error is
    transient."""

    def reversed_pipeline(parts: list[Any]) -> PipelineCommand:
        return PipelineCommand(list(reversed(parts)))

    monkeypatch.setattr(connection, "PipelineCommand", reversed_pipeline)
    async with await imap.connect(endpoint(source_account)) as session:
        with pytest.raises(TransientError):
            await session.namespaces_and_folders()
        assert not session.alive
