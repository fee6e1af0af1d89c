"""The copier and the daemon against an Exchange-like source (issue 10): the source is the
``ExchangeFront`` (``testkit/exchange_front.py``) before the source Dovecot, the destination
a Dovecot reached directly. For each Exchange behaviour (docs/contract.md §5 "Exchange
realities"): nothing is lost, nothing is duplicated (the destination is compared message by
message, bytes hashed, with ``doveadm``), and the result says what happened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from legacyflo_daemon.imap.syntax.parse import EXCHANGE_FAILED
from legacyflo_daemon.model import RequestResult, Status
from legacyflo_daemon.report import result as report
from testkit.dovecot import DovecotServer
from testkit.exchange_front import ExchangeFront
from testkit.imap import ServerAccount
from testkit.maildir import LoadedMessage, MailSpec, load_messages
from testkit.mailgen import lorem, make_message, utc
from testkit.snapshot import Content, snapshot_mailbox
from tests.copyhelp import (
    CopyRun,
    Login,
    dest_snapshot,
    expected,
    expected_tree,
    host_config,
    make_config,
    make_request,
)
from tests.e2ehelp import (
    Row,
    Work,
    archive_problems,
    drop_csv,
    load_mailbox,
    mailbox_specs,
    request_csv,
    results,
)

MAPPING = {"INBOX": "Inbox", "Archive": "Archive"}
NewAccount = Callable[..., ServerAccount]


@dataclass
class Mailbox:
    loaded: dict[str, tuple[LoadedMessage, ...]]
    want: dict[str, Counter[Content]]


def _mailbox(server: DovecotServer, user: str, sizes: dict[str, int] | None = None) -> Mailbox:
    """Distinct messages (INBOX ends with a byte-identical twin of its first), flags varied."""
    loaded: dict[str, tuple[LoadedMessage, ...]] = {}
    for f, (folder, n) in enumerate((sizes or {"Archive": 8, "INBOX": 5}).items()):
        specs = []
        for i in range(n):
            when = utc(2018, 1 + i % 12, 1 + i % 28, (f * 5 + i) % 24)
            data = make_message(
                subject=f"{folder} exchange {i}",
                date=when,
                message_id=f"<x{f}-{i}@field.example>",
                body=lorem(f * 100 + i, 120) + "\n",
            )
            flags = frozenset(["\\Seen"] if i % 2 else ["\\Flagged"])
            specs.append(MailSpec(data, flags, when, f"{folder}-{i}"))
        if folder == "INBOX" and specs:
            specs.append(specs[0])
        loaded[folder] = tuple(load_messages(server, user, folder, specs))
    return Mailbox(loaded, expected_tree(loaded, MAPPING))


def _dovecot(account: ServerAccount) -> DovecotServer:
    assert isinstance(account.server, DovecotServer)
    return account.server


def _front_run(
    tmp_path: Path, front: ExchangeFront, source: ServerAccount, dest: ServerAccount, **imap: Any
) -> CopyRun:
    """A copy whose source is the front (implicit TLS, the test CA) and whose destination is
    the destination Dovecot's implicit-TLS port."""
    config = make_config(
        {front.host: host_config(_dovecot(source)), dest.host: host_config(_dovecot(dest))},
        dest_port=dest.port_tls,
        **imap,
    )
    request = make_request(
        Login(source.user, source.password, front.host, front.port),
        Login(dest.user, dest.password, dest.host),
    )
    return CopyRun.create(tmp_path, request, config)


def _assert_complete(result: RequestResult, dest: ServerAccount, box: Mailbox) -> None:
    assert (result.status, result.error, result.failures) == (Status.SUCCEEDED, None, ())
    assert dest_snapshot(_dovecot(dest), dest.user) == box.want  # every message once, same bytes
    for folder in result.folders:
        assert (folder.copied + folder.already_present, folder.failed) == (folder.in_range, 0)


async def _run(run: CopyRun) -> tuple[RequestResult, list[MutableMapping[str, Any]]]:
    with capture_logs() as events:
        result = await run.run()
    return result, events


def _retries(events: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in events if e["event"] == "request_retry"]


# -- 1. throttling ---------------------------------------------------------------------------


@pytest.mark.parametrize("then_close", [False, True], ids=["NO", "NO-then-drop"])
async def test_throttling_is_waited_out_for_the_suggested_time_and_nothing_is_lost(
    exchange_front: ExchangeFront,
    source_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    then_close: bool,
) -> None:
    box = _mailbox(source_server, source_account.user)
    exchange_front.throttle(
        after=2, times=2, backoff_ms=400, command="FETCH", then_close=then_close
    )
    run = _front_run(tmp_path, exchange_front, source_account, dest_account, fetch_batch=4)
    result, events = await _run(run)

    _assert_complete(result, dest_account, box)
    assert exchange_front.throttled == 2
    retries = _retries(events)
    assert len(retries) == 2
    for retry in retries:  # the server's hint honoured, not the configured 0.05 s cap
        assert retry["delay"] >= 0.4
        assert "Suggested Backoff Time: 400 milliseconds" in retry["error"]


# -- 2. BYE under load ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["FETCH", None], ids=["on-fetch", "on-any-command"])
async def test_bye_mid_session_is_a_reconnect_and_nothing_is_lost_or_duplicated(
    exchange_front: ExchangeFront,
    source_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    command: str | None,
) -> None:
    box = _mailbox(source_server, source_account.user)
    exchange_front.bye(after=5, times=2, command=command)
    run = _front_run(tmp_path, exchange_front, source_account, dest_account, fetch_batch=3)
    result, events = await _run(run)

    _assert_complete(result, dest_account, box)
    assert exchange_front.byes == 2
    assert exchange_front.connections_total >= 3  # reconnected after each BYE
    assert len(_retries(events)) == 2


# -- 3. per-user connection limit ---------------------------------------------------------------


def test_a_per_user_connection_limit_is_a_pace_and_every_request_completes(
    work: Work,
    exchange_front: ExchangeFront,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
) -> None:
    """Admin credentials: three requests log in as the same source user; the server allows two
    sessions of that user. Per §5 the refusal is a pace: every request succeeds, no archive
    misses a message, and the limit was really met."""
    src = new_source_account('admin "pw" é')
    load_mailbox(_dovecot(src), src.user, mailbox_specs("lim", {"INBOX": 6, "Sent": 4}))
    dest = new_dest_account('dst "Pa55" ö')
    exchange_front.limit_per_user(2)
    # The front slows every session down a little, so that the three overlap.
    rows = [Row(src, dest, f"Box{i}", source_port=exchange_front.port) for i in range(3)]
    work.configure(
        daemon={"max_jobs": 3, "max_per_host": 6},
        imap={"max_per_login": 4, "folder_workers": 2, "retries": 3},
    )
    drop_csv(work.spool / "incoming", "limit.csv", request_csv(rows))
    with work.daemon("run", once=True) as daemon:
        code = daemon.wait(60)
    found = results(work.spool)
    assert exchange_front.user_limit_refusals >= 1  # the limit was met
    statuses = sorted(doc["status"] for doc in found.values())
    assert statuses == ["succeeded"] * 3, [doc.get("error") for doc in found.values()]
    assert code == 0, daemon.describe()
    source_snap = snapshot_mailbox(_dovecot(src), src.user)
    dest_snap = snapshot_mailbox(_dovecot(dest), dest.user)
    for i in range(3):
        assert archive_problems(source_snap, dest_snap, f"Box{i}") == []


# -- 4. the command size limit ------------------------------------------------------------------


def _gapped_specs() -> list[MailSpec]:
    """1,000 small messages (built off the event loop: that takes a while)."""
    return [
        MailSpec(
            make_message(
                subject=f"gap {i}",
                date=utc(2017, 1 + i % 12, 1 + i % 28),
                message_id=f"<gap-{i}@field.example>",
                body=f"{i}\n",
            ),
            frozenset(),
            utc(2017, 1 + i % 12, 1 + i % 28),
        )
        for i in range(1000)
    ]


def _expunge_even_uids(server: DovecotServer, user: str, folder: str, count: int) -> None:
    uids = ",".join(str(u) for u in range(2, count + 1, 2))
    server.doveadm("expunge", "-u", user, "mailbox", folder, "uid", uids)


async def test_uid_sets_stay_under_exchanges_command_size_limit(
    exchange_front: ExchangeFront,
    source_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
) -> None:
    """1,000 messages with every other UID expunged: the UID sets the copier sends are long
    and gapped; Exchange's default MaxCommandSize (10,240 bytes) refuses none of them."""
    specs = await asyncio.to_thread(_gapped_specs)
    loaded = await asyncio.to_thread(
        load_messages, source_server, source_account.user, "INBOX", specs
    )
    await asyncio.to_thread(_expunge_even_uids, source_server, source_account.user, "INBOX", 1000)
    kept = loaded[0::2]  # UIDs 1, 3, 5, ...
    exchange_front.max_command_size(10240)
    run = _front_run(tmp_path, exchange_front, source_account, dest_account)
    result, _events = await _run(run)

    assert (result.status, result.error, result.failures) == (Status.SUCCEEDED, None, ())
    got = await asyncio.to_thread(dest_snapshot, _dovecot(dest_account), dest_account.user)
    assert got == {"Inbox": expected(kept)}
    assert exchange_front.too_long == 0
    assert exchange_front.longest_command > 1500  # long, gapped UID sets were really sent


# -- 5. estimated sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "fixed"), [(-40.0, 0), (40.0, 0), (0.0, -100_000)], ids=["-40%", "+40%", "zero"]
)
async def test_estimated_sizes_change_nothing_and_are_not_reported_as_alterations(
    exchange_front: ExchangeFront,
    source_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    percent: float,
    fixed: int,
) -> None:
    box = _mailbox(source_server, source_account.user)
    exchange_front.size_delta(percent=percent, fixed=fixed)
    run = _front_run(tmp_path, exchange_front, source_account, dest_account, fetch_batch=4)
    result, events = await _run(run)

    _assert_complete(result, dest_account, box)
    assert exchange_front.sizes_rewritten >= sum(len(m) for m in box.loaded.values())
    assert result.warnings == ()
    assert _retries(events) == []
    # The same request submitted again finds everything present: size is not identity.
    (tmp_path / "again").mkdir()
    again = await _front_run(tmp_path / "again", exchange_front, source_account, dest_account).run()
    assert [(f.copied, f.already_present) for f in again.folders] == [
        (0, f.in_range) for f in again.folders
    ]
    assert dest_snapshot(_dovecot(dest_account), dest_account.user) == box.want


# -- 6. the substitute message ------------------------------------------------------------------


async def test_exchanges_substitute_message_is_a_per_message_failure_not_a_copy(
    exchange_front: ExchangeFront,
    source_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
) -> None:
    box = _mailbox(source_server, source_account.user)
    bad = box.loaded["Archive"][3]  # Message-ID <x0-3@field.example>
    exchange_front.substitute(message_ids=["<x0-3@field.example>"])
    run = _front_run(tmp_path, exchange_front, source_account, dest_account, fetch_batch=4)
    result, _events = await _run(run)

    assert exchange_front.substituted == [4]  # UID 4 of Archive
    assert (result.status, result.error) == (Status.PARTIAL, None)
    (failure,) = result.failures
    assert (failure.folder, failure.uid, failure.subject) == ("Archive", 4, "Archive exchange 3")
    assert failure.date is not None
    assert dt.datetime.fromisoformat(failure.date) == bad.internaldate
    assert failure.reason == EXCHANGE_FAILED
    by_folder = {f.source: f for f in result.folders}
    assert (by_folder["Archive"].copied, by_folder["Archive"].failed) == (7, 1)
    assert (by_folder["INBOX"].copied, by_folder["INBOX"].failed) == (6, 0)
    want = dict(box.want)
    want["Archive"] = want["Archive"] - expected([bad])
    assert dest_snapshot(_dovecot(dest_account), dest_account.user) == want  # not the substitute
    doc = report.result_json(
        run.request_id, run.request, None, result, csv_name="x.csv", dest_folder_path="Data"
    )
    assert doc["status"] == "partial"
    assert [(f["folder"], f["uid"], f["reason"]) for f in doc["failures"]] == [
        ("Archive", 4, EXCHANGE_FAILED)
    ]

    # Once Exchange delivers it, the request submitted again copies exactly that one.
    exchange_front.clear()
    (tmp_path / "again").mkdir()
    again = await _front_run(tmp_path / "again", exchange_front, source_account, dest_account).run()
    assert (again.status, again.failures) == (Status.SUCCEEDED, ())
    assert {f.source: (f.copied, f.already_present) for f in again.folders} == {
        "Archive": (1, 7),
        "INBOX": (0, 6),
    }
    assert dest_snapshot(_dovecot(dest_account), dest_account.user) == box.want


def test_the_daemon_reports_a_substitute_message_in_the_result_json(
    work: Work,
    exchange_front: ExchangeFront,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
) -> None:
    src = new_source_account('sub "pw" é')
    specs = mailbox_specs("sub", {"INBOX": 4})
    load_mailbox(_dovecot(src), src.user, specs)
    dest = new_dest_account('dst "Pa55" ö')
    exchange_front.substitute(message_ids=["<sub-2@e2e.example>"])
    work.configure()
    drop_csv(
        work.spool / "incoming",
        "sub.csv",
        request_csv([Row(src, dest, "Sub", source_port=exchange_front.port)]),
    )
    with work.daemon("run", once=True) as daemon:
        code = daemon.wait(40)
    assert code != 0, daemon.describe()  # not every request succeeded
    (doc,) = results(work.spool).values()
    assert doc["status"] == "partial"
    assert [(f["folder"], f["uid"], f["reason"]) for f in doc["failures"]] == [
        ("INBOX", 3, EXCHANGE_FAILED)
    ]
    assert exchange_front.substituted == [3]
    # The archive holds the three others exactly once, and not the substitute.
    problems = archive_problems(
        snapshot_mailbox(_dovecot(src), src.user),
        snapshot_mailbox(_dovecot(dest), dest.user),
        "Sub",
    )
    assert problems == [
        "INBOX.historical_data.Sub.Inbox: 4 expected, 3 found (1 missing, 0 extra or altered)"
    ]
    failed = [e for e in daemon.events() if e.get("event") == "message_failed"]
    assert [(e.get("uid"), e.get("reason")) for e in failed] == [(3, EXCHANGE_FAILED)]
    assert doc["failures"][0]["subject"] == "sub INBOX #2"  # the original's, from its headers
