"""A byte-level TCP proxy that injects network faults between a client and a test server.

Owns: forwarding, added latency, cuts and stalls after N bytes (optionally counted from the
first occurrence of a byte pattern), connection counting. It runs its own event loop in a
thread, so the same object works in sync tests and in async tests (the test's loop is never
blocked by it). Must not: parse IMAP or TLS: TLS passes through untouched, so on a TLS
connection patterns never match and only byte counts make sense (a cut "in the middle of a
FETCH literal" is a cut after the server sent more bytes than the greeting and responses
before the literal).

    with FaultProxy(server.host, server.port_plain) as proxy:
        proxy.cut_after_server_bytes(1000, after=b"BODY[] {")   # mid-literal, once
        ...connect the client to proxy.host, proxy.port...
        assert proxy.faults_fired == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Self


class Direction(StrEnum):
    CLIENT_TO_SERVER = "client->server"
    SERVER_TO_CLIENT = "server->client"


class Action(StrEnum):
    CUT = "cut"  # forward exactly N bytes, then drop both sides of the connection
    STALL = "stall"  # forward exactly N bytes, then forward nothing more in that direction


@dataclass(eq=False)
class Fault:
    """One rule. With ``once`` it fires on the first connection that reaches it, then never."""

    direction: Direction
    nbytes: int
    action: Action
    after: bytes | None = None
    once: bool = True
    fired: int = 0

    @property
    def exhausted(self) -> bool:
        return self.once and self.fired > 0


@dataclass(eq=False)
class _Stream:
    """Per connection and direction: bytes seen, where each fault's count starts, pattern tail."""

    seen: int = 0
    tail: bytes = b""
    starts: dict[int, int] = field(default_factory=dict)  # id(fault) -> offset
    fired: set[int] = field(default_factory=set)  # id(fault): a fault fires once per stream
    cut: bool = False  # a cut is queued: forward nothing more


_MAX_PATTERN = 256  # longest ``after`` pattern that is found across read boundaries
_CUT = object()
_STALL = object()


class FaultProxy:
    """Listens on ``host``:``port`` (port chosen at start) and forwards to the target."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.host = listen_host
        self.port = 0
        self.latency = 0.0  # seconds added to every chunk, each way
        self.connections_total = 0
        self.connections_open = 0
        self.faults_fired = 0
        self._faults: list[Fault] = []
        self._stalled: set[Direction] = set()
        self._resumed_at = 0.0
        self._closing = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- knobs (callable from any thread) ------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def cut_after_server_bytes(
        self, n: int, *, after: bytes | None = None, once: bool = True
    ) -> Fault:
        """Drop the connection once the server has sent ``n`` bytes (after ``after``, if given)."""
        return self.add_fault(Fault(Direction.SERVER_TO_CLIENT, n, Action.CUT, after, once))

    def cut_after_client_bytes(
        self, n: int, *, after: bytes | None = None, once: bool = True
    ) -> Fault:
        """Drop the connection once the client has sent ``n`` bytes (after ``after``, if given),
        e.g. ``after=b"APPEND"`` to cut inside an upload."""
        return self.add_fault(Fault(Direction.CLIENT_TO_SERVER, n, Action.CUT, after, once))

    def stall_after_server_bytes(
        self, n: int, *, after: bytes | None = None, once: bool = True
    ) -> Fault:
        """Stop forwarding server data on that connection after ``n`` bytes: a hung server."""
        return self.add_fault(Fault(Direction.SERVER_TO_CLIENT, n, Action.STALL, after, once))

    def stall_after_client_bytes(
        self, n: int, *, after: bytes | None = None, once: bool = True
    ) -> Fault:
        return self.add_fault(Fault(Direction.CLIENT_TO_SERVER, n, Action.STALL, after, once))

    def stall(self, *directions: Direction) -> None:
        """Stop forwarding in ``directions`` (default both) on every connection, new ones too."""
        with self._lock:
            self._stalled.update(directions or tuple(Direction))

    def resume(self) -> None:
        """Undo ``stall()`` and release connections stalled by a fault."""
        with self._lock:
            self._stalled.clear()
            self._resumed_at = time.monotonic()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def drop_all(self) -> None:
        """Abort every open connection now (both sides)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._abort_all)

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Block until ``connections_total`` >= n."""
        deadline = time.monotonic() + timeout
        while self.connections_total < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.connections_total} connections, expected {n}")
            time.sleep(0.01)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        # Handlers are ended by closing their sockets, not cancelled: in Python 3.11 a
        # cancelled start_server handler makes asyncio log a spurious CancelledError.
        self._closing = True
        if self._server is not None:
            self._server.close()
        self._abort_all()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=2)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    # -- forwarding (event-loop thread) --------------------------------------------------------

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_total += 1
        self.connections_open += 1
        self._writers.add(c_writer)
        s_writer: asyncio.StreamWriter | None = None
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
            self._writers.add(s_writer)
            both = (c_writer, s_writer)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(c_reader, s_writer, Direction.CLIENT_TO_SERVER, both))
                tg.create_task(self._pump(s_reader, c_writer, Direction.SERVER_TO_CLIENT, both))
        except* OSError:
            pass  # a refused target or a reset side: the client simply sees the connection end
        finally:
            for writer in (c_writer, s_writer):
                if writer is not None:
                    writer.transport.abort()
                    self._writers.discard(writer)
            self.connections_open -= 1
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        queue: asyncio.Queue[tuple[float, object]] = asyncio.Queue()
        stream = _Stream()

        async def read() -> None:
            while (data := await reader.read(65536)) and not stream.cut:
                due = time.monotonic() + self.latency
                for item in self._apply_faults(stream, direction, data):
                    await queue.put((due, item))
            await queue.put((time.monotonic() + self.latency, b""))

        async def write() -> None:
            while True:
                due, item = await queue.get()
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                # Polling, not an asyncio.Event: stall()/resume() are called from other threads.
                while self._is_stalled(direction) and not self._closing:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                if item is _CUT or self._closing:
                    for w in both:
                        w.transport.abort()
                    return
                if item is _STALL:
                    stalled_since = time.monotonic()
                    while self._resumed_at < stalled_since and not self._closing:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    continue
                assert isinstance(item, bytes)
                if not item:  # EOF from our reader: flush and close our writer, drop the other
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()  # drain() leaves up to 64 KiB buffered
                    for w in both:
                        if w is not writer:
                            w.transport.abort()
                    return
                writer.write(item)
                await writer.drain()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(read())
            tg.create_task(write())

    def _is_stalled(self, direction: Direction) -> bool:
        with self._lock:
            return direction in self._stalled

    def _apply_faults(self, stream: _Stream, direction: Direction, data: bytes) -> list[object]:
        """Split ``data`` at the first fault that fires inside it; return what to enqueue."""
        with self._lock:
            best: tuple[int, Fault] | None = None
            for fault in self._faults:
                if fault.direction is not direction or fault.exhausted or id(fault) in stream.fired:
                    continue
                start = self._count_start(stream, fault, data)
                if start is None:
                    continue
                cut_at = max(start + fault.nbytes - stream.seen, 0)
                if cut_at <= len(data) and (best is None or cut_at < best[0]):
                    best = (cut_at, fault)
            if best is not None:
                best[1].fired += 1
                self.faults_fired += 1
                stream.fired.add(id(best[1]))
                stream.cut = best[1].action is Action.CUT
        stream.tail = (stream.tail + data)[-_MAX_PATTERN:]
        stream.seen += len(data)
        if best is None:
            return [data]
        cut_at, fault = best
        marker = _CUT if fault.action is Action.CUT else _STALL
        return [data[:cut_at], marker, data[cut_at:]] if cut_at else [marker, data]

    @staticmethod
    def _count_start(stream: _Stream, fault: Fault, data: bytes) -> int | None:
        """Stream offset where the fault's byte count starts, or None (pattern not seen yet)."""
        if fault.after is None:
            return 0
        key = id(fault)
        if key not in stream.starts:
            window = stream.tail + data
            index = window.find(fault.after)
            if index < 0:
                return None
            stream.starts[key] = stream.seen - len(stream.tail) + index + len(fault.after)
        return stream.starts[key]
