"""Per-batch lease fencing (issue 15): a node frozen longer than its lease stores nothing more.

A node that was stopped (SIGSTOP, a paused VM) past its lease finds, when it wakes, that
another node took its request over. asyncio runs I/O callbacks before due timers, so the
heartbeat that would tell it comes too late: the batch whose FETCH completed while it slept
would be appended a second time. The copier checks its lease (a local deadline, then the
database) before each APPEND batch (``Scheduler._lease_held``); this test proves it end to end
with two real daemons, a real PostgreSQL and the real test servers.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from testkit.imap import ServerAccount
from testkit.postgres import PostgresServer
from testkit.proxy import Direction, FaultProxy
from tests.e2ehelp import (
    DaemonProcess,
    Work,
    archive_problems_of,
    check_log_lines,
    drop_csv,
    files_containing,
    request_csv,
    results,
    wait_until,
)
from tests.test_cluster import node_config, running_on, use_postgres
from tests.test_daemon_signals import BIG, big_rows, copied_so_far

NewAccount = Callable[..., ServerAccount]
LOCKS = (
    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _steady(probe: Callable[[], int], seconds: float) -> int | None:
    """``probe``'s value once it did not change for ``seconds``."""
    first = probe()
    time.sleep(seconds)
    return first if probe() == first else None


def _freeze(node: DaemonProcess, pg: PostgresServer, db: str) -> None:
    """SIGSTOP ``node`` at a moment it holds no cluster lock (a frozen holder of the admission
    lock would keep every other node from starting a request, which is not what is tested)."""
    for _ in range(20):
        node.send(signal.SIGSTOP)
        held = []
        for _ in range(3):  # another node's locks are brief: one held throughout is the node's
            time.sleep(0.2)
            held.append(len(pg.sql(LOCKS, db)))
        if min(held) == 0:
            return
        node.send(signal.SIGCONT)
        time.sleep(0.3)
    raise AssertionError("the node always held a cluster lock")


@pytest.mark.slow
def test_a_node_frozen_past_its_lease_stores_nothing_more_when_it_wakes(
    work: Work,
    postgres_server: PostgresServer,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    slow_source: FaultProxy,
) -> None:
    url = postgres_server.new_database()
    db = url.rsplit("/", 1)[1]
    dest = new_dest_account('fence "dest" pw, \\ ö')
    rows = big_rows(1, new_source_account, dest, slow_source)
    total = sum(BIG.values())
    # A long IMAP timeout: the frozen node's connections must still be usable when it wakes
    # (else it would reconnect and never reach the batch this test is about).
    work.configure(
        imap={"fetch_batch": 5, "folder_workers": 1, "timeout": 600.0}, daemon={"max_jobs": 1}
    )
    use_postgres(work, postgres_server, url)
    a_config = node_config(work, "node-a")
    b_config = node_config(work, "node-b", intake=False)
    drop_csv(work.spool / "incoming", "fence.csv", request_csv(rows))
    with DaemonProcess(a_config, work.root, name="a") as a:
        wait_until(lambda: copied_so_far(rows) >= 20 or None, 30, "20 messages copied", a)
        (rid,) = running_on(postgres_server, url)
        with DaemonProcess(b_config, work.root, name="b") as b:
            b.wait_for_event("daemon_ready", 30)
            # node-a waits for a FETCH answer with nothing of its own in flight: the source's
            # answers are held back, and the batch it had is stored (the count stands still).
            slow_source.stall(Direction.SERVER_TO_CLIENT)
            before = wait_until(lambda: _steady(lambda: copied_so_far(rows), 1.0), 30, "a pause")
            assert 0 < before < total, "the freeze must land in the middle of the copy"
            _freeze(a, postgres_server, db)
            frozen = time.monotonic()
            try:
                # The source answers again (node-a's FETCH answer waits in its socket), and
                # node-b takes the request over once node-a's lease ran out, and finishes it.
                slow_source.resume()
                taken = b.wait_for(lambda e: e.get("event") == "requests_taken_over", 60,
                                   "take-over")  # fmt: skip
                assert taken["requests"] == [rid]
                assert time.monotonic() - frozen > 3.0  # not before the lease (4 s) ran out
                wait_until(lambda: rid in results(work.spool) or None, 180, "the result", b)
                assert copied_so_far(rows) == total
            finally:
                a.send(signal.SIGCONT)
            # node-a wakes with a fetched batch in hand: it must find the lease gone before
            # appending it, say so, and leave the request alone.
            a.wait_for(lambda e: e.get("event") == "request_left_to_another_node", 30, "leaving")
            time.sleep(2.0)  # a late APPEND would have landed by now
            assert copied_so_far(rows) == total
            assert archive_problems_of((r.source, r.dest, r.folder) for r in rows) == []
            lost = [e for e in a.events() if e.get("event") == "request_lease_lost"]
            assert [e["request_id"] for e in lost] == [rid], lost
            assert not [e for e in a.events() if e.get("event") == "request_finished"]
            assert results(work.spool)[rid]["status"] == "succeeded"
            for node in (a, b):
                node.send(signal.SIGTERM)
            for node in (a, b):
                assert node.wait(30) == 0, node.describe()
    found = results(work.spool)
    for node in (a, b):
        assert check_log_lines(node.lines(), found) == []
    secrets = [r.source.password for r in rows] + [dest.password, postgres_server.password]
    assert set(files_containing(work.root, secrets)) <= {work.root / "db-password"}
