"""config: TOML into frozen dataclasses; every bad key is one line naming file and key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from legacyflo_daemon.config.load import load_config
from legacyflo_daemon.config.schema import (
    DIRECTIONS,
    Config,
    CsvConfig,
    DaemonConfig,
    HostConfig,
    ImapConfig,
    LogConfig,
    MetricsConfig,
    ReportConfig,
    SmtpConfig,
    StateConfig,
)
from legacyflo_daemon.errors import ConfigError
from legacyflo_daemon.model import Secret
from legacyflo_daemon.request import csvfile

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def test_no_file_means_the_defaults() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.daemon.spool == Path("spool")
    assert cfg.daemon.state_path == Path("spool/state.sqlite3")
    assert cfg.smtp is None and cfg.hosts == {}
    assert cfg.state == StateConfig()  # SQLite: the zero-setup default


def test_an_empty_file_means_the_defaults_with_the_spool_beside_it(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg.daemon.spool == tmp_path / "spool"
    assert dataclasses.replace(cfg.daemon, spool=Path("spool")) == DaemonConfig()
    assert (cfg.imap, cfg.log, cfg.report) == (ImapConfig(), LogConfig(), ReportConfig())
    assert cfg.path == tmp_path / "config.toml"


def test_values_are_read_and_converted(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        [daemon]
        spool = "work/spool"
        state_file = "/var/lib/x/state.db"
        max_jobs = 2
        grace_seconds = 5          # an integer where a float is expected is fine
        [imap]
        exclude_folders = ["Calendar", "Kalender"]
        [log]
        level = "DEBUG"
        file = "logs/d.log"
        [hosts."Mail.Example.COM"]
        port = 1993
        allow_plaintext = true
        login_format = '{user}@{domain}'
        """,
    )
    assert cfg.daemon.spool == tmp_path / "work" / "spool"
    assert cfg.daemon.state_path == Path("/var/lib/x/state.db")
    assert cfg.daemon.max_jobs == 2
    assert cfg.daemon.grace_seconds == 5.0 and isinstance(cfg.daemon.grace_seconds, float)
    assert cfg.imap.exclude_folders == ("Calendar", "Kalender")
    assert cfg.log.level == "debug"
    assert cfg.log.file == tmp_path / "logs" / "d.log"
    assert list(cfg.hosts) == ["mail.example.com"]
    host = cfg.host("MAIL.example.com")
    assert host == HostConfig(port=1993, allow_plaintext=True, login_format="{user}@{domain}")
    assert cfg.host("other.example.com") == HostConfig()


def test_host_sub_tables_override_the_base_keys_for_their_direction_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    (etc / "certs").mkdir(parents=True)
    (etc / "ca.pem").write_text("x\n")
    (etc / "certs" / "dest-ca.pem").write_text("x\n")
    write(
        etc,
        """
        [hosts."Mail.Example.COM"]
        ca_file = "ca.pem"
        login_format = '{user}@{domain}'
        max_connections = 6
        [hosts."Mail.Example.COM".source]
        port = 143
        tls = "STARTTLS"
        allow_plaintext = true
        [hosts."Mail.Example.COM".dest]
        tls = "implicit"
        ca_file = "certs/dest-ca.pem"  # relative to the config file, like the base keys
        login_format = "{user}"
        """,
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("etc/config.toml"))
    base = HostConfig(ca_file=etc / "ca.pem", login_format="{user}@{domain}", max_connections=6)
    source = dataclasses.replace(base, port=143, tls="starttls", allow_plaintext=True)
    dest = dataclasses.replace(
        base, tls="implicit", ca_file=etc / "certs" / "dest-ca.pem", login_format="{user}"
    )
    assert cfg.host("mail.example.com") == dataclasses.replace(base, source=source, dest=dest)
    assert cfg.host_for("MAIL.example.com", "source") == source
    assert cfg.host_for("mail.example.com", "dest") == dest


def test_without_its_sub_table_a_direction_uses_the_base_keys(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path, '[hosts."m"]\nport = 1993\ntls = "implicit"\n[hosts."m".dest]\nport = 993\n'
    )
    assert cfg.host("m").source is None
    assert cfg.host_for("m", "source") == HostConfig(port=1993, tls="implicit")  # no dest left
    assert cfg.host_for("m", "dest") == HostConfig(port=993, tls="implicit")
    assert cfg.host_for("other", "source") == cfg.host_for("other", "dest") == HostConfig()
    empty = load_text(tmp_path, '[hosts."m"]\nport = 1993\n[hosts."m".source]\n')
    assert empty.host_for("m", "source") == empty.host_for("m", "dest") == HostConfig(port=1993)


def test_an_unknown_host_key_lists_the_keys_of_its_own_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as base:
        load_text(tmp_path, '[hosts."x"]\nprot = 143\n')
    assert base.value.message.endswith("max_per_login, source, dest)")
    with pytest.raises(ConfigError) as sub:
        load_text(tmp_path, '[hosts."x".source]\nprot = 143\n')
    assert sub.value.message.endswith("max_per_login)")


def test_relative_paths_are_relative_to_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = write(tmp_path / "etc", '[daemon]\nspool = "spool"\n')
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(Path("../etc/config.toml"))
    assert cfg.daemon.spool.resolve() == (tmp_path / "etc" / "spool").resolve()
    assert cfg.daemon.spool.is_absolute()
    assert path.exists()


def test_csv_limits_are_read_and_reach_the_csv_reader_unchanged(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[csv]\nmax_rows = 7\nmax_title_chars = 80\n")
    assert cfg.csv == CsvConfig(max_rows=7, max_title_chars=80)
    assert csvfile.Limits.of(cfg.csv) == csvfile.Limits(max_rows=7, max_title_chars=80)


def test_csv_limits_have_the_csv_readers_names_and_defaults() -> None:
    """``config`` and ``request`` cannot import each other: the two lists are kept equal here."""
    limits = dataclasses.asdict(csvfile.Limits())
    assert limits.pop("passwordless") == frozenset()  # from the hosts' auth, not from [csv]
    assert dataclasses.asdict(CsvConfig()) == limits


def test_error_message_is_one_line_naming_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[hosts."x"]\nport = "993"\n')
    with pytest.raises(ConfigError) as info:
        load_config(Path("config.toml"))
    assert str(info.value) == 'config.toml: hosts."x".port: expected an integer'
    assert (info.value.path, info.value.key) == ("config.toml", 'hosts."x".port')


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[daemon]\nmax_jobs = true", "daemon.max_jobs", "expected an integer"),
        ("[daemon]\nmax_jobs = 2.5", "daemon.max_jobs", "expected an integer"),
        ('[daemon]\nmax_jobs = "4"', "daemon.max_jobs", "expected an integer"),
        ("[daemon]\nmax_jobs = 0", "daemon.max_jobs", "must be at least 1, got 0"),
        ("[daemon]\nforce_polling = 1", "daemon.force_polling", "expected true or false"),
        ("[daemon]\ngrace_seconds = false", "daemon.grace_seconds", "expected a number"),
        ("[daemon]\ngrace_seconds = nan", "daemon.grace_seconds", "expected a finite number"),
        ("[daemon]\nstable_seconds = -1", "daemon.stable_seconds", "must be at least 0"),
        ("[daemon]\nspool = 5", "daemon.spool", "expected a path"),
        ('[daemon]\nspool = ""', "daemon.spool", "expected a path"),
        ("[daemon]\nmax_job = 4", "daemon.max_job", "unknown key (known keys: spool,"),
        ("daemon = 4", "daemon", "expected a table"),
        ("[deamon]\nmax_jobs = 4", "deamon", "unknown section"),
        ("[csv]\nmax_rows = 0", "csv.max_rows", "must be at least 1, got 0"),
        ("[csv]\nmax_bytes = 1.5", "csv.max_bytes", "expected an integer"),
        ("[csv]\nmax_title_chars = -5", "csv.max_title_chars", "must be at least 1"),
        ("[csv]\nmax_password_bytes = 0", "csv.max_password_bytes", "must be at least 1"),
        ("[csv]\nmax_columns = 20", "csv.max_columns", "unknown key (known keys: max_bytes,"),
        ("[imap]\ndest_port = 70000", "imap.dest_port", "must be 1 to 65535, got 70000"),
        ('[imap]\ndest_root = "INBOX..x"', "imap.dest_root", "without empty parts"),
        ('[imap]\ndest_root = "INBOX.*"', "imap.dest_root", "must not contain '*'"),
        ('[imap]\nexclude_folders = "Calendar"', "imap.exclude_folders", "list of strings"),
        ("[imap]\nexclude_folders = [1]", "imap.exclude_folders", "list of strings"),
        ('[imap]\nexclude_folders = [" "]', "imap.exclude_folders", "empty names"),
        ("[imap]\nfetch_batch = 5000", "imap.fetch_batch", "must be 1 to 1000"),
        (
            "[imap]\nbackoff_base = 10\nbackoff_max = 5",
            "imap.backoff_max",
            "must not be smaller than imap.backoff_base",
        ),
        ('[log]\nlevel = "verbose"', "log.level", "must be one of debug, info, warning"),
        ('[log]\nformat = "xml"', "log.format", "must be one of auto, json, console"),
        ('[report]\nfrom_address = "nobody"', "report.from_address", "must be a mail address"),
        ("[smtp]\nport = 25", "smtp.host", "missing (this key is required)"),
        ('[smtp]\nhost = "m"\ntls = "ssl"', "smtp.tls", "must be one of starttls, implicit"),
        (
            '[smtp]\nhost = "m"\npassword = "x"',
            "smtp.password",
            "use password_file or password_env",
        ),
        ('[smtp]\nhost = "m"\nusername = "u"', "smtp.username", "needs password_file or"),
        ('[smtp]\nhost = "m"\npassword_env = "E"', "smtp.username", "no username"),
        (
            '[smtp]\nhost = "m"\nusername = "u"\npassword_env = "E"\npassword_file = "/etc/hosts"',
            "smtp.password_env",
            "not both",
        ),
        ('[smtp]\nhost = "m"\nca_file = "missing.pem"', "smtp.ca_file", "not a readable file"),
        ('[hosts."x"]\nport = 0', 'hosts."x".port', "must be 1 to 65535"),
        ('[hosts."x"]\ntls_verify = "no"', 'hosts."x".tls_verify', "expected true or false"),
        ('[hosts."x"]\nlogin_format = "{usr}"', 'hosts."x".login_format', "only {user}, {domain}"),
        ('[hosts."x"]\nlogin_format = "{domain}"', 'hosts."x".login_format', "contain {user}"),
        ('[hosts."x"]\nlogin_format = "{user"', 'hosts."x".login_format', "only {user}, {domain}"),
        ('[hosts."x"]\nca_file = "nope.pem"', 'hosts."x".ca_file', "not a readable file"),
        ('[hosts."x"]\nmax_connection = 2', 'hosts."x".max_connection', "unknown key"),
        ('[hosts."x".source]\ntls = "ssl"', 'hosts."x".source.tls', "must be one of auto,"),
        ('[hosts."x".dest]\nport = 0', 'hosts."x".dest.port', "must be 1 to 65535"),
        ('[hosts."x".dest]\nport = "993"', 'hosts."x".dest.port', "expected an integer"),
        ('[hosts."x".source]\nmax_connections = 0', 'hosts."x".source.max_connections', "at"),
        ('[hosts."x".dest]\nlogin_format = "{domain}"', 'hosts."x".dest.login_format', "{user}"),
        ('[hosts."x".dest]\nca_file = "nope.pem"', 'hosts."x".dest.ca_file', "not a readable"),
        ('[hosts."x".source]\nprot = 143', 'hosts."x".source.prot', "unknown key"),
        ('[hosts."x".source.dest]\nport = 1', 'hosts."x".source.dest', "unknown key"),
        ('[hosts."x".dest.dest]', 'hosts."x".dest.dest', "unknown key"),
        ('[hosts."x"]\nsource = 143', 'hosts."x".source', "expected a table"),
        ('[hosts."x"]\ndest = "implicit"', 'hosts."x".dest', "expected a table"),
        ('[hosts."A"]\n[hosts."a"]', 'hosts."a"', "listed twice"),
        ('[hosts."a b"]', 'hosts."a b"', "must not be empty or contain spaces"),
        ('hosts = "x"', "hosts", "expected tables like"),
        ("[hosts]\nx = 1", 'hosts."x"', "expected a table"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert message in info.value.message
    assert str(info.value) == f"{path}: {key}: {info.value.message}"
    assert "\n" not in str(info.value)


def test_the_password_key_is_rejected_without_echoing_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, '[smtp]\nhost = "m"\npassword = "hunter2-secret"')
    assert "hunter2-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[daemon\n", "not valid TOML"),
        (b"max_jobs = = 3\n", "not valid TOML"),
        (b"\xff\xfe[daemon]\n", "not UTF-8"),
    ],
)
def test_unparsable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == ""
    assert message in str(info.value) and str(info.value).startswith(f"{path}: ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_config(tmp_path / "absent.toml")


def test_a_valid_smtp_table(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text('s3cr"t pass\n')
    cfg = load_text(
        tmp_path,
        '[smtp]\nhost = "smtp.example.com"\ntls = "IMPLICIT"\nport = 465\n'
        'username = "u@example.com"\npassword_file = "pw"\n',
    )
    assert cfg.smtp == SmtpConfig(
        host="smtp.example.com",
        port=465,
        tls="implicit",
        username="u@example.com",
        password_file=tmp_path / "pw",
    )
    assert cfg.smtp.password() == Secret('s3cr"t pass')


def test_smtp_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    smtp = SmtpConfig(host="m", username="u", password_env="LFD_TEST_SMTP_PW")
    monkeypatch.setenv("LFD_TEST_SMTP_PW", "from-env")
    assert smtp.password() == Secret("from-env")
    monkeypatch.delenv("LFD_TEST_SMTP_PW")
    with pytest.raises(ConfigError) as info:
        smtp.password()
    assert info.value.key == "smtp.password_env"
    assert "LFD_TEST_SMTP_PW is not set" in str(info.value)


def test_smtp_password_file_that_vanished(tmp_path: Path) -> None:
    smtp = SmtpConfig(host="m", username="u", password_file=tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"smtp\.password_file: cannot read"):
        smtp.password()
    assert SmtpConfig(host="m").password() is None


# -- config.example.toml ------------------------------------------------------------------------

# A disabled setting is "#key = ..." or "#[table]"; prose comments are "# ...".
_DISABLED_SETTING = re.compile(r"^#(?=[\[A-Za-z_])", re.M)


def test_the_example_loads_as_exactly_the_defaults() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.daemon == DaemonConfig(spool=EXAMPLE.parent / "spool")
    assert cfg.csv == CsvConfig()
    assert cfg.imap == ImapConfig()
    assert cfg.log == LogConfig()
    assert cfg.report == ReportConfig()
    assert cfg.smtp is None and cfg.hosts == {}


def test_the_example_documents_every_key() -> None:
    text = _DISABLED_SETTING.sub("", EXAMPLE.read_text())
    doc = tomllib.loads(text)  # with every disabled setting enabled
    expected = {
        "daemon": DaemonConfig,
        "csv": CsvConfig,
        "imap": ImapConfig,
        "log": LogConfig,
        "report": ReportConfig,
        "smtp": SmtpConfig,
        "metrics": MetricsConfig,
        "state": StateConfig,
    }
    assert set(doc) == {*expected, "hosts"}
    for section, cls in expected.items():
        assert set(doc[section]) == {f.name for f in dataclasses.fields(cls)}, section
    assert len(doc["hosts"]) == 1
    (host,) = doc["hosts"].values()
    keys = {f.name for f in dataclasses.fields(HostConfig)} - set(DIRECTIONS)
    assert set(host) == keys | set(DIRECTIONS)
    for direction in DIRECTIONS:  # an example of each sub-table, with keys of the base table
        assert host[direction] and set(host[direction]) <= keys, direction


def test_every_key_in_the_example_has_a_comment_above_it() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        bare = line.lstrip("#")
        if re.match(r"[a-z_]+ = ", bare) and not line.startswith("# "):
            above = lines[i - 1]
            assert above.startswith("# ") or re.match(r"#?[a-z_]+ = ", above), line


def test_the_documented_example_values_are_valid(tmp_path: Path) -> None:
    """The example's disabled settings, enabled, load (given the files they name exist)."""
    text = _DISABLED_SETTING.sub("", EXAMPLE.read_text())
    doc = tomllib.loads(text)
    for section, key in (
        ("smtp", "ca_file"),
        ("smtp", "password_file"),
        ("state", "password_file"),
    ):
        doc[section][key] = str(tmp_path / key)
        (tmp_path / key).write_text("x\n")
    (host,) = doc["hosts"].values()
    for key in ("ca_file", "client_secret_file", "client_certificate_file",
                "authority_ca_file", "admin_password_file"):  # fmt: skip
        host[key] = str(tmp_path / key)
        (tmp_path / key).write_text("x\n")
    del doc["smtp"]["password_env"]  # the example shows both alternatives
    del doc["state"]["password_env"]
    doc["daemon"]["state_file"] = "state.db"
    doc["log"]["file"] = "d.log"
    lines = []
    for section, table in doc.items():
        if section == "hosts":
            for name, values in table.items():
                lines += _toml_table(f'hosts."{name}"', values)
        else:
            lines += _toml_table(section, table)
    cfg = load_text(tmp_path, "\n".join(lines))
    assert cfg.smtp is not None and cfg.smtp.host == "smtp.example.com"
    assert cfg.host("MAIL.example.com").login_format == "{user}"
    source = cfg.host_for("mail.example.com", "source")
    dest = cfg.host_for("mail.example.com", "dest")
    assert (source.port, source.tls, source.login_format) == (143, "starttls", "{user}")
    assert (dest.port, dest.tls, dest.login_format) == (993, "implicit", "{user}@{domain}")


def _toml_table(name: str, values: dict[str, object]) -> list[str]:
    """``[name]`` with its keys, then its sub-tables as ``[name.key]``."""
    lines = [f"[{name}]"]
    lines += [f"{k} = {_toml(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for key, sub in values.items():
        if isinstance(sub, dict):
            lines += _toml_table(f"{name}.{key}", sub)
    return lines


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


# -- [state]: a shared PostgreSQL database -----------------------------------------------------


def test_state_url_and_its_password_given_apart(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret:@/\n")
    cfg = load_text(
        tmp_path,
        '[state]\nurl = "postgresql://legacyflo@db.example.com:5432/lf"\npassword_file = "pw"\n',
    )
    assert cfg.state.url == "postgresql://legacyflo@db.example.com:5432/lf"
    assert cfg.state.password() == Secret("s3cret:@/")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('url = "postgresql://u:s3cret@db/lf"', "must not contain the password"),
        ('url = "mysql://u@db/lf"', "must be a PostgreSQL URL"),
        ('url = "postgresql:///lf"', "must name the database server"),
        ('url = "postgresql://u@db:99999/lf"', "not a valid URL"),
        ('password_env = "X"', "state.url: missing: a password is set but no database URL"),
        ('url = "postgresql://u@db/lf"\nnode = "a b"', "state.node: must be 1 to 64 letters"),
        ('node = "a"', "state.node: needs state.url"),
        ('url = "postgresql://u@db/lf"\nlease_seconds = 1', "must be at least 3"),
        (
            'url = "postgresql://u@db/lf"\npassword_file = "pw"\npassword_env = "X"',
            "give password_file or password_env, not both",
        ),
    ],
)
def test_bad_state_settings_are_one_line_naming_the_key(
    tmp_path: Path, text: str, words: str
) -> None:
    (tmp_path / "pw").write_text("x\n")
    with pytest.raises(ConfigError, match=words) as caught:
        load_text(tmp_path, f"[state]\n{text}\n")
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_pure_worker_needs_a_shared_state(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"daemon\.intake: false needs state\.url"):
        load_text(tmp_path, "[daemon]\nintake = false\n")
    cfg = load_text(tmp_path, '[daemon]\nintake = false\n[state]\nurl = "postgresql://u@db/lf"\n')
    assert cfg.daemon.intake is False and cfg.state.lease_seconds == 60.0
