"""Acceptance tests of the copier (issue 3) under trouble: cancellation, stop requests, cut
connections, and the passwords' whereabouts afterwards.

Every interrupted copy must end, after a re-run or the copier's own retry, with every source
message at the destination exactly once and no truncated message there. Faults are injected
by ``FaultProxy`` between the copier and a real Dovecot: on plaintext connections (the servers'
no-TLS addresses) a cut is placed precisely, counted from a protocol pattern (``BODY[] {``,
``APPEND``); on TLS connections it is placed by byte count well inside the message stream.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from legacyflo_daemon.model import JobType, RequestResult, Status
from legacyflo_daemon.report import result as report
from legacyflo_daemon.state.lifecycle import Lifecycle
from legacyflo_daemon.state.store import StateStore
from legacyflo_daemon.transfer.copier import Interrupted, Progress
from testkit import (
    DovecotServer,
    FaultProxy,
    LoadedMessage,
    MailSpec,
    ServerAccount,
    load_messages,
)
from testkit.mailgen import lorem, make_message, utc
from testkit.snapshot import Content
from tests.copyhelp import (
    CopyRun,
    Login,
    all_hashes,
    dest_snapshot,
    direct_run,
    expected_tree,
    host_config,
    make_config,
    make_request,
)

MAPPING = {"INBOX": "Inbox", "Archive": "Archive"}
DEST_PROXY_HOST = "127.0.0.5"  # the dest server's name through a proxy (in the test cert)


def _load(
    server: DovecotServer, user: str, sizes: dict[str, int], *, words: int
) -> dict[str, tuple[LoadedMessage, ...]]:
    """``sizes[folder]`` distinct messages of about ``6 * words`` bytes in each folder, INBOX
    ending with a byte-identical twin of its first message; flags vary, dates in 2019."""
    loaded: dict[str, tuple[LoadedMessage, ...]] = {}
    for f_index, (folder, n) in enumerate(sizes.items()):
        specs = []
        for i in range(n):
            when = utc(2019, 1 + i % 12, 1 + i % 28, (f_index * 7 + i) % 24)
            data = make_message(
                subject=f"{folder} message {i}",
                date=when,
                message_id=f"<m{f_index}-{i}@copytests.example.com>",
                body=lorem(f_index * 1000 + i, words) + "\n",
            )
            flags = frozenset(["\\Seen"] if i % 3 else ["\\Flagged", "$Label1"])
            specs.append(MailSpec(data, flags, when, f"{folder}-{i}"))
        if folder == "INBOX" and specs:
            first = specs[0]
            specs.append(MailSpec(first.data, first.flags, first.internaldate, "INBOX-twin"))
        loaded[folder] = tuple(load_messages(server, user, folder, specs))
    return loaded


@dataclass
class Mailbox:
    """A loaded source mailbox and what the destination must look like after copying it."""

    want: dict[str, Counter[Content]]
    hashes: set[str]
    size: int  # of the smallest message


def _mailbox(server: DovecotServer, user: str, *, words: int = 300) -> Mailbox:
    # Archive is copied first (destination names in order) and is the larger folder, so that
    # every fault below lands inside it.
    loaded = _load(server, user, {"Archive": 12, "INBOX": 6}, words=words)
    messages = [m for msgs in loaded.values() for m in msgs]
    return Mailbox(
        want=expected_tree(loaded, MAPPING),
        hashes={m.sha256 for m in messages},
        size=min(m.size for m in messages),
    )


def _assert_complete(
    result: RequestResult, dest_server: DovecotServer, dest_user: str, box: Mailbox
) -> None:
    """Succeeded, every message exactly once, nothing truncated or foreign at the destination."""
    assert (result.status, result.error, result.failures) == (Status.SUCCEEDED, None, ())
    dest = dest_snapshot(dest_server, dest_user)
    assert set(all_hashes(dest)) <= box.hashes  # no truncated or otherwise altered message
    assert dest == box.want
    for folder in result.folders:
        assert (folder.copied + folder.already_present, folder.failed) == (folder.in_range, 0)


async def _wait_sessions_closed(server: DovecotServer, user: str) -> None:
    await asyncio.to_thread(
        server.wait_for_log,
        lambda _text: server.open_sessions(user) == 0 and bool(server.logins(user)),
    )


# -- cancellation and stop -----------------------------------------------------------------------


@pytest.mark.parametrize("when", ["mid-batch", "after-checkpoint"])
async def test_cancelled_copy_task_then_a_rerun_gives_exactly_once(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    when: str,
) -> None:
    box = _mailbox(source_server, source_account.user)
    run = direct_run(tmp_path, source_account, dest_account, jobtype=JobType.IMAP, fetch_batch=8)
    checkpoint = asyncio.Event()
    copier = run.copier(on_progress=lambda _p: checkpoint.set())
    task = asyncio.create_task(copier.run())
    if when == "mid-batch":  # after the 5th of a batch of 8 appends
        # Polled: progress is a plain counter, bumped after each APPEND, with no event to await.
        while copier.progress.messages_done < 5 and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0)
    else:
        await asyncio.wait_for(checkpoint.wait(), 10)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    total = sum(c.total() for c in box.want.values())
    partial = dest_snapshot(dest_server, dest_account.user)
    assert 5 <= sum(c.total() for c in partial.values()) < total
    await _wait_sessions_closed(source_server, source_account.user)
    await _wait_sessions_closed(dest_server, dest_account.user)

    _assert_complete(await run.run(), dest_server, dest_account.user, box)


async def test_stop_interrupts_then_a_rerun_gives_exactly_once(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
) -> None:
    box = _mailbox(source_server, source_account.user)
    run = direct_run(tmp_path, source_account, dest_account, jobtype=JobType.IMAP, fetch_batch=4)
    stop = asyncio.Event()
    with pytest.raises(Interrupted):
        await run.copier(stop=stop, on_progress=lambda _p: stop.set()).run()
    partial = dest_snapshot(dest_server, dest_account.user)
    assert 0 < sum(c.total() for c in partial.values()) < sum(c.total() for c in box.want.values())
    (checkpoint,) = [
        cp for cp in run.state.folder_checkpoints(run.request_id).values() if not cp.done
    ]
    assert checkpoint.counts["copied"] >= 4
    await _wait_sessions_closed(source_server, source_account.user)
    await _wait_sessions_closed(dest_server, dest_account.user)

    _assert_complete(await run.run(), dest_server, dest_account.user, box)


async def test_stop_with_several_connection_pairs_lets_each_finish_its_batch(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
) -> None:
    """With folders copied side by side, a stop ends every pair after its in-flight batch
    (nothing cancelled mid-APPEND: every stored batch is whole) and a rerun completes."""
    box = _mailbox(source_server, source_account.user)
    run = direct_run(
        tmp_path, source_account, dest_account, jobtype=JobType.IMAP, fetch_batch=2,
        folder_workers=3,
    )  # fmt: skip
    stop = asyncio.Event()
    copier = run.copier(stop=stop, on_progress=lambda _p: stop.set())
    granted: list[int] = []
    released: list[int] = []
    copier.extra_pair = lambda: granted.append(1) is None
    copier.release_pair = lambda: released.append(1)
    with pytest.raises(Interrupted):
        await copier.run()
    # A first run asks for its extra pairs (folder_workers - 1) while it lists; with two
    # folders one of them copies beside the first pair, the other is closed unused. Each
    # granted pair is given back exactly once.
    assert granted == [1, 1]
    assert released == [1, 1]
    partial = dest_snapshot(dest_server, dest_account.user)
    stored = sum(c.total() for c in partial.values())
    assert 0 < stored < sum(c.total() for c in box.want.values())
    counted = sum(
        cp.counts["copied"] for cp in run.state.folder_checkpoints(run.request_id).values()
    )
    assert counted == stored  # every batch that reached the server was finished and counted
    await _wait_sessions_closed(source_server, source_account.user)
    await _wait_sessions_closed(dest_server, dest_account.user)

    _assert_complete(await run.run(), dest_server, dest_account.user, box)


# -- cut connections -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """Where the proxy cuts: on which server's side, over TLS or not, and how."""

    side: str  # "source" or "dest"
    tls: bool
    arm: Callable[[FaultProxy, int], object]  # (proxy, smallest message size)
    after_progress: bool = True  # some messages are copied before the fault


CUTS = [
    pytest.param(
        Cut("source", False, lambda p, size: p.cut_after_server_bytes(
            int(6.5 * size), after=b"BODY[] {")),
        id="source-fetch-literal-plain",
    ),
    pytest.param(
        Cut("source", True, lambda p, size: p.cut_after_server_bytes(20_000 + int(6.5 * size))),
        id="source-fetch-stream-tls",
    ),
    pytest.param(
        Cut("dest", False, lambda p, size: p.cut_after_client_bytes(
            int(2.5 * size), after=b" APPEND ")),
        id="dest-append-literal-plain",
    ),
    pytest.param(
        Cut("dest", True, lambda p, size: p.cut_after_client_bytes(10_000 + int(2.5 * size))),
        id="dest-append-stream-tls",
    ),
    pytest.param(
        # The server stored the message, but its OK never reaches the copier.
        Cut("dest", False, lambda p, _size: p.cut_after_server_bytes(0, after=b"[APPENDUID"),
            after_progress=False),
        id="dest-append-ok-lost-plain",
    ),
]  # fmt: skip


def _proxied_run(
    tmp_path: Path,
    source: ServerAccount,
    dest: ServerAccount,
    cut: Cut,
    proxy: FaultProxy,
    **imap: Any,
) -> CopyRun:
    """A run whose ``cut.side`` goes through ``proxy`` (plaintext to the server's no-TLS
    address, or implicit TLS), the other side straight to its server over implicit TLS."""
    server = _proxied_server(source, dest, cut)
    via = host_config(server, tls="implicit" if cut.tls else "auto", allow_plaintext=not cut.tls)
    if cut.side == "source":
        hosts = {proxy.host: via, dest.host: host_config(dest.server)}
        src = Login(source.user, source.password, proxy.host, proxy.port)
        dst = Login(dest.user, dest.password, dest.host)
        dest_port = dest.port_tls
    else:
        hosts = {source.host: host_config(source.server), proxy.host: via}
        src = Login(source.user, source.password, source.host, source.port_tls)
        dst = Login(dest.user, dest.password, proxy.host)
        dest_port = proxy.port
    config = make_config(hosts, dest_port=dest_port, **imap)
    request = make_request(src, dst, jobtype=JobType.IMAP)
    return CopyRun.create(tmp_path, request, config)


def _proxied_server(source: ServerAccount, dest: ServerAccount, cut: Cut) -> DovecotServer:
    return source.server if cut.side == "source" else dest.server


@pytest.fixture
def proxies() -> Iterator[Callable[[DovecotServer, Cut], FaultProxy]]:
    """Factory: a started proxy in front of ``server`` for ``cut`` (TLS port or no-TLS address)."""
    made: list[FaultProxy] = []

    def make(server: DovecotServer, cut: Cut) -> FaultProxy:
        target = (
            (server.host, server.port_tls) if cut.tls else (server.notls_host, server.port_plain)
        )
        listen = "127.0.0.1" if cut.side == "source" else DEST_PROXY_HOST
        proxy = FaultProxy(*target, listen_host=listen).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.mark.parametrize("cut", CUTS)
async def test_cut_connection_is_resumed_by_the_copier_exactly_once(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    proxies: Callable[[DovecotServer, Cut], FaultProxy],
    cut: Cut,
) -> None:
    box = _mailbox(source_server, source_account.user, words=2000)
    proxy = proxies(_proxied_server(source_account, dest_account, cut), cut)
    cut.arm(proxy, box.size)
    seen: list[tuple[int, int, int]] = []  # per checkpoint: (connections, folders, messages)

    def progress(p: Progress) -> None:
        seen.append((proxy.connections_total, p.folders_done, p.messages_done))

    run = _proxied_run(tmp_path, source_account, dest_account, cut, proxy, fetch_batch=2)
    result = await run.copier(on_progress=progress).run()

    assert proxy.faults_fired == 1
    assert proxy.connections_total >= 2  # the copier reconnected
    # The first folder was still being copied after the reconnection: a resume mid-folder.
    assert any(conns >= 2 and folders == 0 for conns, folders, _done in seen), seen
    if cut.after_progress:  # and part of it had been copied before the fault
        assert any(conns == 1 and done > 0 for conns, _folders, done in seen), seen
    _assert_complete(result, dest_server, dest_account.user, box)


# -- passwords -----------------------------------------------------------------------------------


def _forms(password: str, user: str) -> list[bytes]:
    """Ways a password could leak: as is, JSON-escaped (ASCII or not), repr-escaped, and inside
    the base64 AUTHENTICATE PLAIN token."""
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    texts = {
        password,
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        repr(password)[1:-1],
    }
    return [t.encode() for t in texts] + [token]


def _leaks(data: bytes, forms: list[bytes]) -> list[bytes]:
    return [f for f in forms if f in data]


def _state_bytes(state: StateStore) -> bytes:
    files = [state.path, *(state.path.with_name(state.path.name + s) for s in ("-wal", "-shm"))]
    return b"".join(p.read_bytes() for p in files if p.exists())


async def test_passwords_never_reach_logs_errors_or_the_finished_state(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    proxies: Callable[[DovecotServer, Cut], FaultProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = _mailbox(source_server, source_account.user, words=2000)
    cut = Cut("source", False, lambda p, n: p.cut_after_server_bytes(n, after=b"BODY[] {"))
    proxy = proxies(source_server, cut)
    cut.arm(proxy, box.size)
    run = _proxied_run(tmp_path, source_account, dest_account, cut, proxy)
    wrong = 'Wr0ng"p\\ss %*{}'
    bad = direct_run(
        run.state, source_account, dest_account, source_password=wrong, request_id="req-bad"
    )
    groups = [
        _forms(source_account.password, source_account.user),
        _forms(dest_account.password, dest_account.user),
        _forms(wrong, source_account.user),
    ]
    forms = [form for group in groups for form in group]
    # Precondition: while the requests are queued each password is in the store, and the
    # search finds it there.
    queued = _state_bytes(run.state)
    assert all(_leaks(queued, group) for group in groups)

    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        result = await run.run()
        failed = await bad.run()
    _assert_complete(result, dest_server, dest_account.user, box)
    assert failed.status is Status.FAILED and failed.error is not None
    assert "authentication failed" in failed.error
    assert proxy.faults_fired == 1
    assert any(e["event"] == "request_retry" for e in events)  # the fault was logged

    texts = [repr(e) for e in events] + [caplog.text, failed.error]
    for text in texts:
        assert not _leaks(text.encode(), forms), text

    now = dt.datetime.now(dt.UTC)
    for copy_run, res in ((run, result), (bad, failed)):
        doc = report.result_json(
            copy_run.request_id, copy_run.request, None, res, csv_name="r.csv", dest_folder_path="x"
        )
        assert not _leaks(json.dumps(doc).encode(), forms)
        Lifecycle(run.state).finish(copy_run.request_id, res.status, doc, now, error=res.error)
    assert run.state.purge_freed_pages(wait=True)  # what the daemon does when idle
    assert _leaks(_state_bytes(run.state), forms) == []
