"""Two folders overlapping on one connection pair (issue 14, a small mailbox over a WAN).

Once a folder has fetched its last body, the next one opens on the source connection (EXAMINE,
its metadata, for a new destination folder its first bodies) while the first one still appends;
it opens its destination folder only when the first is done with the destination connection
(``FolderCopy.dest_gate``): its last APPEND and its read-back, which reads the selected folder.
Both servers are real Dovecots behind ``FaultProxy`` on plaintext connections, so the tests see
the commands' bytes and can hold one side still.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from legacyflo_daemon.model import JobType, RequestResult, Status
from legacyflo_daemon.transfer import folder_copy
from testkit import DovecotServer, FaultProxy, MailSpec, ServerAccount, load_messages
from testkit.mailgen import lorem, make_message, utc
from tests.copyhelp import (
    BASE,
    CopyRun,
    Login,
    all_hashes,
    dest_snapshot,
    expected_tree,
    host_config,
    make_config,
    make_request,
)

DEST_PROXY_HOST = "127.0.0.5"  # the dest server's name through a proxy (in the test cert)
MAPPING = {"Archive": "Archive", "INBOX": "Inbox"}


@pytest.fixture
def proxied(
    source_account: ServerAccount, dest_account: ServerAccount
) -> Iterator[tuple[FaultProxy, FaultProxy]]:
    """(source proxy, destination proxy), both plaintext to the servers' no-TLS addresses."""
    src = FaultProxy(source_account.server.notls_host, source_account.server.port_plain).start()
    dst = FaultProxy(
        dest_account.server.notls_host, dest_account.server.port_plain,
        listen_host=DEST_PROXY_HOST,
    ).start()  # fmt: skip
    yield src, dst
    src.stop()
    dst.stop()


def _spec(f_index: int, folder: str, i: int) -> MailSpec:
    """Message ``i`` of the ``f_index``-th loaded folder: distinct bytes, the same every call."""
    when = utc(2020, 1 + i % 12, 1 + i % 28, 9)
    data = make_message(
        subject=f"{folder} {i}",
        date=when,
        message_id=f"<f{f_index}-{i}@overlap.example.com>",
        body=lorem(f_index * 100 + i, 200) + "\n",
    )
    return MailSpec(data, frozenset({"\\Seen"}), when, f"{folder}-{i}")


def _load_folders(server: DovecotServer, user: str, sizes: dict[str, int]) -> dict[str, Any]:
    """``sizes[folder]`` messages in each folder (``_spec``), in that order."""
    return {
        folder: tuple(load_messages(server, user, folder, [_spec(f, folder, i) for i in range(n)]))
        for f, (folder, n) in enumerate(sizes.items())
    }


def _load(server: DovecotServer, user: str) -> dict[str, Any]:
    """Archive (12 messages, copied first: the larger) and INBOX (4), distinct messages."""
    return _load_folders(server, user, {"Archive": 12, "INBOX": 4})


def _run(
    tmp_path: Path,
    source: ServerAccount,
    dest: ServerAccount,
    proxies: tuple[FaultProxy, FaultProxy],
    **imap: Any,
) -> CopyRun:
    src_proxy, dst_proxy = proxies
    via = {"tls": "auto", "allow_plaintext": True}
    hosts = {
        src_proxy.host: host_config(source.server, **via),
        dst_proxy.host: host_config(dest.server, **via),
    }
    config = make_config(hosts, dest_port=dst_proxy.port, folder_workers=1, **imap)
    request = make_request(
        Login(source.user, source.password, src_proxy.host, src_proxy.port),
        Login(dest.user, dest.password, dst_proxy.host),
        jobtype=JobType.IMAP,
    )
    return CopyRun.create(tmp_path, request, config)


async def _until(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


def _assert_exact(result: RequestResult, dest: ServerAccount, loaded: dict[str, Any]) -> None:
    assert (result.status, result.error, result.failures) == (Status.SUCCEEDED, None, ())
    stored = dest_snapshot(dest.server, dest.user)
    assert stored == expected_tree(loaded, MAPPING)
    assert max(all_hashes(stored).values()) == 1  # distinct messages: each exactly once
    for folder in result.folders:
        assert (folder.copied + folder.already_present, folder.failed) == (folder.in_range, 0)


async def test_the_next_folder_opens_on_the_source_while_the_previous_one_appends(
    source_account: ServerAccount,
    dest_account: ServerAccount,
    proxied: tuple[FaultProxy, FaultProxy],
    tmp_path: Path,
) -> None:
    loaded = _load(source_account.server, source_account.user)
    src_proxy, dst_proxy = proxied
    # The destination receives Archive's first APPEND and never answers it (held in the
    # proxy); the source holds the copier's EXAMINE of INBOX, the second folder, if it comes.
    dst_proxy.stall_after_client_bytes(0, after=b" APPEND ")
    src_proxy.stall_after_client_bytes(0, after=b'EXAMINE "INBOX"')
    run = _run(tmp_path, source_account, dest_account, proxied)
    copy = asyncio.ensure_future(run.run())
    try:
        assert await _until(lambda: dst_proxy.faults_fired == 1, 10.0)
        # One pair, Archive still appending: without the overlap INBOX would be opened on the
        # source only after that APPEND's answer, which cannot come.
        assert await _until(lambda: src_proxy.faults_fired == 1, 5.0)
        assert not copy.done()
    finally:
        src_proxy.resume()
        dst_proxy.resume()
    # INBOX opened its destination folder only after Archive's read-back (its 12 copies are
    # read back: the destination is on probation): a read-back of the wrong folder would find
    # none of them and fail them.
    _assert_exact(await asyncio.wait_for(copy, 30), dest_account, loaded)


async def test_a_cut_while_two_folders_overlap_loses_and_duplicates_nothing(
    source_account: ServerAccount,
    dest_account: ServerAccount,
    proxied: tuple[FaultProxy, FaultProxy],
    tmp_path: Path,
) -> None:
    loaded = _load(source_account.server, source_account.user)
    src_proxy, dst_proxy = proxied
    # The destination connection dies inside Archive's APPEND, after INBOX (the next folder)
    # was opened on the source: both passes end, the copier's next attempt finishes both.
    src_proxy.stall_after_client_bytes(0, after=b'EXAMINE "INBOX"')
    dst_proxy.stall_after_client_bytes(0, after=b" APPEND ")
    run = _run(tmp_path, source_account, dest_account, proxied)
    copy = asyncio.ensure_future(run.run())
    assert await _until(lambda: src_proxy.faults_fired == 1 and dst_proxy.faults_fired == 1, 10)
    dst_proxy.clear_faults()
    src_proxy.clear_faults()
    dst_proxy.drop_all()  # the held APPEND never reaches the server
    src_proxy.resume()
    dst_proxy.resume()
    _assert_exact(await asyncio.wait_for(copy, 30), dest_account, loaded)
    assert dst_proxy.connections_total >= 2  # the copier reconnected


async def test_a_folder_someone_filled_before_it_was_created_is_compared_not_streamed(
    source_account: ServerAccount,
    dest_account: ServerAccount,
    proxied: tuple[FaultProxy, FaultProxy],
    tmp_path: Path,
) -> None:
    loaded = _load(source_account.server, source_account.user)
    dst_proxy = proxied[1]
    # Between the copier's listing (Archive absent at the destination) and its CREATE,
    # another client creates the folder and stores three of the messages in it.
    dst_proxy.stall_after_client_bytes(0, after=f'CREATE "{BASE}.Archive"'.encode())
    run = _run(tmp_path, source_account, dest_account, proxied)
    copy = asyncio.ensure_future(run.run())
    assert await _until(lambda: dst_proxy.faults_fired == 1, 10.0)
    early = loaded["Archive"][:3]
    stored = [load_messages(dest_account.server, dest_account.user, f"{BASE}.Archive",
                            [_spec(0, "Archive", i)])[0].sha256 for i in range(3)]  # fmt: skip
    assert stored == [m.sha256 for m in early]
    with capture_logs() as logs:
        dst_proxy.resume()
        result = await asyncio.wait_for(copy, 30)
    # The pass found the folder not empty once open, appended nothing, and the next attempt
    # compared both sides: the three are not copied again.
    retries = [e["error"] for e in logs if e["event"] == "request_retry"]
    assert retries == [f"the destination folder '{BASE}.Archive' was not empty when created; "
                       "comparing both sides in the next attempt"]  # fmt: skip
    _assert_exact(result, dest_account, loaded)
    archive_result = next(f for f in result.folders if f.source == "Archive")
    assert (archive_result.already_present, archive_result.copied) == (3, 9)


async def test_never_more_than_two_folders_at_once_on_a_pair(
    source_account: ServerAccount,
    dest_account: ServerAccount,
    proxied: tuple[FaultProxy, FaultProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Folders of one message fetch everything at once and then wait for the destination: each
    # would let the next one start, without a bound, while Archive's first APPEND is held.
    sizes = {"Archive": 12, "F1": 1, "F2": 1, "F3": 1, "F4": 1}
    loaded = _load_folders(source_account.server, source_account.user, sizes)
    live, peak = [0], [0]
    run_pass = folder_copy.FolderCopy.run

    async def counted(self: folder_copy.FolderCopy, src: Any, dst: Any) -> Any:
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        try:
            return await run_pass(self, src, dst)
        finally:
            live[0] -= 1

    monkeypatch.setattr(folder_copy.FolderCopy, "run", counted)
    dst_proxy = proxied[1]
    dst_proxy.stall_after_client_bytes(0, after=b" APPEND ")
    copy = asyncio.ensure_future(_run(tmp_path, source_account, dest_account, proxied).run())
    try:
        assert await _until(lambda: dst_proxy.faults_fired == 1, 10.0)
        assert await _until(lambda: peak[0] == 2, 5.0)  # F1 is read beside Archive ...
        await asyncio.sleep(1.0)
        assert (peak[0], live[0]) == (2, 2)  # ... and nothing after it while Archive appends
    finally:
        dst_proxy.resume()
    result = await asyncio.wait_for(copy, 30)
    assert (result.status, result.error, result.failures) == (Status.SUCCEEDED, None, ())
    mapping = {"INBOX": "Inbox"} | {f: f for f in sizes}  # the source's INBOX is empty
    assert dest_snapshot(dest_account.server, dest_account.user) == expected_tree(
        {"INBOX": ()} | loaded, mapping
    )
    assert peak[0] == 2


async def test_a_folder_put_back_by_a_lost_pair_is_compared_by_the_next(
    source_account: ServerAccount,
    dest_account: ServerAccount,
    proxied: tuple[FaultProxy, FaultProxy],
    tmp_path: Path,
) -> None:
    # Two pairs: Archive on the first, Big2 on the extra one, whose destination connection is
    # cut inside Big2's APPEND of message 6 (some of Big2 stored). The extra pair gives Big2
    # back; the first pair takes it after Archive and must compare it (created this attempt,
    # not empty), not stream it as a new folder (which would restart the whole attempt).
    sizes = {"Archive": 150, "Big2": 10}
    loaded = _load_folders(source_account.server, source_account.user, sizes)
    dst_proxy = proxied[1]
    dst_proxy.cut_after_client_bytes(10, after=b"Subject: Big2 6")
    run = _run(tmp_path, source_account, dest_account, proxied, fetch_batch=2)
    run.config = replace(run.config, imap=replace(run.config.imap, folder_workers=2))
    copier = run.copier()
    copier.extra_pair = lambda: True
    with capture_logs() as logs:
        result = await asyncio.wait_for(copier.run(), 60)
    events = [e["event"] for e in logs]
    assert dst_proxy.faults_fired == 1 and "extra_connection_failed" in events
    assert "request_retry" not in events
    assert (result.status, result.error, result.failures) == (Status.SUCCEEDED, None, ())
    stored = dest_snapshot(dest_account.server, dest_account.user)
    mapping = {"INBOX": "Inbox"} | {f: f for f in sizes}  # the source's INBOX is empty
    assert stored == expected_tree({"INBOX": ()} | loaded, mapping)
    assert max(all_hashes(stored).values()) == 1
    big2 = next(f for f in result.folders if f.source == "Big2")
    # What the lost pair stored counts as copied by this request (its checkpoint's counts).
    assert (big2.copied, big2.already_present, big2.failed) == (10, 0, 0)
