"""Acceptance tests of the copier (issue 3) on the real servers: what arrives, and what does not.

The source is the Exchange-like corpus (``testkit/corpus.py``) on the source Dovecot, the
destination the Vaultastic-like Dovecot. Every check reads the servers back independently of the
product: the destination over IMAP with the stdlib (``BODY.PEEK[]`` hashed) or with ``doveadm``
snapshots, the source with ``doveadm`` (which neither logs in nor sets ``\\Seen``).
Interruptions and network faults are in ``test_copier_faults.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from legacyflo_daemon.imap.session import Session
from legacyflo_daemon.model import JobType, RequestResult, Status
from legacyflo_daemon.transfer.copier import Interrupted
from testkit import (
    DovecotServer,
    LoadedMessage,
    LoginCounts,
    MailboxSnapshot,
    MailSpec,
    Manifest,
    ServerAccount,
    load_big_message,
    load_exchange_corpus,
    load_messages,
    make_message,
    snapshot_mailbox,
)
from testkit.corpus import MAIL_FOLDERS, NON_MAIL_FOLDERS
from testkit.mailgen import lorem, utc
from tests.copyhelp import (
    BASE,
    CORPUS_DEST,
    CORPUS_DEST_TREE,
    CopyRun,
    corpus_tree,
    counts,
    dest_snapshot,
    direct_run,
    expected,
    expected_tree,
    imap_contents,
    imap_list,
)

REPO = Path(__file__).resolve().parent.parent
SINCE, BEFORE = dt.date(2015, 6, 1), dt.date(2020, 6, 30)  # leaves some corpus mail out


@dataclass
class Copied:
    """The corpus copied once with the range SINCE..BEFORE."""

    manifest: Manifest
    in_range: Manifest
    run: CopyRun
    result: RequestResult
    source_before: MailboxSnapshot
    planned: list[tuple[int, int, int]]  # Progress.planned() after every copied batch


@pytest.fixture(params=[1, 3], ids=["one-connection-pair", "three-pairs-side-by-side"])
async def copied(
    request: pytest.FixtureRequest,
    source_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
) -> Copied:
    manifest = load_exchange_corpus(source_server, source_account.user)
    before = snapshot_mailbox(source_server, source_account.user)
    run = direct_run(
        tmp_path, source_account, dest_account, since=SINCE, before=BEFORE,
        folder_workers=request.param,
    )  # fmt: skip
    planned: list[tuple[int, int, int]] = []
    copier = run.copier(on_progress=lambda p: planned.append(p.planned()))
    granted: list[int] = []
    copier.extra_pair = lambda: granted.append(1) is None  # the pool says yes every time
    result = await copier.run()
    assert len(granted) == request.param - 1  # the extra pairs were really used
    return Copied(manifest, manifest.in_range(SINCE, BEFORE), run, result, before, planned)


# -- what arrives ------------------------------------------------------------------------------


def test_the_planned_total_is_every_in_range_message_from_the_first_batch_on(
    copied: Copied,
) -> None:
    """The in-range messages of every folder are counted (EXAMINE + UID SEARCH of the date
    range, pipelined) before the first batch is copied: the total seen after each batch is
    the final in-range count from the first batch on, and never changes."""
    in_range = sum(f.in_range for f in copied.result.folders)
    assert in_range == sum(f.copied for f in copied.result.folders) > 0
    assert len(copied.planned) > 1
    assert {total for _, total, _ in copied.planned} == {in_range}, copied.planned
    dones = [done for done, _, _ in copied.planned]
    assert dones == sorted(dones) and dones[0] < in_range and dones[-1] == in_range


def test_every_message_in_range_arrives_once_with_its_bytes_flags_and_date(
    copied: Copied, dest_account: ServerAccount
) -> None:
    result, in_range = copied.result, copied.in_range
    assert (result.status, result.error, result.failures) == (Status.SUCCEEDED, None, ())
    # The range really leaves mail out, so "nothing else is there" means something.
    assert 0 < len(in_range.messages()) < len(copied.manifest.messages())
    with dest_account.imap() as conn:
        assert imap_list(conn) == CORPUS_DEST_TREE
        for source, (_decoded, wire) in CORPUS_DEST.items():
            got = imap_contents(conn, f"{BASE}.{wire}")
            assert got == expected(in_range.folders[source]), source
        assert imap_contents(conn, f"{BASE}.Inbox.Projects") == Counter()


def test_destination_tree_is_exactly_the_mapped_mail_folders(
    copied: Copied, dest_server: DovecotServer, dest_account: ServerAccount
) -> None:
    snap = snapshot_mailbox(dest_server, dest_account.user)
    # doveadm shows the names decoded: the mUTF-7 on the wire came out readable.
    assert set(snap.folders) == {
        "INBOX",
        "INBOX.historical_data",
        BASE,
        f"{BASE}.Inbox",
        f"{BASE}.Inbox.Projects",
        f"{BASE}.Inbox.Projects.2018",
        f"{BASE}.Sent Items",
        f"{BASE}.Deleted Items",
        f"{BASE}.Junk Email",
        f"{BASE}.Drafts",
        f"{BASE}.Mr_ Smith",
        f"{BASE}.Café & Réunions",
        f"{BASE}.Empty",
    }
    assert dest_snapshot(dest_server, dest_account.user) == corpus_tree(copied.in_range)
    assert snap.folders["INBOX"].messages == ()
    assert snap.folders[BASE].messages == ()


def test_result_counts_every_mail_folder_and_the_dropped_deleted_flag(copied: Copied) -> None:
    in_range = copied.in_range
    assert counts(copied.result) == {
        folder: (len(in_range.folders[folder]), len(in_range.folders[folder]), 0, 0)
        for folder in MAIL_FOLDERS
    }
    by_source = {f.source: f for f in copied.result.folders}
    assert {s: f.destination for s, f in by_source.items()} == {
        s: f"{BASE}.{decoded}" for s, (decoded, _wire) in CORPUS_DEST.items()
    }
    assert {s: f.deleted_dropped for s, f in by_source.items() if f.deleted_dropped} == {"INBOX": 1}
    assert "'_'" in by_source["Mr. Smith"].note
    inbox_bytes = sum(m.size for m in in_range.folders["INBOX"])
    assert by_source["INBOX"].bytes == inbox_bytes


def test_non_mail_folders_are_not_copied(
    copied: Copied, dest_server: DovecotServer, dest_account: ServerAccount
) -> None:
    snap = snapshot_mailbox(dest_server, dest_account.user)
    for name in NON_MAIL_FOLDERS:
        leaf = name.rsplit("/", 1)[-1]
        assert not [f for f in snap.folders if leaf in f], name
    arrived = {m.sha256 for f in snap.folders.values() for m in f.messages}
    non_mail = {m.sha256 for folder in NON_MAIL_FOLDERS for m in copied.manifest.folders[folder]}
    assert non_mail and not (arrived & non_mail)
    assert {f.source for f in copied.result.folders} == set(MAIL_FOLDERS)


def test_the_source_is_unchanged(
    copied: Copied, source_server: DovecotServer, source_account: ServerAccount
) -> None:
    after = snapshot_mailbox(source_server, source_account.user)
    assert after == copied.source_before
    unseen = copied.manifest.by_label("flagged-unseen")
    inbox = after.folders["INBOX"].messages
    assert [m.flags for m in inbox if m.sha256 == unseen.sha256] == [unseen.flags]
    assert "\\Seen" not in unseen.flags


def test_shared_message_ids_and_identical_twins_all_arrive(
    copied: Copied, dest_server: DovecotServer, dest_account: ServerAccount
) -> None:
    dest = dest_snapshot(dest_server, dest_account.user)
    inbox = Counter(sha for (sha, _f, _d), n in dest["Inbox"].items() for _ in range(n))
    m = copied.manifest
    assert m.by_label("twin").sha256 == m.by_label("twin-copy").sha256  # byte-identical
    assert inbox[m.by_label("twin").sha256] == 2
    assert inbox[m.by_label("shared-mid-1").sha256] == 1
    assert inbox[m.by_label("shared-mid-2").sha256] == 1
    for source, (decoded, _wire) in CORPUS_DEST.items():
        assert dest[decoded].total() == len(copied.in_range.folders[source]), source


async def test_a_second_request_copies_nothing_and_reports_all_present(
    copied: Copied,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
) -> None:
    first = snapshot_mailbox(dest_server, dest_account.user)
    again = direct_run(
        copied.run.state,
        source_account,
        dest_account,
        since=SINCE,
        before=BEFORE,
        request_id="req-2",
    )
    result = await again.run()
    assert (result.status, result.error) == (Status.SUCCEEDED, None)
    assert counts(result) == {
        folder: (len(copied.in_range.folders[folder]), 0, len(copied.in_range.folders[folder]), 0)
        for folder in MAIL_FOLDERS
    }
    assert sum(f.bytes for f in result.folders) == 0
    # Not one APPEND: same UIDs, same everything.
    assert snapshot_mailbox(dest_server, dest_account.user) == first


async def test_running_a_finished_request_again_changes_nothing(
    copied: Copied, dest_server: DovecotServer, dest_account: ServerAccount
) -> None:
    first = snapshot_mailbox(dest_server, dest_account.user)
    result = await copied.run.run()
    assert result.status is Status.SUCCEEDED
    assert counts(result) == counts(copied.result)  # the counts of the run that copied
    assert snapshot_mailbox(dest_server, dest_account.user) == first


# -- date range ----------------------------------------------------------------------------------

# (since, before, labels that must arrive, labels that must not) for INBOX.
DATE_CASES = [
    pytest.param(
        dt.date(2017, 9, 25),
        dt.date(2018, 9, 24),
        [
            "edge-2017-09-25T00:00:00",
            "mid-range",
            "edge-2018-09-24T23:59:00",
            "edge-2018-09-24T23:59:59",
        ],
        ["edge-2017-09-24T23:59:59", "edge-2018-09-25T00:00:00", "late-2020", "plain-seen"],
        id="since-and-before",
    ),
    pytest.param(
        dt.date(2017, 9, 25),
        None,
        ["edge-2017-09-25T00:00:00", "edge-2018-09-25T00:00:00", "late-2020"],
        ["edge-2017-09-24T23:59:59", "plain-seen"],
        id="since-only",
    ),
    pytest.param(
        None,
        dt.date(2018, 9, 24),
        ["plain-seen", "edge-2017-09-24T23:59:59", "edge-2018-09-24T23:59:59"],
        ["edge-2018-09-25T00:00:00", "late-2020"],
        id="before-only",
    ),
]


@pytest.mark.parametrize(("since", "before", "inside", "outside"), DATE_CASES)
async def test_date_range_is_inclusive_days_of_internaldate(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    since: dt.date | None,
    before: dt.date | None,
    inside: list[str],
    outside: list[str],
) -> None:
    manifest = load_exchange_corpus(source_server, source_account.user)
    run = direct_run(tmp_path, source_account, dest_account, since=since, before=before)
    result = await run.run()
    assert result.status is Status.SUCCEEDED
    dest = dest_snapshot(dest_server, dest_account.user)
    assert dest == corpus_tree(manifest.in_range(since, before))
    inbox = {sha for sha, _f, _d in dest["Inbox"]}
    assert {label for label in inside if manifest.by_label(label).sha256 in inbox} == set(inside)
    assert {label for label in outside if manifest.by_label(label).sha256 in inbox} == set()


# -- transports and logins ---------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["starttls", "auto"])
async def test_copy_over_starttls(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    tls: str,
) -> None:
    manifest = load_exchange_corpus(source_server, source_account.user)
    run = direct_run(tmp_path, source_account, dest_account, tls=tls)
    result = await run.run()
    assert (result.status, result.error) == (Status.SUCCEEDED, None)
    assert dest_snapshot(dest_server, dest_account.user) == corpus_tree(manifest)
    for server, account in ((source_server, source_account), (dest_server, dest_account)):
        logins = server.logins(account.user)
        assert logins, server
        assert {(x.local_port, x.tls) for x in logins} == {(server.port_plain, True)}


@pytest.mark.parametrize("pairs", [1, 4], ids=["one-pair", "extra-pairs-granted"])
@pytest.mark.parametrize("side", ["source", "dest"])
async def test_wrong_password_fails_at_once_after_one_login_attempt(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    side: str,
    pairs: int,
) -> None:
    """Also when extra connection pairs are granted (they open their connections beside the
    first pair's): none of them sends a login before the first pair's logins succeeded."""
    load_exchange_corpus(source_server, source_account.user)
    wrong = "Wr0ng-pa$$word-" + side
    run = direct_run(
        tmp_path,
        source_account,
        dest_account,
        source_password=wrong if side == "source" else None,
        dest_password=wrong if side == "dest" else None,
        retries=6,
        folder_workers=pairs,
    )
    started = time.monotonic()
    copier = run.copier()
    granted: list[int] = []
    copier.extra_pair = lambda: granted.append(1) is None
    result = await copier.run()
    assert len(granted) == pairs - 1  # a first run asks for its extra pairs at once
    elapsed = time.monotonic() - started
    assert result.status is Status.FAILED
    assert result.error is not None and "authentication failed" in result.error
    assert wrong not in result.error
    assert result.folders == ()
    assert elapsed < 5
    server, account = (
        (source_server, source_account) if side == "source" else (dest_server, dest_account)
    )
    # Off the event loop: the aborted socket is closed (and logged) by the loop's next turn.
    await asyncio.to_thread(
        server.wait_for_log, lambda _text: server.count_logins(account.user).failed >= 1
    )
    await asyncio.sleep(0.3)  # a second attempt would be logged by now
    assert server.count_logins(account.user) == LoginCounts(
        succeeded=0, failed=1, refused_by_limit=0
    )
    if side == "source":
        assert dest_server.count_logins(dest_account.user).attempts == 0
    else:
        assert source_server.count_logins(source_account.user) == LoginCounts(1, 0, 0)
    assert dest_snapshot(dest_server, dest_account.user) == {}


# -- UIDVALIDITY -------------------------------------------------------------------------------


def _reports(n: int) -> list[MailSpec]:
    specs = []
    for i in range(n):
        when = utc(2019, 1 + i % 12, 1 + i, 8)
        data = make_message(
            subject=f"Report {i}",
            date=when,
            message_id=f"<report-{i}@uv.example.com>",
            body=lorem(i, 200) + "\n",
        )
        specs.append(MailSpec(data, frozenset({"\\Seen"} if i % 2 else set()), when, f"r{i}"))
    return specs


def _recreate(server: DovecotServer, user: str, folder: str, specs: list[MailSpec]) -> None:
    """Delete ``folder`` and create it again with ``specs``: new UIDVALIDITY, new UIDs."""
    server.doveadm("mailbox", "delete", "-u", user, folder)
    load_messages(server, user, folder, specs)


async def test_uidvalidity_change_between_runs_still_gives_exactly_once(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
) -> None:
    user = source_account.user
    specs = _reports(10)
    loaded = {"Reports": tuple(load_messages(source_server, user, "Reports", specs))}
    want = expected_tree(loaded, {"Reports": "Reports"}, parents=["Inbox"])
    run = direct_run(tmp_path, source_account, dest_account, jobtype=JobType.IMAP, fetch_batch=3)
    uv_first = snapshot_mailbox(source_server, user).folders["Reports"].uidvalidity

    # Run 1 stops after its first batch: part of the folder is at the destination.
    stop = asyncio.Event()
    with pytest.raises(Interrupted):
        await run.copier(stop=stop, on_progress=lambda _p: stop.set()).run()
    assert 0 < dest_snapshot(dest_server, dest_account.user)["Reports"].total() < 10

    # The folder is recreated with the same mail in reverse order: the old UIDs now name
    # other messages.
    _recreate(source_server, user, "Reports", list(reversed(specs)))
    source = snapshot_mailbox(source_server, user).folders["Reports"]
    assert source.uidvalidity != uv_first
    assert source.contents() == expected(loaded["Reports"])

    result = await run.run()
    assert (result.status, result.error) == (Status.SUCCEEDED, None)
    (folder,) = [f for f in result.folders if f.source == "Reports"]
    assert (folder.in_range, folder.copied + folder.already_present, folder.failed) == (10, 10, 0)
    assert dest_snapshot(dest_server, dest_account.user) == want

    # And once more, for a new request after yet another UIDVALIDITY: nothing to copy.
    _recreate(source_server, user, "Reports", specs)
    assert (
        snapshot_mailbox(source_server, user).folders["Reports"].uidvalidity != source.uidvalidity
    )
    again = direct_run(
        run.state, source_account, dest_account, jobtype=JobType.IMAP, request_id="req-2"
    )
    result = await again.run()
    assert counts(result)["Reports"] == (10, 0, 10, 0)
    assert dest_snapshot(dest_server, dest_account.user) == want


async def test_a_folder_going_into_an_empty_one_is_copied_while_its_metadata_is_read(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    new_dest_account: Callable[..., ServerAccount],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The destination folder is empty, so every source message is missing: the first bodies
    are fetched (and appended) before the source's last metadata batch is read, instead of
    after all of them. The copy is exact, in one go and after a stop in the middle of it
    (then the next pass finds the folder not empty and compares both sides)."""
    user = source_account.user

    def load() -> tuple[LoadedMessage, ...]:  # in a thread: the loop must stay free
        specs = []
        for i in range(2600):  # three metadata batches of META_BATCH (1,000), none joined here
            when = utc(2018, 1 + i % 12, 1 + i % 28, i % 24)
            data = make_message(
                subject=f"Note {i}", date=when, message_id=f"<note-{i}@stream.example.com>",
                body=lorem(i, 20) + "\n",
            )  # fmt: skip
            flags = frozenset({"\\Seen"} if i % 3 else set())
            specs.append(MailSpec(data, flags, when, f"n{i}"))
        return tuple(load_messages(source_server, user, "Notes", specs))

    loaded = {"Notes": await asyncio.to_thread(load)}
    want = expected_tree(loaded, {"Notes": "Notes"}, parents=["Inbox"])
    before = snapshot_mailbox(source_server, user)

    calls: list[str] = []  # the source session's metadata and body FETCHes, in order

    def spy(name: str, method: Any) -> Any:
        async def recorded(self: Session, *args: Any, **kwargs: Any) -> Any:
            if self.host == source_account.host:
                calls.append(name)
            return await method(self, *args, **kwargs)

        return recorded

    # One unit per FETCH (up to four are joined by default): two follow the one with EXAMINE.
    monkeypatch.setattr("legacyflo_daemon.imap.session.META_MERGE", 1)
    monkeypatch.setattr(Session, "_fetch_metas", spy("meta", Session._fetch_metas))
    monkeypatch.setattr(Session, "fetch_bodies", spy("body", Session.fetch_bodies))

    # In one go.
    dest = new_dest_account("stream-dest-1")
    result = await direct_run(tmp_path / "one", source_account, dest, jobtype=JobType.IMAP).run()
    assert (result.status, result.error) == (Status.SUCCEEDED, None)
    assert counts(result)["Notes"] == (2600, 2600, 0, 0)
    assert dest_snapshot(dest_server, dest.user) == want
    # The first metadata batch comes with EXAMINE, two more follow; at least the last one is
    # read after the first bodies (how many before depends on when the empty destination
    # folder's SELECT answered).
    assert calls.count("meta") == 2, calls
    assert "body" in calls and "meta" in calls[calls.index("body") :], calls

    # Stopped after the first batch stored, then resumed.
    dest = new_dest_account("stream-dest-2")
    run = direct_run(tmp_path / "two", source_account, dest, jobtype=JobType.IMAP)
    stop = asyncio.Event()
    with pytest.raises(Interrupted):
        await run.copier(stop=stop, on_progress=lambda _p: stop.set()).run()
    assert 0 < dest_snapshot(dest_server, dest.user)["Notes"].total() < 2600
    result = await run.run()
    assert (result.status, result.error) == (Status.SUCCEEDED, None)
    (folder,) = [f for f in result.folders if f.source == "Notes"]
    assert (folder.in_range, folder.copied, folder.already_present) == (2600, 2600, 0)
    assert dest_snapshot(dest_server, dest.user) == want
    # (the INBOX this test never wrote exists, empty, once Dovecot has seen a login)
    assert snapshot_mailbox(source_server, user).folders["Notes"] == before.folders["Notes"]


# -- memory --------------------------------------------------------------------------------------

MB = 1024 * 1024
PEAK_RSS_LIMIT = 150 * MB


@pytest.mark.slow
def test_30_mb_message_is_copied_within_150_mb_peak_rss(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
) -> None:
    big = load_big_message(source_server, source_account.user, 30 * MB)
    assert big.size >= 30 * MB
    params = {
        "source": [source_account.user, source_account.host, source_account.port_tls],
        "dest": [dest_account.user, dest_account.host, dest_account.port_tls],
        "ca_file": source_account.ca_file,
        "state_dir": str(tmp_path),
        "out": str(tmp_path / "out.json"),
    }
    secrets = {"source": source_account.password, "dest": dest_account.password}
    # Through a shell that forks: Linux carries the peak RSS of the process image replaced by
    # exec into ru_maxrss, so a child exec'd straight from this (large) test process would
    # start with this process's peak. The shell's fork starts the count afresh.
    code = "from tests.copyhelp import subprocess_copy; subprocess_copy()"
    proc = subprocess.run(
        ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, code],
        input=json.dumps({**params, "secrets": secrets}).encode(),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert (out["status"], out["error"]) == ("succeeded", None), out
    assert out["copied"] == 1
    peak, baseline = out["peak_rss"] / MB, out["baseline_rss"] / MB
    assert out["peak_rss"] < PEAK_RSS_LIMIT, f"peak RSS {peak:.0f} MB ({baseline:.0f} MB before)"
    dest = dest_snapshot(dest_server, dest_account.user)
    assert dest == {"Inbox": expected([big])}


def test_the_result_names_the_non_mail_folders_left_out(copied: Copied) -> None:
    skipped = dict(copied.result.skipped)
    assert set(skipped) == set(NON_MAIL_FOLDERS), skipped
    assert all("imap.exclude_folders" in reason for reason in skipped.values())
