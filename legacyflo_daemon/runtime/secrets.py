"""The secret registry: passwords in use, and ``scrub``, which takes them out of any value.

Owns: the reference-counted set of passwords currently in use (``register_secret`` /
``forget_secret``; one password may serve many requests), the forms in which a password can
appear in text (plain, IMAP-quoted, Python-repr'd, SASL PLAIN base64), the key names that look
secret, and ``scrub``: a value made JSON-safe with all of them replaced by ``********``.
Must not: log, or keep a password after its last ``forget_secret``. ``log`` applies ``scrub`` to
every line; anything else that writes server text may use it too.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading
from collections import Counter
from typing import Any

from legacyflo_daemon.model import REDACTED, Secret

__all__ = ["SECRET_KEY", "forget_secret", "register_secret", "scrub"]

SECRET_KEY = re.compile(
    r"pass(wd|word)?|secret|token|authori[sz]ation|api[_-]?key|credential", re.I
)
_MAX_DEPTH = 8


class _Secrets:
    """Known passwords (reference-counted: one password may serve many requests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if value:
            with self._lock:
                self._counts[value] += 1
                self._compile()

    def remove(self, value: str) -> None:
        with self._lock:
            if self._counts[value] > 1:
                self._counts[value] -= 1
            else:
                self._counts.pop(value, None)
                self._compile()

    def _compile(self) -> None:
        forms = {form for value in self._counts for form in _forms(value) if form}
        # Longest first, so that an escaped form is replaced whole, not just its plain prefix.
        alternatives = sorted(forms, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, alternatives))) if forms else None


def _forms(value: str) -> set[str]:
    """How ``value`` can appear in text: plain, IMAP-quoted, Python-repr'd (str and bytes)."""
    imap = value.replace("\\", "\\\\").replace('"', '\\"')
    forms = {value, imap}
    for base in (value, imap):
        escaped = repr(base + "'\"")[1:-1][:-3]  # repr escaping with "'" escaped
        forms |= {escaped, escaped.replace("\\'", "'")}
        raw = base.encode("utf-8", "surrogatepass")
        escaped_b = repr(raw + b"'\"")[2:-1][:-3]
        forms |= {escaped_b, escaped_b.replace("\\'", "'")}
    return forms


_SECRETS = _Secrets()


def register_secret(value: str | Secret, *, user: str | None = None) -> None:
    """Scrub ``value`` from every log line until ``forget_secret``; calls are counted.

    With ``user``, the base64 of its SASL PLAIN response (``\\0user\\0password``) is scrubbed too.
    """
    plain = value.reveal() if isinstance(value, Secret) else value
    _SECRETS.add(plain)
    if user is not None and plain:
        _SECRETS.add(_sasl_plain(user, plain))


def forget_secret(value: str | Secret, *, user: str | None = None) -> None:
    """Undo one ``register_secret`` call (the same arguments)."""
    plain = value.reveal() if isinstance(value, Secret) else value
    _SECRETS.remove(plain)
    if user is not None and plain:
        _SECRETS.remove(_sasl_plain(user, plain))


def _sasl_plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")


def scrub(value: object, depth: int = 0) -> Any:
    """``value`` made JSON-safe with secrets replaced by ``********``.

    Every ``model.Secret``, every value under a key matching ``SECRET_KEY`` and every form of
    every registered password inside any string is replaced; nesting deeper than a few levels
    is flattened to its (scrubbed) repr.
    """
    if isinstance(value, str):
        pattern = _SECRETS.pattern
        return pattern.sub(REDACTED, value) if pattern is not None else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Secret):
        return REDACTED
    if depth >= _MAX_DEPTH:
        return scrub(repr(value))
    if isinstance(value, dict):
        return {
            str(k): REDACTED if SECRET_KEY.search(str(k)) else scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return scrub(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return scrub(str(value))
