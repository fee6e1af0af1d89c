"""``check`` shows every value the daemon will use for a good row, within 80 columns, passwords
masked; its TLS rule is the daemon's (``imap.endpoint.endpoint``) for every combination."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from legacyflo_daemon.cli import describe
from legacyflo_daemon.cli import main as cli
from legacyflo_daemon.config.schema import Config, HostConfig
from legacyflo_daemon.imap.endpoint import endpoint
from legacyflo_daemon.model import Account, Secret
from testkit.tlsca import TlsCa

HEADER = (
    "jobtype,jobtitle,destuserid,destdomain,destuserpasswd,destServer,destfolder,sendreportid,"
    "sourceuserid,sourcedomainname,sourceuserpassword,sourceserver,sourceserverport,since,before\n"
)
CONFIG = """\
[imap]
dest_port = 143
dest_root = "INBOX.archive"

[hosts."mail.src.example"]
port = 995
tls = "implicit"
login_format = "SRC\\\\{{user}}"
ca_file = "{ca_file}"
legacy_tls = true

[hosts."dest.example"]
tls_verify = false

[hosts."dest.example".dest]
allow_plaintext = true
"""


@pytest.mark.parametrize(
    ("tls", "port", "plaintext"),
    list(itertools.product(["auto", "implicit", "starttls"], [993, 143, 9993], [False, True])),
)
def test_tls_mode_is_the_daemons_rule(tls: str, port: int, plaintext: bool) -> None:
    host = HostConfig(tls=tls, allow_plaintext=plaintext)
    account = Account("u", "d.example", Secret("pw"), "h.example")
    assert describe.tls_mode(host, port) == endpoint(account, port, host, Config()).tls


def write_config(tmp_path: Path, ca_file: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(ca_file=ca_file))
    return config


def run_check(
    tmp_path: Path, rows: str, capsys: pytest.CaptureFixture[str], ca_file: Path
) -> list[str]:
    config = write_config(tmp_path, ca_file)
    path = tmp_path / "req.csv"
    path.write_text(HEADER + rows)
    assert cli.main(["--config", str(config), "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    return lines[
        lines.index("Requests (every value the daemon will use; passwords are never shown):") :
    ]


def fields(block: list[str]) -> dict[str, str]:
    """The labelled values of a detail block, continuation lines joined with a space."""
    out: dict[str, str] = {}
    label = ""
    for line in block[1:]:
        if line[:2] == "  " and line[2] != " ":
            label, value = line[:15].strip(), line[15:]
            out[label] = value
        else:
            assert line.startswith(" " * 15), line
            out[label] += " " + line[15:]
    return out


def test_check_shows_every_value_of_a_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tls_ca: TlsCa
) -> None:
    rows = (
        'EXCHANGEIMAP,"Mary, 2018",mary,dest.example,Dest-pw-1,dest.example,Data2018,'
        "boss@corp.example,mary,src.example,Src-pw-1,mail.src.example,,2017-09-25,2018-09-24\n"
        "IMAP,,bob,dest.example,Dest-pw-2,other.example,Old,,"
        "bob,src.example,Src-pw-2,imap.other.example,143,,\n"
    )
    lines = run_check(tmp_path, rows, capsys, tls_ca.ca_file)
    assert all(len(line) <= describe.WIDTH for line in lines)
    assert lines[1] == ""
    second = lines.index('Row 3: IMAP "(no title)"')
    assert lines[2] == 'Row 2: EXCHANGEIMAP "Mary, 2018"'
    assert fields(lines[2 : second - 1]) == {
        "report to": "boss@corp.example",
        "source": "mary@src.example (login SRC\\mary), password ******** "
        'mail.src.example port 995 (hosts."mail.src.example".port) '
        f"implicit TLS, certificate verified with CA file {tls_ca.ca_file}, "
        "TLS 1.0 allowed (legacy_tls)",
        "destination": "mary@dest.example, password ******** "
        "dest.example port 143 (imap.dest_port) "
        "STARTTLS when offered, else PLAIN TEXT (allow_plaintext), "
        "certificate NOT verified (tls_verify = false)",
        "into folder": 'INBOX.archive.Data2018 ("." = the server\'s separator)',
        "dates": "received 25 Sep 2017 through 24 Sep 2018, inclusive",
    }
    assert lines[second - 1 :] == [
        "",
        'Row 3: IMAP "(no title)"',
        "  report to    nobody (no report mail is sent)",
        "  source       bob@src.example, password ********",
        "               imap.other.example port 143 (from the CSV)",
        "               STARTTLS (required), certificate verified with the system's CAs",
        "  destination  bob@dest.example, password ********",
        "               other.example port 143 (imap.dest_port)",
        "               STARTTLS (required), certificate verified with the system's CAs",
        '  into folder  INBOX.archive.Old ("." = the server\'s separator)',
        "  dates        all mail regardless of date",
    ]
    for secret in ("Dest-pw", "Src-pw"):
        assert secret not in "\n".join(lines)


def test_the_default_ports_and_a_long_title_fit_80_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tls_ca: TlsCa
) -> None:
    title = "A rather long job title that keeps going " * 4
    rows = (
        f'EXCHANGEIMAP,"{title}",ann,dest.example,P-1,archive.example,Data,,'
        "ann,src.example,P-2,exchange.example,,,\n"
    )
    lines = run_check(tmp_path, rows, capsys, tls_ca.ca_file)
    assert all(len(line) <= describe.WIDTH for line in lines)
    text = "\n".join(lines)
    assert "exchange.example port 993 (default)" in text
    assert "archive.example port 143 (imap.dest_port)" in text
    assert " ".join(title.split()) in " ".join(text.split())  # wrapped, not cut
    assert "P-1" not in text and "P-2" not in text


@pytest.mark.parametrize("content", [b"not a certificate\n", b""])
def test_a_ca_file_that_is_not_a_certificate_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_bytes(content)
    rows = (
        "IMAP,T,ann,dest.example,P-1,archive.example,Data,,"
        "ann,src.example,P-2,mail.src.example,,,\n"
    )
    config = write_config(tmp_path, bad)
    path = tmp_path / "req.csv"
    path.write_text(HEADER + rows)
    for extra in ([], ["--connect"]):
        assert cli.main(["--config", str(config), "check", *extra, str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert "Traceback" not in err and err.count("\n") == 1
        assert err == (
            f"legacyflo-daemon: {bad}: not a usable CA certificate file "
            '(hosts."mail.src.example".ca_file: no certificate or crl found); '
            "give the PEM file of the CA that signed the server's certificate\n"
        )
