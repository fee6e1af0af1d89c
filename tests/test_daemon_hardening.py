"""End-to-end: the hardening of issue 11 with ``legacyflo-daemon`` as a subprocess.

One daemon per spool and state store (an exclusive lock), derived file names that fit whatever
the CSV's name, private files whatever the umask, clear stops on a damaged or full state
store, drops claimed only when complete, crash counting that spares progressing work, and the
warnings given at start (docs/contract.md §2, §7).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.imap import ServerAccount
from testkit.proxy import FaultProxy
from tests.e2ehelp import (
    Row,
    Work,
    check_log_lines,
    drop_csv,
    files_containing,
    load_mailbox,
    mailbox_specs,
    request_csv,
    results,
    run_cli,
    secret_forms,
    summary,
    wait_until,
)
from tests.test_daemon_faults import injected
from tests.test_daemon_signals import BIG, assert_all_done_exactly_once, big_rows, copied_so_far

NewAccount = Callable[..., ServerAccount]


def _account(new_source_account: NewAccount, tag: str, folders: dict[str, int]) -> ServerAccount:
    src = new_source_account(f'{tag} p@ss"w,\\%*{{}} é')
    load_mailbox(src.server, src.user, mailbox_specs(src.user, folders))
    return src


# -- one daemon per spool and state store ------------------------------------------------------


def test_a_second_daemon_on_the_same_spool_or_state_exits_2_naming_the_first(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = _account(new_source_account, "lock", {"INBOX": 3})
    dest = new_dest_account('lock "dest", \\ pw ö')
    state_file = work.root / "state" / "state.sqlite3"  # outside the spool: locked on its own
    work.configure(daemon={"state_file": state_file})
    with work.daemon("first") as first:
        first.wait_for_event("daemon_ready", 20)
        with work.daemon("second") as second:
            assert second.wait(20) == 2, second.describe()
        lines = second.stderr().splitlines()
        assert len(lines) == 1, second.stderr()
        assert f"pid {first.pid}" in lines[0] and str(work.spool / ".lock") in lines[0]
        assert "Traceback" not in second.stderr() and second.lines() == []

        # Another spool on the same state store: refused by the state store's lock.
        other = work.root / "other.toml"
        other.write_text(
            work.config.read_text().replace(str(work.spool), str(work.root / "spool2"))
        )
        third = run_cli("run", "--config", str(other))
        assert third.returncode == 2, third.stderr
        assert re.fullmatch(
            rf"legacyflo-daemon: {re.escape(str(state_file))}\.lock: another legacyflo-daemon "
            rf"\(pid {first.pid}\) is already running.*\n",
            third.stderr,
        ), third.stderr

        # The first daemon is unaffected, and the commands that take no lock still work.
        assert first.proc.poll() is None
        data = request_csv([Row(src, dest, "Locked")])
        csv_path = work.root / "locked.csv"
        csv_path.write_bytes(data)
        assert run_cli("check", "--config", str(work.config), str(csv_path)).returncode == 0
        submitted = run_cli("submit", "--config", str(work.config), str(csv_path))
        assert submitted.returncode == 0, submitted.stderr
        csv_path.unlink()
        wait_until(lambda: summary(work.spool, "locked.csv"), 30, "locked.csv done", first)
        status = run_cli("status", "--config", str(work.config))
        assert status.returncode == 0, status.stderr
        first.send(signal.SIGTERM)
        assert first.wait(15) == 0, first.describe()
    (result,) = results(work.spool).values()
    assert result["status"] == "succeeded"
    events = [e["event"] for e in first.events()]
    assert events.count("daemon_ready") == 1 and "crash_detected" not in events
    assert check_log_lines(first.lines(), results(work.spool)) == []
    assert files_containing(work.root, [src.password, dest.password]) == {}

    # The lock died with its holder: a new daemon starts at once.
    with work.daemon("after", once=True) as after:
        assert after.wait(20) == 0, after.describe()


# -- any file name works -----------------------------------------------------------------------

LONG_NAME = "報告" * 41 + ".csv"  # 250 bytes of UTF-8; derived names used to exceed 255


def test_a_csv_with_a_250_byte_name_is_processed_and_the_daemon_starts_again(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    assert len(LONG_NAME.encode()) == 250
    src = _account(new_source_account, "long", {"INBOX": 2})
    dest = new_dest_account('long "dest", \\ pw ö')
    work.configure()
    csv_path = work.root / LONG_NAME
    csv_path.write_bytes(request_csv([Row(src, dest, "Long")]))
    # submit accepts the name (shortened so that every derived name fits)...
    submitted = run_cli("submit", "--config", str(work.config), str(csv_path))
    assert submitted.returncode == 0, submitted.stderr
    csv_path.unlink()
    # ... and a drop by hand keeps its full 250-byte name in incoming/.
    drop_csv(work.spool / "incoming", LONG_NAME, request_csv([Row(src, dest, "Long2")]))
    with work.daemon("run", once=True) as daemon:
        assert daemon.wait(40) == 0, daemon.describe()
    claimed = sorted(e["path"] for e in daemon.events() if e["event"] == "spool_claimed")
    assert len(claimed) == 2
    names = [claimed_path.rsplit("/", 1)[1] for claimed_path in claimed]
    assert all(n.startswith("報告" * 29) and n.endswith(".csv") for n in names)
    assert work.files("done") == sorted(names)
    assert work.files("processing") == [] and work.files("incoming") == []
    assert work.files("failed") == []
    for name in names:
        doc = summary(work.spool, name)
        assert doc is not None and doc["counts"] == {"succeeded": 1}, name
    assert sorted(r["status"] for r in results(work.spool).values()) == ["succeeded"] * 2
    assert files_containing(work.root, [src.password, dest.password]) == {}

    with work.daemon("again", once=True) as again:  # a restart finds nothing it cannot handle
        assert again.wait(20) == 0, again.describe()
    assert "recovery_file_failed" not in [e["event"] for e in again.events()]


# -- private files whatever the umask ----------------------------------------------------------


def test_every_file_the_daemon_creates_is_private_under_umask_022(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = _account(new_source_account, "umask", {"INBOX": 2})
    dest = new_dest_account('umask "dest", \\ pw ö')
    state_file = work.root / "state" / "state.sqlite3"
    work.configure(daemon={"state_file": state_file})
    drop_csv(work.spool / "incoming", "umask.csv", request_csv([Row(src, dest, "Umask")]))
    old = os.umask(0o022)  # inherited by the daemon process: what a careless shell gives it
    try:
        daemon = work.daemon("run")
    finally:
        os.umask(old)
    with daemon:
        wait_until(lambda: summary(work.spool, "umask.csv"), 30, "umask.csv done", daemon)
        # While it runs: the WAL and shared-memory files exist and hold passwords at times.
        state_files = sorted(p.name for p in state_file.parent.iterdir())
        assert {"state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm"} <= set(state_files)
        modes = {p: _mode(p) for p in [state_file.parent, *state_file.parent.iterdir()]}
        daemon.send(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.describe()
    modes |= {p: _mode(p) for p in [work.spool, *work.spool.rglob("*"), work.log_file]}
    assert len(modes) > 15
    # One file is meant for the spool's group, and holds no secret: the status snapshot.
    snapshot = work.spool / "status.json"
    assert oct(modes.pop(snapshot)) == "0o640"
    assert {p: oct(m) for p, m in modes.items() if m & 0o077} == {}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- no password left in the WAL behind a reader -----------------------------------------------


def test_a_finished_requests_password_leaves_the_wal_once_a_reader_lets_go(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = _account(new_source_account, "wal", {"INBOX": 2})
    dest = new_dest_account('wal "dest", \\ pw ö')
    work.configure()
    state_file = work.spool / "state.sqlite3"
    with work.daemon("run") as daemon:
        daemon.wait_for_event("daemon_ready", 20)
        # A reader (what `status` does, for as long as it reads) holds the WAL while the
        # request is recorded and finishes.
        reader = sqlite3.connect(state_file, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM requests").fetchone()
        drop_csv(work.spool / "incoming", "wal.csv", request_csv([Row(src, dest, "Wal")]))
        wait_until(lambda: summary(work.spool, "wal.csv"), 30, "wal.csv done", daemon)
        time.sleep(2.5)  # a few idle ticks of the daemon while the reader still reads
        held = b"".join(p.read_bytes() for p in state_file.parent.glob("state.sqlite3*"))
        assert any(f in held for f in secret_forms(src.password)), "the test proves nothing"
        reader.execute("COMMIT")  # the reader lets go but stays connected, as status --watch
        try:
            wait_until(
                lambda: not files_containing(work.spool, [src.password, dest.password]),
                10,
                "the passwords to leave the state files",
                daemon,
            )
        finally:
            reader.close()
        daemon.send(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.describe()
    assert files_containing(work.root, [src.password, dest.password]) == {}


def test_a_wal_left_behind_by_a_crash_is_purged_before_the_daemon_is_ready(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = _account(new_source_account, "walcrash", {"INBOX": 2})
    dest = new_dest_account('walcrash "dest", \\ pw ö')
    work.configure()
    state_file = work.spool / "state.sqlite3"
    hold = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN'); db.execute('SELECT COUNT(*) FROM requests').fetchone()\n"
        "print('holding', flush=True); time.sleep(300)\n"
    )
    with work.daemon("first") as first:
        first.wait_for_event("daemon_ready", 20)
        # A reader (a `status` killed while it read) holds the WAL when the request finishes...
        with subprocess.Popen(
            [sys.executable, "-c", hold, str(state_file)], stdout=subprocess.PIPE, text=True
        ) as reader:
            assert reader.stdout is not None and reader.stdout.readline() == "holding\n"
            drop_csv(work.spool / "incoming", "walc.csv", request_csv([Row(src, dest, "W")]))
            wait_until(lambda: summary(work.spool, "walc.csv"), 30, "walc.csv done", first)
            time.sleep(1.5)  # idle ticks: every purge is refused while the reader reads
            first.kill()  # ... and then both die without closing the store
            reader.kill()
    left = files_containing(work.spool, [src.password])
    assert [p.name for p in left] == ["state.sqlite3-wal"], "the test proves nothing"
    with work.daemon("second") as second:
        second.wait_for_event("daemon_ready", 20)
        assert files_containing(work.spool, [src.password, dest.password]) == {}
        second.send(signal.SIGTERM)
        assert second.wait(15) == 0, second.describe()


# -- a damaged state store, a full disk --------------------------------------------------------


def test_a_damaged_state_store_stops_the_start_with_one_line_and_exit_1(work: Work) -> None:
    work.configure()
    state_file = work.spool / "state.sqlite3"
    with work.daemon("make", once=True) as make:  # a real store, then a bad disk damages it
        assert make.wait(20) == 0, make.describe()
    db = sqlite3.connect(state_file, isolation_level=None)
    db.execute("CREATE TABLE filler (x TEXT)")
    db.executemany("INSERT INTO filler VALUES (?)", [("x" * 200,)] * 400)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with state_file.open("r+b") as f:
        # A whole page in the middle of the filler: 300 bytes within a page met only the
        # unused middle of an interior page once the schema had one more table (quick_check
        # rightly found nothing wrong there).
        f.seek(f.seek(0, os.SEEK_END) // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)
    before = state_file.read_bytes()
    drop_csv(work.spool / "incoming", "kept.csv", b"jobtype\r\n")
    with work.daemon("run", once=True) as daemon:
        assert daemon.wait(20) == 1, daemon.describe()
    (line,) = daemon.stderr().splitlines()
    assert line.startswith(f"legacyflo-daemon: {state_file}: the state store is damaged")
    assert "restore it from a backup" in line
    assert state_file.read_bytes() == before  # nothing written into it
    assert work.files("incoming") == ["kept.csv"]  # nothing taken, nothing lost


def test_a_full_disk_stops_the_start_with_one_line_and_loses_nothing(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = _account(new_source_account, "full", {"INBOX": 2})
    dest = new_dest_account('full "dest", \\ pw ö')
    small = work.root / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr!r}")
    try:
        state_file = small / "state" / "state.sqlite3"
        work.configure(daemon={"state_file": state_file})
        with work.daemon("make", once=True) as make:
            assert make.wait(20) == 0, make.describe()
        filler = small / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:  # until ENOSPC
                f.write(b"\0" * 4096)
                f.flush()
        drop_csv(work.spool / "incoming", "full.csv", request_csv([Row(src, dest, "Full")]))
        with work.daemon("run", once=True) as daemon:
            assert daemon.wait(20) == 1, daemon.describe()
        (line,) = daemon.stderr().splitlines()
        assert line.startswith(f"legacyflo-daemon: {state_file}: ")
        assert "the disk is full" in line and "free space on the file system holding" in line
        assert work.files("incoming") == ["full.csv"]

        filler.unlink()  # the operator frees space: the same drop runs
        with work.daemon("again", once=True) as again:
            assert again.wait(40) == 0, again.describe()
        doc = summary(work.spool, "full.csv")
        assert doc is not None and doc["counts"] == {"succeeded": 1}
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# -- drops claimed only when complete -----------------------------------------------------------


def test_a_writer_pausing_mid_row_longer_than_stable_seconds_loses_no_row(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    sources = [_account(new_source_account, f"pause{i}", {"INBOX": 1}) for i in range(3)]
    dest = new_dest_account('pause "dest", \\ pw ö')
    data = request_csv([Row(src, dest, f"Pause{i}") for i, src in enumerate(sources)])
    # Cut inside the second row's source password (a quoted value left open).
    cut = data.index(sources[1].password.replace('"', '""').encode())
    work.configure(daemon={"stable_seconds": 0.3})
    with work.daemon("run") as daemon:
        daemon.wait_for_event("daemon_ready", 20)
        path = work.spool / "incoming" / "paused.csv"
        with path.open("xb") as f:
            f.write(data[:cut])
            f.flush()
            os.fsync(f.fileno())
            # The writer pauses for ten times stable_seconds (a slow share, a paused copy).
            daemon.wait_for(lambda e: e.get("event") == "spool_incomplete", 10, "incomplete")
            time.sleep(3.0)
            assert work.files("incoming") == ["paused.csv"]
            f.write(data[cut:])
        wait_until(lambda: summary(work.spool, "paused.csv"), 40, "paused.csv done", daemon)
        daemon.send(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.describe()
    doc = summary(work.spool, "paused.csv")
    assert doc is not None and doc["counts"] == {"succeeded": 3}, doc
    assert [e["event"] for e in daemon.events()].count("spool_claimed") == 1
    assert files_containing(work.root, [s.password for s in sources] + [dest.password]) == {}


# -- poison means crashed without progress -------------------------------------------------------


@pytest.mark.slow
def test_crashes_while_the_copy_goes_forward_never_poison_the_csv(
    work: Work,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    slow_source: FaultProxy,
) -> None:
    dest = new_dest_account('progress "dest" pw, \\ ö')
    rows = big_rows(1, new_source_account, dest, slow_source)
    total = sum(BIG.values())
    work.configure(daemon={"max_crashes": 2}, imap={"fetch_batch": 5})
    drop_csv(work.spool / "incoming", "forward.csv", request_csv(rows))
    at_kill = 0
    for n in range(3):  # more kill -9 than max_crashes, each after the copy went forward
        with work.daemon(f"kill{n}") as proc:
            more = functools.partial(_copied_at_least, rows, at_kill + 15)
            wait_until(more, 30, "15 more copied", proc)
            proc.kill()
        at_kill = copied_so_far(rows)
        assert at_kill < total, "every kill must land in the middle of the copy"
    with work.daemon("last", once=True) as last:
        assert last.wait(90) == 0, last.describe()
    events = last.events()
    assert "csv_poisoned" not in [e["event"] for e in events]
    # Each crash came after progress: the count started again at 0 every time.
    assert [e["crashes"] for e in events if e["event"] == "crash_detected"] == [0]
    assert_all_done_exactly_once(work, rows, "forward.csv")


def _copied_at_least(rows: list[Row], n: int) -> bool:
    return copied_so_far(rows) >= n


PARSE_CRASH = """
    import os
    import signal

    import legacyflo_daemon.request.csvfile as csvfile

    real_parse = csvfile.parse

    def parse(data, *args, **kwargs):
        if b"crash-the-parser" in data:
            os.kill(os.getpid(), signal.SIGKILL)  # what a fatal bug in the parser does
        return real_parse(data, *args, **kwargs)

    csvfile.parse = parse
"""


def test_a_csv_that_crashes_the_daemon_while_parsed_is_set_aside_after_max_crashes(
    work: Work,
) -> None:
    work.configure(daemon={"max_crashes": 2})
    env = injected(work, PARSE_CRASH)
    drop_csv(work.spool / "incoming", "crash.csv", b"jobtype,jobtitle\r\ncrash-the-parser,x\r\n")
    for n in range(2):  # the file is recorded before parsing: each crash counts against it
        with work.daemon(f"crash{n}", once=True, env=env) as proc:
            assert proc.wait(20) == -9, proc.describe()
        assert work.files("processing") == ["crash.csv"]
    with work.daemon("third", once=True, env=env) as third:
        assert third.wait(20) == 1, third.describe()
    events = third.events()
    assert [e["crashes"] for e in events if e["event"] == "csv_recording_cut"] == [2]
    assert [e["csv"] for e in events if e["event"] == "csv_poisoned"] == ["crash.csv"]
    assert work.files("processing") == []
    assert work.files("failed") == ["crash.csv", "crash.csv.error.txt"]
    error = (work.spool / "failed" / "crash.csv.error.txt").read_text()
    assert "stopped unexpectedly 2 times while reading this CSV" in error
    with work.daemon("after", once=True, env=env) as after:  # and the daemon starts cleanly
        assert after.wait(20) == 0, after.describe()


# -- warnings at start ---------------------------------------------------------------------------


def test_warnings_for_an_open_incoming_an_unverified_host_and_a_hard_linked_drop(
    work: Work, new_source_account: NewAccount, new_dest_account: NewAccount
) -> None:
    src = _account(new_source_account, "warn", {"INBOX": 1})
    dest = new_dest_account('warn "dest", \\ pw ö')
    work.configure()
    with work.config.open("a", encoding="utf-8") as f:
        f.write('\n[hosts."legacy.example"]\ntls_verify = false\n')
        f.write('\n[hosts."half.example"]\n[hosts."half.example".source]\ntls_verify = false\n')
    (work.spool / "incoming").chmod(0o770)
    kept = work.root / "kept-copy.csv"  # the admin's own copy, hard-linked into the spool
    kept.write_bytes(request_csv([Row(src, dest, "Warn")]))
    os.link(kept, work.spool / "incoming" / "linked.csv")
    with work.daemon("run", once=True) as daemon:
        assert daemon.wait(40) == 0, daemon.describe()
    events = daemon.events()
    (open_incoming,) = [e for e in events if e["event"] == "incoming_writable_by_others"]
    assert open_incoming["level"] == "warning" and open_incoming["mode"] == "0770"
    assert open_incoming["path"] == str(work.spool / "incoming")
    unverified = {e["host"]: e["directions"] for e in events if e["event"] == "tls_verify_disabled"}
    assert unverified == {"legacy.example": ["source", "dest"], "half.example": ["source"]}
    (linked,) = [e for e in events if e["event"] == "csv_hard_linked"]
    assert (linked["file"], linked["links"], linked["level"]) == ("linked.csv", 2, "warning")
    doc = summary(work.spool, "linked.csv")  # still processed, and the summary says it
    assert doc is not None and doc["counts"] == {"succeeded": 1}
    (warning,) = doc["warnings"]
    assert warning.startswith("linked.csv has 1 other hard link(s): another copy of its passwords")
    ready = next(i for i, e in enumerate(events) if e["event"] == "daemon_ready")
    assert events.index(open_incoming) < ready
