"""spool: which drops are taken and when, claiming, retiring redacted, never losing a file."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from legacyflo_daemon.errors import CsvFileError, SpoolError
from legacyflo_daemon.request import csvfile
from legacyflo_daemon.runtime import files
from legacyflo_daemon.spool.directory import SUBDIRS, Spool, ends_complete, is_temp_name

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = (FIXTURES / "reference_sample.csv").read_bytes()
PASSWORD = b"password@123"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.ensure()
    return s


def drop(spool: Spool, name: str, data: bytes) -> Path:
    path = spool.incoming / name
    path.write_bytes(data)
    return path


def settle(spool: Spool, stable: float = 1.0) -> list[str]:
    """Two scans ``stable`` seconds apart (monotonic time is passed in, nothing sleeps)."""
    spool.ready_files(now=100.0, stable_seconds=stable)
    return spool.ready_files(now=100.0 + stable, stable_seconds=stable)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# -- layout -------------------------------------------------------------------------------------


def test_ensure_creates_every_directory_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        Spool(tmp_path / "s").ensure()
    finally:
        os.umask(old)
    for sub in ("", *SUBDIRS):
        path = tmp_path / "s" / sub
        assert path.is_dir(), sub
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, sub
    assert {"incoming", "processing", "done", "failed", "outbox", "outbox/sent"} == set(SUBDIRS)


def test_ensure_is_idempotent_and_keeps_an_admins_mode(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s")
    s.ensure()
    os.chmod(s.incoming, 0o770)
    s.ensure()
    assert stat.S_IMODE(s.incoming.stat().st_mode) == 0o770


def test_ensure_reports_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "done").write_bytes(b"")
    with pytest.raises(SpoolError, match="done: exists and is not a directory"):
        Spool(tmp_path / "s").ensure()


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("users.csv", False),
        ("USERS.CSV", False),
        ("a b (2).csv", False),
        (".users.csv", True),
        ("users.csv.part", True),
        ("users.csv.tmp", True),
        ("users.part", True),
        ("users.TMP", True),
        ("users.txt", True),
        ("users.csv~", True),
        ("users", True),
        (".csv", True),
        (".gitkeep", True),
    ],
)
def test_is_temp_name(name: str, ignored: bool) -> None:
    assert is_temp_name(name) is ignored
    assert Spool.is_temp_name(name) is ignored


# -- ready_files ----------------------------------------------------------------------------------


def test_a_file_is_ready_only_once_it_stopped_changing(spool: Spool) -> None:
    path = drop(spool, "slow.csv", SAMPLE[:50])
    assert spool.ready_files(now=0.0, stable_seconds=1.0) == []  # first sight
    with path.open("ab") as f:  # still being written
        f.write(SAMPLE[50:100])
    assert spool.ready_files(now=1.5, stable_seconds=1.0) == []  # changed since
    with path.open("ab") as f:
        f.write(SAMPLE[100:])
    assert spool.ready_files(now=2.0, stable_seconds=1.0) == []  # changed again
    assert spool.ready_files(now=2.5, stable_seconds=1.0) == []  # stable for 0.5 s only
    assert spool.ready_files(now=3.0, stable_seconds=1.0) == ["slow.csv"]


def test_a_rewrite_with_the_same_size_is_seen_by_mtime(spool: Spool) -> None:
    path = drop(spool, "a.csv", b"x" * 9 + b"\n")  # complete lines: only the mtime differs
    spool.ready_files(now=0.0)
    path.write_bytes(b"y" * 9 + b"\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert spool.ready_files(now=5.0) == []
    assert spool.ready_files(now=6.0) == ["a.csv"]


def test_stable_seconds_zero_takes_a_file_at_first_sight(spool: Spool) -> None:
    drop(spool, "a.csv", SAMPLE)
    assert spool.ready_files(now=0.0, stable_seconds=0) == ["a.csv"]


def test_ready_files_are_oldest_first(spool: Spool) -> None:
    for name, age in (("new.csv", 10), ("old.csv", 1000), ("mid.csv", 100)):
        path = drop(spool, name, SAMPLE)
        os.utime(path, (time.time() - age, time.time() - age))
    assert settle(spool) == ["old.csv", "mid.csv", "new.csv"]


def test_temp_names_are_never_taken_and_never_touched(spool: Spool) -> None:
    names = [".hidden.csv", "a.csv.part", "b.csv.tmp", "notes.txt", "c.CSV.part"]
    for name in names:
        drop(spool, name, SAMPLE)
    assert settle(spool) == []
    assert spool.ready_files(now=1000.0) == []
    assert listing(spool.incoming) == sorted(names)
    assert listing(spool.failed) == []


def test_writer_protocol_temp_then_rename(spool: Spool) -> None:
    drop(spool, "upload.csv.part", SAMPLE)
    assert settle(spool) == []
    os.rename(spool.incoming / "upload.csv.part", spool.incoming / "upload.csv")
    assert settle(spool) == ["upload.csv"]


def test_a_directory_named_csv_is_left_alone(spool: Spool) -> None:
    (spool.incoming / "x.csv").mkdir()
    (spool.incoming / "x.csv" / "inner.csv").write_bytes(SAMPLE)
    assert settle(spool) == []
    assert (spool.incoming / "x.csv" / "inner.csv").read_bytes() == SAMPLE
    assert listing(spool.failed) == []


def test_a_symlink_is_not_followed_but_moved_to_failed_with_a_reason(
    spool: Spool, tmp_path: Path
) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:secret-hash\n")
    (spool.incoming / "evil.csv").symlink_to(secret)
    assert spool.ready_files(now=0.0) == []
    assert listing(spool.incoming) == []
    assert listing(spool.failed) == ["evil.csv", "evil.csv.error.txt"]
    moved = spool.failed / "evil.csv"
    assert moved.is_symlink() and os.readlink(moved) == str(secret)  # kept, as it was
    assert secret.read_bytes() == b"root:secret-hash\n"  # target neither read nor changed
    reason = (spool.failed / "evil.csv.error.txt").read_text()
    assert "symbolic link is not accepted" in reason


def test_a_fifo_is_moved_to_failed_without_being_opened(spool: Spool) -> None:
    os.mkfifo(spool.incoming / "pipe.csv")
    assert spool.ready_files(now=0.0) == []  # would hang if it opened the FIFO
    assert listing(spool.failed) == ["pipe.csv", "pipe.csv.error.txt"]
    assert "not a regular file" in (spool.failed / "pipe.csv.error.txt").read_text()


def test_waiting_files_lists_what_is_still_settling(spool: Spool) -> None:
    drop(spool, "a.csv", SAMPLE)
    spool.ready_files(now=0.0)
    assert spool.waiting_files() == ["a.csv"]
    os.unlink(spool.incoming / "a.csv")
    spool.ready_files(now=1.0)
    assert spool.waiting_files() == []


# -- claim ----------------------------------------------------------------------------------------


def test_claim_moves_into_processing(spool: Spool) -> None:
    drop(spool, "a.csv", SAMPLE)
    path = spool.claim("a.csv")
    assert path == spool.processing / "a.csv"
    assert path.read_bytes() == SAMPLE
    assert listing(spool.incoming) == []
    assert spool.processing_files() == [path]


def test_claim_of_a_name_already_processing_gets_a_unique_name(spool: Spool) -> None:
    (spool.processing / "a.csv").write_bytes(b"earlier drop")
    drop(spool, "a.csv", SAMPLE)
    path = spool.claim("a.csv")
    assert path == spool.processing / "a-2.csv"
    assert (spool.processing / "a.csv").read_bytes() == b"earlier drop"
    assert path.read_bytes() == SAMPLE


def test_claim_of_a_vanished_file_is_none(spool: Spool) -> None:
    assert spool.claim("gone.csv") is None


@pytest.mark.parametrize("name", ["../x.csv", "a/b.csv", "", ".."])
def test_claim_refuses_paths(spool: Spool, name: str) -> None:
    with pytest.raises(SpoolError):
        spool.claim(name)


def test_processing_files_skips_dot_names(spool: Spool) -> None:
    (spool.processing / ".gitkeep").write_bytes(b"")
    (spool.processing / "b.csv").write_bytes(b"")
    (spool.processing / "a.csv").write_bytes(b"")
    assert spool.processing_files() == [spool.processing / "a.csv", spool.processing / "b.csv"]


# -- finish ---------------------------------------------------------------------------------------


def test_finish_ok_writes_the_redacted_csv_to_done_then_removes_processing(spool: Spool) -> None:
    drop(spool, "a.csv", SAMPLE)
    path = spool.claim("a.csv")
    assert path is not None
    done = spool.finish(path, ok=True)
    assert done == spool.done / "a.csv"
    assert done.read_bytes() == csvfile.redact(SAMPLE)
    assert PASSWORD not in done.read_bytes()
    assert b'"********"' in done.read_bytes()
    assert stat.S_IMODE(done.stat().st_mode) == 0o600
    assert listing(spool.processing) == []
    assert listing(spool.done) == ["a.csv"]


def test_finish_failed_writes_error_text_beside_it(spool: Spool) -> None:
    path = spool.processing / "b.csv"
    path.write_bytes(SAMPLE)
    failed = spool.finish(path, ok=False, error="b.csv: something is wrong")
    assert failed == spool.failed / "b.csv"
    assert PASSWORD not in failed.read_bytes()
    assert (spool.failed / "b.csv.error.txt").read_text() == "b.csv: something is wrong\n"
    assert listing(spool.processing) == []


def test_finish_never_replaces_an_earlier_record(spool: Spool) -> None:
    (spool.failed / "c.csv").write_bytes(b"first run")
    (spool.failed / "c-2.csv.error.txt").write_bytes(b"orphan error text")
    path = spool.processing / "c.csv"
    path.write_bytes(SAMPLE)
    failed = spool.finish(path, ok=False, error="again")
    assert failed == spool.failed / "c-3.csv"
    assert (spool.failed / "c.csv").read_bytes() == b"first run"
    assert (spool.failed / "c-2.csv.error.txt").read_bytes() == b"orphan error text"
    assert (spool.failed / "c-3.csv.error.txt").read_text() == "again\n"


def test_finish_of_a_vanished_file_raises_and_writes_nothing(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="vanished"):
        spool.finish(spool.processing / "gone.csv", ok=True)
    assert listing(spool.done) == []


def test_finish_keeps_the_original_when_nothing_can_be_recorded(spool: Spool) -> None:
    path = spool.processing / "d.csv"
    path.write_bytes(SAMPLE)
    spool.done.rmdir()
    spool.done.write_bytes(b"")  # done/ is now a file: every write into it fails
    with pytest.raises(SpoolError, match="cannot record"):
        spool.finish(path, ok=True)
    assert path.read_bytes() == SAMPLE


def test_finish_of_an_unreadable_file_moves_it_unchanged(spool: Spool) -> None:
    os.mkfifo(spool.processing / "odd.csv")
    moved = spool.finish(spool.processing / "odd.csv", ok=True)
    assert moved == spool.failed / "odd.csv"
    assert stat.S_ISFIFO(moved.lstat().st_mode)
    assert "could not be read" in (spool.failed / "odd.csv.error.txt").read_text()


# -- whole-file rejection: the daemon's path, end to end ------------------------------------------


def take(spool: Spool, name: str) -> Path:
    """What the daemon does with one ready file: claim, parse, retire or keep."""
    path = spool.claim(name)
    assert path is not None
    try:
        csvfile.parse(files.read_regular(path))
    except CsvFileError as exc:
        return spool.reject_unusable(path, f"{name}: {exc}")
    return spool.finish(path, ok=True)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("zero.csv", b"", "empty"),
        ("blank.csv", b"\r\n\n   \n", "blank"),
        ("binary.csv", bytes(range(256)) * 4, "NUL"),
        ("utf16.csv", SAMPLE.decode().encode("utf-16"), "NUL"),
        ("prose.csv", b"Dear admin, please migrate john.\n", "header"),
    ],
)
def test_a_file_rejected_as_a_whole_goes_to_failed_with_its_reason(
    spool: Spool, name: str, data: bytes, reason: str
) -> None:
    drop(spool, name, data)
    assert settle(spool) == [name]
    result = take(spool, name)
    assert result == spool.failed / name
    assert result.read_bytes() == csvfile.redact(data)
    error = (spool.failed / f"{name}.error.txt").read_text()
    assert error.startswith(f"{name}: ") and reason in error
    assert listing(spool.processing) == []
    assert listing(spool.incoming) == []


def test_every_kind_of_drop_ends_somewhere(spool: Spool, tmp_path: Path) -> None:
    """Never lose a dropped file: each one is still in incoming/, or in done/ or failed/."""
    drop(spool, "good.csv", SAMPLE)
    drop(spool, "empty.csv", b"")
    drop(spool, "upload.csv.part", SAMPLE)
    drop(spool, "readme.txt", b"hello")
    (spool.incoming / "dir.csv").mkdir()
    (spool.incoming / "link.csv").symlink_to(tmp_path)
    for name in settle(spool):
        take(spool, name)
    assert listing(spool.incoming) == ["dir.csv", "readme.txt", "upload.csv.part"]
    assert listing(spool.done) == ["good.csv"]
    assert listing(spool.failed) == [
        "empty.csv",
        "empty.csv.error.txt",
        "link.csv",
        "link.csv.error.txt",
    ]
    assert listing(spool.processing) == []


# -- stale temp files -----------------------------------------------------------------------------


def test_remove_stale_temps_only_removes_old_own_temps(spool: Spool) -> None:
    old = spool.done / files.temp_name("a.csv")
    young = spool.outbox / files.temp_name("r.json")
    users = spool.incoming / ".upload.csv.tmp"
    for path in (old, young, users):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(users, (time.time() - 7200, time.time() - 7200))
    assert spool.remove_stale_temps(older_than=3600) == [old]
    assert not old.exists() and young.exists() and users.exists()


def test_a_csv_with_a_250_byte_name_is_claimed_short_and_retired_with_its_error(
    spool: Spool,
) -> None:
    name = "報" * 82 + ".csv"  # 250 bytes: `<name>.error.txt` would not fit a file name
    drop(spool, name, SAMPLE)
    assert settle(spool) == [name]
    path = spool.claim(name)
    assert path is not None and path.name == files.short_name(name, files.UNIQUE_NAME_BYTES) != name
    target = spool.finish(path, ok=False, error="why")
    assert target.name == path.name
    assert listing(spool.failed) == [path.name, path.name + ".error.txt"]
    assert listing(spool.processing) == []
    assert PASSWORD not in target.read_bytes()


# -- drops claimed only when complete (issue 11) --------------------------------------------------


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"", True),  # nothing to cut: rejected as empty at once
        (b"a,b\r\n1,2\r\n", True),
        (b"a,b\n1,2\n", True),
        (b"a,b\r1,2\r", True),
        (b'a,b\r\n"1","2"', True),  # the reference sample's shape: no final line break
        (b'\xef\xbb\xbf"a","b"\r\n"1","2"', True),
        (b'a,b,c\r\n"1","2",,""', True),
        (b"a,b\r\n1,2", False),  # cut inside an unquoted value
        (b'a,b\r\n"1","2', False),  # cut inside a quoted value
        (b'a,b\r\n"1","2""', False),  # "" inside quotes is a quote: still open
        (b'a,b\r\n"1","x\r\n', False),  # a line break inside an open quoted value
        (b'a,b,c\r\n"1","2"', False),  # cut between two values
        (b'a,b\r\n1,"p,w\r\nx"\r\n', True),  # a line break inside a closed quoted value
        (b'a,b\r\nx"y,2\r\n', True),  # a quote inside an unquoted value is a character
        (b"\xff\xfea\x00,\x00b\x00", True),  # UTF-16 (NUL bytes): rejected as a whole at once
    ],
)
def test_ends_complete(data: bytes, complete: bool) -> None:
    assert ends_complete(data) is complete


def test_the_reference_sample_is_complete_without_a_final_line_break() -> None:
    assert not SAMPLE.endswith((b"\n", b"\r")) and ends_complete(SAMPLE)


def test_a_drop_cut_mid_row_waits_and_is_taken_once_finished(spool: Spool) -> None:
    head, tail = SAMPLE[: len(SAMPLE) - 30], SAMPLE[len(SAMPLE) - 30 :]
    path = drop(spool, "cut.csv", head)
    assert spool.ready_files(now=0.0) == []
    assert spool.ready_files(now=50.0) == []  # stable for 50 s, but its last row is cut
    assert spool.waiting_files() == ["cut.csv"]
    with path.open("ab") as f:
        f.write(tail)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert spool.ready_files(now=51.0) == []
    assert spool.ready_files(now=52.0) == ["cut.csv"]


def test_a_drop_left_unfinished_is_set_aside_redacted_with_the_reason(spool: Spool) -> None:
    cut = SAMPLE[: SAMPLE.index(b"password@123") + 8]  # the writer stopped inside a password
    drop(spool, "cut.csv", cut)
    assert spool.ready_files(now=0.0, incomplete_seconds=600) == []
    assert spool.ready_files(now=599.0, incomplete_seconds=600) == []
    assert listing(spool.failed) == []
    assert spool.ready_files(now=600.0, incomplete_seconds=600) == []
    assert listing(spool.incoming) == [] and listing(spool.processing) == []
    assert listing(spool.failed) == ["cut.csv", "cut.csv.error.txt"]
    kept = (spool.failed / "cut.csv").read_bytes()
    assert b"password" not in kept[kept.index(b"\n") :]  # the header names the columns
    error = (spool.failed / "cut.csv.error.txt").read_text()
    assert error.startswith("cut.csv: its last line stayed unfinished for 600 s")
    assert spool.waiting_files() == []
