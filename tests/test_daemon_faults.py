"""End-to-end: bugs inside the daemon process (injected), on the real test servers.

The daemon runs as a subprocess; a fault is injected into it with a ``sitecustomize`` module
put first on its ``PYTHONPATH`` (Python imports it at start-up, before the daemon's code runs),
which replaces one function of the daemon by a broken one. Nothing in the product knows about
these faults.

- A bug in a parser (``AttributeError``) fails the request it happened in, once, as "internal
  error", with the traceback in the log — it is never retried as network trouble.
- The watcher crashing over and over: it is restarted a bounded number of times, then the
  daemon stops gracefully (exit 1 for systemd to restart it); the running copies finish their
  in-flight batch, and a restart completes every mailbox exactly once.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable

import pytest

from testkit.imap import ServerAccount
from testkit.proxy import FaultProxy
from testkit.snapshot import snapshot_mailbox
from tests.e2ehelp import (
    Row,
    Work,
    check_log_lines,
    daemon_env,
    drop_csv,
    files_containing,
    load_mailbox,
    mailbox_specs,
    request_csv,
    results,
    wait_until,
)
from tests.test_daemon_signals import BIG, assert_all_done_exactly_once, big_rows, copied_so_far

NewAccount = Callable[..., ServerAccount]


def injected(work: Work, code: str) -> dict[str, str]:
    """A daemon environment whose Python runs ``code`` at start-up (``sitecustomize``)."""
    hook = work.root / "inject"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(code), encoding="utf-8")
    return daemon_env({"PYTHONPATH": str(hook)})


PARSER_BUG = """
    import legacyflo_daemon.imap.session as session

    def metas_of(parts):
        raise AttributeError("injected parser bug")

    session.metas_of = metas_of  # where Session.open_folder and fetch_meta* look it up
"""


def test_a_parser_bug_fails_its_request_once_with_the_traceback_in_the_log(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = new_source_account('bug "src" pw, \\ ö')
    dest = new_dest_account('bug "dest" pw %*')
    load_mailbox(src.server, src.user, mailbox_specs(src.user, {"INBOX": 5}, seed=7))
    before = snapshot_mailbox(src.server, src.user)
    work.configure()
    drop_csv(work.spool / "incoming", "bug.csv", request_csv([Row(src, dest, "Bug")]))
    with work.daemon("once", once=True, env=injected(work, PARSER_BUG)) as daemon:
        code = daemon.wait(60)
    assert code == 1, daemon.describe()  # --once: not every request succeeded

    ((rid, doc),) = results(work.spool).items()
    assert doc["status"] == "failed"
    assert doc["error"].startswith("internal error (AttributeError); not retried")
    events = daemon.events()
    names = [e["event"] for e in events]
    assert "request_retry" not in names  # a bug is not network trouble
    (internal,) = [e for e in events if e["event"] == "request_internal_error"]
    assert internal["request_id"] == rid
    assert f"error_id {internal['error_id']}" in doc["error"]
    traceback = json.dumps(internal["exception"])
    # The folder's first metadata comes with its EXAMINE (Session.open_folder, issue 14).
    assert "injected parser bug" in traceback and "open_folder" in traceback
    assert names.count("request_started") == 1 and names.count("result_written") == 1
    assert check_log_lines(daemon.lines(), [rid]) == []
    assert snapshot_mailbox(src.server, src.user) == before  # the source is never modified
    assert files_containing(work.root, [src.password, dest.password]) == {}


WATCHER_CRASH = """
    from pathlib import Path

    import watchfiles

    import legacyflo_daemon.daemon.supervisor as supervisor

    MARKER = Path({marker!r})
    # Watcher.watch imports awatch when it starts (not at the daemon's import: issue 14).
    real_awatch = watchfiles.awatch

    async def awatch(*args, **kwargs):
        if MARKER.exists():
            raise RuntimeError("injected watcher crash")
        async for changes in real_awatch(*args, **kwargs):
            if MARKER.exists():
                raise RuntimeError("injected watcher crash")
            yield changes

    watchfiles.awatch = awatch
    # Restart quickly, so that the test sees the supervisor give up within a second.
    supervisor.Supervisor.__init__.__kwdefaults__.update(first_pause=0.01, max_pause=0.05)
"""


@pytest.mark.slow
def test_a_crashing_watcher_stops_the_daemon_gracefully_and_loses_nothing(
    work: Work,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    slow_source: FaultProxy,
) -> None:
    dest = new_dest_account('watch "dest" pw, \\ ö')
    rows = big_rows(2, new_source_account, dest, slow_source)
    total = 2 * sum(BIG.values())
    marker = work.root / "crash-the-watcher"
    work.configure(imap={"fetch_batch": 5}, daemon={"grace_seconds": 20.0})
    drop_csv(work.spool / "incoming", "watch.csv", request_csv(rows))
    env = injected(work, WATCHER_CRASH.format(marker=str(marker)))
    with work.daemon("first", env=env) as first:
        wait_until(lambda: copied_so_far(rows) >= 20 or None, 30, "20 messages copied", first)
        marker.touch()
        code = first.wait(30)
    assert code == 1, first.describe()  # systemd's Restart=on-failure starts it again
    at_exit = copied_so_far(rows)
    assert at_exit < total, "the crash must land in the middle of the copy"

    events = first.events()
    names = [e["event"] for e in events]
    crashed = [e for e in events if e["event"] == "service_crashed"]
    assert {e["service"] for e in crashed} == {"watcher"} and len(crashed) == 6
    assert "injected watcher crash" in json.dumps(crashed[0]["exception"])
    assert names.index("service_gave_up") < names.index("daemon_stopping")
    # The copies were not cancelled: each finished its batch and was re-queued.
    assert names.count("request_interrupted") == 2
    assert "request_internal_error" not in names and "request_finished" not in names
    (shutdown,) = [e for e in events if e["event"] == "daemon_shutdown"]
    assert shutdown["requeued"] == 2
    assert results(work.spool) == {}
    assert check_log_lines(first.lines()) == []

    marker.unlink()
    with work.daemon("second", once=True) as second:
        assert second.wait(90) == 0, second.describe()
    assert [e["requeued"] for e in second.events() if e["event"] == "recovered"] == [0]
    assert_all_done_exactly_once(work, rows, "watch.csv")
