"""``status`` for an administrator who may read the spool but not the state store (issue 12):
the daemon writes ``<spool>/status.json``; ``status`` run as another user in the spool's group
shows the same requests from it, and refuses ``status <id>`` with a line saying why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.imap import ServerAccount
from testkit.proxy import FaultProxy
from tests.e2ehelp import DaemonProcess, drop_csv, request_csv, wait_until, write_config
from tests.test_daemon_signals import big_rows

NOBODY = 65534  # uid and gid of nobody/nogroup on Debian


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _status_as_nobody(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``legacyflo-daemon status`` run as nobody in a forked child: the code is already in
    memory, so the checkout itself need not be readable by that user."""
    # Everything the child needs is imported here: as nobody it may not read the files of the
    # interpreter's installation (a lazy import, e.g. an encoding, would fail there).
    import encodings.cp1252
    import encodings.idna  # noqa: F401

    from legacyflo_daemon.cli import control  # noqa: F401
    from legacyflo_daemon.cli import status as _status  # noqa: F401
    from legacyflo_daemon.cli.main import main

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            # pytest captures sys.stdout/err in this process: write to the pipes instead.
            sys.stdout = os.fdopen(out_w, "w", encoding="utf-8")
            sys.stderr = os.fdopen(err_w, "w", encoding="utf-8")
            _as_nobody()
            code = main(["status", "--config", str(config), *args])
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, waited = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(waited), stdout, stderr)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory others may traverse (pytest's own are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="lf-group-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_member_of_the_spools_group_reads_status_from_the_snapshot(
    shared_dir: Path,
    new_source_account: Callable[..., ServerAccount],
    new_dest_account: Callable[..., ServerAccount],
    slow_source: FaultProxy,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user")
    dest = new_dest_account()
    rows = big_rows(1, new_source_account, dest, slow_source)
    spool = shared_dir / "spool"
    spool.mkdir()
    os.chown(spool, 0, NOBODY)
    spool.chmod(0o2750)  # the group may read; setgid: status.json gets the group
    (spool / "incoming").mkdir(mode=0o700)
    config = write_config(
        shared_dir / "config.toml", spool=spool, source=rows[0].source.server, dest=dest.server,
        imap={"fetch_batch": 5},
    )  # fmt: skip
    # The other user must be able to read the config and the CA file it names.
    ca = shared_dir / "ca.pem"
    shutil.copyfile(dest.server.ca_file, ca)
    ca.chmod(0o644)
    text = config.read_text().replace(str(dest.server.ca_file), str(ca))
    config.write_text(text.replace(str(rows[0].source.server.ca_file), str(ca)))
    config.chmod(0o644)
    drop_csv(spool / "incoming", "group.csv", request_csv(rows))
    with DaemonProcess(config, shared_dir, name="d") as daemon:
        snapshot = spool / "status.json"
        wait_until(lambda: snapshot.exists() or None, 20, "status.json", daemon)
        assert snapshot.stat().st_mode & 0o777 == 0o640 and snapshot.stat().st_gid == NOBODY
        out = _status_as_nobody(config, "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["daemon"]["running"] is True
        assert [r["csv"] for r in doc["requests"]] == ["group.csv"]
        assert "status.json" in doc["source"]
        text = _status_as_nobody(config)
        assert text.returncode == 0 and "(from " in text.stdout, text.stderr
        one = _status_as_nobody(config, doc["requests"][0]["id"])
        assert one.returncode == 2 and "need read access to the state store" in one.stderr
        daemon.kill()
    secrets = [rows[0].source.password, dest.password]
    assert not any(s in snapshot.read_text() for s in secrets)
