"""The secret registry: passwords in use, and ``scrub``, which takes them out of any value.

Owns: the passwords currently in use (``register_secret`` / ``forget_secret``, counted); the
forms in which a password can appear in text; the key names that look secret; ``scrub`` (a log
event made JSON-safe with all of them replaced by ``********``) and ``redact`` (one known
password out of one text).
Must not: log, or keep a password after its last registration is forgotten. ``runtime.log``
applies ``scrub`` to every event, exception text and traceback included.

The forms of a password ``pw`` (of login ``user``, when given):

- ``pw`` itself, and as an IMAP quoted string writes it (``\\`` and ``"`` escaped);
- both as Python's ``repr`` writes them, of ``str`` and of UTF-8 ``bytes`` (exception texts);
- base64 as SASL sends it: ``LOGIN`` (``pw`` alone) and, with ``user``, ``PLAIN``
  (``\\0user\\0pw``, also with ``user`` as the authorization id);
- inside any other base64 (``PLAIN`` with another spelling of the user, ``XOAUTH2`` with a
  token as ``pw``): the run of base64 characters that only ``pw``'s bytes determine, for each of
  the three alignments, when that run is long enough (``_MIN_CORE``) not to hit by chance.

Usage: the daemon registers each account's password with its user when it loads a request's
credentials, and forgets it with the same arguments when the request finishes. Registrations are
counted: two requests that share a password each hold it, and it is scrubbed until both have
forgotten it. Forgetting what is not registered does nothing. With ``owner`` (the request id)
a registration is held at most once per owner, so registering again (credentials loaded twice)
is a no-op and one forget ends it. Everything is thread-safe (the aioimaplib and asyncio loggers
may run in other threads).
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import threading
from collections.abc import Iterable
from typing import Any

from legacyflo_daemon.model import REDACTED, Secret

SECRET_KEY = re.compile(
    r"pass(wd|word)?|secret|token|authori[sz]ation|api[_-]?key|credential", re.I
)
_MAX_DEPTH = 8
_MIN_CORE = 8  # base64 characters: shorter runs of a password inside base64 are not searched

_Key = tuple[str | None, str, str | None]  # (owner, password, login user)


class _Registry:
    """Registrations and the compiled pattern of the forms of every password they hold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[_Key, int] = {}
        self._held: frozenset[tuple[str, str | None]] = frozenset()
        self.pattern: re.Pattern[str] | None = None  # replaced whole, read without the lock

    def add(self, *keys: _Key) -> None:
        """Register ``keys``; the pattern is compiled once for all of them (a compile costs
        milliseconds per held password: a private key's 25 PEM lines one by one cost ~0.1 s)."""
        with self._lock:
            for key in keys:
                owned = key[0] is not None  # an owner holds a password once, however often
                self._counts[key] = 1 if owned else self._counts.get(key, 0) + 1
            self._compile()

    def drop(self, *keys: _Key) -> None:
        with self._lock:
            for key in keys:
                count = self._counts.pop(key, 0)
                if count > 1:
                    self._counts[key] = count - 1
            self._compile()

    def _compile(self) -> None:
        held = frozenset((value, user) for _, value, user in self._counts)
        if held != self._held:
            self._held = held
            self.pattern = _pattern(form for value, user in held for form in forms(value, user))


def _pattern(forms: Any) -> re.Pattern[str] | None:
    # Longest first, so that an escaped or encoded form is replaced whole, not just a part of it.
    alternatives = sorted({f for f in forms if f}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, alternatives))) if alternatives else None


_REGISTRY = _Registry()


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # as imap.opening sends it
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _base64_cores(raw: bytes) -> set[str]:
    """The base64 characters determined by ``raw`` alone, for each alignment of ``raw``."""
    cores = set()
    for offset in range(3):
        text = _b64(bytes(offset) + raw + bytes(2))
        first = math.ceil(offset * 8 / 6)
        end = (offset + len(raw)) * 8 // 6
        if end - first >= _MIN_CORE:
            cores.add(text[first:end])
    return cores


def forms(value: str, user: str | None = None) -> set[str]:
    """Every form of the password ``value`` this module scrubs (see the module docstring)."""
    if not value:
        return set()
    imap = value.replace("\\", "\\\\").replace('"', '\\"')
    out = {value, imap}
    for base in (value, imap):
        escaped = repr(base + "'\"")[1:-1][:-3]  # repr escaping with "'" escaped
        out |= {escaped, escaped.replace("\\'", "'")}
        escaped_b = repr(_utf8(base) + b"'\"")[2:-1][:-3]
        out |= {escaped_b, escaped_b.replace("\\'", "'")}
    raw = _utf8(value)
    out.add(_b64(raw))  # SASL LOGIN
    if user is not None:
        login = _utf8(user)
        out |= {_b64(b"\0" + login + b"\0" + raw), _b64(login + b"\0" + login + b"\0" + raw)}
    return out | _base64_cores(raw)


def register_secret(
    value: str | Secret, *, user: str | None = None, owner: str | None = None
) -> None:
    """Scrub every form of ``value`` (with ``user``: also its SASL PLAIN response) from every log
    event until the matching ``forget_secret``.

    Calls are counted; with ``owner``, that owner holds the registration at most once.
    """
    plain = value.reveal() if isinstance(value, Secret) else value
    if plain:
        _REGISTRY.add((owner, plain, user))


def register_secrets(values: Iterable[str], *, owner: str) -> None:
    """``register_secret`` of each of ``values`` for ``owner``, with one compile of the pattern."""
    _REGISTRY.add(*((owner, v, None) for v in values if v))


def forget_secrets(values: Iterable[str], *, owner: str) -> None:
    """Undo ``register_secrets`` (one compile of the pattern)."""
    _REGISTRY.drop(*((owner, v, None) for v in values if v))


def forget_secret(
    value: str | Secret, *, user: str | None = None, owner: str | None = None
) -> None:
    """Undo ``register_secret`` with the same arguments (one count, or the owner's hold).

    The password stays scrubbed while any other registration holds it; forgetting what is not
    registered does nothing.
    """
    plain = value.reveal() if isinstance(value, Secret) else value
    if plain:
        _REGISTRY.drop((owner, plain, user))


def redact(text: str, value: str | Secret | None, *, user: str | None = None) -> str:
    """``text`` with every form of the one password ``value`` replaced by ``********``."""
    plain = value.reveal() if isinstance(value, Secret) else value
    pattern = _pattern(forms(plain, user)) if plain else None
    return pattern.sub(REDACTED, text) if pattern is not None else text


def scrub_text(text: str) -> str:
    """``text`` with every form of every registered password replaced by ``********``: the
    filter every server text passes before it reaches a result, a report or the state."""
    pattern = _REGISTRY.pattern
    return pattern.sub(REDACTED, text) if pattern is not None else text


def scrub(value: object, depth: int = 0) -> Any:
    """``value`` made JSON-safe with secrets replaced by ``********``.

    Every ``model.Secret``, every value under a key matching ``SECRET_KEY`` and every form of
    every registered password inside any string (keys included) is replaced; nesting deeper
    than a few levels is flattened to its (scrubbed) repr.
    """
    if isinstance(value, str):
        return scrub_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Secret):
        return REDACTED
    if depth >= _MAX_DEPTH:
        return scrub(repr(value))
    if isinstance(value, dict):
        return {
            scrub(str(k)): REDACTED if SECRET_KEY.search(str(k)) else scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return scrub(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return scrub(str(value))
