"""Several daemons, one PostgreSQL state (issue 15), end to end with the real test servers.

The daemons are subprocesses (``tests/e2ehelp.py``) configured with ``[state] url`` naming a
database of the session's private PostgreSQL (``testkit/postgres.py``), its password in a file.
As in ``test_daemon_signals.py``, the source is reached through a slow ``FaultProxy`` so that a
``kill -9`` lands mid-copy, and every check reads the servers, never the daemon's word.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from testkit.imap import ServerAccount
from testkit.postgres import PostgresServer
from testkit.proxy import FaultProxy
from tests.e2ehelp import (
    Work,
    check_log_lines,
    drop_csv,
    files_containing,
    request_csv,
    results,
    wait_until,
)
from tests.test_daemon_signals import BIG, assert_all_done_exactly_once, big_rows, copied_so_far

NewAccount = Callable[..., ServerAccount]


def use_postgres(work: Work, pg: PostgresServer, url: str) -> Path:
    """Add ``[state]`` to ``work``'s config: ``url`` without its password, which goes to a file
    (the config refuses a password in the URL). Returns the password file."""
    parts = urlsplit(url)
    bare = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    secret = work.root / "db-password"
    secret.write_text(pg.password + "\n")
    secret.chmod(0o600)
    with work.config.open("a", encoding="utf-8") as f:
        f.write(f'\n[state]\nurl = "{bare}"\npassword_file = "{secret}"\n')
    return secret


@pytest.mark.slow
def test_a_daemon_on_postgres_killed_9_mid_copy_resumes_exactly_once(
    work: Work,
    postgres_server: PostgresServer,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    slow_source: FaultProxy,
) -> None:
    url = postgres_server.new_database()
    dest = new_dest_account('pg "dest" pw, \\ ö')
    rows = big_rows(2, new_source_account, dest, slow_source)
    total = 2 * sum(BIG.values())
    work.configure(imap={"fetch_batch": 5})
    use_postgres(work, postgres_server, url)
    drop_csv(work.spool / "incoming", "big.csv", request_csv(rows))
    with work.daemon("first") as first:
        first.wait_for_event("folder_started", 20)
        wait_until(lambda: copied_so_far(rows) >= 20 or None, 20, "20 messages copied", first)
        first.kill()
    at_kill = copied_so_far(rows)
    assert 0 < at_kill < total, "the kill must land in the middle of the copy"
    assert not (work.spool / "state.sqlite3").exists()  # the state is in PostgreSQL
    with work.daemon("second", once=True) as second:
        assert second.wait(60) == 0, second.describe()
    assert check_log_lines(second.lines(), results(work.spool)) == []
    assert_all_done_exactly_once(work, rows, "big.csv")
    copied = sum(f["copied"] for r in results(work.spool).values() for f in r["folders"])
    present = sum(f["already_present"] for r in results(work.spool).values() for f in r["folders"])
    assert copied + present == total
    # Nothing the daemons wrote (nor their logs) holds the database password.
    secrets = [postgres_server.password]
    assert files_containing(work.spool, secrets) == {}
    for name in ("first", "second"):
        for path in (work.root / f"{name}.stdout", work.root / f"{name}.stderr"):
            assert postgres_server.password not in path.read_text(errors="replace")
