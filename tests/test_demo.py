"""``make demo`` (demo/): its pure parts, and one end-to-end run as a subprocess."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from demo import checks as demo_checks
from demo import mailbox as demo_mailbox
from demo import run as demo
from demo import show as demo_show
from demo.env import DemoError
from legacyflo_daemon.config.load import load_config
from legacyflo_daemon.model import JobType
from legacyflo_daemon.request import csvfile
from testkit.dovecot import missing_dovecot
from testkit.snapshot import FolderState, MailboxSnapshot, MessageState

REPO = Path(__file__).resolve().parent.parent
ACCOUNTS = demo_mailbox.DemoAccounts()


# -- the request CSV and the config ------------------------------------------------------------


def test_request_csv_has_the_reference_header_and_every_field_quoted() -> None:
    data = demo_mailbox.request_csv(ACCOUNTS, 10993, "127.0.0.4")
    reference = (REPO / "tests" / "fixtures" / "reference_sample.csv").read_bytes()
    lines = data.split(b"\r\n")
    assert lines[0] == reference.splitlines()[0]
    assert lines[1].startswith(b'"EXCHANGEIMAP",') and lines[1].endswith(b'"31-Dec-2018"')
    assert lines[1].count(b'","') == len(demo_mailbox.CSV_HEADER) - 1


def test_request_csv_is_accepted_by_the_product_parser_with_the_passwords_intact() -> None:
    result = csvfile.parse(demo_mailbox.request_csv(ACCOUNTS, 10993, "127.0.0.4"))
    assert result.errors == () and result.warnings == ()
    (req,) = result.requests
    assert req.jobtype is JobType.EXCHANGEIMAP
    assert (req.source.server, req.source.port, req.dest.server) == (
        "127.0.0.1",
        10993,
        "127.0.0.4",
    )
    assert req.source.password.reveal() == ACCOUNTS.source_password
    assert req.dest.password.reveal() == ACCOUNTS.dest_password
    assert (req.dates.since, req.dates.before) == (ACCOUNTS.since, ACCOUNTS.before)
    assert req.dest_folder == ACCOUNTS.dest_folder
    assert req.report_to == ACCOUNTS.report_to


def test_config_loads_with_the_product_loader(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed by the loader\n")
    path = tmp_path / "config.toml"
    path.write_text(
        demo_mailbox.config_toml(
            spool=tmp_path / "spool",
            ca_file=ca,
            dest_port=12993,
            smtp_port=2525,
            hosts=("127.0.0.1", "127.0.0.4"),
        )
    )
    cfg = load_config(path)
    assert cfg.daemon.spool == tmp_path / "spool"
    assert cfg.imap.dest_port == 12993
    assert cfg.log.format == "json"
    assert cfg.smtp is not None and (cfg.smtp.port, cfg.smtp.tls) == (2525, "none")
    assert cfg.host("127.0.0.1").ca_file == ca and cfg.host("127.0.0.4").ca_file == ca


# -- the sample mailbox ------------------------------------------------------------------------


def test_sample_mailbox_is_small_and_spans_2016_to_2019() -> None:
    box = demo_mailbox.sample_mailbox()
    specs = [s for folder in box.values() for s in folder]
    assert 35 <= len(specs) <= 45
    assert {s.internaldate.year for s in specs} == {2016, 2017, 2018, 2019}
    assert {"Sent Items", "Café & Réunions", "Calendar"} <= set(box)
    assert not demo_mailbox.is_mail_folder("Calendar")
    assert len({s.data for s in specs}) == len(specs)  # no accidental duplicates


@pytest.mark.parametrize(
    ("source", "dest"),
    [
        ("INBOX", "R.F.Inbox"),
        ("INBOX/Projects", "R.F.Inbox.Projects"),
        ("Sent Items", "R.F.Sent Items"),
        ("Café & Réunions", "R.F.Café & Réunions"),
    ],
)
def test_dest_folder_name(source: str, dest: str) -> None:
    assert demo_mailbox.dest_folder_name(source, "R", "F") == dest


def _snapshot(folders: dict[str, list[tuple[str, dt.datetime]]]) -> MailboxSnapshot:
    states = {
        name: FolderState(
            name,
            1,
            tuple(
                MessageState(uid, frozenset({"\\Seen"}), int(when.timestamp()), sha, 10)
                for uid, (sha, when) in enumerate(msgs, start=1)
            ),
        )
        for name, msgs in folders.items()
    }
    return MailboxSnapshot(states, frozenset())


IN, OUT = dt.datetime(2017, 3, 1, tzinfo=dt.UTC), dt.datetime(2016, 3, 1, tzinfo=dt.UTC)
LAST_DAY = dt.datetime(2018, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
SOURCE = {"INBOX": [("a", IN), ("b", OUT), ("c", LAST_DAY)], "Calendar": [("k", IN)]}
ARCHIVE = "R.Import2017-2018.Inbox"


@pytest.mark.parametrize(
    ("dest", "wrong"),
    [
        ({ARCHIVE: [("c", LAST_DAY), ("a", IN)]}, []),
        ({ARCHIVE: [("a", IN)]}, [ARCHIVE]),  # the last day of the range is missing
        ({ARCHIVE: [("a", IN), ("c", LAST_DAY), ("a", IN)]}, [ARCHIVE]),  # a duplicate
        ({ARCHIVE: [("a", IN), ("c", LAST_DAY), ("b", OUT)]}, [ARCHIVE]),  # out of range
        ({ARCHIVE: [("a", IN), ("c", LAST_DAY)], "R.Import2017-2018.Calendar": [("k", IN)]},
         ["R.Import2017-2018.Calendar"]),  # a non-mail folder copied
        ({"R.Import2017-2018.INBOX": [("a", IN), ("c", LAST_DAY)]},
         ["R.Import2017-2018.INBOX", ARCHIVE]),  # INBOX not mapped to Inbox
    ],
)  # fmt: skip
def test_archive_problems(dest: dict[str, list[tuple[str, dt.datetime]]], wrong: list[str]) -> None:
    total, names = demo_checks.archive_problems(_snapshot(SOURCE), _snapshot(dest), ACCOUNTS, "R")
    assert (total, names) == (2, wrong)


# -- output ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"event": "request_started", "title": "T", "source": "a@x", "source_server": "s",
             "dest": "b@y", "dest_server": "d", "folder": "F"},
            "> T\n  a@x on s  ->  b@y on d, folder F",
        ),
        (
            {"event": "folder_copied", "folder": "Inbox", "in_range": 7, "copied": 5,
             "already_present": 2, "failed": 0, "bytes": 2048},
            "  copied folder Inbox:              7 in range, 5 copied, 2 already there (2.0 kB)",
        ),
        (
            {"event": "request_finished", "status": "succeeded", "error": None,
             "totals": {"copied": 20, "already_present": 0, "failed": 1, "folders": 4}},
            "< finished: SUCCEEDED - 20 copied, 1 FAILED in 4 folders",
        ),
        (
            {"event": "request_finished", "status": "failed", "totals": None,
             "error": "authentication failed: no"},
            "< finished: FAILED\n  error: authentication failed: no",
        ),
        (
            {"event": "request_crashed", "level": "error",
             "exception": [{"exc_type": "KeyError", "exc_value": "'x'"}]},
            "! error: request_crashed KeyError: 'x'",
        ),
        ({"event": "request_retry", "level": "warning", "error": "timeout"},
         "! warning: request_retry error=timeout"),
        ({"event": "daemon_ready", "level": "info"}, None),
    ],
)  # fmt: skip
def test_event_line(event: dict[str, Any], expected: str | None) -> None:
    assert demo_show.event_line(event) == expected


def test_folder_tree() -> None:
    counts: dict[str, int | None] = {
        "INBOX": 0,
        "INBOX.a": None,
        "INBOX.a.x": 3,
        "INBOX.a.y": 12,
        "INBOX.b": 1,
    }
    assert demo_show.folder_tree(counts) == [
        "INBOX      0",
        "|- a",
        "|  |- x    3",
        "|  `- y   12",
        "`- b       1",
    ]


def test_masked_csv_hides_both_passwords() -> None:
    data = demo_mailbox.request_csv(ACCOUNTS, 993, "127.0.0.4")
    text = demo_show.masked_csv(data, demo_mailbox.PASSWORD_FIELDS)
    assert text.count(demo_show.MASK) == 2
    for secret in ACCOUNTS.passwords:
        assert secret not in text and secret.replace('"', '""') not in text
    assert '"john","exchange.example"' in text


def test_mail_lines_show_subject_text_and_listing_start() -> None:
    msg = EmailMessage()
    msg["Subject"] = "[legacyflo] succeeded: Demo"
    msg["From"] = "a@x.example"
    msg["To"] = "b@y.example"
    msg.set_content("Status: succeeded\nFolders: 4\n")
    rows = "".join(f"Inbox,2017-01-0{i},a,s{i},10,<m{i}@x>\r\n" for i in range(1, 9))
    msg.add_attachment(
        ("folder,date,from,subject,size,message_id\r\n" + rows).encode(),
        maintype="text",
        subtype="csv",
        filename="listing.csv",
    )
    lines = demo_show.mail_lines(msg.as_bytes(), listing_lines=3)
    assert lines[0] == "Subject: [legacyflo] succeeded: Demo"
    assert "Status: succeeded" in lines
    at = next(i for i, line in enumerate(lines) if line.startswith("Attachment: listing.csv"))
    assert lines[at + 1] == "  folder,date,from,subject,size,message_id"
    assert lines[at + 4] == "  ... (8 messages in all)"
    assert demo_show.attachment_names(msg.as_bytes()) == ["listing.csv"]


# -- the work dir ------------------------------------------------------------------------------


def test_workdir_is_wiped_only_when_the_demo_made_it(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    demo.prepare_workdir(work)
    (work / "old.txt").write_text("from the last run")
    demo.prepare_workdir(work)
    assert sorted(p.name for p in work.iterdir()) == [demo.MARKER]

    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(DemoError, match="not made by the demo"):
        demo.prepare_workdir(foreign)
    assert (foreign / "thesis.tex").exists()


def test_files_containing_finds_plain_csv_quoted_and_json_escaped_forms(tmp_path: Path) -> None:
    secret = 'a"b\\c é'
    (tmp_path / "plain").write_text(f"x {secret} y")
    (tmp_path / "csv").write_text('"a""b\\c é"')
    (tmp_path / "json").write_text('{"p": "a\\"b\\\\c \\u00e9"}')
    (tmp_path / "clean").write_text("a b c")
    found = demo_checks.files_containing(tmp_path, (secret,))
    assert [p.name for p in found] == ["csv", "json", "plain"]


# -- the whole demo ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.skipif(missing_dovecot() is not None, reason=str(missing_dovecot()))
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, demo.DIR_ENV: str(tmp_path / "demo"), "PYTHONIOENCODING": "utf-8"}
    env.pop("LEGACYFLO_CONFIG", None)
    started = dt.datetime.now()
    proc = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = (dt.datetime.now() - started).total_seconds()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "The report mails, as the SMTP server received them" in output
    assert "Subject: " in output and "Attachment: listing.csv" in output
    assert "succeeded" in output
    assert "[FAILED]" not in output
    assert took < 60, f"the demo took {took:.0f} s"
    done = list((tmp_path / "demo" / "spool" / "done").iterdir())
    assert len(done) == 1
