"""Connection limits are a pace, not a verdict (docs/contract.md §5, issue 10 item 4).

Real servers refuse one connection too many in their own ways: Cyrus with
``maxlogins_per_user`` answers LOGIN ``NO Too many open connections (2 of 2 for …)``; Courier
with ``-maxperip`` closes the connection before its greeting. The copier opens extra connection
pairs to copy folders side by side; a refused one must never fail the request (let alone as a
wrong password), never cancel the other pairs' batches, and must tell the pool, which allows
that host and login fewer connections for the rest of the run. Checked message by message with
the stdlib client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from legacyflo_daemon.config.schema import HostConfig
from legacyflo_daemon.daemon.pool import Limits, Lowered, Pool, Slot
from legacyflo_daemon.model import JobType, Status
from testkit.courier import CourierServer
from testkit.cyrus import CyrusServer
from testkit.imap import HOSTILE_PASSWORD, Security, ServerAccount, connect, login
from testkit.imapmail import append_messages, read_mailbox
from testkit.maildir import MailSpec
from testkit.mailgen import make_message
from testkit.tlsca import TlsCa

from .copyhelp import CopyRun, Login, make_config, make_request

pytestmark = pytest.mark.timeout(120)

FOLDERS = [f"Folder{i}" for i in range(6)]
PER_FOLDER = 12


def _specs(folder: str) -> list[MailSpec]:
    out = []
    for i in range(PER_FOLDER):
        when = dt.datetime(2020, 1, 1 + i, 8, 0, tzinfo=dt.UTC)
        mid = f"<{folder}.{i}@limits.test>"
        data = make_message(subject=f"{folder} {i}", date=when, message_id=mid, body="x" * 2000)
        out.append(MailSpec(data=data, flags=frozenset({"\\Seen"}), internaldate=when))
    return out


def _load(account: ServerAccount, security: Security, prefix: str) -> None:
    with account.imap(security) as conn:
        for folder in FOLDERS:
            append_messages(conn, prefix + folder, _specs(folder))
        append_messages(conn, "INBOX", _specs("inbox"))


def _host(server: object, security: Security) -> HostConfig:
    port = server.port_tls if security is Security.TLS else server.port_plain  # type: ignore[attr-defined]
    tls = "implicit" if security is Security.TLS else "starttls"
    return HostConfig(ca_file=Path(server.ca_file), tls=tls, port=port)  # type: ignore[attr-defined]


def _run(
    tmp_path: Path,
    source: ServerAccount,
    src_security: Security,
    dest: ServerAccount,
    dst_security: Security,
    limited: list[str],
    **imap: object,
) -> CopyRun:
    src_port = source.port_tls if src_security is Security.TLS else source.port_plain
    hosts = {source.host: _host(source.server, src_security),
             dest.host: _host(dest.server, dst_security)}  # fmt: skip
    config = make_config(hosts, dest_port=hosts[dest.host].port or 993, folder_workers=4, **imap)
    request = make_request(
        Login(source.user, source.password, source.host, src_port),
        Login(dest.user, dest.password, dest.host),
        jobtype=JobType.IMAP,
    )
    run = CopyRun.create(tmp_path, request, config)
    return run


async def _copy(run: CopyRun, limited: list[str], grant: Callable[[], bool]) -> object:
    copier = run.copier()
    copier.extra_pair = grant
    copier.on_limited = limited.append
    return await copier.run()


def _source_contents(account: ServerAccount, security: Security) -> dict[str, object]:
    with account.imap(security) as conn:
        return {n: f.contents() for n, f in read_mailbox(conn).folders.items()}


def _dest_contents(account: ServerAccount, security: Security, base: str) -> dict[str, object]:
    with account.imap(security) as conn:
        snap = read_mailbox(conn)
    return {n[len(base) :]: f.contents() for n, f in snap.folders.items() if n.startswith(base)}


def test_cyrus_login_limit_on_extra_pairs_slows_the_copy_and_loses_nothing(
    cyrus_factory: Callable[..., CyrusServer],
    new_source_account: Callable[..., ServerAccount],
    tmp_path: Path,
) -> None:
    cyrus = cyrus_factory(maxlogins_per_user=2)
    dest = cyrus.account(cyrus.new_user(HOSTILE_PASSWORD, "lim"))
    source = new_source_account()
    _load(source, Security.TLS, "")
    limited: list[str] = []
    run = _run(tmp_path, source, Security.TLS, dest, Security.TLS, limited)
    result = asyncio.run(_copy(run, limited, lambda: True))

    assert result.status is Status.SUCCEEDED, result  # type: ignore[attr-defined]
    assert "authentication" not in repr(result).lower()
    assert limited and set(limited) == {cyrus.host}  # the refusals reached the pool
    want = _source_contents(source, Security.TLS)
    got = _dest_contents(dest, Security.TLS, "INBOX.historical_data.Data.")
    assert got.pop("Inbox") == want.pop("INBOX")
    assert got == want  # every message exactly once, bytes, flags and dates
    total = PER_FOLDER * (len(FOLDERS) + 1)
    assert sum(f.copied for f in result.folders) == total  # type: ignore[attr-defined]


def test_courier_per_address_limit_closing_before_the_greeting_loses_nothing(
    courier_factory: Callable[..., CourierServer],
    new_dest_account: Callable[..., ServerAccount],
    tmp_path: Path,
) -> None:
    courier = courier_factory(maxperip=2)
    source = courier.account(courier.new_user(HOSTILE_PASSWORD, "lim"))
    _load(source, Security.STARTTLS, "INBOX.")
    dest = new_dest_account()
    limited: list[str] = []
    run = _run(tmp_path, source, Security.STARTTLS, dest, Security.TLS, limited)
    result = asyncio.run(_copy(run, limited, lambda: True))

    assert result.status is Status.SUCCEEDED, result  # type: ignore[attr-defined]
    assert set(limited) == {courier.host}
    assert courier.limit_refusals() >= 1  # the server really refused connections
    want = _source_contents(source, Security.STARTTLS)
    got = _dest_contents(dest, Security.TLS, "INBOX.historical_data.Data.")
    assert got.pop("Inbox") == want.pop("INBOX")
    assert got == {name.removeprefix("INBOX."): c for name, c in want.items()}
    total = PER_FOLDER * (len(FOLDERS) + 1)
    assert sum(f.copied for f in result.folders) == total  # type: ignore[attr-defined]


def test_a_refused_first_login_is_retried_never_called_a_wrong_password(
    cyrus_factory: Callable[..., CyrusServer],
    new_dest_account: Callable[..., ServerAccount],
    tls_ca: TlsCa,
    tmp_path: Path,
) -> None:
    cyrus = cyrus_factory(maxlogins_per_user=1)
    source = cyrus.account(cyrus.new_user(HOSTILE_PASSWORD, "lim"))
    with source.imap(Security.TLS) as conn:
        append_messages(conn, "INBOX", _specs("inbox"))
    dest = new_dest_account()
    # Someone else (the user's mail client) holds the only allowed session for a while.
    holder = connect(cyrus.host, cyrus.port_tls, Security.TLS, tls_ca.client_context())
    login(holder, source.user, source.password)
    release = threading.Timer(1.0, holder.logout)
    limited: list[str] = []
    run = _run(tmp_path, source, Security.TLS, dest, Security.TLS, limited,
               backoff_base=0.3, backoff_max=0.6, retries=10)  # fmt: skip
    release.start()
    try:
        result = asyncio.run(_copy(run, limited, lambda: False))
    finally:
        release.cancel()
        release.join()
    assert result.status is Status.SUCCEEDED, result  # type: ignore[attr-defined]
    assert limited and set(limited) == {cyrus.host}
    assert sum(f.copied for f in result.folders) == PER_FOLDER  # type: ignore[attr-defined]


# -- the pool's side (pure) --------------------------------------------------------------------


def _slot(src: str, dst: str, user: str = "u") -> Slot:
    return Slot(hosts=(src, dst), logins=(f"{user}@{src}", f"{user}@{dst}"))


def test_pool_lowers_host_and_login_allowance_to_what_was_working() -> None:
    pool = Pool(Limits(max_jobs=10, max_per_host=8, max_per_login=4))
    assert pool.pick([("r1", _slot("ex", "arch"))]) == ["r1"]
    assert pool.try_extend("r1") and pool.try_extend("r1")  # 3 pairs: 3 connections each side
    # The third pair's login on "arch" was refused as one too many.
    lowered = pool.limited("r1", "ARCH")
    assert set(lowered) == {Lowered("arch", 2), Lowered("u@arch", 2)}
    pool.shrink("r1")  # the refused pair goes back
    assert not pool.try_extend("r1")  # 2 on "arch" is now the most
    assert pool.host_cap("ex") == 8  # the other server is not affected
    # A new request with another login on the same server waits for room.
    assert pool.pick([("r2", _slot("ex2", "arch", "v"))]) == []
    pool.release("r1")
    assert pool.pick([("r2", _slot("ex2", "arch", "v"))]) == ["r2"]


def test_pool_allowance_never_drops_below_one() -> None:
    pool = Pool(Limits(max_jobs=10, max_per_host=8, max_per_login=4))
    pool.pick([("r1", _slot("ex", "arch"))])
    pool.limited("r1", "arch")
    pool.limited("r1", "arch")
    assert pool.host_cap("arch") == 1 and pool.login_cap("u@arch") == 1
    assert pool.limited("unknown", "arch") == []
