"""Logging: structlog JSON lines (or console lines on a terminal), with secrets scrubbed.

Owns: the one structlog configuration, the routing of stdlib loggers (aioimaplib, asyncio,
aiosmtplib, watchfiles) into the same lines, the level (``set_level`` for a SIGHUP reload), the
optional file sink (``O_APPEND``, one ``write`` per line, rotation by logrotate
``copytruncate``), and the last line of defence against leaked passwords: every event, after its
exception has been rendered (JSON frames or, on a console, the traceback text), goes through
``runtime.secrets.scrub``, so that

- values under keys that look secret (``pass``, ``secret``, ``token``, ``authorization``, ...)
  and every ``model.Secret`` become ``********``;
- every password currently registered with ``runtime.secrets.register_secret`` is replaced
  inside every string, in every form listed there: plain, IMAP-quoted, Python-repr'd (how
  aioimaplib and exceptions show it) and base64 (SASL PLAIN and LOGIN).

Exception frames never carry local variables. The ``aioimaplib`` logger is held at WARNING
(at DEBUG it logs whole message bodies and every command line).

Must not: decide what to log (callers do: stable snake_case events, ``request_id`` bound with
``structlog.contextvars``). Everything is configured through module state that the processors
read at call time, so ``configure_logging`` may run again (tests, reload) even though loggers
are cached on first use.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from typing import IO, Any

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, WrappedLogger

from legacyflo_daemon.config.schema import LogConfig
from legacyflo_daemon.runtime.secrets import scrub

__all__ = ["configure_logging", "reset_logging", "set_level"]

# aioimaplib: DEBUG logs whole message bodies and escaped passwords. watchfiles: "N changes
# detected" at INFO for every event in incoming/ (our own intake events say what matters).
NOISY_LOGGERS = ("aioimaplib", "watchfiles")
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_METHOD_LEVELS = {"warn": 30, "exception": 40, "fatal": 50, "msg": 20, **_LEVELS}


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    scrubbed: EventDict = scrub(dict(event_dict))
    return scrubbed


# -- state read by the processors -----------------------------------------------------------


class _Sinks:
    """Where lines go: the stream (JSON bytes or console text) and an optional JSON file."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.level = logging.INFO
        self.console = False
        self.stream: IO[Any] = sys.stdout
        self.text: IO[Any] | None = None  # the text layer above a binary stream, flushed first
        self.binary = False
        self.file_fd: int | None = None
        self.renderer = structlog.dev.ConsoleRenderer(colors=False)

    def write(self, event_dict: EventDict) -> None:
        json_line = b""
        if not self.console or self.file_fd is not None:
            json_line = orjson.dumps(event_dict, default=str) + b"\n"
        with self.lock:
            try:
                if self.console:
                    self.stream.write(self.renderer(None, "", dict(event_dict)) + "\n")
                elif self.binary:
                    if self.text is not None:
                        self.text.flush()  # keep order with print()s on the same stdout
                    self.stream.write(json_line)
                else:
                    self.stream.write(json_line.decode("utf-8"))
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stdout must not stop the daemon
                pass
            if self.file_fd is not None:
                with contextlib.suppress(OSError):  # a full disk must not stop the daemon
                    os.write(self.file_fd, json_line)


_SINKS = _Sinks()


class _Writer:
    """The wrapped logger: receives the processed event dict and hands it to the sinks."""

    def __getattr__(self, name: str) -> Any:
        return self._emit

    @staticmethod
    def _emit(**event_dict: Any) -> None:
        _SINKS.write(event_dict)


_WRITER = _Writer()


def _filter_level(_: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    level = event_dict.pop("_level", None) or _METHOD_LEVELS.get(method_name, logging.INFO)
    if level < _SINKS.level:
        raise structlog.DropEvent
    return event_dict


_JSON_EXC = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))


def _exceptions(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    if _SINKS.console:  # a readable traceback string; it is scrubbed like any other value
        return structlog.processors.format_exc_info(logger, name, event_dict)
    return _JSON_EXC(logger, name, event_dict)


def _final(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return event_dict  # handed to _Writer._emit as keyword arguments


class _StdlibBridge(logging.Handler):
    """Routes stdlib log records through the structlog chain (same lines, same scrubbing)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a library must not break logging
            message = str(record.msg)
        kw: dict[str, Any] = {"logger": record.name, "_level": record.levelno}
        if record.exc_info:
            kw["exc_info"] = record.exc_info
        name = next((n for n, v in _BY_LEVEL if record.levelno >= v), "debug")
        getattr(_BRIDGE, name)(message, **kw)


_BRIDGE: Any = structlog.get_logger("stdlib")
_BY_LEVEL = sorted(_LEVELS.items(), key=lambda item: -item[1])


# -- configuration ---------------------------------------------------------------------------


def configure_logging(cfg: LogConfig, *, stream: IO[Any] | None = None) -> None:
    """Configure structlog and the stdlib root logger from ``cfg``; safe to call again.

    ``stream`` defaults to ``sys.stdout``; a binary stream (or one with a ``buffer``) gets
    orjson bytes, a text stream gets text. ``cfg.file`` is opened ``O_APPEND`` and always gets
    JSON. Raises ``OSError`` if the log file cannot be opened.
    """
    out = sys.stdout if stream is None else stream
    fd = None
    if cfg.file is not None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(cfg.file, flags, 0o640)
    is_tty = _isatty(out)
    with _SINKS.lock:
        old_fd, _SINKS.file_fd = _SINKS.file_fd, fd
        _SINKS.console = cfg.format == "console" or (cfg.format == "auto" and is_tty)
        _SINKS.renderer = structlog.dev.ConsoleRenderer(colors=is_tty)
        _SINKS.text = None
        buffer = getattr(out, "buffer", None)
        is_text = isinstance(out, io.TextIOBase)
        if is_text and buffer is not None and not _SINKS.console:
            _SINKS.text = out
            out = buffer  # orjson bytes straight through, no re-encoding
        _SINKS.stream = out
        _SINKS.binary = not isinstance(out, io.TextIOBase)
    if old_fd is not None:
        os.close(old_fd)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _filter_level,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            _exceptions,
            _redact,
            _final,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        logger_factory=lambda *_: _WRITER,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StdlibBridge)]
    root.addHandler(_StdlibBridge())
    set_level(cfg.level)


def set_level(level: str) -> None:
    """Change the lowest level logged (``debug`` ... ``critical``), e.g. on SIGHUP."""
    number = _LEVELS[level.lower()]
    _SINKS.level = number
    logging.getLogger().setLevel(number)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(number, logging.WARNING))


def reset_logging() -> None:
    """Undo ``configure_logging``: structlog defaults, no bridge, no file (between tests)."""
    with _SINKS.lock:
        fd, _SINKS.file_fd = _SINKS.file_fd, None
        _SINKS.stream, _SINKS.text, _SINKS.binary, _SINKS.console = sys.stdout, None, False, False
    if fd is not None:
        os.close(fd)
    structlog.reset_defaults()
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StdlibBridge)]
    root.setLevel(logging.WARNING)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
