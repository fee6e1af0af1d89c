"""files: atomic writes, durable moves, free names, refusing links and FIFOs."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legacyflo_daemon.runtime import files


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_sets_exact_mode_despite_umask(tmp_path: Path, mode: int, umask: int) -> None:
    old = os.umask(umask)
    try:
        files.atomic_write(tmp_path / "x.json", b"{}", mode)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "x.json") == mode


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_bytes(b"old")
    files.atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["result.json"]


def test_atomic_write_into_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.atomic_write(tmp_path / "nope" / "x", b"data")
    assert os.listdir(tmp_path) == []


def test_atomic_write_does_not_follow_a_symlink_at_the_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (tmp_path / "out").symlink_to(victim)
    files.atomic_write(tmp_path / "out", b"new")
    assert victim.read_bytes() == b"untouched"
    assert not (tmp_path / "out").is_symlink()
    assert (tmp_path / "out").read_bytes() == b"new"


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=5000))
def test_atomic_write_round_trips_any_bytes(tmp_path_factory: pytest.TempPathFactory,
                                            data: bytes) -> None:  # fmt: skip
    target = tmp_path_factory.mktemp("w") / "f"
    files.atomic_write(target, data)
    assert target.read_bytes() == data


def test_temp_names_are_dot_leading_and_recognised() -> None:
    name = files.temp_name("users.csv")
    assert name.startswith(".") and name.endswith(".tmp")
    assert files.is_own_temp(name)
    assert not files.is_own_temp("users.csv")
    assert not files.is_own_temp(".users.csv.tmp")  # a user's temp name is not ours


@pytest.mark.parametrize(
    ("existing", "name", "also", "expected"),
    [
        ([], "a.csv", (), "a.csv"),
        (["a.csv"], "a.csv", (), "a-2.csv"),
        (["a.csv", "a-2.csv"], "a.csv", (), "a-3.csv"),
        (["a.csv.error.txt"], "a.csv", (".error.txt",), "a-2.csv"),
        (["a.csv.error.txt"], "a.csv", (), "a.csv"),
        (["noext"], "noext", (), "noext-2"),
        (["a.b.csv"], "a.b.csv", (), "a.b-2.csv"),
    ],
)
def test_free_name(
    tmp_path: Path, existing: list[str], name: str, also: tuple[str, ...], expected: str
) -> None:
    for e in existing:
        (tmp_path / e).write_bytes(b"")
    assert files.free_name(tmp_path, name, also=also) == expected


def test_free_name_counts_a_dangling_symlink_as_taken(tmp_path: Path) -> None:
    (tmp_path / "a.csv").symlink_to(tmp_path / "missing")
    assert files.free_name(tmp_path, "a.csv") == "a-2.csv"


def test_move_unique_never_replaces(tmp_path: Path) -> None:
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    (dst_dir / "a.csv").write_bytes(b"first")
    (src_dir / "a.csv").write_bytes(b"second")
    moved = files.move_unique(src_dir / "a.csv", dst_dir)
    assert moved == dst_dir / "a-2.csv"
    assert (dst_dir / "a.csv").read_bytes() == b"first"
    assert moved.read_bytes() == b"second"
    assert not (src_dir / "a.csv").exists()


def test_move_unique_moves_a_symlink_as_a_link(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"s")
    (tmp_path / "d").mkdir()
    (tmp_path / "l.csv").symlink_to(target)
    moved = files.move_unique(tmp_path / "l.csv", tmp_path / "d")
    assert moved.is_symlink()
    assert os.readlink(moved) == str(target)


def test_move_of_a_vanished_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.move_unique(tmp_path / "gone.csv", tmp_path)


def test_link_no_clobber_keeps_existing_and_removes_source(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"someone else's")
    src = tmp_path / ".tmp-x"
    src.write_bytes(b"mine")
    target = files.link_no_clobber(src, tmp_path, "x.csv")
    assert target.name == "x-2.csv"
    assert target.read_bytes() == b"mine"
    assert (tmp_path / "x.csv").read_bytes() == b"someone else's"
    assert not src.exists()


def test_write_new_creates_unique_0600_files(tmp_path: Path) -> None:
    first = files.write_new(tmp_path, "drop.csv", b"1")
    second = files.write_new(tmp_path, "drop.csv", b"2")
    assert (first.name, second.name) == ("drop.csv", "drop-2.csv")
    assert (first.read_bytes(), second.read_bytes()) == (b"1", b"2")
    assert mode_of(first) == mode_of(second) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["drop-2.csv", "drop.csv"]


def test_read_regular_reads_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 3_000_000)
    assert files.read_regular(tmp_path / "f") == b"x" * 3_000_000


def test_read_regular_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"secret")
    (tmp_path / "l").symlink_to(tmp_path / "t")
    with pytest.raises(OSError) as info:
        files.read_regular(tmp_path / "l")
    assert info.value.errno == errno.ELOOP


def test_read_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p")
    with pytest.raises(OSError) as info:
        files.read_regular(tmp_path / "p")
    assert info.value.errno == errno.EINVAL


def test_fsync_dir_accepts_a_directory_and_rejects_a_file(tmp_path: Path) -> None:
    files.fsync_dir(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        files.fsync_dir(tmp_path / "f")


# -- short names (any file name works, issue 11) ------------------------------------------------

LONG_CJK = "報" * 82 + ".csv"  # 250 bytes: every name derived from it used to exceed 255


def test_short_name_keeps_a_name_that_fits() -> None:
    assert files.short_name("accounts.csv") == "accounts.csv"
    fits = "é" * 98 + ".csv"  # exactly 200 bytes
    assert files.short_name(fits) == fits


@given(st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s and "\0" not in s))
@settings(max_examples=200, deadline=None)
def test_short_name_fits_is_valid_utf8_and_depends_only_on_the_name(name: str) -> None:
    short = files.short_name(name)
    assert len(os.fsencode(short)) <= files.SAFE_NAME_BYTES
    assert files.short_name(name) == short
    short.encode("utf-8")  # never a character cut in half


def test_short_name_of_a_long_name_keeps_its_start_and_extension_and_stays_distinct() -> None:
    short = files.short_name(LONG_CJK)
    assert short.startswith("報" * 60) and short.endswith(".csv")
    assert len(short.encode()) <= files.SAFE_NAME_BYTES
    other = files.short_name("報" * 81 + "告.csv")  # same start, another name
    assert other != short and other.startswith("報" * 60)


def test_every_derived_name_of_a_long_name_can_be_written(tmp_path: Path) -> None:
    # Today's daemon wrote `.lfd-<name>.<hex>.tmp` for a 250-byte name: ENAMETOOLONG.
    files.atomic_write(tmp_path / LONG_CJK, b"x")
    target = files.write_new(tmp_path, LONG_CJK, b"y")
    assert target.name != LONG_CJK and target.read_bytes() == b"y"
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b"x", b"y"]
