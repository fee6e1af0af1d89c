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
    copied or joined. With ``cancel``, one extra continuation is answered with ``*`` (aborts an
    AUTHENTICATE whose credentials the server challenged); any other is a protocol error.
    """

    def __init__(
        self,
        name: str,
        tag: str,
        *args: str,
        immediate: Sequence[Chunk] = (),
        sends: Sequence[Sequence[Chunk]] = (),
        cancel: bool = False,
        loop: asyncio.AbstractEventLoop,
        prefix: str | None = None,
    ) -> None:
        super().__init__(name, tag, *args, prefix=prefix, loop=loop)
        self.immediate = list(immediate)
        self._sends = [list(s) for s in sends]
        self._cancel = cancel

    def next_chunks(self) -> list[Chunk] | None:
        """What to write for one continuation request; None when nothing is left."""
        if self._sends:
            return self._sends.pop(0)
        if self._cancel:
            self._cancel = False
            return [_CANCEL_SASL]
        return None


_QUOTED = re.compile(rb'"(?:[^"\\\r\n]|\\.)*"')


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
