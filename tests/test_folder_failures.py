"""One bad folder never sinks a mailbox (docs/contract.md §4.5, §5.5; issue 10 item 3).

Against a real Cyrus destination: a folder whose SELECT the server refuses (the user lost the
read right on it) fails alone, with the server's words and its name in the result and the
report, while every other folder is copied and the request ends ``partial``; a later run copies
it once the server allows it. A folder name the server refuses (``50% Off``, ``a "quoted"
name``) is created once under the safe mapping, named in the folder's note, and found again by
the next run without a second folder. Checked with the stdlib client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from legacyflo_daemon.config.schema import HostConfig
from legacyflo_daemon.model import JobType, Request, RequestResult, Status
from legacyflo_daemon.report.mail import text_body
from legacyflo_daemon.report.result import result_json
from testkit.cyrus import CyrusServer
from testkit.imap import HOSTILE_PASSWORD, Security, ServerAccount
from testkit.imapmail import append_messages, create_folder, quote, read_mailbox
from testkit.maildir import MailSpec
from testkit.mailgen import make_message

from .copyhelp import CopyRun, Login, make_config, make_request

pytestmark = pytest.mark.timeout(120)

BASE = "INBOX.historical_data.Data."


def _specs(folder: str, n: int = 3) -> list[MailSpec]:
    out = []
    for i in range(n):
        when = dt.datetime(2021, 2, 1 + i, 12, 0, tzinfo=dt.UTC)
        data = make_message(subject=f"{folder} {i}", date=when, message_id=f"<{folder}{i}@ff>")
        out.append(MailSpec(data=data, flags=frozenset(), internaldate=when))
    return out


def _run(tmp_path: Path, source: ServerAccount, dest: ServerAccount, rid: str) -> RequestResult:
    return _run_request(tmp_path, source, dest, rid)[0]


def _run_request(
    tmp_path: Path, source: ServerAccount, dest: ServerAccount, rid: str
) -> tuple[RequestResult, Request]:
    hosts = {
        source.host: HostConfig(ca_file=Path(source.ca_file), tls="implicit"),
        dest.host: HostConfig(ca_file=Path(dest.ca_file), tls="implicit", port=dest.port_tls),
    }
    request = make_request(
        Login(source.user, source.password, source.host, source.port_tls),
        Login(dest.user, dest.password, dest.host),
        jobtype=JobType.IMAP,
    )
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    store = CopyRun.create(state, request, make_config(hosts, dest_port=dest.port_tls), rid)
    try:
        return asyncio.run(store.run()), request
    finally:
        store.state.close()


@pytest.fixture
def cyrus_dest(cyrus_server: CyrusServer) -> ServerAccount:
    return cyrus_server.account(cyrus_server.new_user(HOSTILE_PASSWORD, "ff"))


def test_a_folder_the_destination_will_not_open_fails_alone(
    cyrus_server: CyrusServer,
    cyrus_dest: ServerAccount,
    new_source_account: Callable[..., ServerAccount],
    tmp_path: Path,
) -> None:
    source = new_source_account()
    with source.imap(Security.TLS) as conn:
        for folder in ("INBOX", "Locked", "Open"):
            append_messages(conn, folder, _specs(folder))
    # The archive already has "Locked", and the user may list it but not read or write it.
    locked = BASE + "Locked"
    with cyrus_dest.imap(Security.TLS) as conn:
        create_folder(conn, locked)
    cyrus_server.grant(cyrus_server.mailbox_of(cyrus_dest.user, locked), cyrus_dest.user, "l")

    result, request = _run_request(tmp_path, source, cyrus_dest, "r1")

    assert result.status is Status.PARTIAL, result
    by_source = {f.source: f for f in result.folders}
    assert by_source["INBOX"].copied == 3 and by_source["INBOX"].error is None
    assert by_source["Open"].copied == 3 and by_source["Open"].error is None
    error = by_source["Locked"].error
    assert error is not None and "Locked" in error and "ermission" in error, error
    assert by_source["Locked"].copied == 0
    with cyrus_dest.imap(Security.TLS) as conn:  # (the locked folder cannot be read here)
        for folder in ("Inbox", "Open"):
            typ, data = conn.select(quote(BASE + folder), readonly=True)
            assert (typ, data) == ("OK", [b"3"])

    doc = result_json("r1", request, None, result, csv_name="x.csv", dest_folder_path="D")
    assert doc["totals"]["folders_failed"] == 1  # type: ignore[index]
    text = text_body(doc, None)
    assert "Folders that could not be copied (1)" in text
    assert "Locked" in text and "ermission" in text

    # The administrator gives the right back: the next run copies that folder, and only it.
    cyrus_server.grant(
        cyrus_server.mailbox_of(cyrus_dest.user, locked), cyrus_dest.user, "lrswipkxtecda"
    )
    again = _run(tmp_path, source, cyrus_dest, "r2")
    assert again.status is Status.SUCCEEDED, again
    assert {f.source: f.copied for f in again.folders} == {"INBOX": 0, "Locked": 3, "Open": 0}


@pytest.mark.parametrize(
    ("name", "safe"), [("50% Off", "50_ Off"), ('a "quoted" name', "a _quoted_ name")]
)
def test_a_name_the_destination_refuses_is_copied_under_the_safe_mapping_once(
    name: str,
    safe: str,
    cyrus_dest: ServerAccount,
    new_source_account: Callable[..., ServerAccount],
    tmp_path: Path,
) -> None:
    source = new_source_account()
    with source.imap(Security.TLS) as conn:
        append_messages(conn, "INBOX", _specs("inbox", 1))
        append_messages(conn, name, _specs("refused"))
    result = _run(tmp_path, source, cyrus_dest, "r1")
    assert result.status is Status.SUCCEEDED, result
    folder = {f.source: f for f in result.folders}[name]
    assert folder.destination == BASE + safe and folder.copied == 3
    assert f"refused the name {BASE + name!r}" in folder.note and safe in folder.note
    with cyrus_dest.imap(Security.TLS) as conn:
        before = read_mailbox(conn)
    assert len(before.folders[BASE + safe].messages) == 3

    again = _run(tmp_path, source, cyrus_dest, "r2")
    assert again.status is Status.SUCCEEDED, again
    folder = {f.source: f for f in again.folders}[name]
    assert folder.destination == BASE + safe
    assert folder.copied == 0 and folder.already_present == 3
    assert "in an earlier run" in folder.note
    with cyrus_dest.imap(Security.TLS) as conn:
        assert read_mailbox(conn) == before
