"""State store: FIFO queue, recovery, checkpoints, and no password left behind."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from collections.abc import Callable, Collection
from pathlib import Path

import pytest

from legacyflo_daemon.errors import InternalError, StateError, StateUnusable
from legacyflo_daemon.model import (
    Account,
    DateRange,
    JobType,
    MessageFailure,
    Request,
    Secret,
    Status,
)
from legacyflo_daemon.state import lifecycle as lifecycle_module
from legacyflo_daemon.state.engine import PostgresEngine
from legacyflo_daemon.state.lifecycle import TRANSITIONS, Lifecycle, Transition, allowed
from legacyflo_daemon.state.schema import SCHEMA_VERSION
from legacyflo_daemon.state.store import CHUNK, FolderCheckpoint, StateStore
from testkit.postgres import PostgresServer

NewStore = Callable[..., StateStore]  # conftest.new_store: SQLite, then PostgreSQL

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
PASSWORDS = ('p@ss"w0rd\\%*{} é', "dest-Secr3t,;'")


def make_request(row: int, folder: str = "Data1") -> Request:
    return Request(
        row=row,
        jobtype=JobType.EXCHANGEIMAP,
        title=f"Upload {row}",
        source=Account("john", "baya.com", Secret(PASSWORDS[0]), "baya.com", 993),
        dest=Account("john", "baya-com.example", Secret(PASSWORDS[1]), "dst.example"),
        dest_folder=folder,
        report_to="postmaster@baya.com",
        dates=DateRange(dt.date(2017, 9, 25), dt.date(2018, 9, 24)),
    )


def test_requests_round_trip_with_secrets_and_fifo(new_store: NewStore) -> None:
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("a-2", make_request(2)), ("a-3", make_request(3))])
    st.add_csv(
        "b.csv", "b.csv", NOW, [("b-2", make_request(2))], [("b-3", 3, "t", {"message": "m"})]
    )
    assert [r.id for r in st.queued()] == ["a-2", "a-3", "b-2"]
    assert st.load_request("a-3") == make_request(3)
    assert st.request_row("b-3").status is Status.REJECTED
    assert st.row_error("b-3") == {"message": "m"}


def test_running_requests_are_requeued_after_restart(new_store: NewStore) -> None:
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2)), ("r2", make_request(3))])
    Lifecycle(st).start("r1", NOW)
    st.close()
    st2 = new_store()
    assert Lifecycle(st2).requeue_all_running() == 1
    assert [r.id for r in st2.queued()] == ["r1", "r2"]
    assert st2.request_row("r1").started_at is not None


def test_checkpoints_and_failures(new_store: NewStore) -> None:
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2))])
    cp = FolderCheckpoint("INBOX", 77, False, {"copied": 3})
    st.save_folder("r1", cp)
    st.save_folder("r1", FolderCheckpoint("INBOX", 77, True, {"copied": 5}))
    assert st.folder_checkpoints("r1") == {
        "INBOX": FolderCheckpoint("INBOX", 77, True, {"copied": 5})
    }
    f = MessageFailure("INBOX", 9, None, "Hi", "too big")
    st.add_failure("r1", f)
    st.add_failure("r1", f)  # recorded once
    assert st.failures("r1") == [f]
    st.clear_failures("r1", "INBOX")
    assert st.failures("r1") == []


def test_finished_request_leaves_no_password_in_any_file(tmp_path: Path) -> None:
    st = StateStore(tmp_path / "s.db")
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2)), ("r2", make_request(3, "D2"))])
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    # stored while queued (proves the search below can find them)
    assert PASSWORDS[1].encode() in blob
    assert json.dumps(PASSWORDS[0])[1:-1].encode() in blob
    lifecycle = Lifecycle(st)
    lifecycle.start("r1", NOW)
    lifecycle.finish("r1", Status.SUCCEEDED, {"ok": True}, NOW)
    lifecycle.finish("r2", Status.FAILED, {"ok": False}, NOW, error="authentication failed")
    assert st.purge_freed_pages(wait=True)  # the daemon does this when no request runs
    with pytest.raises(StateError):
        st.load_request("r1")
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        for pw in PASSWORDS:
            forms = (pw.encode(), json.dumps(pw)[1:-1].encode(), pw.encode("unicode_escape"))
            for form in forms:
                assert form not in data, p.name
    assert st.result("r2") == {"ok": False}
    assert st.request_row("r2").error == "authentication failed"


def test_finish_requires_a_final_status(new_store: NewStore) -> None:
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("x", make_request(2))])
    with pytest.raises(InternalError, match="cannot lead to running"):
        Lifecycle(st).finish("x", Status.RUNNING, {}, NOW)
    assert st.request_row("x").status is Status.QUEUED


@pytest.mark.parametrize(
    ("transition", "current", "new", "ok"),
    [
        (Transition.START, Status.QUEUED, Status.RUNNING, True),
        (Transition.START, Status.RUNNING, Status.RUNNING, False),
        (Transition.START, Status.SUCCEEDED, Status.RUNNING, False),
        (Transition.REQUEUE, Status.RUNNING, Status.QUEUED, True),
        (Transition.REQUEUE, Status.FAILED, Status.QUEUED, False),  # no revival
        (Transition.FINISH, Status.RUNNING, Status.PARTIAL, True),
        (Transition.FINISH, Status.QUEUED, Status.FAILED, True),  # poisoned CSV
        (Transition.FINISH, Status.SUCCEEDED, Status.FAILED, False),  # no second finish
        (Transition.FINISH, Status.RUNNING, Status.REJECTED, False),
        (Transition.RECORD_REJECTION, Status.REJECTED, Status.REJECTED, True),
        (Transition.RECORD_REJECTION, Status.QUEUED, Status.REJECTED, False),
    ],
)
def test_transition_table(transition: Transition, current: Status, new: Status, ok: bool) -> None:
    assert allowed(transition, current, new) is ok


def test_every_status_is_reachable_and_final_ones_are_final() -> None:
    targets = {t for _, (_, to) in TRANSITIONS.items() for t in to}
    assert targets | {Status.QUEUED} == set(Status)
    for sources, _ in TRANSITIONS.values():
        assert not (sources & {Status.SUCCEEDED, Status.PARTIAL, Status.FAILED})


def test_a_refused_transition_is_a_loud_bug_and_changes_nothing(new_store: NewStore) -> None:
    from structlog.testing import capture_logs

    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2))], [("r9", 9, "t", {"message": "m"})])
    lifecycle = Lifecycle(st)
    lifecycle.start("r1", NOW)
    lifecycle.finish("r1", Status.SUCCEEDED, {"n": 1}, NOW)
    with capture_logs() as events, pytest.raises(InternalError, match="refused"):
        lifecycle.finish("r1", Status.FAILED, {"n": 2}, NOW, error="late")  # finished twice
    assert events == [
        {
            "event": "request_transition_refused",
            "log_level": "error",
            "request_id": "r1",
            "transition": "finish",
            "to": "failed",
            "current": "succeeded",
        }
    ]
    with pytest.raises(InternalError):
        lifecycle.requeue("r1")  # revived after it finished
    with pytest.raises(InternalError):
        lifecycle.start("r1", NOW)
    row = st.request_row("r1")
    assert (row.status, row.error, st.result("r1")) == (Status.SUCCEEDED, None, {"n": 1})
    lifecycle.finish("r9", Status.REJECTED, {"rejected": True}, NOW)
    with pytest.raises(InternalError):  # a rejected row's result is recorded once
        lifecycle.finish("r9", Status.REJECTED, {"rejected": 2}, NOW)
    assert st.result("r9") == {"rejected": True}


def test_a_large_csv_is_recorded_in_chunks_and_seen_only_when_complete(new_store: NewStore) -> None:
    st = new_store()
    n = CHUNK * 2 + 7
    good = [(f"r{i}", make_request(i + 2)) for i in range(n)]
    csv_id = st.add_csv("big.csv", "big.csv", NOW, good, [("bad", 1, "t", {"message": "m"})])
    assert len(st.queued()) == n
    assert [r.id for r in st.requests(csv_id)][:3] == ["bad", "r0", "r1"]
    assert len(st.requests(csv_id)) == n + 1
    assert st.unfinished_count(csv_id) == n
    assert st.unfinished_counts() == {Status.QUEUED: n, Status.RUNNING: 0}


def test_a_csv_whose_recording_was_cut_is_invisible_then_discarded(
    new_store: NewStore, tmp_path: Path
) -> None:
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("a1", make_request(2))])
    # What a crash between two chunks leaves: the record not loaded, some rows written.
    with st._tx() as db:
        db.execute("UPDATE csv_files SET loaded = 0 WHERE name = 'a.csv'")
    assert st.queued() == [] and st.queued(per_csv=5) == []
    assert st.discard_unloaded() == ["a.csv"]
    assert st.requests() == [] and st.unfinished_csvs() == []
    if new_store.engine != "sqlite":  # type: ignore[attr-defined]
        return  # PostgreSQL's files: test_postgres_keeps_no_password_of_a_finished_request
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert st.purge_freed_pages(wait=True)
    assert PASSWORDS[1].encode() in blob  # the search below can find it...
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert PASSWORDS[1].encode() not in blob  # ...and the discarded rows left none behind


def test_queued_per_csv_reads_a_window_of_each_csv_in_fifo_order(new_store: NewStore) -> None:
    st = new_store()
    st.add_csv("big.csv", "big.csv", NOW, [(f"b{i}", make_request(i + 2)) for i in range(50)])
    st.add_csv("small.csv", "small.csv", NOW, [("s0", make_request(2))])
    window = [r.id for r in st.queued(per_csv=3)]
    assert window == ["b0", "b1", "b2", "s0"]  # the small CSV is seen behind a big one


def test_a_version_1_store_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE csv_files (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
            original TEXT NOT NULL, claimed_at TEXT NOT NULL, finished_at TEXT,
            crashes INTEGER NOT NULL DEFAULT 0, summary TEXT);
        INSERT INTO csv_files(name, original, claimed_at) VALUES ('old.csv', 'old.csv', 'x');
        """
    )
    db.close()
    st = StateStore(path)
    assert [c.name for c in st.unfinished_csvs()] == ["old.csv"]
    assert st.discard_unloaded() == []  # an old record counts as loaded
    row = st._one("SELECT value FROM meta WHERE key = 'schema'")
    assert row is not None and int(row[0]) == SCHEMA_VERSION


def test_a_newer_store_is_refused(new_store: NewStore) -> None:
    st = new_store()
    with st._tx() as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    st.close()
    with pytest.raises(StateError, match="newer than this daemon"):
        new_store()


async def test_add_csv_from_a_worker_thread_beside_the_event_loop(new_store: NewStore) -> None:
    import asyncio

    from legacyflo_daemon.runtime.bulk import in_thread

    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("a1", make_request(2))])
    good = [(f"r{i}", make_request(i + 2)) for i in range(CHUNK * 3)]
    task = asyncio.create_task(in_thread(st.add_csv, "b.csv", "b.csv", NOW, good))
    while not task.done():  # the loop's own calls go on meanwhile
        st.set_progress("a1", (1, 2), (3, 4), NOW)
        await asyncio.sleep(0)
    await task
    assert len(st.queued()) == CHUNK * 3 + 1


def test_crash_counting(new_store: NewStore) -> None:
    st = new_store()
    c = st.add_csv("a.csv", "orig.csv", NOW)
    assert st.record_crash(c) == 1
    assert st.record_crash(c) == 2
    assert st.csv_by_name("a.csv") is not None
    st.finish_csv(c, {"rows": []}, NOW)
    assert st.csv_by_name("a.csv") is None
    assert st.unfinished_csvs() == []


def test_state_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    # SQLite creates -wal and -shm with the database file's mode at the time: a chmod after
    # opening left them 0644 under the usual umask 022, readable by every local user.
    old = os.umask(0o022)
    try:
        st = StateStore(tmp_path / "new" / "dir" / "s.db")
        st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2))])
    finally:
        os.umask(old)
    try:
        state_dir = tmp_path / "new" / "dir"
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        names = sorted(p.name for p in state_dir.iterdir())
        assert names == ["s.db", "s.db-shm", "s.db-wal"]
        assert {n: stat.S_IMODE((state_dir / n).stat().st_mode) for n in names} == dict.fromkeys(
            names, 0o600
        )
    finally:
        st.close()


def _damage(path: Path) -> None:
    """Overwrite part of a b-tree page in the middle of the file (what a bad disk does)."""
    with path.open("r+b") as f:
        f.seek(4096 * 6 + 200)
        f.write(b"\xff" * 300)


def test_a_damaged_store_is_refused_at_start_in_one_line_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    st = StateStore(path)
    st.add_csv("a.csv", "a.csv", NOW, [(f"r{i}", make_request(i + 2)) for i in range(300)])
    assert st.purge_freed_pages(wait=True)
    st.close()
    _damage(path)
    before = path.read_bytes()
    with pytest.raises(StateUnusable) as caught:
        StateStore(path, verify=True)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: the state store is damaged")
    assert "restore it from a backup" in message and "quick_check" in message
    assert path.read_bytes() == before  # nothing written to a damaged store


def test_a_file_that_is_not_a_database_is_reported_damaged(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(StateUnusable, match=r"the state store is damaged \(file is not a database"):
        StateStore(path, verify=True)


# -- PostgreSQL only (the engine-independent behaviour is proven by the tests above, which run on
# both engines) ----------------------------------------------------------------------------------


def _every_table_as_text(pg: PostgresServer, url: str) -> str:
    database = url.rsplit("/", 1)[1]
    tables = [
        str(r[0])
        for r in pg.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database)
    ]
    assert "requests" in tables
    return "\n".join(
        str(value)
        for t in tables
        for row in pg.sql(f"SELECT * FROM {t}", database)
        for value in row
    )


def test_postgres_keeps_no_password_of_a_finished_request(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    st = StateStore(PostgresEngine(url))
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2)), ("r2", make_request(3, "D2"))])
    text = _every_table_as_text(postgres_server, url)
    # stored while queued: the search below can find them
    assert PASSWORDS[1] in text and json.dumps(PASSWORDS[0])[1:-1] in text
    lifecycle = Lifecycle(st)
    lifecycle.start("r1", NOW)
    lifecycle.finish("r1", Status.SUCCEEDED, {"ok": True}, NOW)
    lifecycle.finish("r2", Status.FAILED, {"ok": False}, NOW, error="authentication failed")
    assert st.purge_freed_pages(wait=True)
    text = _every_table_as_text(postgres_server, url)
    for pw in PASSWORDS:
        assert pw not in text and json.dumps(pw)[1:-1] not in text
    st.close()


def test_postgres_unreachable_is_one_line_without_the_password(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.new_database()
    wrong = url.replace(f":{postgres_server.port}/", ":1/")
    with pytest.raises(StateUnusable) as caught:
        StateStore(PostgresEngine(wrong, connect_timeout=2))
    message = str(caught.value)
    assert "\n" not in message and "check that the PostgreSQL server runs" in message
    assert "legacyflo@127.0.0.1:1/" in message
    assert postgres_server.password not in message and url.split("@")[0] not in message
    bad = url.replace("legacyflo:", "legacyflo:x")
    with pytest.raises(StateUnusable, match="password authentication failed") as caught:
        StateStore(PostgresEngine(bad))
    assert postgres_server.password not in str(caught.value)


def test_postgres_several_daemons_create_the_schema_once_together(
    postgres_server: PostgresServer,
) -> None:
    import concurrent.futures

    url = postgres_server.new_database()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: StateStore(PostgresEngine(url), verify=True), range(4)))
    stores[0].add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2))])
    assert [r.id for r in stores[3].queued()] == ["r1"]
    for st in stores:
        st.close()


# -- a shared state: nodes, leases, take-over (run on both engines: the same rules) -------------


def test_a_request_is_claimed_by_one_node_renewed_and_taken_over_when_its_lease_ends(
    new_store: NewStore,
) -> None:
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2)), ("r2", make_request(3))])
    a, b = Lifecycle(st, "node-a", 30), Lifecycle(new_store(), "node-b", 30)
    assert a.claim("r1", NOW) is True
    assert b.claim("r1", NOW) is False  # one node gets it, the other is told so
    assert b.claim("r2", NOW) is True
    assert (st.request_row("r1").node, st.request_row("r2").node) == ("node-a", "node-b")
    later = NOW + dt.timedelta(seconds=20)
    assert a.renew(later, {"r1"}) == {"r1"}  # node-a's lease now ends at +50 s, node-b's +30 s
    assert b.take_over(NOW + dt.timedelta(seconds=29)) == []  # nobody's lease ended yet
    assert a.take_over(NOW + dt.timedelta(seconds=31)) == [("r2", 1)]  # node-b died
    assert st.request_row("r2").status is Status.QUEUED and st.request_row("r2").node is None
    assert a.claim("r2", NOW) is True
    # node-b comes back (it was cut off, not dead): it cannot requeue or finish r2 any more...
    with pytest.raises(InternalError):
        b.requeue("r2")
    with pytest.raises(InternalError):
        b.finish("r2", Status.SUCCEEDED, {}, NOW)
    assert b.renew(later, {"r2"}) == set()  # ...and its heartbeat learns it holds nothing
    # A request left running without a task (its result could not be written) is not renewed:
    # its lease runs out and another node runs it again.
    assert a.renew(later, {"r1"}) == {"r1"}
    assert a.take_over(NOW + dt.timedelta(seconds=31)) == [("r2", 1)]  # r2 was never renewed
    assert a.claim("r2", NOW)
    # node-a stops: only its own requests go back to the queue.
    assert b.claim("r1", NOW) is False
    assert a.requeue_all_running() == 2
    assert [r.id for r in st.queued()] == ["r1", "r2"]


def test_a_lease_is_trusted_locally_for_half_its_length_from_before_it_was_written(
    new_store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fence (copier: before each APPEND batch) asks ``fresh``; past the local deadline the
    # scheduler asks the database. The deadline is counted from the clock read *before* the
    # write: a node that stalls during the write must err on the early side.
    clock = [1000.0]
    monkeypatch.setattr(lifecycle_module, "fence_clock", lambda: clock[0])
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2)), ("r2", make_request(3))])
    a, b = Lifecycle(st, "node-a", 30), Lifecycle(new_store(), "node-b", 30)
    assert not a.fresh("r1")  # never claimed here
    assert a.claim("r1", NOW)
    clock[0] += 14.9
    assert a.fresh("r1")
    clock[0] += 0.2  # 15 s: half the lease
    assert not a.fresh("r1")
    renew = st.renew_leases

    def slow_renew(node: str, until: int, ids: Collection[str]) -> set[str]:
        clock[0] += 10.0  # the write took 10 s (a stall, a freeze)
        return renew(node, until, ids)

    monkeypatch.setattr(st, "renew_leases", slow_renew)
    written = clock[0]
    assert a.renew(NOW, {"r1"}) == {"r1"}
    clock[0] = written + 14.9
    assert a.fresh("r1")
    clock[0] = written + 15.1
    assert not a.fresh("r1")
    # Taken over by another node: the renewal finds it gone and the deadline goes with it.
    assert b.take_over(NOW + dt.timedelta(seconds=31)) == [("r1", 1)]
    assert b.claim("r1", NOW)
    assert a.renew(NOW, {"r1"}) == set()
    clock[0] = written
    assert not a.fresh("r1")
    assert b.fresh("r1")
    b.forget("r1")
    assert not b.fresh("r1")
    assert Lifecycle(st).fresh("r2")  # the only daemon holds no lease: always fresh


def test_the_only_daemon_starts_and_requeues_without_nodes(new_store: NewStore) -> None:
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2))])
    only = Lifecycle(st)
    assert only.claim("r1", NOW) is True and st.request_row("r1").node is None
    assert only.renew(NOW, {"r1"}) == set()
    assert only.requeue_all_running() == 1


def test_nodes_record_their_heartbeats(new_store: NewStore) -> None:
    st = new_store()
    st.set_node("n1", {"pid": 1, "state": "running"}, 100)
    st.set_node("n2", {"pid": 2, "state": "running"}, 100)
    st.set_node("n1", {"pid": 1, "state": "stopped"}, 105)
    assert st.nodes() == {
        "n1": {"pid": 1, "state": "stopped"},
        "n2": {"pid": 2, "state": "running"},
    }


def test_postgres_claim_skips_a_row_another_node_holds_instead_of_waiting(
    postgres_server: PostgresServer,
) -> None:
    import time

    import psycopg

    url = postgres_server.new_database()
    st = StateStore(PostgresEngine(url))
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2))])
    other = psycopg.connect(url)  # another node, between its SELECT … FOR UPDATE and COMMIT
    other.execute("SELECT id FROM requests WHERE id = 'r1' FOR UPDATE")
    began = time.monotonic()
    assert Lifecycle(st, "node-a").claim("r1", NOW) is False
    assert time.monotonic() - began < 2.0  # told at once, not after the other's commit
    other.rollback()
    assert Lifecycle(st, "node-a").claim("r1", NOW) is True
    other.close()
    st.close()


def test_connections_and_allowances_are_shared_between_nodes(new_store: NewStore) -> None:
    st = new_store()
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2)), ("r2", make_request(3, "D2"))])
    a, b = Lifecycle(st, "node-a"), Lifecycle(st, "node-b")
    assert a.claim("r1", NOW) and b.claim("r2", NOW)
    st.set_pairs("r2", 3)
    held = (("baya.com", "dst.example"), ("john@baya.com", "john@dst.example"))
    assert st.connections_elsewhere("node-a") == [(*held, 3)]  # node-b's r2, not r1
    assert st.connections_elsewhere("node-b") == [(*held, 1)]  # a claim holds one pair
    st.learn_allowance("baya.com", 3, 100)
    st.learn_allowance("baya.com", 5, 200)  # the lowest stands; learnt again at 200
    st.learn_allowance("john@baya.com", 1, 50)
    assert st.allowances(since=100) == {"baya.com": 3}
    assert st.allowances(since=0) == {"baya.com": 3, "john@baya.com": 1}
