"""``auth`` per host and direction: the config keys, their checks, the CSV rows without a password
for such a host, and what ``check`` shows for each side."""

from __future__ import annotations

from pathlib import Path

import pytest

from legacyflo_daemon.cli.describe import account_lines
from legacyflo_daemon.config.load import load_config
from legacyflo_daemon.config.schema import EXCHANGE_ONLINE_SCOPE, Config
from legacyflo_daemon.errors import ConfigError
from legacyflo_daemon.request import csvfile

HEADER = (
    "jobtype,jobtitle,destuserid,destdomain,destuserpasswd,destserver,destfolder,sendreportid,"
    "sourceuserid,sourcedomainname,sourceuserpassword,sourceserver,sourceserverport,since,before"
)


def load(tmp_path: Path, text: str) -> Config:
    (tmp_path / "secret").write_text("s3cr3t-value\n")
    (tmp_path / "admin.pw").write_text("adm1n-pw\n")
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


OAUTH = """
[hosts."outlook.office365.com"]
auth = "oauth2"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret_file = "secret"
"""


def test_oauth2_host_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, OAUTH)
    host = cfg.host_for("Outlook.Office365.com", "source")
    assert host.auth == "oauth2" and host.scope == EXCHANGE_ONLINE_SCOPE
    assert host.authority == "https://login.microsoftonline.com"
    assert host.client_secret_file == tmp_path / "secret"
    assert cfg.passwordless() == {
        ("source", "outlook.office365.com"),
        ("dest", "outlook.office365.com"),
    }


def test_auth_per_direction(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """
[hosts."mail.example.com"]
admin_user = "master"
admin_password_file = "admin.pw"
[hosts."mail.example.com".source]
auth = "admin"
login_format = "{user}*{admin}"
""",
    )
    assert cfg.host_for("mail.example.com", "source").auth == "admin"
    assert cfg.host_for("mail.example.com", "dest").auth == "password"
    assert cfg.passwordless() == {("source", "mail.example.com")}


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (OAUTH.replace('tenant = "contoso.onmicrosoft.com"\n', ""), ".tenant", "missing"),
        (OAUTH.replace('client_secret_file = "secret"\n', ""), ".client_secret_file", "exactly"),
        (OAUTH + 'client_certificate_file = "secret"\n', ".client_secret_file", "exactly one"),
        (OAUTH + 'client_secret = "x"\n', ".client_secret", "not accepted in the config"),
        (OAUTH + 'authority = "http://login.example"\n', ".authority", "https://"),
        (OAUTH + 'client_certificate_thumbprint = "zz"\n', "thumbprint", "40 hexadecimal"),
        (
            OAUTH.replace('"oauth2"', '"kerberos"'),
            ".auth",
            "must be one of password, oauth2, admin",
        ),
        (OAUTH.replace('"secret"', '"gone"'), ".client_secret_file", "not a readable"),
        (
            '[hosts."x"]\nauth = "admin"\nadmin_user = "a"\nadmin_password_file = "admin.pw"\n',
            ".login_format",
            "needs {admin} in it",
        ),
        (
            '[hosts."x"]\nauth = "admin"\nadmin_user = "a"\nadmin_password_file = "admin.pw"\n'
            'sasl_authzid = true\nlogin_format = "{user}*{admin}"\n',
            ".login_format",
            "remove {admin}",
        ),
        ('[hosts."x"]\nauth = "admin"\nsasl_authzid = true\n', ".admin_user", "missing"),
        ('[hosts."x"]\nlogin_format = "{user}*{admin}"\n', ".login_format", 'needs auth = "admin"'),
        ('[hosts."x".dest]\nauth = "oauth2"\n', 'hosts."x".dest.tenant', "missing"),
        ('[hosts."x"]\nadmin_password = "pw"\n', ".admin_password", "admin_password_file"),
    ],
)
def test_bad_auth_settings_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert key in info.value.key and message in info.value.message
    assert "\n" not in str(info.value)


def _row(
    source_password: str, dest_password: str = "destpw", source: str = "outlook.office365.com"
):
    line = (
        f'EXCHANGEIMAP,t,john,dest.example,"{dest_password}",dest.example,Data,,'
        f'john,contoso.com,"{source_password}",{source},,,'
    )
    return (HEADER + "\n" + line + "\n").encode()


def test_rows_may_omit_the_password_of_a_passwordless_side(tmp_path: Path) -> None:
    cfg = load(tmp_path, OAUTH)
    limits = csvfile.Limits.of(cfg.csv, cfg.passwordless())
    parsed = csvfile.parse(_row(""), limits)
    assert not parsed.errors and parsed.requests[0].source.password.reveal() == ""
    # The destination still needs its password, another source too, and without the config
    # (the default limits) the source password is required as before.
    (error,) = csvfile.parse(_row("", dest_password=""), limits).errors
    assert error.field == "destuserpasswd"
    (error,) = csvfile.parse(_row("", source="other.example"), limits).errors
    assert error.field == "sourceuserpassword"
    (error,) = csvfile.parse(_row("")).errors
    assert error.field == "sourceuserpassword"
    # A password given anyway is kept (and simply not used).
    assert csvfile.parse(_row("pw"), limits).requests[0].source.password.reveal() == "pw"


def test_check_shows_how_each_side_authenticates(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        OAUTH
        + """
[hosts."dest.example"]
auth = "admin"
admin_user = "master"
admin_password_file = "admin.pw"
sasl_authzid = true
[hosts."legacy.example"]
auth = "admin"
admin_user = "admin"
admin_password_file = "admin.pw"
login_format = '{domain}\\{admin}\\{user}'
""",
    )
    limits = csvfile.Limits.of(cfg.csv, cfg.passwordless())
    (req,) = csvfile.parse(_row("", dest_password=""), limits).requests
    source = account_lines(req.source, "source", cfg)[0]
    assert source.startswith("john@contoso.com, OAuth 2.0 token (auth oauth2) of application")
    assert "11111111-2222-3333-4444-555555555555" in source and "client secret" in source
    dest = account_lines(req.dest, "dest", cfg)[0]
    assert "impersonated (auth admin) by administrator master: SASL PLAIN" in dest
    (legacy,) = csvfile.parse(_row("", source="legacy.example"), limits).requests
    line = account_lines(legacy.source, "source", cfg)[0]
    assert line.startswith("john@contoso.com (login contoso.com\\admin\\john), impersonated")
    assert "adm1n-pw" not in line and "s3cr3t" not in source
