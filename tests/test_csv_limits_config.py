"""The ``[csv]`` limits of the config are the ones ``check`` and the daemon apply."""

from __future__ import annotations

from collections.abc import Callable

from testkit.imap import ServerAccount
from tests.e2ehelp import Row, Work, drop_csv, request_csv, run_cli


def test_a_configured_row_limit_rejects_the_file_in_check_and_in_the_daemon(
    work: Work, new_source_account: Callable[..., ServerAccount],
    new_dest_account: Callable[..., ServerAccount],
) -> None:  # fmt: skip
    dest = new_dest_account()
    rows = [Row(new_source_account(), dest, f"F{i}") for i in range(2)]
    work.configure()
    with work.config.open("a", encoding="utf-8") as fh:
        fh.write("\n[csv]\nmax_rows = 1\n")
    path = work.root / "two.csv"
    path.write_bytes(request_csv(rows))
    checked = run_cli("check", "--config", str(work.config), str(path))
    assert checked.returncode == 2 and "csv.max_rows" in checked.stderr, checked
    drop_csv(work.spool / "incoming", "two.csv", path.read_bytes())
    with work.daemon("d", once=True) as daemon:
        assert daemon.wait(30) == 1
    assert sorted(work.files("failed")) == ["two.csv", "two.csv.error.txt"]
    assert "csv.max_rows" in (work.spool / "failed" / "two.csv.error.txt").read_text()
