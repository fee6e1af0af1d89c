"""End-to-end: ``legacyflo-daemon run`` as a subprocess on the real test servers (issue 4).

Each test drops request CSVs into a fresh spool, runs the daemon, and checks real outcomes:
the archive (read with doveadm) holds every source message exactly once, the spool and the
outbox hold what docs/contract.md §2 says, the servers' own logs show the concurrency limits
kept, the log is JSON lines with request ids, and no file the daemon wrote holds a password.
Signals, crashes and systemd notification are in ``test_daemon_signals.py``.
"""

from __future__ import annotations

import datetime
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from testkit.imap import ServerAccount
from testkit.snapshot import snapshot_mailbox
from tests.e2ehelp import (
    LogMark,
    MailCatcher,
    Row,
    Work,
    archive_problems,
    check_log_lines,
    drop_csv,
    files_containing,
    free_port,
    load_mailbox,
    mailbox_specs,
    request_csv,
    results,
    summary,
    wait_until,
    write_slowly,
)

NewAccount = Callable[..., ServerAccount]


def _accounts(
    new_source_account: NewAccount, n: int, tag: str, folders: dict[str, int]
) -> list[ServerAccount]:
    """``n`` source accounts with distinct hostile passwords and small mailboxes."""
    made = []
    for i in range(n):
        src = new_source_account(f'{tag}{i} p@ss"w,{i}\\%*{{}} é')
        load_mailbox(src.server, src.user, mailbox_specs(src.user, folders, seed=i))
        made.append(src)
    return made


# -- the checks themselves (no servers) --------------------------------------------------------


def test_the_leak_search_finds_every_written_form_of_a_password(tmp_path: Path) -> None:
    secret = 'p@ss"w0rd\\%*{} é'
    forms = {
        "raw": secret.encode(),
        "json": json.dumps({"pw": secret}).encode(),  # \\u00e9, \\" and \\\\
        "json-utf8": json.dumps({"pw": secret}, ensure_ascii=False).encode(),
        "csv": b'"p@ss""w0rd\\%*{} \xc3\xa9"',
    }
    for name, data in forms.items():
        (tmp_path / name).write_bytes(b"before " + data + b" after")
    (tmp_path / "clean").write_bytes(b"p@ss w0rd ********")
    found = files_containing(tmp_path, [secret])
    assert sorted(p.name for p in found) == sorted(forms)


TS = "2026-01-01T00:00:00Z"


def _line(**fields: str) -> str:
    return json.dumps(fields)


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        (_line(event="daemon_ready", level="info", timestamp=TS), True),
        (_line(event="folder_started", level="info", timestamp=TS, request_id="a-r2-1"), True),
        (_line(event="folder_started", level="info", timestamp=TS), False),
        (_line(event="request_started", level="info", timestamp=TS, request_id="other"), False),
        (_line(event="x", level="info", timestamp="2026-01-01T00:00:00+01:00"), False),
        (_line(event="x", timestamp=TS), False),
        ("Traceback (most recent call last):", False),
        ("[1, 2]", False),
    ],
)
def test_the_log_check_accepts_only_json_events_with_request_ids(line: str, ok: bool) -> None:
    assert (check_log_lines([line], ["a-r2-1"]) == []) is ok


# -- 20 accounts under the limits --------------------------------------------------------------


@pytest.mark.slow
def test_a_csv_of_twenty_accounts_is_copied_exactly_once_within_the_limits(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    dests = [new_dest_account(f'dst{i} "Pa55",wörd\\{i}') for i in range(5)]
    sources = []
    for i in range(20):
        folders = {"INBOX": 2 + i % 3, "Sent Items": 1 + i % 2, "INBOX/Projects": i % 2}
        sources += _accounts(new_source_account, 1, f"t{i}x", folders)
    # Each destination user receives four requests, each into its own folder.
    rows = [
        Row(src, dests[i % 5], f"Import{i // 5}", report_to=f"owner{i}@example.com")
        for i, src in enumerate(sources)
    ]
    source_before = {s.user: snapshot_mailbox(s.server, s.user) for s in sources}
    catcher = MailCatcher()
    smtp = Controller(catcher, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        work.configure(smtp_port=smtp.port, daemon={"max_jobs": 3, "max_per_host": 3})
        src_mark, dst_mark = LogMark(work.source), LogMark(work.dest)
        drop_csv(work.spool / "incoming", "accounts.csv", request_csv(rows))
        with work.daemon("run", once=True) as daemon:
            code = daemon.wait(50)
        wait_until(lambda: len(catcher.mails) >= 20 or None, 5, "20 report mails")
    finally:
        smtp.stop()
    assert code == 0, daemon.describe()

    # Spool: the CSV is done (redacted), nothing left behind or failed.
    assert work.files("incoming") == [] and work.files("processing") == []
    assert work.files("failed") == []
    assert work.files("done") == ["accounts.csv"]
    done = (work.spool / "done" / "accounts.csv").read_text(encoding="utf-8")
    assert done.count('"********"') == 40  # both password fields of all 20 rows

    # Results: one succeeded result per row, listed in the summary.
    found = results(work.spool)
    assert {rid: r["status"] for rid, r in found.items()} == dict.fromkeys(found, "succeeded")
    doc = summary(work.spool, "accounts.csv")
    assert doc is not None
    assert [r["row"] for r in doc["rows"]] == list(range(2, 22))
    assert {r["request_id"] for r in doc["rows"]} == set(found)
    assert doc["counts"] == {"succeeded": 20}
    assert len(found) == 20
    by_source = {r["source"]["userid"]: r for r in found.values()}
    assert set(by_source) == {s.user for s in sources}

    # Report mails: one per request, delivered and moved to outbox/sent/.
    assert sorted(rcpt for _f, rcpts, _d in catcher.mails for rcpt in rcpts) == sorted(
        f"owner{i}@example.com" for i in range(20)
    )
    sent = [p for p in work.files("outbox/sent") if not p.endswith(".batch.eml")]
    assert sorted(p.removesuffix(".eml") for p in sent) == sorted(found)
    # One batch report for the CSV, to every owner at once.
    ((_f, batch_rcpts, _d),) = catcher.batch_mails
    assert sorted(batch_rcpts) == sorted(f"owner{i}@example.com" for i in range(20))

    # The servers' own logs: never more sessions at once than the configured caps.
    assert 2 <= src_mark.max_concurrent() <= 3
    assert 2 <= dst_mark.max_concurrent() <= 3
    for s in sources:
        assert src_mark.logins(s.user), f"{s.user} never logged in"

    # The archive: every message exactly once, in the right folder; the source untouched.
    for i, src in enumerate(sources):
        after = snapshot_mailbox(src.server, src.user)
        assert after == source_before[src.user], f"source {src.user} changed"
        dest = snapshot_mailbox(dests[i % 5].server, dests[i % 5].user)
        assert archive_problems(after, dest, f"Import{i // 5}") == [], src.user
    for rid, r in found.items():
        loaded = source_before[r["source"]["userid"]].folders.values()
        assert sum(f["copied"] for f in r["folders"]) == sum(len(f.messages) for f in loaded), rid

    # The log: JSON lines, request events with their request id; stdout and the log file.
    lines = daemon.lines()
    assert check_log_lines(lines, found) == []
    assert check_log_lines(work.log_file.read_text(encoding="utf-8").splitlines(), found) == []
    events = [json.loads(line) for line in lines]
    for rid in found:
        names = {e["event"] for e in events if e.get("request_id") == rid}
        assert {"request_started", "folder_started", "request_finished"} <= names, rid

    # No password in any file: spool, state DB (+ -wal/-shm), logs, results, mails.
    secrets = [s.password for s in sources] + [d.password for d in dests]
    assert files_containing(work.root, secrets) == {}
    for _f, _r, data in catcher.mails:
        assert not any(s.encode() in data for s in secrets)


# -- --once exit codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code", "outcomes"),
    [
        (None, 0, {"succeeded": 2}),
        ("wrong password", 1, {"succeeded": 1, "failed": 1}),
        ("rejected row", 1, {"succeeded": 1, "rejected": 1}),
    ],
)
def test_once_exit_code_says_whether_every_request_succeeded(
    work: Work,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    bad: str | None,
    code: int,
    outcomes: dict[str, int],
) -> None:
    good_src, other_src = _accounts(new_source_account, 2, "once", {"INBOX": 3})
    dest = new_dest_account('once "dest", \\ pw ö')
    rows = [Row(good_src, dest, "Good")]
    wrong = 'not the "password", \\ é'
    if bad == "wrong password":
        rows.append(Row(other_src, dest, "Other", source_password=wrong))
    elif bad == "rejected row":
        rows.append(Row(other_src, dest, "Other", since="09/10/2017"))
    else:
        rows.append(Row(other_src, dest, "Other"))
    work.configure()
    mark = LogMark(work.source)
    drop_csv(work.spool / "incoming", "once.csv", request_csv(rows))
    with work.daemon("run", once=True) as daemon:
        assert daemon.wait(40) == code, daemon.describe()
    # run --once ends with one summary line for the administrator.
    line = daemon.stderr().strip().splitlines()[-1]
    accounts = 2  # every row, a rejected one included
    assert line.startswith(f"legacyflo-daemon: {accounts} account(s): "), line
    assert "messages copied" in line and "failed" in line
    (event,) = [e for e in daemon.events() if e["event"] == "run_summary"]
    assert event["accounts"] == accounts and event["copied"] >= 3

    doc = summary(work.spool, "once.csv")
    assert doc is not None and doc["counts"] == outcomes
    found = results(work.spool)
    by_row = {r["row"]: found[r["request_id"]] for r in doc["rows"]}
    assert sorted(by_row) == [2, 3] and len(found) == 2
    assert by_row[2]["status"] == "succeeded"
    assert work.files("done") == ["once.csv"] and work.files("failed") == []
    other = by_row[3]
    if bad == "wrong password":
        assert other["status"] == "failed"
        assert "authentication failed" in other["error"]
        # Not retried (account lockout): exactly one refused attempt on the server.
        mark.settled()
        assert mark.failed_logins(other_src.user) == 1
        assert mark.logins(other_src.user) == []
    elif bad == "rejected row":
        assert other["status"] == "rejected"
        (row,) = [r for r in doc["rows"] if r["outcome"] == "rejected"]
        assert (row["row"], row["field"]) == (3, "since")
        assert mark.logins(other_src.user) == []
    assert (
        archive_problems(
            snapshot_mailbox(good_src.server, good_src.user),
            snapshot_mailbox(dest.server, dest.user),
            "Good",
        )
        == []
    )
    assert check_log_lines(daemon.lines(), found) == []
    secrets = [good_src.password, other_src.password, dest.password, wrong]
    assert files_containing(work.root, secrets) == {}


def test_a_csv_rejected_as_a_whole_goes_to_failed_redacted_and_once_exits_1(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    (src,) = _accounts(new_source_account, 1, "whole", {"INBOX": 1})
    dest = new_dest_account('whole "dest", \\ pw ö')
    data = request_csv([Row(src, dest, "Whole")])
    header, rest = data.split(b"\r\n", 1)
    # Without the required destfolder column no row can be trusted: the file is unusable.
    header = header.replace(b',"destfolder"', b',"folder"')
    work.configure()
    drop_csv(work.spool / "incoming", "unusable.csv", header + b"\r\n" + rest)
    with work.daemon("run", once=True) as daemon:
        assert daemon.wait(30) == 1, daemon.describe()
    assert work.files("failed") == ["unusable.csv", "unusable.csv.error.txt"]
    error = (work.spool / "failed" / "unusable.csv.error.txt").read_text(encoding="utf-8")
    assert "destfolder" in error
    assert work.files("incoming") == [] and work.files("processing") == []
    assert results(work.spool) == {}
    assert [e["event"] for e in daemon.events()].count("csv_rejected") == 1
    assert check_log_lines(daemon.lines()) == []
    assert files_containing(work.root, [src.password, dest.password]) == {}


# -- intake: a CSV written slowly, a CSV dropped while stopped ---------------------------------


@pytest.mark.slow
def test_a_slowly_written_csv_waits_until_complete_and_one_dropped_while_stopped_is_taken(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    sources = _accounts(new_source_account, 6, "slow", {"INBOX": 2, "Sent Items": 1})
    dest = new_dest_account('slow "dest", \\ pw ö')
    early = [Row(sources[0], dest, "Early")]
    late = [Row(src, dest, f"Late{i}") for i, src in enumerate(sources[1:])]
    # stable_seconds 1.0 against writes every 0.1 s: the daemon must see the file grow.
    work.configure(daemon={"stable_seconds": 1.0})
    drop_csv(work.spool / "incoming", "early.csv", request_csv(early))  # daemon not running
    with work.daemon("run") as daemon:
        wait_until(lambda: summary(work.spool, "early.csv"), 20, "early.csv done", daemon)
        data = request_csv(late)
        write_slowly(work.spool / "incoming" / "late.csv", data, seconds=3.0, chunks=30)
        written = time.time()
        wait_until(lambda: summary(work.spool, "late.csv"), 30, "late.csv done", daemon)
        daemon.send(signal.SIGTERM)
        assert daemon.wait(15) == 0

    events = daemon.events()
    claims = [e for e in events if e["event"] == "spool_claimed"]
    assert [e["file"] for e in claims] == ["early.csv", "late.csv"]
    claimed = dt_epoch(claims[1]["timestamp"])
    assert claimed > written, "late.csv was claimed before its last byte was written"
    assert not [e for e in events if e["event"] in {"row_rejected", "csv_rejected"}]
    assert work.files("failed") == [] and work.files("incoming") == []
    assert work.files("done") == ["early.csv", "late.csv"]
    doc = summary(work.spool, "late.csv")
    assert doc is not None and doc["counts"] == {"succeeded": 5}
    assert [r["row"] for r in doc["rows"]] == [2, 3, 4, 5, 6]
    for row in early + late:
        assert (
            archive_problems(
                snapshot_mailbox(row.source.server, row.source.user),
                snapshot_mailbox(dest.server, dest.user),
                row.folder,
            )
            == []
        ), row.folder
    assert check_log_lines(daemon.lines(), results(work.spool)) == []
    assert files_containing(work.root, [s.password for s in sources] + [dest.password]) == {}


def dt_epoch(stamp: str) -> float:
    """Epoch seconds of a log ``timestamp`` (ISO 8601, UTC, ``Z``)."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
