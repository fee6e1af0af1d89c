"""``legacyflo-daemon check --connect``: one login per account, a clear verdict per login,
exit 1 when one fails, and no password in the output."""

from __future__ import annotations

from pathlib import Path

from testkit.dovecot import DovecotServer
from testkit.imap import ServerAccount
from tests.e2ehelp import Row, request_csv, run_cli, write_config


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
