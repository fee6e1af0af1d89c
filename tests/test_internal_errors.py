"""A bug is an ``InternalError``: never retried as network trouble, and it keeps its traceback.

- ``endpoint.translate``/``chain``: only the classified network, TLS and server conditions map
  to ``TransientError``/``PermanentError``; any other exception is an ``InternalError`` whose
  ``__cause__`` is the original exception.
- The session: a bug in the parsing of a reply is an ``InternalError``; an unreadable reply
  (``WireError``) stays a ``TransientError`` (a scripted server on loopback).
- The protocol: an exception raised while received data is handled (inside ``data_received``)
  fails the waiting command at once, with ``InternalError`` chained to that very exception for a
  bug, ``TransientError`` for the server's doing (a scripted server on loopback).
- The copier (acceptance, real Dovecot): a parser bug while copying propagates out of
  ``Copier.run`` as ``InternalError`` after exactly one call, no retry and no reconnection.
- The copier's waits honour a stop request and never swallow a cancellation.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from aioimaplib import aioimaplib as lib
from structlog.testing import capture_logs

from legacyflo_daemon.config.schema import HostConfig
from legacyflo_daemon.errors import (
    AuthenticationFailed,
    ImapError,
    InternalError,
    LegacyfloError,
    PermanentError,
    TransientError,
)
from legacyflo_daemon.imap import session as imap_session
from legacyflo_daemon.imap._aioimaplib.commands import LinearFetchCommand
from legacyflo_daemon.imap.endpoint import chain, translate
from legacyflo_daemon.imap.syntax.wire import WireError
from legacyflo_daemon.model import JobType
from legacyflo_daemon.transfer import copier as copier_module
from legacyflo_daemon.transfer.copier import Interrupted, connect_pair
from testkit import DovecotServer, MailSpec, ServerAccount, load_messages, snapshot_mailbox
from testkit.mailgen import make_message, utc
from tests.copyhelp import CopyRun, Login, dest_snapshot, direct_run, make_config, make_request
from tests.test_imap_defects import FakeImap

HOST = "imap.example.test"


def _raised(exc: Exception) -> Exception:
    """``exc`` after it was really raised (so that it has a traceback)."""
    try:
        raise exc
    except Exception as caught:
        return caught


def _translated(exc: Exception, what: str = "UID FETCH 1:5") -> LegacyfloError:
    """What the boundary raises for ``exc``: ``translate(exc)`` raised from ``chain(exc)``."""
    try:
        raise translate(exc, HOST, what) from chain(exc)
    except LegacyfloError as error:
        return error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- translate and chain ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bug",
    [AttributeError("'NoneType' object has no attribute 'uid'"), KeyError("UID"), TypeError("x")],
    ids=["AttributeError", "KeyError", "TypeError"],
)
def test_translate_makes_any_unclassified_exception_an_internal_error_chained_to_it(
    bug: Exception,
) -> None:
    original = _raised(bug)
    error = _translated(original)
    assert type(error) is InternalError
    assert not isinstance(error, ImapError)  # so no retry loop can take it for network trouble
    assert error.__cause__ is original
    assert original.__traceback__ is not None
    assert traceback.extract_tb(original.__traceback__)[-1].name == "_raised"
    assert str(error) == f"{HOST}: UID FETCH 1:5: internal error ({type(bug).__name__})"


def test_an_internal_error_message_names_only_the_type_never_the_text() -> None:
    error = _translated(_raised(ValueError("LOGIN user s3cret-pw")), what="login")
    assert "s3cret" not in str(error)
    assert str(error) == f"{HOST}: login: internal error (ValueError)"


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (ConnectionRefusedError(111, "Connection refused"), TransientError, "connection refused"),
        (TimeoutError(), TransientError, "timed out"),
        (ConnectionResetError(104, "Connection reset by peer"), TransientError,
         "network error: Connection reset by peer"),
        (OSError(113, "No route to host"), TransientError, "network error: No route to host"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), PermanentError,
         "unknown host name"),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), TransientError,
         "name lookup failed: Temporary failure"),
        (ssl.SSLEOFError(8, "EOF occurred"), TransientError, "TLS connection closed"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), PermanentError,
         "TLS handshake failed"),
        (WireError("unbalanced parenthesis"), TransientError,
         "unreadable server response: unbalanced parenthesis"),
        (lib.Abort("unexpected tagged response"), TransientError, "IMAP protocol error (Abort)"),
        (lib.CommandTimeout("timeout"), TransientError, "IMAP protocol error (CommandTimeout)"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)  # fmt: skip
def test_translate_keeps_classifying_network_tls_and_server_conditions(
    exc: Exception, kind: type[ImapError], text: str
) -> None:
    error = _translated(_raised(exc))
    assert type(error) is kind
    assert text in str(error) and str(error).startswith(f"{HOST}: UID FETCH 1:5: ")
    assert error.__cause__ is None  # the message says it all; nothing to log a traceback for


@pytest.mark.parametrize(
    "ours",
    [
        TransientError("no answer", host=HOST),
        AuthenticationFailed("authentication failed for 'u'", host=HOST),
        InternalError(f"{HOST}: LIST: internal error (KeyError)"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_translate_returns_our_own_errors_unchanged_with_their_cause(ours: Exception) -> None:
    cause = _raised(KeyError("k"))
    try:
        raise ours from cause
    except Exception as raised:
        ours = raised
    error = _translated(ours)
    assert error is ours
    assert error.__cause__ is cause  # neither lost nor chained to itself


# -- the session's parsing of replies --------------------------------------------------------------


async def _fetch_one(s: FakeImap, tag: bytes, rest: bytes, r: Any, w: asyncio.StreamWriter) -> None:
    w.write(b"* 1 FETCH (UID 1 FLAGS (\\Seen) BODY[] {5}\r\nhello)\r\n" + tag + b" OK done\r\n")


async def test_a_bug_while_parsing_a_reply_is_an_internal_error_and_no_wire_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sans-I/O parsers run under ``Session._parsing``: a bug there is chained, while an
    unreadable reply (``WireError``) is still transient and kills the session."""
    bug = AttributeError("'NoneType' object has no attribute 'uid'")

    def message_from(item: object) -> object:
        raise bug

    monkeypatch.setattr(imap_session, "message_from", message_from)
    async with (
        FakeImap({"UID FETCH": _fetch_one}) as srv,
        await imap_session.connect(srv.endpoint(timeout=5.0)) as session,
    ):
        await session.examine("INBOX")
        with pytest.raises(InternalError) as info:
            await session.fetch_bodies("1")
        assert info.value.__cause__ is bug and bug.__traceback__ is not None
        assert "UID FETCH 1: internal error (AttributeError)" in str(info.value)

        def unreadable(item: object) -> object:
            raise WireError("no UID in a FETCH response")

        monkeypatch.setattr(imap_session, "message_from", unreadable)
        with pytest.raises(TransientError, match="unreadable server response: no UID"):
            await session.fetch_bodies("1")
        assert not session.alive


# -- the protocol: a handler raising inside data_received ----------------------------------------


def _raising_append_to_resp(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> list[bytes | bytearray]:
    """Make the FETCH command's response handler (called inside ``data_received``) raise
    ``exc``; returns the list of lines it was called with."""
    calls: list[bytes | bytearray] = []

    def append_to_resp(
        self: LinearFetchCommand, line: bytes | bytearray, result: str = "Pending"
    ) -> None:
        calls.append(line)
        raise exc

    monkeypatch.setattr(LinearFetchCommand, "append_to_resp", append_to_resp)
    return calls


async def test_a_bug_inside_data_received_fails_the_waiting_command_with_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bug = KeyError("FETCH")
    calls = _raising_append_to_resp(monkeypatch, bug)
    async with (
        FakeImap({"UID FETCH": _fetch_one}) as srv,
        await imap_session.connect(srv.endpoint(timeout=5.0)) as session,
    ):
        await session.examine("INBOX")
        start = time.monotonic()
        with pytest.raises(InternalError) as info:
            await session.fetch_bodies("1")
        assert time.monotonic() - start < 1.0  # at once, not at the 5 s timeout
        assert info.value.__cause__ is bug  # the very exception, not a summary of it
        assert bug.__traceback__ is not None
        assert traceback.extract_tb(bug.__traceback__)[-1].name == "append_to_resp"
        frames = {f.name for f in traceback.extract_tb(bug.__traceback__)}
        assert "data_received" in frames
        assert str(info.value) == "127.0.0.1: UID FETCH 1: internal error (KeyError)"
        assert len(calls) == 1
        # The stream cannot be trusted any more: the connection is dead, and the next command
        # says why at once, as the bug it was.
        assert not session.alive
        with pytest.raises(InternalError) as again:
            await session.examine("INBOX")
        assert again.value.__cause__ is bug


async def test_the_servers_doing_inside_data_received_stays_a_transient_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _raising_append_to_resp(monkeypatch, lib.Abort("unexpected tagged response"))
    async with (
        FakeImap({"UID FETCH": _fetch_one}) as srv,
        await imap_session.connect(srv.endpoint(timeout=5.0)) as session,
    ):
        await session.examine("INBOX")
        with pytest.raises(TransientError, match=r"unexpected data from the server \(Abort\)"):
            await session.fetch_bodies("1")
        with pytest.raises(TransientError, match="no longer usable"):
            await session.examine("INBOX")


# -- the copier on the real servers (acceptance) ---------------------------------------------------


def _load_small(server: DovecotServer, user: str) -> None:
    for folder in ("INBOX", "Archive"):
        specs = []
        for i in range(3):
            when = utc(2021, 3, 1 + i, 12)
            data = make_message(
                subject=f"{folder} {i}", date=when, message_id=f"<{folder}-{i}@bug.example>"
            )
            specs.append(MailSpec(data, frozenset() if i else frozenset({"\\Seen"}), when))
        load_messages(server, user, folder, specs)


async def test_a_parser_bug_while_copying_is_raised_once_as_internal_error_never_retried(
    source_server: DovecotServer,
    dest_server: DovecotServer,
    source_account: ServerAccount,
    dest_account: ServerAccount,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _load_small(source_server, source_account.user)
    source_before = snapshot_mailbox(source_server, source_account.user)
    calls: list[object] = []

    def metas_of(parts: object) -> object:  # MessageMeta from FETCH responses: broken
        calls.append(parts)
        raise AttributeError("'NoneType' object has no attribute 'uid'")

    monkeypatch.setattr(imap_session, "metas_of", metas_of)  # where the session looks it up
    run = direct_run(
        tmp_path, source_account, dest_account, jobtype=JobType.IMAP, retries=6,
        backoff_base=0.01, backoff_max=0.01,
    )  # fmt: skip
    with capture_logs() as events, pytest.raises(InternalError) as info:
        await run.copier().run()

    cause = info.value.__cause__
    assert isinstance(cause, AttributeError)
    assert cause.__traceback__ is not None
    assert traceback.extract_tb(cause.__traceback__)[-1].name == "metas_of"
    assert "internal error (AttributeError)" in str(info.value)
    assert source_account.password not in str(info.value)
    assert len(calls) == 1  # no retry, no second connection pair reading the folder again
    assert [e for e in events if e["event"] == "request_retry"] == []
    await asyncio.to_thread(
        source_server.wait_for_log, lambda _t: source_server.open_sessions(source_account.user) == 0
    )
    assert source_server.count_logins(source_account.user).attempts == 1  # no reconnection
    assert snapshot_mailbox(source_server, source_account.user) == source_before
    assert sum(c.total() for c in dest_snapshot(dest_server, dest_account.user).values()) == 0


# -- the copier's waits: stop and cancellation ----------------------------------------------------


class _AlwaysOne:
    """Stands in for ``random`` in the copier: full jitter always draws the longest wait."""

    @staticmethod
    def random() -> float:
        return 1.0


async def test_a_stop_ends_the_back_off_wait_at_once_with_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()  # nothing listens: every connection attempt is refused
    config = make_config(
        {"127.0.0.1": HostConfig(tls="implicit")}, dest_port=port, backoff_base=600.0,
        backoff_max=600.0, retries=5, connect_timeout=2.0,
    )  # fmt: skip
    request = make_request(
        Login("src", "pw-src", "127.0.0.1", port), Login("dst", "pw-dst", "127.0.0.1")
    )
    run = CopyRun.create(tmp_path, request, config)
    monkeypatch.setattr(copier_module, "random", _AlwaysOne)
    stop = asyncio.Event()
    with capture_logs() as events:
        task = asyncio.create_task(run.copier(stop=stop).run())
        async with asyncio.timeout(10):
            # Polled: the only sign that the copier is in its back-off wait is this log event.
            while not any(e["event"] == "request_retry" for e in events):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        (retry,) = [e for e in events if e["event"] == "request_retry"]
        assert retry["delay"] == 600.0 and "connection refused" in retry["error"]
        await asyncio.sleep(0.05)
        assert not task.done()
        start = time.monotonic()
        stop.set()
        with pytest.raises(Interrupted):
            await asyncio.wait_for(task, 5)
        assert time.monotonic() - start < 1.0


async def test_connect_pair_never_swallows_a_cancellation_during_its_cleanup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The source fails while the destination's handshake is still ending: a cancellation that
    arrives during that cleanup wait is raised, not swallowed in favour of the source's error
    (which would make the copier retry a request that was cancelled)."""
    ended = asyncio.Event()

    async def slow_open(_ep: object) -> object:
        try:
            await asyncio.sleep(3600)
        finally:
            try:
                await asyncio.sleep(0.5)  # a handshake that takes its time to wind down
            finally:
                ended.set()
        raise AssertionError("unreachable")

    async def refused(_ep: object) -> object:
        await asyncio.sleep(0)
        raise TransientError("connect to port 993: connection refused", host="127.0.0.1")

    monkeypatch.setattr(imap_session, "open_unauthenticated", slow_open)
    monkeypatch.setattr(copier_module, "connect", refused)
    port = _free_port()
    config = make_config({"127.0.0.1": HostConfig(tls="implicit")}, dest_port=port)
    request = make_request(
        Login("src", "pw-src", "127.0.0.1", port), Login("dst", "pw-dst", "127.0.0.1")
    )
    task = asyncio.create_task(connect_pair(request, config))
    await asyncio.sleep(0.1)  # the source has failed; the cleanup waits for the handshake
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(ended.wait(), 5)
