"""cli: check/submit verdicts and exit codes, one-line errors, help, run/status hand-over."""

from __future__ import annotations

import datetime as dt
import io
import os
import stat
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from legacyflo_daemon.cli import main as cli
from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.model import DateRange
from legacyflo_daemon.runtime.log import reset_logging
from legacyflo_daemon.spool.directory import Spool

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = FIXTURES / "reference_sample.csv"
DASH = "\u2013"  # en dash between the days of a range
HEADER = (
    "jobtype,jobtitle,destuserid,destdomain,destuserpasswd,destServer,destfolder,sendreportid,"
    "sourceuserid,sourcedomainname,sourceuserpassword,sourceserver,sourceserverport,since,before\n"
)
GOOD_ROW = (
    "EXCHANGEIMAP,Mary,mary,dest.example,Dest-pw-1,dest.example,Data2018,,"
    "mary,src.example,Src-pw-1,mail.src.example,993,2017-09-25,\n"
)
BAD_ROW = (
    "EXCHANGEIMAP,Bob,bob,dest.example,Dest-pw-2,dest.example,Trash,,"
    "bob,src.example,Src-pw-2,mail.src.example,993,,\n"
)


@pytest.fixture
def spool_config(tmp_path: Path) -> Iterator[Path]:
    """A config file whose spool exists; yields the config path."""
    Spool(tmp_path / "spool").ensure()
    path = tmp_path / "config.toml"
    path.write_text('[daemon]\nspool = "spool"\n')
    yield path


def csv_file(tmp_path: Path, text: str | bytes, name: str = "req.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("legacyflo-daemon: ")
    return err


# -- check ----------------------------------------------------------------------------------------


def test_check_the_reference_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(SAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, row = out.splitlines()[:2]
    assert header.split() == ["ROW", "VERDICT", "FIELD", "DETAILS"]
    assert row.split(None, 2)[:2] == ["3", "OK"]
    assert (
        "john@baya.com → john@baya-com.vaultastic.com folder Data27092018, "
        f"25 Sep 2017 {DASH} 24 Sep 2018" in row
    )
    assert row.index("john@") == header.index("DETAILS")  # aligned
    assert "Warnings:" in out and "1 request row(s): 1 OK, 0 BAD" in out
    assert "password@123" not in out


def test_check_with_a_bad_row_exits_1_and_lists_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = csv_file(tmp_path, HEADER + GOOD_ROW + BAD_ROW)
    assert cli.main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    table = out.splitlines()
    assert table[1].split()[:2] == ["2", "OK"]
    assert table[2].split()[:3] == ["3", "BAD", "destfolder"]
    assert "mary@src.example → mary@dest.example folder Data2018, from 25 Sep 2017" in table[1]
    assert table[1].index("mary@") == table[2].index(table[2].split(None, 3)[3])
    assert "2 request row(s): 1 OK, 1 BAD" in out
    for secret in ("Dest-pw", "Src-pw"):
        assert secret not in out


def test_check_shows_a_verdict_for_each_over_long_nul_or_undeliverable_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_title = GOOD_ROW.replace("Mary,mary,", "T" * 10_000_000 + ",mary2,")
    nul_password = GOOD_ROW.replace("Dest-pw-1", "Dest\x00pw").replace(",mary,", ",mary3,")
    ascii_only = GOOD_ROW.replace(",,mary,", ",m\u00e4ry@src.example,mary4,")
    path = csv_file(tmp_path, HEADER + GOOD_ROW + long_title + nul_password + ascii_only)
    assert cli.main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    table = out.splitlines()
    assert table[1].split()[:2] == ["2", "OK"]
    assert table[2].split()[:3] == ["3", "BAD", "jobtitle"]
    assert "jobtitle is longer than 200 characters (csv.max_title_chars)" in table[2]
    assert table[3].split()[:3] == ["4", "BAD", "destuserpasswd"]
    assert "destuserpasswd contains a NUL byte" in table[3]
    assert table[4].split()[:3] == ["5", "BAD", "sendreportid"]
    assert "4 request row(s): 1 OK, 3 BAD" in out
    assert len(out) < 5_000 and "TTTTTTTTTT" not in out and "Dest" not in out


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\n\n  \n", "blank"),
        (b"\x00\x01binary\xff", "NUL"),
        (b"hello world\n", "header"),
    ],
)
def test_check_of_a_file_rejected_as_a_whole_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, reason: str
) -> None:
    path = csv_file(tmp_path, content)
    assert cli.main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: rejected as a whole: " in one_line_error(err) and reason in err


@pytest.mark.parametrize("make", ["missing", "directory", "fifo"])
def test_check_of_an_unreadable_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str
) -> None:
    path = tmp_path / "x.csv"
    if make == "directory":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)
    assert cli.main(["check", str(path)]) == 2
    assert "cannot read" in one_line_error(capsys.readouterr().err)


def test_check_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = types.SimpleNamespace(buffer=io.BytesIO(SAMPLE.read_bytes()))
    monkeypatch.setattr(sys, "stdin", fake)
    assert cli.main(["check", "-"]) == 0
    assert "OK" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(b"")))
    assert cli.main(["check", "-"]) == 2
    assert "<stdin>: rejected as a whole" in one_line_error(capsys.readouterr().err)


def test_submit_from_stdin_is_named_request_csv(
    tmp_path: Path, spool_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(SAMPLE.read_bytes())))
    assert cli.main(["--config", str(spool_config), "submit", "-"]) == 0
    assert os.listdir(tmp_path / "spool" / "incoming") == ["request.csv"]


@pytest.mark.parametrize(
    ("since", "before", "text"),
    [
        (dt.date(2017, 9, 25), dt.date(2018, 9, 24), f"25 Sep 2017 {DASH} 24 Sep 2018"),
        (dt.date(2017, 9, 25), None, "from 25 Sep 2017"),
        (None, dt.date(2018, 1, 2), "up to 2 Jan 2018"),
        (None, None, "any date"),
    ],
)
def test_date_span(since: dt.date | None, before: dt.date | None, text: str) -> None:
    assert cli.date_span(DateRange(since, before)) == text


# -- config errors and help -----------------------------------------------------------------------


def test_a_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[hosts."x"]\nport = "993"\n')
    assert cli.main(["--config", str(bad), "check", str(SAMPLE)]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert err == f'legacyflo-daemon: {bad}: hosts."x".port: expected an integer\n'


def test_config_may_follow_the_command_and_come_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nmax_jobs = 0\n")
    assert cli.main(["check", "--config", str(bad), str(SAMPLE)]) == 2
    assert "daemon.max_jobs" in capsys.readouterr().err
    monkeypatch.setenv(cli.CONFIG_ENV, str(bad))
    assert cli.main(["check", str(SAMPLE)]) == 2
    assert "daemon.max_jobs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["check"], ["submit"], ["status"], ["example-config"], ["example-unit"]],
)
def test_help_for_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: legacyflo-daemon {' '.join(command)}".rstrip())
    assert "--config FILE" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["check"]) == 2
    assert "usage:" in capsys.readouterr().err


# -- submit ---------------------------------------------------------------------------------------


def test_submit_drops_an_identical_0600_file(
    tmp_path: Path, spool_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config", str(spool_config), "submit", str(SAMPLE)]) == 0
    incoming = tmp_path / "spool" / "incoming"
    assert sorted(os.listdir(incoming)) == ["reference_sample.csv"]
    dropped = incoming / "reference_sample.csv"
    assert dropped.read_bytes() == SAMPLE.read_bytes()
    assert stat.S_IMODE(dropped.stat().st_mode) == 0o600
    assert f"Submitted as {dropped}" in capsys.readouterr().out


def test_submit_twice_makes_a_unique_name(
    tmp_path: Path, spool_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = csv_file(tmp_path, SAMPLE.read_bytes(), "Users.CSV")
    for _ in range(2):
        assert cli.main(["--config", str(spool_config), "submit", str(path)]) == 0
    incoming = tmp_path / "spool" / "incoming"
    assert sorted(os.listdir(incoming)) == ["Users-2.csv", "Users.csv"]
    ready = Spool(tmp_path / "spool").ready_files(stable_seconds=0)
    assert sorted(ready) == ["Users-2.csv", "Users.csv"]


def test_submit_with_bad_rows_submits_and_exits_1(
    tmp_path: Path, spool_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = csv_file(tmp_path, HEADER + GOOD_ROW + BAD_ROW)
    assert cli.main(["--config", str(spool_config), "submit", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "BAD" in out and "Submitted as" in out
    assert "1 bad row(s) will be rejected" in one_line_error(err)
    assert os.listdir(tmp_path / "spool" / "incoming") == ["req.csv"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "rejected as a whole"),
        (b"\x00\x00", "rejected as a whole"),
        (HEADER, "no request rows"),
    ],
)
def test_submit_refuses_and_writes_nothing(
    tmp_path: Path,
    spool_config: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes,
    reason: str,
) -> None:
    path = csv_file(tmp_path, content)
    assert cli.main(["--config", str(spool_config), "submit", str(path)]) == 2
    assert reason in one_line_error(capsys.readouterr().err)
    assert os.listdir(tmp_path / "spool" / "incoming") == []


def test_submit_without_a_spool_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # defaults: ./spool, which does not exist here
    assert cli.main(["submit", str(SAMPLE)]) == 2
    assert "no such directory" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("users.csv", "users.csv"),
        ("/some/dir/Users.CSV", "Users.csv"),
        ("export", "export.csv"),
        (".hidden.csv", "hidden.csv"),
        ("...", "request.csv"),
        ("list.part", "list.part.csv"),
        ("x.tmp.csv", "x.tmp.csv"),
    ],
)
def test_drop_name(given: str, expected: str) -> None:
    name = cli.drop_name(given)
    assert name == expected
    assert not Spool.is_temp_name(name)


# -- run / status hand-over -----------------------------------------------------------------------


def fake_main(monkeypatch: pytest.MonkeyPatch, module: str, result: Any) -> list[Any]:
    """Replace ``<module>.main`` (the command's entry point) by one that records its calls."""
    calls: list[Any] = []

    def main(config: Config, **options: Any) -> Any:
        calls.append((config, options))
        return result

    monkeypatch.setattr(f"{module}.main", main)
    return calls


def test_run_hands_over_to_the_daemon(spool_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_main(monkeypatch, "legacyflo_daemon.daemon.app", 0)
    try:
        assert cli.main(["run", "--config", str(spool_config), "--once"]) == 0
    finally:
        reset_logging()
    ((config, options),) = calls
    assert options == {"once": True}
    assert config.path == spool_config


def test_status_hands_over(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = {"watch": False, "as_json": False, "request_id": None, "csv": None, "state": None}
    calls = fake_main(monkeypatch, "legacyflo_daemon.cli.status", 0)
    assert cli.main(["status"]) == 0
    assert calls[0][1] == plain
    calls = fake_main(monkeypatch, "legacyflo_daemon.cli.status", 3)
    assert cli.main(["status", "--watch"]) == 3
    assert calls[0][1] == plain | {"watch": True}
    calls = fake_main(monkeypatch, "legacyflo_daemon.cli.status", 0)
    args = ["status", "r-1", "--json", "--csv", "a.csv", "--state", "failed"]
    assert cli.main(args) == 0
    assert calls[0][1] == {"watch": False, "as_json": True, "request_id": "r-1",
                           "csv": "a.csv", "state": "failed"}  # fmt: skip


# -- the installed script -------------------------------------------------------------------------


def script() -> str:
    path = Path(sys.executable).parent / "legacyflo-daemon"
    assert path.exists(), "pip install -e . installs the legacyflo-daemon script"
    return str(path)


def test_installed_script(tmp_path: Path) -> None:
    ok = subprocess.run(
        [script(), "check", str(SAMPLE)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and f"25 Sep 2017 {DASH} 24 Sep 2018" in ok.stdout
    missing = subprocess.run(
        [script(), "check", str(tmp_path / "none.csv")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2
    assert missing.stdout == ""
    one_line_error(missing.stderr)


def test_submit_ends_a_file_whose_last_line_has_no_line_break(
    tmp_path: Path, spool_config: Path
) -> None:
    # Unquoted last value, no final line break: the daemon would wait for the rest of the row.
    data = SAMPLE.read_bytes().replace(b'"', b"")
    assert not data.endswith(b"\n")
    path = csv_file(tmp_path, data, "plain.csv")
    assert cli.main(["--config", str(spool_config), "submit", str(path)]) == 0
    dropped = tmp_path / "spool" / "incoming" / "plain.csv"
    assert dropped.read_bytes() == data + b"\r\n"
    assert Spool(tmp_path / "spool").ready_files(stable_seconds=0) == ["plain.csv"]
