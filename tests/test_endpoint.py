"""``imap.endpoint``: the two endpoints of a request from the CSV and the config.

The one port rule (the CSV's port, else the host's ``port`` for that direction, else 993 for
the source and ``imap.dest_port`` for the destination), each direction with the settings of its
``[hosts."x".source]``/``[hosts."x".dest]`` sub-table, and one host name read over STARTTLS and
written over implicit TLS on the real Dovecot server.
"""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from legacyflo_daemon.config.load import load_config
from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.imap import session as imap
from legacyflo_daemon.imap.endpoint import (
    dest_endpoint,
    dest_port,
    make_ssl_context,
    port_for,
    source_endpoint,
    with_ports,
)
from legacyflo_daemon.model import Account, DateRange, JobType, Request, Secret
from testkit.dovecot import DovecotServer
from testkit.imap import ServerAccount
from testkit.tlsca import make_tls_ca

HOST = "mail.example.com"


def config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


def request(source: Account, dest: Account) -> Request:
    return Request(2, JobType.IMAP, "", source, dest, "Data", None, DateRange())


def account(port: int | None = None, server: str = HOST) -> Account:
    return Account("john", "baya.com", Secret("pw"), server, port)


@pytest.mark.parametrize(
    ("toml", "csv_port", "source", "dest"),
    [
        ("", None, 993, 993),
        ("[imap]\ndest_port = 1993", None, 993, 1993),
        (f'[hosts."{HOST}"]\nport = 2993', None, 2993, 2993),
        (f'[hosts."{HOST}"]\nport = 2993', 143, 143, 2993),  # the CSV's port first
        (f'[hosts."{HOST}"]\nport = 2993\n[hosts."{HOST}".source]\nport = 143', None, 143, 2993),
        (f'[hosts."{HOST}"]\nport = 2993\n[hosts."{HOST}".dest]\nport = 3993', None, 2993, 3993),
        (f'[hosts."{HOST}".source]\nport = 143', 1143, 1143, 993),
        (f'[imap]\ndest_port = 1993\n[hosts."{HOST}".source]\nport = 143', None, 143, 1993),
        ('[hosts."OTHER.example.com"]\nport = 2993', None, 993, 993),  # another host's
    ],
)
def test_one_port_rule_for_both_directions(
    tmp_path: Path, toml: str, csv_port: int | None, source: int, dest: int
) -> None:
    cfg = config(tmp_path, toml)
    req = request(account(csv_port), account())
    assert port_for(req.source, "source", cfg) == source_endpoint(req, cfg).port == source
    assert port_for(req.dest, "dest", cfg) == dest_port(req, cfg) == dest
    assert dest_endpoint(req, cfg).port == dest
    filled = with_ports(req, cfg)
    assert (filled.source.port, filled.dest.port) == (source, dest)
    assert without_ports(filled) == without_ports(req)  # nothing else changed


def without_ports(req: Request) -> Request:
    return replace(req, source=replace(req.source, port=None), dest=replace(req.dest, port=None))


def test_each_direction_connects_with_the_settings_of_its_sub_table(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        f"""
        [hosts."{HOST}"]
        login_format = "{{user}}@{{domain}}"
        tls_verify = false
        [hosts."{HOST}".source]
        port = 143
        allow_plaintext = true
        [hosts."{HOST}".dest]
        port = 1993
        tls = "implicit"
        tls_verify = true
        login_format = "BAYA\\\\{{user}}"
        """,
    )
    req = request(account(), account())
    src, dst = source_endpoint(req, cfg), dest_endpoint(req, cfg)
    assert (src.host, src.port, src.tls, src.user) == (
        HOST,
        143,
        "starttls-or-plain",
        "john@baya.com",
    )
    assert (dst.host, dst.port, dst.tls, dst.user) == (HOST, 1993, "implicit", "BAYA\\john")
    assert src.ssl_context is not None and src.ssl_context.verify_mode == ssl.CERT_NONE
    assert dst.ssl_context is not None and dst.ssl_context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("toml", "csv_port", "tls"),
    [
        ("", 993, "implicit"),
        ("", 143, "starttls"),
        ("", None, "implicit"),  # 993 by the port rule
        (f'[hosts."{HOST}".source]\nport = 143', None, "starttls"),  # "auto" on the rule's port
        (f'[hosts."{HOST}".source]\ntls = "starttls"', 993, "starttls"),
        (f'[hosts."{HOST}".dest]\ntls = "starttls"', 993, "implicit"),  # not the source's
    ],
)
def test_the_tls_mode_follows_the_port_the_rule_chose(
    tmp_path: Path, toml: str, csv_port: int | None, tls: str
) -> None:
    cfg = config(tmp_path, toml)
    assert source_endpoint(request(account(csv_port), account()), cfg).tls == tls


async def test_one_host_read_over_starttls_and_written_over_implicit_tls(
    tmp_path: Path, source_server: DovecotServer, source_account: ServerAccount
) -> None:
    """The same server name as source and destination of one request: STARTTLS on its plain
    port as the source, implicit TLS on its TLS port as the destination, both from the config
    (the CSV gives no port)."""
    name = source_server.host
    cfg = config(
        tmp_path,
        f"""
        [imap]
        connect_timeout = 5
        timeout = 5
        [hosts."{name}"]
        ca_file = "{source_server.ca_file}"
        [hosts."{name}".source]
        port = {source_server.port_plain}
        tls = "starttls"
        [hosts."{name}".dest]
        port = {source_server.port_tls}
        tls = "implicit"
        """,
    )
    req = request(source_account.model(), source_account.model())
    src, dst = source_endpoint(req, cfg), dest_endpoint(req, cfg)
    assert (src.port, src.tls) == (source_server.port_plain, "starttls")
    assert (dst.port, dst.tls) == (source_server.port_tls, "implicit")
    before = len(source_server.logins(source_account.user))
    for ep in (src, dst):
        async with await imap.connect(ep) as session:
            assert session.tls and session.alive
    source_server.wait_for_log(
        lambda _text: len(source_server.logins(source_account.user)) >= before + 2
    )
    logins = source_server.logins(source_account.user)[before:]
    assert [(login.local_port, login.tls) for login in logins] == [
        (source_server.port_plain, True),
        (source_server.port_tls, True),
    ]


def test_tls_contexts_are_shared_per_setting_and_rebuilt_when_the_ca_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a context loads CA certificates (~20 ms for the system store): connections
    share one per setting, a new one is built when the CA file changes (another CA: its
    certificates, not the old ones, are trusted) and after ``CONTEXT_SECONDS``."""
    first = make_tls_ca(tmp_path / "one").ca_file
    second = make_tls_ca(tmp_path / "two").ca_file
    ca = tmp_path / "ca.pem"
    ca.write_bytes(first.read_bytes())
    a = make_ssl_context(ca, True, False)
    assert make_ssl_context(ca, True, False) is a
    assert make_ssl_context(str(ca), True, False) is a
    assert make_ssl_context(ca, False, False) is not a  # another setting
    assert make_ssl_context(ca, True, True) is not a
    assert make_ssl_context(None, True, False) is make_ssl_context(None, True, False)

    ca.write_bytes(second.read_bytes())  # the administrator replaced the CA file
    b = make_ssl_context(ca, True, False)
    assert b is not a
    serials = {c["serialNumber"] for c in b.get_ca_certs()}
    wanted = {c["serialNumber"] for c in ssl.create_default_context(cafile=second).get_ca_certs()}
    old = {c["serialNumber"] for c in ssl.create_default_context(cafile=first).get_ca_certs()}
    assert serials == wanted and not serials & old

    import legacyflo_daemon.imap.endpoint as endpoint_module

    clock = [endpoint_module.time.monotonic()]
    monkeypatch.setattr(endpoint_module.time, "monotonic", lambda: clock[0])
    c = make_ssl_context(ca, True, False)
    clock[0] += endpoint_module.CONTEXT_SECONDS + 1
    assert make_ssl_context(ca, True, False) is not c

    ca.unlink()  # unreadable: the error every time, nothing cached
    for _ in range(2):
        with pytest.raises(OSError):
            make_ssl_context(ca, True, False)
