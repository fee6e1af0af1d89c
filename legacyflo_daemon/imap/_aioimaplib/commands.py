"""The aioimaplib command objects the boundary sends (subclasses of ``aioimaplib.Command``).

Owns: ``SafeCommand`` (a ``repr`` without arguments: no password or SASL token can reach a log
or an exception message through it), ``ContinuationCommand`` (literals and SASL data written
after the command line or on ``+`` continuations) and ``LinearFetchCommand`` (O(1) per line
"is this FETCH response complete?" check, parentheses inside quoted strings ignored; the
library rescans the whole response after every line and counts quoted parentheses, issue #51).
Must not: write to the network (``protocol`` does) or interpret responses.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from aioimaplib import aioimaplib as lib

from legacyflo_daemon.imap.syntax.wire import CRLF, Chunk

_CANCEL_SASL = b"*" + CRLF


class SafeCommand(lib.Command):  # type: ignore[misc]
    """A command whose ``repr`` never shows its arguments (passwords, SASL tokens).

    ``str()`` is the wire form: aioimaplib sends ``str(command)``.
    """

    def __str__(self) -> str:
        return str(super().__repr__())

    def __repr__(self) -> str:
        return f"<{self.name} {self.tag}>"

    def _reset_timer(self) -> None:
        # The library re-arms its per-command timer on every line and literal piece received:
        # two calls each, for a timer that is never set (no command of ours has a timeout:
        # ``Connection.watch`` bounds them). Nothing to re-arm then.
        if self._timeout is not None:
            super()._reset_timer()


class ContinuationCommand(SafeCommand):
    """A command with more to send than its first line.

    ``immediate`` is written right after the first line (non-synchronizing literals);
    ``sends[i]`` on the i-th ``+`` continuation request. Chunks are written as they are, never
    copied or joined. With ``cancel``, one extra continuation is answered with ``abort`` (``*``
    aborts an AUTHENTICATE whose credentials the server challenged; an OAuth mechanism's error
    challenge takes its own answer) and its text (after ``+``) is kept in ``challenges``; any
    other is a protocol error.
    """

    def __init__(
        self,
        name: str,
        tag: str,
        *args: str,
        immediate: Sequence[Chunk] = (),
        sends: Sequence[Sequence[Chunk]] = (),
        cancel: bool = False,
        abort: bytes = b"*",
        loop: asyncio.AbstractEventLoop,
        prefix: str | None = None,
    ) -> None:
        super().__init__(name, tag, *args, prefix=prefix, loop=loop)
        self.immediate = list(immediate)
        self._sends = [list(s) for s in sends]
        self._cancel = cancel
        self._abort = _CANCEL_SASL if abort == b"*" else abort + CRLF
        self.challenges: list[bytes] = []

    def next_chunks(self, line: bytes = b"+") -> list[Chunk] | None:
        """What to write for the continuation request ``line``; None when nothing is left."""
        if self._sends:
            return self._sends.pop(0)
        if self._cancel:
            self._cancel = False
            self.challenges.append(bytes(line[1:]).strip())
            return [self._abort]
        return None


# A quoted string; written as an unrolled loop (2.5x faster than ``"(?:[^"\\\r\n]|\\.)*"``,
# same matches): it is applied to every FETCH response line.
_QUOTED = re.compile(rb'"[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*"')


class LinearFetchCommand(SafeCommand, lib.FetchCommand):  # type: ignore[misc]
    """``FetchCommand`` whose "response still open?" check looks at each line once.

    Parentheses inside quoted strings are not counted (the library counts them, issue #51).
    """

    def __init__(self, tag: str, *args: str, prefix: str, loop: asyncio.AbstractEventLoop):
        lib.FetchCommand.__init__(self, tag, *args, prefix=prefix, loop=loop)
        self._depth = 0

    def append_to_resp(self, line: bytes | bytearray, result: str = "Pending") -> None:
        self._resp_result = result  # the library's ``append_to_resp``, one call less per line
        self._resp_lines.append(line)
        self._reset_timer()
        if result == "Pending" and type(line) is bytes:  # literals (bytearray) don't count
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self._depth = 0
            bare = _QUOTED.sub(b"", line) if b'"' in line else line
            self._depth += bare.count(b"(") - bare.count(b")")

    def wait_data(self) -> bool:
        return self._depth != 0

    def take_response(self, line: bytes, literal: bytearray | None) -> bool:
        """Take one whole FETCH response at once (``ImapProtocol``'s fast path): its line
        (``* `` removed; ending with the literal's ``{n}`` when ``literal`` is given) and, with
        a literal, the literal and the closing ``)``. The lines kept are exactly those the
        line-by-line path keeps. Returns False, taking nothing, unless the response is
        complete by the parenthesis count (then the line-by-line path must read it)."""
        bare = _QUOTED.sub(b"", line) if b'"' in line else line
        depth = bare.count(b"(") - bare.count(b")")
        if depth != (0 if literal is None else 1):
            return False
        self._resp_result = "Pending"
        self._depth = 0
        if literal is None:
            self._resp_lines.append(line)
        else:
            self._resp_lines += (line, literal, b")")
        return True


class PipelineCommand:
    """Several commands sent together and answered one after the other (RFC 3501 §5.5).

    It stands in the protocol's ``pending_sync_command`` slot for each of its ``parts`` in
    turn: untagged responses and literals go to the first part whose tagged answer has not
    come yet, and each tagged answer closes that part (``ImapProtocol._response_done`` keeps
    the pipeline in the slot until its last part is closed). Only for commands a server must
    answer in order because each depends on the one before (SELECT after CREATE, FETCH after
    EXAMINE) or that do not interleave untagged data (STATUS, CREATE, SUBSCRIBE): a tagged
    answer of any other than the current part is a protocol error (``Abort``), which kills
    the connection. Parts must not need continuations (no synchronizing literals).
    """

    name = "PIPELINE"

    def __init__(self, parts: Sequence[lib.Command]) -> None:
        if not parts:
            raise ValueError("a pipeline needs at least one command")
        self.parts = list(parts)
        self.index = 0
        self._event = asyncio.Event()

    @property
    def current(self) -> lib.Command:
        return self.parts[min(self.index, len(self.parts) - 1)]

    @property
    def finished(self) -> bool:
        return self.index >= len(self.parts)

    @property
    def tag(self) -> str:
        return str(self.current.tag)

    # What the protocol's receive path asks of its current command, forwarded to the part.
    @property
    def _expected_size(self) -> int:
        return int(self.current._expected_size)

    @property
    def _resp_literal_data(self) -> bytearray:
        data: bytearray = self.current._resp_literal_data
        return data

    def append_to_resp(self, line: bytes | bytearray, result: str = "Pending") -> None:
        self.current.append_to_resp(line, result)

    def untagged(self, line: bytes) -> lib.Command | PipelineCommand | None:
        """Route an untagged response (``* `` removed) as the library would if the current
        part ran alone: a sync command (SELECT, EXAMINE, CREATE ...) gets every line; an async
        one (FETCH, SEARCH, STATUS, LIST, NAMESPACE) only its own, without the response name
        (``* 3 FETCH`` lines whole), and an ``ESEARCH`` answer to a SEARCH whole. Returns what
        receives the line's literal, if any (None: nobody, the line is dropped as the library
        drops an unsolicited response with no NOOP pending)."""
        part = self.current
        if lib.Commands.get(part.name).exec == lib.Exec.is_sync:
            part.append_to_resp(line)
            return self
        match = lib.message_data_re.match(line)
        if match:
            name, text = match.group(1), line
        else:
            name, _, text = line.partition(b" ")
        name_text = name.decode("ascii", "replace").upper()
        if name_text == part.untagged_resp_name.upper():
            part.append_to_resp(text)
            return self
        if name_text == "ESEARCH" and part.name.upper() == "SEARCH":
            part.append_to_resp(line)
            return self
        return None

    def begin_literal_data(self, expected_size: int, literal_data: bytes = b"") -> bytes:
        rest: bytes = self.current.begin_literal_data(expected_size, literal_data)
        return rest

    def append_literal_data(self, data: bytes) -> bytes:
        rest: bytes = self.current.append_literal_data(data)
        return rest

    def wait_literal_data(self) -> bool:
        return not self.finished and bool(self.current.wait_literal_data())

    def wait_data(self) -> bool:
        return not self.finished and bool(self.current.wait_data())

    def flush(self) -> None:
        if not self.finished:
            self.current.flush()

    def close(self, line: bytes, result: str) -> None:
        """The tagged answer of the current part: close it, move on to the next."""
        self.current.close(line, result)
        self.index += 1
        if self.finished:
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def __repr__(self) -> str:
        return f"<PIPELINE of {len(self.parts)}>"
