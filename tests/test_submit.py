"""``submit``: the dropped file is readable by the daemon (the owner of incoming/) or nothing is
dropped, and every refusal is one line saying what to do.

The ownership cases need other users: as root, a forked child takes a made-up uid/gid (no
account needed) and runs the command line in-process.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from legacyflo_daemon.cli import drop
from legacyflo_daemon.cli import main as cli
from legacyflo_daemon.spool.directory import Spool

SAMPLE = Path(__file__).parent / "fixtures" / "reference_sample.csv"
DAEMON_UID, DAEMON_GID, ADMIN_UID, OTHER_GID = 4242, 4242, 4343, 4444
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("legacyflo-daemon: ")
    return err


@pytest.mark.parametrize(
    ("mode", "owner", "group", "readable"),
    [
        (0o600, DAEMON_UID, OTHER_GID, True),  # the daemon's own file
        (0o200, DAEMON_UID, DAEMON_GID, False),  # owner bits decide for the owner, not group's
        (0o640, ADMIN_UID, DAEMON_GID, True),  # an admin's file in the daemon's group
        (0o600, ADMIN_UID, DAEMON_GID, False),  # ... without group read
        (0o640, ADMIN_UID, OTHER_GID, False),  # in another group
        (0o644, ADMIN_UID, OTHER_GID, True),  # world-readable (submit never makes one)
    ],
)
def test_daemon_cannot_read(mode: int, owner: int, group: int, readable: bool) -> None:
    why = drop.daemon_cannot_read(
        stat.S_IFREG | mode, owner, group, daemon_uid=DAEMON_UID, daemon_gid=DAEMON_GID
    )
    assert (why is None) == readable, why
    assert drop.daemon_cannot_read(stat.S_IFREG, ADMIN_UID, OTHER_GID, 0, 0) is None  # root


def test_submit_before_the_first_run_says_to_start_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["submit", str(SAMPLE)]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "no such directory: the spool is created by the daemon's first start" in err
    assert "or create it" in err
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize(
    ("make", "hint"),
    [("missing", "check the file name"), ("directory", "give a regular file")],
)
def test_submit_of_an_unreadable_file_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str, hint: str
) -> None:
    path = tmp_path / "x.csv"
    if make == "directory":
        path.mkdir()
    assert cli.main(["submit", str(path)]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"{path}: cannot read: " in err and hint in err


# -- other users ----------------------------------------------------------------------------------


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="lf-submit-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def daemon_spool(root: Path, incoming_mode: int) -> tuple[Path, Path]:
    """A spool owned by the made-up daemon user; the config naming it and its incoming/."""
    spool = Spool(root / "spool")
    spool.ensure()
    for path in (spool.root, *spool.root.iterdir()):
        os.chown(path, DAEMON_UID, DAEMON_GID)
    spool.root.chmod(0o2750)
    spool.incoming.chmod(incoming_mode)
    config = root / "config.toml"
    config.write_text(f'[daemon]\nspool = "{spool.root}"\n')
    config.chmod(0o644)
    csv = root / "accounts.csv"
    shutil.copyfile(SAMPLE, csv)
    csv.chmod(0o644)
    return config, spool.incoming


def submit_as(uid: int, gids: list[int], config: Path, csv: Path, work: Path) -> tuple[int, str]:
    """``legacyflo-daemon --config CONFIG submit CSV`` in a child running as ``uid`` with groups
    ``gids`` (the first is its primary group); its exit code and stderr."""
    err_path = work / f"stderr-{uid}"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        # pytest has replaced sys.stdout/sys.stderr; the child writes its own.
        with err_path.open("w") as err, open(os.devnull, "w") as out:
            sys.stderr, sys.stdout = err, out
            try:
                os.setgroups(gids)
                os.setgid(gids[0])
                os.setuid(uid)
                code = cli.main(["--config", str(config), "submit", str(csv)])
            except BaseException:  # a traceback on stderr fails the caller's one-line check
                traceback.print_exc(file=err)
            finally:
                err.flush()
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err_path.read_text()


@as_root
def test_root_submits_a_file_that_belongs_to_the_daemon(shared: Path) -> None:
    config, incoming = daemon_spool(shared, 0o2770)
    assert cli.main(["--config", str(config), "submit", str(shared / "accounts.csv")]) == 0
    (name,) = os.listdir(incoming)
    st = (incoming / name).stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (DAEMON_UID, DAEMON_GID, 0o600)


@as_root
def test_an_admin_in_the_group_submits_a_group_readable_file(shared: Path) -> None:
    config, incoming = daemon_spool(shared, 0o2770)  # setgid: new files get the group
    code, err = submit_as(
        ADMIN_UID, [OTHER_GID, DAEMON_GID], config, shared / "accounts.csv", shared
    )
    assert (code, err) == (0, "")
    (name,) = os.listdir(incoming)
    st = (incoming / name).stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (ADMIN_UID, DAEMON_GID, 0o640)
    assert (incoming / name).read_bytes() == SAMPLE.read_bytes()


@as_root
def test_an_admin_in_the_group_without_setgid_still_gives_the_group(shared: Path) -> None:
    config, incoming = daemon_spool(shared, 0o770)  # no setgid: fchown sets the group
    code, err = submit_as(
        ADMIN_UID, [OTHER_GID, DAEMON_GID], config, shared / "accounts.csv", shared
    )
    assert (code, err) == (0, "")
    (name,) = os.listdir(incoming)
    st = (incoming / name).stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (ADMIN_UID, DAEMON_GID, 0o640)


@as_root
def test_a_file_the_daemon_could_not_read_is_refused_and_nothing_is_left(shared: Path) -> None:
    # incoming/ writable by anyone, but the submitter is not in the daemon's group: the file
    # would be ADMIN:OTHER 0640, which the daemon cannot read.
    config, incoming = daemon_spool(shared, 0o777)
    incoming.parent.chmod(0o711)
    code, err = submit_as(ADMIN_UID, [OTHER_GID], config, shared / "accounts.csv", shared)
    assert code == 2
    one_line_error(err)
    assert f"{incoming}: not submitted: the daemon could not read the file: " in err
    assert f"uid {ADMIN_UID}:gid {OTHER_GID} with mode 0640" in err
    assert f"the daemon runs as uid {DAEMON_UID}:gid {DAEMON_GID}" in err
    assert f"submit as a member of group gid {DAEMON_GID}" in err
    assert os.listdir(incoming) == []


@as_root
def test_an_incoming_the_submitter_cannot_write_is_explained(shared: Path) -> None:
    config, incoming = daemon_spool(shared, 0o2750)  # the group may not write
    code, err = submit_as(ADMIN_UID, [DAEMON_GID], config, shared / "accounts.csv", shared)
    assert code == 2
    one_line_error(err)
    assert (
        f"{incoming}: cannot write: Permission denied; incoming/ belongs to uid {DAEMON_UID}" in err
    )
    assert "a group-writable incoming/" in err
    assert os.listdir(incoming) == []


@as_root
def test_a_spool_the_submitter_cannot_enter_is_explained(shared: Path) -> None:
    config, incoming = daemon_spool(shared, 0o2770)  # spool 2750: only the group may enter
    code, err = submit_as(ADMIN_UID, [OTHER_GID], config, shared / "accounts.csv", shared)
    assert code == 2
    one_line_error(err)
    assert f"{incoming}: cannot enter: Permission denied; " in err
    assert f"spool/ belongs to uid {DAEMON_UID}:gid {DAEMON_GID} with mode 2750" in err
    assert f"needs membership of group gid {DAEMON_GID}" in err
    assert os.listdir(incoming) == []
