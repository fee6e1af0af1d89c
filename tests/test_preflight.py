"""``legacyflo-daemon check --connect``: one login per account, a clear verdict per login,
exit 1 when one fails, and no password in the output."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from legacyflo_daemon.cli import dryrun
from legacyflo_daemon.report.mail import human_size
from testkit.dovecot import DovecotServer
from testkit.imap import ServerAccount
from testkit.maildir import MailSpec, load_messages
from testkit.mailgen import make_message, utc
from testkit.snapshot import snapshot_mailbox
from tests.e2ehelp import DEST_ROOT, Row, request_csv, run_cli, write_config


def test_check_connect_tries_every_login_once(
    tmp_path: Path,
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
) -> None:
    config = write_config(
        tmp_path / "config.toml", spool=tmp_path / "spool", source=source_server, dest=dest_server
    )
    wrong = 'not-the-password,"x"'
    csv_path = tmp_path / "accounts.csv"
    csv_path.write_bytes(
        request_csv(
            [
                Row(source_account, dest_account, "Good"),
                Row(source_account, dest_account, "Wrong", source_password=wrong),
            ]
        )
    )
    before = source_server.count_logins(source_account.user)
    offline = run_cli("check", "--config", str(config), str(csv_path))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "Logins:" not in offline.stdout
    assert source_server.count_logins(source_account.user) == before  # offline by default

    done = run_cli("check", "--connect", "--config", str(config), str(csv_path))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("  row ")]
    assert len(lines) == 4
    assert lines[0].startswith("  row 2 source") and lines[0].endswith(": OK")
    assert lines[1].startswith("  row 2 destination") and lines[1].endswith(": OK")
    assert lines[2].startswith("  row 3 source") and "FAILED: " in lines[2]
    assert "authentication failed" in lines[2]
    assert lines[3].startswith("  row 3 destination") and lines[3].endswith(": OK")
    assert "4 login(s): 3 OK, 1 FAILED" in done.stdout
    source_server.wait_for_log(
        lambda _text: source_server.count_logins(source_account.user).failed > before.failed
    )
    after = source_server.count_logins(source_account.user)
    assert after.failed == before.failed + 1  # exactly one attempt with the wrong password
    assert after.succeeded == before.succeeded + 1
    for secret in (wrong, source_account.password, dest_account.password):
        assert secret not in done.stdout + done.stderr


def address(account: ServerAccount) -> str:
    return f"{account.user}@{account.domain}"


def spec(subject: str, when: dt.datetime, flags: frozenset[str] = frozenset()) -> MailSpec:
    data = make_message(subject=subject, date=when, message_id=f"<{subject}@dry.example>")
    return MailSpec(data, flags, when, label=subject)


def test_the_dry_run_measures_what_would_be_copied_and_changes_nothing(
    tmp_path: Path,
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
) -> None:
    """``check --connect --sizes``: the planned folders with the messages and bytes in the date
    range, the excluded folder named with its reason, an estimate; one login per account, and
    neither server nor the file system changed (unseen mail stays unseen)."""
    inside, outside = utc(2018, 3, 1, 12), utc(2016, 5, 1, 12)
    inbox = load_messages(
        source_server,
        source_account.user,
        "INBOX",
        [spec("in-1", inside), spec("in-2", utc(2018, 9, 24, 23)), spec("old", outside)],
    )
    projects = load_messages(
        source_server,
        source_account.user,
        "Projects/2018",
        [spec("p-1", inside, frozenset({"\\Flagged"})), spec("p-old", outside)],
    )
    load_messages(source_server, source_account.user, "Calendar", [spec("cal", inside)])
    config = write_config(
        tmp_path / "config.toml", spool=tmp_path / "spool", source=source_server, dest=dest_server
    )
    csv_path = tmp_path / "accounts.csv"
    csv_path.write_bytes(
        request_csv(
            [Row(source_account, dest_account, "Dry", since="2017-09-25", before="2018-09-24")]
        )
    )
    before = (
        snapshot_mailbox(source_server, source_account.user),
        snapshot_mailbox(dest_server, dest_account.user),
    )
    logins = source_server.count_logins(source_account.user)

    done = run_cli("check", "--sizes", "--config", str(config), str(csv_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert "2 login(s): 2 OK, 0 FAILED" in out
    dry = out[out.index("\nDry run (nothing was written") :].splitlines()
    assert [line for line in dry if len(line) > 80] == []
    assert f"Row 2: {address(source_account)} → {address(dest_account)}" in dry
    assert f"  destination folder: {DEST_ROOT}.Dry" in dry
    in_range = [m for m in inbox if m.label != "old"]
    assert f"  {2:>9} {human_size(sum(m.size for m in in_range)):>9}  INBOX → Inbox" in dry
    assert f"  {1:>9} {human_size(projects[0].size):>9}  Projects/2018 → Projects.2018" in dry
    assert not [line for line in dry if "Calendar →" in line]
    assert f"  skipped: Calendar: {dryrun.EXCLUDED}" in dry
    assert f"  skipped: Projects: {dryrun.NO_MAIL}" in dry
    total = sum(m.size for m in in_range) + projects[0].size
    assert any(line.startswith(f"  total: 3 message(s), {human_size(total)} in ") for line in dry)
    assert f"Dry run total: 1 account(s), 3 message(s), {human_size(total)}" in dry
    assert dry[-2:] == [
        "  estimate: under a minute",
        f"  assuming {dryrun.ASSUMED_MB_PER_SECOND:g} MB/s per request and daemon.max_jobs = 3 "
        "at once (--rate sets it)",
    ]

    # Read-only: same folders, UIDs, flags (no \Seen added), dates and bytes on both sides; no
    # spool; one login per account.
    assert snapshot_mailbox(source_server, source_account.user) == before[0]
    assert snapshot_mailbox(dest_server, dest_account.user) == before[1]
    assert not (tmp_path / "spool").exists()
    source_server.wait_for_log(
        lambda _text: source_server.count_logins(source_account.user).succeeded > logins.succeeded
    )
    assert source_server.count_logins(source_account.user).succeeded == logins.succeeded + 1


def test_the_dry_run_skips_an_account_whose_login_fails(
    tmp_path: Path,
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
) -> None:
    config = write_config(
        tmp_path / "config.toml", spool=tmp_path / "spool", source=source_server, dest=dest_server
    )
    csv_path = tmp_path / "accounts.csv"
    csv_path.write_bytes(
        request_csv([Row(source_account, dest_account, "Dry", source_password="wrong")])
    )
    done = run_cli("check", "--connect", "--sizes", "--config", str(config), str(csv_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 login(s): 1 OK, 1 FAILED" in done.stdout
    assert "Dry run total: 0 account(s), 0 message(s), 0 B" in done.stdout
    assert f"Row 2: {address(source_account)}" not in done.stdout
