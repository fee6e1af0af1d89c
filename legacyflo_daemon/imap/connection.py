"""One IMAP connection: running one command at a time, safely.

Owns: the per-connection lock, the watchdog that bounds every command, and the "dead
connection" rule (``imap.opening`` opens connections and logs in). Must not: interpret command
results beyond OK/NO/BAD (``imap`` does) or log anything (passwords and bodies pass here).

Rules:
- Every command holds the connection's ``asyncio.Lock``: aioimaplib mixes up concurrent
  commands on one connection (docs/imap-interop.md §1.1). ``run_pipelined`` holds it for a
  group of commands written at once and answered in order (one round trip for all).
- Every command runs under a watchdog: it fails with ``TransientError`` as soon as the
  connection is lost (aioimaplib never fails pending commands itself), after ``timeout``
  seconds without a byte received or sent, or after ``20 * timeout`` (+ ``allowance``) overall.
- What a command raises is classified by ``endpoint.translate``: network, TLS and protocol
  trouble is ``TransientError``/``PermanentError``; a bug (any other exception, also one raised
  while the protocol handled received data, ``ImapProtocol.error``) is ``InternalError``
  chained to the original exception, never ``TransientError``: it must not be retried.
- After a timeout, a lost connection, a protocol surprise, a bug or a cancellation the
  connection is dead: it is aborted and every later command raises at once (``TransientError``,
  or ``InternalError`` again when a bug killed it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from legacyflo_daemon.errors import TransientError
from legacyflo_daemon.imap._aioimaplib.commands import (
    ContinuationCommand,
    LinearFetchCommand,
    PipelineCommand,
    SafeCommand,
)
from legacyflo_daemon.imap._aioimaplib.protocol import ImapProtocol
from legacyflo_daemon.imap.endpoint import Endpoint, chain, is_bug, translate
from legacyflo_daemon.imap.syntax import responses
from legacyflo_daemon.imap.syntax.parse import capabilities
from legacyflo_daemon.imap.syntax.wire import (
    CRLF,
    Arg,
    Chunk,
    ResponseTooLarge,
    decode,
    split_args,
)

Kind = responses.Kind
T = TypeVar("T")

CEILING_FACTOR = 20  # a command may take at most this many ``timeout``s, however busy
_TICK = 1.0  # seconds between watchdog checks (less for small timeouts)


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a pipeline (``Connection.run_pipelined``): as ``run``'s arguments."""

    name: str
    args: Sequence[Arg] = ()
    prefix: str | None = None
    fetch: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """A tagged reply: ``result`` OK/NO/BAD, untagged ``lines`` for the command, ``text``;
    ``challenges``: the continuation texts ``run(cancel=...)`` answered with its abort."""

    result: str
    lines: list[bytes | bytearray]
    text: str
    challenges: tuple[bytes, ...] = ()


class Connection:
    """An open connection. Use ``open_connection``; then ``run()`` one command at a time."""

    def __init__(self, ep: Endpoint, proto: ImapProtocol) -> None:
        self.ep = ep
        self.host = ep.host
        self.proto = proto
        self.capabilities: frozenset[str] = frozenset()
        self.tls = ep.tls == "implicit"
        self._lock = asyncio.Lock()
        self._dead: str | None = None

    # -- life and death --------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._dead is None and not self.proto.lost.done()

    def _bug(self) -> Exception | None:
        """The exception that killed the connection while data was handled, if it is a bug."""
        error = self.proto.error
        return error if error is not None and is_bug(error) else None

    def _lost_reason(self) -> str:
        if (bug := self._bug()) is not None:
            return f"internal error while handling a response ({type(bug).__name__})"
        if isinstance(self.proto.error, ResponseTooLarge):  # our own words: safe to show
            return f"the server sent {self.proto.error}"
        if self.proto.error is not None:  # aioimaplib's Abort, an unreadable response
            return f"unexpected data from the server ({type(self.proto.error).__name__})"
        if self.proto.failure is not None:
            return self.proto.failure
        if self.proto.bye:
            return f"the server closed the connection: {responses.one_line(self.proto.bye)}"
        return "the connection was lost"

    def check_alive(self) -> None:
        """Raise at once if the connection is dead: ``InternalError`` (chained to the bug)
        when a bug killed it, ``TransientError`` otherwise."""
        if not self.alive:
            if (bug := self._bug()) is not None:
                raise translate(bug, self.host, "connection no longer usable") from bug
            reason = self._dead or self._lost_reason()
            raise TransientError(
                f"connection no longer usable ({reason})",
                host=self.host,
                retry_after=responses.suggested_backoff(self.proto.bye or ""),
            )

    def kill(self, reason: str) -> None:
        """Mark dead and abort the transport. Never raises, never waits."""
        if self._dead is None:
            self._dead = reason
        try:
            if self.proto.transport is not None:
                self.proto.transport.abort()
        except Exception:  # noqa: S110 - abort must never raise; nothing useful to do here
            pass
        for task in list(self.proto.tasks):
            task.cancel()

    def leave(self) -> None:
        """Write ``LOGOUT`` and drop the connection, without waiting for the server's answer
        (the round trip a polite ``run("LOGOUT")`` costs). Only when no command is running
        (else, and on a dead connection, this is ``kill``). Never raises, never waits; the
        connection is dead afterwards."""
        transport = self.proto.transport
        if not self.alive or self._lock.locked() or transport is None or self.proto.tasks:
            self.kill("closed by the client")
            return
        # Small writes go to the socket at once (TLS included), so the server gets the LOGOUT
        # before the connection is dropped; if not, it just sees the connection end. Leaving
        # must never raise: dropping is all that is left to do.
        with contextlib.suppress(Exception):
            self.proto.write_chunks([self.proto.new_tag().encode() + b" LOGOUT" + CRLF])
        self.kill("logged out")

    # -- running commands --------------------------------------------------------------------

    async def watch(
        self, aw: Awaitable[T], what: str, allowance: float = 0.0, silence: float | None = None
    ) -> T:
        """Await ``aw`` under the watchdog (module docstring); ``TransientError`` if it fires,
        ``InternalError`` (chained to it) if the connection was lost to a bug in the handling
        of received data.

        ``silence`` overrides the endpoint's ``timeout`` for this one wait.
        """
        loop = asyncio.get_running_loop()
        proto = self.proto
        timeout = self.ep.timeout if silence is None else silence
        start = loop.time()
        ceiling = start + CEILING_FACTOR * timeout + allowance
        tick = min(_TICK, timeout / 4)
        why: list[str] = []
        active = [True]  # callbacks already scheduled may run after the command finished
        progress = [start, -1]  # last time the write buffer shrank; its size then
        cm = asyncio.timeout(None)
        handle: asyncio.TimerHandle | None = None

        def fire(reason: str) -> None:
            if active[0] and not why:
                why.append(reason)
                cm.reschedule(loop.time())

        def check() -> None:
            nonlocal handle
            now = loop.time()
            transport = proto.transport
            size = transport.get_write_buffer_size() if transport is not None else 0
            if size < progress[1]:
                progress[0] = now
            progress[1] = size
            if now - max(progress[0], proto.last_receive, proto.last_send, start) >= timeout:
                fire(f"no answer for {timeout:g} s")
            elif now >= ceiling:
                fire(f"not finished after {ceiling - start:g} s")
            else:
                handle = loop.call_later(tick, check)

        def lost(_: asyncio.Future[None]) -> None:
            fire(self._lost_reason())

        handle = loop.call_later(tick, check)
        proto.lost.add_done_callback(lost)
        try:
            async with cm:
                return await aw
        except TimeoutError:
            if not why:
                raise
            if (bug := self._bug()) is not None:
                raise translate(bug, self.host, what) from bug
            raise TransientError(
                f"{what}: {why[0]}",
                host=self.host,
                retry_after=responses.suggested_backoff(proto.bye or ""),
            ) from None
        finally:
            active[0] = False
            handle.cancel()
            proto.lost.remove_done_callback(lost)

    def _command(
        self,
        name: str,
        args: Sequence[Arg],
        prefix: str | None,
        fetch: bool,
        sends: Sequence[Sequence[Chunk]],
        cancel: bool,
        abort: bytes = b"*",
    ) -> Any:
        first, immediate, literal_sends = split_args(args)
        tag, loop = self.proto.new_tag(), self.proto.loop
        if fetch:
            return LinearFetchCommand(tag, *first, prefix=prefix or "", loop=loop)
        if immediate or literal_sends or sends or cancel:
            return ContinuationCommand(
                name,
                tag,
                *first,
                immediate=immediate,
                sends=[*literal_sends, *sends],
                cancel=cancel,
                abort=abort,
                loop=loop,
                prefix=prefix,
            )
        return SafeCommand(name, tag, *first, prefix=prefix, loop=loop)

    async def run(
        self,
        name: str,
        args: Sequence[Arg] = (),
        *,
        what: str,
        prefix: str | None = None,
        fetch: bool = False,
        sends: Sequence[Sequence[Chunk]] = (),
        cancel: bool = False,
        abort: bytes = b"*",
        allowance: float = 0.0,
        silence: float | None = None,
    ) -> Reply:
        """Send one command and wait for its tagged reply (OK, NO or BAD; anything else kills).

        ``what`` names the operation in error messages (never put a password in it). With
        ``cancel``, an extra continuation request is answered with ``abort`` (SASL). Raises
        ``TransientError``/``PermanentError`` for network and protocol trouble, ``InternalError``
        (chained to the original exception) for a bug; either kills the connection.
        """
        self.check_alive()
        async with self._lock:
            self.check_alive()
            command = self._command(name, args, prefix, fetch, sends, cancel, abort)
            if isinstance(command, ContinuationCommand):
                self.proto.continuation_target = command
            try:
                with self._fatal(what):
                    response = await self.watch(
                        self.proto.execute(command), what, allowance, silence
                    )
            finally:
                self.proto.continuation_target = None
        reply = self._reply(response, what)
        if isinstance(command, ContinuationCommand) and command.challenges:
            reply = replace(reply, challenges=tuple(command.challenges))
        return reply

    @contextlib.contextmanager
    def _fatal(self, what: str) -> Iterator[None]:
        """Around a command in flight: any exception kills the connection (its reply stream is
        no longer in step); a foreign one is translated once (``TransientError`` etc.)."""
        try:
            yield
        except Exception as exc:
            error = translate(exc, self.host, what)
            self.kill(str(error))
            raise error from chain(exc)
        except BaseException:
            self.kill(f"{what}: cancelled")
            raise  # cancellation: the connection is dead, the caller goes on cancelling

    def _reply(self, response: Any, what: str) -> Reply:
        lines = list(response.lines)
        text = decode(lines.pop()) if lines else ""
        if response.result not in ("OK", "NO", "BAD"):
            self.kill(f"unexpected reply {response.result!r}")
            raise TransientError(f"{what}: unexpected reply {response.result!r}", host=self.host)
        return Reply(response.result, lines, text)

    async def run_pipelined(self, steps: Sequence[Step], *, what: str) -> list[Reply]:
        """Send every command of ``steps`` at once and wait for all their tagged replies: one
        round trip instead of one per command (RFC 3501 §5.5 lets a client send commands
        without waiting). The replies come back in order, one per step; a NO or BAD of one
        step does not stop the server from running the next ones (the caller decides what
        it means). Only for commands that need no continuation (no synchronizing literal:
        ``ValueError``) and that the server answers in order (see
        ``commands.PipelineCommand``). Errors and the watchdog as ``run``.
        """
        self.check_alive()
        async with self._lock:
            self.check_alive()
            parts = [self._command(s.name, s.args, s.prefix, s.fetch, (), False) for s in steps]
            if any(isinstance(p, ContinuationCommand) for p in parts):
                raise ValueError("a pipelined command cannot need a continuation")
            pipeline = PipelineCommand(parts)
            proto = self.proto
            proto.pending_sync_command = pipeline
            try:
                with self._fatal(what):
                    proto.write_chunks([str(p).encode() + CRLF for p in parts])
                    await self.watch(pipeline.wait(), what)
            finally:
                if proto.pending_sync_command is pipeline:
                    proto.pending_sync_command = None
        return [self._reply(p.response, what) for p in parts]

    async def capability(self) -> frozenset[str]:
        reply = await self.run("CAPABILITY", what="CAPABILITY")
        if reply.result != "OK":
            responses.check("other", reply.result, reply.text, host=self.host, what="CAPABILITY")
        caps = frozenset(
            c for line in reply.lines if isinstance(line, bytes) for c in capabilities(decode(line))
        )
        self.capabilities = caps
        return caps

    # -- opening -------------------------------------------------------------------------------
