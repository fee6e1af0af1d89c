"""What a tagged IMAP response means for the caller. Pure.

Owns: parsing Exchange's "Suggested Backoff Time", the classification of tagged responses per
operation into ok / auth / transient / limited / rejected / permanent, and building the matching
``errors`` exception with a one-line, truncated, password-free message.
Must not: talk to a server. It never sees a password unless the caller passes ``secrets`` to
scrub. The server texts behind these rules: docs/imap-interop.md §2.3 and §3.

Classification (first matching rule wins):

1. ``OK`` → ok; for CREATE, ``[ALREADYEXISTS]``/"already exists" → ok too.
1a. LOGIN refused with ``[LIMIT]`` or a "too many connections" text (Cyrus "Too many open
   connections (2 of 2 for …)", Dovecot "[LIMIT] Maximum number of connections …"), or a BYE
   saying so → limited (``ConnectionLimited``): a pace, never a wrong password.
2. ``BYE`` (the server closed the session, e.g. Exchange "BYE Connection closed. 14") →
   transient: reconnect and go on.
3. A response code (RFC 3501/5530) with a meaning for this operation, see ``_CODES``.
4. Text: throttling/unavailability (Exchange "Server Unavailable. 15", O365 "Request is
   throttled. Suggested Backoff Time: N milliseconds", also sent as ``BAD``) and too many
   connections (Cyrus "Too many open connections", no code) → transient;
   Exchange's "User is authenticated but not connected" after LOGIN → auth (it means a wrong
   password or no mailbox; retrying locks the account); quota texts on APPEND → permanent.
5. The default for the operation: LOGIN ``NO`` → auth, ``BAD`` → permanent (e.g. Exchange
   "BAD Command received in Invalid state": TLS/login mode mismatch); APPEND → rejected (one
   message refused: too big, bad header, bad flag; the request goes on); FETCH ``NO`` →
   rejected; everything else → permanent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from legacyflo_daemon.errors import (
    AuthenticationFailed,
    ConnectionLimited,
    ImapError,
    MessageRejected,
    PermanentError,
    TransientError,
)
from legacyflo_daemon.model import REDACTED, Secret

Outcome = Literal["ok", "auth", "transient", "limited", "rejected", "permanent"]
Kind = Literal["login", "select", "create", "append", "fetch", "other"]

MAX_TEXT = 300


_BACKOFF = re.compile(
    r"suggested\s+backoff\s+time\s*:?\s*(\d+(?:\.\d+)?)\s*(milliseconds?|ms|seconds?|secs?|s)?\b",
    re.IGNORECASE,
)


def suggested_backoff(text: str) -> float | None:
    """Seconds from Exchange's "Suggested Backoff Time: N milliseconds", or None if absent."""
    m = _BACKOFF.search(text)
    if m is None:
        return None
    value = float(m.group(1))
    unit = (m.group(2) or "milliseconds").lower()
    return value if unit.startswith("s") else value / 1000.0


_CODE = re.compile(r"\s*\[([A-Za-z0-9.\-]+)")

# Response code → outcome, per operation ("*" applies to every operation not listed).
_CODES: dict[str, dict[str, Outcome]] = {
    "UNAVAILABLE": {"*": "transient"},
    "INUSE": {"*": "transient"},
    "SERVERBUG": {"*": "transient"},  # Dovecot: MAIL_ERROR_TEMP (I/O trouble)
    "AUTHENTICATIONFAILED": {"*": "auth"},
    "AUTHORIZATIONFAILED": {"*": "auth"},
    "EXPIRED": {"*": "auth"},
    "CONTACTADMIN": {"login": "auth", "*": "permanent"},
    "PRIVACYREQUIRED": {"*": "permanent"},
    "LIMIT": {  # Dovecot LOGIN: too many connections; APPEND: message over the size limit
        "login": "transient",
        "select": "transient",
        "append": "rejected",
        "*": "permanent",
    },
    "TOOBIG": {"append": "rejected", "fetch": "rejected", "*": "permanent"},
    "CANNOT": {"append": "rejected", "*": "permanent"},
    "CLIENTBUG": {"append": "rejected", "*": "permanent"},
    "PARSE": {"append": "rejected", "fetch": "rejected", "*": "permanent"},
    "CORRUPTION": {"fetch": "rejected", "append": "rejected", "*": "permanent"},
    "EXPUNGEISSUED": {"fetch": "rejected", "*": "permanent"},
    "OVERQUOTA": {"*": "permanent"},
    "NOPERM": {"*": "permanent"},
    "NONEXISTENT": {"*": "permanent"},
    "TRYCREATE": {"*": "permanent"},
    "ALREADYEXISTS": {"*": "permanent"},  # CREATE is handled before: already exists is fine
}

_TRANSIENT_TEXT = (
    "server unavailable",
    "throttled",
    "suggested backoff time",
    "try again later",
    "temporary failure",
    "temporarily unavailable",
    "temporary authentication failure",
)
# "Too many connections" without a response code (Cyrus: "Too many open connections (4 of 4 for
# user)"): a pace, never a wrong password.
_TOO_MANY = re.compile(
    r"too many (?:open |simultaneous |concurrent )?(?:connections|sessions|logins)"
    r"|maximum number of (?:connections|sessions)",
    re.IGNORECASE,
)
_NOT_CONNECTED = "authenticated but not connected"
_QUOTA_TEXT = ("quota", "mailbox is full", "mailbox full", "storage limit")


def response_code(text: str) -> str | None:
    """The response code at the start of ``text`` (``[UNAVAILABLE] ...`` → ``UNAVAILABLE``)."""
    m = _CODE.match(text)
    return m.group(1).upper() if m else None


def classify_response(kind: Kind, result: str, text: str) -> Outcome:
    """What the tagged ``result`` (OK/NO/BAD, or BYE) with ``text`` means for ``kind``."""
    result = result.strip().upper()
    low = text.lower()
    code = response_code(text)
    if result == "OK":
        return "ok"
    if kind == "create" and (code == "ALREADYEXISTS" or "already exists" in low):
        return "ok"
    if kind == "login" and (code == "LIMIT" or _TOO_MANY.search(text)):
        return "limited"  # a connection limit: a pace, never a wrong password
    if result == "BYE":
        return "limited" if _TOO_MANY.search(text) else "transient"
    if code in _CODES:
        table = _CODES[code]
        return table.get(kind, table["*"])
    if any(t in low for t in _TRANSIENT_TEXT) or _TOO_MANY.search(text):
        return "transient"
    if kind != "login" and _NOT_CONNECTED in low:
        return "auth"
    if kind == "login":
        return "auth" if result == "NO" else "permanent"
    if kind == "append":
        return "permanent" if any(t in low for t in _QUOTA_TEXT) else "rejected"
    if kind == "fetch" and result == "NO":
        return "rejected"
    return "permanent"


def classify_login(result: str, text: str) -> Outcome:
    """LOGIN or AUTHENTICATE."""
    return classify_response("login", result, text)


def classify_append(result: str, text: str) -> Outcome:
    """APPEND of one message: "rejected" means skip this message, record it, go on."""
    return classify_response("append", result, text)


def classify_fetch(result: str, text: str) -> Outcome:
    """UID FETCH: "rejected" means the requested messages could not be read."""
    return classify_response("fetch", result, text)


def one_line(text: str, secrets: Iterable[Secret] = ()) -> str:
    """Server text made fit for an error message: ``secrets`` replaced by ``********``, every
    non-printable character a space, runs of spaces one, at most ``MAX_TEXT`` characters."""
    for secret in secrets:
        value = secret.reveal()
        if value:
            text = text.replace(value, REDACTED)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1].rstrip() + "…"
    return text


def error_for(
    outcome: Outcome,
    host: str,
    text: str,
    *,
    what: str = "",
    secrets: Iterable[Secret] = (),
) -> ImapError:
    """The exception for a non-ok ``outcome``; its message is ``what: <server text>``.

    ``what`` names the operation (``"LOGIN as john"``, ``"APPEND to INBOX.x"``); it must not
    contain a password. A transient error carries ``retry_after`` from the server's
    "Suggested Backoff Time", if any. Raises ``ValueError`` for ``"ok"``.
    """
    said = one_line(text, secrets) or "(no text from the server)"
    message = f"{what}: {said}" if what else said
    if outcome == "auth":
        return AuthenticationFailed(message, host=host)
    if outcome == "transient":
        return TransientError(message, host=host, retry_after=suggested_backoff(text))
    if outcome == "limited":
        return ConnectionLimited(message, host=host, retry_after=suggested_backoff(text))
    if outcome == "rejected":
        return MessageRejected(message, host=host)
    if outcome == "permanent":
        return PermanentError(message, host=host)
    raise ValueError(f"no error for outcome {outcome!r}")


def check(
    kind: Kind,
    result: str,
    text: str,
    *,
    host: str,
    what: str = "",
    secrets: Iterable[Secret] = (),
) -> None:
    """Raise the matching ``ImapError`` unless the response means ok."""
    outcome = classify_response(kind, result, text)
    if outcome != "ok":
        raise error_for(outcome, host, text, what=what, secrets=secrets)
